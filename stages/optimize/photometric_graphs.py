"""The photometric loss replayed as CUDA graphs (``optimize.photometric_graphs``).

On an H200 a training step at 100k Gaussians is bound by the host, at about 29 us per kernel launch
(docs/gaussians.md, "The cost of a training step"). The photometric loss - L1 plus D-SSIM - is one of the few parts
of a step whose shapes never change: an (H, W, 3) render against an (H, W, 3) target. Its ~60 forward and backward
kernels (five separable Gaussian filterings, their adjoints, the elementwise algebra) can therefore be recorded once
as a pair of CUDA graphs (``torch.cuda.make_graphed_callables``) and replayed as two launches plus the copies of the
inputs and of the incoming gradient into the graphs' static buffers. No compiler is involved: the graphs replay the
same kernels eager mode launches, so the values are eager's.

Graphs own static memory, so a graph pair serves one image size and one position in the step's batch (a step with
two views calls the loss twice before its backward: each call needs buffers of its own). A pair keeps the loss's
working set for the whole run, where eager training would reuse that memory: a few MiB at 400x400 (the 100-frame
scene peaked at 1162 MiB against 1159 eager), hundreds of MiB at 1920x1080 (the forward saves 235 MiB for the
backward there: the bytes torch.autograd.graph.saved_tensors_hooks sees in one photometric_loss on random
(1080, 1920, 3) CPU images). So images above ``max_pixels`` run eagerly (larger images
make longer kernels, so the launches the graphs save weigh less), at most ``max_graphs`` pairs are recorded, and a
recording that fails (out of memory, say) is logged and its calls run eagerly. What a graphed call returns lives in
the graphs' buffers until the next replay of the same pair: the trainer reads it within the step.
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

from pipeline.log import get_logger
from stages.optimize.losses import photometric_loss

log = get_logger("optimize")


class GraphedPhotometricLoss:
    """``photometric_loss(render, target, ssim_lambda)`` for CUDA tensors, through CUDA graphs per image shape.

    Call :meth:`start_step` at the start of every training step (it restarts the count of calls in the step); then
    ``loss, l1, ssim = graphed(render, target, ssim_lambda)`` as :func:`stages.optimize.losses.photometric_loss`, with
    render (H, W, 3) requiring grad and target (H, W, 3) not; on the graphed path only ``loss`` carries a gradient
    (l1 and ssim come back detached, for the log). ``ssim_lambda`` is fixed per instance (a constant of
    the recorded graphs); another value, CPU tensors, a target that requires grad, a render that does not, an image
    of more than ``max_pixels`` pixels, a shape beyond ``max_graphs`` pairs or one whose recording failed run
    eagerly. ``graphed_calls`` / ``eager_calls`` count what ran how.
    """

    def __init__(self, ssim_lambda: float, max_graphs: int = 8, max_pixels: int = 1024 * 1024):
        self.ssim_lambda = float(ssim_lambda)
        self.max_graphs = max_graphs
        self.max_pixels = max_pixels
        self._graphs: dict[tuple, Optional[Callable]] = {}      # None: this key runs eagerly (recording failed)
        self._position = 0
        self.graphed_calls = 0
        self.eager_calls = 0

    def start_step(self) -> None:
        self._position = 0

    def __call__(self, render: torch.Tensor, target: torch.Tensor,
                 ssim_lambda: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        position, self._position = self._position, self._position + 1
        if (float(ssim_lambda) != self.ssim_lambda or render.device.type != "cuda" or not render.requires_grad
                or target.requires_grad or not torch.is_grad_enabled()):
            self.eager_calls += 1
            return photometric_loss(render, target, ssim_lambda)
        key = (position, tuple(render.shape), tuple(target.shape), render.dtype, target.dtype, render.device)
        graphed = self._graph_for(key, render, target)
        if graphed is None:
            self.eager_calls += 1
            return photometric_loss(render, target, ssim_lambda)
        self.graphed_calls += 1
        total, l1, ssim_value = graphed(render, target)
        # The graphs give l1 and ssim no gradient of their own (they are read for the log): say so, detached.
        return total, l1.detach(), ssim_value.detach()

    def _graph_for(self, key: tuple, render: torch.Tensor, target: torch.Tensor) -> Optional[Callable]:
        """The graph pair for ``key``, recorded at its first call; None where the call runs eagerly."""
        if key in self._graphs:
            return self._graphs[key]
        if render.shape[:-1].numel() > self.max_pixels or \
                sum(g is not None for g in self._graphs.values()) >= self.max_graphs:
            return None
        try:
            graphed = self._record(render, target)
        except RuntimeError as error:          # torch.OutOfMemoryError included
            log.warning(f"optimize: recording the photometric loss as CUDA graphs failed for images of shape "
                        f"{tuple(render.shape)} ({str(error).splitlines()[0]}); it runs eagerly for them")
            graphed = None
        self._graphs[key] = graphed
        return graphed

    def _record(self, render: torch.Tensor, target: torch.Tensor) -> Callable:
        """Record the forward and backward graphs on sample inputs shaped like these (warm-up on a side stream, then
        capture; the live tensors are not touched)."""
        weight = self.ssim_lambda

        def loss(render_sample: torch.Tensor, target_sample: torch.Tensor):
            total, l1, ssim_value = photometric_loss(render_sample, target_sample, weight)
            return total, l1.detach(), ssim_value.detach()         # only the total carries a gradient

        samples = (render.detach().clone().contiguous().requires_grad_(True), target.detach().clone().contiguous())
        with torch.cuda.device(render.device), warnings.catch_warnings():
            # The warm-up's backward on make_graphed_callables' side stream reaches the sample render's gradient
            # accumulator, made on this stream; torch warns of the stream mismatch. The samples are ours and
            # dropped after recording, so the warning says nothing about training.
            warnings.filterwarnings("ignore", message="The AccumulateGrad node's stream does not match")
            return torch.cuda.make_graphed_callables(loss, samples)
