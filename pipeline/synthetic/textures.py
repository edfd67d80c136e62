"""Textures: a bank of seamless, mip-mapped RGB images that primitives sample by surface coordinates.

The bank holds procedural textures (multi-scale value noise, marble, stripes, checkers; all with noise at several
scales so that no region is flat) and the sample photographs that scikit-image ships (astronaut, coffee, chelsea,
rocket in colour; brick, grass, gravel, camera tinted), made seamless by mirroring. Every texture is periodic with
period 1 in both coordinates, so surfaces repeat it without seams.

Sampling is trilinear: bilinear within a mip level, linear between the two levels around a level of detail that the
renderer derives from the pixel footprint, so distant and grazing surfaces are anti-aliased without extra rays. All
levels live in one flat table, so one gather serves any mix of textures and levels (vectorised over rays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
GREY_PHOTOS = ("brick", "grass", "gravel", "camera")
PROCEDURAL_KINDS = ("noise", "marble", "stripes", "checkers")


@dataclass
class TextureBank:
    """``count`` textures of ``size`` x ``size`` texels with all mip levels down to 1 x 1.

    table: (M, 3) float texels of every level, level-major: level l holds count * s_l^2 texels, s_l = size >> l,
    texture-major then row-major. offsets: (L,) int32 first row of each level; sizes: (L,) int32 s_l.
    """

    table: Tensor
    offsets: Tensor
    sizes: Tensor
    count: int
    size: int
    names: tuple[str, ...]

    @property
    def levels(self) -> int:
        return int(self.sizes.numel())

    def _bilinear(self, texture: Tensor, u: Tensor, v: Tensor, level: Tensor) -> Tensor:
        """Bilinear samples (..., 3) of level ``level`` (...) int32; texture (...) int32. Index arithmetic in int32
        (the table has fewer than 2^31 texels): on a GPU this is most of the renderer's memory traffic."""
        s = self.sizes[level]
        x = (u - torch.floor(u)) * s - 0.5          # texel coordinates of the sample, wrapped to one period
        y = (v - torch.floor(v)) * s - 0.5
        x0, y0 = torch.floor(x), torch.floor(y)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        x0, y0 = x0.int(), y0.int()                  # in [-1, s - 1]
        x0, y0 = torch.where(x0 < 0, x0 + s, x0), torch.where(y0 < 0, y0 + s, y0)
        x1, y1 = x0 + 1, y0 + 1
        x1, y1 = torch.where(x1 == s, 0, x1), torch.where(y1 == s, 0, y1)
        base = self.offsets[level] + texture * s * s
        row0, row1 = base + y0 * s, base + y1 * s
        corners = torch.stack([row0 + x0, row0 + x1, row1 + x0, row1 + x1])           # (4, ...) texel indices
        texels = self.table.index_select(0, corners.reshape(-1)).reshape(*corners.shape, 3)
        top = texels[0] * (1 - fx) + texels[1] * fx
        bottom = texels[2] * (1 - fx) + texels[3] * fx
        return top * (1 - fy) + bottom * fy

    def sample(self, texture: Tensor, u: Tensor, v: Tensor, lod: Tensor | None = None) -> Tensor:
        """Colours (..., 3) of textures ``texture`` (...) long at coordinates (u, v) (...) in repeats.

        lod: (...) level of detail (log2 of texels per pixel); None samples the full-resolution level only.
        """
        texture = texture.int()
        if lod is None:
            return self._bilinear(texture, u, v, torch.zeros_like(texture))
        lod = lod.clamp(0.0, self.levels - 1.0)
        low = torch.floor(lod)
        weight = (lod - low)[..., None]
        low = low.int()
        high = torch.clamp(low + 1, max=self.levels - 1)
        return self._bilinear(texture, u, v, low) * (1 - weight) + self._bilinear(texture, u, v, high) * weight


def build_bank(images: Tensor, names: tuple[str, ...]) -> TextureBank:
    """A bank from periodic images (T, S, S, 3) in [0, 1]; S a power of two."""
    count, size = images.shape[0], images.shape[1]
    if size & (size - 1) or images.shape[2] != size:
        raise ValueError("texture images must be square with a power-of-two side")
    levels, level = [], images
    while True:
        levels.append(level)
        if level.shape[1] == 1:
            break
        s = level.shape[1] // 2
        level = level.reshape(count, s, 2, s, 2, 3).mean(dim=(2, 4))  # 2x2 box filter keeps periodicity
    sizes = torch.tensor([lv.shape[1] for lv in levels], dtype=torch.int32, device=images.device)
    counts = torch.tensor([lv[..., 0].numel() for lv in levels], dtype=torch.int64, device=images.device)
    offsets = (torch.cumsum(counts, 0) - counts).int()
    table = torch.cat([lv.reshape(-1, 3) for lv in levels]).contiguous()
    if table.shape[0] >= 2**31:
        raise ValueError("texture bank too large for int32 indices")
    return TextureBank(table, offsets, sizes, count, size, tuple(names))


def value_noise(generator: torch.Generator, count: int, size: int, cells: int, channels: int = 1) -> Tensor:
    """Periodic value noise (count, size, size, channels) in [0, 1]: random values on a ``cells`` x ``cells``
    lattice that wraps around, interpolated with a smoothstep."""
    device = generator.device
    lattice = torch.rand(count, cells, cells, channels, generator=generator, device=device)
    x = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * (cells / size)
    i0 = torch.floor(x).long()
    f = x - i0
    f = f * f * (3.0 - 2.0 * f)
    i0, i1 = i0 % cells, (i0 + 1) % cells
    fy, fx = f[:, None, None], f[:, None]                                 # broadcast over (rows, ...) / (cols, C)
    rows = lattice[:, i0] * (1 - fy) + lattice[:, i1] * fy                # (count, size, cells, C)
    return rows[:, :, i0] * (1 - fx) + rows[:, :, i1] * fx


def fractal_noise(generator: torch.Generator, count: int, size: int, base_cells: int = 4, octaves: int = 5,
                  gain: float = 0.55) -> Tensor:
    """Multi-scale value noise (count, size, size) stretched to [0, 1] per texture; octaves at base_cells * 2^k."""
    total = torch.zeros(count, size, size, device=generator.device)
    amplitude = 1.0
    for k in range(octaves):
        cells = min(base_cells * 2**k, size // 2)
        total = total + amplitude * value_noise(generator, count, size, cells)[..., 0]
        amplitude *= gain
    lo = total.amin(dim=(1, 2), keepdim=True)
    hi = total.amax(dim=(1, 2), keepdim=True)
    return (total - lo) / (hi - lo).clamp_min(1e-6)


def random_palette(generator: torch.Generator, count: int, colours: int = 3) -> Tensor:
    """(count, colours, 3) colours; consecutive colours differ clearly in brightness and hue."""
    device = generator.device
    base = 0.15 + 0.7 * torch.rand(count, 1, 3, generator=generator, device=device)
    steps = torch.rand(count, colours - 1, 3, generator=generator, device=device) - 0.5
    brightness = 0.3 + 0.25 * torch.rand(count, colours - 1, 1, generator=generator, device=device)
    sign = torch.where(torch.rand(count, colours - 1, 1, generator=generator, device=device) < 0.5, -1.0, 1.0)
    steps = 0.5 * steps + sign * brightness
    palette = torch.cat([base, base + torch.cumsum(steps, dim=1)], dim=1)
    # Fold back into [0.05, 0.95] (a triangle wave keeps the differences in magnitude).
    palette = (palette - 0.05) % 1.8
    palette = torch.where(palette > 0.9, 1.8 - palette, palette) + 0.05
    return palette


def _blend(palette: Tensor, p: Tensor) -> Tensor:
    """Map scalars p (T, S, S) in [0, 1] through a piecewise-linear palette (T, K, 3) -> (T, S, S, 3)."""
    k = palette.shape[1] - 1
    x = p.clamp(0, 1) * k
    i = torch.clamp(torch.floor(x).long(), max=k - 1)
    f = (x - i)[..., None]
    index = i.reshape(i.shape[0], -1)
    lo = torch.gather(palette, 1, index[..., None].expand(-1, -1, 3)).reshape(*p.shape, 3)
    hi = torch.gather(palette, 1, (index + 1)[..., None].expand(-1, -1, 3)).reshape(*p.shape, 3)
    return lo * (1 - f) + hi * f


def procedural_textures(generator: torch.Generator, count: int, size: int = 256) -> tuple[Tensor, list[str]]:
    """``count`` periodic procedural textures (count, size, size, 3), cycling through the kinds."""
    device = generator.device
    kinds = [PROCEDURAL_KINDS[i % len(PROCEDURAL_KINDS)] for i in range(count)]
    palette = random_palette(generator, count)
    coarse = fractal_noise(generator, count, size, base_cells=2, octaves=3)
    fine = fractal_noise(generator, count, size, base_cells=16, octaves=3)
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size
    y, x = torch.meshgrid(coords, coords, indexing="ij")
    # Integer direction vectors and frequencies keep stripes and checkers periodic.
    a = torch.randint(-3, 4, (count, 1, 1), generator=generator, device=device)
    b = torch.randint(1, 4, (count, 1, 1), generator=generator, device=device)
    frequency = torch.randint(2, 7, (count, 1, 1), generator=generator, device=device)
    cells = 2 ** torch.randint(2, 5, (count, 1, 1), generator=generator, device=device)
    phase = (a * x + b * y) * frequency
    stripes = 0.5 + 0.5 * torch.sin(2 * math.pi * phase + 1.5 * coarse)
    stripes = torch.sigmoid(6.0 * (stripes - 0.5))                      # soft-edged bands
    marble = 0.5 + 0.5 * torch.sin(2 * math.pi * (phase / frequency) + 6.0 * coarse)
    checker = ((torch.floor(x * cells) + torch.floor(y * cells)) % 2).float()
    choices = torch.stack([0.7 * coarse + 0.3 * fine, marble, stripes, checker])   # in PROCEDURAL_KINDS order
    kind_index = torch.arange(count, device=device) % len(PROCEDURAL_KINDS)
    pattern = choices[kind_index, torch.arange(count, device=device)]
    images = _blend(palette, pattern)
    # Every kind also carries fine noise (no texel neighbourhood is flat) and a coarse shading (no region is flat
    # when seen from afar, where the mip-maps average the fine detail away).
    tone = fractal_noise(generator, count, size, base_cells=2, octaves=2)
    images = images * (0.8 + 0.4 * fine[..., None]) * (0.7 + 0.6 * tone[..., None])
    return images.clamp(0, 1), kinds


@lru_cache(maxsize=None)
def _photo(name: str, size: int) -> np.ndarray:
    """A scikit-image sample photograph as a seamless (size, size, 3) float32 tile: a centre square, resized to
    size / 2 and mirrored into a 2 x 2 tile."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    h, w = image.shape[:2]
    s = min(h, w)
    image = image[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
    half = F.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None], size=(size // 2, size // 2),
                         mode="area")[0].permute(1, 2, 0)
    top = torch.cat([half, half.flip(1)], dim=1)
    return torch.cat([top, top.flip(0)], dim=0).contiguous().numpy()


def photo_textures(generator: torch.Generator, size: int = 256) -> tuple[Tensor, list[str]]:
    """The colour photos as they are and the grey ones tinted with random two-colour palettes, all with a faint
    fine noise and a coarse shading on top."""
    device = generator.device
    names = list(COLOUR_PHOTOS) + list(GREY_PHOTOS)
    images = torch.stack([torch.from_numpy(_photo(n, size)) for n in names]).to(device)
    grey = len(GREY_PHOTOS)
    palette = random_palette(generator, grey, colours=2)
    images[-grey:] = _blend(palette, images[-grey:, ..., 0])
    fine = fractal_noise(generator, len(names), size, base_cells=16, octaves=3)
    tone = fractal_noise(generator, len(names), size, base_cells=2, octaves=2)
    images = images * (0.9 + 0.2 * fine[..., None]) * (0.75 + 0.5 * tone[..., None])
    return images.clamp(0, 1), [f"photo:{n}" for n in names]


def make_texture_bank(generator: torch.Generator, procedural: int = 40, size: int = 256) -> TextureBank:
    """The photographs followed by ``procedural`` procedural textures, on ``generator``'s device."""
    photos, photo_names = photo_textures(generator, size)
    images, kinds = procedural_textures(generator, procedural, size)
    return build_bank(torch.cat([photos, images]), tuple(photo_names + kinds))
