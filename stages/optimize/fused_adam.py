"""Adam with a lean step for the optimize stage's many small parameter groups.

A training step at 100k Gaussians is bound by the host (docs/gaussians.md, "The cost of a training step"), and
``torch.optim.Adam(fused=True).step()`` spends most of its time in Python: per group it builds its lists through
``_init_group``, sorts tensors by device and dtype, and runs the profiler and hook machinery around the call, for
two kernels per group. :class:`LeanFusedAdam` issues the same kernels - one ``_foreach_add_`` of the step counts (for
every group at once) and one ``_fused_adam_`` per group - with nothing else, so its updates are bit-identical to
``torch.optim.Adam(fused=True)`` (tested). It keeps Adam's state layout (``step``, ``exp_avg``, ``exp_avg_sq``), so
checkpoints, gsplat's strategy (which edits ``param_groups`` and ``state`` when it densifies) and ``load_state_dict``
work unchanged.

Only the plain case takes the lean path: fused, no amsgrad, no maximize, no closure, and every parameter of a group
of one device and dtype; anything else falls back to ``torch.optim.Adam.step``.

It also never imports ``torch._dynamo``. torch wraps ``Optimizer.add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` in ``torch._disable_dynamo`` (so that a compiled region does not trace them), whose first call
imports the compiler: about 1 s on a CPU, and the 3.2-3.9 s that training's set-up spent building the optimizer on
an H200 host (bench/sweeps/scene_setup42.txt). Training calls these methods outside any compiled region, so
:class:`LeanFusedAdam` calls the functions inside those wrappers (:func:`without_dynamo_guard`); the lean step itself
skips ``Adam.step``'s wrapper, which imports it too.
"""

from __future__ import annotations

from typing import Callable

import torch

# The code object of the wrapper torch._disable_dynamo puts around a method (the same for every method it wraps).
_DISABLE_DYNAMO_WRAPPER = torch._disable_dynamo(lambda: None).__code__


def without_dynamo_guard(method: Callable) -> Callable:
    """``method`` without torch._disable_dynamo's wrapper, if that wrapper is the one around it; else ``method``
    unchanged (another torch version, another decorator)."""
    inner = getattr(method, "__wrapped__", None)
    if inner is not None and getattr(method, "__code__", None) is _DISABLE_DYNAMO_WRAPPER:
        return inner
    return method


_ADD_PARAM_GROUP = without_dynamo_guard(torch.optim.Optimizer.add_param_group)
_ZERO_GRAD = without_dynamo_guard(torch.optim.Optimizer.zero_grad)
_STATE_DICT = without_dynamo_guard(torch.optim.Optimizer.state_dict)
_LOAD_STATE_DICT = without_dynamo_guard(torch.optim.Optimizer.load_state_dict)


def fused_adam_supported(device: torch.device) -> bool:
    """Whether torch has a fused Adam kernel for ``device``: CUDA, and the CPU since torch 2.4."""
    from torch.utils import _foreach_utils
    devices = getattr(_foreach_utils, "_get_fused_kernels_supported_devices", lambda: ["cuda"])()
    return device.type in devices


class LeanFusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(params, fused=True, ...)`` whose ``step()`` skips torch.optim's per-step Python."""

    def __init__(self, params, **kwargs):
        kwargs["fused"] = True
        super().__init__(params, **kwargs)

    # torch.optim.Optimizer's, less the torch._disable_dynamo wrapper (the module's docstring says why)
    def add_param_group(self, param_group: dict) -> None:
        _ADD_PARAM_GROUP(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _ZERO_GRAD(self, set_to_none)

    def state_dict(self) -> dict:
        return _STATE_DICT(self)

    def load_state_dict(self, state_dict: dict) -> None:
        _LOAD_STATE_DICT(self, state_dict)

    def _lean(self) -> bool:
        return all(not g["amsgrad"] and not g["maximize"] and not g["differentiable"]
                   and not g.get("decoupled_weight_decay", False) and not isinstance(g["lr"], torch.Tensor)
                   for g in self.param_groups)

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None or not self._lean():
            return super().step(closure)
        batches = []                        # per group: (group, params, grads, exp_avgs, exp_avg_sqs, steps)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            first = params[0]
            if any(p.device != first.device or p.dtype != first.dtype or p.grad.is_sparse for p in params):
                return super().step()
            states = []
            for p in params:
                state = self.state[p]
                if len(state) == 0:        # as Adam._init_group does for fused: a float32 step on the device
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                states.append(state)
            batches.append((group, params, [p.grad for p in params], [s["exp_avg"] for s in states],
                            [s["exp_avg_sq"] for s in states], [s["step"] for s in states]))
        if not batches:
            return None
        steps_by_device: dict[torch.device, list[torch.Tensor]] = {}
        for batch in batches:
            steps_by_device.setdefault(batch[1][0].device, []).extend(batch[5])
        for steps in steps_by_device.values():
            torch._foreach_add_(steps, 1)
        for group, params, grads, exp_avgs, exp_avg_sqs, steps in batches:
            beta1, beta2 = group["betas"]
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                               beta1=float(beta1), beta2=float(beta2), weight_decay=group["weight_decay"],
                               eps=group["eps"], maximize=False, grad_scale=None, found_inf=None)
        return None
