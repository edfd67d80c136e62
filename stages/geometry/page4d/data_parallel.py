"""Data-parallel training of PAGE-4D over several processes, one per GPU (launched by ``torchrun``).

Every rank holds the whole model and draws batches of its own; after the backward pass the gradients are summed
over the ranks and divided by their number, so every rank clips and steps the same averaged gradient with the same
optimizer state and the weights stay identical without being sent again (checked at every checkpoint, where
rank 0's copy replaces any that differs, with a warning: :func:`resynchronize_weights`). There is no
``DistributedDataParallel`` wrapper: a step's communication is a few explicit collectives (the stop code - time
budget or signal -, the finite flag, which parameters have gradients, the gradients in flat buckets, the step's
counters and loss terms), which keeps frozen parameters, parameters a batch does not reach and skipped steps exactly
as they are on one process.

Which batches a step draws: rank ``r`` of ``W`` takes draws ``(step * W + r) * D + d`` for ``d < D``
(``draws_per_step`` D). With one process and D = 1 that is the step itself, the stream of earlier single-GPU runs.
A step of W ranks with D = 1 computes what one process computes with D = W (the same draws, the same averaged
gradient; tested bit for bit on the CPU with two gloo ranks), so a run can change between the two on resume.

Launch: ``torchrun --standalone --nproc_per_node=N -m pipeline.cli train-model --config NAME`` (or
``GPUS=N scripts/train_chunk.sh``). Without torchrun's environment (``WORLD_SIZE`` unset or 1) nothing here
communicates and :data:`SINGLE` describes the one process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """Where this process sits: ``rank`` in [0, size), ``local_rank`` its GPU index on this host."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file (log, checkpoints, exports, summary) and shows the progress bar."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()


def world_from_environment() -> World:
    """The :class:`World` of torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); :data:`SINGLE`
    without them."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(rank=int(os.environ["RANK"]), size=size, local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def join(world: World, device: torch.device) -> None:
    """Join the process group of ``world`` (NCCL on CUDA, gloo on the CPU) unless already joined. A collective
    that waits longer than ``PAGE4DGS_COLLECTIVE_TIMEOUT_S`` seconds (default: torch's) fails instead of hanging."""
    if world.distributed and not dist.is_initialized():
        seconds = os.environ.get("PAGE4DGS_COLLECTIVE_TIMEOUT_S")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank,
                                world_size=world.size,
                                device_id=device if device.type == "cuda" else None,
                                timeout=datetime.timedelta(seconds=float(seconds)) if seconds else None)


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def draw_index(step: int, world: World, draws_per_step: int, draw: int) -> int:
    """The index into the training stream of draw ``draw`` (< draws_per_step) of this rank at ``step``."""
    return (step * world.size + world.rank) * draws_per_step + draw


def max_over_ranks(value: float, world: World, device: torch.device) -> float:
    """The largest of the ranks' ``value`` (e.g. a stop code: 0 go on, 1 time budget, 2 signal), on every rank."""
    if not world.distributed:
        return value
    tensor = torch.tensor([float(value)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return float(tensor.item())


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on at least one (e.g. "the time budget is spent")."""
    return max_over_ranks(1.0 if flag else 0.0, world, device) > 0


def every_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True on every rank if ``flag`` is True on all of them (e.g. "my losses are finite")."""
    return not any_rank(not flag, world, device)


def average_gradients(parameters: Sequence[torch.nn.Parameter], world: World,
                      bucket_elements: int = 1 << 25) -> None:
    """Replace each parameter's gradient by its mean over the ranks, in place.

    A parameter without a gradient on some ranks counts as zero there; one without a gradient on every rank keeps
    ``grad = None`` (AdamW then leaves it alone, as on one process). The gradients travel as flat float32 buffers of
    at most ``bucket_elements`` elements (one parameter larger than that travels alone), so the extra memory is one
    bucket, not a second copy of every gradient: sum, then a division by the number of ranks.
    """
    if not world.distributed or not parameters:
        return
    device = parameters[0].device
    present = torch.tensor([0.0 if p.grad is None else 1.0 for p in parameters], device=device)   # (P,)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    reached = [p for p, seen in zip(parameters, present.tolist()) if seen > 0]
    buckets: list[list[torch.nn.Parameter]] = []
    size = 0
    for p in reached:
        if not buckets or size + p.numel() > bucket_elements:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += p.numel()
    for bucket in buckets:
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                          for p in bucket])                                                   # (sum of numel,)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= world.size
        for p, piece in zip(bucket, flat.split([p.numel() for p in bucket])):
            p.grad = piece.view_as(p).to(p.dtype)


def sum_over_ranks(values: torch.Tensor, world: World) -> torch.Tensor:
    """The element-wise sum of ``values`` (any shape, float64 for counters) over the ranks."""
    if world.distributed:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_parameters(tensors: Iterable[torch.Tensor], world: World) -> None:
    """Copy rank 0's values of ``tensors`` (parameters, buffers) to every rank, in place."""
    if world.distributed:
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


def resynchronize_weights(model: torch.nn.Module, world: World) -> float:
    """Copy rank 0's weights (parameters and buffers) to every rank and return the largest absolute difference
    any rank had from them (0.0 when they agree, as they should). A collective: every rank must call it. The
    optimizer's moments are not sent: a safety net for the weights, not a repair of a run that drifted."""
    if not world.distributed:
        return 0.0
    largest = 0.0
    for tensor in model.state_dict().values():
        if not torch.is_tensor(tensor) or tensor.numel() == 0:
            continue
        reference = tensor.detach().clone()
        dist.broadcast(reference, src=0)
        if not torch.equal(reference, tensor):
            largest = max(largest, float((reference.double() - tensor.double()).abs().max()))
            tensor.copy_(reference)
    gap = torch.tensor([largest], device=next(model.parameters()).device)
    dist.all_reduce(gap, op=dist.ReduceOp.MAX)
    return float(gap.item())
