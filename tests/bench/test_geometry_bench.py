"""geometry_bench keeps what finished: the JSON after every size, and sweeps split over calls (--merge).

Runs the GPU part's code path on the CPU with page4d-tiny at a few small sizes (seconds)."""

from __future__ import annotations

import json

import pytest

from bench import geometry_bench

SMALL = ["--gpu", "--device", "cpu", "--model", "page4d-tiny", "--repeats", "1", "--long-frames", "0"]


def test_a_run_cut_short_keeps_the_sizes_that_finished(tmp_path, monkeypatch):
    out = tmp_path / "geometry.json"
    real = geometry_bench.measure
    calls = []

    def measure_then_stop(fn, device, repeats):
        calls.append(1)
        if len(calls) == 3:                       # size 1: full + aggregator; size 2: the run is killed here
            raise KeyboardInterrupt("timeout")
        return real(fn, device, repeats)

    monkeypatch.setattr(geometry_bench, "measure", measure_then_stop)
    with pytest.raises(KeyboardInterrupt):
        geometry_bench.main(SMALL + ["--sizes", "2x28x28,2x56x28", "--json", str(out)])
    record = json.loads(out.read_text())
    assert record["complete"] is False
    assert list(record["ours"]) == ["2x28x28"]
    assert record["ours"]["2x28x28"]["full"]["seconds"] > 0
    assert record["environment"]["command"] and record["device"].startswith("cpu")


def test_merge_adds_sizes_of_a_later_call(tmp_path):
    out = tmp_path / "geometry.json"
    geometry_bench.main(SMALL + ["--sizes", "2x28x28", "--json", str(out)])
    first = json.loads(out.read_text())["ours"]["2x28x28"]
    geometry_bench.main(SMALL + ["--sizes", "3x28x28", "--json", str(out), "--merge"])
    record = json.loads(out.read_text())
    assert record["complete"] is True
    assert record["ours"]["2x28x28"] == first and "seconds" in record["ours"]["3x28x28"]["full"]
    assert record["merged_with"][0].endswith(f"--sizes 2x28x28 --json {out}")
    # An earlier call's official timings stay when a later call runs ours alone (no official checkout).
    record["official"] = {"2x28x28": {"full": {"seconds": 1.0}}}
    out.write_text(json.dumps(record))
    geometry_bench.main(SMALL + ["--sizes", "4x28x28", "--json", str(out), "--merge", "--long-frames", "6",
                                 "--long-size", "28x28", "--window", "4", "--overlap", "2"])
    record = json.loads(out.read_text())
    assert record["official"] == {"2x28x28": {"full": {"seconds": 1.0}}}
    assert list(record["ours"]) == ["2x28x28", "3x28x28", "4x28x28"] and record["windowed"]["frames"] == 6
    geometry_bench.main(SMALL + ["--sizes", "3x28x28", "--json", str(out)])          # without --merge: replaced
    record = json.loads(out.read_text())
    assert list(record["ours"]) == ["3x28x28"] and "windowed" not in record


def test_ratios_cover_every_size_both_measured():
    from bench.geometry_bench import ratios

    official = {"100x518x518": {"full": {"seconds": 6.0, "peak_gib": 36.0}, "aggregator": {"seconds": 5.0,
                                                                                          "peak_gib": 35.0}},
                "50x518x518": {"full": {"error": "out of memory"}, "aggregator": {"error": "out of memory"}}}
    ours = {"100x518x518": {"full": {"seconds": 3.0, "peak_gib": 12.0}, "aggregator": {"seconds": 2.5,
                                                                                      "peak_gib": 7.0}},
            "50x518x518": {"full": {"seconds": 1.0, "peak_gib": 6.0}, "aggregator": {"seconds": 0.9, "peak_gib": 5.0}},
            "200x518x518": {"full": {"seconds": 9.0, "peak_gib": 20.0}, "aggregator": {"seconds": 8.0,
                                                                                      "peak_gib": 19.0}}}
    out = ratios(official, ours)
    assert out["100x518x518"] == {"full_time_ratio": 2.0, "full_memory_ratio": 3.0, "aggregator_time_ratio": 2.0,
                                  "aggregator_memory_ratio": 5.0}
    assert out["50x518x518"] == {} and "200x518x518" not in out
