"""gsplat's approximate instructions (rasterize/fast_math.py): the exact functions off CUDA, exact gradients, and the
way a quotient and the radius' logarithm are composed. The hardware instructions themselves only run on a GPU
(bench/rasterizer_bench.py --gpu records whether they did and the projection's bit-equal share with gsplat)."""

from __future__ import annotations

import math

import pytest
import torch

from stages.optimize.rasterize import fast_math
from stages.optimize.rasterize.projection import _radii


def test_off_cuda_the_exact_functions_serve():
    x = torch.tensor([0.3, 2.0, 7.5, 1e-3], dtype=torch.float32)
    assert not fast_math.approximate_math_available() or torch.cuda.is_available()
    assert torch.equal(fast_math.approx_reciprocal(x), torch.reciprocal(x))
    assert torch.equal(fast_math.approx_sqrt(x), torch.sqrt(x))
    assert torch.equal(fast_math.approx_log2(x), torch.log2(x))
    # a quotient is numerator * (1 / denominator): two roundings, as gsplat's fast-math division
    numerator, denominator = torch.tensor([1.0, 3.0, 10.0]), torch.tensor([3.0, 7.0, 3.0])
    assert torch.equal(fast_math.approx_divide(numerator, denominator), numerator * (1 / denominator))
    assert not torch.equal(numerator * (1 / denominator), numerator / denominator)   # 10 * (1/3) != 10/3 here


def test_the_hardware_path_has_the_exact_gradients(monkeypatch):
    """With the one-instruction kernels stood in by exact ones, the custom autograd functions pass gradcheck."""
    exact = {"reciprocal": torch.reciprocal, "sqrt": torch.sqrt, "log2": torch.log2}
    monkeypatch.setattr(fast_math, "_kernel", lambda name: exact[name])
    monkeypatch.setattr(fast_math, "_use_hardware", lambda x: True)
    x = torch.tensor([0.4, 1.7, 3.2, 11.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fast_math.approx_reciprocal, (x,))
    assert torch.autograd.gradcheck(fast_math.approx_sqrt, (x,))
    assert fast_math.approx_reciprocal(x).grad_fn.name().endswith("_ApproxUnaryBackward")
    assert not fast_math.approx_log2(x).requires_grad


def test_radii_in_gsplat_order_give_the_opacity_aware_extent():
    """2 ln(o * 255) composed as gsplat's build does (log2, times ln 2 doubled by an FMA) gives the same boxes as the
    plain formula here, and both equal ceil(min(3.33, sqrt(2 ln(255 o))) * sigma) computed in float64."""
    opacities = torch.tensor([[0.01, 0.05, 0.3, 0.9, 0.999, 0.002]])
    variances = torch.tensor([[4.0, 9.0, 2.25, 16.0, 0.3, 25.0]])
    means2d = torch.full((1, 6, 2), 32.0)
    valid = torch.ones(1, 6, dtype=torch.bool)
    plain = _radii(means2d, variances, variances, opacities, 64, 64, valid)
    ordered = _radii(means2d, variances, variances, opacities, 64, 64, valid, gsplat_order=True)
    assert torch.equal(plain, ordered)
    expected = [math.ceil(min(3.33, math.sqrt(2 * math.log(o * 255))) * math.sqrt(v)) if o >= 1 / 255 else 0
                for o, v in zip(opacities[0].double().tolist(), variances[0].double().tolist())]
    assert plain[0, :, 0].tolist() == expected
    assert plain[0, -1].tolist() == [0, 0]                                     # below 1/255: culled


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the approximate instructions need a GPU")
def test_on_cuda_the_projection_is_bit_equal_to_gsplats():
    """On a GPU: the one-instruction kernels stay within 2 ulp of the exact functions and differ from them somewhere
    (so they ran), and the projection's means2d and depths equal gsplat's own bit for bit (conics nearly all)."""
    assert fast_math.approximate_math_available()
    x = torch.linspace(0.5, 4.0, 100_001, device="cuda")
    for approx, exact in ((fast_math.approx_reciprocal, torch.reciprocal), (fast_math.approx_sqrt, torch.sqrt)):
        got, want = approx(x), exact(x)
        ulps = (got.view(torch.int32) - want.view(torch.int32)).abs()
        assert int(ulps.max()) <= 2 and bool((ulps > 0).any())
    from bench.rasterizer_bench import random_scene
    from stages.optimize.rasterize.gsplat_backend import gsplat_available
    from stages.optimize.rasterize.projection import project_gaussians

    if not gsplat_available():
        pytest.skip("gsplat's CUDA extension did not load")
    import gsplat

    width, height = 256, 192
    means, quats, scales, opacities, _, viewmats, Ks = random_scene(5000, width, height, device="cuda", seed=3,
                                                                    n_cameras=2)[:7]
    ours = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height)
    radii, means2d, depths, conics, _ = gsplat.fully_fused_projection(means, None, quats, scales, viewmats, Ks,
                                                                       width, height, opacities=opacities)
    both = (radii > 0).all(-1) & (ours.radii > 0).all(-1)
    assert both.sum() > 1000
    assert torch.equal(ours.means2d[both], means2d[both]) and torch.equal(ours.depths[both], depths[both])
    assert float((ours.conics == conics)[both].float().mean()) > 0.8
    assert float((ours.radii == radii).all(-1).float().mean()) > 0.999
