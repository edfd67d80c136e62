"""Attention kernels on the shapes of PAGE-4D's global and frame attention: which SDPA kernel is fastest, and how far
the geometry network's 100-frame time is from the attention floor.

    python -m bench.attention_bench --gpu        # writes bench/results/attention_gpu.json
    python -m bench.attention_bench --cpu        # a small shape on the CPU (smoke test of the script)

For F frames at HxW, the aggregator's global attention runs on one sequence of F * (H/14 * W/14 + 5) tokens with
16 heads of 64 channels, 24 times; the frame attention on F sequences of (H/14 * W/14 + 5) tokens, 24 times. Each
kernel that PyTorch's SDPA offers (cuDNN, FlashAttention-2, memory-efficient) is timed on random bf16 inputs (median
of ``--repeats`` after a warm-up, CUDA events) and its throughput given as 4 * Lq * Lk * D * heads FLOP per call
(the two matrix products, forward only). The JSON also gives the implied time of the 24 global plus 24 frame
attentions per network call, for comparison with the geometry benchmark's aggregator time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Optional

import torch
import torch.nn.functional as F

from bench.common import RESULTS, environment

KERNELS = ("cudnn", "flash", "efficient")
HEADS, HEAD_DIM, BLOCKS = 16, 64, 24      # page4d-1b: 1024 channels, 24 frame + 24 global blocks
SPECIAL_TOKENS = 5                        # one camera token and four register tokens per frame


def tokens_per_frame(height: int, width: int, patch: int = 14) -> int:
    return (height // patch) * (width // patch) + SPECIAL_TOKENS


def attention_flop(batch: int, length: int) -> float:
    """Forward FLOP of softmax(q k^T) v for ``batch`` sequences of ``length`` tokens (both matrix products)."""
    return 4.0 * batch * HEADS * length * length * HEAD_DIM


def time_kernel(kernel: str, batch: int, length: int, repeats: int, device: str) -> Optional[float]:
    """Median seconds of one SDPA call with ``kernel`` on (batch, 16, length, 64) bf16; None where it is refused."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}[kernel]
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(batch, HEADS, length, HEAD_DIM, device=device, dtype=dtype, generator=generator)
               for _ in range(3))
    try:
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v)                                    # warm-up (and plan caching)
            times = []
            for _ in range(repeats):
                if device == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    F.scaled_dot_product_attention(q, k, v)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end) / 1000)
                else:
                    import time
                    start_s = time.perf_counter()
                    F.scaled_dot_product_attention(q, k, v)
                    times.append(time.perf_counter() - start_s)
    except RuntimeError as err:                    # the kernel does not take this shape, dtype or device
        print(f"    {kernel}: refused ({str(err).splitlines()[0][:120]})")
        return None
    return statistics.median(times)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--gpu", action="store_true")
    mode.add_argument("--cpu", action="store_true")
    parser.add_argument("--sizes", default="",
                        help="FRAMESxWIDTHxHEIGHT,... (default: 50/100/200 at 518x518 and 100 at 518x294 on the GPU, "
                             "2 frames at 126x126 on the CPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="", help="output file (default bench/results/attention_{gpu,cpu}.json)")
    args = parser.parse_args(argv)
    device = "cuda" if args.gpu else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("attention_bench: --gpu needs CUDA", file=sys.stderr)
        return 2
    default = "50x518x518,100x518x518,200x518x518,100x518x294" if args.gpu else "2x126x126"
    sizes = [tuple(int(v) for v in text.split("x")) for text in (args.sizes or default).split(",")]
    out_path = args.json or str(RESULTS / f"attention_{device if device == 'cpu' else 'gpu'}.json")
    record = {"benchmark": "attention", "environment": environment(device), "heads": HEADS, "head_dim": HEAD_DIM,
              "dtype": "bfloat16" if device == "cuda" else "float32", "repeats": args.repeats, "sizes": []}
    print(f"{'shape':<34}{'kernel':<11}{'ms':>10}{'TFLOP/s':>10}")
    for frames, width, height in sizes:
        length = tokens_per_frame(height, width)
        entry = {"frames": frames, "width": width, "height": height, "tokens_per_frame": length}
        for name, batch, seq in (("global", 1, frames * length), ("frame", frames, length)):
            result = {}
            for kernel in KERNELS:
                seconds = time_kernel(kernel, batch, seq, args.repeats, device)
                if seconds is None:
                    result[kernel] = None
                    continue
                tflops = attention_flop(batch, seq) / seconds / 1e12
                result[kernel] = {"seconds": seconds, "tflops": tflops}
                print(f"{f'{name} {frames}x{width}x{height} ({batch}x{seq})':<34}{kernel:<11}"
                      f"{seconds * 1e3:>10.2f}{tflops:>10.1f}")
            entry[name] = result
        best = {name: min((r["seconds"] for r in entry[name].values() if r), default=None)
                for name in ("global", "frame")}
        if all(v is not None for v in best.values()):
            entry["attention_seconds_per_call"] = BLOCKS * (best["global"] + best["frame"])
            print(f"  24 global + 24 frame attentions with the fastest kernels: "
                  f"{entry['attention_seconds_per_call']:.2f} s per network call")
        record["sizes"].append(entry)
        with open(out_path, "w") as f:                       # rewritten after every size: a cut run keeps what ran
            json.dump(record, f, indent=2)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
