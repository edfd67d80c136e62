"""Analytic ray casting of the primitives the synthetic scenes are built from.

Every function works in the primitive's **local frame** on **component-first** vectors: a tensor of shape
``(3, ...)`` whose leading axis is x, y, z, so that each component is a contiguous slab and all broadcasting happens
in the trailing axes. Rays are ``origin + t * direction`` with *unnormalised* directions; ``t`` is returned in units
of the direction, so a direction whose camera-z component is 1 yields z-depth directly, and an affine change of
frame (rotation, scaling) leaves ``t`` unchanged.

Primitive kinds (local frame, ``size`` = three numbers per primitive):

- ``room``: the inside of an axis-aligned box with half-extents ``size``; the camera is inside and sees the far
  faces. The faces normal to z are the ceiling (+z) and floor (-z).
- ``box``: a solid axis-aligned box with half-extents ``size``, seen from outside.
- ``ellipsoid``: semi-axes ``size``.
- ``capsule``: the points within ``size[0]`` of the segment from (0, 0, -size[2]) to (0, 0, +size[2]) (``size[1]``
  is unused and equal to ``size[0]`` by convention).
- ``none``: no geometry (a frame that other primitives hang from).

Misses are ``+inf``. Cameras are assumed outside every solid primitive and inside every room.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

KINDS = ("none", "room", "box", "ellipsoid", "capsule")
KIND_ID = {name: i for i, name in enumerate(KINDS)}
# Material groups: a primitive carries one material per group. Boxes and rooms use group 1 for their +z face
# (table top, ceiling) and group 2 for their -z face (underside, floor); everything else uses group 0.
MATERIAL_GROUPS = 3


def dot(a: Tensor, b: Tensor) -> Tensor:
    """Dot product of component-first vectors (3, ...) -> (...)."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _front_root(half_b: Tensor, a: Tensor, c: Tensor, near: float) -> Tensor:
    """The smaller root of a t^2 + 2 half_b t + c = 0 for a ray that starts outside (c > 0) and points towards the
    surface (half_b < 0), in the cancellation-free form t = c / (-half_b + sqrt(half_b^2 - a c)); +inf otherwise."""
    disc = half_b * half_b - a * c
    hit = (disc >= 0) & (c > 0) & (half_b < 0)
    t = c / (-half_b + torch.sqrt(disc.clamp_min(0)))
    return torch.where(hit & (t > near), t, torch.full_like(t, math.inf))


def intersect_ellipsoid(origin: Tensor, direction: Tensor, size: Tensor, near: float = 0.0) -> Tensor:
    """First hit of rays with ellipsoids centred at the local origin.

    origin, direction, size: component-first (3, ...), broadcastable. Returns t (...), +inf on a miss.
    """
    o = origin / size
    d = direction / size
    return _front_root(dot(o, d), dot(d, d), dot(o, o) - 1.0, near)


def _sphere(origin: Tensor, direction: Tensor, radius: Tensor, z_centre: Tensor, near: float) -> Tensor:
    oz = origin[2] - z_centre
    half_b = origin[0] * direction[0] + origin[1] * direction[1] + oz * direction[2]
    c = origin[0] * origin[0] + origin[1] * origin[1] + oz * oz - radius * radius
    return _front_root(half_b, dot(direction, direction), c, near)


def intersect_capsule(origin: Tensor, direction: Tensor, size: Tensor, near: float = 0.0) -> Tensor:
    """First hit of rays with capsules along the local z axis (radius ``size[0]``, half-length ``size[2]``).

    The capsule is the union of a finite cylinder and two spheres; the first hit on a union of convex solids seen
    from outside is the smallest of the first hits on its parts, and the cylinder's flat ends lie inside the spheres,
    so only its side (restricted to |z| <= half-length) is needed.
    """
    radius, half_length = size[0], size[2]
    a = direction[0] * direction[0] + direction[1] * direction[1]
    half_b = origin[0] * direction[0] + origin[1] * direction[1]
    c = origin[0] * origin[0] + origin[1] * origin[1] - radius * radius
    t_side = _front_root(half_b, a, c, near)
    z = origin[2] + t_side * direction[2]
    t_side = torch.where(z.abs() <= half_length, t_side, torch.full_like(t_side, math.inf))
    t_top = _sphere(origin, direction, radius, half_length, near)
    t_bottom = _sphere(origin, direction, radius, -half_length, near)
    return torch.minimum(t_side, torch.minimum(t_top, t_bottom))


def _slabs(origin: Tensor, direction: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit parameters (t_enter, t_exit) of rays through an axis-aligned box (the slab method)."""
    t_enter = t_exit = None
    for k in range(3):
        inv = 1.0 / direction[k]  # +-inf for axis-parallel rays: the slab is then all or nothing
        t1 = (-size[k] - origin[k]) * inv
        t2 = (size[k] - origin[k]) * inv
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        t_enter = lo if t_enter is None else torch.maximum(t_enter, lo)
        t_exit = hi if t_exit is None else torch.minimum(t_exit, hi)
    return t_enter, t_exit


def intersect_box(origin: Tensor, direction: Tensor, size: Tensor, near: float = 0.0) -> Tensor:
    """First hit of rays with solid boxes of half-extents ``size`` seen from outside."""
    t_enter, t_exit = _slabs(origin, direction, size)
    hit = (t_enter <= t_exit) & (t_enter > near)
    return torch.where(hit, t_enter, torch.full_like(t_enter, math.inf))


def intersect_room(origin: Tensor, direction: Tensor, size: Tensor, near: float = 0.0) -> Tensor:
    """Where rays starting inside a box of half-extents ``size`` leave it (the walls, floor and ceiling they see)."""
    t_enter, t_exit = _slabs(origin, direction, size)
    hit = (t_enter <= t_exit) & (t_exit > near)
    return torch.where(hit, t_exit, torch.full_like(t_exit, math.inf))


INTERSECT = {"room": intersect_room, "box": intersect_box, "ellipsoid": intersect_ellipsoid,
             "capsule": intersect_capsule}


def inside(kind: str, point: Tensor, size: Tensor) -> Tensor:
    """Whether local points (3, ...) lie inside the solid (for rooms: inside the room). Used by tests."""
    if kind in ("box", "room"):
        return (point.abs() <= size).all(dim=0)
    if kind == "ellipsoid":
        return dot(point / size, point / size) <= 1.0
    if kind == "capsule":
        axis_z = point[2].clamp(-size[2], size[2])
        return point[0] ** 2 + point[1] ** 2 + (point[2] - axis_z) ** 2 <= size[0] ** 2
    raise ValueError(kind)


def _face(point: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
    """The face of a box that local points (3, ...) lie on: its axis (...) long and side (...) +-1."""
    ratio = (point / size).abs()
    axis = torch.where((ratio[0] >= ratio[1]) & (ratio[0] >= ratio[2]), 0, torch.where(ratio[1] >= ratio[2], 1, 2))
    coordinate = torch.where(axis == 0, point[0], torch.where(axis == 1, point[1], point[2]))
    side = torch.where(coordinate > 0, 1.0, -1.0).to(point.dtype)
    return axis, side


def material_group(kind: str, point: Tensor, size: Tensor) -> Tensor:
    """Material group (...) long of local surface points (3, ...): for boxes and rooms 1 on the +z face (table top,
    ceiling), 2 on the -z face (underside, floor), 0 on the sides; 0 for every other kind."""
    if kind not in ("box", "room"):
        return torch.zeros(point.shape[1:], dtype=torch.long, device=point.device)
    axis, side = _face(point, size)
    return torch.where(axis == 2, torch.where(side > 0, 1, 2), 0)


def surface_frame(kind: str, point: Tensor, size: Tensor, rest_size: Tensor, tiles_per_meter: Tensor
                  ) -> tuple[Tensor, Tensor]:
    """Outward normal and texture coordinates at local surface points.

    point: (3, ...) local hit points; size: (3, ...) the current size; rest_size: (3, ...) the size at rest, which
    fixes the texture parameterisation of deforming ellipsoids (the texture follows the material, not the
    deformation); tiles_per_meter: (...) texture repeats per metre (one repeat = one texture image).
    Returns the normal (3, ...) (not normalised; for rooms it points into the room) and uv (2, ...) in repeats.
    """
    if kind in ("box", "room"):
        axis, side = _face(point, size)
        zero = torch.zeros_like(point[0])
        normal = torch.stack([torch.where(axis == k, side, zero) for k in range(3)])
        # The two in-face coordinates, in metres: (y, z) on x faces, (x, z) on y faces, (x, y) on z faces.
        u = torch.where(axis == 0, point[1], point[0])
        v = torch.where(axis == 2, point[1], point[2])
        face = (2 * axis + (side > 0)).to(point.dtype)            # 0..5: a different texture offset per face
        uv = torch.stack([u * tiles_per_meter + 0.37 * face, v * tiles_per_meter + 0.61 * face])
        return (-normal if kind == "room" else normal), uv
    if kind == "ellipsoid":
        unit = point / size                                       # material coordinates on the unit sphere
        normal = point / (size * size)
        radius = (rest_size[0] + rest_size[1] + rest_size[2]) / 3.0
        height = torch.asin(unit[2].clamp(-1.0, 1.0)) * radius   # meridian arc length at rest, metres
    elif kind == "capsule":
        unit = point
        normal = torch.stack([point[0], point[1], point[2] - point[2].clamp(-size[2], size[2])])
        radius = rest_size[0]
        height = point[2]
    else:
        raise ValueError(kind)
    # An integer number of repeats around the circumference keeps the texture seamless across atan2's cut.
    repeats = torch.clamp(torch.round(2.0 * math.pi * radius * tiles_per_meter), min=1.0)
    u = torch.atan2(unit[1], unit[0]) * (repeats / (2.0 * math.pi))
    v = height * tiles_per_meter
    return normal, torch.stack([u, v])
