"""Bilinear sampling of many feature planes at once, multiplied per level: the core of the ``planes`` field.

The field (:class:`~stages.optimize.deformation.PlanesField`) keeps all its planes in one channel-last table
(C, F): plane p of H_p x W_p cells occupies rows ``offset_p + v W_p + u`` (v < H_p, u < W_p). A point (M, K)
(x, y, z in [-1, 1], time in [-1, 1], and any further coordinate a field adds) reads plane p at its coordinates
(a_p, b_p) - a along the width, b along the height - with ``F.grid_sample``'s rules for ``align_corners=True``:
u = (a + 1) / 2 (W_p - 1), bilinear between the four surrounding cells. The samples of the planes of one level are
multiplied (K-planes' Hadamard product).

:func:`sample_plane_products` does this as one autograd node with its gradient written out: the four corner rows
of every plane and their bilinear weights, the weighted sum (one ``embedding_bag`` of four weighted rows per point
and plane: no (M, P, 4, F) corner tensor, :data:`METHODS`), a product over the planes; backward one ``index_add``
into the table and the coordinates' gradient from the corner weights' gradient (a second fused kernel). The earlier
formulation, which gathered the corners into a tensor, is kept as the ``gather`` method (the baseline of
``bench.plane_sampler_bench``: half the speed and about twice the memory on an H200, ``plane_sampler_cuda.json``).

Exactness: values equal ``grid_sample``'s to rounding (float64 tests to 1e-12, every method), and so do the
gradients, except for the coordinate gradient exactly on a plane's last row or column: ``grid_sample`` takes it
against a zero-padded cell beyond the edge, this sampler has no cell there and gives zero (the clamp in front passes
no gradient for points beyond the box anyway). Memory: backward keeps the corner rows (M, P, 4) int64 and
embedding_bag's row-to-bag map of the same size, the per-axis weights (M, P, 2, 2) and the samples (M, P, F).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


@dataclass(frozen=True)
class PlaneLayout:
    """Where each of the P planes (P = levels x Q planes per level, level by level) lies in the table, and what it
    samples; everything the sampler needs as tensors, so that a step computes no per-plane constant.

    axes: (2 P,) long, the coordinate columns (a_0, b_0, a_1, b_1, ...) along each plane's width and height;
    half_extent: (P, 2) float, ((W - 1) / 2, (H - 1) / 2); last: (P, 2) long, (W - 1, H - 1); stride: (P, 2) long,
    (1, W); offset: (P,) long, each plane's first table row; corner_steps: (4, 2) long, :data:`CORNER_STEPS`;
    levels: L.
    """

    axes: Tensor
    half_extent: Tensor
    last: Tensor
    stride: Tensor
    offset: Tensor
    corner_steps: Tensor
    levels: int

    @staticmethod
    def build(shapes: list[tuple[int, int]], axes: list[tuple[int, int]], levels: int,
              dtype: torch.dtype = torch.float32) -> "PlaneLayout":
        """shapes: (height, width) of each plane in table order; axes: (a, b) coordinate columns of each."""
        size = torch.tensor([(w, h) for h, w in shapes], dtype=torch.long)              # (P, 2): W, H
        cells = size.prod(1)
        return PlaneLayout(axes=torch.tensor(axes, dtype=torch.long).reshape(-1),
                           half_extent=(size - 1).to(dtype) / 2, last=size - 1,
                           stride=torch.stack([torch.ones_like(size[:, 0]), size[:, 0]], 1),
                           offset=torch.cumsum(cells, 0) - cells,
                           corner_steps=torch.tensor(CORNER_STEPS, dtype=torch.long), levels=levels)


# the four corners (v0 u0, v0 u1, v1 u0, v1 u1) as steps (u, v) from the lower corner
CORNER_STEPS = ((0, 0), (1, 0), (0, 1), (1, 1))


def _corners(coords: Tensor, layout: PlaneLayout) -> tuple[Tensor, Tensor]:
    """Corner rows and bilinear weights of every plane at every point.

    coords (M, K) -> rows (M, P, 4) long, corners in :data:`CORNER_STEPS` order, and the per-axis weights
    (M, P, 2, 2): [axis u | v][lower | upper side] (the bilinear weight of a corner is the product of its sides)."""
    M, P = coords.shape[0], layout.offset.shape[0]
    uv = torch.addcmul(layout.half_extent, coords.index_select(1, layout.axes).view(M, P, 2),
                       layout.half_extent)                                          # (M, P, 2) in [0, (W-1, H-1)]
    low = uv.floor()
    frac = uv - low                                                                  # NaN stays NaN (-> the output)
    low = torch.minimum(torch.nan_to_num(low).long().clamp_min(0), layout.last)     # a valid cell, even for NaN
    step = (torch.minimum(low + 1, layout.last) - low) * layout.stride              # (M, P, 2): 0 at the last cell
    base = (low * layout.stride).sum(-1) + layout.offset                            # (M, P) row of (v0, u0)
    rows = base.unsqueeze(-1) + (step.unsqueeze(-2) * layout.corner_steps).sum(-1)  # (M, P, 4)
    sides = torch.stack([1 - frac, frac], dim=-1)                                   # (M, P, 2, 2)
    return rows, sides


def _bilinear_weights(sides: Tensor) -> Tensor:
    """(M, P, 2, 2) per-axis weights -> (M, P, 4, 1) corner weights in :data:`CORNER_STEPS` order (v side x u side)."""
    M, P = sides.shape[:2]
    return (sides[:, :, 1, :, None] * sides[:, :, 0, None, :]).view(M, P, 4, 1)


def _exclusive_products(samples: Tensor) -> Tensor:
    """(M, L, Q, F) -> (M, L, Q, F): the product over dim 2 of all factors but the q-th (no division)."""
    ones = samples.new_ones(samples[:, :, :1].shape)
    before = torch.cat([ones, samples[:, :, :-1]], dim=2).cumprod(2)                 # prod_{k < q}
    after = torch.cat([samples[:, :, 1:], ones], dim=2).flip(2).cumprod(2).flip(2)   # prod_{k > q}
    return before * after


METHODS = ("embedding_bag", "embedding_bag_sorted", "gather")
"""How :func:`sample_plane_products` gathers (the same values and gradients to rounding; ``embedding_bag`` is the
default): ``gather`` materialises the four corner rows of every plane at every point (M, P, 4, F) and sums them with
their weights (the earlier formulation: in profiles of the speed setting's planes_bases step on an H200 the sampler
took 3.3 ms of GPU time per step with it and 1.7 ms with ``embedding_bag``,
bench/results/sweeps/scene_windows39_profile.log and plane_sampler39_profile.log); ``embedding_bag`` gives each
(point, plane) a bag of its four corner rows with their bilinear weights as per-sample weights, so the weighted sum
is one fused kernel that writes (M, P, F), and the corner weights' gradient (what the coordinates' gradient is made
of) another that never writes the corners; the table's gradient is one ``index_add`` of the per-corner products;
``embedding_bag_sorted`` takes the table's gradient from embedding_bag's own backward (indices sorted, then segment
sums: no atomic adds)."""


class _PlaneProducts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, table: Tensor, coords: Tensor, axes: Tensor, half_extent: Tensor, last: Tensor, stride: Tensor,
                offset: Tensor, corner_steps: Tensor, levels: int, method: str) -> Tensor:
        layout = PlaneLayout(axes, half_extent, last, stride, offset, corner_steps, levels)
        M, P, F = coords.shape[0], offset.shape[0], table.shape[1]
        rows, sides = _corners(coords, layout)                                        # (M, P, 4), (M, P, 2, 2)
        bags = extra = None
        if method == "gather":
            corners = table.index_select(0, rows.view(-1)).view(M, P, 4, F)
            samples = (_bilinear_weights(sides) * corners).sum(2)                      # (M, P, F)
        else:                                      # one bag of 4 weighted rows per (point, plane)
            bags = torch.arange(0, 4 * M * P, 4, device=rows.device)                   # (M P,) bag starts
            samples, offset2bag, bag_size, max_rows = torch.embedding_bag(
                table, rows.view(-1), bags, False, 0, False, _bilinear_weights(sides).view(-1), False, None)
            extra = (offset2bag, bag_size, max_rows)                                   # (M P 4,), (M P,), ...
        samples = samples.view(M, levels, P // levels, F)                              # (M, L, Q, F)
        ctx.rows_count = table.shape[0]
        ctx.coord_columns = coords.shape[1]
        ctx.method = method
        ctx.save_for_backward(table, rows, sides, samples, axes, half_extent, bags, *(extra or (None,) * 3))
        return samples.prod(2)                                                         # (M, L, F)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_products: Tensor):
        table, rows, sides, samples, axes, half_extent, bags, offset2bag, bag_size, max_rows = ctx.saved_tensors
        M, L, Q, F = samples.shape
        grad_samples = (grad_products.unsqueeze(2) * _exclusive_products(samples)).reshape(M, L * Q, 1, F)
        weights = _bilinear_weights(sides)                                              # (M, P, 4, 1)
        grad_table = grad_coords = None
        if ctx.needs_input_grad[0]:
            if ctx.method == "embedding_bag_sorted":
                grad_table = torch.ops.aten._embedding_bag_backward(
                    grad_samples.view(M * L * Q, F), rows.view(-1), bags, offset2bag, bag_size, max_rows,
                    ctx.rows_count, False, 0, False, weights.view(-1), -1)              # (C, F)
            else:
                per_corner = weights * grad_samples                                     # (M, P, 4, F)
                grad_table = table.new_zeros(ctx.rows_count, F).index_add_(0, rows.view(-1), per_corner.view(-1, F))
        if ctx.needs_input_grad[1]:
            if ctx.method == "gather":
                corners = table.index_select(0, rows.view(-1)).view(M, L * Q, 4, F)
                dots = (corners * grad_samples).sum(-1)                                 # (M, P, 4)
            else:                                   # d(loss)/d(corner weight) = <grad sample, corner row>, fused
                dots = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                    grad_samples.view(M * L * Q, F), table, rows.view(-1), bags, offset2bag, 0, -1)
            dots = dots.view(M, L * Q, 2, 2)                                            # [v side][u side]
            grad_u = ((dots[..., 1] - dots[..., 0]) * sides[:, :, 1]).sum(-1)            # (M, P): d/du
            grad_v = ((dots[:, :, 1] - dots[:, :, 0]) * sides[:, :, 0]).sum(-1)          # d/dv
            grad_uv = torch.stack([grad_u, grad_v], dim=-1) * half_extent                # (M, P, 2): d/d(a, b)
            grad_coords = grad_uv.new_zeros(M, ctx.coord_columns).index_add_(1, axes, grad_uv.view(M, 2 * L * Q))
        return grad_table, grad_coords, None, None, None, None, None, None, None, None


def sample_plane_products(table: Tensor, coords: Tensor, layout: PlaneLayout, method: str = "embedding_bag") -> Tensor:
    """Per level, the product of the bilinear samples of its planes.

    table (C, F): every plane's cells, channel last (:class:`PlaneLayout` says where); coords (M, K) in [-1, 1]
    (K = 4: x, y, z, t; a field may add columns, such as an anchor time, that its planes' axes name)
    (clamp first: outside, the nearest cells are read but the weights are not those of a clamped point; a NaN
    coordinate gives NaN samples, as ``grid_sample`` does, so that a training step's NaN guard sees it). method:
    one of :data:`METHODS` (how the corners are gathered; the same result). Returns (M, L, F), differentiable once
    with respect to the table and the coordinates."""
    if method not in METHODS:
        raise ValueError(f"sample_plane_products: method must be one of {METHODS}, not {method!r}")
    return _PlaneProducts.apply(table, coords, layout.axes, layout.half_extent, layout.last, layout.stride,
                                layout.offset, layout.corner_steps, layout.levels, method)
