"""bench/plane_sampler_bench.py on the CPU: one row per (points, method), the baseline's speed-up exactly 1, and a
method that disagrees with the others stops the run before anything is timed."""

from __future__ import annotations

import json

import pytest
import torch

import bench.plane_sampler_bench as psb
from stages.optimize.plane_sampler import METHODS


def test_every_method_is_timed_beside_the_gather_baseline(tmp_path):
    out = tmp_path / "sampler.json"
    assert psb.main(["--points", "300", "700", "--repeats", "1", "--device", "cpu", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert [(r["points"], r["method"]) for r in rows] == [(m, k) for m in (300, 700) for k in METHODS]
    assert all(r["ms_forward_backward"] > 0 and len(r["ms_rounds"]) == 5 for r in rows)
    assert {r["speedup_over_gather"] for r in rows if r["method"] == "gather"} == {1.0}
    assert record["environment"]["device_type"] == "cpu"


def test_a_method_that_disagrees_stops_the_run(monkeypatch):
    field = psb.preset_field("cpu")
    coords = (torch.rand(50, 4) * 2 - 1).requires_grad_(True)
    upstream = torch.randn(50, 2, 16)
    real = psb.sample_plane_products

    def off_by_a_little(table, coords, layout, method):
        out = real(table, coords, layout, method=method)
        return out * 1.01 if method == "gather" else out

    monkeypatch.setattr(psb, "sample_plane_products", off_by_a_little)
    with pytest.raises(SystemExit, match="gather disagrees"):
        psb.check_agreement(field.table, coords, upstream, field.layout)
