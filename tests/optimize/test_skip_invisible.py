"""Deforming only the Gaussians visible at a time (``gaussians_at(..., skip_invisible=True)``, what training renders
use) renders the same image with the same gradients as deforming all of them: the rasterizer culls every Gaussian
whose opacity is below 1/255 wherever it is."""

from __future__ import annotations

import math

import pytest
import torch

from stages.optimize.model import padded_size
from stages.optimize.rasterize import rasterization
from tests.optimize.test_step_cost import _model


def _camera(width: int = 48, height: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    world_to_camera = torch.eye(4, dtype=torch.float64)
    world_to_camera[2, 3] = 6.0                                    # the random cloud around the origin, 6 in front
    K = torch.tensor([[50.0, 0, width / 2], [0, 50.0, height / 2], [0, 0, 1]], dtype=torch.float64)
    return world_to_camera, K


def _render_and_grads(model, time: float, skip: bool, padded: bool = False):
    model.zero_grad(set_to_none=True)
    g = model.gaussians_at(time, skip_invisible=skip, padded=padded)
    world_to_camera, K = _camera()
    colors, alphas, meta = rasterization(g["means"], g["quats"], g["scales"], g["opacities"], g["sh"],
                                         world_to_camera[None], K[None], 48, 40, sh_degree=1, backend="torch",
                                         absgrad=True)
    meta["means2d"].retain_grad()                                  # what densification reads
    weights = torch.linspace(0.5, 1.5, colors.numel(), dtype=colors.dtype).view_as(colors)
    ((colors * weights).sum() + alphas.sum()).backward()
    grads = {name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
             for name, p in model.named_parameters()}
    grads["means2d"] = meta["means2d"].grad.clone()
    grads["means2d_absgrad"] = meta["means2d"].absgrad.clone()
    return colors.detach(), meta["radii"].clone(), grads, g


@pytest.mark.parametrize("padded", [False, True], ids=["visible", "padded"])
@pytest.mark.parametrize("kind", ["bases", "mlp", "planes"])
def test_skipping_invisible_gaussians_changes_neither_the_render_nor_its_gradients(kind, padded):
    """Deformed: the visible dynamic Gaussians, or (padded, for CUDA graphs) those and some invisible ones."""
    model = _model(kind, n=300, seed=1)
    with torch.no_grad():                                          # narrow windows: most are invisible at a time
        model.splats["time_log_scales"].fill_(math.log(0.05))
        model.splats["opacities"].fill_(2.0)
    time = 0.47                                                    # off the anchor times: they move
    full, radii_full, grads_full, g_full = _render_and_grads(model, time, skip=False)
    part, radii_part, grads_part, g_part = _render_and_grads(model, time, skip=True, padded=padded)

    visible = g_full["opacities"] >= 1 / 255
    dynamic = model.splats["is_dynamic"]
    assert (dynamic & ~visible).sum() > 100 and (dynamic & visible).sum() > 10     # the case is not trivial
    moved = (g_part["means"] != model.splats["means"]).any(-1)     # deformed (or static and unmoved)
    if padded:                                                      # the visible ones and a few invisible ones
        count = int((dynamic & visible).sum())
        assert int((moved & dynamic).sum()) == padded_size(count, int(dynamic.sum())) > count
    else:
        assert torch.equal(moved, dynamic & visible)
    assert torch.all(moved[dynamic & visible])
    torch.testing.assert_close(g_part["means"][visible], g_full["means"][visible], rtol=0, atol=1e-12)
    assert float(full.std()) > 0.01                                # something is in the picture
    torch.testing.assert_close(part, full, rtol=0, atol=1e-12)
    assert torch.equal(radii_part, radii_full)
    for name, grad in grads_full.items():
        torch.testing.assert_close(grads_part[name], grad, rtol=1e-10, atol=1e-12, msg=name)
    assert any(float(grads_full[k].abs().sum()) > 0 for k in grads_full if k.startswith("deformation"))


def test_with_an_opacity_deformation_every_dynamic_gaussian_is_deformed():
    model = _model("bases", n=60, with_opacity=True, seed=2)
    with torch.no_grad():
        model.splats["time_log_scales"].fill_(math.log(0.05))
    full = model.gaussians_at(0.5)
    part = model.gaussians_at(0.5, skip_invisible=True)
    for key in ("means", "quats", "scales", "opacities"):
        assert torch.equal(full[key], part[key]), key


def test_padded_sizes_are_few_and_at_most_an_eighth_above_the_count():
    sizes = [padded_size(count, 10**6) for count in range(1, 70_000)]
    assert all(0 <= size - count < max(256, count / 8) for count, size in zip(range(1, 70_000), sizes))
    # multiples of 256 up to 4096, then 8 per doubling up to 65536, then 73728 (the next step of 8192)
    assert sorted(set(sizes)) == [*range(256, 4097, 256), *range(4608, 8193, 512), *range(9216, 16385, 1024),
                                  *range(18432, 32769, 2048), *range(36864, 65537, 4096), 73728]
    assert padded_size(11_642, 100_000) == 12_288 and padded_size(11_642, 12_000) == 12_000   # at most the total
    assert padded_size(0, 50) == 50 and padded_size(0, 0) == 0
