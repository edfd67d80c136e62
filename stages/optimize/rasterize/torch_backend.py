"""Pure-PyTorch tile rasterizer with gsplat 1.5.3's compositing rules and a hand-written backward pass.

Binning. The image is cut into square tiles (``tile_size`` pixels a side). A visible Gaussian is listed in every tile
its opacity-aware box (``radii``) overlaps, with gsplat's tile-range formula; each tile's list is sorted front to back
by camera z. Outside its box a Gaussian's alpha is below 1/255 everywhere, so the lists hold every Gaussian that can
touch a pixel of the tile, and the work scales with the Gaussians that touch each tile rather than with all of them.
Pairs whose alpha is below 1/255 on every pixel centre of the tile are dropped too (`_reaches_tile`).

Compositing (spec gsplat.md §3.8). For pixel p (centre (j + 0.5, i + 0.5)) and the tile's Gaussians k in order:
``sigma = (a dx^2 + c dy^2) / 2 + b dx dy`` with d = mean2d - p; ``alpha = min(0.999, o exp(-sigma))``; skip k if
sigma < 0 or alpha < 1/255; stop before the first k whose ``T (1 - alpha)`` would be <= 1e-4 (that one is not
composited); otherwise ``C += c_k alpha T`` and ``T *= 1 - alpha``. Outputs ``C + T bg`` and ``1 - T``.

Vectorisation. Work proceeds in steps of ``chunk`` depth slots for a batch of tiles at once: a step evaluates
[tiles, tile_size, tile_size, chunk] alphas, and the transmittance along the chunk is one cumulative product seeded
with each pixel's incoming T, in the kernel's sequential order (torch on CPU accumulates it in double, so T can
differ from the kernel's float32 products in the last bit). Tiles whose pixels are all finished, or whose lists are
exhausted, drop out of later steps (gsplat's early exit).

Backward. Autograd through the steps would keep every [tiles, pixels, chunk] intermediate. Instead the forward keeps
each step's incoming transmittance and, within a memory budget, its alphas and transmittances; the backward visits
the steps back to front (recomputing what was not kept) and uses the closed form, for pixel p with output gradient
g and composited Gaussians k:
    dL/dalpha_k = T_k (g . c_k) - (S_k + T_final (g . bg - dL/dalpha_out)) / (1 - alpha_k),
    S_k = sum over composited j behind k of (g . c_j) alpha_j T_j,
carried across steps per pixel. Pixel sums of the conic and mean gradients use that dx depends only on the column
and dy only on the row, so they reduce to small [tiles, tile_size, chunk] contractions.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .projection import ALPHA_THRESHOLD

MAX_ALPHA = 0.999           # alpha is clamped here so that T never reaches 0
TRANSMITTANCE_STOP = 1e-4   # a pixel stops before a Gaussian that would bring T to this or below
N_GEOMETRY = 6              # per-Gaussian table columns before the colours: mean x, mean y, a, b, c, opacity


@dataclass
class RasterSettings:
    """Work decomposition of the torch backend; results do not depend on it (up to float summation order)."""

    tile_size: int = 8          # pixels per tile side (8 beats 16 on CPU: fewer pixel-Gaussian pairs)
    chunk: int = 32             # depth slots (Gaussians per tile) evaluated per step
    step_elements: int | None = None  # bound on tiles x pixels x chunk per step; None: 2^22 on CPU, 2^23 on
                                      # CUDA (fewer, larger ops: fewer thread barriers and kernel launches)
    cull_tiles_exactly: bool = True  # drop (tile, Gaussian) pairs whose alpha < 1/255 on the whole tile
    cache_bytes: int = 1 << 28        # forward results kept for the backward (beyond: recomputed there)


@dataclass
class TileBins:
    """Per-tile, front-to-back lists of (camera, Gaussian) entries for C images split into square tiles."""

    tile_size: int
    tiles_x: int
    tiles_y: int
    n_images: int
    offsets: Tensor   # [n_tiles + 1] int64; tile t lists flat_ids[offsets[t]:offsets[t + 1]]
    flat_ids: Tensor  # [n_isects] int64 indices into the flattened [C * N] (camera-major) arrays

    @property
    def n_tiles(self) -> int:
        return self.n_images * self.tiles_y * self.tiles_x

    @property
    def counts(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]


@torch.no_grad()
def bin_gaussians(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int = 16,
                  conics: Tensor | None = None, opacities: Tensor | None = None) -> TileBins:
    """Tile lists for means2d [C, N, 2], radii [C, N, 2] int (entries with a zero radius are skipped), depths [C, N].

    The tile range of an entry is gsplat's: [floor((m - r) / s), ceil((m + r) / s)) per axis, clipped to the image.
    With conics [C, N, 3] and opacities [C, N], (tile, Gaussian) pairs whose alpha is below 1/255 at every pixel
    centre of the tile are dropped as well (see `_reaches_tile`); the image is unchanged, the work shrinks.
    Entries are ordered by camera z within each tile; ties keep the Gaussian index order (as gsplat's stable radix
    sort does).
    """
    n_cameras, n_gaussians = radii.shape[:2]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    device = means2d.device

    visible = (radii > 0).all(dim=-1).view(-1).nonzero()[:, 0]                          # [M] flat (camera, Gaussian)
    camera_ids = visible.div(n_gaussians, rounding_mode="floor")
    order = torch.sort(depths.reshape(-1).index_select(0, visible), stable=True).indices
    order = order.index_select(0, torch.sort(camera_ids.index_select(0, order), stable=True).indices)
    visible, camera_ids = visible.index_select(0, order), camera_ids.index_select(0, order)  # camera-major, then z

    centre = means2d.reshape(-1, 2).index_select(0, visible) / tile_size              # [M, 2] in tiles
    half_size = radii.reshape(-1, 2).index_select(0, visible).to(means2d.dtype) / tile_size  # [M, 2] in tiles
    tile_limit = torch.tensor([tiles_x, tiles_y], device=device)
    lo = torch.floor(centre - half_size).long().clamp(min=0).minimum(tile_limit)       # [M, 2] inclusive
    hi = torch.ceil(centre + half_size).long().clamp(min=0).minimum(tile_limit)        # [M, 2] exclusive
    span = hi - lo                                                                      # [M, 2]
    n_per_entry = span[:, 0] * span[:, 1]                                               # [M]

    owner = torch.repeat_interleave(torch.arange(len(n_per_entry), device=device), n_per_entry)  # [n_isects]
    local = torch.arange(len(owner), device=device) - (torch.cumsum(n_per_entry, 0) - n_per_entry).index_select(
        0, owner)
    owner_span_x = span[:, 0].index_select(0, owner)
    row_in_box = local.div(owner_span_x, rounding_mode="floor")
    tile_col = lo[:, 0].index_select(0, owner) + (local - row_in_box * owner_span_x)
    tile_row = lo[:, 1].index_select(0, owner) + row_in_box
    if conics is not None and opacities is not None:
        shape = torch.cat([means2d.reshape(-1, 2), conics.reshape(-1, 3), opacities.reshape(-1, 1)], dim=-1)
        shape = shape.index_select(0, visible).index_select(0, owner)                   # [n_isects, 6]
        reaches = _reaches_tile(shape[:, :2], shape[:, 2:5], shape[:, 5], tile_col, tile_row, tile_size, width,
                                height)
        owner, tile_col, tile_row = owner[reaches], tile_col[reaches], tile_row[reaches]
    tile = (camera_ids.index_select(0, owner) * tiles_y + tile_row) * tiles_x + tile_col  # [n_isects] tile id
    tile, by_tile = torch.sort(tile, stable=True)                                        # keeps z order per tile
    flat_ids = visible.index_select(0, owner.index_select(0, by_tile))

    n_tiles = n_cameras * tiles_y * tiles_x
    counts = torch.bincount(tile, minlength=n_tiles)
    offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
    return TileBins(tile_size, tiles_x, tiles_y, n_cameras, offsets, flat_ids)


def _reaches_tile(means2d: Tensor, conics: Tensor, opacities: Tensor, tile_col: Tensor, tile_row: Tensor,
                  tile_size: int, width: int, height: int) -> Tensor:
    """[K] bool: may the Gaussian reach alpha >= 1/255 at some pixel centre of the tile? (K (tile, Gaussian) pairs.)

    alpha >= 1/255 needs sigma(p) <= ln(255 o). sigma is a convex quadratic of the pixel p, so its minimum over the
    tile's rectangle of pixel centres is 0 if the mean is inside, else on one of the four edges, where it is a 1D
    quadratic minimised in closed form and clamped to the edge. Computed in float64 and kept with a margin larger
    than the float32 rounding of sigma in the compositor (which grows with the size of its terms), so that no pair
    that could draw is ever dropped.
    """
    dtype = torch.float64
    mean_x, mean_y = means2d.to(dtype).unbind(-1)
    a, b, c = conics.to(dtype).unbind(-1)
    x_lo = (tile_col * tile_size).to(dtype) + 0.5
    x_hi = torch.clamp(x_lo + (tile_size - 1), max=width - 0.5)
    y_lo = (tile_row * tile_size).to(dtype) + 0.5
    y_hi = torch.clamp(y_lo + (tile_size - 1), max=height - 0.5)
    dx_lo, dx_hi = mean_x - x_hi, mean_x - x_lo                                       # range of dx = mean - p
    dy_lo, dy_hi = mean_y - y_hi, mean_y - y_lo

    def sigma(dx: Tensor, dy: Tensor) -> Tensor:
        return 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy

    edge_minima = []
    for dx in (dx_lo, dx_hi):                                                          # columns: minimise over dy
        edge_minima.append(sigma(dx, torch.minimum(torch.maximum(-b * dx / c, dy_lo), dy_hi)))
    for dy in (dy_lo, dy_hi):                                                          # rows: minimise over dx
        edge_minima.append(sigma(torch.minimum(torch.maximum(-b * dy / a, dx_lo), dx_hi), dy))
    inside = (dx_lo <= 0) & (dx_hi >= 0) & (dy_lo <= 0) & (dy_hi >= 0)
    sigma_min = torch.stack(edge_minima).amin(dim=0) * ~inside

    far_dx = torch.maximum(dx_lo.abs(), dx_hi.abs())
    far_dy = torch.maximum(dy_lo.abs(), dy_hi.abs())
    term_size = 0.5 * (a.abs() * far_dx ** 2 + c.abs() * far_dy ** 2) + b.abs() * far_dx * far_dy
    margin = 1e-3 + 1e-5 * term_size
    return sigma_min <= torch.log(255.0 * opacities.to(dtype)) + margin


def image_to_tiles(image: Tensor, bins: TileBins) -> Tensor:
    """[C, H, W, X] -> [n_tiles, tile_size^2, X] (zero-padded at the right and bottom edges)."""
    s = bins.tile_size
    n_images, height, width, channels = image.shape
    padded = image.new_zeros(n_images, bins.tiles_y * s, bins.tiles_x * s, channels)
    padded[:, :height, :width] = image
    tiles = padded.view(n_images, bins.tiles_y, s, bins.tiles_x, s, channels).permute(0, 1, 3, 2, 4, 5)
    return tiles.reshape(bins.n_tiles, s * s, channels)


def tiles_to_image(tiles: Tensor, bins: TileBins, width: int, height: int) -> Tensor:
    """[n_tiles, tile_size^2, X] -> [C, H, W, X]."""
    s = bins.tile_size
    channels = tiles.shape[-1]
    image = tiles.view(bins.n_images, bins.tiles_y, bins.tiles_x, s, s, channels).permute(0, 1, 3, 2, 4, 5)
    return image.reshape(bins.n_images, bins.tiles_y * s, bins.tiles_x * s, channels)[:, :height, :width]


class _StepGeometry:
    """One step's Gaussians (rows of the per-intersection table) over its tiles' pixels."""

    def __init__(self, rows: Tensor, pixel_x: Tensor, pixel_y: Tensor):
        # rows: [Ta, B, 6 + D]; pixel_x, pixel_y: [Ta, s] pixel-centre coordinates of the tiles' columns / rows.
        mean_x, mean_y, self.a, self.b, self.c, self.opacity = rows[..., :N_GEOMETRY].unbind(-1)  # [Ta, B] each
        self.dx = mean_x[:, None, :] - pixel_x[:, :, None]                      # [Ta, s(column), B]
        self.dy = mean_y[:, None, :] - pixel_y[:, :, None]                      # [Ta, s(row), B]

    def alpha(self) -> Tensor:
        """[Ta, s(row), s(column), B] alphas, exactly 0 where the Gaussian is skipped (sigma < 0, alpha < 1/255).

        Built from per-column and per-row factors. The skip rules use `threshold_` (keep x where x > t, else a
        value) with t the float just below the bound, which is `>=` exactly: ops that take a bool mask (where,
        masked_fill, multiplying by a mask) cost several times more on CPU.
        """
        half_a_dx2 = (0.5 * self.a)[:, None] * self.dx * self.dx                 # [Ta, s(column), B]
        half_c_dy2 = (0.5 * self.c)[:, None] * self.dy * self.dy                 # [Ta, s(row), B]
        b_dx = self.b[:, None] * self.dx                                         # [Ta, s(column), B]
        sigma = half_c_dy2[:, :, None] + half_a_dx2[:, None]                     # [Ta, s(row), s(column), B]
        sigma.addcmul_(b_dx[:, None], self.dy[:, :, None])
        limits = _limits(sigma.dtype)
        torch.nn.functional.threshold_(sigma, limits.below_zero, math.inf)      # sigma < 0: alpha = exp(-inf)
        alpha = sigma.neg_().exp_().mul_(self.opacity[:, None, None]).clamp_(max=MAX_ALPHA)
        return torch.nn.functional.threshold_(alpha, limits.below_alpha_threshold, 0.0)


@dataclass(frozen=True)
class _Limits:
    below_zero: float               # the largest float of the dtype below 0
    below_alpha_threshold: float    # ... below 1/255 (as rounded to the dtype)
    below_stop: float               # ... below or at 1e-4: x > this  <=>  x > 1e-4


@functools.lru_cache(maxsize=None)
def _limits(dtype: torch.dtype) -> _Limits:
    def below(value: float) -> float:
        as_dtype = torch.tensor(value, dtype=dtype)
        return torch.nextafter(as_dtype, torch.tensor(-math.inf, dtype=dtype)).item()

    stop = torch.tensor(TRANSMITTANCE_STOP, dtype=dtype).item()
    return _Limits(below(0.0), below(ALPHA_THRESHOLD), stop)


def _kept(trans: Tensor) -> Tensor:
    """[Ta, P, B] 1.0 where a Gaussian is before the transmittance stop (T after it > 1e-4), else 0.0."""
    return torch.nn.functional.threshold(trans[..., 1:], _limits(trans.dtype).below_stop, 0.0).sign_()


def _transmittance(alpha: Tensor, incoming: Tensor) -> Tensor:
    """[Ta, P, B + 1]: slot 0 the incoming T [Ta, P], slot k + 1 the T after Gaussian k (sequential products)."""
    n_tiles, n_pixels = incoming.shape
    factors = alpha.new_empty(n_tiles, n_pixels, alpha.shape[-1] + 1)
    factors[..., 0] = incoming
    torch.sub(1.0, alpha.view(n_tiles, n_pixels, -1), out=factors[..., 1:])
    return factors.cumprod_(-1)


class _Steps:
    """Iterates the (chunk index, tile batch) steps of a tile-binned image; tiles leave once finished."""

    def __init__(self, bins: TileBins, settings: RasterSettings, device: torch.device, dtype: torch.dtype):
        s = bins.tile_size
        self.bins, self.chunk = bins, settings.chunk
        step_elements = settings.step_elements or (1 << 23 if device.type == "cuda" else 1 << 22)
        self.max_tiles = max(1, step_elements // (s * s * settings.chunk))
        tile_in_image = torch.arange(bins.n_tiles, device=device) % (bins.tiles_x * bins.tiles_y)
        offset = torch.arange(s, device=device, dtype=dtype) + 0.5
        self.pixel_x = (tile_in_image % bins.tiles_x * s).to(dtype)[:, None] + offset   # [n_tiles, s]
        self.pixel_y = (tile_in_image // bins.tiles_x * s).to(dtype)[:, None] + offset  # [n_tiles, s]
        self.slots = torch.arange(settings.chunk, device=device)

    def rows(self, tiles: Tensor, chunk_index: int, pad_row: int) -> Tensor:
        """Indices [Ta, B] into the per-intersection table for this step; past a tile's list: pad_row."""
        rows = self.bins.offsets[tiles, None] + chunk_index * self.chunk + self.slots
        return torch.where(rows < self.bins.offsets[tiles + 1, None], rows, pad_row)


@dataclass
class _SavedStep:
    """What the backward needs to redo one forward step: its tiles, chunk, incoming T (0 for finished pixels) and,
    within the memory budget, the step's alphas and transmittances so that it need not recompute them."""

    tiles: Tensor                           # [Ta] tile ids
    chunk_index: int
    t_work: Tensor                          # [Ta, P]
    cache: tuple[Tensor, Tensor] | None     # alpha [Ta, s, s, B], transmittance [Ta, P, B + 1]


class _CompositeTiles(torch.autograd.Function):
    """Tile compositing of projected Gaussians; inputs flattened over (camera, Gaussian)."""

    @staticmethod
    def forward(ctx, means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor,
                backgrounds: Tensor | None, bins: TileBins, width: int, height: int, settings: RasterSettings,
                absgrad_target: list[Tensor] | None):
        # means2d [M, 2], conics [M, 3], colors [M, D], opacities [M] with M = C * N; backgrounds [C, D] or None.
        n_pixels, n_channels = bins.tile_size ** 2, colors.shape[-1]
        dtype, device = colors.dtype, colors.device
        # Per-intersection table, front to back per tile, plus a final all-zero row (opacity 0: always skipped).
        table = torch.cat([means2d, conics, opacities[:, None], colors], dim=-1)[bins.flat_ids]
        table = torch.cat([table, table.new_zeros(1, table.shape[1])])             # [n_isects + 1, 6 + D]
        pad_row = table.shape[0] - 1

        inside = image_to_tiles(torch.ones(bins.n_images, height, width, 1, device=device), bins)[..., 0] > 0
        transmittance = torch.ones(bins.n_tiles, n_pixels, dtype=dtype, device=device)
        finished = ~inside                                                           # [n_tiles, P]
        accumulated = torch.zeros(bins.n_tiles, n_channels, n_pixels, dtype=dtype, device=device)  # [.., D, P]
        counts = bins.counts
        steps = _Steps(bins, settings, device, dtype)
        saved_steps: list[_SavedStep] = []
        cache_budget = settings.cache_bytes if any(ctx.needs_input_grad) else 0

        for chunk_index in range(math.ceil(int(counts.max()) / settings.chunk) if len(counts) else 0):
            pending = (counts > chunk_index * settings.chunk).nonzero()[:, 0]
            pending = pending[~finished[pending].all(dim=-1)]
            if len(pending) == 0:                                                    # every tile is done
                break
            for tiles in pending.split(steps.max_tiles):
                rows = table[steps.rows(tiles, chunk_index, pad_row)]                # [Ta, B, 6 + D]
                alpha = _StepGeometry(rows, steps.pixel_x[tiles], steps.pixel_y[tiles]).alpha()
                t_in, finished_in = transmittance[tiles], finished[tiles]
                t_work = t_in * (~finished_in).view(torch.uint8)                     # finished pixels add nothing
                trans = _transmittance(alpha, t_work)                                # [Ta, P, B + 1]
                kept = _kept(trans)                                                  # a prefix along B
                weights = (alpha.view_as(kept) * trans[..., :-1]).mul_(kept)         # [Ta, P, B]
                accumulated[tiles] += rows[..., N_GEOMETRY:].transpose(1, 2) @ weights.transpose(1, 2)
                n_kept = kept.sum(dim=-1, keepdim=True).long()                       # [Ta, P, 1]
                t_out = trans.gather(-1, n_kept)[..., 0]
                transmittance[tiles] = torch.where(finished_in, t_in, t_out)
                finished[tiles] = finished_in | (n_kept[..., 0] < settings.chunk)
                cache = None
                if cache_budget >= alpha.nbytes + trans.nbytes:                     # backward need not replay
                    cache_budget -= alpha.nbytes + trans.nbytes
                    cache = (alpha, trans)
                saved_steps.append(_SavedStep(tiles, chunk_index, t_work, cache))

        background_tiles = None
        if backgrounds is not None:
            background_tiles = backgrounds.repeat_interleave(bins.tiles_x * bins.tiles_y, dim=0)  # [n_tiles, D]
            accumulated += background_tiles[:, :, None] * transmittance[:, None, :]
        render_colors = tiles_to_image(accumulated.transpose(1, 2), bins, width, height)
        render_alphas = tiles_to_image(1.0 - transmittance[..., None], bins, width, height)

        ctx.bins, ctx.width, ctx.height, ctx.settings = bins, width, height, settings
        ctx.absgrad_target, ctx.absgrad = absgrad_target, absgrad_target is not None
        ctx.saved_steps = saved_steps
        ctx.save_for_backward(table, transmittance,
                              background_tiles if background_tiles is not None else torch.empty(0))
        ctx.has_backgrounds, ctx.n_entries = backgrounds is not None, means2d.shape[0]
        return render_colors, render_alphas

    @staticmethod
    def backward(ctx, grad_colors: Tensor | None, grad_alphas: Tensor | None):
        table, transmittance, background_tiles = ctx.saved_tensors
        bins, settings = ctx.bins, ctx.settings
        n_channels = table.shape[1] - N_GEOMETRY
        dtype, device = table.dtype, table.device
        pad_row = table.shape[0] - 1
        if grad_colors is None:
            grad_colors = torch.zeros(bins.n_images, ctx.height, ctx.width, n_channels, dtype=dtype, device=device)
        if grad_alphas is None:
            grad_alphas = torch.zeros(bins.n_images, ctx.height, ctx.width, 1, dtype=dtype, device=device)
        grad_colors = image_to_tiles(grad_colors.to(dtype), bins)                   # [n_tiles, P, D]
        grad_alphas = image_to_tiles(grad_alphas.to(dtype), bins)[..., 0]           # [n_tiles, P]

        # Sensitivity of the loss to the final transmittance, and the running suffix sum S (see module docstring).
        suffix = -grad_alphas * transmittance
        grad_backgrounds = None
        if ctx.has_backgrounds:
            suffix += transmittance * (grad_colors * background_tiles[:, None, :]).sum(dim=-1)
            per_tile = (grad_colors * transmittance[..., None]).sum(dim=1)          # [n_tiles, D]
            grad_backgrounds = per_tile.view(bins.n_images, -1, n_channels).sum(dim=1)

        n_table_grads = N_GEOMETRY + n_channels + (2 if ctx.absgrad else 0)
        table_grads = torch.zeros(table.shape[0], n_table_grads, dtype=dtype, device=device)
        steps = _Steps(bins, settings, device, dtype)
        for saved in reversed(ctx.saved_steps):
            tiles = saved.tiles
            row_ids = steps.rows(tiles, saved.chunk_index, pad_row)                  # [Ta, B]
            rows = table[row_ids]                                                    # [Ta, B, 6 + D]
            geo = _StepGeometry(rows, steps.pixel_x[tiles], steps.pixel_y[tiles])
            n_tiles, s = len(tiles), bins.tile_size
            alpha, trans = saved.cache if saved.cache is not None else (geo.alpha(), None)
            alpha = alpha.view(n_tiles, s * s, -1)                                   # [Ta, P, B]
            if trans is None:
                trans = _transmittance(alpha, saved.t_work)
            t_before = trans[..., :-1]                                               # T seen by each Gaussian
            kept = _kept(trans)                                                      # before the stop
            weights = (alpha * t_before).mul_(kept)                                  # [Ta, P, B]

            grad_pixel = grad_colors[tiles]                                          # [Ta, P, D]
            colors = rows[..., N_GEOMETRY:]                                          # [Ta, B, D]
            grad_dot_color = grad_pixel @ colors.transpose(1, 2)                     # [Ta, P, B]: g . c_k
            running = (grad_dot_color * weights).cumsum_(dim=-1)                     # [Ta, P, B]
            suffix_in = suffix[tiles]
            suffix_out = suffix_in + running[..., -1]
            suffix[tiles] = suffix_out
            # dL/dalpha_k = T_k (g . c_k) - (everything composited behind k, incl. the background) / (1 - alpha_k)
            behind = torch.sub(suffix_out[..., None], running).div_(1.0 - alpha)
            grad_alpha = (grad_dot_color * t_before).sub_(behind)
            # alpha dL/dalpha = -dL/dsigma (alpha = o exp(-sigma)); dL/do = sum_p alpha dL/dalpha / o. Only
            # composited (alpha > 0 and before the stop), unclamped (alpha < 0.999) Gaussians pass it on.
            passes = torch.sub(MAX_ALPHA, alpha).sign_().mul_(kept)
            alpha_grad_alpha = grad_alpha.mul_(alpha).mul_(passes).view(n_tiles, s, s, -1)

            grad_color = (grad_pixel.transpose(1, 2) @ weights).transpose(1, 2)      # [Ta, B, D]
            # Pixel sums of alpha dL/dalpha times dx^2, dy^2, dx dy, dx, dy, with dx per column and dy per row.
            per_column = alpha_grad_alpha.sum(dim=1)                                 # [Ta, s(col), B]
            per_row = alpha_grad_alpha.sum(dim=2)                                    # [Ta, s(row), B]
            dx_weighted_rows = (alpha_grad_alpha * geo.dx[:, None]).sum(dim=2)       # [Ta, s(row), B]
            total = per_column.sum(dim=1)                                            # [Ta, B]
            sum_dx = (per_column * geo.dx).sum(dim=1)
            sum_dy = (per_row * geo.dy).sum(dim=1)
            sum_dx2 = (per_column * geo.dx * geo.dx).sum(dim=1)
            sum_dy2 = (per_row * geo.dy * geo.dy).sum(dim=1)
            sum_dxdy = (dx_weighted_rows * geo.dy).sum(dim=1)
            # sigma = (a dx^2 + c dy^2) / 2 + b dx dy with dx = mean_x - pixel_x; dL/dsigma = -alpha dL/dalpha
            grads = [-(geo.a * sum_dx + geo.b * sum_dy),                             # d/d mean x
                     -(geo.b * sum_dx + geo.c * sum_dy),                             # d/d mean y
                     -0.5 * sum_dx2, -sum_dxdy, -0.5 * sum_dy2,                      # d/d a, b, c
                     total / geo.opacity]                                            # d/d opacity (pad: junk)
            if ctx.absgrad:                                                          # sum_p |per-pixel d/d mean|
                a_dx, b_dx = geo.a[:, None] * geo.dx, geo.b[:, None] * geo.dx        # [Ta, s(col), B]
                b_dy, c_dy = geo.b[:, None] * geo.dy, geo.c[:, None] * geo.dy        # [Ta, s(row), B]
                grads += [(alpha_grad_alpha * (a_dx[:, None] + b_dy[:, :, None])).abs_().sum(dim=(1, 2)),
                          (alpha_grad_alpha * (b_dx[:, None] + c_dy[:, :, None])).abs_().sum(dim=(1, 2))]
            geometry_grads = torch.stack(grads, dim=-1)                              # [Ta, B, 6 (+2)]
            step_grads = torch.cat([geometry_grads[..., :N_GEOMETRY], grad_color, geometry_grads[..., N_GEOMETRY:]],
                                   dim=-1)
            table_grads[row_ids] = step_grads                                        # each row once (pad: junk)

        per_entry = torch.zeros(ctx.n_entries, n_table_grads, dtype=dtype, device=device)
        per_entry.index_add_(0, bins.flat_ids, table_grads[:-1])
        grad_means2d, grad_conics, grad_opacities, grad_colors_out, grad_abs = per_entry.split(
            [2, 3, 1, n_channels, n_table_grads - N_GEOMETRY - n_channels], dim=-1)
        if ctx.absgrad:                                                              # read by DefaultStrategy
            target = ctx.absgrad_target[0]
            target.absgrad = grad_abs.reshape(target.shape).clone()
        return (grad_means2d, grad_conics, grad_colors_out, grad_opacities[:, 0], grad_backgrounds,
                None, None, None, None, None)


def rasterize_to_pixels(means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, radii: Tensor,
                        depths: Tensor, width: int, height: int, backgrounds: Tensor | None = None,
                        absgrad: bool = False, settings: RasterSettings | None = None) -> tuple[Tensor, Tensor]:
    """Composite C images of N projected Gaussians.

    Args:
        means2d: [C, N, 2] pixel positions. conics: [C, N, 3] (a, b, c). colors: [C, N, D]. opacities: [C, N].
        radii: [C, N, 2] int; entries with a zero radius are not drawn. depths: [C, N] camera z (sort key).
        backgrounds: [C, D] or None. absgrad: after backward, means2d.absgrad [C, N, 2] holds per-Gaussian sums
        over pixels of the absolute per-pixel gradients (AbsGS), as in gsplat.
    Returns:
        render_colors [C, H, W, D] (including T_final * background), render_alphas [C, H, W, 1].
    """
    settings = settings or RasterSettings()
    n_cameras, n_gaussians = radii.shape[:2]
    bins = bin_gaussians(means2d.detach(), radii, depths.detach(), width, height, settings.tile_size,
                         conics.detach() if settings.cull_tiles_exactly else None,
                         opacities.detach() if settings.cull_tiles_exactly else None)
    absgrad_target = [means2d] if absgrad else None   # a list, so that autograd does not treat it as an input
    render_colors, render_alphas = _CompositeTiles.apply(
        means2d.reshape(-1, 2), conics.reshape(-1, 3), colors.reshape(n_cameras * n_gaussians, -1),
        opacities.reshape(-1), backgrounds, bins, width, height, settings, absgrad_target)
    return render_colors, render_alphas
