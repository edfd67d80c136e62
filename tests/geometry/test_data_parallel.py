"""Data-parallel PAGE-4D training (data_parallel.py) on the CPU: two gloo ranks against one process."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from stages.geometry.page4d import data_parallel
from stages.geometry.page4d import train as training
from stages.geometry.page4d.data_parallel import World
from tests.geometry.test_train import PlaneScenes, _config, micro_model  # noqa: F401  (fixture)


class RecordingScenes(PlaneScenes):
    """PlaneScenes that remembers which draws were asked for."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.asked: list[int] = []

    def batch(self, step: int):
        self.asked.append(step)
        return super().batch(step)


def test_draw_indices_keep_the_single_process_stream_and_never_repeat():
    one = World()
    assert [data_parallel.draw_index(s, one, 1, 0) for s in range(4)] == [0, 1, 2, 3]
    four = [World(rank=r, size=4, local_rank=r) for r in range(4)]
    drawn = [data_parallel.draw_index(s, w, 2, d) for s in range(3) for w in four for d in range(2)]
    assert sorted(drawn) == list(range(24))                   # every rank and draw its own batch, none twice
    # A step of W ranks with 1 draw each takes the draws of one process's step with W draws.
    assert ({data_parallel.draw_index(5, w, 1, 0) for w in four}
            == {data_parallel.draw_index(5, one, 4, d) for d in range(4)})


def test_draws_per_step_averages_independent_batches(tmp_path, micro_model):
    data = RecordingScenes(height=28, width=28, frames=2, seed=5)
    result = training.train(_config(tmp_path / "two", micro_model, steps=3, draws_per_step=2), data=data)
    assert data.asked == [0, 1, 2, 3, 4, 5]
    assert result.state.sequences == 3 * 2 * 2                # 3 steps x 2 draws x B = 2
    summary = json.loads((result.out_dir / "summary.json").read_text())
    assert summary["draws_per_step"] == 2 and summary["data_parallel_processes"] == 1
    # One draw per step is the stream of every earlier run: draws 0, 1, 2.
    single = RecordingScenes(height=28, width=28, frames=2, seed=5)
    one = training.train(_config(tmp_path / "one", micro_model, steps=3), data=single)
    assert single.asked == [0, 1, 2]
    # The mask schedule's clock counts one rank's forwards: two draws per step advance it as one draw does.
    clocks = [torch.load(r.out_dir / "checkpoint.pt", weights_only=True)["mask_step"] for r in (result, one)]
    assert clocks == [3.0, 3.0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _then_exit(rank: int, work, *args) -> None:
    """Run ``work(rank, *args)`` in a spawned rank, then leave the process at once (``os._exit(0)``).

    A rank that has used gloo sometimes aborts while the interpreter shuts down ("terminate called without an
    active exception", SIGABRT): a gloo thread still joinable when its C++ destructor runs. The rank's work and its
    result file are complete by then, but mp.spawn reports the abort as a failure; leaving before the interpreter's
    teardown skips that destructor. An exception in ``work`` still reaches mp.spawn as before.
    """
    import os
    import sys

    work(rank, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


class SignalledScenes(PlaneScenes):
    """PlaneScenes whose process sends itself SIGTERM when it draws ``at`` (as torchrun forwards Ctrl-C)."""

    def __init__(self, at: int, **kwargs):
        super().__init__(**kwargs)
        self.at = at

    def batch(self, step: int):
        if step == self.at:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        return super().batch(step)


def _rank(rank: int, size: int, port: int, config: training.TrainConfig, out: str, signal_at: int = -1) -> None:
    import os

    from pipeline.errors import StageInterrupted

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank), PAGE4DGS_COLLECTIVE_TIMEOUT_S="120")
    torch.set_num_threads(1)
    data = SignalledScenes(signal_at, height=28, width=28, frames=2, seed=7)
    try:
        result = training.train(config, data=data)
    except StageInterrupted:
        Path(out, f"rank{rank}.json").write_text(json.dumps({"interrupted": True}))
        return
    Path(out, f"rank{rank}.json").write_text(json.dumps({"losses": result.losses, "step": result.state.step,
                                                         "frames": result.state.frames}))


def _one_process_then_two_ranks(tmp_path, micro_model, steps: int, signal_at: int = -1):
    """A one-process run with two draws per step (the reference), then the same recipe on two gloo ranks with one
    draw each; returns the reference's result, the ranks' config and what each rank reported."""
    torch.set_num_threads(1)
    reference = training.train(_config(tmp_path / "one", micro_model, steps=steps, draws_per_step=2),
                               data=PlaneScenes(height=28, width=28, frames=2, seed=7))
    config = _config(tmp_path / "two", micro_model, steps=steps)
    mp.spawn(_then_exit, args=(_rank, 2, _free_port(), config, str(tmp_path), signal_at), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    return reference, config, ranks


def test_two_ranks_compute_what_one_process_computes_with_two_draws(tmp_path, micro_model):
    # Two gloo ranks (one draw each) against one process drawing both batches: the same losses and the same
    # weights, bit for bit; both ranks report the averaged losses, and rank 0 alone writes the run's files.
    # Bit for bit because a sum of two gradients, halved, rounds as the sum of the halves does (halving is exact
    # in binary floating point); with more than two addends (accumulation chunks) the order of the additions
    # differs and so may the last bit.
    steps = 3
    reference, config, ranks = _one_process_then_two_ranks(tmp_path, micro_model, steps)
    assert ranks[0]["losses"] == ranks[1]["losses"] == reference.losses          # exact float equality
    assert ranks[0]["step"] == steps and ranks[0]["frames"] == reference.state.frames
    a = torch.load(reference.out_dir / "checkpoint.pt", weights_only=True)
    b = torch.load(Path(config.out_dir) / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert b["state"]["ranks"] == 2 and a["state"]["ranks"] == 1
    summary = json.loads((Path(config.out_dir) / "summary.json").read_text())
    assert summary["data_parallel_processes"] == 2
    rows = (Path(config.out_dir) / "train_log.csv").read_text().splitlines()
    assert len(rows) == 1 + steps                                               # one writer: one row per step


def test_a_rank_without_its_gpu_is_a_clear_error(monkeypatch):
    from pipeline.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="wants GPU 3"):
        training._device("cuda", World(rank=3, size=4, local_rank=3))


def _average(rank: int, size: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    world = World(rank=rank, size=size, local_rank=rank)
    both, first_only, neither, last = (torch.nn.Parameter(torch.zeros(2, 3)) for _ in range(4))
    both.grad = torch.full((2, 3), float(rank + 1))
    last.grad = torch.arange(6.0).view(2, 3) * (rank + 1)
    if rank == 0:
        first_only.grad = torch.full((2, 3), 4.0)
    # Buckets of at most 8 elements: every parameter (6 elements) travels in a bucket of its own.
    data_parallel.average_gradients([both, first_only, neither, last], world, bucket_elements=8)
    Path(out, f"avg{rank}.json").write_text(json.dumps({
        "both": both.grad.tolist(), "first_only": first_only.grad.tolist(), "neither": neither.grad is None,
        "last": last.grad.tolist(),
        "any": data_parallel.any_rank(rank == 1, world, torch.device("cpu")),
        "every": data_parallel.every_rank(rank == 1, world, torch.device("cpu"))}))
    dist.destroy_process_group()


def test_average_gradients_counts_a_missing_gradient_as_zero_and_keeps_unreached_ones_none(tmp_path):
    mp.spawn(_then_exit, args=(_average, 2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"avg{rank}.json").read_text())
        assert got["both"] == [[1.5] * 3] * 2                  # (1 + 2) / 2
        assert got["first_only"] == [[2.0] * 3] * 2           # (4 + 0) / 2
        assert got["neither"] is True
        assert got["last"] == [[0.0, 1.5, 3.0], [4.5, 6.0, 7.5]]      # arange(6) x (1 + 2) / 2
        assert got["any"] is True and got["every"] is False


def _drift(rank: int, size: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    world = World(rank=rank, size=size, local_rank=rank)
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.25 * rank)                          # rank 1 drifted by 0.25
    first = data_parallel.resynchronize_weights(model, world)
    second = data_parallel.resynchronize_weights(model, world)
    Path(out, f"drift{rank}.json").write_text(json.dumps({"first": first, "second": second,
                                                          "bias": model.bias.tolist()}))
    dist.destroy_process_group()


def test_resynchronize_weights_reports_a_drift_and_hands_out_rank_0s_copy(tmp_path):
    mp.spawn(_then_exit, args=(_drift, 2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"drift{rank}.json").read_text())
        assert got == {"first": 0.25, "second": 0.0, "bias": [0.0, 0.0]}


def test_a_two_rank_run_continues_on_one_process_with_two_draws_and_a_signal_stops_both_ranks(tmp_path, micro_model):
    # Rank 1 is sent SIGTERM while it draws its batch of step 1 (draw 3): both ranks finish that step, stop together
    # at the top of step 2 (neither hangs in a collective), rank 0 writes the checkpoint, and both report the
    # interruption. The same command on one process with two draws per step then continues the run (W x D is
    # the same) and ends where a one-process run with two draws ends, bit for bit.
    steps = 4
    reference, config, ranks = _one_process_then_two_ranks(tmp_path, micro_model, steps, signal_at=3)
    assert ranks == [{"interrupted": True}] * 2
    saved = torch.load(Path(config.out_dir) / "checkpoint.pt", weights_only=True)
    assert saved["state"]["step"] == 2 and saved["state"]["ranks"] == 2
    resumed = training.train(_config(tmp_path / "two", micro_model, steps=steps, draws_per_step=2),
                             data=PlaneScenes(height=28, width=28, frames=2, seed=7))
    assert resumed.finished and resumed.losses == reference.losses[2:]
    final = torch.load(Path(config.out_dir) / "checkpoint.pt", weights_only=True)["model"]
    expected = torch.load(reference.out_dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_draws_changed_compares_processes_times_draws():
    config = training.TrainConfig(draws_per_step=4)
    assert training.draws_changed({"draws_per_step": 1}, 4, config, World()) is None
    assert "8 draw(s) per step" in training.draws_changed({"draws_per_step": 2}, 4, config, World())
    assert training.draws_changed({}, 1, training.TrainConfig(), World()) is None       # older files: 1 x 1


def _rank_with_a_data_worker(rank: int, size: int, port: int, config: training.TrainConfig, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank), PAGE4DGS_COLLECTIVE_TIMEOUT_S="120")
    torch.set_num_threads(1)
    result = training.train(config)                       # the synthetic stream, drawn by each rank's worker
    Path(out, f"rank{rank}.json").write_text(json.dumps({"losses": result.losses}))


def test_each_rank_draws_its_own_batches_with_a_data_worker(tmp_path, micro_model):
    # The recipe's own synthetic stream (no test data source): two ranks whose batches come from a data process
    # each compute what one process drawing both batches in its loop computes.
    torch.set_num_threads(1)
    reference = training.train(_config(tmp_path / "one", micro_model, steps=2, draws_per_step=2, prefetch=0))
    config = _config(tmp_path / "two", micro_model, steps=2, prefetch=2, prefetch_worker="process")
    mp.spawn(_then_exit, args=(_rank_with_a_data_worker, 2, _free_port(), config, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["losses"] == ranks[1]["losses"] == reference.losses
