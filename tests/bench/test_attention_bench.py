"""bench/attention_bench.py on the CPU: the token and FLOP arithmetic, and the JSON it writes."""

import json

import pytest

from bench import attention_bench


def test_token_and_flop_counts_match_the_network():
    # 518x518: 37 x 37 patches of 14 pixels plus the camera token and 4 registers.
    assert attention_bench.tokens_per_frame(518, 518) == 37 * 37 + 5
    assert attention_bench.tokens_per_frame(294, 518) == 21 * 37 + 5
    # The figure: the 24 global attentions of 100 frames at 518x518 are about 1.9e15 FLOP.
    length = 100 * attention_bench.tokens_per_frame(518, 518)
    total = 24 * attention_bench.attention_flop(1, length)
    assert total == pytest.approx(4 * 16 * 64 * length**2 * 24)
    assert 1.8e15 < total < 1.9e15


def test_cpu_run_writes_every_kernel_it_tried(tmp_path):
    out = tmp_path / "attention.json"
    assert attention_bench.main(["--cpu", "--sizes", "2x28x28", "--repeats", "1", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    (size,) = record["sizes"]
    assert size["tokens_per_frame"] == 9 and set(size["global"]) == {"cudnn", "flash", "efficient"}
    timed = [r for r in size["global"].values() if r]
    assert timed, "at least one kernel runs on the CPU"
    for r in timed:
        assert r["tflops"] == pytest.approx(attention_bench.attention_flop(1, 18) / r["seconds"] / 1e12)
