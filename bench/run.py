"""Run benchmarks by name: ``python -m bench.run NAME [ARGS...]`` or a group, ``gpu`` / ``cpu``.

Each benchmark is a module ``bench/<name>_bench.py`` that prints a table and writes ``bench/results/<name>*.json``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
GROUPS = {
    # In the order of the pipeline; each entry is (module, arguments).
    "gpu": [("geometry", ["--gpu"]), ("rasterizer", ["--gpu"]), ("synthetic", ["--gpu"]), ("optimize", ["--gpu"])],
    "cpu": [("synthetic", ["--cpu"]), ("rasterizer", ["--cpu"]), ("geometry", ["--cpu"])],
}


def available() -> list[str]:
    return sorted(p.stem.removesuffix("_bench") for p in BENCH_DIR.glob("*_bench.py"))


def run_one(name: str, args: list[str]) -> int:
    if name not in available():
        print(f"bench: no benchmark named '{name}' (available: {', '.join(available())})", file=sys.stderr)
        return 2
    cmd = [sys.executable, "-m", f"bench.{name}_bench", *args]
    print(f"$ {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=BENCH_DIR.parent)


def main(argv: list[str]) -> int:
    if not argv:
        print(f"usage: python -m bench.run NAME|gpu|cpu [ARGS...]; benchmarks: {', '.join(available())}")
        return 2
    name, args = argv[0], argv[1:]
    if name in GROUPS:
        codes = [run_one(n, a + args) for n, a in GROUPS[name] if n in available()]
        return max(codes, default=0)
    return run_one(name, args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
