"""The training-data process (stages/geometry/page4d/prefetch.py): the same batches as the loop draws itself, in
order, and a failure in the process surfaces as an error naming the batch."""

import functools
from pathlib import Path

import pytest
import torch

from stages.geometry.page4d import train as training
from stages.geometry.page4d.config import ModelConfig
from stages.geometry.page4d.prefetch import batch_stream
from stages.geometry.page4d.train_data import TrainingData
from tests.geometry.test_train import _config, micro_model  # noqa: F401 - the fixture


class Failing:
    """A data source whose third batch cannot be drawn."""

    def batch(self, index: int) -> dict:
        if index == 2:
            raise ValueError("no scene for batch 2")
        return {"index": torch.tensor([index])}


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_the_data_worker_draws_the_batches_the_loop_would_draw(tmp_path, micro_model, worker):
    config = _config(tmp_path, micro_model, frames_max=3, max_images=6)
    factory = functools.partial(TrainingData, config, ModelConfig.load(micro_model), torch.device("cpu"))
    direct = batch_stream(factory, iter([5, 6, 7]), depth=0)
    ahead = batch_stream(factory, iter([5, 6, 7]), depth=2, worker=worker)
    try:
        for (index_a, a), (index_b, b) in zip(direct, ahead, strict=True):
            assert index_a == index_b
            assert a.keys() == b.keys()
            for key in a:
                assert torch.equal(a[key], b[key]), (index_a, key)
        with pytest.raises(StopIteration):
            next(ahead)
    finally:
        ahead.close()


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_a_failure_in_the_data_worker_names_the_batch(worker):
    stream = batch_stream(Failing, iter(range(5)), depth=2, worker=worker)
    try:
        assert [int(next(stream)[1]["index"]) for _ in range(2)] == [0, 1]
        with pytest.raises(RuntimeError, match="failed on batch 2:(.|\n)*no scene for batch 2"):
            next(stream)
    finally:
        stream.close()


def test_training_with_a_data_worker_follows_the_same_losses(tmp_path, micro_model):
    runs = [training.train(_config(tmp_path / f"prefetch{depth}{worker}", micro_model, steps=3, prefetch=depth,
                                   prefetch_worker=worker))
            for depth, worker in ((0, "thread"), (2, "thread"), (2, "process"))]
    assert runs[0].losses == runs[1].losses == runs[2].losses
    assert all(loss == loss for loss in runs[0].losses)          # finite, so the comparison means something


def test_the_data_process_ends_when_the_training_process_is_killed(tmp_path):
    # A training process killed outright (SIGKILL: no STOP sent) must not leave its data process behind.
    import os
    import subprocess
    import sys
    import time

    script = ("import sys, time\n"
              "from stages.geometry.page4d.prefetch import batch_stream\n"
              "from tests.geometry.test_prefetch import Failing\n"
              "stream = batch_stream(Failing, iter(range(2)), depth=1, worker='process')\n"
              "next(stream)\n"
              "print(stream.process.pid, flush=True)\n"
              "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=str(Path(__file__).resolve().parents[2]))
    try:
        child = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)                        # still there?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(child, 9)
    raise AssertionError("the data process outlived the killed training process by 30 s")
