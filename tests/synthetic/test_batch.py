"""Training batches: the tensors are mutually consistent ground truth (depth, points, cameras, masks), the scenes
vary as promised, and a seed reproduces a batch."""

import math

import pytest
import torch

from pipeline.synthetic.batch import (BatchOptions, SyntheticBatches, random_batch, random_image_size, random_times,
                                      render_batch, to_first_camera)
from pipeline.synthetic.cameras import fov_x_from_longer_side

OPTIONS = BatchOptions(textures=4)


@pytest.fixture(scope="module")
def source():
    return SyntheticBatches("cpu", seed=0, options=OPTIONS)


@pytest.fixture(scope="module")
def portrait(source):
    return source.sample(batch_size=3, num_frames=4, height=42, width=28)


def test_shapes_and_ranges(portrait):
    B, S, H, W = 3, 4, 42, 28
    expected = {"images": (B, S, 3, H, W), "depth": (B, S, H, W), "world_points": (B, S, H, W, 3),
                "dynamic_mask": (B, S, H, W), "valid": (B, S, H, W), "world_to_camera": (B, S, 4, 4),
                "K": (B, S, 3, 3), "times": (B, S)}
    assert {k: tuple(v.shape) for k, v in portrait.items()} == expected
    assert portrait["dynamic_mask"].dtype == torch.bool and portrait["valid"].dtype == torch.bool
    assert portrait["images"].min() >= 0 and portrait["images"].max() <= 1
    assert portrait["valid"].all()                                   # inside a room every ray hits a wall
    assert (portrait["times"][:, 1:] > portrait["times"][:, :-1]).all()
    assert portrait["images"].std(dim=(3, 4)).amin() > 0.02         # textured, not flat


def test_depth_points_and_cameras_agree(portrait):
    """World points are the depth maps unprojected at pixel centres through K and world-to-camera."""
    B, S, H, W = portrait["depth"].shape
    K, w2c = portrait["K"].double(), portrait["world_to_camera"].double()
    camera = torch.einsum("bsij,bshwj->bshwi", w2c[..., :3, :3], portrait["world_points"].double()) \
        + w2c[..., None, None, :3, 3]
    assert torch.allclose(camera[..., 2], portrait["depth"].double(), rtol=1e-5, atol=1e-6)
    u = K[..., 0, 0, None, None] * camera[..., 0] / camera[..., 2] + K[..., 0, 2, None, None]
    v = K[..., 1, 1, None, None] * camera[..., 1] / camera[..., 2] + K[..., 1, 2, None, None]
    jj, ii = torch.meshgrid(torch.arange(W) + 0.5, torch.arange(H) + 0.5, indexing="xy")
    assert (u - jj).abs().max() < 1e-3 and (v - ii).abs().max() < 1e-3
    # Field of view 40-90 degrees on the longer (here vertical) side, square pixels, centred principal point.
    fov_y = 2 * torch.atan(0.5 * H / K[..., 1, 1])
    assert ((fov_y > math.radians(40) - 1e-6) & (fov_y < math.radians(90) + 1e-6)).all()
    assert torch.equal(K[..., 0, 0], K[..., 1, 1]) and (K[..., 0, 2] == W / 2).all() and (K[..., 1, 2] == H / 2).all()


def test_dynamic_masks_are_exact_and_present(source):
    spec, times = source.sample_spec(3, 3, 30, 40)
    full = render_batch(spec, times, 30, 40, source.bank)
    static = render_batch(spec.select(~spec.dynamic()), times, 30, 40, source.bank)
    changed = full["depth"] != static["depth"]
    assert torch.equal(full["dynamic_mask"], changed)
    assert full["dynamic_mask"].flatten(1).any(1).all()             # every sequence shows something moving


def test_first_camera_world(portrait):
    moved = to_first_camera(portrait)
    eye = torch.eye(4).expand(3, 4, 4)
    assert torch.allclose(moved["world_to_camera"][:, 0], eye, atol=1e-5)
    # Points seen by the first camera are its camera-frame points: z = depth.
    assert torch.allclose(moved["world_points"][:, 0, ..., 2], portrait["depth"][:, 0], rtol=1e-4, atol=1e-4)
    # Projections are unchanged for every frame.
    def depth_of(batch):
        w2c = batch["world_to_camera"]
        return (torch.einsum("bsj,bshwj->bshw", w2c[..., 2, :3], batch["world_points"]) + w2c[..., 2, 3, None, None])
    assert torch.allclose(depth_of(moved), depth_of(portrait), rtol=1e-4, atol=1e-4)


def test_seed_reproduces_batches_and_scenes_vary():
    a = SyntheticBatches("cpu", seed=3, options=OPTIONS).sample(2, 2, 14, 28)
    b = SyntheticBatches("cpu", seed=3, options=OPTIONS).sample(2, 2, 14, 28)
    c = SyntheticBatches("cpu", seed=4, options=OPTIONS).sample(2, 2, 14, 28)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["images"], c["images"])
    assert not torch.allclose(a["world_to_camera"][0], a["world_to_camera"][1])   # two different rooms
    d = random_batch(2, 3, 14, 28, seed=11, fov_deg=(50, 60), options=OPTIONS)
    e = random_batch(2, 3, 14, 28, seed=11, fov_deg=(50, 60), options=OPTIONS)
    f = random_batch(2, 3, 14, 28, seed=12, fov_deg=(50, 60), options=OPTIONS)
    assert all(torch.equal(d[k], e[k]) for k in d) and not torch.equal(d["images"], f["images"])
    fov = 2 * torch.atan(0.5 * 28 / d["K"][..., 0, 0])
    assert ((fov > math.radians(50) - 1e-5) & (fov < math.radians(60) + 1e-5)).all()


def test_sizes_times_and_fields_of_view_are_drawn_in_range():
    generator = torch.Generator().manual_seed(0)
    sizes = [random_image_size(generator) for _ in range(200)]
    assert all(h % 14 == 0 and w % 14 == 0 for h, w in sizes)
    ratios = [w / h for h, w in sizes]
    assert min(ratios) < 0.7 and max(ratios) > 1.9 and all(0.5 < r < 2.5 for r in ratios)
    assert all(abs(h * w / 224**2 - 1) < 0.25 for h, w in sizes)
    times = random_times(generator, 100, 5, (0.1, 1.0))
    assert times.min() >= 0 and times.max() <= 1 and (times[:, -1] - times[:, 0]).min() >= 0.1 - 1e-6
    wide = fov_x_from_longer_side(torch.tensor(1.0), 40, 20)
    tall = fov_x_from_longer_side(torch.tensor(1.0), 20, 40)
    assert wide == 1.0 and torch.isclose(torch.tan(tall / 2), torch.tan(torch.tensor(0.5)) / 2)
