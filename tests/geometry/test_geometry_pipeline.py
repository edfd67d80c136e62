"""Preprocessing maps, dynamic masks from geometric consistency, windowed joins and the geometry stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.cameras import Sim3, umeyama_sim3
from pipeline.config import apply_overrides, default_config
from pipeline.runner import STAGES, StageContext
from stages.geometry.consistency import ConsistencyParams, dynamic_masks, neighbour_offsets, photometric_scores
from stages.geometry.page4d.inference import Prediction, predict_sequence, unproject, window_starts
from stages.geometry.page4d.preprocess import prepare_frames
from tests.geometry import raycast_scene




def rotation(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing


@pytest.mark.parametrize("mode, size", [("crop", (80, 60)), ("crop", (50, 90)), ("pad", (50, 90)),
                                        ("pad", (90, 50)), ("squash", (80, 60))])
def test_frame_mapping_sends_network_pixels_to_their_stored_position(mode, size):
    """A horizontal/vertical ramp image survives resizing exactly (away from the borders): the network pixel at
    (x_n, y_n) must show the ramp value of the stored position that the mapping gives."""
    W, H = size
    u = (np.arange(W) + 0.5) / W
    v = (np.arange(H) + 0.5) / H
    image = np.stack([np.broadcast_to(u[None], (H, W)), np.broadcast_to(v[:, None], (H, W)),
                      np.full((H, W), 0.5)], -1).astype(np.float32)
    prepared = prepare_frames([image], mode, target=42, patch=14)
    mapping = prepared.mappings[0]
    net = prepared.batch([0])[0].numpy()                                     # (3, Hn, Wn)
    Wn, Hn = prepared.net_size
    assert Wn % 14 == 0 and Hn % 14 == 0 and mapping.net_size == (Wn, Hn)
    xs, ys = np.meshgrid(np.arange(Wn) + 0.5, np.arange(Hn) + 0.5)
    x_stored = mapping.scale_x * (xs - mapping.offset_x)
    y_stored = mapping.scale_y * (ys - mapping.offset_y)
    inner = (x_stored > 0.2 * W) & (x_stored < 0.8 * W) & (y_stored > 0.2 * H) & (y_stored < 0.8 * H)
    assert inner.sum() > 20
    shown = (x_stored >= 0) & (x_stored <= W) & (y_stored >= 0) & (y_stored <= H)
    assert np.array_equal(mapping.network_coverage(), shown)                  # False exactly on padding
    assert shown.all() == (mode != "pad")                                      # pad mode pads
    assert np.abs(net[0][inner] - x_stored[inner] / W).max() < 2.5 / 255    # 8-bit rounding of the ramp
    assert np.abs(net[1][inner] - y_stored[inner] / H).max() < 2.5 / 255
    # Intrinsics: a point projecting to (x_n, y_n) in the network image projects to the mapped stored position.
    K_net = np.array([[30.0, 0, Wn / 2], [0, 33.0, Hn / 2], [0, 0, 1]])
    K = mapping.intrinsics_to_stored(K_net)
    point = np.array([0.2, -0.1, 1.0])
    xn, yn = (K_net @ point)[:2]
    assert np.allclose((K @ point)[:2], [mapping.scale_x * (xn - mapping.offset_x),
                                         mapping.scale_y * (yn - mapping.offset_y)])
    assert np.allclose(mapping.intrinsics_to_network(K), K_net)            # and back (dataset cameras)
    # Back to the stored resolution: a network-resolution x ramp becomes the stored x coordinate.
    ramp = torch.from_numpy(xs[None].astype(np.float32))
    stored = mapping.to_stored(ramp)[0].numpy()
    expected = np.broadcast_to((np.arange(W)[None] + 0.5) / mapping.scale_x + mapping.offset_x, (H, W))
    inside = mapping.stored_coverage() & (expected >= 0.5) & (expected <= Wn - 0.5)   # between pixel centres
    assert inside.mean() > 0.5
    assert np.allclose(stored[inside], expected[inside], atol=1e-3)


def test_crop_mode_matches_the_vggt_sizes():
    prepared = prepare_frames([np.zeros((480, 854, 3), np.float32)], "crop", 518)
    assert prepared.net_size == (518, 294)
    tall = prepare_frames([np.zeros((900, 500, 3), np.float32)], "crop", 518)
    assert tall.net_size == (518, 518) and tall.mappings[0].offset_y == -((938 - 518) // 2)


# ----------------------------------------------------------------------------------------------------------------
# Dynamic masks


def test_consistency_masks_find_the_moving_object_from_ground_truth():
    depth, K, w2c, moving, _ = raycast_scene.render(frames=12)
    assert 0.02 < moving.mean() < 0.2
    masks = dynamic_masks(depth, K, w2c, ConsistencyParams(gap=2, threshold=0.05))
    iou = (masks & moving).sum() / (masks | moving).sum()
    assert iou >= 0.9
    # A static scene (the sphere frozen) gives no moving pixels.
    depth, K, w2c, moving, _ = raycast_scene.render(frames=8, start=(0.5, 0, 0), end=(0.5, 0, 0))
    assert dynamic_masks(depth, K, w2c).sum() == 0


def test_consistency_masks_tolerate_invalid_depth_and_low_confidence_pixels():
    depth, K, w2c, moving, _ = raycast_scene.render(frames=8)
    depth[:, :4] = 0.0                                    # invalid rows
    depth[:, -4:] = np.nan
    confidence = np.random.default_rng(0).uniform(1, 2, depth.shape).astype(np.float32)
    masks = dynamic_masks(depth, K, w2c, ConsistencyParams(gap=2, min_confidence_quantile=0.2), confidence)
    assert not masks[:, :4].any() and not masks[:, -4:].any()
    inner = slice(4, -4)
    hit = (masks[:, inner] & moving[:, inner]).sum() / moving[:, inner].sum()
    assert hit > 0.6 and (masks & ~moving).sum() == 0     # a fifth of the pixels abstain; no false alarms


def test_supervised_head_probability_is_blended_in():
    depth, K, w2c, moving, _ = raycast_scene.render(frames=6)
    confident_head = moving.astype(np.float32)
    masks = dynamic_masks(depth, K, w2c, ConsistencyParams(gap=1, threshold=10.0, head_weight=0.6),
                          head_probability=confident_head)
    assert np.array_equal(masks, moving)       # geometry sees nothing at this threshold; the head decides


def test_mask_sources_head_alone_and_votes_alone():
    depth, K, w2c, moving, _ = raycast_scene.render(frames=6)
    lukewarm = np.where(moving, 0.7, 0.3).astype(np.float32)      # the head: right everywhere at 0.5
    params = dict(gap=1, threshold=0.05)
    head = dynamic_masks(depth, K, w2c, ConsistencyParams(**params, source="head"), head_probability=lukewarm)
    assert np.array_equal(head, moving)
    votes = dynamic_masks(depth, K, w2c, ConsistencyParams(**params, source="consistency"),
                          head_probability=lukewarm)
    assert votes.any() and np.array_equal(votes, dynamic_masks(depth, K, w2c, ConsistencyParams(**params)))


def test_stage_passes_each_mask_option_to_its_parameter():
    """Every geometry.consistency_* / mask_* option reaches its own field (they were once passed by position and
    landed one field off: min_confidence as min_violations, mask_head_weight as the confidence quantile)."""
    from stages.geometry.config import GeometryConfig
    from stages.geometry.stage import consistency_params
    cfg = GeometryConfig(consistency_neighbours=5, consistency_gap=3, consistency_threshold=0.07,
                         consistency_vote=0.3, consistency_min_confidence=0.15, mask_head_weight=0.8,
                         mask_source="head", mask_photometric_weight=1.5, mask_colour_threshold=0.12)
    assert consistency_params(cfg) == ConsistencyParams(neighbours=5, gap=3, threshold=0.07, vote_fraction=0.3,
                                                        min_confidence_quantile=0.15, head_weight=0.8,
                                                        source="head", photometric_weight=1.5,
                                                        colour_threshold=0.12)
    assert consistency_params(cfg).min_violations == ConsistencyParams().min_violations


def test_neighbour_offsets_stay_inside_the_sequence():
    assert neighbour_offsets(0, 20, 4, 2) == [2, 4, 8, 16]
    assert neighbour_offsets(9, 20, 6, 2) == [2, -2, 4, -4, 8, -8]
    assert neighbour_offsets(0, 2, 4, 2) == []


# ----------------------------------------------------------------------------------------------------------------
# Windows


def test_window_starts_cover_every_frame():
    assert window_starts(50, 100, 20) == [0]
    starts = window_starts(1000, 100, 20)
    assert starts[:3] == [0, 80, 160] and starts[-1] == 900
    covered = np.zeros(1000, bool)
    for s in starts:
        covered[s:s + 100] = True
    assert covered.all()


class WindowOracle:
    """A stand-in predictor: ground-truth geometry expressed in each window's own world (its first camera,
    a random scale), as the network would return it."""

    device = torch.device("cpu")

    def __init__(self, depth, K, w2c, rng, scrambled_cameras: bool = False):
        self.depth, self.K, self.w2c, self.rng = depth, K, w2c, rng
        self.scrambled_cameras = scrambled_cameras    # cameras unrelated to the images (a network's bad poses)

    def __call__(self, frames: torch.Tensor) -> Prediction:
        index = frames[:, 0, 0, 0].round().long().numpy()               # frame indices ride in the pixels
        scale = self.rng.uniform(0.5, 2.0)
        # The window's world is its first camera's frame, scaled: x_window = scale * (R0 x + t0).
        R0, t0 = self.w2c[index[0]][:3, :3], self.w2c[index[0]][:3, 3]
        to_window = Sim3(scale, R0, scale * t0)
        w2c = np.stack([to_window.transform_w2c(self.w2c[i]) for i in index])
        if self.scrambled_cameras:
            for w in w2c:
                rotation = np.linalg.qr(self.rng.normal(size=(3, 3)))[0]
                w[:3, :3] = rotation * np.sign(np.linalg.det(rotation))
                w[:3, 3] = self.rng.normal(size=3)
        depth = self.depth[index] * np.float32(scale)
        points = np.stack([unproject(d, k, w) for d, k, w in zip(depth, self.K[index], w2c)]).astype(np.float32)
        return Prediction(world_to_camera=w2c, intrinsics=self.K[index], depth=depth,
                          depth_conf=np.ones_like(depth), world_points=points, world_points_conf=np.ones_like(depth))


class IndexFrames:
    """Stand-in prepared frames of ``count`` frames whose pixels carry their frame index (for WindowOracle)."""

    def __init__(self, count: int):
        self.count = count

    def __len__(self):
        return self.count

    def batch(self, indices, device):
        ids = torch.arange(self.count)[indices].float()
        return ids[:, None, None, None].expand(-1, 3, 2, 2).clone()


def test_windowed_prediction_joins_into_one_consistent_trajectory():
    depth, K, w2c, _, _ = raycast_scene.render(frames=23, width=32, height=24)
    S = len(depth)

    pred = predict_sequence(WindowOracle(depth, K, w2c, np.random.default_rng(0)), IndexFrames(S), window=8, overlap=3,
                            show_progress=False)
    assert [w["start"] for w in pred.windows] == [0, 5, 10, 15]
    centres = np.stack([-w[:3, :3].T @ w[:3, 3] for w in pred.world_to_camera])
    true_centres = np.stack([-w[:3, :3].T @ w[:3, 3] for w in w2c])
    sim = umeyama_sim3(true_centres, centres)
    assert np.abs(sim.apply(true_centres) - centres).max() < 1e-6 * max(1.0, np.abs(centres).max())
    # Depth follows the same global scale in every window; point maps follow the same world.
    assert np.allclose(pred.depth, depth * sim.scale, rtol=1e-4)
    for i in range(S):
        expected = unproject(pred.depth[i], K[i], pred.world_to_camera[i])
        assert np.abs(pred.world_points[i] - expected).max() < 1e-4 * np.abs(expected).max()


def test_windows_keep_one_depth_scale_when_the_predicted_cameras_are_wrong():
    """The scale between windows comes from the shared frames' depths, not from their (here random) cameras: the
    joined depth is the ground truth times one scale in every window (a camera-fitted scale shrank each window)."""
    depth, K, w2c, _, _ = raycast_scene.render(frames=23, width=32, height=24)
    S = len(depth)

    oracle = WindowOracle(depth, K, w2c, np.random.default_rng(1), scrambled_cameras=True)
    pred = predict_sequence(oracle, IndexFrames(S), window=8, overlap=3, show_progress=False)
    valid = depth > 0
    ratio = pred.depth[valid] / depth[valid]
    assert len(pred.windows) == 4 and np.allclose(ratio, ratio[0], rtol=1e-5)


def test_windows_without_valid_depth_in_their_overlap_give_a_one_line_error():
    from pipeline.errors import UserError

    depth, K, w2c, _, _ = raycast_scene.render(frames=10, width=32, height=24)
    oracle = WindowOracle(np.zeros_like(depth), K, w2c, np.random.default_rng(2))
    with pytest.raises(UserError, match="raise geometry.overlap"):
        predict_sequence(oracle, IndexFrames(len(depth)), window=6, overlap=2, show_progress=False)


# ----------------------------------------------------------------------------------------------------------------
# The stage


def run_stage(tmp_path, scene, overrides):
    from stages.geometry import run

    config = default_config()
    apply_overrides(config, overrides)
    run_dir = tmp_path / "run"
    work = run_dir / ".work" / "geometry"
    work.mkdir(parents=True)
    ctx = StageContext(spec=STAGES[0], run_dir=run_dir, work_dir=work, config=config, scene=scene, device="cpu")
    return run(ctx), work / "geometry"


def test_oracle_geometry_writes_the_ground_truth(tmp_path):
    scene = raycast_scene.make_scene(frames=6)
    summary, out = run_stage(tmp_path, scene, ["geometry.model=oracle"])
    cameras = json.loads((out / "cameras.json").read_text())
    assert cameras["source"] == "dataset" and [f["name"] for f in cameras["frames"]] == [f.name for f in scene.frames]
    assert {f["split"] for f in cameras["frames"]} == {"train", "test"}
    for frame, entry in zip(scene.frames, cameras["frames"]):
        assert np.allclose(entry["world_to_camera"], frame.camera.world_to_camera)
        assert np.array_equal(np.load(out / "depth" / f"{frame.name}.npy"), frame.load_depth())
        import imageio.v3 as iio

        assert np.array_equal(iio.imread(out / "dynamic_mask" / f"{frame.name}.png") > 127, frame.load_dynamic_mask())
    from plyfile import PlyData

    vertices = PlyData.read(str(out / "points.ply"))["vertex"]
    xyz = np.stack([vertices["x"], vertices["y"], vertices["z"]], -1)
    assert len(xyz) == summary["points"] > 0
    assert np.abs(xyz).max() <= raycast_scene.ROOM_HALF_SIZE + 1e-3     # unprojected GT lies in the room


@pytest.fixture
def small_weights(tmp_path):
    """A random small PAGE-4D (tests/geometry/test_page4d_model.SMALL) saved as a checkpoint file."""
    from stages.geometry.page4d.checkpoint import save_weights
    from tests.geometry.test_page4d_model import SMALL, random_model

    weights = tmp_path / "small.safetensors"
    save_weights(random_model(SMALL), weights)
    return weights


def fused_points_on_frames(out, width: int, height: int):
    """The fused cloud of a geometry stage's output folder (P, 3), and per frame of its cameras.json the column and
    row (P,) each point projects to, whether it lands on that pixel's centre, and its relative depth error there."""
    from plyfile import PlyData

    vertex = PlyData.read(str(out / "points.ply"))["vertex"]
    points = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)      # (P, 3)
    per_frame = []
    for cam in json.loads((out / "cameras.json").read_text())["frames"]:
        K, w2c = np.asarray(cam["K"]), np.asarray(cam["world_to_camera"])
        depth = np.load(out / "depth" / f"{cam['name']}.npy")
        in_cam = points @ w2c[:3, :3].T + w2c[:3, 3]
        u, v = K[0, 0] * in_cam[:, 0] / in_cam[:, 2] + K[0, 2], K[1, 1] * in_cam[:, 1] / in_cam[:, 2] + K[1, 2]
        centred = (np.abs(u - np.floor(u) - 0.5) < 1e-3) & (np.abs(v - np.floor(v) - 0.5) < 1e-3)
        col, row = np.clip(u.astype(int), 0, width - 1), np.clip(v.astype(int), 0, height - 1)
        error = np.abs(depth[row, col] - in_cam[:, 2]) / np.maximum(in_cam[:, 2], 1e-9)
        per_frame.append((col, row, centred, error))
    return points, per_frame


def test_network_geometry_with_dataset_cameras(tmp_path, small_weights):
    scene = raycast_scene.make_scene(frames=5, width=48, height=36)
    summary, out = run_stage(tmp_path, scene, [f"geometry.checkpoint={small_weights}", "geometry.window=3",
                                               "geometry.overlap=1"])
    report = json.loads((out / "geometry.json").read_text())
    assert summary["cameras"] == "dataset" and len(report["windows"]) == 2
    assert report["dataset_alignment"]["scale"] == report["alignment_sim3"]["scale"] > 0
    assert report["mask_photometric_weight"] == 0.0          # photometric mask votes: refined model cameras only
    cameras = json.loads((out / "cameras.json").read_text())["frames"]
    predicted = json.loads((out / "predicted_cameras.json").read_text())["frames"]
    for frame, cam, pred in zip(scene.frames, cameras, predicted):
        assert np.allclose(cam["K"], frame.camera.K)
        assert np.load(out / "depth" / f"{frame.name}.npy").shape == (36, 48)
        assert np.load(out / "confidence" / f"{frame.name}.npy").min() >= 0
        R = np.asarray(pred["world_to_camera"])[:3, :3]
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-6)
    assert report["network_size"][0] == 56
    # The fused cloud lies on the dataset cameras' rays at the stored depth: every point lands on a pixel centre of
    # some frame at that pixel's depth.
    points, per_frame = fused_points_on_frames(out, 48, 36)
    best = np.full(len(points), np.inf)
    for _, _, centred, error in per_frame:
        best = np.minimum(best, np.where(centred, error, np.inf))
    assert len(points) > 0 and np.all(best < 1e-4)


def test_rgba_frames_have_no_moving_or_fused_pixels_where_alpha_is_low(tmp_path, small_weights, monkeypatch):
    """An RGBA scene (a D-NeRF object on an empty background): the network predicts depth everywhere, but where the
    dataset's alpha is below one half there is no surface, so the written dynamic masks are False there and no
    point of the fused cloud comes from there (as the initialize stage keeps pixels)."""
    import dataclasses

    import imageio.v3 as iio

    scene = raycast_scene.make_scene(frames=4, width=48, height=36)
    alpha = np.ones((36, 48), np.float32)
    alpha[:, :20] = 0.0                                        # the left columns are empty background
    frames = [dataclasses.replace(f, load_image=lambda f=f: np.concatenate([f.load_image(), alpha[..., None]], -1))
              for f in scene.frames]
    scene = dataclasses.replace(scene, frames=frames)
    # Every pixel moving, as the masks of the network's prediction, so that only alpha can clear them.
    import stages.geometry.stage as geometry_stage

    monkeypatch.setattr(geometry_stage, "dynamic_masks", lambda depth, *args: np.ones(depth.shape, bool))
    settings = [f"geometry.checkpoint={small_weights}"]
    _, plain_out = run_stage(tmp_path / "plain", raycast_scene.make_scene(frames=4, width=48, height=36), settings)
    summary, out = run_stage(tmp_path, scene, settings)
    assert all((iio.imread(plain_out / "dynamic_mask" / f"{f.name}.png") > 127).all() for f in frames)
    for frame in frames:
        mask = iio.imread(out / "dynamic_mask" / f"{frame.name}.png") > 127
        assert not mask[:, :20].any() and mask[:, 20:].all()
    points, per_frame = fused_points_on_frames(out, 48, 36)
    assert len(points) == summary["points"] > 0
    from_frame = np.zeros(len(points), bool)          # each point lies on a pixel centre of a frame at its depth
    for col, _, centred, error in per_frame:
        on_ray = centred & (error < 1e-4)
        assert not (on_ray & (col < 20)).any(), "a fused point from an empty pixel"
        from_frame |= on_ray
    assert from_frame.all()


def test_shared_focal_length_takes_the_median_and_keeps_the_rest():
    from stages.geometry.stage import shared_focal_length

    K = np.tile(np.eye(3), (5, 1, 1))
    K[:, 0, 0] = [500.0, 520.0, 900.0, 480.0, 510.0]      # one misjudged frame
    K[:, 1, 1] = [505.0, 515.0, 880.0, 470.0, 512.0]
    K[:, 0, 2], K[:, 1, 2] = np.arange(5.0) + 100, 60.0
    shared = shared_focal_length(K)
    assert np.all(shared[:, 0, 0] == 510.0) and np.all(shared[:, 1, 1] == 512.0)
    assert np.array_equal(shared[:, :2, 2], K[:, :2, 2]) and K[2, 0, 0] == 900.0     # principal points; input kept


def test_network_geometry_with_a_shared_focal_length(tmp_path, small_weights):
    scene = raycast_scene.make_scene(frames=4, width=48, height=36)
    focal = {}
    for shared in (False, True):
        _, out = run_stage(tmp_path / str(shared), scene, [f"geometry.checkpoint={small_weights}", "geometry.cameras=model",
                                                           f"geometry.shared_focal={str(shared).lower()}"])
        frames = json.loads((out / "cameras.json").read_text())["frames"]
        focal[shared] = np.array([[f["K"][0][0], f["K"][1][1]] for f in frames])     # (S, 2) stored pixels
    assert len(np.unique(focal[False][:, 0])) > 1, "the random network predicts a focal length per frame"
    assert np.allclose(focal[True], np.median(focal[False], axis=0))
    predicted = json.loads((out / "geometry.json").read_text())["predicted_fx_px"]     # recorded before sharing
    assert np.allclose([predicted["min"], predicted["median"], predicted["max"]],
                       [focal[False][:, 0].min(), np.median(focal[False][:, 0]), focal[False][:, 0].max()])


def test_network_geometry_with_a_known_field_of_view(tmp_path, small_weights):
    from pipeline.errors import UserError
    from stages.geometry.stage import check_config

    scene = raycast_scene.make_scene(frames=3, width=48, height=36)
    _, out = run_stage(tmp_path, scene, [f"geometry.checkpoint={small_weights}", "geometry.cameras=model",
                                         "geometry.fov_x_deg=60"])
    for frame in json.loads((out / "cameras.json").read_text())["frames"]:
        K = np.asarray(frame["K"])
        assert np.allclose([K[0, 0], K[1, 1]], 24.0 / np.tan(np.radians(30.0)))     # 48 px wide, 60 degrees
    config = default_config()
    apply_overrides(config, ["geometry.fov_x_deg=180"])
    with pytest.raises(UserError, match="fov_x_deg"):
        check_config(config.geometry)


# ----------------------------------------------------------------------------------------------------------------
# Depth scale under dataset cameras


def test_consistency_scale_recovers_a_known_depth_scale_and_the_alignment_uses_it():
    from stages.geometry.consistency import consistency_scale
    from stages.geometry.stage import align_to_dataset

    depth, K, w2c, _, _ = raycast_scene.render(frames=10)
    network_depth = depth * np.float32(0.37)                 # the network's units: 0.37 x the dataset's
    fit = consistency_scale(torch.from_numpy(network_depth), torch.from_numpy(K), torch.from_numpy(w2c), 1.0)
    assert fit.well_posed and abs(fit.scale * 0.37 - 1) < 0.02 and fit.score > 0.5
    # Coarse maps (32 x 24, 4x fewer samples): bilinear lookups keep it within 5 % (nearest pixels gave 23 % off).
    small, K_small, w2c_small, _, _ = raycast_scene.render(frames=10, width=32, height=24, focal=22.5)
    coarse = consistency_scale(torch.from_numpy(small * np.float32(0.37)), torch.from_numpy(K_small),
                               torch.from_numpy(w2c_small), 1.0)
    assert coarse.well_posed and abs(coarse.scale * 0.37 - 1) < 0.05
    # Predicted cameras unrelated to the images: their centres give a wrong scale, the depths the right one.
    rng = np.random.default_rng(0)
    scrambled = w2c.copy()
    scrambled[:, :3, 3] = rng.normal(size=(10, 3)) * 0.05
    alignment, record = align_to_dataset(network_depth, np.ones_like(network_depth), scrambled, K, w2c)
    assert abs(alignment.scale * 0.37 - 1) < 0.02 and record["method"].startswith("depth agreement")
    assert abs(record["camera_scale"] * 0.37 - 1) > 0.5


def test_consistency_scale_is_not_well_posed_for_a_camera_that_barely_moves():
    from stages.geometry.consistency import consistency_scale

    depth, K, w2c, _, _ = raycast_scene.render(frames=1)
    frames = 6
    still = np.repeat(w2c, frames, axis=0)
    still[:, 0, 3] += np.linspace(0, 1e-4, frames)             # a tenth of a millimetre in a 8 m room
    fit = consistency_scale(torch.from_numpy(np.repeat(depth, frames, axis=0)),
                            torch.from_numpy(np.repeat(K, frames, 0)), torch.from_numpy(still), 1.0)
    assert not fit.well_posed


def _yaw(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def test_blend_world_to_camera_slerps_the_orientation_and_interpolates_the_centre():
    from stages.geometry.page4d.inference import blend_world_to_camera

    first, second = np.eye(4), np.eye(4)
    second[:3, :3] = _yaw(20.0).T                          # the camera turned 20 degrees about y ...
    second[:3, 3] = -second[:3, :3] @ np.array([1.0, 0.0, 2.0])   # ... and moved to (1, 0, 2)
    assert np.allclose(blend_world_to_camera(first, second, 0.0), first, atol=1e-12)
    assert np.allclose(blend_world_to_camera(first, second, 1.0), second, atol=1e-12)
    half = blend_world_to_camera(first, second, 0.25)
    assert np.allclose(half[:3, :3], _yaw(5.0).T, atol=1e-12)
    assert np.allclose(-half[:3, :3].T @ half[:3, 3], [0.25, 0.0, 0.5], atol=1e-12)


class DriftingOracle(WindowOracle):
    """Each window's cameras drift, every other window the other way: its j-th camera turns j * 3 degrees too far
    left or right, so windows disagree where they overlap. Records each window's cameras as returned."""

    def __call__(self, frames):
        pred = super().__call__(frames)
        drift = 3.0 * (1 if len(self.seen) % 2 == 0 else -1)
        for j, w in enumerate(pred.world_to_camera):
            centre = -w[:3, :3].T @ w[:3, 3]
            w[:3, :3] = _yaw(drift * j) @ w[:3, :3]
            w[:3, 3] = -w[:3, :3] @ centre
        self.seen.append(pred.world_to_camera.copy())
        return pred


def test_shared_frames_move_from_the_earlier_window_to_the_next_along_the_geodesic():
    """Where windows disagree, the k-th of the n frames a window shares with the one before gets the camera
    k/(n+1) of the way (rotation angle and centre) from the earlier window's estimate to the new one's; every
    other frame keeps its window's camera, as without blending."""
    from pipeline.cameras import Sim3
    from stages.evaluate.pose_metrics import rotation_angle_rad
    from stages.geometry.page4d.inference import blend_world_to_camera

    depth, K, w2c, _, _ = raycast_scene.render(frames=23, width=32, height=24)
    S = len(depth)
    runs = {}
    for blend in (False, True):
        oracle = DriftingOracle(depth, K, w2c, np.random.default_rng(3))
        oracle.seen = []
        runs[blend] = predict_sequence(oracle, IndexFrames(S), window=8, overlap=3, show_progress=False,
                                       blend_cameras=blend)
    windows, blended = runs[True].windows, runs[True].world_to_camera

    def estimate(w: int, frame: int) -> np.ndarray:        # window w's camera of a frame, in the joined world
        sim = windows[w]["sim3"]
        joined = Sim3(sim["scale"], np.array(sim["rotation"]), np.array(sim["translation"]))
        return joined.transform_w2c(oracle.seen[w][frame - windows[w]["start"]])

    shared, totals = set(), []
    for w in range(1, len(windows)):
        frames = range(windows[w]["start"], windows[w - 1]["stop"])
        for k, i in enumerate(frames, start=1):
            shared.add(i)
            weight = k / (len(frames) + 1)
            earlier, later = estimate(w - 1, i), estimate(w, i)
            assert np.allclose(blended[i], blend_world_to_camera(earlier, later, weight), atol=1e-6)
            angle = lambda a, b: np.degrees(rotation_angle_rad((a[:3, :3] @ b[:3, :3].T)[None]))[0]
            total = angle(later, earlier)
            totals.append(total)
            assert abs(angle(blended[i], earlier) - weight * total) < 1e-4
            assert abs(angle(later, blended[i]) - (1 - weight) * total) < 1e-4
    assert sorted(shared) == [5, 6, 7, 10, 11, 12, 15, 16, 17]
    assert max(totals) > 5.0                                              # the windows do disagree
    for i in set(range(S)) - shared:
        assert np.allclose(blended[i], runs[False].world_to_camera[i], atol=1e-6)


def test_model_cameras_are_refined_photometrically_unless_switched_off(tmp_path, small_weights):
    from pipeline.errors import UserError
    from stages.geometry.stage import check_config

    scene = raycast_scene.make_scene(frames=4, width=48, height=36)
    records, cameras, photometric = {}, {}, {}
    for refine in (True, False):
        _, out = run_stage(tmp_path / str(refine), scene, [f"geometry.checkpoint={small_weights}",
                                                            "geometry.cameras=model",
                                                            f"geometry.refine_cameras={str(refine).lower()}"])
        summary = json.loads((out / "geometry.json").read_text())
        records[refine] = summary.get("camera_refinement")
        photometric[refine] = summary["mask_photometric_weight"]
        cameras[refine] = np.array([f["world_to_camera"] for f in json.loads((out / "cameras.json").read_text())
                                    ["frames"]])
    assert records[False] is None
    assert photometric[False] == 0.0           # the masks' colour votes need refined cameras: off without
    assert photometric[True] == (2.0 if records[True]["kept"] else 0.0)
    record = records[True]
    assert record["frames"] == 4 and record["pairs"] == 2 * (3 + 2)            # offsets 1 and 2 (4, 8 too long)
    np.testing.assert_allclose(cameras[True][0], cameras[False][0], atol=1e-9)  # frame 0 is the world
    config = default_config()
    apply_overrides(config, ["geometry.refine_iterations=0"])
    with pytest.raises(UserError, match="refine_iterations"):
        check_config(config.geometry)


def test_refined_cameras_are_what_the_stage_writes(tmp_path, small_weights, monkeypatch):
    """Whatever the refinement returns (here: every camera but the first turned by 2 degrees about y, focal lengths
    10 % longer) is what cameras.json holds, with the refinement's inputs at the network resolution."""
    import stages.geometry.photometric as photometric

    seen = {}

    def turned(images, depth, weight, K, world_to_camera, params):
        seen.update(images=tuple(images.shape), depth=tuple(depth.shape), weight=weight, K=K.clone(),
                    focal=params.focal)
        out = np.array(world_to_camera, dtype=np.float64)
        angle = np.radians(2.0)
        turn = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
        out[1:, :3, :] = turn @ out[1:, :3, :]
        longer = K.double().numpy().copy()
        longer[:, 0, 0] *= 1.1
        longer[:, 1, 1] *= 1.1
        return photometric.RefinedCameras(out, longer, {
            "frames": len(out), "pairs": 0, "kept": True, "cost_before": 1.0, "cost_after": 0.5,
            "rotation_change_deg": {"mean": 1.5, "max": 2.0}, "focal_scale": 1.1})

    scene = raycast_scene.make_scene(frames=4, width=48, height=36)
    base = [f"geometry.checkpoint={small_weights}", "geometry.cameras=model"]
    _, plain = run_stage(tmp_path / "plain", scene, base + ["geometry.refine_cameras=false"])
    monkeypatch.setattr(photometric, "refine_cameras", turned)
    _, out = run_stage(tmp_path / "refined", scene, base + ["geometry.refine_focal=true"])
    frames = {name: json.loads((folder / "cameras.json").read_text())["frames"]
              for name, folder in (("plain", plain), ("refined", out))}
    cameras = {name: np.array([f["world_to_camera"] for f in entries]) for name, entries in frames.items()}
    for plain_frame, refined_frame in zip(frames["plain"], frames["refined"]):     # stored pixels
        plain_K, refined_K = np.array(plain_frame["K"]), np.array(refined_frame["K"])
        np.testing.assert_allclose(refined_K[[0, 1], [0, 1]], 1.1 * plain_K[[0, 1], [0, 1]], rtol=1e-6)
        np.testing.assert_allclose(refined_K[:2, 2], plain_K[:2, 2], rtol=1e-9)   # principal points kept
    np.testing.assert_allclose(cameras["refined"][0], cameras["plain"][0], atol=1e-9)
    for k in range(1, 4):
        relative = cameras["refined"][k][:3, :3] @ cameras["plain"][k][:3, :3].T
        assert np.isclose(np.degrees(np.arccos((np.trace(relative) - 1) / 2)), 2.0, atol=1e-6)
    assert seen["images"][:2] == (4, 3) and seen["depth"] == (4, *seen["images"][2:]) and seen["focal"]
    assert 0.5 < float(seen["weight"].mean()) < 0.8          # the 30 % least confident are no source
    assert json.loads((out / "geometry.json").read_text())["camera_refinement"]["cost_after"] == 0.5


def photometric_room(frames: int = 8, frozen: bool = False):
    """The ray-cast room with smooth wall colours (tests/geometry/test_photometric.py), images (S, 3, H, W)."""
    from tests.geometry.test_photometric import smooth_colours
    kwargs = dict(start=(0.5, 0, 0), end=(0.5, 0, 0)) if frozen else {}
    depth, K, w2c, moving, _ = raycast_scene.render(frames=frames, width=96, height=72, **kwargs)
    images = np.ascontiguousarray(smooth_colours(depth, K, w2c, moving).transpose(0, 3, 1, 2))
    return depth, K, w2c, moving, images


def test_photometric_votes_find_the_mover_and_not_what_it_occludes():
    depth, K, w2c, moving, images = photometric_room()
    params = ConsistencyParams(gap=1, photometric_weight=2.0)
    score, counts = photometric_scores(torch.from_numpy(images), torch.from_numpy(depth), torch.from_numpy(K),
                                       torch.from_numpy(w2c), params)
    score = score.numpy()
    assert score[moving].mean() > 0.6 and score[~moving].mean() < 0.02
    # static wall points that the sphere hides in a neighbour do not vote there: without that check (an occlusion
    # threshold too large to fire) the photometric score alone marks the sphere's path in the other frames too
    no_check, _ = photometric_scores(torch.from_numpy(images), torch.from_numpy(depth), torch.from_numpy(K),
                                     torch.from_numpy(w2c), ConsistencyParams(gap=1, threshold=10.0))
    assert (no_check.numpy()[~moving] > 0.3).sum() > 2 * (score[~moving] > 0.3).sum()
    masks = dynamic_masks(depth, K, w2c, params, images=images)
    assert (masks & moving).sum() / (masks | moving).sum() > 0.7 and (masks & ~moving).mean() < 0.02
    # a brightening video (auto-exposure): one gain per pair and channel keeps the static walls quiet
    brighter = np.clip(images * np.linspace(1.0, 1.3, len(images))[:, None, None, None], 0, 1).astype(np.float32)
    masks_brighter = dynamic_masks(depth, K, w2c, params, images=brighter)
    assert (masks_brighter & ~moving).mean() < 0.02 and (masks_brighter & moving).sum() > 0.7 * moving.sum()
    # without images the votes are not computed and the masks are the depth test's
    assert np.array_equal(dynamic_masks(depth, K, w2c, params), dynamic_masks(depth, K, w2c, ConsistencyParams(gap=1)))


def test_photometric_votes_stay_quiet_on_a_static_scene():
    depth, K, w2c, moving, images = photometric_room(frozen=True)
    masks = dynamic_masks(depth, K, w2c, ConsistencyParams(gap=1, photometric_weight=2.0), images=images)
    assert masks.mean() < 0.02            # a few silhouette pixels, where bilinear sampling mixes sphere and wall
