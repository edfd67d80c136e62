"""The side-by-side table of ``scripts/speed_ab.sh``: training speed at two commits, timed in turn on one host.

    python -m bench.speed_ab_table --new NEW_1.json NEW_2.json --old OLD_1.json OLD_2.json [--out SUMMARY.json]

Each file is an ``optimize_bench --only speed`` result (or ``--only render``, or both). Per model and variant the
table has every run's it/s of either commit (in the order given: speed_ab.sh alternates new, old, new, old), their
medians, and new / old; a render section's frames per second at 800x800 come as the variant ``render-fps``. The
summary JSON holds the same rows, both commits and the files they came from.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Optional


def speed_runs(paths: list[Path]) -> tuple[dict[tuple[str, str], list[float]], list[str]]:
    """it/s of every run in ``paths`` keyed by (model, variant), in file order, and each file's commit; a render
    section's fps keyed by (model, 'render-fps'). A file with neither section raises KeyError."""
    runs: dict[tuple[str, str], list[float]] = {}
    commits = []
    for path in paths:
        data = json.loads(path.read_text())
        commits.append(str(data.get("environment", {}).get("git_commit")))
        speed, render = data.get("speed"), data.get("render")
        if speed is None and render is None:
            raise KeyError("speed")
        for row in speed["models"] if speed is not None else ():
            runs.setdefault((row["model"], row["variant"]), []).extend(row.get("it_per_s_runs") or [row["it_per_s"]])
        for row in render["models"] if render is not None else ():
            runs.setdefault((row["model"], "render-fps"), []).append(row["fps"])
    return runs, commits


def ab_rows(new_runs: dict[tuple[str, str], list[float]],
            old_runs: dict[tuple[str, str], list[float]]) -> list[dict]:
    """One row per (model, variant) timed at both commits: runs, medians and the ratio of the medians (None where
    the old median is 0)."""
    rows = []
    for key in [k for k in new_runs if k in old_runs]:
        new_median, old_median = statistics.median(new_runs[key]), statistics.median(old_runs[key])
        rows.append({"model": key[0], "variant": key[1], "new_it_per_s": new_runs[key],
                     "old_it_per_s": old_runs[key], "new_median": round(new_median, 1),
                     "old_median": round(old_median, 1),
                     "new_over_old": round(new_median / old_median, 3) if old_median else None})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", nargs="+", type=Path, required=True, help="speed results of the newer commit")
    parser.add_argument("--old", nargs="+", type=Path, required=True, help="speed results of the older commit")
    parser.add_argument("--out", type=Path, default=None, help="summary JSON to write")
    args = parser.parse_args(argv)
    for path in [*args.new, *args.old]:
        if not path.is_file():
            print(f"speed_ab_table: no results file {path}", file=sys.stderr)
            return 2
    try:
        (new_runs, new_commits), (old_runs, old_commits) = speed_runs(args.new), speed_runs(args.old)
        rows = ab_rows(new_runs, old_runs)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        print(f"speed_ab_table: not an optimize_bench speed result ({type(error).__name__}: {error})",
              file=sys.stderr)
        return 2
    print(f"new = {', '.join(sorted(set(new_commits)))}; old = {', '.join(sorted(set(old_commits)))} "
          f"(it/s of the training step, render-fps rows frames per second; runs in the order timed)")
    print(f"{'model':8} {'variant':18} {'new runs':>16} {'old runs':>16} {'new':>7} {'old':>7} {'new/old':>8}")
    for row in rows:
        new_text = " / ".join(f"{v:.1f}" for v in row["new_it_per_s"])
        old_text = " / ".join(f"{v:.1f}" for v in row["old_it_per_s"])
        ratio = "-" if row["new_over_old"] is None else f"{row['new_over_old']:.3f}"
        print(f"{row['model']:8} {row['variant']:18} {new_text:>16} {old_text:>16} {row['new_median']:7.1f} "
              f"{row['old_median']:7.1f} {ratio:>8}")
    for model, variant in [k for k in {**new_runs, **old_runs} if not (k in new_runs and k in old_runs)]:
        print(f"{model:8} {variant:18} timed at one commit only: left out")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"new_commits": new_commits, "old_commits": old_commits,
                                        "new_files": [str(p) for p in args.new],
                                        "old_files": [str(p) for p in args.old], "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
