"""Random states shared by the stages' checkpoints."""

from __future__ import annotations

from typing import Sequence

import torch


def set_cuda_rng_states(states: Sequence[torch.Tensor]) -> None:
    """Restore one saved random state per GPU (``torch.cuda.get_rng_state_all()`` order) on the GPUs visible now:
    a checkpoint written with more GPUs visible restores those that are (``set_rng_state_all`` would fail on an
    index); with fewer saved, the other GPUs keep theirs."""
    for index, state in enumerate(list(states)[:torch.cuda.device_count()]):
        torch.cuda.set_rng_state(state, index)
