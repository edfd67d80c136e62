"""Training batches drawn ahead of time by a data worker, so that the training loop's host does not wait for them.

On a GPU the training step of page4d-tiny is bound by the host: a step launched about 7,900 kernels, 2,300-2,900 of
them the synthetic renderer's (``bench/results/profiles/profile_train_gpu_6fc89e1.json`` and
``profile_train_ops_cpu.json``), and the renderer synchronises with the device where it sorts rays by primitive
kind. A worker builds the same
:class:`~stages.geometry.page4d.train_data.TrainingData` and draws ``depth`` batches ahead on the same device:

- ``"process"`` (the training default): a separate process, its own CUDA context; batches are handed over through
  ``torch.multiprocessing`` (CUDA tensors by inter-process handles, the producer's event waited on by the
  consumer's stream; CPU tensors by shared memory). About 7 s to start (CUDA, texture banks).
- ``"thread"``: a thread of this process on its own CUDA stream; the Python of both shares the interpreter lock.

One H200, the continuation recipe, two calls: a step took 191-198 ms with the process, 208-222 with the thread and
234-245 before (``bench/results/profiles/train_step_ab/summary.json``). A batch is a pure function of its index, so
the stream is the same batch for batch, bit for bit, whoever draws it (tested).

    stream = batch_stream(data_factory, indices, depth=2)     # indices: an iterator of batch indices, in order
    index, batch = next(stream)
    stream.close()                                            # after dropping the batches received

``depth = 0`` draws each batch in the calling process, when asked for (no worker).
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import traceback
from typing import Callable, Iterator, Optional

import torch
import torch.multiprocessing as mp

from pipeline.errors import UserError

STOP = None
POLL_S = 1.0                   # how often a waiting consumer checks that the producer is still alive


def _produce(factory: Callable[[], object], device: str, requests, results, parent: int) -> None:
    """The data process: draw ``factory().batch(index)`` for each requested index until the first STOP; a failure is
    sent as a traceback and ends the drawing. The process lives until the second STOP, since what it sent must
    outlive the consumer's use of it (CUDA memory shared by handle; CPU tensors whose file descriptors the
    consumer fetches from this process when it unpickles them). It also ends when the training process ``parent``
    is gone (killed, so that it could not say STOP), rather than hold its GPU memory as an orphan."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the training process's to handle
    data, drawing, stops = None, True, 0
    try:
        if torch.device(device).type == "cuda" and torch.device(device).index is not None:
            torch.cuda.set_device(torch.device(device))        # a data-parallel rank's GPU
        data = factory()
    except Exception:
        results.put((None, None, traceback.format_exc()))
        drawing = False
    while stops < 2:
        try:
            index = requests.get(timeout=POLL_S)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if index is STOP:
            stops += 1
        elif drawing and stops == 0:
            try:
                results.put((index, data.batch(index), None))
            except Exception:                          # reported to the consumer, which raises it
                results.put((index, None, traceback.format_exc()))
                drawing = False


class _InProcess:
    """``depth = 0``: each batch drawn when asked for."""

    def __init__(self, factory: Callable[[], object], indices: Iterator[int]):
        self.data = factory()
        self.indices = indices

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, dict]:
        index = next(self.indices)
        return index, self.data.batch(index)

    def close(self) -> None:
        pass


class _Threaded:
    """A producer thread of this process kept ``depth`` batches ahead, on its own CUDA stream: one CUDA context, so
    its kernels run beside the training step's instead of taking turns with another process's context. The Python
    of both shares the interpreter lock; PyTorch releases it while an operator runs (launches and waits included)."""

    def __init__(self, factory: Callable[[], object], indices: Iterator[int], depth: int, device: str):
        self.device = torch.device(device)
        self.side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.results: queue.Queue = queue.Queue(maxsize=depth)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._produce, args=(factory, indices), daemon=True,
                                       name="page4dgs-train-data")
        self.thread.start()

    def _produce(self, factory: Callable[[], object], indices: Iterator[int]) -> None:
        index = None
        try:
            with torch.cuda.stream(self.side) if self.side is not None else contextlib.nullcontext():
                data = factory()
                for index in indices:
                    batch = data.batch(index)
                    ready = None
                    if self.side is not None:
                        ready = torch.cuda.Event()
                        ready.record(self.side)
                    while not self.stopping.is_set():
                        try:
                            self.results.put((index, batch, ready, None), timeout=POLL_S)
                            break
                        except queue.Full:
                            pass
                    if self.stopping.is_set():
                        return
        except Exception:                              # reported to the consumer, which raises it
            self.results.put((index, None, None, traceback.format_exc()))
            return
        self.results.put((STOP, None, None, None))

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, dict]:
        index, batch, ready, error = self.results.get()
        if error is not None:
            where = "before its first batch" if index is None else f"on batch {index}"
            raise RuntimeError(f"the training-data thread failed {where}:\n{error}")
        if index is STOP:
            self.results.put((STOP, None, None, None))
            raise StopIteration
        if ready is not None:
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(ready)
            for tensor in batch.values():              # made on the side stream, used (and freed) on this one
                if torch.is_tensor(tensor) and tensor.device.type == "cuda":
                    tensor.record_stream(consumer)
        return index, batch

    def close(self) -> None:
        self.stopping.set()
        while self.thread.is_alive():
            try:
                self.results.get(timeout=0.1)
            except queue.Empty:
                pass
        self.thread.join()


class _Prefetching:
    """A producer process kept ``depth`` batches ahead of the consumer."""

    def __init__(self, factory: Callable[[], object], indices: Iterator[int], depth: int, device: str):
        context = mp.get_context("spawn")             # CUDA cannot be used in a forked child
        self.requests, self.results = context.Queue(), context.Queue()
        self.process = context.Process(target=_produce, args=(factory, device, self.requests, self.results,
                                                              os.getpid()),
                                       daemon=True, name="page4dgs-train-data")
        self.process.start()
        self.indices = indices
        self.pending: list[int] = []
        self.depth = depth
        self._fill()

    def _fill(self) -> None:
        while len(self.pending) < self.depth:
            index = next(self.indices, STOP)
            if index is STOP:
                return
            self.requests.put(index)
            self.pending.append(index)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[int, dict]:
        if not self.pending:
            raise StopIteration
        expected = self.pending.pop(0)
        self._fill()
        while True:
            try:
                index, batch, error = self.results.get(timeout=POLL_S)
                break
            except queue.Empty:
                if not self.process.is_alive():
                    raise RuntimeError(f"the training-data process ended (exit code {self.process.exitcode}) "
                                       f"before batch {expected}") from None
        if error is not None:
            where = "before its first batch" if index is None else f"on batch {index}"
            raise RuntimeError(f"the training-data process failed {where}:\n{error}")
        if index != expected:                          # cannot happen with one ordered queue; a cheap guard
            raise RuntimeError(f"the training-data process sent batch {index}, expected {expected}")
        return index, batch

    def close(self) -> None:
        if self.process is None:
            return
        try:
            self.requests.put(STOP)                    # stop drawing ...
            self.requests.put(STOP)                    # ... and release the batches sent
            self.process.join(timeout=30)
        finally:
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=5)
            self.process = None


def batch_stream(factory: Callable[[], object], indices: Iterator[int], depth: int,
                 device: Optional[torch.device] = None, worker: str = "process"):
    """An iterator of ``(index, factory().batch(index))`` over ``indices``; with ``depth > 0`` the batches are drawn
    that many ahead by a ``worker``: a ``"thread"`` of this process (on its own CUDA stream) or a separate
    ``"process"`` on ``device`` (then ``factory`` must be picklable: a module-level callable or a
    ``functools.partial`` of one). Call ``close()`` when done."""
    if depth < 0:
        raise UserError(f"prefetch depth must be >= 0, got {depth}")
    if depth == 0:
        return _InProcess(factory, indices)
    device_name = str(device) if device is not None else "cpu"
    if worker == "thread":
        return _Threaded(factory, indices, depth, device_name)
    if worker == "process":
        return _Prefetching(factory, indices, depth, device_name)
    raise UserError(f"prefetch worker must be 'thread' or 'process', got {worker!r}")
