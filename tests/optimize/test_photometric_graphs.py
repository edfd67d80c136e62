"""optimize.photometric_graphs: the photometric loss replayed as CUDA graphs (stages/optimize/photometric_graphs.py).
On the CPU: where it applies and what runs eagerly; on a GPU: the same values and gradients as eager, and a training
run that follows the eager loss sequence."""

from __future__ import annotations

import pytest
import torch

from stages.optimize.config import OptimizeConfig
from stages.optimize.losses import photometric_loss
from stages.optimize.photometric_graphs import GraphedPhotometricLoss
from stages.optimize.trainer import StepFunctions, step_functions, train
from tests.optimize.test_training import _inputs, _log, small_config, tiny  # noqa: F401  (tiny: a fixture)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def _images(device: str, seed: int = 0, size: tuple[int, int] = (24, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    render = torch.rand(*size, 3, generator=generator).to(device).requires_grad_(True)
    target = torch.rand(*size, 3, generator=generator).to(device)
    return render, target


def test_off_the_gpu_the_loss_runs_eagerly_with_photometric_loss_values():
    graphed = GraphedPhotometricLoss(0.2)
    render, target = _images("cpu")
    got = graphed(render, target, 0.2)
    want = photometric_loss(render, target, 0.2)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert (graphed.graphed_calls, graphed.eager_calls) == (0, 1)


def test_the_setting_applies_on_a_gpu_without_compile_only():
    model = None             # step_functions reads the model only to compile it
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert step_functions(small_config(photometric_graphs="cuda"), model, cpu).photometric is photometric_loss
    assert isinstance(step_functions(small_config(photometric_graphs="cuda"), model, cuda).photometric,
                      GraphedPhotometricLoss)
    assert step_functions(small_config(photometric_graphs="never"), model, cuda).photometric is photometric_loss
    assert OptimizeConfig().photometric_graphs == "cuda"             # the default: on a GPU, eager training


def test_with_compile_on_the_same_device_the_loss_is_compiled_not_graphed():
    class Model:                # what step_functions touches when it compiles: compile_deformation
        def compile_deformation(self, backend, mode):
            self.compiled = (backend, mode)

    model = Model()
    cfg = small_config(photometric_graphs="cuda", compile="cuda", compile_backend="aot_eager")
    functions = step_functions(cfg, model, torch.device("cuda"))
    assert not isinstance(functions.photometric, GraphedPhotometricLoss)
    assert functions.photometric is not photometric_loss and model.compiled == ("aot_eager", None)
    # compile 'cuda' does not apply on the CPU: eager, and graphs do not apply there either
    assert step_functions(cfg, Model(), torch.device("cpu")).photometric is photometric_loss


def test_a_step_restarts_the_count_of_calls_that_picks_each_graph_pair():
    graphed = GraphedPhotometricLoss(0.2)
    functions = StepFunctions(photometric=graphed, motion=lambda *a: None)
    for _ in range(3):
        graphed(*_images("cpu"), 0.2)
    assert graphed._position == 3
    functions.start_step()
    assert graphed._position == 0


def test_large_images_a_full_set_of_pairs_and_failed_recordings_run_eagerly(monkeypatch, caplog):
    """Which calls get a graph pair (the key-level decision, on CPU tensors with the recording stubbed): images above
    max_pixels never; at most max_graphs pairs; a recording that raises is logged once and its key runs eagerly."""
    graphed = GraphedPhotometricLoss(0.2, max_graphs=2, max_pixels=24 * 32)
    recorded = []

    def record(render, target):
        if render.shape[0] == 13:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        recorded.append(tuple(render.shape))
        return lambda *a: None

    monkeypatch.setattr(graphed, "_record", record)
    small, large, failing = (_images("cpu", size=size) for size in [(24, 32), (25, 32), (13, 20)])
    assert graphed._graph_for((0, "large"), *large) is None and recorded == []          # 800 > 768 pixels
    with caplog.at_level("WARNING"):
        assert graphed._graph_for((0, "failing"), *failing) is None
        assert graphed._graph_for((0, "failing"), *failing) is None                     # not tried again
    assert sum("runs eagerly" in r.getMessage() for r in caplog.records) == 1
    assert graphed._graph_for((0, "small"), *small) is not None
    assert graphed._graph_for((1, "small"), *small) is not None
    assert graphed._graph_for((2, "small"), *small) is None                             # max_graphs pairs made
    assert recorded == [(24, 32, 3), (24, 32, 3)]


@needs_cuda
def test_graphed_values_and_gradients_are_eagers_per_shape_and_batch_position():
    """Three calls per step, as a step with three views makes them: all forwards first, then one backward through
    their sum (so each position must keep its own buffers), two of one image size and one of another."""
    graphed = GraphedPhotometricLoss(0.2)
    for step in range(3):
        graphed.start_step()
        inputs = [_images("cuda", seed=10 * step + position, size=size)
                  for position, size in enumerate([(24, 32), (24, 32), (16, 20)])]
        outputs = [graphed(render, target, 0.2) for render, target in inputs]
        assert not outputs[0][1].requires_grad and not outputs[0][2].requires_grad   # l1, ssim: for the log
        grads = torch.autograd.grad(sum(loss for loss, _, _ in outputs), [render for render, _ in inputs])
        for (render, target), got, grad in zip(inputs, outputs, grads):
            eager_render = render.detach().clone().requires_grad_(True)
            eager = photometric_loss(eager_render, target, 0.2)
            (eager_grad,) = torch.autograd.grad(eager[0], eager_render)
            got_values, eager_values = [float(x.detach()) for x in got], [float(x.detach()) for x in eager]
            assert got_values == pytest.approx(eager_values, rel=1e-6, abs=1e-7)
            torch.testing.assert_close(grad, eager_grad, rtol=1e-5, atol=1e-9)
    assert graphed.graphed_calls == 9 and graphed.eager_calls == 0 and len(graphed._graphs) == 3
    render, target = _images("cuda")
    graphed(render, target, 0.5)                                  # another weight: eager
    assert graphed.eager_calls == 1


@needs_cuda
@pytest.mark.parametrize("batch_size", [1, 2])
def test_training_with_the_graphed_loss_follows_the_eager_loss_sequence(tiny, tmp_path, batch_size,  # noqa: F811
                                                                        monkeypatch):
    """Against two eager runs on the GPU (their difference: the float noise of gsplat's atomic adds), a run with the
    graphed loss stays within three times that noise or 1e-4; stale inputs or outputs would be far off."""
    import stages.optimize.trainer as trainer_module

    made = []

    class Recorded(GraphedPhotometricLoss):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(trainer_module, "GraphedPhotometricLoss", Recorded)
    files, scene = tiny
    runs = (("eager", "never"), ("eager_again", "never"), ("graphed", "cuda"))
    for name, setting in runs:
        cfg = small_config(deformation="bases", iterations=12, checkpoint_every=0, log_every=4, refine_start=2,
                           refine_every=3, refine_stop=12, backend="auto", batch_size=batch_size,
                           photometric_graphs=setting)
        data, initial = _inputs(files, scene, cfg, "cuda")
        train(cfg, data, initial, tmp_path / name, device="cuda", seed=5)
    eager, again, graphed = (_log(tmp_path / name / "log.csv") for name, _ in runs)
    assert [r["gaussians"] for r in again] == [r["gaussians"] for r in eager]      # the noise is float noise
    assert len(made) == 1 and made[0].graphed_calls == 12 * batch_size and made[0].eager_calls == 0
    assert len(made[0]._graphs) == batch_size                   # one pair per position in the step's batch
    assert [r["gaussians"] for r in graphed] == [r["gaussians"] for r in eager]

    def worst(rows):
        return max(abs(float(b[k]) - float(a[k])) / max(abs(float(a[k])), 1e-6)
                   for a, b in zip(eager, rows) for k in ("loss", "l1", "ssim"))

    assert worst(again) < 1e-2, "two eager runs apart: no reference to compare with"
    assert worst(graphed) <= max(1e-4, 3 * worst(again)), (worst(graphed), worst(again))
