"""The one renderer of the synthetic scenes: batched analytic ray casting in torch (CPU or GPU).

For every frame (b, s) of a :class:`~pipeline.synthetic.scenes.PosedScene`, rays leave the camera centre through
pixel positions; each ray's direction has camera-z component 1, so the hit parameter ``t`` is the z-depth. The first
hit over all primitives is exact (analytic intersection, ``primitives.py``); its surface point gives the normal,
texture coordinates and material, shaded with Lambert's law under a point light plus an ambient term, times a
per-scene exposure, clipped at 1.

How the work stays proportional to what is on screen:

- *Culling.* Each primitive's bounding sphere is projected to a conservative pixel rectangle; a ray is intersected
  only with the primitives whose rectangle contains it. The candidate (frame, primitive, ray) triples are a flat list
  and the nearest hit per ray is an exact scatter-min (a z-buffer), so nothing depends on the order of the work.
- *Adaptive supersampling.* Depth, points, primitive ids and dynamic masks come from the ray through the pixel
  centre (j + 0.5, i + 0.5), so they are exact there. Colour also starts from that ray; pixels on a silhouette or a
  crease (a 3 x 3 neighbourhood that sees another primitive or a normal turning by more than ~25 degrees) are
  re-rendered with ``supersample x supersample`` stratified rays. Textures are anti-aliased everywhere by
  mip-mapping from each ray's footprint. Alpha is the fraction of a pixel's colour rays that hit something.

Everything is elementwise, a gather or a scatter over rays: no Python loop over pixels, only over the four
primitive kinds. Products of 3-vectors are written as explicit sums, which keeps CPU results bitwise reproducible.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.synthetic.primitives import INTERSECT, KIND_ID, MATERIAL_GROUPS, material_group, surface_frame
from pipeline.synthetic.scenes import PosedScene
from pipeline.synthetic.textures import TextureBank

NEAR = 1e-4                      # rays ignore hits closer than this (z-depth, metres)
TRACED_KINDS = ("room", "box", "ellipsoid", "capsule")
CREASE_COSINE = 0.9              # neighbouring normals closer than this (cosine) mark a crease to supersample


def _dot3(a, b) -> Tensor:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _transpose_apply(R: Tensor, v) -> Tensor:
    """R^T v for rotations R (..., 3, 3) and component-first v (3, ...) -> (3, ...), as explicit sums."""
    return torch.stack([R[..., 0, i] * v[0] + R[..., 1, i] * v[1] + R[..., 2, i] * v[2] for i in range(3)])


def _apply(R: Tensor, v) -> Tensor:
    """R v, as :func:`_transpose_apply`."""
    return torch.stack([R[..., i, 0] * v[0] + R[..., i, 1] * v[1] + R[..., i, 2] * v[2] for i in range(3)])


class FrameBatch:
    """The flattened frames [start, stop) of a posed batch with their cameras (F frames)."""

    def __init__(self, posed: PosedScene, K: Tensor, world_to_camera: Tensor, start: int, stop: int):
        B, S, P = posed.translation.shape[:3]
        self.posed, self.P = posed, P
        self.batch_index = torch.arange(start, stop, device=K.device) // S           # (F,)
        frames = slice(start, stop)
        self.rotation = posed.rotation.reshape(B * S, P, 3, 3)[frames]              # (F, P, 3, 3) local->world
        self.translation = posed.translation.reshape(B * S, P, 3)[frames]           # (F, P, 3)
        self.size = posed.size.reshape(B * S, P, 3)[frames]
        self.light = posed.light.reshape(B * S, 3)[frames]
        self.K = K.reshape(B * S, 3, 3)[frames]
        self.w2c = world_to_camera.reshape(B * S, 4, 4)[frames]
        kinds = torch.as_tensor([KIND_ID[s.kind] for s in posed.layout.slots], device=K.device)
        self.kind_of_slot = kinds
        self.traced = posed.active[self.batch_index] & (kinds != KIND_ID["none"])   # (F, P)
        R = self.w2c[:, :3, :3]
        self.origin = -_transpose_apply(R, self.w2c[:, :3, 3].T).T                  # (F, 3) camera centres

    def rays(self, pixels: Tensor) -> Tensor:
        """Component-first world directions (3, F, N) with camera z = 1 through ``pixels`` (F, N, 2)."""
        K = self.K
        x = (pixels[..., 0] - K[:, 0, 2, None]) / K[:, 0, 0, None]
        y = (pixels[..., 1] - K[:, 1, 2, None]) / K[:, 1, 1, None]
        return _transpose_apply(self.w2c[:, None, :3, :3], (x, y, torch.ones_like(x)))

    def screen_bounds(self) -> Tensor:
        """(F, P, 4) conservative pixel rectangles (x0, y0, x1, y1) of the primitives' bounding spheres; the whole
        plane for spheres that reach behind the near plane (rooms, with the camera inside)."""
        size = self.size
        radius = torch.linalg.vector_norm(size, dim=-1)                               # boxes, rooms
        radius = torch.where(self.kind_of_slot == KIND_ID["ellipsoid"], size.amax(-1), radius)
        radius = torch.where(self.kind_of_slot == KIND_ID["capsule"], size[..., 0] + size[..., 2], radius)
        centre = _apply(self.w2c[:, None, :3, :3], self.translation.permute(2, 0, 1)) \
            + self.w2c[:, :3, 3].T[:, :, None]                                         # (3, F, P) camera frame
        near, far = centre[2] - radius, centre[2] + radius
        K = self.K[:, None]
        bounds = []
        for axis, focal, principal in ((0, K[..., 0, 0], K[..., 0, 2]), (1, K[..., 1, 1], K[..., 1, 2])):
            lo, hi = centre[axis] - radius, centre[axis] + radius
            # Over the box [lo, hi] x [near, far] (z > 0), x / z is extreme at its corners.
            lo = torch.minimum(lo / near, lo / far) * focal + principal
            hi = torch.maximum(hi / near, hi / far) * focal + principal
            bounds.append((lo, hi))
        rect = torch.stack([bounds[0][0], bounds[1][0], bounds[0][1], bounds[1][1]], -1)
        everywhere = torch.tensor([-math.inf, -math.inf, math.inf, math.inf], device=rect.device, dtype=rect.dtype)
        return torch.where((near <= NEAR)[..., None], everywhere, rect)

    def trace(self, pixels: Tensor, direction: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest hits of the rays through ``pixels`` (F, N, 2) with world directions ``direction`` (3, F, N).

        Returns t (F, N) z-depth (+inf on a miss) and the slot (F, N) long (-1 on a miss).
        """
        F, N = pixels.shape[:2]
        rect = self.screen_bounds()[:, :, None]                                      # (F, P, 1, 4)
        x, y = pixels[:, None, :, 0], pixels[:, None, :, 1]                          # (F, 1, N)
        candidate = ((x >= rect[..., 0]) & (x <= rect[..., 2]) & (y >= rect[..., 1]) & (y <= rect[..., 3])
                     & self.traced[..., None])                                        # (F, P, N)
        frame, slot, ray = candidate.nonzero(as_tuple=True)
        P = self.P
        primitive_id, ray_id = frame * P + slot, frame * N + ray                     # into (F*P) and (F*N) tables
        kind = self.kind_of_slot[slot]
        t = torch.zeros(frame.shape, dtype=direction.dtype, device=direction.device)
        rotation = self.rotation.reshape(F * P, 3, 3)
        size = self.size.reshape(F * P, 3)
        origin_local = _transpose_apply(self.rotation, (self.origin[:, None] - self.translation).permute(2, 0, 1))
        origin_local = origin_local.reshape(3, F * P)
        rays = direction.reshape(3, F * N)
        for name in TRACED_KINDS:
            select = (kind == KIND_ID[name]).nonzero(as_tuple=True)[0]
            if select.numel() == 0:
                continue
            p, r = primitive_id[select], ray_id[select]
            d = _transpose_apply(rotation.index_select(0, p), rays.index_select(1, r))   # (3, n) local
            o = origin_local.index_select(1, p)
            t[select] = INTERSECT[name](o, d, size.index_select(0, p).T, NEAR)
        nearest = torch.full((F * N,), math.inf, dtype=t.dtype, device=t.device)
        nearest.scatter_reduce_(0, ray_id, t, "amin")
        # Ties (touching primitives) go to the highest slot index, which does not depend on the work order.
        winner = (t == nearest[ray_id]) & torch.isfinite(t)
        best_slot = torch.full((F * N,), -1, dtype=torch.long, device=t.device)
        best_slot.scatter_reduce_(0, ray_id[winner], slot[winner], "amax")
        return nearest.reshape(F, N), best_slot.reshape(F, N)

    def shade(self, pixels: Tensor, bank: TextureBank, footprint_scale: float, mipmaps: bool) -> dict[str, Tensor]:
        """Trace and shade the rays through ``pixels`` (F, N, 2). Returns per-ray tensors (F, N, ...): ``colour``
        (3), ``hit``, ``depth`` (0 on a miss), ``slot`` (-1 on a miss), ``point`` (3), ``normal`` (3, unit, world),
        ``albedo`` (3)."""
        posed, P = self.posed, self.P
        direction = self.rays(pixels)
        t, slot = self.trace(pixels, direction)
        hit = slot >= 0
        depth = torch.where(hit, t, torch.zeros_like(t))
        slot_hit = slot.clamp_min(0)
        point = self.origin.T[:, :, None] + depth * direction                        # (3, F, N) world

        # Surface quantities, per primitive kind on the rays that hit that kind: local point, normal, material
        # (box faces have their own), texture coordinates. Rays are flattened to (F*N,), primitives to (F*P,).
        F, N = slot.shape
        flat_point = point.reshape(3, F * N)
        primitive = (torch.arange(F, device=slot.device)[:, None] * P + slot_hit).reshape(-1)
        material_of_primitive = (self.batch_index[:, None] * P
                                 + torch.arange(P, device=slot.device)).reshape(-1) * MATERIAL_GROUPS
        rotation = self.rotation.reshape(F * P, 3, 3)
        translation = self.translation.reshape(F * P, 3)
        size = self.size.reshape(F * P, 3)
        rest = posed.rest_size[self.batch_index].reshape(F * P, 3)
        kind = torch.where(hit, self.kind_of_slot[slot_hit], KIND_ID["none"]).reshape(-1)
        normal = torch.zeros_like(flat_point)
        uv = torch.zeros_like(flat_point[:2])
        material = torch.zeros_like(kind)
        for name in TRACED_KINDS:
            rays = (kind == KIND_ID[name]).nonzero(as_tuple=True)[0]
            if rays.numel() == 0:
                continue
            prim = primitive.index_select(0, rays)
            R = rotation.index_select(0, prim)                                           # (n, 3, 3)
            local = _transpose_apply(R, flat_point.index_select(1, rays) - translation.index_select(0, prim).T)
            extent = size.index_select(0, prim).T
            m = material_of_primitive.index_select(0, prim) + material_group(name, local, extent)
            n_local, uv_kind = surface_frame(name, local, extent, rest.index_select(0, prim).T,
                                             posed.tiles_per_meter.reshape(-1).index_select(0, m))
            normal[:, rays] = _apply(R, n_local)
            uv[:, rays] = uv_kind
            material[rays] = m
        normal = normal.reshape(3, F, N)
        normal = normal / torch.sqrt(_dot3(normal, normal)).clamp_min(1e-12)
        material = material.reshape(F, N)
        tiles = posed.tiles_per_meter.reshape(-1)[material]
        uv = uv.reshape(2, F, N) + posed.uv_offset.reshape(-1, 2)[material].permute(2, 0, 1)

        lod = None
        if mipmaps:
            # Pixel footprint on the surface (metres): a pixel spans z / f across the ray at z-depth z, widened by
            # 1 / cos at oblique incidence (capped at grazing angles).
            cosine = (_dot3(normal, direction) / torch.sqrt(_dot3(direction, direction))).abs().clamp_min(0.15)
            footprint = depth / self.K[:, 0, 0, None] / cosine * footprint_scale
            lod = torch.log2((footprint * tiles * bank.size).clamp_min(1e-6))
        texture = posed.texture.reshape(-1)[material]
        albedo = bank.sample(texture, uv[0], uv[1], lod) * posed.tint.reshape(-1, 3)[material]   # (F, N, 3)

        light = self.light.T[:, :, None] - point                                     # (3, F, N)
        cos_light = _dot3(normal, light) / torch.sqrt(_dot3(light, light)).clamp_min(1e-12)
        ambient = posed.ambient[self.batch_index][:, None]
        exposure = posed.exposure[self.batch_index][:, None]
        shade = (ambient + (1.0 - ambient) * cos_light.clamp_min(0.0)) * exposure
        colour = (albedo * shade[..., None]).clamp(0.0, 1.0) * hit[..., None]
        return {"colour": colour, "hit": hit, "depth": depth, "slot": slot, "point": point.permute(1, 2, 0),
                "normal": normal.permute(1, 2, 0), "albedo": albedo}


def _edges(slot: Tensor, normal: Tensor) -> Tensor:
    """(F, H, W) bool: pixels whose 3 x 3 neighbourhood holds another slot or a normal turned by more than
    arccos(CREASE_COSINE). slot: (F, H, W); normal: (F, H, W, 3)."""
    F, H, W = slot.shape
    s = torch.nn.functional.pad(slot[:, None].float(), (1, 1, 1, 1), mode="replicate")[:, 0]
    n = torch.nn.functional.pad(normal.permute(0, 3, 1, 2), (1, 1, 1, 1), mode="replicate").permute(0, 2, 3, 1)
    edge = torch.zeros_like(slot, dtype=torch.bool)
    for dy in range(3):
        for dx in range(3):
            if dy == 1 and dx == 1:
                continue
            other_slot = s[:, dy:dy + H, dx:dx + W]
            other_normal = n[:, dy:dy + H, dx:dx + W]
            edge |= (other_slot != slot) | ((slot >= 0) & ((other_normal * normal).sum(-1) < CREASE_COSINE))
    return edge


def render(posed: PosedScene, K: Tensor, world_to_camera: Tensor, width: int, height: int, bank: TextureBank, *,
           supersample: int = 1, pixels: Tensor | None = None, mipmaps: bool = True,
           max_rays: int | None = None, extras: bool = False) -> dict[str, Tensor]:
    """Render B scenes at S frames each.

    posed: the scenes at the frames' times (B, S, ...); K: (B, S, 3, 3); world_to_camera: (B, S, 4, 4) OpenCV.
    supersample: colour rays per side at silhouettes and creases (1 = the centre ray only).
    pixels: optional (B, S, N, 2) pixel positions (x right, y down; pixel centres at +0.5) to render instead of the
    image; then no supersampling is done and outputs are (B, S, N, ...) instead of (B, S, H, W, ...).
    mipmaps: filter textures by the ray footprint (False: full-resolution bilinear, the same for any view).
    max_rays: bound on the rays traced together (memory); default by device.
    extras: also return ``albedo`` (..., 3) and the unit world ``normal`` (..., 3) of the centre rays.

    Returns a dict of tensors: ``rgb`` (..., 3) in [0, 1] (mean over the colour rays that hit; 0 where none did),
    ``alpha`` (...), ``depth`` (...) z-depth of the centre ray (0 = background), ``slot`` (...) long (-1 =
    background), ``dynamic`` (...) bool, ``points`` (..., 3) world points of the centre rays (0 = background).
    """
    B, S = K.shape[:2]
    device, dtype = K.device, posed.translation.dtype
    K, world_to_camera = K.to(dtype), world_to_camera.to(dtype)
    if pixels is None:
        jj, ii = torch.meshgrid(torch.arange(width, device=device, dtype=dtype),
                                torch.arange(height, device=device, dtype=dtype), indexing="xy")
        centres = (torch.stack([jj, ii], -1) + 0.5).reshape(1, -1, 2)                # (1, H*W, 2)
    else:
        centres = pixels.to(dtype).reshape(B * S, -1, 2)
    n_rays = centres.shape[1]
    if max_rays is None:
        max_rays = (1 << 24) if device.type == "cuda" else (1 << 16)
    chunk = max(1, max_rays // n_rays)
    outputs: dict[str, list[Tensor]] = {}
    for start in range(0, B * S, chunk):
        stop = min(B * S, start + chunk)
        frames = FrameBatch(posed, K, world_to_camera, start, stop)
        chunk_pixels = centres.expand(stop - start, -1, -1) if pixels is None else centres[start:stop]
        result = _render_frames(frames, chunk_pixels, bank, width, height, supersample if pixels is None else 1,
                                mipmaps, extras)
        for key, value in result.items():
            outputs.setdefault(key, []).append(value)
    shape = (B, S, height, width) if pixels is None else (B, S, n_rays)
    return {key: torch.cat(parts).reshape(*shape, *parts[0].shape[2:]) for key, parts in outputs.items()}


def _render_frames(frames: FrameBatch, pixels: Tensor, bank: TextureBank, width: int, height: int,
                   supersample: int, mipmaps: bool, extras: bool) -> dict[str, Tensor]:
    """Render the rays through ``pixels`` (F, N, 2) and supersample edges; see :func:`render`. (F, N, ...)."""
    centre = frames.shade(pixels, bank, 1.0, mipmaps)
    hit = centre["hit"]
    rgb, alpha = centre["colour"], hit.to(centre["colour"].dtype)
    F, N = hit.shape
    if supersample > 1:
        edge = _edges(centre["slot"].reshape(F, height, width),
                      centre["normal"].reshape(F, height, width, 3)).reshape(F, N)
        count = edge.sum(1)
        if int(count.max()) > 0:
            # The edge pixels of each frame, padded to the largest count (padding repeats pixel 0, unused).
            order = torch.argsort((~edge).to(torch.uint8), dim=1, stable=True)[:, : int(count.max())]  # (F, E)
            used = torch.arange(order.shape[1], device=order.device)[None] < count[:, None]
            grid = (torch.arange(supersample, device=pixels.device, dtype=pixels.dtype) + 0.5) / supersample - 0.5
            gy, gx = torch.meshgrid(grid, grid, indexing="ij")
            offsets = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)              # (s*s, 2)
            base = torch.gather(pixels, 1, order[..., None].expand(-1, -1, 2))       # (F, E, 2)
            sub = (base[:, :, None] + offsets).reshape(F, -1, 2)                     # (F, E*s*s, 2)
            fine = frames.shade(sub, bank, 1.0 / supersample, mipmaps)
            n_sub = offsets.shape[0]
            sub_hit = fine["hit"].reshape(F, -1, n_sub)
            sub_count = sub_hit.sum(-1)
            sub_rgb = fine["colour"].reshape(F, -1, n_sub, 3).sum(2) / sub_count.clamp_min(1)[..., None]
            sub_alpha = sub_count.to(rgb.dtype) / n_sub
            rows = torch.arange(F, device=pixels.device)[:, None].expand_as(order)
            rgb = rgb.clone()
            alpha = alpha.clone()
            rgb[rows[used], order[used]] = sub_rgb[used]
            alpha[rows[used], order[used]] = sub_alpha[used]
    dynamic = frames.posed.dynamic[frames.batch_index[:, None], centre["slot"].clamp_min(0)] & hit
    out = {"rgb": rgb, "alpha": alpha, "depth": centre["depth"], "slot": centre["slot"], "dynamic": dynamic,
           "points": centre["point"] * hit[..., None]}
    if extras:
        out["albedo"] = centre["albedo"]
        out["normal"] = centre["normal"]
    return out
