"""Densification: gsplat 1.5.3's DefaultStrategy with the opacity reset that 1.5.3 never performs.

gsplat 1.5.3 tests ``step % reset_every == 0 & step > 0``, which Python reads as a chained comparison that is always
False (fixed on gsplat main by PR #776, unreleased). :class:`DensifyStrategy` overrides ``step_post_backward`` with
the intended condition and otherwise reuses DefaultStrategy's own grow/prune/state code unchanged. It also accepts a
list of render infos (several cameras rendered separately in one step, e.g. at different times), caps growth at a
Gaussian budget, and reports what it did.

Because every per-Gaussian 4D attribute (time centres and widths, motion coefficients, anchor times, dynamic flags)
is an entry of ``params`` (see :mod:`stages.optimize.gaussians`), gsplat's split/duplicate/remove keep them aligned
with the means; deformation networks and shared bases are not in ``params`` and are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa


@dataclass
class DensifyEvents:
    """What one ``step_post_backward`` call did."""

    duplicated: int = 0
    split: int = 0
    pruned: int = 0
    opacity_reset: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.duplicated or self.split or self.pruned)


@dataclass
class DensifyStrategy(DefaultStrategy):
    """DefaultStrategy + a working opacity reset + several infos per step + an optional Gaussian budget.

    ``max_gaussians`` (0 = none): growth is skipped while the model holds at least this many Gaussians.
    ``reset_every`` <= 0 disables the opacity reset.
    """

    max_gaussians: int = 0

    def _update_state(self, params, state: dict[str, Any], info: dict[str, Any], packed: bool = False) -> None:
        """DefaultStrategy's statistics (non-packed), accumulated densely: the same sums as gsplat's
        ``index_add_`` over ``torch.where(radii > 0)``, without the host synchronisation that ``where`` costs."""
        if packed or self.refine_scale2d_stop_iter > 0:
            return super()._update_state(params, state, info, packed=packed)
        grads = info[self.key_for_gradient].absgrad if self.absgrad else info[self.key_for_gradient].grad
        grads = grads.clone()                                                      # (C, N, 2)
        grads[..., 0] *= info["width"] / 2.0 * info["n_cameras"]
        grads[..., 1] *= info["height"] / 2.0 * info["n_cameras"]
        visible = (info["radii"] > 0).all(dim=-1)                                  # (C, N)
        n = len(params["means"])
        if state["grad2d"] is None:
            state["grad2d"] = torch.zeros(n, device=grads.device)
        if state["count"] is None:
            state["count"] = torch.zeros(n, device=grads.device)
        state["grad2d"] += torch.where(visible, grads.norm(dim=-1), 0.0).sum(dim=0)
        state["count"] += visible.sum(dim=0).float()

    def step_post_backward(self, params, optimizers, state: dict[str, Any], step: int,
                           info: Union[dict[str, Any], list[dict[str, Any]]], packed: bool = False) -> DensifyEvents:
        events = DensifyEvents()
        if step >= self.refine_stop_iter:
            return events
        for one in info if isinstance(info, (list, tuple)) else [info]:
            self._update_state(params, state, one, packed=packed)

        reset_every = self.reset_every if self.reset_every > 0 else None
        if (step > self.refine_start_iter and step % self.refine_every == 0
                and (reset_every is None or step % reset_every >= self.pause_refine_after_reset)):
            if not self.max_gaussians or len(params["means"]) < self.max_gaussians:
                events.duplicated, events.split = self._grow_gs(params, optimizers, state, step)
            events.pruned = self._prune_gs(params, optimizers, state, step)
            state["grad2d"].zero_()
            state["count"].zero_()
            if self.refine_scale2d_stop_iter > 0:
                state["radii"].zero_()

        if reset_every is not None and step > 0 and step % reset_every == 0:      # the condition gsplat meant
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)
            events.opacity_reset = True
        return events


def make_strategy(cfg, verbose: bool = False) -> DensifyStrategy:
    """The strategy an :class:`~stages.optimize.config.OptimizeConfig` asks for (refinement off if not ``densify``)."""
    return DensifyStrategy(
        prune_opa=cfg.prune_opacity,
        grow_grad2d=cfg.grow_grad2d,
        grow_scale3d=cfg.grow_scale3d,
        prune_scale3d=cfg.prune_scale3d,
        refine_start_iter=cfg.refine_start,
        refine_stop_iter=cfg.refine_stop if cfg.densify else 0,     # 0: step_post_backward does nothing
        reset_every=cfg.reset_every if cfg.densify else 0,
        refine_every=max(1, cfg.refine_every),
        absgrad=cfg.absgrad,
        verbose=verbose,
        max_gaussians=cfg.max_gaussians,
    )


def strategy_state_tensors(state: dict[str, Any]) -> dict[str, Any]:
    """A copy of the strategy state for checkpoints (tensors detached and cloned)."""
    return {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in state.items()}
