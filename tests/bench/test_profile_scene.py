"""bench/profile_scene.py's arithmetic: one step's cost is the long profiled run's totals minus the short one's,
divided by the steps between them; only device activities (kernels, copies) add up to the device's busy time."""

from __future__ import annotations

import torch

from bench.profile_optimize import is_device_activity
from bench.profile_scene import per_step


def test_per_step_costs_are_the_difference_of_the_two_runs():
    short = {"aten::mul": {"calls": 10, "self_cpu_us": 100.0, "self_device_us": 40.0, "device_activity": False},
             "kernel_a": {"calls": 10, "self_cpu_us": 0.0, "self_device_us": 40.0, "device_activity": True}}
    long = {"aten::mul": {"calls": 30, "self_cpu_us": 500.0, "self_device_us": 120.0, "device_activity": False},
            "kernel_a": {"calls": 30, "self_cpu_us": 0.0, "self_device_us": 120.0, "device_activity": True},
            "only_later": {"calls": 4, "self_cpu_us": 8000.0, "self_device_us": 0.0, "device_activity": False}}
    rows = {r["operator"]: r for r in per_step(short, long, steps=4)}
    assert rows["aten::mul"] == {"operator": "aten::mul", "device_activity": False, "calls": 5.0,
                                 "self_cpu_ms": 0.1, "self_device_ms": 0.02}
    assert rows["kernel_a"]["self_device_ms"] == 0.02 and rows["kernel_a"]["device_activity"]
    assert rows["only_later"]["calls"] == 1.0 and rows["only_later"]["self_cpu_ms"] == 2.0
    # noise that makes the long run cheaper than the short one is clipped, not negative
    cheaper = {"aten::mul": {**long["aten::mul"], "self_cpu_us": 50.0}}
    assert per_step(short, cheaper, steps=4)[0]["self_cpu_ms"] == 0.0


def test_only_kernels_copies_and_memsets_count_as_device_work():
    """The optimizer's ``Optimizer.step#...`` range appears on the device timeline as a user annotation covering its
    kernels: counted as device work it added the optimizer's time twice (0.68 ms of the 100-frame scene's 5.10)."""
    from types import SimpleNamespace

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    assert is_device_activity(SimpleNamespace(device_type=cuda, is_user_annotation=False))
    assert not is_device_activity(SimpleNamespace(device_type=cuda, is_user_annotation=True))
    assert not is_device_activity(SimpleNamespace(device_type=cpu, is_user_annotation=False))
    assert is_device_activity(SimpleNamespace(device_type=cuda))          # a torch whose events lack the flag
