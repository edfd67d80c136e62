"""LeanFusedAdam against torch.optim.Adam(fused=True): the same updates, bit for bit."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from stages.optimize.fused_adam import LeanFusedAdam, without_dynamo_guard


def _groups(seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {"means": (50, 3), "quats": (50, 4), "opacities": (50,), "shN": (50, 15, 3), "field": (7, 5)}
    return [{"name": name, "params": [torch.nn.Parameter(torch.randn(*shape, generator=generator))],
             "lr": 10.0 ** -(2 + i % 3)} for i, (name, shape) in enumerate(shapes.items())]


def _replace_rows(optimizer: torch.optim.Adam, group: dict, keep: torch.Tensor) -> None:
    """What gsplat's strategy does when it prunes: a new Parameter of the kept rows, its state moved and cut."""
    old = group["params"][0]
    new = torch.nn.Parameter(old.detach()[keep].clone())
    state = optimizer.state.pop(old)
    optimizer.state[new] = {k: (v[keep] if k != "step" else v) for k, v in state.items()}
    group["params"][0] = new


def test_lean_step_matches_torch_fused_adam_bit_for_bit(monkeypatch):
    reference = torch.optim.Adam(_groups(0), eps=1e-15, fused=True)
    lean = LeanFusedAdam(_groups(0), eps=1e-15)
    torch_step, fallbacks = torch.optim.Adam.step, []

    def counted(self, *args, **kwargs):           # the lean path must not hand the step to torch's
        if self is lean:
            fallbacks.append(1)
        return torch_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counted)
    keep = torch.arange(50) % 3 != 0
    for step in range(12):
        generator = torch.Generator().manual_seed(100 + step)
        for a, b in zip(reference.param_groups, lean.param_groups):
            assert a["name"] == b["name"]
            grad = torch.randn(a["params"][0].shape, generator=generator)
            skip = a["name"] == "field" and step in (3, 4)        # a group without a gradient this step
            a["params"][0].grad = None if skip else grad.clone()
            b["params"][0].grad = None if skip else grad.clone()
            a["lr"] = b["lr"] = a["lr"] * 0.9                       # schedules change the rates every step
        reference.step()
        lean.step()
        if step == 5:                                                  # densification between steps
            for a, b in zip(reference.param_groups[:2], lean.param_groups[:2]):
                _replace_rows(reference, a, keep)
                _replace_rows(lean, b, keep)
        for a, b in zip(reference.param_groups, lean.param_groups):
            pa, pb = a["params"][0], b["params"][0]
            assert torch.equal(pa, pb), (step, a["name"])
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(reference.state[pa][key], lean.state[pb][key]), (step, a["name"], key)
    assert lean.state_dict()["state"].keys() == reference.state_dict()["state"].keys()
    assert not fallbacks


def test_unusual_settings_fall_back_to_torch():
    params = [torch.nn.Parameter(torch.ones(4))]
    lean = LeanFusedAdam(params, lr=0.1, amsgrad=True)
    reference = torch.optim.Adam([torch.nn.Parameter(torch.ones(4))], lr=0.1, amsgrad=True, fused=True)
    for optimizer in (lean, reference):
        optimizer.param_groups[0]["params"][0].grad = torch.arange(4.0)
        optimizer.step()
    assert torch.equal(params[0], reference.param_groups[0]["params"][0])
    assert "max_exp_avg_sq" in lean.state[params[0]]


def test_the_optimizer_never_imports_the_compiler():
    """Building, stepping, zeroing, saving and loading a LeanFusedAdam leaves torch._dynamo unimported (a fresh
    interpreter: the test session has imported it); torch.optim.Adam's own methods import it."""
    script = textwrap.dedent("""
        import sys, torch
        from stages.optimize.fused_adam import LeanFusedAdam
        p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.ones(2))
        optimizer = LeanFusedAdam([{"params": [p], "lr": 0.1}], eps=1e-15)
        optimizer.add_param_group({"params": [q], "lr": 0.2})
        p.grad, q.grad = torch.ones(3), torch.ones(2)
        optimizer.step()
        optimizer.zero_grad()
        optimizer.load_state_dict(optimizer.state_dict())
        print(int("torch._dynamo" in sys.modules), float(p[0]), float(q[0]))
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        print(int("torch._dynamo" in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2]).stdout.split()
    assert out[0] == "0" and out[3] == "1"
    assert [float(out[1]), float(out[2])] == pytest.approx([-0.1, 0.8], rel=1e-6)   # Adam's first step: -lr


def test_only_the_disable_dynamo_wrapper_is_taken_off():
    def plain(x):
        return x + 1

    wrapped = torch._disable_dynamo(plain)
    assert without_dynamo_guard(wrapped) is plain and without_dynamo_guard(plain) is plain
    other = functools.wraps(plain)(lambda x: x + 2)       # another decorator keeps its wrapper
    assert without_dynamo_guard(other) is other
    assert without_dynamo_guard(torch.optim.Optimizer.zero_grad) is not torch.optim.Optimizer.zero_grad
