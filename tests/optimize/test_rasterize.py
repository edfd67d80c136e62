"""The PyTorch rasterizer against a float64 brute-force reference, an analytic single Gaussian and gsplat's own
pure-torch helpers (which run on CPU). No gsplat CUDA op is ever called here."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from stages.optimize.rasterize import RasterSettings, rasterization
from stages.optimize.rasterize.projection import covariance_from_quat_scale, project_gaussians
from stages.optimize.rasterize.reference import reference_rasterization
from stages.optimize.rasterize.sh import eval_sh, rgb_to_sh_dc, sh_to_color
from stages.optimize.rasterize.torch_backend import rasterize_to_pixels

# Small tiles and chunks so that tiny scenes still exercise several tiles, several steps per tile and early exit.
SMALL = RasterSettings(tile_size=8, chunk=4, step_elements=8 * 8 * 4 * 3)


def random_scene(n: int, width: int, height: int, n_cameras: int = 1, seed: int = 0, dtype=torch.float64,
                 size_px: float = 3.0, depth_range=(2.0, 6.0)):
    """Gaussians spread over the view of camera 0 (at the origin looking down +z); extra cameras are shifted and
    slightly rotated. size_px: typical projected standard deviation in pixels."""
    g = torch.Generator().manual_seed(seed)
    fx = 0.9 * width
    z = torch.rand(n, generator=g, dtype=dtype) * (depth_range[1] - depth_range[0]) + depth_range[0]
    x = (torch.rand(n, generator=g, dtype=dtype) * 2 - 1) * z * (0.6 * width / fx)
    y = (torch.rand(n, generator=g, dtype=dtype) * 2 - 1) * z * (0.6 * height / fx)
    means = torch.stack([x, y, z], -1)
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.exp(torch.randn(n, 3, generator=g, dtype=dtype) * 0.5) * (z * size_px / fx)[:, None]
    opacities = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    viewmats, Ks = [], []
    for c in range(n_cameras):
        angle = 0.05 * c
        view = torch.eye(4, dtype=dtype)
        view[:3, :3] = torch.tensor([[math.cos(angle), 0, math.sin(angle)], [0, 1, 0],
                                     [-math.sin(angle), 0, math.cos(angle)]], dtype=dtype)
        view[:3, 3] = torch.tensor([0.1 * c, -0.05 * c, 0.2 * c], dtype=dtype)
        viewmats.append(view)
        Ks.append(torch.tensor([[fx, 0, width / 2 + c], [0, fx * 1.05, height / 2 - c], [0, 0, 1]], dtype=dtype))
    return means, quats, scales, opacities, colors, torch.stack(viewmats), torch.stack(Ks)


def leaves(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def test_images_and_gradients_match_float64_reference():
    width, height = 29, 21                                     # not multiples of the tile size
    scene = leaves(*random_scene(160, width, height, n_cameras=2, seed=1, size_px=4.0))
    means, quats, scales, opacities, colors, viewmats, Ks = scene
    backgrounds = torch.tensor([[0.2, 0.3, 0.4], [1.0, 1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    image, alpha, meta = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                       backgrounds=backgrounds, backend="torch", settings=SMALL)
    ref_image, ref_alpha, stopped = reference_rasterization(means, quats, scales, opacities, colors, viewmats, Ks,
                                                            width, height, backgrounds=backgrounds,
                                                            return_stopped=True)
    assert meta["backend"] == "torch"
    assert 0.2 < stopped.double().mean() < 0.9, "the transmittance stop should occur at many pixels, not all"
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-12)
    torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-12)

    weights = torch.randn(image.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    alpha_weights = torch.randn(alpha.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    inputs = (means, quats, scales, opacities, colors, backgrounds)
    ours = torch.autograd.grad((image * weights).sum() + (alpha * alpha_weights).sum(), inputs)
    ref = torch.autograd.grad((ref_image * weights).sum() + (ref_alpha * alpha_weights).sum(), inputs)
    for name, a, b in zip(["means", "quats", "scales", "opacities", "colors", "backgrounds"], ours, ref):
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item(), msg=name)


@pytest.mark.parametrize("tile_size,chunk", [(16, 32), (4, 1)])
def test_float32_work_decomposition_does_not_change_the_image(tile_size, chunk):
    width, height = 45, 30
    scene64 = random_scene(300, width, height, seed=4, size_px=2.5)
    ref_image, ref_alpha = reference_rasterization(*scene64, width, height)
    scene32 = [t.float() for t in scene64]
    settings = RasterSettings(tile_size=tile_size, chunk=chunk, step_elements=1 << 12)
    image, alpha, _ = rasterization(*scene32, width, height, backend="torch", settings=settings)
    assert image.dtype == torch.float32
    assert (image.double() - ref_image).abs().max() < 2e-5
    assert (alpha.double() - ref_alpha).abs().max() < 2e-5


def test_exact_tile_culling_drops_only_pairs_that_draw_nothing():
    """Large, strongly elongated Gaussians: the culled and the bounding-box-only tile lists give the same image."""
    width, height = 64, 40
    means, quats, scales, opacities, colors, viewmats, Ks = random_scene(150, width, height, seed=13, size_px=3.0)
    scales[:, 0] *= torch.linspace(1.0, 40.0, 150, dtype=torch.float64)      # needles up to ~100 px long
    ref_image, ref_alpha = reference_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width,
                                                   height)
    scene32 = [t.float() for t in (means, quats, scales, opacities, colors, viewmats, Ks)]
    images = {}
    for cull in (True, False):
        settings = RasterSettings(tile_size=8, chunk=16, cull_tiles_exactly=cull)
        images[cull], alpha, _ = rasterization(*scene32, width, height, backend="torch", settings=settings)
        assert (images[cull].double() - ref_image).abs().max() < 1e-4      # float32 sigma of 100 px needles
    assert (images[True] - images[False]).abs().max() < 1e-6
    # and the culling does drop pairs here
    from stages.optimize.rasterize.torch_backend import bin_gaussians
    projection = project_gaussians(*scene32[:4], scene32[5], scene32[6], width, height)
    args = (projection.means2d.detach(), projection.radii, projection.depths.detach(), width, height, 8)
    culled = bin_gaussians(*args, projection.conics.detach(), projection.opacities.detach())
    assert len(culled.flat_ids) < 0.8 * len(bin_gaussians(*args).flat_ids)


def test_one_gaussian_renders_the_analytic_footprint():
    """An isotropic Gaussian on the optical axis: Sigma2d = (f s / z)^2 I + eps2d I, alpha = o exp(-d^2 / 2 var)."""
    width, height, focal, depth, std, opacity = 32, 24, 40.0, 2.0, 0.1, 0.7
    color, background = np.array([0.9, 0.5, 0.1]), np.array([0.0, 0.2, 1.0])
    cx, cy = 15.3, 12.6
    means = torch.tensor([[0.0, 0.0, depth]])
    quats = torch.tensor([[0.3, -0.2, 0.5, 0.1]])                  # any rotation: the Gaussian is isotropic
    scales = torch.full((1, 3), std)
    K = torch.tensor([[[focal, 0, cx], [0, focal, cy], [0, 0, 1]]])
    image, alpha, meta = rasterization(means, quats, scales, torch.tensor([opacity]),
                                       torch.tensor(color[None], dtype=torch.float32), torch.eye(4)[None], K,
                                       width, height, backgrounds=torch.tensor(background[None], dtype=torch.float32),
                                       backend="torch")
    variance = (focal * std / depth) ** 2 + 0.3
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    expected_alpha = opacity * np.exp(-((cols - cx) ** 2 + (rows - cy) ** 2) / (2 * variance))
    expected_alpha[expected_alpha < 1 / 255] = 0.0
    expected = expected_alpha[..., None] * color + (1 - expected_alpha[..., None]) * background
    np.testing.assert_allclose(alpha[0, ..., 0].numpy(), expected_alpha, atol=2e-6)
    np.testing.assert_allclose(image[0].numpy(), expected, atol=2e-6)
    radius = math.ceil(math.sqrt(2 * math.log(255 * opacity)) * math.sqrt(variance))
    assert meta["radii"].tolist() == [[[radius, radius]]]
    np.testing.assert_allclose(meta["means2d"][0, 0].detach().numpy(), [cx, cy], atol=1e-6)
    np.testing.assert_allclose(meta["conics"][0, 0].detach().numpy(), [1 / variance, 0, 1 / variance], atol=1e-7)


def test_depth_modes_and_antialiasing_match_reference():
    width, height = 16, 12
    scene = leaves(*random_scene(30, width, height, seed=5, size_px=2.5))
    means, quats, scales, opacities, colors, viewmats, Ks = scene
    bg = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    for antialiased in (False, True):
        mode = "antialiased" if antialiased else "classic"
        ref_image, ref_alpha = reference_rasterization(means, quats, scales, opacities, colors, viewmats, Ks,
                                                       width, height, backgrounds=bg, antialiased=antialiased,
                                                       depth_channel=True)
        for render_mode in ("RGB+D", "RGB+ED", "D", "ED"):
            image, alpha, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                            backgrounds=bg, render_mode=render_mode, rasterize_mode=mode,
                                            backend="torch", settings=SMALL)
            expected = ref_image if render_mode.startswith("RGB") else ref_image[..., 3:]
            if render_mode.endswith("ED"):
                expected = torch.cat([expected[..., :-1], expected[..., -1:] / ref_alpha.clamp(min=1e-10)], -1)
            torch.testing.assert_close(image, expected, rtol=0, atol=1e-10, msg=f"{mode} {render_mode}")
            torch.testing.assert_close(alpha, ref_alpha, rtol=0, atol=1e-12)
        # gradients of the expected depth, through the depth channel and alpha
        image, alpha, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                        render_mode="ED", rasterize_mode=mode, backend="torch", settings=SMALL)
        ref_depth = ref_image[..., 3:] / ref_alpha.clamp(min=1e-10)
        ours = torch.autograd.grad(image.sum(), (means, scales, opacities))
        ref = torch.autograd.grad(ref_depth.sum(), (means, scales, opacities))
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8 * b.abs().max().item())


def test_composite_gradcheck():
    """The hand-written backward of the compositing step against finite differences (float64)."""
    width, height = 9, 7
    g = torch.Generator().manual_seed(6)
    n = 6
    means2d = (torch.rand(1, n, 2, generator=g, dtype=torch.float64) * torch.tensor([width, height])).requires_grad_()
    conics = torch.stack([torch.rand(1, n, generator=g) * 0.3 + 0.1, torch.rand(1, n, generator=g) * 0.1 - 0.05,
                          torch.rand(1, n, generator=g) * 0.3 + 0.1], -1).double().requires_grad_()
    colors = torch.rand(1, n, 2, generator=g, dtype=torch.float64, requires_grad=True)
    opacities = (torch.rand(1, n, generator=g, dtype=torch.float64) * 0.8 + 0.1).requires_grad_()
    backgrounds = torch.rand(1, 2, generator=g, dtype=torch.float64, requires_grad=True)
    radii = torch.full((1, n, 2), 20, dtype=torch.int32)
    depths = torch.rand(1, n, generator=g, dtype=torch.float64)
    step_bytes = 4 * 4 * 3 * 8 + 4 * 4 * 4 * 8                                  # alpha + transmittance of a tile
    # the backward replays steps that the forward did not keep: none, some, all kept
    for cache_bytes in (1 << 20, 3 * step_bytes, 0):
        settings = RasterSettings(tile_size=4, chunk=3, step_elements=4 * 4 * 3, cache_bytes=cache_bytes)

        def render(m, q, c, o, b):
            image, alpha = rasterize_to_pixels(m, q, c, o, radii, depths, width, height, b, settings=settings)
            return image, alpha

        inputs = (means2d, conics, colors, opacities, backgrounds)
        for seed in range(2):   # fast mode: random directional derivatives, each checked by finite differences
            torch.manual_seed(seed)
            assert torch.autograd.gradcheck(render, inputs, eps=1e-7, atol=1e-6, rtol=1e-5, fast_mode=True)


def test_means2d_gradient_is_the_loss_gradient_and_absgrad_sums_per_pixel_magnitudes():
    width, height = 14, 12
    scene = leaves(*random_scene(12, width, height, seed=7, size_px=2.0))
    image, alpha, meta = rasterization(*scene, width, height, backend="torch", absgrad=True, settings=SMALL)
    means2d = meta["means2d"]
    assert not means2d.is_leaf and means2d.requires_grad
    means2d.retain_grad()
    target = torch.rand(image.shape, generator=torch.Generator().manual_seed(8))
    ((image - target) ** 2).sum().backward()

    # Reference: the same loss as a function of means2d alone, composited brute force in float64.
    from stages.optimize.rasterize.reference import reference_composite
    fixed = {k: meta[k].detach() for k in ("conics", "opacities", "depths")}
    colors = scene[4].detach()
    visible = (meta["radii"][0] > 0).all(-1)

    def per_pixel_images(m2d):
        img, _ = reference_composite(m2d, fixed["conics"][0], colors, fixed["opacities"][0], fixed["depths"][0],
                                     visible, width, height)
        return img

    m2d = means2d.detach()[0].clone().requires_grad_()
    ref_img = per_pixel_images(m2d)
    residual = 2 * (ref_img - target[0]).detach()                               # d loss / d pixel
    (grad,) = torch.autograd.grad((ref_img * residual).sum(), m2d)
    torch.testing.assert_close(means2d.grad[0], grad, rtol=1e-9, atol=1e-12)
    jac = torch.autograd.functional.jacobian(per_pixel_images, m2d)             # [H, W, 3, N, 2]
    per_pixel = (jac * residual[..., None, None]).sum(2)                        # [H, W, N, 2]
    expected_abs = per_pixel.abs().sum((0, 1))
    assert expected_abs[visible].abs().sum() > 0
    torch.testing.assert_close(means2d.absgrad[0], expected_abs, rtol=1e-9, atol=1e-12)


def test_culling_rules():
    width, height, focal = 20, 20, 20.0
    K = torch.tensor([[[focal, 0, 10.0], [0, focal, 10.0], [0, 0, 1]]])
    means = torch.tensor([[0.0, 0.0, 2.0],     # visible
                          [0.0, 0.0, -2.0],    # behind the camera
                          [0.0, 0.0, 0.005],   # closer than the near plane
                          [5.0, 0.0, 2.0],     # box entirely right of the image
                          [0.0, 0.0, 2.0]])    # opacity below 1/255
    n = len(means)
    opacities = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.003])
    projection = project_gaussians(means, torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.full((n, 3), 0.05),
                                   opacities, torch.eye(4)[None], K, width, height)
    visible = (projection.radii[0] > 0).all(-1).tolist()
    assert visible == [True, False, False, False, False]
    assert projection.radii.dtype == torch.int32
    assert torch.isfinite(projection.means2d).all() and torch.isfinite(projection.conics).all()


@pytest.mark.parametrize("gsplat_order", [False, True])
def test_a_degenerate_gaussian_is_culled_with_zero_not_nan_gradients(gsplat_order):
    """Zero scales and no blur: the 2D covariance has det = 0, so the Gaussian is culled; antialiased, its
    compensation is 0 and every gradient stays finite (no division by that det, in either order of operations)."""
    params = [torch.tensor([[0.0, 0.0, 3.0], [0.2, 0.1, 4.0]]), torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]]),
              torch.tensor([[0.0, 0, 0], [0.1, 0.1, 0.1]]), torch.tensor([0.5, 0.5])]
    params = [p.requires_grad_() for p in params]
    K = torch.tensor([[[50.0, 0, 32], [0, 50, 32], [0, 0, 1]]])
    p = project_gaussians(*params, torch.eye(4)[None], K, 64, 64, eps2d=0.0, antialiased=True,
                          gsplat_order=gsplat_order)
    assert p.radii[0, 0].tolist() == [0, 0] and (p.radii[0, 1] > 0).all()
    # (1 up to rounding: an H200 host's CPU kernels gave 1 - 6e-8 where this machine's give exactly 1)
    assert p.compensations[0, 0] == 0 and p.compensations[0, 1].item() == pytest.approx(1.0, abs=1e-6)
    (p.opacities.sum() + p.conics.sum() + p.means2d.sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in params)
    assert params[3].grad[0] == 0                                              # the culled one's opacity


def test_projection_matches_gsplat_pure_torch_reference():
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci  # pure torch (CPU)

    width, height = 64, 48
    means, quats, scales, opacities, _, viewmats, Ks = random_scene(200, width, height, n_cameras=2, seed=9)
    # include Gaussians far off-axis so the Jacobian clamp is exercised
    means[:20, 0] *= 4.0
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    torch.testing.assert_close(covariance_from_quat_scale(quats, scales), covars)
    radii_g, means2d_g, depths_g, conics_g, compensations_g = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01, far_plane=1e10,
        calc_compensations=True)
    ours = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, antialiased=True)
    both = (radii_g > 0).all(-1) & (ours.radii > 0).all(-1)
    assert both.sum() > 100
    torch.testing.assert_close(ours.means2d[both], means2d_g[both], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.conics[both], conics_g[both], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ours.depths[both], depths_g[both], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.compensations[both], compensations_g[both], rtol=1e-10, atol=1e-10)
    # gsplat's torch helper uses a fixed 3.33 extent: our opacity-aware radii are never larger
    assert (ours.radii[both] <= radii_g[both]).all()


def test_fused_multiply_add_rounds_once_and_the_fma_products_are_matrix_products():
    from stages.optimize.rasterize.projection import fused_multiply_add, matmul_fma

    a = torch.tensor([1 + 2.0**-12], dtype=torch.float32)
    minus_one = torch.tensor([-1.0])
    # a*a = 1 + 2^-11 + 2^-24: rounded to float32 first, the 2^-24 is lost (a tie, to even); fused, it is kept
    assert float(a * a + minus_one) == 2.0**-11
    assert float(fused_multiply_add(a, a, minus_one)) == 2.0**-11 + 2.0**-24
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 3, generator=g, dtype=torch.float64)
    y = torch.randn(5, 3, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(matmul_fma(x, y), x @ y, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(matmul_fma(x.float(), y.float()), (x @ y).float(), rtol=1e-6, atol=1e-6)


def test_projection_in_gsplat_order_agrees_with_the_plain_one_and_float64():
    """gsplat_order (the CUDA default) computes the same quantities with other roundings: within float32 noise of
    the plain path and of float64, gradients included (autograd through the float64 FMAs)."""
    width, height = 64, 48
    inputs = random_scene(300, width, height, n_cameras=2, seed=4)
    results = {}
    for name, dtype, order in (("float64", torch.float64, False), ("plain", torch.float32, False),
                               ("gsplat", torch.float32, True)):
        params = [t.detach().to(dtype, copy=True).requires_grad_() for t in inputs[:4]]
        p = project_gaussians(*params, inputs[5].to(dtype), inputs[6].to(dtype), width, height, antialiased=True,
                              gsplat_order=order)
        weights = torch.linspace(0.5, 1.5, 6 * 600, dtype=dtype).view(2, 300, 6)
        (torch.cat([p.means2d, p.conics, p.opacities[..., None]], -1) * weights).sum().backward()
        results[name] = (p, [t.grad for t in params])
    reference, reference_grads = results["float64"]
    visible = (reference.radii > 0).all(-1)
    assert visible.sum() > 200
    for name in ("plain", "gsplat"):
        p, grads = results[name]
        assert torch.equal(p.radii, reference.radii), name
        for got, want in ((p.means2d, reference.means2d), (p.conics, reference.conics), (p.depths, reference.depths),
                          (p.opacities, reference.opacities)):
            torch.testing.assert_close(got[visible].double(), want[visible], rtol=2e-5, atol=1e-5, msg=name)
        for got, want in zip(grads, reference_grads):
            torch.testing.assert_close(got.double(), want, rtol=1e-3, atol=1e-4, msg=name)
    assert not torch.equal(results["plain"][0].conics, results["gsplat"][0].conics), "two roundings, not one path"


def test_spherical_harmonics_match_gsplat_pure_torch_reference():
    from gsplat.cuda._torch_impl import _spherical_harmonics

    g = torch.Generator().manual_seed(10)
    dirs = torch.randn(50, 3, generator=g, dtype=torch.float64) * 3
    coeffs = torch.randn(50, 16, 3, generator=g, dtype=torch.float64)
    for degree in range(4):
        torch.testing.assert_close(eval_sh(degree, dirs, coeffs), _spherical_harmonics(degree, dirs, coeffs))
    rgb = torch.rand(5, 3, dtype=torch.float64)
    dc = torch.cat([rgb_to_sh_dc(rgb)[:, None], torch.zeros(5, 15, 3, dtype=torch.float64)], 1)
    torch.testing.assert_close(sh_to_color(3, dirs[:5], dc), rgb)


def test_sh_colors_through_rasterization_match_reference():
    width, height = 20, 16
    means, quats, scales, opacities, _, viewmats, Ks = random_scene(40, width, height, n_cameras=2, seed=11)
    viewmats[1, :3, 3] += torch.tensor([0.5, 0.2, -0.3], dtype=torch.float64)   # a camera off the origin
    coeffs = torch.randn(40, 16, 3, generator=torch.Generator().manual_seed(12), dtype=torch.float64) * 0.3
    image, _, _ = rasterization(means, quats, scales, opacities, coeffs, viewmats, Ks, width, height,
                                sh_degree=2, backend="torch", settings=SMALL)
    centers = torch.linalg.inv(viewmats)[:, :3, 3]
    colors = torch.stack([sh_to_color(2, means - centers[c], coeffs) for c in range(2)])   # [C, N, 3]
    ref_image, _ = reference_rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    torch.testing.assert_close(image, ref_image, rtol=0, atol=1e-12)


def test_empty_and_fully_culled_scenes_render_the_background():
    width, height = 10, 8
    means = torch.tensor([[0.0, 0.0, -1.0]], requires_grad=True)
    bg = torch.tensor([[0.1, 0.2, 0.3]])
    image, alpha, meta = rasterization(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 3), 0.1),
                                       torch.tensor([0.5]), torch.ones(1, 3), torch.eye(4)[None],
                                       torch.tensor([[[10.0, 0, 5], [0, 10.0, 4], [0, 0, 1]]]), width, height,
                                       backgrounds=bg, backend="torch")
    assert torch.equal(image, bg.view(1, 1, 1, 3).expand(1, height, width, 3))
    assert torch.equal(alpha, torch.zeros(1, height, width, 1))
    image.sum().backward()
    assert torch.equal(means.grad, torch.zeros(1, 3))


def test_auto_backend_on_cpu_never_calls_gsplat(monkeypatch):
    import gsplat

    def forbidden(*args, **kwargs):
        raise AssertionError("gsplat must not be called without CUDA")

    monkeypatch.setattr(gsplat, "rasterization", forbidden)
    scene = random_scene(10, 16, 16, dtype=torch.float32)
    for backend in ("auto", "gsplat"):
        _, _, meta = rasterization(*scene, 16, 16, backend=backend)
        assert meta["backend"] == "torch"
    with pytest.raises(ValueError, match="backend"):
        rasterization(*scene, 16, 16, backend="cuda")


def test_a_gsplat_extension_failure_on_the_first_call_falls_back_to_torch(monkeypatch, caplog):
    import stages.optimize.rasterize as rasterize

    calls = []

    def broken_extension(*args, **kwargs):
        calls.append(1)
        raise OSError("CUDA_HOME environment variable is not set")

    monkeypatch.setattr(rasterize, "_wants_gsplat", lambda backend, means: rasterize._gsplat_first_call_ok is not False)
    monkeypatch.setattr(rasterize, "rasterize_gsplat", broken_extension)
    monkeypatch.setattr(rasterize, "_gsplat_first_call_ok", None)
    scene = random_scene(10, 16, 16, dtype=torch.float32)
    logger = logging.getLogger("page4dgs")          # may not propagate to the root logger once a CLI ran
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="page4dgs"):
            for _ in range(2):
                _, _, meta = rasterization(*scene, 16, 16, backend="auto")
                assert meta["backend"] == "torch"
    finally:
        logger.removeHandler(caplog.handler)
    assert len(calls) == 1 and rasterize._gsplat_first_call_ok is False
    assert "CUDA_HOME" in caplog.text
