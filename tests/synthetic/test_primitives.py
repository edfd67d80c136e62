"""Analytic ray casting against a slow, obviously correct reference: marching along each ray in float64 and asking
the inside/outside test of the solid."""

import math

import pytest
import torch

from pipeline.synthetic.primitives import INTERSECT, inside, material_group, surface_frame

SIZES = {"box": (0.6, 0.3, 0.45), "room": (2.0, 1.5, 1.2), "ellipsoid": (0.6, 0.3, 0.45),
         "capsule": (0.3, 0.3, 0.5)}


def random_rays(kind: str, n: int, generator: torch.Generator):
    """Component-first (3, n) float64 rays: from outside aiming near the solid, or from inside a room."""
    if kind == "room":
        origin = (torch.rand(3, n, generator=generator, dtype=torch.float64) * 2 - 1) * 0.9 \
            * torch.tensor(SIZES[kind], dtype=torch.float64)[:, None]
        direction = torch.randn(3, n, generator=generator, dtype=torch.float64)
        direction = direction / direction.norm(dim=0)
    else:
        origin = torch.randn(3, n, generator=generator, dtype=torch.float64)
        origin = origin / origin.norm(dim=0) * 3.0
        aim = (torch.rand(3, n, generator=generator, dtype=torch.float64) - 0.5) * 1.6
        direction = (aim - origin) * (0.5 + torch.rand(n, generator=generator, dtype=torch.float64))
    return origin, direction


@pytest.mark.parametrize("kind", ["box", "room", "ellipsoid", "capsule"])
def test_first_hit_matches_marching(kind):
    generator = torch.Generator().manual_seed(1)
    n = 400
    origin, direction = random_rays(kind, n, generator)
    size = torch.tensor(SIZES[kind], dtype=torch.float64)[:, None]
    t = INTERSECT[kind](origin, direction, size, 0.0)
    hit = torch.isfinite(t)
    assert 0.2 < hit.double().mean() <= 1.0
    if kind == "room":
        assert hit.all()

    # March from the origin: the first sample whose inside-ness differs from the start bounds the hit parameter.
    steps = torch.linspace(0, 8.0, 16001, dtype=torch.float64)                     # t resolution 5e-4
    samples = origin[:, :, None] + steps * direction[:, :, None]                    # (3, n, T)
    inside_now = inside(kind, samples, size[:, :, None])                           # (n, T)
    start = inside_now[:, :1]
    changed = inside_now != start
    first = torch.where(changed.any(1), steps[changed.int().argmax(1)], torch.full((n,), math.inf,
                                                                                    dtype=torch.float64))
    resolution = steps[1] - steps[0]
    if kind == "room":
        assert torch.equal(torch.isfinite(first), hit)
    else:
        # Rays that only graze the solid (a chord shorter than the marching step) may slip between samples; the
        # chord's far end is where the reversed ray from far beyond enters the solid.
        far = 20.0
        t_exit = far - INTERSECT[kind](origin + far * direction, -direction, size, 0.0)
        grazing = hit & (t_exit - t < 2 * resolution)
        assert grazing.double().mean() < 0.02
        assert torch.equal(torch.isfinite(first)[~grazing], hit[~grazing])
        hit = hit & ~grazing
    assert torch.all((t[hit] <= first[hit] + 1e-9) & (t[hit] >= first[hit] - resolution - 1e-9))

    # The hit point is on the surface: the implicit test flips within 1e-9 along the ray.
    point = origin + t.where(hit, 0.0) * direction
    length = direction.norm(dim=0)
    before = inside(kind, point - 1e-9 * direction / length, size)
    after = inside(kind, point + 1e-9 * direction / length, size)
    assert torch.all(before[hit] != after[hit])


@pytest.mark.parametrize("kind", ["box", "room", "ellipsoid", "capsule"])
def test_normals_point_out_of_the_solid_and_textures_stick_to_material(kind):
    generator = torch.Generator().manual_seed(2)
    origin, direction = random_rays(kind, 500, generator)
    size = torch.tensor(SIZES[kind], dtype=torch.float64)[:, None]
    t = INTERSECT[kind](origin, direction, size, 0.0)
    hit = torch.isfinite(t)
    point = (origin + t.where(hit, 0.0) * direction)[:, hit]
    tiles = torch.full(point.shape[1:], 2.0, dtype=torch.float64)
    normal, uv = surface_frame(kind, point, size, size, tiles)
    unit = normal / normal.norm(dim=0)
    eps = 1e-7
    outward = -unit if kind == "room" else unit       # room normals face into the room, i.e. out of the walls
    assert inside(kind, point - eps * outward, size).all()
    assert not inside(kind, point + eps * outward, size).any()
    assert torch.isfinite(uv).all()
    # A non-rigid ellipsoid: scaling the shape (and the point with it) leaves the texture coordinates unchanged.
    if kind == "ellipsoid":
        stretch = torch.tensor([1.3, 0.8, 1.1], dtype=torch.float64)[:, None]
        _, uv_stretched = surface_frame(kind, point * stretch, size * stretch, size, tiles)
        assert torch.allclose(uv, uv_stretched, atol=1e-12)
    if kind in ("box", "room"):
        group = material_group(kind, point, size)
        on_z = (point[2].abs() - size[2]).abs() < 1e-9
        expected = torch.where(on_z, torch.where(point[2] > 0, 1, 2), 0)
        assert torch.equal(group, expected)
