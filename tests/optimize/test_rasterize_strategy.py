"""gsplat's DefaultStrategy (packed=False) driven by the PyTorch rasterizer on CPU: the meta it needs is there and
duplicate / split / prune happen exactly as its rules predict."""

from __future__ import annotations

import torch
from gsplat.strategy import DefaultStrategy

from stages.optimize.rasterize import rasterization
from tests.optimize.test_rasterize import random_scene


def test_default_strategy_duplicates_splits_and_prunes_with_the_torch_backend():
    width, height, n = 32, 24, 80
    means, quats, scales, opacities, colors, viewmats, Ks = random_scene(n, width, height, seed=3,
                                                                         dtype=torch.float32, size_px=2.0)
    scene_scale = 1.0
    strategy = DefaultStrategy(refine_start_iter=1, refine_every=2, grow_grad2d=1e-9, grow_scale3d=0.02,
                               prune_opa=0.05, reset_every=10_000, verbose=False)
    log_scales = scales.log()
    log_scales[: n // 2] = torch.log(torch.tensor(0.01))             # small: duplicated when the gradient is high
    log_scales[n // 2:] = torch.log(torch.tensor(0.05))              # large: split
    opacity_logits = torch.logit(opacities.clamp(0.3, 0.9))
    opacity_logits[::7] = torch.logit(torch.tensor(0.01))            # below prune_opa: pruned
    params = torch.nn.ParameterDict({
        "means": means, "scales": log_scales, "quats": quats, "opacities": opacity_logits, "colors": colors})
    optimizers = {key: torch.optim.Adam([p], lr=1e-4) for key, p in params.items()}
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=scene_scale)
    target = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(4))

    def render():
        return rasterization(params["means"], params["quats"], params["scales"].exp(),
                             torch.sigmoid(params["opacities"]), params["colors"], viewmats, Ks, width, height,
                             backend="torch")

    for step in range(3):
        image, _, info = render()
        assert info["backend"] == "torch" and info["gaussian_ids"] is None
        assert info["radii"].dtype == torch.int32 and info["radii"].shape == (1, len(params["means"]), 2)
        strategy.step_pre_backward(params, optimizers, state, step, info)
        (image - target).abs().mean().backward()
        assert info["means2d"].grad is not None and info["means2d"].grad.abs().sum() > 0
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if step < 2:
            strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
            continue

        # Step 2 refines. Predict its outcome from DefaultStrategy's rules and the state it will see.
        grads = info["means2d"].grad.clone()
        grads[..., 0] *= width / 2.0
        grads[..., 1] *= height / 2.0
        seen = (info["radii"] > 0).all(dim=-1)[0]
        grad2d = state["grad2d"] + grads[0].norm(dim=-1) * seen
        count = state["count"] + seen
        high = grad2d / count.clamp_min(1) > strategy.grow_grad2d
        small = params["scales"].exp().amax(dim=-1) <= strategy.grow_scale3d * scene_scale
        duplicated, split = high & small, high & ~small
        low = torch.sigmoid(params["opacities"].detach()) < strategy.prune_opa
        expected_pruned = low[~split].sum() + low[duplicated].sum() + 2 * low[split].sum()
        assert duplicated.sum() > 0 and split.sum() > 0 and expected_pruned > 0
        n_before = len(params["means"])
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        assert len(params["means"]) == n_before + duplicated.sum() + split.sum() - expected_pruned

    # the densified model still renders and trains
    image, _, info = render()
    (image - target).abs().mean().backward()
    assert params["means"].grad is not None and torch.isfinite(params["means"].grad).all()
