"""Initialize stage: unprojection, filters, voxel budget, kNN scales, the 3DGS PLY layout, and the stage on a scene
with exact geometry (points on the sphere surfaces, dynamic points at the time they were seen, Sim(3) alignment)."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipeline.cameras import Sim3, look_at_w2c
from pipeline.config import load_config
from pipeline.io import write_json, write_npy
from pipeline.log import get_logger
from pipeline.runner import STAGES, StageContext
from pipeline.scene import Camera, SceneConfig, load_scene
from stages.initialize.gaussians import (SH_C0, knn_distances, ply_property_names, read_gaussians_ply,
                                         rgb_to_sh_dc, unblend_background, write_gaussians_ply)
from stages.initialize.points import (depth_edge_mask, downsample_to_budget, point_bounds, unproject_depth,
                                      voxel_downsample, voxel_size_for_budget, count_voxels)
from tests.initialize.spheres import make_scene, surface_distance, texture, SPHERES


def run_stage(name: str, run_dir: Path, scene, overrides=()) -> tuple[dict, Path]:
    """Run one real stage directly; returns its summary and its work folder (outputs not yet committed)."""
    spec = next(s for s in STAGES if s.name == name)
    config = load_config("default", list(overrides))
    work = run_dir / ".work" / name
    work.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(spec=spec, run_dir=run_dir, work_dir=work, config=config, scene=scene, device="cpu",
                       log=get_logger(name))
    from pipeline.runner import stage_function

    return stage_function(spec)(ctx), work


@pytest.fixture(scope="module")
def spheres(tmp_path_factory):
    root = tmp_path_factory.mktemp("spheres")
    files = make_scene(root / "scene", root / "run", n_train=12, n_test=4, size=32)
    return files, load_scene(SceneConfig(source=str(files.root)))


# ---------------------------------------------------------------------------------------------------------------
# points.py


def test_unprojection_inverts_projection_at_pixel_centres(rng):
    K = np.array([[40.0, 0.3, 17.2], [0.0, 38.0, 11.9], [0.0, 0.0, 1.0]])
    w2c = look_at_w2c(np.array([2.0, -1.0, 1.5]), np.array([0.1, 0.2, 0.0]))
    depth = rng.uniform(0.5, 4.0, size=(24, 32))
    points = unproject_depth(depth, K, w2c)                                   # (24, 32, 3)
    uv, z = Camera(K, w2c, 32, 24).project(points.reshape(-1, 3))
    # Camera.project has no skew term: compare with the full pinhole model instead.
    cam = points.reshape(-1, 3) @ w2c[:3, :3].T + w2c[:3, 3]
    pix = cam @ K.T
    pix = pix[:, :2] / pix[:, 2:]
    jj, ii = np.meshgrid(np.arange(32) + 0.5, np.arange(24) + 0.5)
    np.testing.assert_allclose(pix, np.stack([jj, ii], -1).reshape(-1, 2), atol=1e-9)
    np.testing.assert_allclose(z, depth.reshape(-1), rtol=1e-12)


def test_voxel_downsample_matches_a_dictionary_grouping(rng):
    points = rng.normal(size=(500, 3))
    colors = rng.uniform(size=(500, 3))
    size = 0.37
    groups = defaultdict(list)
    for i, p in enumerate(points):      # the grid starts at the cloud's lowest corner
        groups[tuple(np.floor((p - points.min(0)) / size).astype(int))].append(i)
    expected = sorted((tuple(points[idx].mean(0)), tuple(colors[idx].mean(0))) for idx in groups.values())
    got_p, got_c = voxel_downsample(points, colors, size)
    got = sorted(zip(map(tuple, got_p), map(tuple, got_c)))
    assert len(got) == len(expected)
    np.testing.assert_allclose(np.array([g[0] + g[1] for g in got]), np.array([e[0] + e[1] for e in expected]),
                               atol=1e-12)


def test_voxel_budget_is_met_and_tight(rng):
    points = rng.uniform(-1, 1, size=(4000, 3))
    size = voxel_size_for_budget(points, 300)
    assert count_voxels(points, size) <= 300
    assert count_voxels(points, size / 1.05) > 300, "the voxel is within ~2 % of the smallest that fits"
    p, c = downsample_to_budget(points, points.copy(), 300)
    assert len(p) <= 300 and np.allclose(p, c)
    assert len(downsample_to_budget(points, points, 10_000)[0]) == 4000, "under budget: nothing merged"


def test_voxel_budget_from_a_subsample_bracket_is_met_and_tight(rng):
    """Many points per budgeted voxel (a video's frames): the search starts from a strided subsample's answer."""
    surface = np.c_[rng.uniform(0, 4, size=(200_000, 2)), rng.normal(0, 0.01, size=200_000)]   # 200 per voxel
    groups = [surface[:120_000], surface[120_000:] + [0.0, 0.0, 1.0]]
    size = voxel_size_for_budget(groups, 1000)
    counts = [count_voxels(g, size) for g in groups]
    assert sum(counts) <= 1000
    assert sum(count_voxels(g, size / 1.05) for g in groups) > 1000, "within ~2 % of the smallest that fits"
    bounds = [point_bounds(g) for g in groups]
    assert voxel_size_for_budget([*groups, surface[:0]], 1000, bounds=[*bounds, None]) == size, "bounds given"


def test_depth_edge_mask_drops_both_sides_of_a_jump_only():
    depth = np.ones((6, 8))
    depth[:, 4:] = 3.0
    depth[0, 0] = 0.0     # invalid pixel: its neighbours are not flagged because of it
    keep = depth_edge_mask(depth, 0.1)
    assert not keep[:, 3].any() and not keep[:, 4].any()
    assert keep[:, [0, 1, 2, 5, 6, 7]].all()


# ---------------------------------------------------------------------------------------------------------------
# gaussians.py


def test_the_confidence_percentile_is_taken_over_the_pixels_with_depth():
    """A frame mostly of background (no depth, confidence 1) with 10 depth pixels of confidence 2..11: the 50th
    percentile keeps the 5 most confident of those 10 (over the whole map it was 1: nothing dropped)."""
    from stages.initialize.points import confidence_mask

    confidence = np.ones((10, 10))
    valid = np.zeros((10, 10), bool)
    valid[0] = True
    confidence[0] = np.arange(2.0, 12.0)
    kept = confidence_mask(confidence, percentile=50, valid=valid) & valid
    assert kept[0].tolist() == [False] * 5 + [True] * 5
    assert confidence_mask(confidence, percentile=50)[valid].all()              # the whole map's median: 1
    assert confidence_mask(confidence, percentile=50, valid=np.zeros((10, 10), bool)).all()   # nothing valid


def test_knn_distances_match_brute_force(rng):
    points = rng.normal(size=(200, 3))
    d = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    nearest = np.sort(d, axis=1)[:, :3]
    np.testing.assert_allclose(knn_distances(points, 3), np.sqrt((nearest**2).mean(1)), rtol=1e-12)


def test_soft_edges_give_the_surface_colour_not_its_blend_with_the_background(rng):
    """An RGBA frame composited on a background: where 0 < alpha, the surface's own colour comes back exactly;
    where alpha is 0 (nothing there) the composited value stays."""
    colour = rng.uniform(size=(6, 5, 3))
    alpha = rng.uniform(0.05, 1.0, size=(6, 5))
    alpha[0, 0] = 0.0
    background = np.array([1.0, 0.5, 0.0])
    composited = (alpha[..., None] * colour + (1 - alpha[..., None]) * background).astype(np.float32)
    own = unblend_background(composited, alpha, background)
    assert own.dtype == np.float32
    np.testing.assert_allclose(own[alpha > 0], colour[alpha > 0], atol=2e-5 / 0.05)
    np.testing.assert_array_equal(own[0, 0], composited[0, 0])


def test_ply_layout_is_the_standard_3dgs_one(tmp_path, rng):
    from plyfile import PlyData

    n, degree = 7, 2
    K = (degree + 1) ** 2
    sh = rng.normal(size=(n, K, 3))
    means, opac, scales = rng.normal(size=(n, 3)), rng.normal(size=n), rng.normal(size=(n, 3))
    quats = rng.normal(size=(n, 4))
    write_gaussians_ply(tmp_path / "g.ply", means, sh, opac, scales, quats)
    ply = PlyData.read(str(tmp_path / "g.ply"))
    assert ply.elements[0].name == "vertex" and not ply.text and ply.byte_order == "<"
    names = [p.name for p in ply["vertex"].properties]
    assert names == ply_property_names(degree)
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] and names[-8:] == [
        "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert all(p.val_dtype in ("float32", "f4") for p in ply["vertex"].properties)
    v = ply["vertex"]
    for c in range(3):                      # f_rest is channel-major: f_rest_{c (K-1) + (k-1)} = sh[:, k, c]
        for k in range(1, K):
            np.testing.assert_allclose(v[f"f_rest_{c * (K - 1) + k - 1}"], sh[:, k, c].astype(np.float32))
    np.testing.assert_allclose(v["rot_0"], quats[:, 0].astype(np.float32))     # w first
    back = read_gaussians_ply(tmp_path / "g.ply")
    assert back["sh_degree"] == degree
    np.testing.assert_allclose(back["sh"], sh.astype(np.float32))
    np.testing.assert_allclose(back["quats"], quats.astype(np.float32))
    np.testing.assert_allclose(rgb_to_sh_dc(np.array([0.5, 1.0, 0.0])) * SH_C0 + 0.5, [0.5, 1.0, 0.0])


def test_ply_writer_refuses_non_finite_values(tmp_path):
    sh = np.zeros((2, 1, 3))
    with pytest.raises(ValueError):
        write_gaussians_ply(tmp_path / "g.ply", np.array([[0, 0, 0], [np.nan, 0, 0]]), sh, np.zeros(2),
                            np.zeros((2, 3)), np.tile([1.0, 0, 0, 0], (2, 1)))


# ---------------------------------------------------------------------------------------------------------------
# the stage


def test_stage_puts_gaussians_on_the_surfaces_seen_at_their_time(spheres, tmp_path):
    files, scene = spheres
    summary, work = run_stage("initialize", files.geometry, scene, ["initialize.max_gaussians=1500"])
    g = read_gaussians_ply(work / "initialize/gaussians.ply")
    labels = np.load(work / "initialize/labels.npz")
    n = len(g["means"])
    assert summary["gaussians"] == n <= 1500
    dyn = labels["is_dynamic"]
    assert summary["dynamic"] == dyn.sum() > 0
    train_times = sorted({f.time for f in scene.train_frames})
    gap = np.abs(labels["time"][dyn, None] - np.array(train_times)[None]).min(1)
    assert gap.max() < 1e-6, "dynamic Gaussians come from training frames only"
    assert (labels["time"][~dyn] == -1).all() and (labels["frame_index"][~dyn] == -1).all()
    # Every Gaussian lies on a sphere surface at the time it was seen (static sphere: any time). Voxel averaging
    # on a curved surface pulls points inwards by about voxel^2 / (8 R) (~1e-3 here).
    dist = surface_distance(g["means"].astype(np.float64), np.where(dyn, labels["time"], 0.0))
    assert np.quantile(dist, 0.95) < 2e-3 and dist.max() < 1e-2
    # Dynamic Gaussians are on the moving sphere at their time; static ones on the static sphere.
    moving, still = SPHERES[1], SPHERES[0]
    d_moving = np.abs(np.linalg.norm(g["means"][dyn] - (moving.center + labels["time"][dyn, None] * moving.velocity),
                                     axis=1) - moving.radius)
    assert np.quantile(d_moving, 0.95) < 5e-3      # smaller sphere: voxel averaging pulls in more
    d_still = np.abs(np.linalg.norm(g["means"][~dyn] - still.center, axis=1) - still.radius)
    assert np.quantile(d_still, 0.95) < 2e-3
    # Colours: the SH DC of a static Gaussian matches the texture at its position within the blur of averaging.
    rgb = g["sh"][~dyn, 0] * SH_C0 + 0.5
    expected = texture(still, g["means"][~dyn].astype(np.float64), 0.0)
    assert np.median(np.abs(rgb - expected).max(1)) < 0.02
    # Scales: log of the RMS distance to 3 neighbours, isotropic; opacity = logit(0.1); identity rotations.
    assert np.allclose(g["log_scales"][:, 0], g["log_scales"][:, 1])
    assert np.allclose(g["opacity_logits"], np.log(0.1 / 0.9), atol=1e-6)
    assert np.allclose(g["quats"], [1, 0, 0, 0])


def test_geometry_maps_at_another_resolution_unproject_with_their_own_intrinsics(spheres, tmp_path):
    """Depth maps of half the frames' size (a geometry folder not written by our geometry stage) are unprojected with
    K scaled to them, so the Gaussians still lie on the surfaces; a map of another aspect ratio is refused."""
    from pipeline.errors import UserError
    from pipeline.io import read_json, write_png
    from tests.initialize.spheres import render

    files, scene = spheres
    run_dir = tmp_path / "run"
    shutil.copytree(files.geometry / "geometry", run_dir / "geometry")
    for entry in read_json(run_dir / "geometry" / "cameras.json")["frames"]:
        half = np.diag([0.5, 0.5, 1.0]) @ np.asarray(entry["K"])
        out = render(np.asarray(entry["world_to_camera"]), half, entry["width"] // 2, entry["height"] // 2,
                     entry["time"])
        write_npy(run_dir / "geometry" / "depth" / f"{entry['name']}.npy", out["depth"].astype(np.float32))
        write_npy(run_dir / "geometry" / "confidence" / f"{entry['name']}.npy",
                  np.ones_like(out["depth"], dtype=np.float32))
        write_png(run_dir / "geometry" / "dynamic_mask" / f"{entry['name']}.png",
                  (out["dynamic"] * 255).astype(np.uint8))
    summary, work = run_stage("initialize", run_dir, scene, ["initialize.max_gaussians=1500"])
    g = read_gaussians_ply(work / "initialize/gaussians.ply")
    labels = np.load(work / "initialize/labels.npz")
    assert summary["dynamic"] > 0
    dist = surface_distance(g["means"].astype(np.float64), np.where(labels["is_dynamic"], labels["time"], 0.0))
    assert np.quantile(dist, 0.95) < 3e-3 and dist.max() < 2e-2
    name = scene.train_frames[0].name
    write_npy(run_dir / "geometry" / "depth" / f"{name}.npy", np.ones((16, 8), np.float32))
    with pytest.raises(UserError, match=rf"{name}.npy: map is 8x16 but its frame in cameras.json is 32x32 "
                                        r"\(aspect ratios differ\)"):
        run_stage("initialize", run_dir, scene, ["initialize.max_gaussians=1500"])


def test_dynamic_time_stride_keeps_every_kth_slice_and_every_static_point(spheres, tmp_path):
    files, scene = spheres
    train_times = sorted({f.time for f in scene.train_frames})
    runs = {}
    for stride in (1, 3):
        summary, work = run_stage("initialize", files.geometry, scene,
                                  ["initialize.max_gaussians=100000", f"initialize.dynamic_time_stride={stride}"])
        labels = np.load(work / "initialize/labels.npz")
        runs[stride] = summary, labels, read_gaussians_ply(work / "initialize/gaussians.ply")
    (one, labels_one, g_one), (three, labels_three, g_three) = runs[1], runs[3]
    kept = sorted(set(labels_three["time"][labels_three["is_dynamic"]].tolist()))
    seen = sorted(set(labels_one["time"][labels_one["is_dynamic"]].tolist()))
    # The training times with moving points among the first and every third training time.
    expected = [t for t in seen if np.isclose(t, train_times[::3]).any()]
    assert len(expected) >= 2 and np.allclose(kept, expected)
    assert three["time_slices"] == len(kept) < one["time_slices"] == len(seen)
    # A budget this large downsamples nothing: the static points are the same, and each kept slice has as many
    # Gaussians as with stride 1.
    assert three["static"] == one["static"]
    assert np.array_equal(g_three["means"][~labels_three["is_dynamic"]], g_one["means"][~labels_one["is_dynamic"]])
    for t in kept:
        assert (labels_three["time"] == t).sum() == (labels_one["time"] == t).sum() > 0


def test_predicted_cameras_are_brought_into_the_dataset_world_by_sim3(spheres, tmp_path):
    """Geometry in another world (network cameras and depth in its own units): the stage recovers the known
    similarity and produces the same Gaussians as from the dataset cameras."""
    files, scene = spheres
    run = tmp_path / "run"
    shutil.copytree(files.geometry / "geometry", run / "geometry")
    angle = 0.7
    R = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    to_dataset = Sim3(2.5, R @ np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]), np.array([0.3, -1.0, 2.0]))
    to_model = to_dataset.inverse()
    import json

    cameras = json.loads((run / "geometry/cameras.json").read_text())
    predicted = {"convention": "opencv", "source": "model", "frames": []}
    for entry in cameras["frames"]:
        w2c_model = to_model.transform_w2c(np.array(entry["world_to_camera"]))
        predicted["frames"].append({**entry, "world_to_camera": w2c_model.tolist()})
        depth = np.load(run / "geometry/depth" / f"{entry['name']}.npy")
        write_npy(run / "geometry/depth" / f"{entry['name']}.npy", depth * np.float32(to_model.scale))
    write_json(run / "geometry/predicted_cameras.json", predicted)

    from pipeline.cameras import align_cameras_sim3

    train = [e for e in cameras["frames"] if e["split"] == "train"]
    fit = align_cameras_sim3(np.array([to_model.transform_w2c(np.array(e["world_to_camera"])) for e in train]),
                             np.array([e["world_to_camera"] for e in train]))
    assert abs(fit.scale - 2.5) < 1e-9 and np.allclose(fit.rotation, to_dataset.rotation, atol=1e-9)
    assert np.allclose(fit.translation, to_dataset.translation, atol=1e-9)

    _, work_ref = run_stage("initialize", files.geometry, scene, ["initialize.max_gaussians=800"])
    _, work = run_stage("initialize", run, scene, ["initialize.max_gaussians=800", "initialize.points_from=predicted"])
    ref = read_gaussians_ply(work_ref / "initialize/gaussians.ply")
    got = read_gaussians_ply(work / "initialize/gaussians.ply")
    assert len(ref["means"]) == len(got["means"])
    np.testing.assert_allclose(got["means"], ref["means"], atol=1e-4)


@pytest.mark.parametrize("n_points", [1000, 100_000], ids=["bisection", "subsample bracket"])
def test_voxel_budget_is_met_for_points_around_the_origin_down_to_one_voxel(rng, n_points):
    """A grid fixed to the world origin split a cloud straddling x = y = z = 0 into 8 voxels at any size: a budget
    of 3 was never met (the search grew the size to infinity and did not end). The grid starts at the cloud."""
    points = rng.normal(size=(n_points, 3))
    for budget in (1, 3, 8):
        size = voxel_size_for_budget(points, budget)
        assert np.isfinite(size) and count_voxels(points, size) <= budget
        assert len(voxel_downsample(points, points, size)[0]) == count_voxels(points, size)
    assert count_voxels(points, 2 * float(np.ptp(points, axis=0).max())) == 1


def test_initialize_meets_a_budget_of_a_few_voxels_per_slice_and_any_dynamic_fraction(rng):
    """Thirty time slices around the origin in a budget of 100 (the search did not end before), and a
    dynamic_fraction of 0 or 0.01 (below one voxel per slice: a ValueError traceback before) still keep every
    slice, one Gaussian or more each, within the budget."""
    from stages.initialize.config import InitializeConfig
    from stages.initialize.geometry_io import FrameCamera
    from stages.initialize.stage import FramePoints, build_gaussians

    frames = []
    for t in range(30):
        camera = FrameCamera(name=f"f{t}", index=t, time=t / 29, time_index=t, split="train", width=8, height=8,
                             K=np.eye(3), world_to_camera=np.eye(4))
        points = np.concatenate([rng.uniform(-1, 1, size=(200, 3)), rng.uniform(-1, 1, size=(300, 3)) + [0, 0, 5]])
        dynamic = np.arange(500) < 200
        frames.append(FramePoints(camera, points, np.full((500, 3), 0.5), dynamic))
    for fraction in (0.3, 0.01, 0.0):
        g = build_gaussians(frames, InitializeConfig(max_gaussians=100, dynamic_fraction=fraction))
        assert len(g.means) <= 100
        assert len(np.unique(g.time[g.is_dynamic])) == 30 and (~g.is_dynamic).sum() >= 1


def test_budget_gives_one_density_unless_the_dynamic_share_is_exceeded(rng):
    from stages.initialize.stage import allocate_voxels

    static = rng.uniform(-1, 1, size=(6000, 3))
    static[:, 2] = 0.0                                                   # a floor
    slices = [rng.normal(scale=0.05, size=(200, 3)) + [0, 0, 0.5] for _ in range(10)]
    # Small moving object: one voxel size for everything, total within budget and tight.
    s_voxel, d_voxel = allocate_voxels(static, slices, 2000, dynamic_fraction=0.7)
    assert s_voxel == d_voxel > 0
    total = count_voxels(static, s_voxel) + sum(count_voxels(p, d_voxel) for p in slices)
    assert total <= 2000 < count_voxels(static, s_voxel / 1.05) + sum(count_voxels(p, d_voxel / 1.05) for p in slices)
    # Many slices of a large moving surface: dynamic capped at 30 % of the budget, static gets the rest.
    floor = rng.uniform(-1, 1, size=(40000, 3))
    floor[:, 2] = 0.0
    big = [rng.uniform(-1, 1, size=(3000, 3)) for _ in range(20)]
    s_voxel, d_voxel = allocate_voxels(floor, big, 20000, dynamic_fraction=0.3)
    n_dyn = sum(count_voxels(p, d_voxel) for p in big)
    assert d_voxel > s_voxel and 0.27 * 20000 < n_dyn <= 0.3 * 20000
    assert 0.9 * 20000 < n_dyn + count_voxels(floor, s_voxel) <= 20000


def test_voxel_ids_are_exact_for_float32_points_far_apart():
    """Offsets from the grid's corner are taken in float64, so float32 coordinates spanning more than 2**24 cells
    stay distinct."""
    points = np.array([[-3e7, 0, 0], [29999998, 0, 0], [3e7, 0, 0]], dtype=np.float32)
    assert count_voxels(points, 1.0) == 3
    assert count_voxels(points.astype(np.float64), 1.0) == 3
    assert count_voxels(points[:0], 1.0) == 0


def test_predicted_cameras_already_in_the_cameras_world_are_used_as_they_are(spheres, tmp_path, monkeypatch):
    """The geometry stage writes predicted_cameras.json aligned to the cameras.json world (same source): no second
    Sim(3) is fitted (it would replace a depth-agreement scale by the camera centres' one): predictions whose centres
    are spread 1.3x wider than the dataset's give the points their own rays put at the stored depth."""
    import json

    import stages.initialize.stage as stage_module

    files, scene = spheres
    run = tmp_path / "run"
    shutil.copytree(files.geometry / "geometry", run / "geometry")
    cameras = json.loads((run / "geometry/cameras.json").read_text())
    predicted = json.loads(json.dumps(cameras))
    for entry in predicted["frames"]:
        w2c = np.array(entry["world_to_camera"])
        centre = -w2c[:3, :3].T @ w2c[:3, 3]
        w2c[:3, 3] = -w2c[:3, :3] @ (1.3 * centre)               # same rotation, centre 1.3x further out
        entry["world_to_camera"] = w2c.tolist()
    assert predicted["source"] == cameras["source"]
    write_json(run / "geometry/predicted_cameras.json", predicted)

    def no_refit(*args, **kwargs):
        raise AssertionError("a Sim(3) was fitted to cameras already in the cameras.json world")

    monkeypatch.setattr(stage_module, "align_cameras_sim3", no_refit)
    _, work = run_stage("initialize", run, scene, ["initialize.max_gaussians=800", "initialize.points_from=predicted"])
    got = read_gaussians_ply(work / "initialize/gaussians.ply")
    # The same as unprojecting with those cameras written as cameras.json.
    run_same = tmp_path / "same"
    shutil.copytree(run / "geometry", run_same / "geometry")
    write_json(run_same / "geometry/cameras.json", predicted)
    _, work_same = run_stage("initialize", run_same, scene, ["initialize.max_gaussians=800"])
    same = read_gaussians_ply(work_same / "initialize/gaussians.ply")
    np.testing.assert_allclose(got["means"], same["means"], atol=1e-6)
