"""LPIPS-alex against the official values on the five shared fixture pairs (issue 7: within 1e-4 of each).

    python -m bench.lpips_parity_bench [--device cpu|cuda]     # -> bench/results/lpips_parity.json

The fixture (``../shared/fixtures/lpips``: reference / distorted PNG pairs and ``reference_values.csv`` with the
published values of the official LPIPS-alex) is read in place; our metric runs with the converted offline backbone
weights (``prefer_torchvision=False``, what a host without the torchvision cache uses), inputs in [-1, 1] as the
standard protocol feeds them. Also VGG on the fixture's I04 pair, beside the value reproduced with the unmodified
``lpips`` package, since there is no published LPIPS-vgg value for these pairs.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, environment
from pipeline.io import write_json

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "lpips"
TOLERANCE = 1e-4


def fixture_pair(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(distorted, reference) as float64 (H, W, 3) in [0, 1]."""
    import imageio.v3 as iio

    return (iio.imread(FIXTURE / "dist" / f"{name}.png") / 255.0, iio.imread(FIXTURE / "ref" / f"{name}.png") / 255.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=RESULTS / "lpips_parity.json")
    args = parser.parse_args(argv)
    if not (FIXTURE / "reference_values.csv").is_file():
        print(f"lpips_parity: the fixture is not at {FIXTURE}", file=sys.stderr)
        return 2
    from stages.evaluate.lpips_metric import LPIPS

    with open(FIXTURE / "reference_values.csv") as f:
        references = {row["image"]: row for row in csv.DictReader(f)}
    alex = LPIPS("alex", args.device, prefer_torchvision=False)
    pairs = []
    start = time.perf_counter()
    for name, row in references.items():
        dist, ref = fixture_pair(name)
        ours = alex(dist, ref)
        official = float(row["lpips_alex_official"])
        pairs.append({"image": name, "lpips_alex": ours, "official": official, "abs_diff": abs(ours - official)})
        print(f"{name}: ours {ours:.5f}  official {official:.5f}  |diff| {abs(ours - official):.1e}")
    vgg = LPIPS("vgg", args.device, prefer_torchvision=False)
    dist, ref = fixture_pair("I04")
    vgg_row = {"image": "I04", "lpips_vgg": vgg(dist, ref),
               "reproduced": float(references["I04"]["lpips_vgg_reproduced"])}
    vgg_row["abs_diff"] = abs(vgg_row["lpips_vgg"] - vgg_row["reproduced"])
    worst = max(p["abs_diff"] for p in pairs)
    record = {"benchmark": "lpips_parity", "environment": environment(args.device),
              "weights": {"alex": alex.source, "vgg": vgg.source}, "tolerance": TOLERANCE, "pairs": pairs,
              "max_abs_diff": worst, "meets_target": worst <= TOLERANCE, "vgg_I04": vgg_row,
              "seconds": round(time.perf_counter() - start, 2)}
    write_json(args.json, record)
    print(f"max |ours - official| = {worst:.1e} over {len(pairs)} pairs ({'<=' if worst <= TOLERANCE else '>'} "
          f"{TOLERANCE:g}); wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
