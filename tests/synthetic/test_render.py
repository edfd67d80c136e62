"""The renderer's ground truth checked against itself from other viewpoints, in float64: depth unprojected in one
view lands on the surface another view sees (same time: everything; other times: the static part), with the same
colour; dynamic masks are exactly the pixels that change when the moving objects are removed."""

import math

import pytest
import torch

from pipeline.synthetic.cameras import intrinsics, look_at, sphere_viewpoints
from pipeline.synthetic.render import render
from pipeline.synthetic.scenes import pose, sample_object, sample_room
from pipeline.synthetic.textures import make_texture_bank

W, H = 64, 40


@pytest.fixture(scope="module")
def bank():
    return make_texture_bank(torch.Generator().manual_seed(0), procedural=8, size=64)


def room(bank, seed):
    generator = torch.Generator().manual_seed(seed)
    return sample_room(generator, 1, bank.count, W, H).to(torch.float64)


def unproject(depth, K, w2c):
    """World points (H, W, 3) of pixel centres at z-depth ``depth`` (H, W)."""
    jj, ii = torch.meshgrid(torch.arange(W, dtype=torch.float64) + 0.5, torch.arange(H, dtype=torch.float64) + 0.5,
                            indexing="xy")
    camera = torch.stack([(jj - K[0, 2]) / K[0, 0] * depth, (ii - K[1, 2]) / K[1, 1] * depth, depth], -1)
    R, t = w2c[:3, :3], w2c[:3, 3]
    return (camera - t) @ R                                                       # R^T (x_c - t)


def project(points, K, w2c):
    camera = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = camera[..., 2]
    uv = torch.stack([K[0, 0] * camera[..., 0] / z + K[0, 2], K[1, 1] * camera[..., 1] / z + K[1, 2]], -1)
    return uv, z


def reprojection(bank, spec, time_a, time_b, w2c, K):
    """Render view A at time_a (full image) and view B at time_b at the exact positions where A's surface points
    project. Returns (A's render, B's render at those positions, projected z in B, inside-B mask)."""
    a = render(pose(spec, torch.tensor([[time_a]], dtype=torch.float64)), K[None, :1], w2c[None, :1], W, H, bank,
               mipmaps=False, extras=True)
    points = unproject(a["depth"][0, 0], K[0], w2c[0])
    uv, z = project(points, K[1], w2c[1])
    inside = (uv[..., 0] > 0) & (uv[..., 0] < W) & (uv[..., 1] > 0) & (uv[..., 1] < H) & (z > 0)
    b = render(pose(spec, torch.tensor([[time_b]], dtype=torch.float64)), K[None, 1:], w2c[None, 1:], W, H, bank,
               pixels=uv.reshape(1, 1, -1, 2), mipmaps=False, extras=True)
    b = {k: v.reshape(H, W, *v.shape[3:]) for k, v in b.items()}
    return {k: v[0, 0] for k, v in a.items()}, b, z, inside


@pytest.mark.parametrize("seed", [0, 1])
def test_room_depth_reprojects_exactly_at_the_same_time(bank, seed):
    spec = room(bank, seed)
    times = torch.tensor([[0.3, 0.65]], dtype=torch.float64)
    w2c = spec.camera_path.world_to_camera(times)[0]
    K = intrinsics(spec.fov_x.expand(2), W, H)
    a, b, z, inside = reprojection(bank, spec, 0.3, 0.3, w2c, K)
    assert bool((a["depth"] > 0).all()) and inside.float().mean() > 0.5
    relative = (b["depth"] - z) / z
    agree = inside & (relative.abs() < 1e-9)
    # Where B does not see the point, something nearer hides it: never a farther surface.
    assert not bool((inside & (relative > 1e-9)).any())
    assert agree.float().sum() / inside.float().sum() > 0.75
    # The same surface point, with the same material coordinates: the same albedo and, at the same time, colour.
    assert torch.equal(a["slot"][agree], b["slot"][agree])
    assert (a["albedo"][agree] - b["albedo"][agree]).abs().max() < 1e-9
    assert (a["rgb"][agree] - b["rgb"][agree]).abs().max() < 1e-9
    assert a["dynamic"][agree].any(), "a moving object should be visible in both views"


def test_room_static_pixels_reproject_across_times_and_moving_ones_do_not(bank):
    spec = room(bank, 2)
    times = torch.tensor([[0.2, 0.8]], dtype=torch.float64)
    w2c = spec.camera_path.world_to_camera(times)[0]
    K = intrinsics(spec.fov_x.expand(2), W, H)
    a, b, z, inside = reprojection(bank, spec, 0.2, 0.8, w2c, K)
    relative = (b["depth"] - z) / z
    static = inside & ~a["dynamic"]
    agree = static & (relative.abs() < 1e-9)
    assert not bool((static & (relative > 1e-9) & ~b["dynamic"]).any())
    assert agree.float().sum() / static.float().sum() > 0.75
    assert (a["rgb"][agree] - b["rgb"][agree]).abs().max() < 1e-9                # static light: same colour
    moved = inside & a["dynamic"]
    assert (relative[moved].abs() > 1e-6).float().mean() > 0.5


def test_object_views_agree_and_background_is_empty(bank):
    generator = torch.Generator().manual_seed(4)
    spec = sample_object(generator, 1, bank.count).to(torch.float64)
    w2c = sphere_viewpoints(generator, 2, 3.6, (10, 40), target=(0, 0, -0.1), dtype=torch.float64)
    K = intrinsics(torch.full((2,), 0.69, dtype=torch.float64), W, H)
    a, b, z, inside = reprojection(bank, spec, 0.4, 0.4, w2c, K)
    hit = a["depth"] > 0
    assert 0.05 < hit.float().mean() < 0.9
    assert torch.equal(a["alpha"] > 0, hit) and torch.equal(a["slot"] >= 0, hit)
    assert not bool(a["dynamic"][~hit].any()) and bool((a["points"][~hit] == 0).all())
    relative = (b["depth"] - z) / z
    valid = inside & hit
    agree = valid & (relative.abs() < 1e-9)
    occluded = valid & (b["depth"] > 0) & (relative < -1e-9)
    assert torch.equal(agree | occluded, valid)                  # every point is seen by B or hidden from it
    assert agree.float().sum() / valid.float().sum() > 0.5


@pytest.mark.parametrize("seed", [3, 4])
def test_dynamic_mask_is_exactly_where_moving_objects_are_in_front(bank, seed):
    spec = room(bank, seed)
    times = torch.tensor([[0.0, 0.37, 1.0]], dtype=torch.float64)
    w2c = spec.camera_path.world_to_camera(times)
    K = intrinsics(spec.fov_x[:, None].expand(1, 3), W, H)
    full = render(pose(spec, times), K, w2c, W, H, bank)
    static = render(pose(spec.select(~spec.dynamic()), times), K, w2c, W, H, bank)
    changed = full["depth"] != static["depth"]
    assert full["dynamic"].any() and torch.equal(full["dynamic"], changed)
    assert bool((full["depth"][changed] < static["depth"][changed]).all())


def test_pixel_centre_rays_equal_the_image_and_points_are_unprojected_depth(bank):
    spec = room(bank, 5)
    times = torch.tensor([[0.5]], dtype=torch.float64)
    w2c = spec.camera_path.world_to_camera(times)
    K = intrinsics(spec.fov_x[:, None], W, H)
    image = render(pose(spec, times), K, w2c, W, H, bank, supersample=3)
    jj, ii = torch.meshgrid(torch.arange(W, dtype=torch.float64) + 0.5, torch.arange(H, dtype=torch.float64) + 0.5,
                            indexing="xy")
    rays = render(pose(spec, times), K, w2c, W, H, bank, pixels=torch.stack([jj, ii], -1).reshape(1, 1, -1, 2))
    for key in ("depth", "slot", "dynamic", "points"):
        assert torch.equal(image[key].reshape(rays[key].shape), rays[key])
    assert torch.allclose(image["points"][0, 0], unproject(image["depth"][0, 0], K[0, 0], w2c[0, 0]), atol=1e-12)
    # Supersampling changes colour only at edges, and only a little on average.
    difference = (image["rgb"].reshape(rays["rgb"].shape) - rays["rgb"]).abs().amax(-1)
    assert 0.0 < (difference > 0).float().mean() < 0.3


def test_every_visible_primitive_is_textured(bank):
    for seed in range(3):
        spec = room(bank, seed)
        times = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
        out = render(pose(spec, times), intrinsics(spec.fov_x[:, None].expand(1, 3), W, H),
                     spec.camera_path.world_to_camera(times), W, H, bank, extras=True)
        for slot in out["slot"].unique().tolist():
            region = out["slot"] == slot
            if region.sum() >= 60:
                albedo = out["albedo"][region]
                assert albedo.std(0).amax() > 0.02, f"seed {seed}: slot {slot} looks flat"


def test_cameras_look_at_their_target_with_square_pixels():
    eye = torch.tensor([[1.0, -2.0, 1.5]], dtype=torch.float64)
    target = torch.tensor([[0.0, 1.0, 0.5]], dtype=torch.float64)
    w2c = look_at(eye, target, torch.tensor([0.2], dtype=torch.float64))[0]
    assert torch.allclose(w2c[:3, :3] @ w2c[:3, :3].T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    K = intrinsics(torch.tensor([math.radians(60)], dtype=torch.float64), W, H)[0]
    uv, z = project(target, K, w2c)
    assert torch.allclose(uv, torch.tensor([[W / 2, H / 2]], dtype=torch.float64)) and z > 0
    assert K[0, 0] == K[1, 1] == 0.5 * W / math.tan(math.radians(30))
