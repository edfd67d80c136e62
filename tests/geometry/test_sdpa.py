"""The attention kernel probe (stages/geometry/page4d/sdpa.py), on the CPU with stand-ins for the CUDA kernels and
timers: the fastest kernel that agrees wins, refusals are recorded with their reason, and PyTorch's warnings about
refusing kernels stay inside the probe."""

from __future__ import annotations

import warnings

import pytest
import torch

from stages.geometry.page4d import sdpa


class _FakeEvent:
    """torch.cuda.Event stand-in: the elapsed time between two records is the 'kernel time' set by the fake run."""

    clock = 0.0

    def __init__(self, enable_timing: bool = True):
        self.at = 0.0

    def record(self):
        self.at = _FakeEvent.clock

    def synchronize(self):
        pass

    def elapsed_time(self, end: "_FakeEvent") -> float:
        return end.at - self.at


def _install(monkeypatch, speeds: dict[str, float], wrong: tuple[str, ...] = ()):
    """cudnn refuses (with a warning, as PyTorch does for float32); the others take ``speeds`` ms; ``wrong`` ones
    return the attention plus 1."""

    def run(kernel, q, k, v, scale):
        if kernel == "cudnn":
            warnings.warn("cuDNN attention kernel not used because: float32", UserWarning)
            raise RuntimeError("No available kernel. Aborting execution.\nmore detail")
        _FakeEvent.clock += speeds[kernel]
        return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v + (1.0 if kernel in wrong else 0.0)

    monkeypatch.setattr(sdpa, "_run", run)
    monkeypatch.setattr(sdpa, "_backends", lambda: {name: name for name in ("cudnn", "flash", "efficient", "math")})
    monkeypatch.setattr(torch.cuda, "Event", _FakeEvent)
    monkeypatch.setattr(sdpa, "_refused", {})


@pytest.mark.parametrize("wrong, expected", [((), "efficient"), (("efficient",), "flash")])
def test_the_probe_keeps_the_fastest_agreeing_kernel_and_swallows_refusal_warnings(monkeypatch, wrong, expected):
    _install(monkeypatch, {"flash": 2.0, "efficient": 1.0}, wrong)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=g) for _ in range(3))
    key = (0, "float32", 4, 2, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                  # any warning that escapes fails the test
        assert sdpa._autotune(key, q, k, v, 0.5) == expected
    assert sdpa._refused[key]["cudnn"] == "No available kernel. Aborting execution."
    # the first kernel that runs (flash) is the reference: a kernel that disagrees with it is refused
    assert ("efficient" in sdpa._refused[key]) == bool(wrong)
    # outside the probe, warnings are untouched
    with pytest.warns(UserWarning, match="outside"):
        warnings.warn("outside the probe", UserWarning)
