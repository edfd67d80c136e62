"""The planes field's one-node sampler against ``F.grid_sample`` (float64): values, the table's and the coordinates'
gradients, plane edges and clamped points, and a whole field (offsets and their gradients) against the grid_sample
formulation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stages.optimize.deformation import PLANE_AXES, Box, PlanesField, planes_offsets_grid_sample
from stages.optimize.plane_sampler import METHODS, PlaneLayout, sample_plane_products

F64 = torch.float64


@pytest.fixture(params=METHODS)
def method(request) -> str:
    """Every way the sampler gathers its corners (the same values and gradients)."""
    return request.param


def _planes(gen: torch.Generator, shapes: list[tuple[int, int]], features: int) -> list[torch.Tensor]:
    return [torch.randn(1, features, h, w, generator=gen, dtype=F64) for h, w in shapes]


def _grid_sample_products(planes: list[torch.Tensor], coords: torch.Tensor, axes, levels: int) -> torch.Tensor:
    """(M, L, F): per level, the product of grid_sample's samples of its planes (one plane per call)."""
    samples = [F.grid_sample(plane, coords[:, list(ab)][None, :, None, :], mode="bilinear", align_corners=True)
               [0, :, :, 0].t() for plane, ab in zip(planes, axes)]                      # P x (M, F)
    per = len(planes) // levels
    return torch.stack([torch.stack(samples[l * per:(l + 1) * per]).prod(0) for l in range(levels)], dim=1)


def _table(planes: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p[0].permute(1, 2, 0).reshape(-1, p.shape[1]) for p in planes])    # channel last


@pytest.mark.parametrize("seed", [0, 1])
def test_samples_and_gradients_equal_grid_sample(seed, method):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 5), (5, 5), (5, 5), (3, 5), (3, 5), (3, 5), (9, 9), (9, 9), (9, 9), (3, 9), (3, 9), (3, 9)]
    axes = list(PLANE_AXES) * 2
    planes = [p.requires_grad_(True) for p in _planes(gen, shapes, 4)]
    coords = (torch.rand(300, 4, generator=gen, dtype=F64) * 1.98 - 0.99).requires_grad_(True)   # inside
    upstream = torch.randn(300, 2, 4, generator=gen, dtype=F64)

    expected = _grid_sample_products(planes, coords, axes, levels=2)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [coords, *planes])

    table = _table([p.detach() for p in planes]).requires_grad_(True)
    layout = PlaneLayout.build(shapes, axes, levels=2)
    got = sample_plane_products(table, coords, layout, method=method)
    grad_coords, grad_table = torch.autograd.grad((got * upstream).sum(), [coords, table])

    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad_coords, expected_grads[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad_table, _table(list(expected_grads[1:])), rtol=1e-10, atol=1e-10)


def test_edges_corners_and_clamped_points(method):
    """Points on cell boundaries, on the last row/column and clamped from outside: the same values; coordinate
    gradients agree wherever grid_sample's do not read its zero padding (the clamp passes none from outside)."""
    gen = torch.Generator().manual_seed(2)
    shapes = [(4, 6)]
    planes = _planes(gen, shapes, 3)
    table = _table(planes).requires_grad_(True)
    raw = torch.tensor([[-1.0, -1.0, 0, 0], [1.0, 1.0, 0, 0], [-0.6, 1 / 3, 0, 0], [0.2, -1 / 3, 0, 0],
                        [1.7, 0.3, 0, 0], [-2.0, -5.0, 0, 0], [0.999, 0.2, 0, 0]], dtype=F64, requires_grad=True)
    coords = raw.clamp(-1, 1)
    layout = PlaneLayout.build(shapes, [(0, 1)], levels=1)
    got = sample_plane_products(table, coords, layout, method=method)[:, 0]           # (M, F)
    want = _grid_sample_products(planes, coords.detach(), [(0, 1)], levels=1)[:, 0]
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    (grad_raw,) = torch.autograd.grad(got.sum(), raw)
    assert grad_raw[4, 0] == 0 and grad_raw[5, :2].abs().max() == 0            # clamped from outside: no gradient
    inside = raw.detach()[[2, 3, 6]].requires_grad_(True)
    ref = _grid_sample_products(planes, inside, [(0, 1)], levels=1)[:, 0]
    (want_grad,) = torch.autograd.grad(ref.sum(), inside)
    torch.testing.assert_close(grad_raw[[2, 3, 6]], want_grad, rtol=1e-12, atol=1e-12)


def test_gradient_on_the_first_and_last_cell_edges(method):
    """Unclamped coordinates exactly at -1 and 1: at -1 the gradient is grid_sample's (the cell inside); at 1 it is
    zero by design (grid_sample's is taken against its zero padding)."""
    gen = torch.Generator().manual_seed(3)
    planes = _planes(gen, [(4, 6)], 2)
    table = _table(planes)
    coords = torch.tensor([[-1.0, 0.3, 0, 0], [0.3, -1.0, 0, 0], [1.0, 0.3, 0, 0], [0.3, 1.0, 0, 0]], dtype=F64,
                          requires_grad=True)
    layout = PlaneLayout.build([(4, 6)], [(0, 1)], levels=1)
    got = sample_plane_products(table, coords, layout, method=method)[:, 0]
    (grad,) = torch.autograd.grad(got.sum(), coords)
    first = coords.detach()[:2].requires_grad_(True)
    (want,) = torch.autograd.grad(_grid_sample_products(planes, first, [(0, 1)], levels=1).sum(), first)
    torch.testing.assert_close(grad[:2], want, rtol=1e-12, atol=1e-12)
    assert grad[2, 0] == 0 and grad[3, 1] == 0                 # along the axis that sits on the last cell
    assert grad[2, 1] != 0 and grad[3, 0] != 0                 # the other axis still has its gradient


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (2, 1), (1, 5), (2, 2)])
def test_planes_of_one_or_two_cells(shape, method):
    gen = torch.Generator().manual_seed(4)
    planes = [p.requires_grad_(True) for p in _planes(gen, [shape], 3)]
    coords = (torch.rand(40, 4, generator=gen, dtype=F64) * 1.98 - 0.99).requires_grad_(True)
    want = _grid_sample_products(planes, coords, [(0, 1)], levels=1)
    want_grads = torch.autograd.grad(want.sum(), [coords, planes[0]])
    table = _table([p.detach() for p in planes]).requires_grad_(True)
    got = sample_plane_products(table, coords, PlaneLayout.build([shape], [(0, 1)], levels=1), method=method)
    got_grads = torch.autograd.grad(got.sum(), [coords, table])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grads[0], want_grads[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grads[1], _table([want_grads[1]]), rtol=1e-12, atol=1e-12)


def test_nan_and_far_outside_coordinates_neither_raise_nor_leave_their_plane(method):
    """A NaN coordinate (a training step gone bad) gives NaN samples, as grid_sample does, so the NaN guard sees it;
    coordinates far outside [-1, 1] read only their own plane's cells."""
    shapes = [(3, 3), (3, 3)]
    table = torch.cat([torch.full((9, 1), 2.0), torch.full((9, 1), 5.0)]).double().requires_grad_(True)
    layout = PlaneLayout.build(shapes, [(0, 1), (2, 3)], levels=2)
    coords = torch.tensor([[float("nan"), 0.0, 0.0, 0.0], [-50.0, 50.0, 50.0, -50.0], [0.5, -7.0, 3.0, 0.2]],
                          dtype=F64)
    out = sample_plane_products(table, coords, layout, method=method)[:, :, 0]        # (3, L = 2)
    assert torch.isnan(out[0, 0]) and out[0, 1] == 5.0
    torch.autograd.grad(out.sum(), table)                                            # runs (NaN where NaN was read)
    outside = sample_plane_products(table, coords[1:], layout, method=method)[:, :, 0]
    assert torch.isfinite(outside).all()
    (grad,) = torch.autograd.grad(outside.sum(), table)
    assert torch.isfinite(grad).all()


def test_a_zero_sample_keeps_the_other_planes_gradient(method):
    """The product's gradient is formed without division: a plane sampled at exactly zero still passes gradient
    to itself (the product of the others)."""
    shapes = [(2, 2), (2, 2)]
    table = torch.tensor([[0.0], [0.0], [0.0], [0.0], [2.0], [2.0], [2.0], [2.0]], dtype=F64, requires_grad=True)
    coords = torch.zeros(1, 4, dtype=F64)
    layout = PlaneLayout.build(shapes, [(0, 1), (0, 2)], levels=1)
    out = sample_plane_products(table, coords, layout, method=method)
    assert float(out.detach()) == 0.0
    (grad,) = torch.autograd.grad(out.sum(), table)
    torch.testing.assert_close(grad[:4, 0], torch.full((4,), 0.5, dtype=F64))        # 2 x bilinear weight 1/4
    torch.testing.assert_close(grad[4:, 0], torch.zeros(4, dtype=F64))


@pytest.mark.parametrize("anchor_time,time_resolution", [(False, 5), (True, 5), (False, (3, 7)), (True, (7, 3))])
def test_field_offsets_and_gradients_equal_the_grid_sample_formulation(anchor_time, time_resolution):
    """Also with the anchor-time planes (ten planes per level over five coordinates) and with one time resolution
    per level."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    field = PlanesField(Box(), (4, 8), time_resolution, 3, 8, anchor_time=anchor_time).double()
    with torch.no_grad():
        for p in field.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=F64) * 0.3)
    means = (torch.rand(64, 3, generator=gen, dtype=F64) * 2.4 - 1.2).requires_grad_(True)    # some outside
    times = torch.rand(64, generator=gen, dtype=F64)
    anchors = torch.rand(64, generator=gen, dtype=F64)
    upstream = torch.randn(64, 10, generator=gen, dtype=F64)
    params = [means, *field.parameters()]
    got = field.offsets(means, times, {"anchor_times": anchors} if anchor_time else {})
    want = planes_offsets_grid_sample(field, means, times, anchors if anchor_time else None)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad((got * upstream).sum(), params),
                    torch.autograd.grad((want * upstream).sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_plane_views_are_the_table():
    field = PlanesField(Box(), (4,), 6, 2, 8)
    spatial, temporal = field.plane(0, 0), field.plane(0, 1)
    assert spatial.shape == (3, 2, 4, 4) and temporal.shape == (3, 2, 6, 4)
    assert torch.all(temporal == 1) and spatial.min() >= 0.1 and spatial.max() <= 0.5
    with torch.no_grad():
        field.table[field.layout.offset[1] + 2 * 4 + 3, 1] = 7.0     # plane xz (second), row v = 2, column u = 3
    assert float(field.plane(0, 0)[1, 1, 2, 3].detach()) == 7.0


def test_one_time_resolution_per_level_shapes_spec_and_config():
    from stages.optimize.config import OptimizeConfig
    from stages.optimize.deformation import build_deformation, deformation_spec_from_config

    field = PlanesField(Box(), (4, 8), (3, 10), 2, 8, anchor_time=True)
    assert field.plane(0, 1).shape == (3, 2, 3, 4) and field.plane(1, 1).shape == (3, 2, 10, 8)
    assert field.plane(0, 2).shape == (3, 2, 3, 4) and field.plane(1, 3).shape == (1, 2, 10, 10)
    assert field.table.shape[0] == (3 * 16 + 3 * 12 + 3 * 12 + 9) + (3 * 64 + 3 * 80 + 3 * 80 + 100)
    assert field.spec()["time_resolution"] == [3, 10]
    assert PlanesField(Box(), (4, 8), (6, 6), 2, 8).spec()["time_resolution"] == 6    # older readers' form
    rebuilt = build_deformation(field.spec())
    assert rebuilt.time_resolutions == (3, 10) and rebuilt.table.shape == field.table.shape
    cfg = OptimizeConfig(deformation="planes", planes_resolution=[16, 32], planes_time_resolution=6)
    assert deformation_spec_from_config(cfg, n_times=50)["time_resolution"] == 6
    cfg.planes_level_time_resolution = [6, 25]
    assert deformation_spec_from_config(cfg, n_times=50)["time_resolution"] == [6, 25]
    with pytest.raises(ValueError, match="one time resolution >= 1 per level"):
        PlanesField(Box(), (4, 8), (3,), 2, 8)
    # A model with per-level time resolutions is written as version 3, which an older page4dgs refuses in one line
    # (it would have failed on the list); one time resolution for all keeps the version of a model without them.
    from stages.optimize.model import model_version

    assert model_version("classic", field.spec()) == 3
    assert model_version("classic", {"kind": "planes_bases", "planes": field.spec(), "bases": {}}) == 3
    assert model_version("classic", PlanesField(Box(), (4, 8), 6, 2, 8).spec()) == 1
    assert model_version("antialiased", None) == 2


def test_checkpoints_before_the_table_resume_except_for_planes(tmp_path):
    from pipeline.errors import UserError
    from stages.optimize.trainer import CHECKPOINT_FORMAT, CHECKPOINT_KEYS, read_checkpoint

    def saved(name, deformation, version=2):
        path = tmp_path / name
        torch.save({**dict.fromkeys(CHECKPOINT_KEYS), "format": CHECKPOINT_FORMAT, "version": version,
                    "deformation": deformation}, path)
        return path

    assert read_checkpoint(saved("bases.pt", {"control": torch.zeros(2)}))["version"] == 2
    assert read_checkpoint(saved("none.pt", None))["version"] == 2
    with pytest.raises(UserError, match="checkpoint version 2"):
        read_checkpoint(saved("planes.pt", {"planes.0": torch.zeros(3, 2, 4, 4)}))
    with pytest.raises(UserError, match="checkpoint version 1"):
        read_checkpoint(saved("old.pt", None, version=1))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_no_points_give_empty_samples_and_a_zero_table_gradient(method, device):
    """No visible dynamic Gaussian at a render time: (0, L, F) samples, and the backward still runs."""
    field = PlanesField(Box(), resolutions=(4, 8), time_resolution=3, features=4).to(device)
    coords = torch.zeros(0, 4, device=device, requires_grad=True)
    out = sample_plane_products(field.table, coords, field.layout, method=method)
    grad_table, grad_coords = torch.autograd.grad(out.sum(), [field.table, coords])
    assert out.shape == (0, 2, 4) and grad_coords.shape == (0, 4)
    assert grad_table.shape == field.table.shape and not grad_table.any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_every_method_agrees_on_cuda_including_points_on_the_box_faces():
    """The CUDA kernels of embedding_bag (forward, per-sample-weight backward, sorted table backward) against the
    gather formulation, float32, with a third of the points clamped onto the faces of the box (last cells: bags
    that repeat a row)."""
    from stages.optimize.plane_sampler import METHODS as methods

    gen = torch.Generator(device="cuda").manual_seed(3)
    field = PlanesField(Box(), resolutions=(16, 32), time_resolution=6, features=16).cuda()
    with torch.no_grad():
        field.table.uniform_(0.1, 1.0, generator=gen)
    raw = torch.rand(30_000, 4, generator=gen, device="cuda") * 3 - 1.5                 # a third outside [-1, 1]
    coords = raw.clamp(-1, 1).requires_grad_(True)
    upstream = torch.randn(30_000, 2, 16, generator=gen, device="cuda")
    results = {}
    for name in methods:
        out = sample_plane_products(field.table, coords, field.layout, method=name)
        results[name] = (out, *torch.autograd.grad(out, [field.table, coords], upstream))
    for name in methods:
        for got, want in zip(results[name], results["gather"]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.detach().abs().max()))
