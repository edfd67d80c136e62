"""The training step's cheaper formulations against slow, obviously correct references (float64): B-spline weights,
cached anchor and time weights, motion second differences, the per-channel scatter of the deformation, the planes'
stacked layout, the written-out gradients (SSIM, temporal opacity, anisotropy), and one Adam with a group per key.
"""

from __future__ import annotations

import pytest
import torch

from stages.optimize.deformation import Box, MLPField, MotionBases, PlanesField, build_deformation
from stages.optimize.gaussians import create_splats
from stages.optimize.losses import anisotropy_loss, silhouette_loss, ssim, ssim_map
from stages.optimize.model import GaussianModel4D, temporal_opacity

F64 = torch.float64


def _polynomial_bspline_basis(bases: MotionBases, times: torch.Tensor) -> torch.Tensor:
    """phi (M, B) from the four blending polynomials of the local segment (the textbook form)."""
    knots = bases.knots
    u = times.clamp(0.0, 1.0) * (knots - 3)
    segment = u.floor().clamp(max=knots - 4)
    s = u - segment
    weights = torch.stack([(1 - s) ** 3, 3 * s**3 - 6 * s**2 + 4, -3 * s**3 + 3 * s**2 + 3 * s + 1, s**3], -1) / 6
    control = bases.control[:, segment.long()[:, None] + torch.arange(4)]            # (B, M, 4)
    return torch.einsum("bmk,mk->mb", control, weights)


def _model(kind: str, n: int = 40, with_opacity: bool = False, seed: int = 0) -> GaussianModel4D:
    """A float64 model with random motion, some Gaussians static, anchor times on a few slices."""
    torch.manual_seed(seed)                                         # the networks' initialisation
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=gen, dtype=F64)
    spec = {"bases": {"kind": "bases", "count": 3, "knots": 7, "with_opacity": with_opacity},
            "rigid": {"kind": "rigid", "count": 3, "knots": 7},
            "mlp": {"kind": "mlp", "width": 16, "depth": 3, "position_octaves": 2, "time_octaves": 2,
                    "with_opacity": with_opacity},
            "planes": {"kind": "planes", "resolutions": [4, 8], "time_resolution": 5, "features": 3,
                       "head_width": 8, "with_opacity": with_opacity}}
    spec = {**spec, "planes_bases": {"kind": "planes_bases", "planes": {k: v for k, v in spec["planes"].items()
                                                                        if k != "kind"},
                                     "bases": {k: v for k, v in spec["bases"].items() if k != "kind"}},
            "rigid_bases": {"kind": "rigid_bases", "rigid": {"count": 3, "knots": 7},
                            "bases": {"count": 3, "knots": 7}}}[kind]
    deformation = build_deformation(spec, Box.around(means))
    splats = create_splats(means, torch.randn(n, 4, 3, generator=gen, dtype=F64), torch.randn(n, generator=gen),
                           torch.randn(n, 3, generator=gen) * 0.3 - 3, torch.randn(n, 4, generator=gen),
                           torch.rand(n, generator=gen) < 0.7, torch.randint(0, 5, (n,), generator=gen) / 4.0,
                           sh_degree=1, temporal_sigma=0.2, extra=deformation.per_gaussian_shapes())
    model = GaussianModel4D(splats, deformation, sh_degree=1, temporal_opacity=True).double()
    with torch.no_grad():
        deformation.initialize(means[splats["is_dynamic"]])          # the rigid model's pivots
        for p in model.deformation.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.2)
        for key in model.deformation.per_gaussian_shapes():
            model.splats[key].normal_(0, 0.2, generator=gen)
        model.splats["time_log_scales"].add_(torch.randn(n, generator=gen, dtype=F64) * 0.3)
    return model


# ---------------------------------------------------------------------------------------------------------------
# bases


def test_dense_bspline_weights_equal_the_blending_polynomials():
    bases = MotionBases(count=4, knots=9).double()
    bases.control.data.normal_()
    t = torch.cat([torch.rand(200, dtype=F64), torch.linspace(0, 1, 7, dtype=F64), torch.tensor([-0.1, 1.2], dtype=F64)])
    torch.testing.assert_close(bases.basis(t), _polynomial_bspline_basis(bases, t), rtol=0, atol=1e-14)
    assert torch.allclose(bases.basis_weights(t).sum(-1), torch.ones_like(t))          # partition of unity


def test_bases_displacement_keeps_weights_until_the_anchors_change():
    bases = MotionBases(count=3, knots=8).double()
    bases.control.data.normal_()
    anchors = torch.rand(30, dtype=F64)
    coefs = {"motion_coefs": torch.randn(30, 3, 10, dtype=F64)}

    def reference(time, anchor_times):
        phi = _polynomial_bspline_basis(bases, torch.full_like(anchor_times, time)) - \
            _polynomial_bspline_basis(bases, anchor_times)
        return torch.einsum("mbd,mb->md", coefs["motion_coefs"], phi)

    for time in (0.3, 0.3, 0.85):                                   # the second 0.3 comes from the cache
        torch.testing.assert_close(bases.displacement(None, time, anchors, coefs), reference(time, anchors))
    anchors.add_(0.05)                                              # in place: the cached weights are stale
    torch.testing.assert_close(bases.displacement(None, 0.85, anchors, coefs), reference(0.85, anchors))
    per_gaussian = torch.rand(30, dtype=F64)
    expected = torch.stack([reference(float(t), anchors)[i] for i, t in enumerate(per_gaussian)])
    torch.testing.assert_close(bases.displacement(None, per_gaussian, anchors, coefs), expected)


# ---------------------------------------------------------------------------------------------------------------
# the model


@pytest.mark.parametrize("kind", ["bases", "rigid", "mlp", "planes"])
def test_accelerations_are_second_differences_of_positions(kind):
    model = _model(kind)
    index = model.dynamic_index()[:12]
    times = torch.rand(12, dtype=F64) * 0.8 + 0.1
    h = 0.07
    got = model.accelerations(times, h, index)
    expected = torch.stack([model.positions_at_time(float(t) - h, i[None])[0]
                            - 2 * model.positions_at_time(float(t), i[None])[0]
                            + model.positions_at_time(float(t) + h, i[None])[0] for t, i in zip(times, index)])
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert got.abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["bases", "rigid", "mlp", "planes", "planes_bases", "rigid_bases"])
def test_the_render_and_the_motion_regulariser_share_one_deformation(kind):
    """gaussians_at(motion=(rows, times, h)): the same Gaussians as without, plus the rows' second differences
    (their position channels: accelerations), values and gradients of both as computed apart; also when no
    dynamic Gaussian is visible (the second differences alone)."""
    model = _model(kind, n=60)
    gen = torch.Generator().manual_seed(5)
    dynamic = model.dynamic_index()
    rows = dynamic[torch.randperm(len(dynamic), generator=gen)[:15]]
    times, h = torch.rand(15, generator=gen, dtype=F64) * 0.8 + 0.1, 0.07
    weights = {key: torch.randn(value.shape, generator=gen, dtype=F64)
               for key, value in model.gaussians_at(0.4).items() if value is not None and value.is_floating_point()}

    def loss_and_grads(shared: bool, skip: bool):
        model.zero_grad(set_to_none=True)
        g = model.gaussians_at(0.4, skip_invisible=skip, motion=(rows, times, h) if shared else None)
        second = g.pop("second_difference")[:, :3] if shared else model.accelerations(times, h, rows)
        loss = sum((g[key] * w).sum() for key, w in weights.items()) + (second * second).sum()
        loss.backward()
        return second.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    for skip in (False, True):
        second, grads = loss_and_grads(True, skip)
        second_apart, grads_apart = loss_and_grads(False, skip)
        assert second.abs().max() > 1e-4 and set(grads) == set(grads_apart)
        torch.testing.assert_close(second, second_apart, rtol=0, atol=1e-13)
        for name, grad in grads_apart.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-12, atol=1e-13, msg=name)
    with torch.no_grad():
        model.splats["opacities"].fill_(-30.0)                     # nothing visible: no render deformation
    g = model.gaussians_at(0.4, skip_invisible=True, motion=(rows, times, h))
    assert g["deformed"] is None
    torch.testing.assert_close(g["second_difference"][:, :3], model.accelerations(times, h, rows), rtol=0, atol=0)


@pytest.mark.parametrize("kind,with_opacity", [("bases", True), ("mlp", True), ("planes", False)])
def test_gaussians_at_equals_index_adding_each_channel(kind, with_opacity):
    model = _model(kind, with_opacity=with_opacity)
    s = model.splats
    index = torch.nonzero(s["is_dynamic"]).reshape(-1)
    for time in (0.0, 0.4, 1.0):
        shift = model.deformation.displacement(s["means"][index], time, s["anchor_times"][index],
                                               model.deformation_inputs(index))
        logits = s["opacities"].index_add(0, index, shift[:, 10]) if with_opacity else s["opacities"]
        window = torch.exp(-0.5 * ((time - s["time_centers"]) / torch.exp(s["time_log_scales"])) ** 2)
        expected = {"means": s["means"].index_add(0, index, shift[:, :3]),
                    "quats": s["quats"].index_add(0, index, shift[:, 3:7]),
                    "scales": torch.exp(s["scales"].index_add(0, index, shift[:, 7:10])),
                    "opacities": torch.where(s["is_dynamic"], torch.sigmoid(logits) * window, torch.sigmoid(logits))}
        got = model.gaussians_at(time)
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=1e-13)


def test_positions_at_random_times_match_the_render_and_leave_the_render_time_cache_alone():
    model = _model("bases")
    index, _ = model.dynamic_set()
    rendered = model.gaussians_at(0.4)["means"][index]                  # caches the render time 0.4
    cached = dict(model.deformation._time_weights)
    for time in (0.4, 0.123, 0.777):                                    # the rigidity regulariser's random times
        got = model.positions_at_time(time, index.view(2, -1) if index.numel() % 2 == 0 else index)
        if time == 0.4:
            torch.testing.assert_close(got.reshape(-1, 3), rendered, rtol=0, atol=1e-14)
    assert model.deformation._time_weights.keys() == cached.keys()


def test_the_dynamic_set_is_found_again_when_densification_replaces_the_flags():
    model = _model("bases")
    first = model.dynamic_index()
    assert model.dynamic_index() is first                            # cached: no host synchronisation
    flags = model.splats["is_dynamic"].detach().clone()
    flags[first[0]] = False
    model.splats["is_dynamic"] = torch.nn.Parameter(flags, requires_grad=False)
    assert torch.equal(model.dynamic_index(), first[1:])


@pytest.mark.parametrize("kind", ["bases", "mlp"])
def test_a_model_loaded_under_inference_mode_renders_as_the_trained_one(kind, tmp_path):
    """Inference tensors have no version counter: the caches must not need one (load_model under
    ``torch.inference_mode``, rendered inside it and after it)."""
    from stages.optimize.model import load_model

    model = _model(kind).float()                                    # the saved format's dtype
    model.save(tmp_path / "model.pt")
    with torch.no_grad():
        expected = [model.gaussians_at(t) for t in (0.3, 0.3, 0.8)]
    with torch.inference_mode():
        loaded = load_model(tmp_path / "model.pt")
        inside = [loaded.gaussians_at(t) for t in (0.3, 0.3, 0.8)]
    with torch.no_grad():
        after = [loaded.gaussians_at(t) for t in (0.3, 0.3, 0.8)]
    for got in (inside, after):
        for want, have in zip(expected, got):
            for key, value in want.items():
                torch.testing.assert_close(have[key], value, rtol=0, atol=0)


def test_planes_load_models_saved_with_earlier_layouts():
    field = PlanesField(Box(), (4, 8), 5, 3, 8).double()
    torch.nn.init.normal_(field.out.weight)
    base = {k: v for k, v in field.state_dict().items() if k != "table"}
    per_plane, per_kind = dict(base), dict(base)     # the layouts before: xy xz yz xt yt zt per level
    for level in range(2):
        for kind in range(2):
            per_kind[f"planes.{2 * level + kind}"] = field.plane(level, kind).detach().clone()    # (3, F, H, W)
            for i, plane in enumerate(field.plane(level, kind).detach().unbind(0)):
                per_plane[f"planes.{6 * level + 3 * kind + i}"] = plane[None].clone()            # (1, F, H, W)
    x, t = torch.rand(20, 3, dtype=F64) * 2 - 1, torch.rand(20, dtype=F64)
    for old in (per_plane, per_kind):
        back = PlanesField(Box(), (4, 8), 5, 3, 8).double()
        back.load_state_dict(old)
        torch.testing.assert_close(back.table, field.table, rtol=0, atol=0)
        torch.testing.assert_close(back.offsets(x, t, {}), field.offsets(x, t, {}), rtol=0, atol=0)
    spatial = [p for level in range(2) for p in field.plane(level, 0).unbind(0)]                # p: (F, r, r)
    per_plane_tv = [(p[:, 1:, :] - p[:, :-1, :]).pow(2).mean() + (p[:, :, 1:] - p[:, :, :-1]).pow(2).mean()
                    for p in spatial]
    torch.testing.assert_close(field.regularization(), torch.stack(per_plane_tv).mean())   # weights from float32


# ---------------------------------------------------------------------------------------------------------------
# written-out gradients


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_ssim_gradient_equals_autograd_of_the_map(padding):
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 19, 23, generator=gen, dtype=F64, requires_grad=True)
    b = (a.detach() + 0.2 * torch.randn(a.shape, generator=gen, dtype=F64)).clamp(0, 1).requires_grad_(True)
    value = ssim(a, b, padding)
    reference = ssim_map(a, b, padding).mean()
    assert float(value.detach()) == float(reference.detach())
    expected = torch.autograd.grad(reference, (a, b))
    for got, want in zip(torch.autograd.grad(value, (a, b)), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-14)
    only_a = torch.autograd.grad(ssim(a, b.detach(), padding), a)[0]         # the training case: target fixed
    torch.testing.assert_close(only_a, expected[0], rtol=0, atol=1e-14)


def test_temporal_opacity_and_anisotropy_gradients_equal_autograd():
    gen = torch.Generator().manual_seed(1)
    o, mu = torch.rand(50, generator=gen, dtype=F64), torch.rand(50, generator=gen, dtype=F64)
    log_sigma = torch.randn(50, generator=gen, dtype=F64) - 1
    dynamic = torch.rand(50, generator=gen) < 0.6
    inputs = [x.requires_grad_(True) for x in (o, mu, log_sigma)]
    assert torch.autograd.gradcheck(lambda *x: temporal_opacity(x[0], 0.37, x[1], x[2], dynamic), inputs)
    reference = torch.where(dynamic, o * torch.exp(-0.5 * ((0.37 - mu) / torch.exp(log_sigma)) ** 2), o)
    assert torch.equal(temporal_opacity(o, 0.37, mu, log_sigma, dynamic), reference)

    log_scales = torch.randn(60, 3, generator=gen, dtype=F64) * 2
    log_scales[:5, 1] = log_scales[:5, 0]                             # ties: the gradient goes where max/min say
    log_scales.requires_grad_(True)
    ratio = torch.exp(log_scales.max(-1).values - log_scales.min(-1).values)
    expected = torch.autograd.grad(torch.relu(ratio - 3.0).mean(), log_scales)[0]
    assert torch.equal(torch.autograd.grad(anisotropy_loss(log_scales, 3.0), log_scales)[0], expected)


def _silhouette_by_axis(points_camera, K, outside, weights):
    """The silhouette loss as first written: each image axis clamped and normalised on its own (a stack of each),
    the full K product then sliced."""
    import torch.nn.functional as F

    height, width = outside.shape
    depth = points_camera[:, 2]
    pixels = (points_camera @ K.T)[:, :2] / depth.clamp_min(1e-3)[:, None]
    on_image = torch.stack([pixels[:, 0].clamp(0, width), pixels[:, 1].clamp(0, height)], dim=-1)
    beyond = (pixels - on_image).norm(dim=-1)
    grid = torch.stack([on_image[:, 0] / width, on_image[:, 1] / height], dim=-1) * 2 - 1
    distance = F.grid_sample(outside[None, None].to(grid.dtype), grid[None, None], mode="bilinear",
                             padding_mode="border", align_corners=False)[0, 0, 0] + beyond
    weights = weights * (depth > 1e-3)
    return (weights * (distance / width).square()).sum() / weights.sum().clamp_min(1e-12)


def test_the_silhouette_loss_equals_its_per_axis_form():
    """Both image axes clamped and normalised at once (11 kernels fewer per step): the same values and gradients
    for points inside a 13 x 9 view, around it on every side and behind the camera, with a skewed K."""
    gen = torch.Generator().manual_seed(2)
    outside = torch.rand(9, 13, generator=gen, dtype=F64) * 6
    K = torch.tensor([[10.0, 0.5, 6.5], [0.0, 9.0, 4.5], [0.0, 0.0, 1.0]], dtype=F64)
    pixel = torch.rand(300, 2, generator=gen, dtype=F64) * torch.tensor([23.0, 19.0], dtype=F64) - 5
    depth = torch.rand(300, generator=gen, dtype=F64) * 2.5 + 0.5
    depth[:10] = -depth[:10]                                                 # behind the camera
    y = (pixel[:, 1] - K[1, 2]) / K[1, 1]
    x = (pixel[:, 0] - K[0, 2] - K[0, 1] * y) / K[0, 0]
    points = torch.stack([x * depth.abs(), y * depth.abs(), depth], dim=1).requires_grad_(True)
    weights = torch.rand(300, generator=gen, dtype=F64)
    value = silhouette_loss(points, K, outside, weights)
    reference = _silhouette_by_axis(points, K, outside, weights)
    torch.testing.assert_close(value, reference, rtol=1e-14, atol=0)
    got, expected = torch.autograd.grad(value, points)[0], torch.autograd.grad(reference, points)[0]
    assert expected[10:].abs().max() > 0 and got[:10].abs().max() == 0
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# the optimizer


def test_one_adam_with_a_group_per_key_steps_like_one_adam_per_key():
    from stages.optimize.config import OptimizeConfig
    from stages.optimize.trainer import build_optimizer, splat_learning_rates

    cfg = OptimizeConfig(deformation="planes")
    models = [_model("planes", seed=3) for _ in range(2)]
    shared = build_optimizer(cfg, models[0], None, scale=2.0)
    rates = {**splat_learning_rates(cfg, 2.0), "planes": cfg.lr_planes, "field": cfg.lr_field}
    deformation = models[1].deformation
    params = {**{k: [p] for k, p in models[1].splats.items() if p.requires_grad},
              "planes": [deformation.table],
              "field": [*deformation.hidden.parameters(), *deformation.out.parameters()]}
    separate = [torch.optim.Adam(ps, lr=rates[k], eps=1e-15, fused=True) for k, ps in params.items()]
    assert [g["name"] for g in shared.param_groups] == list(params)
    for step in range(3):
        for model in models:
            loss = sum((v * v).sum() for v in model.gaussians_at(0.3 * step).values() if v.is_floating_point())
            (loss + model.deformation.regularization()).backward()
        shared.step()
        for opt in separate:
            opt.step()
        for model in models:
            model.zero_grad(set_to_none=True)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(a, b)


def test_the_cpu_steps_the_lean_fused_adam_unless_lean_adam_is_off():
    from stages.optimize.config import OptimizeConfig
    from stages.optimize.fused_adam import LeanFusedAdam
    from stages.optimize.trainer import build_optimizer

    model = _model("bases", n=30).float()
    lean = build_optimizer(OptimizeConfig(), model, None, scale=1.0)
    assert isinstance(lean, LeanFusedAdam) and all(g["fused"] for g in lean.param_groups)
    plain = build_optimizer(OptimizeConfig(lean_adam=False), model, None, scale=1.0)
    assert type(plain) is torch.optim.Adam and all(g["fused"] for g in plain.param_groups)


def test_a_checkpoint_of_the_unfused_cpu_adam_resumes_into_the_fused_one():
    # Checkpoints written before the CPU used the fused kernel hold param groups with fused None: restoring one keeps
    # the kernel chosen now (torch's Adam would otherwise quietly run unfused), and the step continues.
    from stages.optimize.config import OptimizeConfig
    from stages.optimize.trainer import build_optimizer, restore, LoopState

    cfg = OptimizeConfig(lean_adam=False)
    model = _model("bases", n=30).float()
    old = torch.optim.Adam([{"name": g["name"], "params": g["params"], "lr": g["lr"]}
                            for g in build_optimizer(cfg, model, None, scale=1.0).param_groups], eps=1e-15)
    model.gaussians_at(0.5)["means"].sum().backward()
    old.step()
    assert all(not g["fused"] for g in old.param_groups)
    snapshot = {"splats": {k: v.detach().clone() for k, v in model.splats.items()},
                "deformation": model.deformation.state_dict(), "optimizer": old.state_dict(), "strategy_state": {},
                "loop": {"step": 1, "elapsed_s": 0.0, "guard": {}}}
    optimizer = restore(snapshot, cfg, model, None, {}, LoopState(), None, scale=1.0)
    assert all(g["fused"] for g in optimizer.param_groups)
    stepped = [p for g in optimizer.param_groups for p in g["params"] if p in optimizer.state]
    assert stepped and all(int(optimizer.state[p]["step"]) == 1 for p in stepped)
    model.gaussians_at(0.5)["means"].sum().backward()
    optimizer.step()
    assert all(int(optimizer.state[p]["step"]) == 2 for p in stepped)


def test_gsplat_strategy_replaces_parameters_inside_the_shared_optimizer():
    from stages.optimize.config import OptimizeConfig
    from stages.optimize.densify import DensifyStrategy
    from stages.optimize.trainer import build_optimizer, splat_optimizers

    model = _model("bases", n=30).float()
    optimizer = build_optimizer(OptimizeConfig(), model, None, scale=1.0)
    model.gaussians_at(0.5)["means"].sum().backward()
    optimizer.step()
    per_key = splat_optimizers(optimizer, model)
    strategy = DensifyStrategy(refine_start_iter=0, refine_every=1, reset_every=10**9, grow_grad2d=1e-3,
                               grow_scale3d=10.0, prune_opa=0.0)
    strategy.check_sanity(model.splats, per_key)
    state = strategy.initialize_state(scene_scale=1.0)
    means2d = torch.zeros(1, 30, 2, requires_grad=True)
    means2d.grad = torch.zeros(1, 30, 2)
    means2d.grad[0, :4, 0] = 1.0                                    # four Gaussians are duplicated
    info = {"means2d": means2d, "radii": torch.ones(1, 30, 2, dtype=torch.int32), "width": 8, "height": 8,
            "n_cameras": 1, "gaussian_ids": None}
    moments = optimizer.state[model.splats["motion_coefs"]]["exp_avg"].clone()
    assert strategy.step_post_backward(model.splats, per_key, state, 1, info).duplicated == 4
    for group in optimizer.param_groups:
        if group["name"] in model.splats:
            assert group["params"] == [model.splats[group["name"]]]
    assert len(optimizer.state) == len(optimizer.param_groups)      # no state left behind for the old tensors
    torch.testing.assert_close(optimizer.state[model.splats["motion_coefs"]]["exp_avg"][:30], moments)
    model.gaussians_at(0.5)["means"].sum().backward()
    optimizer.step()                                                # steps the new, larger tensors
    assert model.num_gaussians() == 34
