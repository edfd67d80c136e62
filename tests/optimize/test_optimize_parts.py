"""Optimize stage parts: SSIM, depth loss, deformation models, densification (4D attributes, the opacity reset),
camera corrections, the model's time evaluation and persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.optimize.config import DEFORMATIONS, OptimizeConfig
from stages.optimize.deformation import (AnchorGroups, Box, MLPField, MotionBases, PlanesField, RigidBases, kmeans,
                                         positional_encoding, quaternion_exp, quaternion_multiply,
                                         rigid_positions_reference)
from stages.optimize.densify import DensifyStrategy, make_strategy
from stages.optimize.gaussians import create_splats
from stages.optimize.losses import (acceleration_loss, anisotropy_loss, depth_loss, fit_scale_shift, ssim,
                                    ssim_map)
from stages.optimize.model import GaussianModel4D, load_model
from stages.optimize.trainer import refined_world_to_camera


# ---------------------------------------------------------------------------------------------------------------
# losses


def test_ssim_valid_matches_skimage_gaussian_ssim(rng):
    from skimage.metrics import structural_similarity

    a = rng.uniform(size=(40, 48, 3))
    b = np.clip(a + rng.normal(scale=0.1, size=a.shape), 0, 1)
    b[10:20, 5:30] = rng.uniform(size=(10, 25, 3))
    expected = structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
    got = ssim(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), padding="valid")
    assert abs(float(got) - expected) < 1e-6


def test_ssim_same_padding_is_the_zero_padded_full_map(rng):
    a = torch.tensor(rng.uniform(size=(1, 3, 20, 24)))
    b = torch.tensor(rng.uniform(size=(1, 3, 20, 24)))
    # Direct 2-D convolution with zero padding, as 3DGS's ssim does.
    k = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-k**2 / (2 * 1.5**2))
    g = g / g.sum()
    w2d = (g[:, None] * g[None, :]).expand(3, 1, 11, 11)

    def f(x):
        return torch.nn.functional.conv2d(x, w2d, padding=5, groups=3)

    mu_a, mu_b = f(a), f(b)
    var_a, var_b, cov = f(a * a) - mu_a**2, f(b * b) - mu_b**2, f(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    expected = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    torch.testing.assert_close(ssim_map(a, b, padding="same"), expected, rtol=1e-10, atol=1e-12)
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-12)


def test_depth_loss_is_scale_and_shift_invariant_and_has_a_gradient(rng):
    target = torch.tensor(rng.uniform(1, 5, size=(16, 16)))
    rendered = (3.0 * target - 0.7).requires_grad_(True)
    valid = torch.ones(16, 16, dtype=torch.bool)
    valid[0] = False
    assert float(depth_loss(rendered, target, valid).detach()) < 1e-10
    s, t = fit_scale_shift(target[valid], rendered.detach()[valid])
    assert float(s) == pytest.approx(3.0, abs=1e-10) and float(t) == pytest.approx(-0.7, abs=1e-9)
    bent = rendered + 0.3 * torch.tensor(rng.normal(size=(16, 16)))
    loss = depth_loss(bent, target, valid)
    assert float(loss.detach()) > 0.01
    loss.backward()
    assert rendered.grad.abs().sum() > 0 and rendered.grad[0].abs().sum() == 0, "invalid pixels get no gradient"


def test_regularisers_match_their_definitions():
    log_scales = torch.log(torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 30.0]]))
    assert float(anisotropy_loss(log_scales, 10.0)) == pytest.approx((0 + 20.0) / 2)
    accelerations = torch.tensor([[-0.4, 0.0, 0.0], [0.0, 0.0, 0.0], [0.3, 0.0, 0.4]])
    assert float(acceleration_loss(accelerations, 2.0)) == pytest.approx(((0.4 / 2) ** 2 + 0 + (0.5 / 2) ** 2) / 3)


# ---------------------------------------------------------------------------------------------------------------
# deformation


def test_motion_bases_are_uniform_cubic_bsplines(rng):
    from scipy.interpolate import BSpline

    bases = MotionBases(count=3, knots=9)
    control = torch.tensor(rng.normal(size=(3, 9)), dtype=torch.float32)
    bases.control.data.copy_(control)
    knots = (np.arange(9 + 4) - 3.0) / (9 - 3)                       # uniform, [0, 1] = the spline's domain
    t = np.concatenate([rng.uniform(size=50), [0.0, 1.0, 0.5]])
    expected = np.stack([BSpline(knots, control[b].double().numpy(), 3)(t) for b in range(3)], -1)   # (T, 3)
    got = bases.basis(torch.tensor(t, dtype=torch.float32)).detach().double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # Initialised as a smoothed DCT basis: close to cos(pi b t).
    fresh = MotionBases(count=2, knots=32).basis(torch.linspace(0, 1, 11))
    np.testing.assert_allclose(fresh[:, 0].detach().numpy(), np.cos(np.pi * np.linspace(0, 1, 11)), atol=0.01)


@pytest.mark.parametrize("kind", ["bases", "rigid", "mlp", "planes", "mlp-embedding", "planes-embedding",
                                  "mlp-anchor", "planes-anchor"])
def test_every_deformation_is_zero_at_the_anchor_time_and_moves_elsewhere(kind, rng):
    torch.manual_seed(0)
    means = torch.tensor(rng.normal(size=(64, 3)), dtype=torch.float32)
    box = Box.around(means)
    model = {"bases": lambda: MotionBases(6, 10), "rigid": lambda: RigidBases(4, 8),
             "mlp": lambda: MLPField(box, 32, 3, 4, 3),
             "planes": lambda: PlanesField(box, (8, 16), 6, 4, 16),
             "mlp-embedding": lambda: MLPField(box, 32, 3, 4, 3, embedding=5),
             "planes-embedding": lambda: PlanesField(box, (8, 16), 6, 4, 16, embedding=5),
             "mlp-anchor": lambda: MLPField(box, 32, 3, 4, 3, anchor_time=True),
             "planes-anchor": lambda: PlanesField(box, (8, 16), 6, 4, 16, anchor_time=True)}[kind]()
    coefs = {k: torch.randn(64, *shape) for k, shape in model.per_gaussian_shapes().items()}
    assert sorted(coefs) == (["field_embedding"] if "embedding" in kind else ["motion_coefs"] if kind == "bases"
                             else ["rigid_logits"] if kind == "rigid" else [])
    assert model.per_gaussian_inputs() == (("anchor_times",) if "anchor" in kind else
                                           ("quats", "anchor_times") if kind == "rigid" else ())
    if kind == "rigid":   # still at the start: give the motions some, and the Gaussians rotations
        model.initialize(means)
        torch.nn.init.normal_(model.control, std=0.3)
        coefs["quats"] = torch.randn(64, 4)
    for p in (model.out.weight, model.out.bias) if kind not in ("bases", "rigid") else ():
        torch.nn.init.normal_(p, std=0.1)   # the networks start at zero motion; give them some
    if kind.startswith("planes"):   # time planes start constant (time-independent features); with the anchor
        # planes ten samples are multiplied, so keep them near one there
        model.table.data.uniform_(*((0.5, 1.5) if "anchor" in kind else (0.1, 0.9)))
    anchors = torch.rand(64)
    if "anchor" in kind or kind == "rigid":
        coefs["anchor_times"] = anchors
    at_anchor = model.displacement(means, anchors, anchors, coefs)
    assert at_anchor.abs().max() < 1e-6
    elsewhere = model.displacement(means, 0.9, anchors, coefs)
    assert elsewhere.shape == (64, 10) and elsewhere[:, :3].abs().mean() > 1e-3


@pytest.mark.parametrize("kind", ["planes_bases", "mlp_bases", "rigid_bases"])
def test_a_shared_model_with_bases_is_the_sum_of_its_parts_and_rebuilds_from_its_spec(kind, rng):
    from stages.optimize.deformation import MLPWithBases, PlanesWithBases, RigidWithBases, build_deformation

    torch.manual_seed(0)
    means = torch.tensor(rng.normal(size=(32, 3)), dtype=torch.float32)
    box = Box.around(means)
    coefs = {"motion_coefs": torch.randn(32, 3, 10)}
    if kind == "planes_bases":
        model = PlanesWithBases({"resolutions": [8, 16], "time_resolution": 6, "features": 4, "head_width": 16},
                                {"count": 3, "knots": 10}, box)
        shared = model.planes
        torch.nn.init.normal_(shared.out.weight, std=0.1)           # the field starts at zero motion; give it some
        shared.table.data.uniform_(0.1, 0.9)
        assert model.box is shared.box
    elif kind == "mlp_bases":
        model = MLPWithBases({"width": 16, "depth": 2, "position_octaves": 2, "time_octaves": 2},
                             {"count": 3, "knots": 10}, box)
        shared = model.mlp
        torch.nn.init.normal_(shared.out.weight, std=0.1)
        assert model.box is shared.box
    else:
        model = RigidWithBases({"count": 4, "knots": 10}, {"count": 3, "knots": 10})
        shared = model.rigid
        coefs.update(model.initialize(means))                           # the rigid part's pivots and logits
        coefs.update(quats=torch.randn(32, 4), anchor_times=torch.rand(32))
        torch.nn.init.normal_(shared.control, std=0.3)
    own = {k: coefs[k] for k in (*shared.per_gaussian_shapes(), *shared.per_gaussian_inputs())}
    assert model.per_gaussian_shapes() == {**shared.per_gaussian_shapes(), "motion_coefs": (3, 10)}
    assert model.per_gaussian_inputs() == shared.per_gaussian_inputs()
    anchors = coefs.get("anchor_times", torch.rand(32))
    whole = model.displacement(means, 0.9, anchors, coefs)
    parts = shared.displacement(means, 0.9, anchors, own) + model.bases.displacement(means, 0.9, anchors, coefs)
    torch.testing.assert_close(whole, parts)
    assert shared.displacement(means, 0.9, anchors, own)[:, :3].abs().mean() > 1e-3     # both parts move
    assert model.bases.displacement(means, 0.9, anchors, coefs)[:, :3].abs().mean() > 1e-3
    assert model.displacement(means, anchors, anchors, coefs).abs().max() < 1e-5
    second = model.second_difference(means, torch.full((32,), 0.5), 0.1, coefs)
    torch.testing.assert_close(second, shared.second_difference(means, torch.full((32,), 0.5), 0.1, own)
                               + model.bases.second_difference(means, torch.full((32,), 0.5), 0.1, coefs))
    assert (model.regularization() is not None) == (kind == "planes_bases")
    assert model.spec()["kind"] == kind
    rebuilt = build_deformation(model.spec(), box)
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt.displacement(means, 0.9, anchors, coefs), whole)
    with pytest.raises(ValueError, match="with_opacity"):
        type(model)({"with_opacity": True}, {"with_opacity": False}, box)


@pytest.mark.parametrize("kind", ["planes_bases", "mlp_bases", "rigid_bases"])
def test_motion_parts_coefficients_penalises_only_the_hybrids_per_gaussian_motion(kind, rng):
    """optimize.motion_parts 'coefficients': the regulariser is the mean squared second difference of the bases'
    offsets sum_b c_b phi_b(t) alone (by hand from the basis curves), plus the field's own regulariser; the shared
    part gets no gradient from the accelerations. 'all' also counts the shared part's motion, and models that are
    not hybrids regularise all their motion either way."""
    from stages.optimize.deformation import MLPWithBases, PlanesWithBases, RigidWithBases
    from stages.optimize.trainer import motion_penalty

    torch.manual_seed(0)
    means = torch.tensor(rng.normal(size=(32, 3)), dtype=torch.float32)
    box = Box.around(means)
    coefs = {"motion_coefs": torch.randn(32, 3, 10)}
    if kind == "planes_bases":
        model = PlanesWithBases({"resolutions": [8], "time_resolution": 6, "features": 4, "head_width": 16},
                                {"count": 3, "knots": 10}, box)
        torch.nn.init.normal_(model.planes.out.weight, std=0.1)
        model.planes.table.data.uniform_(0.1, 0.9)
        moving_shared = [model.planes.out.weight, model.planes.hidden.weight]      # only the accelerations reach
    elif kind == "mlp_bases":
        model = MLPWithBases({"width": 16, "depth": 2, "position_octaves": 2, "time_octaves": 2},
                             {"count": 3, "knots": 10}, box)
        torch.nn.init.normal_(model.mlp.out.weight, std=0.1)
        moving_shared = list(model.mlp.parameters())
    else:
        model = RigidWithBases({"count": 4, "knots": 10}, {"count": 3, "knots": 10})
        coefs.update(model.initialize(means))
        coefs.update(quats=torch.randn(32, 4), anchor_times=torch.rand(32))
        torch.nn.init.normal_(model.rigid.control, std=0.3)
        moving_shared = [model.rigid.control]
    pick, times, h, scale = torch.tensor([3, 7, 11, 20]), torch.tensor([0.2, 0.4, 0.5, 0.8]), 0.05, 2.0
    c = coefs["motion_coefs"][pick]                                                  # (4, 3, 10)
    phi = [model.bases.basis(times + d) for d in (-h, 0.0, h)]                       # (4, 3) each
    second = torch.einsum("mb,mbd->md", phi[0] - 2 * phi[1] + phi[2], c)[:, :3]      # positions' second difference
    field = model.regularization()
    by_hand = second.square().sum() / (scale**2 * 4) + (0.0 if field is None else field)
    only = motion_penalty(model, means, coefs, pick, times, h, scale, "coefficients")
    torch.testing.assert_close(only, by_hand)
    everything = motion_penalty(model, means, coefs, pick, times, h, scale, "all")
    assert abs(float(everything.detach()) - float(only.detach())) > 1e-5             # the shared part moves too
    grads = torch.autograd.grad(only, moving_shared, allow_unused=True)
    assert all(g is None or float(g.abs().max()) == 0.0 for g in grads)
    grads = torch.autograd.grad(everything, moving_shared, allow_unused=True)
    assert any(g is not None and float(g.abs().max()) > 0 for g in grads)
    bases = MotionBases(count=3, knots=10)
    torch.testing.assert_close(motion_penalty(bases, means, coefs, pick, times, h, scale, "coefficients"),
                               motion_penalty(bases, means, coefs, pick, times, h, scale, "all"))


def _rotation_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternion (4,) [w, x, y, z] -> (3, 3), the textbook formula (independent of the model's rotate)."""
    w, x, y, z = q.tolist()
    return torch.tensor([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                         [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                         [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]], dtype=q.dtype)


def test_rigid_bases_carry_a_gaussian_by_the_rotation_about_the_pivot_and_the_shift():
    """One basis, control points constant in time from t = 0.5 on: at t = 1 the basis has turned 90 degrees about z
    around its pivot and shifted; a Gaussian seen at t = 0 (no motion yet) lands where that rigid motion puts it, and
    its rotation is turned by 90 degrees."""
    torch.set_default_dtype(torch.float64)
    try:
        model = RigidBases(count=1, knots=4)
        model.pivots.copy_(torch.tensor([[1.0, 0.0, 0.0]]))
        model.unit.fill_(2.0)
        with torch.no_grad():     # knots 4: the curve at t = 1 is (C1 + 4 C2 + C3) / 6, at t = 0 (C0 + 4 C1 + C2) / 6
            model.control.zero_()
            model.control[1:, 0, :3] = torch.tensor([0.0, 0.0, math.pi / 2])
            model.control[1:, 0, 3:] = torch.tensor([0.1, 0.2, 0.3])      # x unit 2 = (0.2, 0.4, 0.6) world
            model.control[0, 0] = -5 * model.control[1, 0]                 # so that the curve is 0 at t = 0
        torch.testing.assert_close(model.weights_at(0.0, torch.zeros(1)) @ model.control.flatten(1).detach(),
                                   torch.zeros(1, 6))
        x = torch.tensor([[2.0, 1.0, 0.5]])
        q = torch.tensor([[0.5, 0.5, 0.5, 0.5]]) * 3                        # raw quaternions need not be unit
        coefs = {"rigid_logits": torch.zeros(1, 1), "quats": q, "anchor_times": torch.zeros(1)}
        out = model.displacement(x, 1.0, torch.zeros(1), coefs)            # (1, 10)
        turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
        expected = turn @ (x[0] - torch.tensor([1.0, 0.0, 0.0])) + torch.tensor([1.0, 0.0, 0.0]) \
            + torch.tensor([0.2, 0.4, 0.6])
        torch.testing.assert_close(x[0] + out[0, :3], expected)
        turned = q[0] + out[0, 3:7]
        torch.testing.assert_close(turned.norm(), q[0].norm())
        torch.testing.assert_close(_rotation_matrix(turned / turned.norm()),
                                   turn @ _rotation_matrix(q[0] / q[0].norm()))
        assert out[0, 7:].abs().max() == 0                                   # scales untouched
    finally:
        torch.set_default_dtype(torch.float32)


def test_rigid_bases_blend_motions_and_keep_each_part_rigid(rng):
    """Gaussians fully on one basis keep their distances (a rigid part) whatever the times; a Gaussian with weights
    (a, 1 - a) on two bases lands at the blend of where each puts it (linear blend skinning)."""
    torch.manual_seed(0)
    model = RigidBases(count=2, knots=8).double()
    means = torch.tensor(rng.normal(size=(40, 3)))
    model.initialize(means)
    torch.nn.init.normal_(model.control, std=0.5)
    anchors = torch.tensor(rng.uniform(size=40))
    quats = torch.tensor(rng.normal(size=(40, 4)))
    on = lambda b: torch.full((40, 2), -1e9).index_fill_(1, torch.tensor([b]), 0.0)
    moved = {}
    for b in (0, 1):
        out = model.displacement(means, 0.8, anchors, {"rigid_logits": on(b), "quats": quats, "anchor_times": anchors})
        moved[b] = means + out[:, :3]
    same_time = anchors.new_full((40,), 0.3)
    one = means + model.displacement(means, 0.8, same_time, {"rigid_logits": on(0), "quats": quats,
                                                             "anchor_times": same_time})[:, :3]
    torch.testing.assert_close(torch.cdist(one, one), torch.cdist(means, means))     # one part, one time: rigid
    a = torch.tensor(rng.uniform(size=(40, 1)))
    logits = torch.cat([torch.log(a), torch.log(1 - a)], dim=1)
    blend = means + model.displacement(means, 0.8, anchors, {"rigid_logits": logits, "quats": quats,
                                                             "anchor_times": anchors})[:, :3]
    torch.testing.assert_close(blend, a * moved[0] + (1 - a) * moved[1])


def test_rigid_bases_matrix_form_equals_moving_each_point_by_each_basis(rng):
    """The blended affine maps of the distinct anchor times (one render time; grouped when kept, gathered when not)
    and of each Gaussian's own pair of times (per-Gaussian times) put the Gaussians where moving each point by each
    basis and blending the points does; the distinct anchors are found again when the anchor tensor changes in
    place."""
    model = RigidBases(count=5, knots=9).double()
    means = torch.tensor(rng.normal(size=(60, 3)))
    anchors = torch.tensor(rng.integers(0, 7, size=60) / 6.0)
    coefs = {"quats": torch.tensor(rng.normal(size=(60, 4))), "anchor_times": anchors}
    coefs.update(model.initialize(means))
    coefs["rigid_logits"] = coefs["rigid_logits"] + torch.tensor(rng.normal(size=(60, 5)))   # real blends
    torch.nn.init.normal_(model.control, std=0.6)
    for time in (0.15, 0.8):
        expected = rigid_positions_reference(model, means, time, anchors, coefs["rigid_logits"])
        for when, cache in ((time, True), (time, False), (torch.full((60,), time, dtype=torch.float64), True)):
            moved = means + model.displacement(means, when, anchors, coefs, cache)[:, :3]
            torch.testing.assert_close(moved, expected)
    anchors[:30] = 0.5                                                   # densification-like change in place
    expected = rigid_positions_reference(model, means, 0.3, anchors, coefs["rigid_logits"])
    torch.testing.assert_close(means + model.displacement(means, 0.3, anchors, coefs)[:, :3], expected)


@pytest.mark.parametrize("sizes,width,padded", [((5, 4, 4), 5, True), ((9, 3, 1), 9, False)])
def test_anchor_groups_mix_as_a_gather_of_each_gaussians_row_does_with_its_gradients(rng, sizes, width, padded):
    # Three groups, anchors in no order: the grouped product (or, for groups so uneven that the padded layout would
    # exceed 2 M rows, the gather) gives each Gaussian the blend of its own anchor time's rows, with the same
    # gradients as gathering the rows does.
    anchors = torch.tensor(rng.permutation(sum(([t] * n for t, n in zip((0.2, 0.7, 0.9), sizes)), [])))
    m = len(anchors)
    groups = AnchorGroups.of(anchors, lambda values: values[:, None])
    assert groups.width == width and groups.weights[:, 0].tolist() == [0.2, 0.7, 0.9]
    assert sorted(groups.slots.tolist()) == [u * width + r for u, n in enumerate(sizes) for r in range(n)]
    assert (3 * width <= 2 * m) == padded
    weights = torch.tensor(rng.uniform(size=(m, 4)), requires_grad=True)
    table = torch.tensor(rng.normal(size=(3, 4, 5)), requires_grad=True)
    rows = torch.unique(anchors, return_inverse=True)[1]
    gathered = (weights[..., None] * table[rows]).sum(1)                         # (M, 5)
    mixed = groups.mix(weights, table)
    torch.testing.assert_close(mixed, gathered)
    upstream = torch.tensor(rng.normal(size=(m, 5)))
    expected = torch.autograd.grad(gathered, (weights, table), upstream)
    torch.testing.assert_close(torch.autograd.grad(mixed, (weights, table), upstream), expected)


def _moving_rigid_bases(rng, count: int, knots: int, gaussians: int, anchor_times: int):
    """A float64 RigidBases with random motions, and random Gaussians (means, anchors on ``anchor_times`` evenly
    spaced times, coefs with quats, anchor times and the initial logits)."""
    model = RigidBases(count=count, knots=knots).double()
    means = torch.tensor(rng.normal(size=(gaussians, 3)))
    anchors = torch.tensor(rng.integers(0, anchor_times, size=gaussians) / (anchor_times - 1.0))
    coefs = {"quats": torch.tensor(rng.normal(size=(gaussians, 4))), "anchor_times": anchors}
    coefs.update(model.initialize(means))
    torch.nn.init.normal_(model.control, std=0.5)
    return model, means, anchors, coefs


def test_rigid_displacement_traces_without_graph_breaks_under_compile(rng):
    # optimize.compile traces the deformed state with the cache off and a tensor time: the rigid model must then
    # neither call torch.unique (untraceable) nor its own compiled tables (a nested compile), or the graph breaks.
    model, means, anchors, coefs = _moving_rigid_bases(rng, count=3, knots=7, gaussians=20, anchor_times=4)
    model.fuse_tables("aot_eager", everything=True)     # all three compiled functions in place (rigid_fused_all)
    when = torch.tensor(0.4, dtype=torch.float64)
    explained = torch._dynamo.explain(lambda x, t: model.displacement(x, t, anchors, coefs, False))(means, when)
    assert explained.graph_break_count == 0
    times = torch.full((20,), 0.5, dtype=torch.float64)
    explained = torch._dynamo.explain(lambda x, t: model.second_difference(x, t, 0.05, coefs))(means, times)
    assert explained.graph_break_count == 0
    torch.testing.assert_close(model.displacement(means, when, anchors, coefs, False),
                               model.displacement(means, 0.4, anchors, coefs))


def test_rigid_tables_compiled_give_the_eager_positions_and_gradients(rng):
    # fuse_tables (optimize.rigid_fused_tables on a GPU) through the aot_eager backend, which traces the graph as
    # inductor would without generating code: the same displacement, second differences and gradients, with the
    # anchor groups kept (cache on: the compiled tables) and found again each call (cache off: training's visible
    # subset, a new tensor each step: the compiled tables of its distinct anchor times, or with everything
    # (optimize.rigid_fused_all) the compiled displacement); without gradients (renders, exports) eager.
    model, means, anchors, coefs = _moving_rigid_bases(rng, count=4, knots=8, gaussians=30, anchor_times=5)
    coefs["rigid_logits"].requires_grad_()
    times = torch.tensor(rng.uniform(0.1, 0.9, size=30))

    def forward_backward(cache, rows=slice(None)):
        model.zero_grad()
        coefs["rigid_logits"].grad = None
        subset = {k: v[rows] for k, v in coefs.items()}
        if cache == "second":
            moved = model.second_difference(means[rows], times[rows], 0.05, subset)
        else:
            moved = model.displacement(means[rows], 0.6, anchors[rows], subset, cache)
        moved.square().sum().backward()
        return moved.detach(), model.control.grad.clone(), coefs["rigid_logits"].grad.clone()

    settings = [(True,), (False,), (False, slice(3, 20)), ("second",), ("second", slice(5, 25))]
    eager = [forward_backward(*setting) for setting in settings]
    model.fuse_tables("aot_eager")                             # the default: the tables only
    assert model._fused_moved is None and model._fused_second is None
    tables = []
    compiled_tables = model._fused_tables
    model._fused_tables = lambda *args: tables.append(args[-1].shape[0]) or compiled_tables(*args)
    for got, expected in zip([forward_backward(*setting) for setting in settings[:3]], eager):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
    assert tables == [5, 5, len(torch.unique(anchors[3:20]))]  # the visible subset: its distinct anchor times
    model.fuse_tables("aot_eager", everything=True)            # optimize.rigid_fused_all
    calls = []

    def counted(name, index):
        compiled = getattr(model, name)
        return lambda *args: calls.append((name, args[index].shape[0])) or compiled(*args)

    model._fused_tables = counted("_fused_tables", -1)        # anchors (U, knots)
    model._fused_moved = counted("_fused_moved", 5)           # the distinct anchor times (U,)
    model._fused_second = counted("_fused_second", 5)         # times (M,)
    fused = [forward_backward(*setting) for setting in settings]
    for got, expected in zip(fused, eager):
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b)
    assert calls == [("_fused_tables", 5), ("_fused_moved", 5), ("_fused_moved", len(torch.unique(anchors[3:20]))),
                     ("_fused_second", 30), ("_fused_second", 20)]
    with torch.no_grad():
        model.displacement(means, 0.6, anchors, coefs)
        model.displacement(means[3:20], 0.6, anchors[3:20], {k: v[3:20] for k, v in coefs.items()}, False)
        model.second_difference(means, times, 0.05, coefs)
    assert len(calls) == 5


def test_rigid_bases_second_difference_is_that_of_the_trajectory(rng):
    model = RigidBases(count=3, knots=8).double()
    means = torch.tensor(rng.normal(size=(20, 3)))
    coefs = {"quats": torch.tensor(rng.normal(size=(20, 4))), "anchor_times": torch.tensor(rng.uniform(size=20))}
    coefs.update(model.initialize(means))
    torch.nn.init.normal_(model.control, std=0.5)
    times, h = torch.tensor(rng.uniform(0.1, 0.9, size=20)), 0.05
    at = lambda t: means + model.displacement(means, t, coefs["anchor_times"], coefs)[:, :3]
    expected = at(times - h) - 2 * at(times) + at(times + h)
    second = model.second_difference(means, times, h, coefs)
    torch.testing.assert_close(second[:, :3], expected)
    assert second[:, 3:].abs().max() == 0


def test_a_model_with_its_own_displacement_gets_it_on_the_regularised_path_too(rng):
    """A step that renders and regularises the motion asks for both at once (displacement_and_second_difference);
    a model that defines displacement and second_difference itself, without offsets (bench.oracle_motion's true
    motion), must get its own definitions there, not the base class's offsets (which it cannot give)."""
    from stages.optimize.deformation import Deformation

    class Shift(Deformation):
        """Moves every Gaussian by (t - t_a) along x; its second difference is 7 (a marker)."""

        def displacement(self, means, time, anchor_times, coefs, cache=True):
            out = means.new_zeros(len(means), self.channels)
            out[:, 0] = torch.as_tensor(time, dtype=means.dtype) - anchor_times
            return out

        def second_difference(self, means, times, step, coefs):
            return means.new_full((len(means), self.channels), 7.0)

    model = Shift()
    means, anchors = torch.tensor(rng.normal(size=(5, 3))), torch.tensor(rng.uniform(size=5))
    others = torch.tensor(rng.normal(size=(3, 3)))
    shift, second = model.displacement_and_second_difference(means, 0.75, anchors, {}, True, others,
                                                             torch.full((3,), 0.5), 0.1, {})
    torch.testing.assert_close(shift, model.displacement(means, 0.75, anchors, {}))
    assert second.shape == (3, model.channels) and bool((second == 7).all())


def test_rigid_bases_start_on_the_nearest_of_their_k_means_pivots():
    """Two clusters far apart: the pivots are their means, each Gaussian's weights favour its own cluster's basis
    by far, and the motion starts still."""
    torch.manual_seed(0)
    points = torch.cat([torch.randn(50, 3) * 0.1, torch.randn(30, 3) * 0.1 + torch.tensor([4.0, 0.0, 0.0])])
    centres = kmeans(points, 2)
    truth = torch.stack([points[:50].mean(0), points[50:].mean(0)])
    order = centres[:, 0].argsort()
    torch.testing.assert_close(centres[order], truth)
    model = RigidBases(count=2, knots=6)
    logits = model.initialize(points)["rigid_logits"]
    weights = torch.softmax(logits, dim=1)[:, order]
    assert weights[:50, 0].min() > 0.99 and weights[50:, 1].min() > 0.99
    torch.testing.assert_close(model.unit, (points.max(0).values - points.min(0).values).max() / 2)
    assert model.control.abs().max() == 0
    assert quaternion_exp(torch.zeros(3)).tolist() == [1.0, 0.0, 0.0, 0.0]
    q = torch.nn.functional.normalize(torch.randn(4), dim=0)
    torch.testing.assert_close(_rotation_matrix(quaternion_multiply(q, q)), _rotation_matrix(q) @ _rotation_matrix(q))


@pytest.mark.parametrize("kind", ["mlp", "planes"])
def test_field_latent_codes_let_gaussians_at_one_position_move_differently(kind, rng):
    """With ``embedding`` E the fields read a per-Gaussian code (N, E): Gaussians at the same position and anchor
    time move alike when their codes are equal and differently when they are not; the code is an input of the
    network's first layer (its weight gets the extra E columns). Without codes the spec has no ``embedding`` entry,
    so specs saved before the option existed compare equal."""
    from stages.optimize.deformation import build_deformation

    torch.manual_seed(0)
    point = torch.tensor(rng.normal(size=(1, 3)), dtype=torch.float32)
    means = point.repeat(3, 1)                                                  # three Gaussians, one position
    box = Box(torch.zeros(3), torch.full((3,), 4.0))
    field = (MLPField(box, 16, 2, 2, 2, embedding=4) if kind == "mlp"
             else PlanesField(box, (4,), 4, 4, 16, embedding=4))
    first = field.layers[0] if kind == "mlp" else field.hidden
    assert first.in_features == (3 * 5 + 5 + 4 if kind == "mlp" else 4 + 4)
    torch.nn.init.normal_(field.out.weight, std=0.1)
    if kind == "planes":
        field.table.data.uniform_(0.1, 0.9)   # time planes start constant: no motion at all to differ in
    codes = torch.randn(3, 4)
    codes[1] = codes[0]
    moved = field.displacement(means, 0.8, torch.full((3,), 0.2), {"field_embedding": codes})   # (3, 10)
    torch.testing.assert_close(moved[0], moved[1])
    assert (moved[0] - moved[2]).abs().max() > 1e-4
    assert field.spec()["embedding"] == 4
    assert build_deformation(field.spec(), box).per_gaussian_shapes() == {"field_embedding": (4,)}
    plain = MLPField(box, 16, 2, 2, 2) if kind == "mlp" else PlanesField(box, (4,), 4, 4, 16)
    assert "embedding" not in plain.spec() and plain.per_gaussian_shapes() == {}


@pytest.mark.parametrize("kind", ["mlp", "planes"])
def test_anchor_time_lets_a_field_move_what_passes_through_a_static_place(kind):
    """Two Gaussians at one place: a static one seen at t_a = 0.2, and a moving part seen there at t_a = 0.6 that
    moves on at velocity 1 along x. Their displacements to other times t, 0 and t - 0.6, contradict each other for
    an Eulerian field (g(t) - g(t_a) with one g = offsets(x, .) at that place). At times t other than 0.2 and 0.6
    the best g(t) leaves half the squared difference of the two targets, (d + t - 0.6)^2 / 2 with d = g(0.6) -
    g(0.2), and the best d = 0.6 - mean(t) leaves a mean squared misfit of var(t) / 4 over the 2T displacements: a
    floor no Eulerian field goes below. The anchor-conditioned field (``anchor_time``: a flow map from t_a) fits
    both to a small fraction of it."""
    times = (torch.arange(10) + 0.5) / 10                                       # (T,) 0.05 ... 0.95
    means = torch.tensor([[0.1, -0.2, 0.3]]).repeat(2 * len(times), 1)         # (2T, 3), one place
    anchors = torch.tensor([0.2, 0.6]).repeat_interleave(len(times))           # (2T,)
    target = torch.cat([torch.zeros_like(times), times - 0.6])                 # (2T,): x-displacement
    box = Box(torch.zeros(3), torch.ones(3))

    def misfit(anchor_time: bool) -> float:
        torch.manual_seed(0)
        field = (MLPField(box, 32, 2, 2, 3, anchor_time=anchor_time) if kind == "mlp"
                 else PlanesField(box, (4,), 10, 8, 32, anchor_time=anchor_time))
        torch.nn.init.normal_(field.out.weight, std=0.01)
        optimizer = torch.optim.Adam(field.parameters(), lr=1e-2)
        coefs = {"anchor_times": anchors} if anchor_time else {}
        for _ in range(400):
            loss = (field.displacement(means, times.repeat(2), anchors, coefs)[:, 0] - target).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return float(loss.detach())

    floor = float(times.var(unbiased=False)) / 4                               # 0.020625
    eulerian, anchored = misfit(False), misfit(True)
    assert eulerian >= floor * (1 - 1e-4)
    assert anchored < 0.05 * floor, (eulerian, anchored, floor)


def test_anchor_time_spec_and_planes():
    """The spec names anchor conditioning only when on (specs saved before it compare equal); it survives a
    rebuild; the planes field gains four anchor planes per level, (x, y, z) x t_a at T x r and t x t_a at T x T,
    starting at 1, so that at the start it computes what the field without them does."""
    from stages.optimize.deformation import build_deformation

    box = Box(torch.zeros(3), torch.ones(3))
    for plain, anchored in ((MLPField(box, 16, 2, 2, 2), MLPField(box, 16, 2, 2, 2, anchor_time=True)),
                            (PlanesField(box, (4, 8), 5, 3, 8), PlanesField(box, (4, 8), 5, 3, 8, anchor_time=True))):
        assert "anchor_time" not in plain.spec() and anchored.spec()["anchor_time"] is True
        assert build_deformation(anchored.spec(), box).per_gaussian_inputs() == ("anchor_times",)
    planes = PlanesField(box, (4, 8), 5, 3, 8, anchor_time=True)
    assert planes.plane(1, 2).shape == (3, 3, 5, 8) and planes.plane(1, 3).shape == (1, 3, 5, 5)
    assert torch.all(planes.plane(0, 2) == 1) and torch.all(planes.plane(1, 3) == 1)
    torch.manual_seed(1)
    twin = PlanesField(box, (4, 8), 5, 3, 8)
    torch.manual_seed(1)
    planes = PlanesField(box, (4, 8), 5, 3, 8, anchor_time=True)
    for level in range(2):
        for kind in range(2):
            torch.testing.assert_close(planes.plane(level, kind), twin.plane(level, kind))
    planes.hidden.load_state_dict(twin.hidden.state_dict())
    torch.nn.init.normal_(twin.out.weight, std=0.1)
    planes.out.load_state_dict(twin.out.state_dict())
    means, times = torch.rand(32, 3) * 2 - 1, torch.rand(32)
    torch.testing.assert_close(planes.offsets(means, times, {"anchor_times": torch.rand(32)}),
                               twin.offsets(means, times, {}))


def test_networks_start_without_motion(rng):
    means = torch.tensor(rng.normal(size=(10, 3)), dtype=torch.float32)
    for field in (MLPField(Box.around(means)), PlanesField(Box.around(means), (8,), 4)):
        assert field.displacement(means, 0.7, torch.zeros(10), {}).abs().max() == 0


def test_mlp_in_bf16_keeps_float32_offsets_within_bf16_rounding(rng):
    """`optimize.mlp_bf16`: hidden layers under bfloat16 autocast, output layer in float32. Offsets stay float32,
    within a few bf16 roundings of the float32 network, differ from it (the setting acts), and get gradients."""
    torch.manual_seed(0)
    means = torch.tensor(rng.normal(size=(256, 3)), dtype=torch.float32)
    field = MLPField(Box.around(means), 64, 4, 6, 4)
    torch.nn.init.normal_(field.out.weight, std=0.1)
    times = torch.rand(256)
    full = field.offsets(means, times, {})
    field.bf16 = True
    half = field.offsets(means, times, {})
    assert half.dtype == torch.float32
    scale = full.abs().max()
    assert 0 < (half - full).abs().max() < 0.05 * scale
    half.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in field.parameters())


def test_mlp_bf16_is_set_for_cuda_training_only(rng, monkeypatch):
    """set_mlp_bf16 reaches the mlp field alone or inside mlp_bases (and leaves other models be); build_model asks
    for it only on CUDA."""
    import stages.optimize.trainer as trainer_module
    from stages.optimize.deformation import MLPWithBases, PlanesWithBases, set_mlp_bf16
    from stages.optimize.trainer import InitialGaussians, build_model

    alone, hybrid = MLPField(width=8, depth=2), MLPWithBases({"width": 8, "depth": 2}, {"count": 2})
    for enabled in (True, False):
        set_mlp_bf16(alone, enabled)
        set_mlp_bf16(hybrid, enabled)
        assert alone.bf16 is enabled and hybrid.mlp.bf16 is enabled
    set_mlp_bf16(PlanesWithBases({"resolutions": [4]}, {"count": 2}), True)
    set_mlp_bf16(None, True)
    asked = []
    monkeypatch.setattr(trainer_module, "set_mlp_bf16", lambda deformation, enabled: asked.append(
        (deformation.kind, enabled)))
    n = 20
    initial = InitialGaussians(means=rng.normal(size=(n, 3)), sh=np.zeros((n, 1, 3)), opacity_logits=np.zeros(n),
                               log_scales=np.full((n, 3), -3.0), quats=np.tile([1.0, 0, 0, 0], (n, 1)),
                               is_dynamic=np.arange(n) % 2 == 0, anchor_times=np.linspace(0, 1, n))
    for kind in ("mlp", "mlp_bases"):
        build_model(OptimizeConfig(deformation=kind, mlp_bf16=True), initial, 0.1, 5, torch.device("cpu"))
    assert asked == [("mlp", False), ("mlp_bases", False)]


def test_positional_encoding_layout():
    x = torch.tensor([[0.25, -0.5]])
    enc = positional_encoding(x, 2)
    expected = [0.25, -0.5] + [math.sin(math.pi * f * v) for v in (0.25, -0.5) for f in (1, 2)] + \
        [math.cos(math.pi * f * v) for v in (0.25, -0.5) for f in (1, 2)]
    np.testing.assert_allclose(enc[0].numpy(), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# densification


def _tagged_splats(n: int, with_optimizers: bool = True):
    """Splats whose every attribute encodes the Gaussian's id, so that misalignment after ops is visible."""
    ids = torch.arange(n, dtype=torch.float32)
    splats = create_splats(means=torch.stack([ids, ids, ids], -1) * 0.01, sh=ids.view(n, 1, 1).expand(n, 1, 3),
                           opacity_logits=torch.full((n,), 2.0), log_scales=torch.full((n, 3), -3.0),
                           quats=torch.tensor([1.0, 0, 0, 0]).expand(n, 4), is_dynamic=ids % 2 == 1,
                           anchor_times=ids / n, sh_degree=1, temporal_sigma=0.1,
                           extra={"motion_coefs": (2, 10)})
    splats["motion_coefs"].data[:] = ids.view(n, 1, 1)
    splats["time_centers"].data[:] = ids / n
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in splats.items() if p.requires_grad}
    return splats, optimizers


def _check_aligned(splats):
    ids = splats["sh0"][:, 0, 0]
    assert torch.equal(splats["motion_coefs"][:, 0, 0], ids)
    assert torch.allclose(splats["time_centers"], splats["anchor_times"])
    assert torch.equal(splats["motion_coefs"][:, 1, 9], ids)
    assert torch.equal(splats["is_dynamic"], ids.long() % 2 == 1)


def _info(n: int, grads: torch.Tensor, radii: torch.Tensor) -> dict:
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = grads
    return {"means2d": means2d, "radii": radii, "width": 64, "height": 48, "n_cameras": 1, "gaussian_ids": None}


def test_split_duplicate_prune_keep_the_4d_attributes_aligned():
    torch.manual_seed(0)
    n = 40
    splats, optimizers = _tagged_splats(n)
    anchors = splats["anchor_times"].detach().clone()
    strategy = DensifyStrategy(refine_start_iter=0, refine_every=1, reset_every=10**9, grow_grad2d=1e-3,
                               grow_scale3d=0.5, prune_opa=0.05)
    strategy.check_sanity(splats, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    grads = torch.zeros(1, n, 2)
    grads[0, :20, 0] = 1.0                                    # the first 20 grow
    radii = torch.ones(1, n, 2, dtype=torch.int32)
    splats["scales"].data[:10] = 0.0                          # 10 large ones split, 10 small ones duplicate
    splats["opacities"].data[35:] = -10.0                     # 5 pruned
    events = strategy.step_post_backward(splats, optimizers, state, 1, _info(n, grads, radii))
    assert (events.duplicated, events.split, events.pruned) == (10, 10, 5)
    assert len(splats["means"]) == n + 10 + 10 - 5
    _check_aligned(splats)
    ids = splats["sh0"][:, 0, 0].long()
    assert torch.equal(splats["anchor_times"], anchors[ids])
    assert sorted(ids.tolist()) == sorted(list(range(35)) + list(range(10)) + list(range(10, 20)))
    for key, opt in optimizers.items():        # optimizer states follow the new rows
        assert opt.param_groups[0]["params"][0] is splats[key]


def test_dense_statistics_equal_gsplat_index_add(rng):
    from gsplat.strategy import DefaultStrategy

    n = 50
    grads = torch.tensor(rng.normal(size=(2, n, 2)), dtype=torch.float32)
    radii = torch.tensor(rng.integers(0, 3, size=(2, n, 2)), dtype=torch.int32)
    splats, _ = _tagged_splats(n)
    ours, theirs = DensifyStrategy(), DefaultStrategy()
    s1, s2 = ours.initialize_state(), theirs.initialize_state()
    info = _info(n, grads[:1], radii[:1])
    info["means2d"] = torch.zeros(2, n, 2, requires_grad=True)
    info["means2d"].grad = grads
    info["radii"], info["n_cameras"] = radii, 2
    ours._update_state(splats, s1, info)
    theirs._update_state(splats, s2, info)
    torch.testing.assert_close(s1["grad2d"], s2["grad2d"])
    torch.testing.assert_close(s1["count"], s2["count"])


def test_the_opacity_reset_happens_unlike_gsplat_1_5_3():
    """gsplat 1.5.3's DefaultStrategy never resets opacities (spec section 4.3); ours does, at reset_every."""
    from gsplat.strategy import DefaultStrategy

    results = {}
    for cls in (DefaultStrategy, DensifyStrategy):
        splats, optimizers = _tagged_splats(8)
        strategy = cls(refine_start_iter=10**9, reset_every=30, refine_stop_iter=100, prune_opa=0.005)
        state = strategy.initialize_state()
        info = _info(8, torch.zeros(1, 8, 2), torch.ones(1, 8, 2, dtype=torch.int32))
        opacities = []
        for step in range(0, 61):
            strategy.step_post_backward(splats, optimizers, state, step, info)
            opacities.append(float(torch.sigmoid(splats["opacities"].detach()).max()))
        results[cls.__name__] = opacities
    assert max(results["DefaultStrategy"]) == pytest.approx(torch.sigmoid(torch.tensor(2.0)).item())
    ours = results["DensifyStrategy"]
    assert ours[29] > 0.8 and ours[30] == pytest.approx(0.01, rel=1e-4) and ours[60] == pytest.approx(0.01, rel=1e-4)


def test_make_strategy_turns_refinement_off():
    cfg = OptimizeConfig(densify=False)
    strategy = make_strategy(cfg)
    splats, optimizers = _tagged_splats(6)
    state = strategy.initialize_state()
    info = _info(6, torch.ones(1, 6, 2), torch.ones(1, 6, 2, dtype=torch.int32))
    for step in range(0, 3001, 500):
        assert not strategy.step_post_backward(splats, optimizers, state, step, info).opacity_reset
    assert len(splats["means"]) == 6


# ---------------------------------------------------------------------------------------------------------------
# cameras, model


def test_camera_correction_is_a_left_rotation_and_translation(rng):
    from scipy.spatial.transform import Rotation

    w2c = torch.tensor(np.linalg.inv(np.block([[Rotation.random(random_state=1).as_matrix(), rng.normal(size=(3, 1))],
                                               [np.zeros((1, 3)), np.ones((1, 1))]])), dtype=torch.float64)
    assert torch.allclose(refined_world_to_camera(w2c, torch.zeros(6, dtype=torch.float64)), w2c)
    delta = torch.tensor([0.1, -0.2, 0.05, 0.3, 0.0, -0.1], dtype=torch.float64)
    R = torch.tensor(Rotation.from_rotvec(delta[:3].numpy()).as_matrix())
    expected = w2c.clone()
    expected[:3, :3] = R @ w2c[:3, :3]
    expected[:3, 3] = R @ w2c[:3, 3] + delta[3:]
    torch.testing.assert_close(refined_world_to_camera(w2c, delta), expected)


def _small_model(kind: str = "bases") -> GaussianModel4D:
    from stages.optimize.deformation import build_deformation

    torch.manual_seed(0)
    splats, _ = _tagged_splats(12)
    deformation = build_deformation({"bases": {"kind": "bases", "count": 2, "knots": 6},
                                     "rigid": {"kind": "rigid", "count": 2, "knots": 6},
                                     "mlp": {"kind": "mlp", "width": 16, "depth": 2, "position_octaves": 2,
                                             "time_octaves": 2}}[kind], Box.around(splats["means"].detach()))
    if kind == "mlp":
        torch.nn.init.normal_(deformation.out.weight, std=0.1)
    if kind == "rigid":      # pivots and logits from the dynamic Gaussians, then some motion
        dynamic = splats["is_dynamic"]
        splats["rigid_logits"] = torch.nn.Parameter(torch.zeros(12, 2))
        splats["rigid_logits"].data[dynamic] = deformation.initialize(splats["means"].detach()[dynamic])["rigid_logits"]
        torch.nn.init.normal_(deformation.control, std=0.3)
    return GaussianModel4D(splats, deformation, sh_degree=1, temporal_opacity=True)


def test_gaussians_at_moves_only_dynamic_gaussians_and_fades_them_in_time():
    model = _small_model()
    g = model.gaussians_at(0.9)
    s = model.splats
    static = ~s["is_dynamic"]
    assert torch.equal(g["means"][static], s["means"][static]) and torch.equal(g["quats"][static], s["quats"][static])
    assert (g["means"][~static] - s["means"][~static]).norm(dim=-1).min() > 0
    sigma = torch.exp(s["time_log_scales"])
    expected = torch.sigmoid(s["opacities"]) * torch.where(
        s["is_dynamic"], torch.exp(-0.5 * ((0.9 - s["time_centers"]) / sigma) ** 2), torch.ones(()))
    torch.testing.assert_close(g["opacities"], expected)
    assert g["sh"].shape == (12, 4, 3) and model.gaussians_at(0.1, sh_degree=0)["sh"].shape == (12, 1, 3)
    # At its anchor time a dynamic Gaussian is exactly its canonical self.
    i = int(torch.nonzero(s["is_dynamic"])[0])
    at_anchor = model.gaussians_at(float(s["anchor_times"][i]))
    torch.testing.assert_close(at_anchor["means"][i], s["means"][i])


@pytest.mark.parametrize("kind", ["bases", "mlp", "rigid"])
def test_saved_model_loads_and_evaluates_identically(kind, tmp_path):
    model = _small_model(kind)
    model.save(tmp_path / "model.pt")
    back = load_model(tmp_path / "model.pt")
    assert back.num_gaussians() == 12 and back.sh_degree == 1 and back.deformation.kind == kind
    for t in (0.0, 0.37, 1.0):
        a, b = model.gaussians_at(t), back.gaussians_at(t)
        for key in a:
            torch.testing.assert_close(a[key], b[key])


def test_a_model_renders_in_its_rasterize_mode_and_keeps_it_when_saved(tmp_path):
    """An antialiased model's renders are the antialiased rasterization of its Gaussians (not the classic one,
    which differs), the mode survives save / load, files without it read as classic, and a foreign value is a
    one-line error."""
    from pipeline.errors import UserError
    from stages.optimize.rasterize import rasterization

    model = _small_model()
    model.rasterize_mode = "antialiased"
    w2c = torch.eye(4)
    w2c[2, 3] = 3.0                                       # the camera 3 units behind the origin, looking at it
    K = torch.tensor([[40.0, 0.0, 16.0], [0.0, 40.0, 12.0], [0.0, 0.0, 1.0]])
    t = 0.4
    with torch.no_grad():
        out = model.render(w2c, K, 32, 24, t, background=(1.0, 1.0, 1.0), backend="torch")
        g = model.gaussians_at(t)
        expected = {}
        for mode in ("classic", "antialiased"):
            colors, _, _ = rasterization(g["means"], g["quats"], g["scales"], g["opacities"], g["sh"], w2c[None],
                                         K[None], 32, 24, sh_degree=model.sh_degree, backgrounds=torch.ones(1, 3),
                                         rasterize_mode=mode, backend="torch")
            expected[mode] = colors[0].clamp(0, 1)
    torch.testing.assert_close(out["rgb"], expected["antialiased"])
    assert (expected["classic"] - expected["antialiased"]).abs().max() > 1e-3

    model.save(tmp_path / "model.pt")
    back = load_model(tmp_path / "model.pt")
    assert back.rasterize_mode == "antialiased"
    # version 2, which an older page4dgs refuses rather than draw it classic; a classic model stays version 1
    assert torch.load(tmp_path / "model.pt", weights_only=True)["version"] == 2
    assert _small_model().to_state()["version"] == 1
    with pytest.raises(ValueError, match="rasterize_mode"):
        GaussianModel4D(model.splats, model.deformation, 1, True, "blurry")
    with torch.no_grad():
        torch.testing.assert_close(back.render(w2c, K, 32, 24, t, backend="torch")["rgb"], out["rgb"])
    state = model.to_state()
    del state["rasterize_mode"]                           # a file written before the option existed
    torch.save(state, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").rasterize_mode == "classic"
    state["rasterize_mode"] = "blurry"
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="rasterize_mode"):
        load_model(tmp_path / "bad.pt")


def test_load_model_rejects_other_files(tmp_path):
    from pipeline.errors import UserError

    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a page4dgs"):
        load_model(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError):
        load_model(tmp_path / "junk.pt")


def _damaged(state: dict, change: str) -> dict:
    """A copy of a model's :meth:`to_state` with one kind of damage (what load_model must refuse in one line)."""
    state = {**state, "splats": dict(state["splats"])}
    splats = state["splats"]
    if change == "kind":
        state["deformation"] = {**state["deformation"], "kind": "warp"}
    elif change == "deformation_state":
        state["deformation_state"] = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1)
                                      for k, v in state["deformation_state"].items()}
    elif change == "rows":
        splats["means"] = splats["means"][:10]
    elif change == "sh_degree":
        state["sh_degree"] = 7
    elif change == "shN":
        splats["shN"] = splats["shN"][:, :2]
    elif change == "empty":
        state["splats"] = {k: v[:0] for k, v in splats.items()}
    elif change == "missing":
        del splats["quats"]
    elif change == "no_splats":
        del state["splats"]
    elif change == "is_dynamic":
        splats["is_dynamic"] = splats["is_dynamic"].float()
    return state


@pytest.mark.parametrize("change, reason", [
    ("kind", "unknown deformation kind 'warp'"),
    ("deformation_state", "size mismatch for control"),
    ("rows", r"the per-Gaussian tensors disagree on the Gaussian count: means has 10 rows, \w+ 12 rows"),
    ("sh_degree", "sh_degree 7, expected 0 to 3"),
    ("shN", r"shN has shape \[12, 2, 3\], expected \[12, 3, 3\] for sh_degree 1"),
    ("empty", "no Gaussians"),
    ("missing", "no quats among the per-Gaussian tensors"),
    ("no_splats", "no 'splats' entry"),
    ("is_dynamic", "is_dynamic has dtype float32"),
])
def test_a_model_file_with_wrong_contents_is_a_one_line_error(tmp_path, change, reason):
    """A file that loads as a page4dgs model but cannot make one (what render and export read): a one-line
    UserError naming the file and the reason, not a traceback from inside torch or the renderer."""
    from pipeline.errors import UserError

    path = tmp_path / "model.pt"
    torch.save(_damaged(_small_model().to_state(), change), path)
    with pytest.raises(UserError, match=rf"model.pt: not a usable page4dgs model \({reason}") as caught:
        load_model(path)
    assert "\n" not in str(caught.value)


def test_rigidity_is_zero_for_rigid_motion_and_measures_stretch(rng):
    from scipy.spatial.transform import Rotation

    from stages.optimize.losses import rigidity_loss

    canonical = torch.tensor(rng.normal(size=(30, 3)))
    neighbors = canonical[torch.tensor(rng.integers(0, 30, size=(30, 4)))]
    R = torch.tensor(Rotation.random(random_state=2).as_matrix())
    moved, moved_n = canonical @ R.T + 1.0, neighbors @ R.T + 1.0
    assert float(rigidity_loss(moved, moved_n, canonical, neighbors)) < 1e-20
    stretched = rigidity_loss(1.1 * moved, 1.1 * moved_n, canonical, neighbors)
    assert float(stretched) == pytest.approx(0.01, rel=1e-9)          # every distance 10 % longer


def test_coherence_is_zero_for_one_translation_and_measures_disagreement_relative_to_speed():
    from stages.optimize.losses import coherence_loss

    velocity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    same = velocity[:, None].expand(2, 3, 3)
    distance = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    assert float(coherence_loss(velocity, same, distance)) == 0.0
    # Hand-computed: r = median distance = 2, weights exp(-d^2 / 8) = (e^-1/8, e^-1/2, e^-9/8) per row. Row 0's
    # neighbours all at rest: mismatch 1 each, speed 0.5; row 1's all at (0, 2, 2): mismatch 4, speed 0.5 (4 + 8) = 6.
    neighbors = torch.stack([torch.zeros(3, 3), torch.tensor([[0.0, 2.0, 2.0]]).expand(3, 3)])
    w = torch.exp(-torch.tensor([1.0, 4.0, 9.0]) / 8).sum()
    expected = (w * 1 + w * 4) / (w * 0.5 + w * 6)
    assert float(coherence_loss(velocity, neighbors, distance)) == pytest.approx(float(expected), rel=1e-6)
    # Scale-free: the same motion twice as fast, or the distances doubled, gives the same value.
    assert float(coherence_loss(2 * velocity, 2 * neighbors, 2 * distance)) == pytest.approx(float(expected), rel=1e-6)


def test_coherence_groups_pair_nearby_gaussians_of_any_copy_that_are_visible_at_the_time(rng):
    from stages.optimize.trainer import coherence_groups

    model = _small_model()
    n = model.num_gaussians()
    s = model.splats
    with torch.no_grad():
        s["motion_coefs"].zero_()                                   # positions at any time are the canonical ones
        s["means"].copy_(torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float32))
        s["is_dynamic"].copy_(torch.arange(n) < 9)
        s["anchor_times"].copy_(torch.tensor([0.0, 0.1, 0.2] * 3 + [0.0] * (n - 9)))
        s["time_centers"].copy_(s["anchor_times"])
        s["time_log_scales"].fill_(math.log(0.06))                  # within 2 widths of 0.1: 0.0-0.2
        s["time_centers"][8] = 0.9                                  # except this one
    group, distance = coherence_groups(model, 0.1, samples=100, k=3, generator=torch.Generator().manual_seed(0))
    eligible = list(range(8))                                       # dynamic, within two widths of t = 0.1
    assert sorted(group[:, 0].tolist()) == eligible                 # every one drawn (fewer than samples)
    means = s["means"].detach()
    for row, dist in zip(group.tolist(), distance):
        i, neighbors = row[0], row[1:]
        expected = sorted((j for j in eligible if j != i), key=lambda j: float((means[i] - means[j]).norm()))[:3]
        assert neighbors == expected
        torch.testing.assert_close(dist, (means[neighbors] - means[i]).norm(dim=-1))
    assert len({float(s["anchor_times"][j]) for row in group.tolist() for j in row}) == 3    # across copies
    assert coherence_groups(model, 0.9, samples=100, k=3, generator=torch.Generator()) is None   # only one there


def test_descending_the_coherence_penalty_makes_neighbours_move_alike(rng):
    """Its gradient reaches the motion coefficients of a Gaussian and of its neighbours: Adam on the coefficients
    alone, from random ones, brings the relative disagreement of the velocities down to a fraction."""
    from stages.optimize.trainer import coherence_groups, coherence_penalty

    model = _small_model()
    with torch.no_grad():
        model.splats["is_dynamic"].fill_(True)
        model.splats["time_log_scales"].fill_(math.log(10.0))       # every Gaussian visible at every time
        model.splats["motion_coefs"].copy_(torch.tensor(rng.normal(size=model.splats["motion_coefs"].shape)))
    coefs = model.splats["motion_coefs"]
    optimizer = torch.optim.Adam([coefs], lr=0.02)
    generator = torch.Generator().manual_seed(0)

    def penalty(t: float) -> torch.Tensor:
        return coherence_penalty(model, *coherence_groups(model, t, 64, 3, generator), t, t + 0.05)

    with torch.no_grad():
        before = float(np.mean([float(penalty(t)) for t in (0.2, 0.5, 0.8)]))
    for step in range(150):
        optimizer.zero_grad()
        penalty(float(torch.rand((), generator=generator)) * 0.9).backward()
        optimizer.step()
    with torch.no_grad():
        after = float(np.mean([float(penalty(t)) for t in (0.2, 0.5, 0.8)]))
    assert before > 0.3 and after < 0.25 * before, (before, after)


def test_same_time_neighbors_are_the_nearest_of_the_same_slice(rng):
    model = _small_model()
    n = model.num_gaussians()
    means = torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float32)
    model.splats["means"].data.copy_(means)
    model.splats["is_dynamic"].data.copy_(torch.arange(n) < 10)
    model.splats["anchor_times"].data.copy_(torch.tensor([0.0] * 6 + [0.5] * 4 + [0.0] * (n - 10)))
    nbr = model.same_time_neighbors(3)
    for i in range(10):
        same = [j for j in range(10) if j != i and model.splats["anchor_times"][j] == model.splats["anchor_times"][i]]
        expected = sorted(same, key=lambda j: float((means[i] - means[j]).norm()))[:3]
        got = [j for j in nbr[i].tolist() if j != i]
        assert got == expected[: len(got)] and len(got) == min(3, len(same))


def test_an_unknown_compile_backend_is_a_one_line_error():
    # Checked before the rigid tables are fused (on a GPU, with optimize.compile off too) as before compiling.
    from pipeline.errors import UserError
    from stages.optimize.trainer import check_compile_backend

    check_compile_backend("aot_eager")
    with pytest.raises(UserError, match="unknown torch.compile backend 'nope'"):
        check_compile_backend("nope")


@pytest.mark.parametrize("kind", [kind for kind in DEFORMATIONS if kind != "none"])
def test_build_model_boxes_the_dynamic_points_for_the_kinds_that_read_a_box(kind, rng):
    """The kinds in KINDS_WITH_BOX get the dynamic Gaussians' box (not the static ones', not the unit box); the others
    have no box at all."""
    from stages.optimize.deformation import KINDS_WITH_BOX
    from stages.optimize.trainer import InitialGaussians, build_model

    n = 40
    means = rng.normal(size=(n, 3))
    is_dynamic = np.arange(n) % 2 == 0
    means[~is_dynamic] *= 100.0          # static points far out: a box around all points would be 100x larger
    initial = InitialGaussians(means=means, sh=np.zeros((n, 1, 3)), opacity_logits=np.zeros(n),
                               log_scales=np.full((n, 3), -3.0), quats=np.tile([1.0, 0, 0, 0], (n, 1)),
                               is_dynamic=is_dynamic, anchor_times=np.linspace(0, 1, n))
    model = build_model(OptimizeConfig(deformation=kind), initial, 0.1, 5, torch.device("cpu"))
    box = getattr(model.deformation, "box", None)
    if kind not in KINDS_WITH_BOX:
        assert box is None
        return
    normalized = box.normalize(torch.as_tensor(means[is_dynamic], dtype=torch.float32))
    # the dynamic points fill the box but for Box.around's 20 % margin (a static point would lie ~100x outside)
    assert normalized.abs().max().item() == pytest.approx(1 / 1.2, rel=1e-5)
