"""Regenerate bench/README.md and bench/plots/*.svg from the results in bench/results/.

    python -m bench.summarize            # rewrite bench/README.md and bench/plots/
    python -m bench.summarize --check    # exit 1 where they differ from what the results files give

Every measured figure in the README is emitted through :func:`figure`, which reads it from a results file and keeps
its provenance: the file, the key path(s) and how it is computed (the value itself, a max / min / mean over entries,
a ratio, a difference). ``tests/bench/test_summary.py`` recomputes each figure from the files and checks that every
number in the README is either such a figure or text typed here on purpose (:class:`Lit`: a target from the issues,
the size in a condition, a command), and that measured columns hold figures only. A target whose results file does
not exist reads "not measured". The GPU geometry sweep may come from the raw log of an interrupted run
(``results/logs/geometry_gpu_*.txt``, parsed by :func:`parse_geometry_log`); the table then says so.

Status rule: a target is "met" when the measured figure satisfies it; timings are judged by their median where a
file has one (the min is shown beside it); "missed" otherwise; "not measured" without a results file.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from bench import plots

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
README = BENCH / "README.md"
PLOTS = BENCH / "plots"
MISSING = object()
# Columns whose cells describe a condition (typed text allowed); every other column is measured: figures only.
CONDITION_COLUMNS = ("target (issue)", "metric", "size", "source", "step", "run it with", "plot", "frames x W x H",
                     "case", "file")
STAGES = ("geometry", "initialize", "optimize", "render", "evaluate")
# A number in the README: a run of digits (with decimals) not glued to a letter before it, so names such as
# page4d, e2e or H100 are words, while 3.5, 1e-4 or 518x294 hold numbers.
NUMBER = re.compile(r"(?<![A-Za-z_\d.])\d+(?:\.\d+)?")


# ---------------------------------------------------------------------------------------------------------------
# Results files and figures with provenance


def parse_geometry_log(text: str) -> dict[str, Any]:
    """The raw output of an interrupted ``geometry_bench --gpu`` run, as the JSON it would have written:
    {"device", "driver", "torch", "command", "official"|"ours": {"FxWxH": {"full"|"aggregator": {seconds, peak_gib}}}}.
    """
    out: dict[str, Any] = {"official": {}, "ours": {}}
    header = re.search(r"# Device: (?P<device>[^,]+), driver (?P<driver>[^,]+), torch (?P<torch>[^;]+);", text)
    if header:
        out.update(header.groupdict())
    command = re.search(r"# Command: (.+)", text)
    if command:
        out["command"] = command.group(1).strip()
    row = re.compile(r"^\s*(official|ours)\s+(\d+x\d+x\d+): full ([\d.]+) s, ([\d.]+) GiB, "
                     r"aggregator ([\d.]+) s, ([\d.]+) GiB\s*$")
    for line in text.splitlines():
        m = row.match(line)
        if m:
            who, key, full_s, full_gib, agg_s, agg_gib = m.groups()
            out[who][key] = {"full": {"seconds": float(full_s), "peak_gib": float(full_gib)},
                             "aggregator": {"seconds": float(agg_s), "peak_gib": float(agg_gib)}}
    return out


class Results:
    """The results folder: JSON files, and the raw logs under logs/ parsed into the same shape."""

    def __init__(self, root: Path = RESULTS):
        self.root = root
        self._cache: dict[str, Any] = {}

    def files(self, pattern: str) -> list[str]:
        return sorted(str(p.relative_to(self.root)) for p in self.root.glob(pattern) if p.is_file())

    def load(self, name: str) -> Any:
        if name not in self._cache:
            path = self.root / name
            if not path.is_file():
                self._cache[name] = MISSING
            elif name.endswith(".json"):
                self._cache[name] = json.loads(path.read_text())
            elif name.startswith("logs/geometry_gpu"):
                self._cache[name] = parse_geometry_log(path.read_text())
            else:
                raise ValueError(f"no reader for {name}")
        return self._cache[name]

    def get(self, name: str, path: Sequence[Union[str, int]]) -> Any:
        """The value at ``path`` (keys and list indices) in file ``name``; MISSING where absent."""
        node = self.load(name)
        for key in path:
            if node is MISSING:
                return MISSING
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                return MISSING
        return node

    def has(self, name: str, *path: Union[str, int]) -> bool:
        return self.get(name, path) is not MISSING


OPS: dict[str, Callable[[list], Any]] = {
    "value": lambda v: v[0],
    "max": max,
    "min": min,
    "mean": statistics.fmean,
    "ratio": lambda v: v[0] / v[1],
    "diff": lambda v: v[0] - v[1],
    "day": lambda v: str(v[0])[:10],
    "short": lambda v: str(v[0])[:7],
    "gib": lambda v: v[0] / 1024.0,              # MiB -> GiB
    "len": lambda v: len(v[0]),
    "oneline": lambda v: " ".join(str(v[0]).split()),
    "join": lambda v: ", ".join(str(x) for x in v[0]),
    "distinct": lambda v: " / ".join(dict.fromkeys(str(x) for x in v)),   # several sources, each value once
}


@dataclass(frozen=True)
class Fig:
    """A figure read from results files: its text, and how to get it again (op over values at (file, path))."""

    text: str
    op: str
    fmt: str
    sources: tuple[tuple[str, tuple], ...]
    value: Any = field(compare=False, default=None)


@dataclass(frozen=True)
class Lit:
    """Text typed here on purpose (a target from the issues, a condition, a command, a file name) that may hold
    digits. Never used for a measured figure."""

    text: str


Piece = Union[str, Fig, Lit]


def compute(results: Results, op: str, sources: Iterable[tuple[str, Sequence]]) -> Any:
    values = [results.get(name, path) for name, path in sources]
    if any(v is MISSING or v is None for v in values):
        return MISSING
    if op in ("max", "min", "mean") and len(values) == 1 and isinstance(values[0], list):
        values = values[0]
    return OPS[op](values)


def figure(results: Results, name: str, path: Sequence, fmt: str = "{:.3g}", op: str = "value",
           more: Sequence[tuple[str, Sequence]] = ()) -> Optional[Fig]:
    """The figure at (name, path) (and ``more`` sources for ops over several), formatted; None where missing."""
    sources = ((name, tuple(path)),) + tuple((n, tuple(p)) for n, p in more)
    value = compute(results, op, sources)
    if value is MISSING or (isinstance(value, float) and not math.isfinite(value)):
        return None
    text = fmt.format(value)
    if "|" in text or "\n" in text:
        raise ValueError(f"figure text {text!r} from {sources} would break the table")
    return Fig(text, op, fmt, sources, value)


# ---------------------------------------------------------------------------------------------------------------
# The document: lines of pieces, rendered with the position of every figure and typed number


class Doc:
    def __init__(self) -> None:
        self.lines: list[list[Piece]] = []

    def add(self, *pieces: Optional[Piece]) -> None:
        self.lines.append([p for p in pieces if p is not None])

    def blank(self) -> None:
        self.lines.append([])

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Cells: a piece, a list of pieces, or None (an em dash)."""
        head: list[Piece] = ["| "]
        for i, title in enumerate(header):
            head += ([" | "] if i else []) + [Lit(title) if NUMBER.search(title) else title]
        self.lines.append(head + [" |"])
        self.add("|" + "|".join("---" for _ in header) + "|")
        for row in rows:
            assert len(row) == len(header), (header, row)
            pieces: list[Piece] = ["| "]
            for i, cell in enumerate(row):
                if i:
                    pieces.append(" | ")
                texts = [c if isinstance(c, str) else c.text for c in (cell if isinstance(cell, (list, tuple))
                                                                         else [cell]) if c is not None]
                if any("|" in t for t in texts):
                    raise ValueError(f"a table cell may not hold '|': {texts}")
                if cell is None:
                    pieces.append("—")
                elif isinstance(cell, (list, tuple)):
                    pieces += [c if c is not None else "—" for c in cell]
                else:
                    pieces.append(cell)
            pieces.append(" |")
            self.lines.append(pieces)
        self.blank()

    def render(self) -> tuple[str, list[tuple[int, int, Union[Fig, Lit]]]]:
        """The markdown and (start, end, piece) of every figure and typed piece. Plain strings may not hold digits:
        a number is either a figure or typed on purpose."""
        out, spans, offset = [], [], 0
        for line in self.lines:
            for piece in line:
                text = piece if isinstance(piece, str) else piece.text
                if isinstance(piece, str) and NUMBER.search(piece):
                    raise ValueError(f"plain text with a number (make it a figure or a Lit): {piece!r}")
                if not isinstance(piece, str):
                    spans.append((offset, offset + len(text), piece))
                out.append(text)
                offset += len(text)
            out.append("\n")
            offset += 1
        return "".join(out), spans


def unit(fig: Optional[Fig], suffix: str) -> list[Piece]:
    return [fig, suffix] if fig is not None else ["—"]


# ---------------------------------------------------------------------------------------------------------------
# Metadata of a results file (newer files: "environment"; older ones: top-level keys or per-section keys)


def env_path(results: Results, name: str, key: str, section: Optional[str] = None) -> Optional[tuple]:
    """Where a file keeps ``key`` (device, date, command, driver, versions...)."""
    prefix = (section,) if section else ()
    candidates = {
        "device": [("environment", "device"), ("device",)],
        "date": [("environment", "date"), ("date",)],
        "command": [("environment", "command"), ("command",)],
        "driver": [("environment", "driver"), ("driver",)],
        "git_commit": [("environment", "git_commit"), ("git_commit",)],
        "torch": [("environment", "versions", "torch"), ("versions", "torch"), ("torch",)],
        "cuda": [("environment", "versions", "cuda"), ("versions", "cuda"), ("cuda",)],
        "gsplat": [("environment", "versions", "gsplat"), ("versions", "gsplat"), ("gsplat",)],
    }[key]
    for path in candidates:
        if results.get(name, prefix + path) not in (MISSING, None):
            return prefix + path
    return None


def meta(results: Results, name: str, key: str, section: Optional[str] = None, op: str = "value") -> Optional[Fig]:
    path = env_path(results, name, key, section)
    return figure(results, name, path, "{}", op) if path else None


def device(results: Results, name: str, section: Optional[str] = None) -> Optional[Fig]:
    return meta(results, name, "device", section)


def runs_device(results: Results, name: str, kind: Optional[str] = None,
                model: Optional[str] = None) -> Optional[Fig]:
    """The devices of an end-to-end file's runs (of ``kind`` and ``model`` where given), each once: calls continue
    one file on different hosts, and each run records its own device. Files older than that: the file's device."""
    runs = results.get(name, ("runs",))
    runs = runs if runs is not MISSING else []
    paths = [("runs", i, "device") for i, r in enumerate(runs) if r.get("device")
             and (kind is None or r.get("kind") == kind) and (model is None or r.get("deformation") == model)]
    if not paths:
        return device(results, name)
    return figure(results, name, paths[0], "{}", "distinct", [(name, p) for p in paths[1:]])


# ---------------------------------------------------------------------------------------------------------------
# Targets


@dataclass
class Measured:
    """One row of a targets table."""

    target: str                      # typed: the target with its condition
    value: Optional[Fig]             # the figure the status is judged on
    shown: list[Piece]               # how the measured cell reads
    check: Optional[Callable[[Any], bool]]   # value -> met?; None = "runs" (met when measured)
    baseline: Optional[list[Piece]] = None
    device: Optional[Fig] = None
    source: str = ""
    status: Optional[str] = None     # overrides the computed status

    def state(self) -> str:
        if self.status:
            return self.status
        if self.value is None:
            return "not measured"
        return "met" if self.check is None or self.check(self.value.value) else "missed"


def at_most(limit: float) -> Callable[[Any], bool]:
    return lambda v: v <= limit


def at_least(limit: float) -> Callable[[Any], bool]:
    return lambda v: v >= limit


def targets_table(doc: Doc, rows: list[Measured]) -> None:
    doc.table(["target (issue)", "measured", "baseline (same run)", "device", "status", "source"],
              [[Lit(r.target), r.shown if r.value is not None else "not measured", r.baseline, r.device, r.state(),
                Lit(r.source) if r.source else None] for r in rows])


# ---------------------------------------------------------------------------------------------------------------
# Sections


def section_synthetic(doc: Doc, R: Results) -> None:
    doc.add("## Synthetic scenes (issue #", Lit("3"), ")")
    doc.blank()
    name = "synthetic.json"
    demo_key = next((k for k in (R.get(name, ("cpu", "results")) or {}) if str(k).startswith("demo room")), None) \
        if R.has(name, "cpu", "results") else None
    median = figure(R, name, ("cpu", "results", demo_key, "median_s"), "{:.2f}") if demo_key else None
    least = figure(R, name, ("cpu", "results", demo_key, "min_s"), "{:.2f}") if demo_key else None
    rows = [Measured("demo scene generated in ≤ 20 s on 2 CPU cores", median,
                     [median, " s median, ", least, " s min"] if median else [], at_most(20.0),
                     device=device(R, name, "cpu"), source=name)]
    gpu_rows = R.get(name, ("gpu", "results"))
    index = next((i for i, r in enumerate(gpu_rows) if (r.get("height"), r.get("width"), r.get("supersample"))
                  == (224, 224, 1) and "frames_per_s" in r), None) if gpu_rows is not MISSING else None
    fps = figure(R, name, ("gpu", "results", index, "frames_per_s"), "{:.0f}") if index is not None else None
    host = figure(R, name, ("gpu", "baseline_host_cpu", "frames_per_s"), "{:.1f}")
    rows.append(Measured("≥ 2000 frames/s at 224×224 (images, depth, masks, cameras) on an H100", fps,
                         [fps, " frames/s"], at_least(2000.0), baseline=["host CPU ", *unit(host, " frames/s")],
                         device=device(R, name, "gpu"), source=name))
    targets_table(doc, rows)
    if gpu_rows is not MISSING:
        doc.add("Training-batch generator on the GPU (every shape the benchmark measured):")
        doc.blank()
        table = []
        for i, r in enumerate(gpu_rows):
            f = lambda key, fmt="{}": figure(R, name, ("gpu", "results", i, key), fmt)
            table.append([[f("batch"), " × ", f("frames")], [f("height"), " × ", f("width")], f("supersample"),
                          f("frames_per_s", "{:.0f}"), f("ms_per_call", "{:.1f}"), f("peak_memory_gib", "{:.2f}")])
        doc.table(["batch × frames", "H × W", "supersample", "frames/s", "ms per call", "peak GiB"], table)


def geometry_gpu_source(R: Results) -> tuple[Optional[str], str]:
    """geometry.json when it exists, else the newest raw log of an interrupted run."""
    if R.has("geometry.json"):
        partial = R.get("geometry.json", ("complete",)) is False
        return "geometry.json", "geometry.json" + (" (partial: the run was cut short)" if partial else "")
    logs = R.files("logs/geometry_gpu_*.txt")
    if logs:
        return logs[-1], f"{logs[-1]} (from the log of an interrupted run)"
    return None, ""


def section_geometry(doc: Doc, R: Results, svgs: dict[str, str]) -> None:
    doc.add("## Geometry network (issue #", Lit("4"), ")")
    doc.blank()
    name, label = geometry_gpu_source(R)
    rows = []
    if name:
        dev = device(R, name)
        key = "100x518x518"
        ours_s = figure(R, name, ("ours", key, "full", "seconds"), "{:.2f}")
        theirs_s = figure(R, name, ("official", key, "full", "seconds"), "{:.2f}")
        ours_m = figure(R, name, ("ours", key, "full", "peak_gib"), "{:.1f}")
        theirs_m = figure(R, name, ("official", key, "full", "peak_gib"), "{:.1f}")
        rows.append(Measured("100 frames 518×518, full model: ≤ 3.5 s on an H100 (official: 6.64 s)", ours_s,
                             [ours_s, " s"], at_most(3.5), ["official ", *unit(theirs_s, " s")], dev, label))
        rows.append(Measured("100 frames 518×518, full model: ≤ 16 GiB on an H100 (official: 35.9 GiB)", ours_m,
                             [ours_m, " GiB"], at_most(16.0), ["official ", *unit(theirs_m, " GiB")], dev, label))
        big_s = figure(R, name, ("ours", "200x518x518", "full", "seconds"), "{:.2f}")
        big_m = figure(R, name, ("ours", "200x518x518", "full", "peak_gib"), "{:.1f}")
        error = figure(R, name, ("ours", "200x518x518", "full", "error"), "{}")      # e.g. out of memory
        official = ["official ", *unit(figure(R, name, ("official", "200x518x518", "full", "seconds"), "{:.2f}"),
                                       " s")]
        rows.append(Measured("200 frames 518×518 must run (H100)", big_s, [big_s, " s, ", big_m, " GiB"], None,
                             official, dev, label) if error is None else
                    Measured("200 frames 518×518 must run (H100)", error, ["failed: ", error], None, official, dev,
                             label, status="missed"))
        long_s = figure(R, name, ("windowed", "seconds"), "{:.1f}")
        rows.append(Measured("1000 frames 518×294, windowed: ≤ 60 s (H100)", long_s,
                             [long_s, " s, ", figure(R, name, ("windowed", "windows"), "{}"), " windows"],
                             at_most(60.0), None, dev, label))
    else:
        rows += [Measured(t, None, [], None, source="geometry.json") for t in (
            "100 frames 518×518, full model: ≤ 3.5 s on an H100 (official: 6.64 s)",
            "100 frames 518×518, full model: ≤ 16 GiB on an H100 (official: 35.9 GiB)",
            "200 frames 518×518 must run (H100)", "1000 frames 518×294, windowed: ≤ 60 s (H100)")]
    cpu = "geometry_cpu.json"
    total = figure(R, cpu, ("timings", "total_s"), "{:.1f}")
    rows.append(Measured("page4d-tiny on 48 demo frames: ≤ 15 s on 2 CPU cores", total, [total, " s"],
                         at_most(15.0), None, device(R, cpu), cpu))
    parity = "page4d_parity.json"
    n = len(R.get(parity, ("results",))) if R.has(parity, "results") else 0
    worst = figure(R, parity, ("results", 0, "max_relative_error"), "{:.1e}", "max",
                   [(parity, ("results", i, "max_relative_error")) for i in range(1, n)]) if n else None
    rows.append(Measured("parity with the official code: max relative error ≤ 1e-4 (CPU float32)", worst, [worst],
                         at_most(1e-4), None, device(R, parity), parity))
    targets_table(doc, rows)

    if name:
        doc.add("Full model (camera, depth and point heads) and aggregator alone; random weights at the ",
                Lit("page4d-1b dimensions, bf16 autocast"), "; source: ", Lit(label), ".")
        doc.blank()
        sizes = list(dict.fromkeys(list(R.get(name, ("official",)) or {}) + list(R.get(name, ("ours",)) or {})))
        table = []
        for key in sizes:
            f = lambda who, part, what, fmt: figure(R, name, (who, key, part, what), fmt)
            ratio = figure(R, name, ("official", key, "full", "seconds"), "{:.2f}", "ratio",
                           [(name, ("ours", key, "full", "seconds"))])
            table.append([Lit(key), unit(f("official", "full", "seconds", "{:.2f}"), " s"),
                          unit(f("official", "full", "peak_gib", "{:.1f}"), " GiB"),
                          unit(f("ours", "full", "seconds", "{:.2f}"), " s"),
                          unit(f("ours", "full", "peak_gib", "{:.1f}"), " GiB"), ratio,
                          unit(f("ours", "aggregator", "seconds", "{:.2f}"), " s")])
        doc.table(["frames x W x H", "official, full", "official, memory", "ours, full", "ours, memory",
                   "official / ours time", "ours, aggregator"], table)
        series = []
        for who in ("official", "ours"):
            points = [(int(k.split("x")[0]), v["full"]["seconds"]) for k, v in (R.get(name, (who,)) or {}).items()
                      if k.endswith("x518x518") and "seconds" in v.get("full", {})]
            if points:
                series.append((who, [p[0] for p in points], [p[1] for p in points]))
        if series:
            svgs["geometry_frames_gpu.svg"] = plots.line_chart(
                series, "PAGE-4D full model at 518x518 (H100): time against frames", "frames", "seconds")
            doc.add("![geometry time against frames](plots/geometry_frames_gpu.svg)")
            doc.blank()
    if R.has(cpu):
        doc.add("page4d-tiny on the CPU: ", meta(R, cpu, "device"), ", model ", figure(R, cpu, ("model",), "{}"),
                ", input ", figure(R, cpu, ("input",), "{}"), ".")
        doc.blank()
        t = lambda key: unit(figure(R, cpu, ("timings", key), "{:.2f}"), " s")
        doc.table(["preprocess", "network", "masks", "total", "window", "threads"],
                  [[t("preprocess_s"), t("network_s"), t("masks_s"), t("total_s"),
                    figure(R, cpu, ("window",), "{}"), figure(R, cpu, ("threads",), "{}")]])
        sweep = R.get(cpu, ("frames_sweep",))
        if sweep is not MISSING and sweep:
            svgs["geometry_frames_cpu.svg"] = plots.line_chart(
                [("page4d-tiny network", [r["frames"] for r in sweep], [r["network_s"] for r in sweep])],
                "page4d-tiny on the CPU: network time against frames", "frames", "seconds")
            doc.table(["frames", "network"], [[figure(R, cpu, ("frames_sweep", i, "frames"), "{}"),
                                               unit(figure(R, cpu, ("frames_sweep", i, "network_s"), "{:.2f}"), " s")]
                                              for i in range(len(sweep))])
            doc.add("![page4d-tiny time against frames](plots/geometry_frames_cpu.svg)")
            doc.blank()
    if n:
        doc.table(["size", "frames", "W × H", "parameters", "max relative error", "strict load"],
                  [[figure(R, parity, ("results", i, "size"), "{}"), figure(R, parity, ("results", i, "frames"), "{}"),
                    [figure(R, parity, ("results", i, "width"), "{}"), " × ",
                     figure(R, parity, ("results", i, "height"), "{}")],
                    figure(R, parity, ("results", i, "parameters"), "{:,}"),
                    figure(R, parity, ("results", i, "max_relative_error"), "{:.1e}"),
                    figure(R, parity, ("results", i, "strict_load"), "{}")] for i in range(n)])


TINY_METRICS = (("depth_abs_rel", "depth Abs Rel ≤ 0.12", at_most(0.12)),
                ("depth_delta_1.25", "depth δ<1.25 ≥ 0.85", at_least(0.85)),
                ("rpe_rot_deg", "RPE-rot ≤ 1.0°", at_most(1.0)),
                ("ate_normalized", "ATE (normalised) ≤ 0.05", at_most(0.05)),
                ("mask_iou", "mask IoU ≥ 0.5", at_least(0.5)))


def section_tiny(doc: Doc, R: Results) -> None:
    doc.add("## page4d-tiny (issue #", Lit("5"), ")")
    doc.blank()
    name = "page4d_tiny_eval.json"
    methods = list(R.get(name, ("results",)) or {}) if R.has(name, "results") else []
    ours = next((m for m in methods if m.startswith("page4d-tiny")), None)
    untrained = next((m for m in methods if m.startswith("untrained")), None)
    constant = next((m for m in methods if m.startswith("identity")), None)
    if not ours:
        doc.add("Held-out evaluation: not measured (", Lit("python -m bench.train_eval_bench --gpu"), ").")
        doc.blank()
        return
    doc.add("Held-out synthetic scenes (seeds never used in training), per kind, beside two baselines measured in the "
            "same run; ", device(R, name), ", ", meta(R, name, "date", op="day"), ", ", Lit("source: " + name), ".")
    doc.blank()
    rows = []
    for kind in ("room", "object"):
        for key, label, check in TINY_METRICS:
            path = lambda method: ("results", method, "per_kind", kind, key)
            value = figure(R, name, path(ours), "{:.4g}") if ours else None
            state = "not measured" if value is None else ("met" if check(value.value) else "missed")
            rows.append([kind, Lit(label), value, figure(R, name, path(untrained), "{:.4g}") if untrained else None,
                         figure(R, name, path(constant), "{:.4g}") if constant else None, state])
    doc.table(["scene kind", "metric", "page4d-tiny", "untrained page4d-tiny", "identity cameras + constant depth",
               "status"], rows)
    summary = "training/page4d-tiny-summary.json"
    if R.has(summary):
        doc.add("Training: ", figure(R, summary, ("state", "step"), "{}"), " steps, ",
                figure(R, summary, ("state", "frames"), "{:,}"), " frames, ",
                figure(R, summary, ("state", "train_seconds"), "{:.0f}"), " s of training in ",
                figure(R, summary, ("state", "runs"), "{}"), " chunks, the last on ",
                figure(R, summary, ("device",), "{}"), " (", figure(R, summary, ("parameters",), "{:,}"),
                " parameters; ", Lit("source: " + summary + "; each chunk's device: training/page4d-tiny-chunks.json"),
                ").")
        doc.blank()
    probe = "page4d_tiny_pose_probe.json"
    rows = (R.get(probe, ("rows",)) or []) if R.has(probe, "rows") else []
    if rows:
        doc.add("Does the network relate frames? Rotation of each frame relative to the first (mean geodesic "
                "error, degrees) from the camera head and from the point maps, beside identity (its error is the "
                "true rotation's size); training-style sequences from unused seeds (", Lit("bench/pose_probe.py"),
                "); ", device(R, probe), ", ",
                meta(R, probe, "date", op="day"), ", ", Lit("source: " + probe), ".")
        doc.blank()
        doc.table(["weights (step)", "kind", "room pan ×", "camera head", "point maps", "identity"],
                  [[figure(R, probe, ("rows", i, "step"), "{}"), figure(R, probe, ("rows", i, "kind"), "{}"),
                    figure(R, probe, ("rows", i, "pan_scale"), "{:g}") if rows[i]["pan_scale"] else Lit("—"),
                    figure(R, probe, ("rows", i, "head_error_deg"), "{:.2f}"),
                    figure(R, probe, ("rows", i, "points_error_deg"), "{:.2f}"),
                    figure(R, probe, ("rows", i, "identity_error_deg"), "{:.2f}")] for i in range(len(rows))])
    attention = (R.get(probe, ("attention",)) or []) if R.has(probe, "attention") else []
    if attention:
        doc.blank()
        doc.add("What the aggregator's attention does (same file; one ", Lit("8"), "-frame room sequence): per "
                "global block the entropy of its attention rows as a fraction of log(keys) (", Lit("1"),
                " = uniform) and the attention mass a query puts on its own frame (", Lit("1/S = 0.125"),
                " when frames make no difference to it), smallest and largest over the blocks; the mean absolute "
                "LayerScale gamma and q/k-norm weight of the global blocks (initialised at ", Lit("0.01"), " and ",
                Lit("1"), ").")
        doc.blank()

        def spread(i: int, key: str, fmt: str) -> list:
            blocks = len(attention[i]["global_blocks"])
            paths = [(probe, ("attention", i, "global_blocks", b, key)) for b in range(blocks)]
            return [figure(R, probe, paths[0][1], fmt, "min", paths[1:]), "-",
                    figure(R, probe, paths[0][1], fmt, "max", paths[1:])]

        doc.table(["weights (step)", "attention entropy / log L", "own-frame mass", "LayerScale abs(gamma)",
                   "q/k-norm abs(w)"],
                  [[figure(R, probe, ("attention", i, "step"), "{}"), spread(i, "entropy_fraction", "{:.2f}"),
                    spread(i, "own_frame_mass", "{:.3f}"),
                    figure(R, probe, ("attention", i, "global_layerscale_abs_mean"), "{:.4f}"),
                    figure(R, probe, ("attention", i, "global_qk_norm_weight_abs_mean"), "{:.3f}")]
                   for i in range(len(attention))])


def section_camera_refinement(doc: Doc, R: Results) -> None:
    name = "camera_refinement.json"
    if not R.has(name, "summary"):
        return
    doc.add("### Camera refinement (", Lit("geometry.refine_cameras"), ")")
    doc.blank()
    doc.add("Model cameras of held-out ", Lit("make-scene"), " rooms against their truth, the network's and after the "
            "geometry stage's photometric refinement, beside identity (every camera at the first one's pose; its ATE "
            "is a straight-line fit of the path); ", Lit("Sim(3)"), "-aligned ATE and RPE over consecutive frames, "
            "metres and degrees; the horizontal field of view's error, degrees (", Lit("refined_focal"), ": with ",
            Lit("geometry.refine_focal"), "); mask IoU pooled over frames (", Lit("bench/camera_refinement_bench.py"),
            "); ",
            device(R, name), ", ", meta(R, name, "date", op="day"), ", ", Lit("source: " + name), ".")
    doc.blank()
    rows = []
    for key, groups in R.get(name, ("summary",)).items():
        for which in groups:
            path = ("summary", key, which)
            rows.append([Lit(key.replace("pan", "pan x")), Lit(which),
                         figure(R, name, path + ("ate_m",), "{:.4f}"),
                         figure(R, name, path + ("rpe_trans_m",), "{:.4f}"),
                         figure(R, name, path + ("rpe_rot_deg",), "{:.3f}"),
                         figure(R, name, path + ("fov_error_deg",), "{:.2f}") if R.has(name, *path, "fov_error_deg")
                         else Lit("—"),
                         figure(R, name, path + ("mask_iou",), "{:.3f}") if which != "identity" else Lit("—")])
    doc.table(["rooms", "cameras", "ATE m", "RPE-trans m", "RPE-rot deg", "FoV error deg", "mask IoU"], rows)


def section_train_scaling(doc: Doc, R: Results) -> None:
    name = "train_scaling_gpu.json"
    if not R.has(name, "settings"):
        return
    doc.add("### Training on several GPUs (data parallel)")
    doc.blank()
    doc.add("Fresh ", Lit("page4d-tiny"), " runs from a random initialisation, one per setting, one after the other on "
            "one host: frames per second of the whole run (every rank; median of the log's windows after the warm-up "
            "steps), optimizer steps per second, and frames per second over the processes times one process's "
            "(", Lit("bench/train_scaling_bench.py"), "; ", device(R, name), ", ", meta(R, name, "date", op="day"),
            ", ", Lit("source: " + name), "). Sequence lengths differ from window to window, so one process's "
            "windows spread more than several processes' and an efficiency above one is that spread.")
    if not R.has(name, "launcher"):
        doc.add("Measured before the bench launched every setting alike: here one process ran without ", Lit("torchrun"),
                " and with the host's default CPU threads, several processes with one thread each, and a step's "
                "timer started after the ranks' stop check, which waits for the previous step's GPU work when there "
                "are several; how much of the efficiency above one that explains is not measured (rerun ",
                Lit("python -m bench.train_scaling_bench --processes 1 2 4"), ").")
    doc.blank()
    rows = []
    for i, _ in enumerate(R.get(name, ("settings",))):
        path = ("settings", i)
        rows.append([figure(R, name, path + ("processes",), "{:d}"),
                     figure(R, name, path + ("frames_per_s",), "{:.1f}"),
                     figure(R, name, path + ("steps_per_s",), "{:.2f}"),
                     figure(R, name, path + ("efficiency",), "{:.2f}"),
                     figure(R, name, path + ("peak_gpu_gb",), "{:.2f}")])
    doc.table(["processes (GPUs)", "frames/s", "steps/s", "efficiency", "peak GPU GB per rank"], rows)


def rasterizer_cpu_row(R: Results, name: str) -> Measured:
    rows = R.get(name, ("rows",)) or []
    ours = next((i for i, r in enumerate(rows) if (r["width"], r["height"], r["n_gaussians"], r["threads"]) ==
                 (256, 144, 20_000, 2) and r["config"].startswith("ours")), None)
    base = next((i for i, r in enumerate(rows) if (r["width"], r["height"], r["n_gaussians"], r["threads"]) ==
                 (256, 144, 20_000, 2) and r["config"].startswith("baseline")), None)
    if ours is None:
        return Measured("CPU forward + backward, 256×144, 20k Gaussians: ≤ 0.5 s on 2 cores", None, [], None,
                        source=name)
    med = figure(R, name, ("rows", ours, "forward_backward", "median_s"), "{:.3f}")
    least = figure(R, name, ("rows", ours, "forward_backward", "min_s"), "{:.3f}")
    baseline = None
    if base is not None:
        baseline = ["gsplat-like binning ", figure(R, name, ("rows", base, "forward_backward", "median_s"), "{:.3f}"),
                    " s median"]
    return Measured("CPU forward + backward, 256×144, 20k Gaussians: ≤ 0.5 s on 2 cores", med,
                    [med, " s median, ", least, " s min (load ",
                     figure(R, name, ("rows", ours, "load_average_1min"), "{:.1f}"), ")"], at_most(0.5), baseline,
                    device(R, name), name)


def scene_model(R: Results, name: str) -> list[Piece]:
    """Which deformation model the scene section's run trained: recorded since the dnerf preset changed model (the
    thirty-seventh session); older files name the commit whose preset they ran (the bases until then)."""
    model = figure(R, name, ("scene", "deformation"), "{}")
    if model is not None:
        return [model]
    commit = figure(R, name, ("scene", "environment", "git_commit"), "{}", "short")
    return ["the dnerf preset's model", *([" at commit ", commit] if commit is not None else [])]


# The bases on the 100-frame scene, beside the preset's planes_bases: one after the other on one H200 with
# planes_bases (bench/sweeps/scene_windows39.txt, the thirty-ninth session; planes_bases there 175.4 s, and with the
# current sampler 174.7 s in optimize.json on another host of the same speed).
SCENE_BASES_RUN = "sweeps/optimize_scene_bases_windows39.json"


def same_call(R: Results, name: str, other: str, name_env: tuple = ("scene", "environment")) -> bool:
    """Whether two results files' scene runs came from one call: the same commit, started within an hour.
    ``name_env``: where ``name`` keeps its environment (optimize.json per section; a sweep's file at the top)."""
    commits = [R.get(name, (*name_env, "git_commit")), R.get(other, ("environment", "git_commit"))]
    dates = [R.get(name, (*name_env, "date")), R.get(other, ("environment", "date"))]
    if MISSING in commits + dates or commits[0] != commits[1]:
        return False
    first, second = (datetime.fromisoformat(d) for d in dates)
    return abs((second - first).total_seconds()) < 3600


def scene_baseline(R: Results) -> Optional[list[Piece]]:
    """The bases' time on the same scene, beside the preset's, where the preset trains another model."""
    name = "optimize.json"
    if not R.has(SCENE_BASES_RUN, "scene", "optimize_s") or R.get(name, ("scene", "deformation")) == "bases":
        return None
    where = "the same call" if same_call(R, name, SCENE_BASES_RUN) else "another call"
    return ["bases ", figure(R, SCENE_BASES_RUN, ("scene", "optimize_s"), "{:.0f}"), " s, ",
            figure(R, SCENE_BASES_RUN, ("scene", "psnr"), "{:.2f}"), " dB (commit ",
            figure(R, SCENE_BASES_RUN, ("environment", "git_commit"), "{}", "short"), ", ", where, ")"]


# planes_bases, the dnerf preset's model since the thirty-seventh session, is not in optimize.json's speed section
# (bases, mlp, planes, static on an H100): its speed beside the bases, one H200 call (bench/sweeps/speed_pb38.txt).
# The forty-second session's call (bench/sweeps/gpu_tests42.txt) adds eager against eager-loss-graphs, the
# default since then (the photometric loss replayed as CUDA graphs).
PRESET_SPEED_RUNS = ("sweeps/optimize_speed_pb38.json", "sweeps/optimize_speed_pb38_graphs.json",
                     "sweeps/optimize_speed_loss_graphs42.json")

# The 100-frame scene with the configuration that is the default since the forty-second session (the photometric
# loss as CUDA graphs, then set by --set), beside the eager loss one after the other on one H200
# (bench/sweeps/scene_setup42.txt). optimize.json's scene row is older (175 s, the thirty-ninth session's code).
SCENE_DEFAULT_RUNS = ("sweeps/optimize_scene_pb_photometric_graphs42.json", "sweeps/optimize_scene_pb_setup42.json")
# Later runs of the same default configuration (one host, one after the other), shown as a range beside the row.
SCENE_DEFAULT_REPEATS = ("sweeps/optimize_scene_pb_nodynamo43a.json", "sweeps/optimize_scene_pb_dynamo43.json",
                         "sweeps/optimize_scene_pb_nodynamo43b.json")


def scene_default_row(R: Results) -> Optional[Measured]:
    """The 100-frame scene's row for the newest default, the eager loss of the same call beside it."""
    name, eager = SCENE_DEFAULT_RUNS
    if not R.has(name, "scene", "optimize_s"):
        return None
    scene = figure(R, name, ("scene", "optimize_s"), "{:.0f}")
    baseline = None
    if R.has(eager, "scene", "optimize_s"):
        where = "the same call" if same_call(R, name, eager, ("environment",)) else "another call"
        baseline = ["eager loss ", figure(R, eager, ("scene", "optimize_s"), "{:.0f}"), " s, ",
                    figure(R, eager, ("scene", "psnr"), "{:.2f}"), f" dB ({where})"]
    repeats = [r for r in SCENE_DEFAULT_REPEATS if R.has(r, "scene", "optimize_s")]
    spread: list[Piece] = []
    if repeats:
        path = ("scene", "optimize_s")
        more = [(r, path) for r in repeats[1:]]
        where = "the same call" if same_call(R, name, repeats[0], ("environment",)) else "another call"
        spread = [f"; later runs ({where}): ",
                  figure(R, repeats[0], path, "{:.0f}", "min", more), "-",
                  figure(R, repeats[0], path, "{:.0f}", "max", more), " s"]
    return Measured("100-frame 400×400 object scene optimized in ≤ 2 min (H100; the default since the "
                    "forty-second session: the photometric loss as CUDA graphs)", scene,
                    [scene, " s, ", figure(R, name, ("scene", "psnr"), "{:.2f}"), " dB held out (",
                     *scene_model(R, name), ")", *spread], at_most(120.0), baseline, device(R, name),
                    ", ".join([name, *([eager] if baseline is not None else []), *repeats]))


def preset_speed_rows(R: Results) -> list[Measured]:
    """The speed target's row for the preset's model in each variant measured, the bases of the same call beside."""
    rows = []
    for name in PRESET_SPEED_RUNS:
        models = R.get(name, ("speed", "models"))
        if models is MISSING:
            continue
        for i, row in enumerate(models):
            if row["model"] != "planes_bases":
                continue
            j = next((k for k, m in enumerate(models) if m["model"] == "bases" and m["variant"] == row["variant"]),
                     None)
            speed = figure(R, name, ("speed", "models", i, "it_per_s"), "{:.0f}")
            bases = None if j is None else \
                ["bases ", *unit(figure(R, name, ("speed", "models", j, "it_per_s"), "{:.0f}"), " it/s"),
                 " (the same call)"]
            rows.append(Measured("≥ 150 optimization it/s at 400×400 with 100k Gaussians incl. deformation (H100; "
                                 f"the dnerf preset's model, planes_bases; variant {row['variant']})", speed,
                                 [speed, " it/s"], at_least(150.0), bases, device(R, name), name))
    return rows


def optimize_rows(R: Results) -> list[Measured]:
    name = "optimize.json"
    dev = device(R, name)
    rows = []
    models = R.get(name, ("speed", "models")) if R.has(name, "speed", "models") else []
    speed_dev = device(R, name, "speed") or dev
    # One row per training-step variant (older files have one, unnamed: the eager default).
    for variant in list(dict.fromkeys(m.get("variant", "eager") for m in models)) or ["eager"]:
        mine = [i for i, m in enumerate(models) if m.get("variant", "eager") == variant]
        moving = [i for i in mine if models[i]["model"] != "none"]
        static = next((i for i in mine if models[i]["model"] == "none"), None)
        speed = figure(R, name, ("speed", "models", moving[0], "it_per_s"), "{:.0f}", "min",
                       [(name, ("speed", "models", i, "it_per_s")) for i in moving[1:]]) if moving else None
        fastest = max(moving, key=lambda i: models[i]["it_per_s"]) if moving else None
        rows.append(Measured("≥ 150 optimization it/s at 400×400 with 100k Gaussians incl. deformation (H100; slowest "
                             f"deformation model; variant {variant})", speed,
                             [speed, " it/s", *([" (fastest: ", models[fastest]["model"], " ",
                                                 figure(R, name, ("speed", "models", fastest, "it_per_s"), "{:.0f}"),
                                                 " it/s)"] if fastest is not None else [])], at_least(150.0),
                             ["static ", *unit(figure(R, name, ("speed", "models", static, "it_per_s"), "{:.0f}"),
                                               " it/s")] if static is not None else None, speed_dev, name))
    rows += preset_speed_rows(R)
    scene = figure(R, name, ("scene", "optimize_s"), "{:.0f}")
    bases = scene_baseline(R)
    rows.append(Measured("100-frame 400×400 object scene optimized in ≤ 2 min (H100)", scene,
                         [scene, " s, ", figure(R, name, ("scene", "psnr"), "{:.2f}"), " dB held out (",
                          *scene_model(R, name), ")"], at_most(120.0), bases, device(R, name, "scene") or dev,
                         f"{name}, {SCENE_BASES_RUN}" if bases is not None else name))
    default_scene = scene_default_row(R)
    if default_scene is not None:
        rows.append(default_scene)
    render = R.get(name, ("render", "models")) if R.has(name, "render", "models") else []
    moving = [i for i, m in enumerate(render) if m["model"] != "none"]
    static = next((i for i, m in enumerate(render) if m["model"] == "none"), None)
    fps = figure(R, name, ("render", "models", moving[0], "fps"), "{:.0f}", "min",
                 [(name, ("render", "models", i, "fps")) for i in moving[1:]]) if moving else None
    rows.append(Measured("render 800×800 at ≥ 300 fps incl. deformation (H100; slowest deformation model)", fps,
                         [fps, " fps"], at_least(300.0),
                         ["static ", *unit(figure(R, name, ("render", "models", static, "fps"), "{:.0f}"), " fps")]
                         if static is not None else None, dev, name))
    return rows


def e2e_summary_index(R: Results, name: str, kind: str, model: str) -> Optional[int]:
    rows = R.get(name, ("summary",))
    if rows is MISSING:
        return None
    return next((i for i, r in enumerate(rows) if r["kind"] == kind and r["deformation"] == model), None)


# The preset with the oracle's geometry (dataset cameras): configs/dnerf.yaml before the fifteenth session's
# lr_final_factor 0.1 (widening floor of 6 gaps, 4 motion bases, opacity regulariser 0.03) on object seeds 0 and 1
# through bench.geometry_ablation's oracle variant (the same protocol as optimize_bench's quality section), run side
# by side (their times are not a lone run's); the time from a lone run of seed 0 (the preset before the
# regulariser); and the comparison with the static model of optimize.json.
DNERF_PRESET_RUNS = ("sweeps/geometry_ablation_oracle_opacity003_s0.json",
                     "sweeps/geometry_ablation_oracle_opacity003_s1.json")
DNERF_PRESET_LONE_RUN = "sweeps/sweep_preset_lone_skip_s0.json"


def optimize_quality_rows(R: Results) -> list[Measured]:
    rows = []
    runs = [n for n in DNERF_PRESET_RUNS if R.has(n, "runs")]
    psnr = figure(R, runs[0], ("runs", 0, "psnr"), "{:.2f}", "mean",
                  [(n, ("runs", 0, "psnr")) for n in runs[1:]]) if runs else None
    lone = DNERF_PRESET_LONE_RUN
    seconds = figure(R, lone, ("quality", "summary", 0, "optimize_s"), "{:.0f}") \
        if R.has(lone, "quality", "summary") else None
    lone_psnr = figure(R, lone, ("quality", "summary", 0, "psnr"), "{:.2f}") \
        if R.has(lone, "quality", "summary") else None
    rows.append(Measured("held-out PSNR ≥ 25.5 dB within 140 s on a 200×200 object scene (H100): configs/dnerf.yaml "
                         "(widening floor, 4 bases, opacity regulariser 0.03; before lr_final_factor 0.1), oracle "
                         "geometry, mean of seeds 0 and 1 (side by side); time of a lone run", psnr,
                         [psnr, " dB; lone run of the first seed before the opacity regulariser: ", seconds, " s, ",
                          lone_psnr, " dB"], None, None,
                         device(R, runs[0]) if runs else None, ", ".join([*runs, lone]) or DNERF_PRESET_RUNS[0],
                         status=None if psnr is None or seconds is None else
                         ("met" if psnr.value >= 25.5 and seconds.value <= 140 else "missed")))
    name = "optimize.json"
    summary = R.get(name, ("quality", "summary"))
    for kind in ("object", "room"):
        gains = [j for j, r in enumerate(summary) if r["scene"] == kind and r.get("psnr_over_static") is not None
                 and r["model"] != "none"] if summary is not MISSING else []
        static = next((j for j, r in enumerate(summary) if r["scene"] == kind and r["model"] == "none"), None) \
            if summary is not MISSING else None
        least = figure(R, name, ("quality", "summary", gains[0], "psnr_over_static"), "{:+.2f}", "min",
                       [(name, ("quality", "summary", j, "psnr_over_static")) for j in gains[1:]]) if gains else None
        seeds = R.get(name, ("quality", "seeds"))
        overrides = R.get(name, ("quality", "overrides"))
        commit = R.get(name, ("environment", "git_commit"))
        setting = ", ".join(
            ([f"seeds {' '.join(map(str, seeds))}"] if seeds is not MISSING else [])
            + ([" ".join(overrides)] if overrides is not MISSING and overrides else [])
            + (["merged runs: see the quality note"] if R.has(name, "quality", "note")
               else [f"configs as of {str(commit)[:7]}"] if commit is not MISSING else []))
        rows.append(Measured(f"each deformation model ≥ 5 dB above static: {kind} scenes, optimize_bench ({setting})",
                             least, [least, " dB (smallest over the models run)"], at_least(5.0),
                             ["static ", *unit(figure(R, name, ("quality", "summary", static, "psnr"), "{:.2f}"),
                                               " dB")] if static is not None else None, device(R, name), name))
    return rows


def e2e_quality_row(R: Results, synthetic: str, i: Optional[int], model: str, label: str) -> Measured:
    """The issue's headline target for one model of the end-to-end object suite: its PSNR is the mean over the
    held-out seeds (``held_out_psnr``: seeds no setting was chosen on; the issue checks unseen scenes) with the mean
    over every seed beside it (without held-out seeds that mean is shown and the target not judged); its time the
    mean optimize stage of the runs that had the host to themselves (``lone_optimize_s``), else the mean over all
    runs, marked as not a lone time where runs shared the host (then it judges the target only when it is met even
    so)."""
    at = (lambda key: ("summary", i, key))
    every = figure(R, synthetic, at("psnr"), "{:.2f}") if i is not None else None
    held = figure(R, synthetic, at("held_out_psnr"), "{:.2f}") if i is not None else None
    psnr = held if held is not None else every
    lone = figure(R, synthetic, at("lone_optimize_s"), "{:.0f}") if i is not None else None
    seconds = lone if lone is not None else figure(R, synthetic, at("optimize_s"), "{:.0f}") if i is not None else None
    together = R.get(synthetic, at("side_by_side")) if i is not None else MISSING
    shared = lone is None and together is not MISSING and together > 1    # no lone run: not a lone run's time
    seeds = figure(R, synthetic, at("seeds"), "{}", "join") if i is not None else None
    if held is not None:
        psnr_note = ["; PSNR: mean over the held-out seeds ", figure(R, synthetic, at("held_out_seeds"), "{}", "join"),
                     " (no setting was chosen on them); over all seeds (", seeds, ") ", every, " dB"]
    else:
        psnr_note = ["; PSNR: mean over seeds ", seeds]
    if lone is not None:
        time_note = [" s, lone runs (seeds ", figure(R, synthetic, at("lone_seeds"), "{}", "join"), *psnr_note, ")"]
    else:
        time_note = [" s (", *([figure(R, synthetic, at("side_by_side"), "{}"), " runs side by side: not a lone "
                                "run's time"] if shared else ["times: mean over the runs"]), *psnr_note, ")"]
    if psnr is None or seconds is None:
        status = "not measured"
    elif held is None:              # the mean over tuning seeds alone does not judge a target on unseen scenes
        status = "not judged: no held-out seed"
    elif psnr.value < 25.5 or (seconds.value > 140 and not shared):
        status = "missed"
    elif seconds.value <= 140:      # runs side by side only slow each other down: a shared time bounds a lone one
        status = "met"
    else:
        status = "not judged: no lone run"
    return Measured(f"held-out PSNR ≥ 25.5 dB within 140 s of optimization on a 200×200 object scene (H100; 50 "
                    f"training views, page4d-tiny geometry, whole pipeline; {label})",
                    psnr, [psnr, " dB after ", seconds, *time_note], None, None,
                    runs_device(R, synthetic, "object", model), synthetic, status=status)


def preset_deformation(configs: Path = BENCH.parent / "configs", preset: str = "dnerf") -> str:
    """The deformation model the object suite's preset (``configs/<preset>.yaml``, which ``--config auto`` picks for
    make-scene's D-NeRF folders) trains: its ``optimize.deformation``, else the one of ``configs/default.yaml``."""
    import yaml
    for name in (preset, "default"):
        optimize = (yaml.safe_load((configs / f"{name}.yaml").read_text()) or {}).get("optimize") or {}
        if "deformation" in optimize:
            return optimize["deformation"]
    raise ValueError(f"neither {configs}/{preset}.yaml nor default.yaml sets optimize.deformation")


def quality_rows(R: Results) -> list[Measured]:
    rows = []
    synthetic = "e2e_synthetic.json"
    preset = preset_deformation()
    others = [m for m in ("bases", "planes_bases") if m != preset]
    for model, label in ((preset, "the dnerf preset's model"),
                         *((m, f"optimize.deformation={m}") for m in others)):
        i = e2e_summary_index(R, synthetic, "object", model)
        if i is None and model != preset:
            continue
        rows.append(e2e_quality_row(R, synthetic, i, model, f"{label}, {model}" if model == preset else label))
    rows += optimize_quality_rows(R)
    for name, kind, label in ((synthetic, "object", "object scenes (H100)"), (synthetic, "room", "room scenes (H100)"),
                              ("e2e_demo.json", "demo", "the demo scene, CPU preset")):
        summary = R.get(name, ("summary",))
        gains = [j for j, r in enumerate(summary) if r["kind"] == kind and r.get("psnr_over_static") is not None] \
            if summary is not MISSING else []
        least = figure(R, name, ("summary", gains[0], "psnr_over_static"), "{:+.2f}", "min",
                       [(name, ("summary", j, "psnr_over_static")) for j in gains[1:]]) if gains else None
        per_seed = figure(R, name, ("summary", gains[0], "psnr_over_static_min"), "{:+.2f}", "min",
                          [(name, ("summary", j, "psnr_over_static_min")) for j in gains[1:]]) if gains else None
        static = e2e_summary_index(R, name, kind, "none")
        rows.append(Measured(f"each deformation model ≥ 5 dB above static: {label}", least,
                             [least, " dB (mean over seeds, smallest over models; smallest on one seed ", per_seed,
                              " dB)"], at_least(5.0),
                             ["static ", *unit(figure(R, name, ("summary", static, "psnr"), "{:.2f}"), " dB")]
                             if static is not None else None, runs_device(R, name, kind), name))
    return rows


def section_rasterizer(doc: Doc, R: Results) -> None:
    doc.add("## Rasterizer and optimization (issue #", Lit("6"), ")")
    doc.blank()
    gpu = "rasterizer_gpu.json"
    parity = R.get(gpu, ("parity",)) if R.has(gpu, "parity") else []
    image = figure(R, gpu, ("parity", 0, "image_max_abs_diff"), "{:.1e}", "max",
                   [(gpu, ("parity", i, "image_max_abs_diff")) for i in range(1, len(parity))]) if parity else None
    grads = [(gpu, ("parity", i, "grad_relative_error", k)) for i, case in enumerate(parity)
             for k in case.get("grad_relative_error", {})]
    grad = figure(R, gpu, grads[0][1], "{:.1e}", "max", grads[1:]) if grads else None
    dev = device(R, gpu)
    rows = [Measured("parity with gsplat: image max abs difference ≤ 1e-4 (H100; worst case)", image, [image],
                     at_most(1e-4), None, dev, gpu),
            Measured("parity with gsplat: gradients within 1e-3 relative (H100; worst case and parameter)", grad,
                     [grad], at_most(1e-3), None, dev, gpu)]
    rows += [rasterizer_cpu_row(R, name) for name in R.files("rasterizer*_cpu.json")] or \
        [rasterizer_cpu_row(R, "rasterizer_cpu.json")]
    rows += optimize_rows(R)
    demo = "e2e_demo.json"
    runs = R.get(demo, ("runs",)) if R.has(demo, "runs") else []
    first = next((i for i, r in enumerate(runs) if r.get("deformation") != "none" and r.get("returncode") == 0), None)
    wall = figure(R, demo, ("runs", first, "wall_s"), "{:.0f}") if first is not None else None
    rows.append(Measured("demo `make reconstruct` ≤ 10 min on a CPU", wall,
                         [wall, " s (", figure(R, demo, ("runs", first, "deformation"), "{}"), ")"] if wall else [],
                         at_most(600.0), None, device(R, demo), demo))
    rows += quality_rows(R)
    targets_table(doc, rows)

    if parity:
        doc.add("Parity of our PyTorch rasterizer with gsplat on the GPU, per case (", Lit(gpu), "):")
        doc.blank()
        table = []
        for i in range(len(parity)):
            f = lambda *path, fmt="{:.1e}": figure(R, gpu, ("parity", i, *path), fmt)
            keys = list(parity[i].get("grad_relative_error", {}))
            worst = figure(R, gpu, ("parity", i, "grad_relative_error", keys[0]), "{:.1e}", "max",
                           [(gpu, ("parity", i, "grad_relative_error", k)) for k in keys[1:]]) if keys else None
            table.append([f("case", fmt="{}"), [f("n_gaussians", fmt="{}"), " Gaussians, ", f("width", fmt="{}"),
                                                 " × ", f("height", fmt="{}")],
                          f("image_max_abs_diff"), [f("image_pixels_above_1e-4", fmt="{}"), " of ",
                                                    f("image_pixels", fmt="{}")], f("alpha_max_abs_diff"), worst])
        doc.table(["case", "scene", "image max abs diff", "pixels above 1e-4", "alpha max abs diff",
                   "worst gradient relative error"], table)
    speed = R.get(gpu, ("speed",)) if R.has(gpu, "speed") else []
    if speed:
        doc.add("Rasterization alone on the GPU, both backends in the same run (", Lit(gpu), "):")
        doc.blank()
        doc.table(["case", "measure", "gsplat", "ours (PyTorch)", "gsplat / ours"],
                  [[figure(R, gpu, ("speed", i, "case"), "{}"), figure(R, gpu, ("speed", i, "measure"), "{}"),
                    [figure(R, gpu, ("speed", i, "gsplat", "per_second_at_median"), "{:.0f}"), " per s"],
                    [figure(R, gpu, ("speed", i, "torch", "per_second_at_median"), "{:.1f}"), " per s"],
                    figure(R, gpu, ("speed", i, "gsplat_speedup_over_torch_median"), "{:.1f}")]
                   for i in range(len(speed))])
    for name in R.files("rasterizer*_cpu.json"):
        rows = R.get(name, ("rows",))
        doc.add("PyTorch rasterizer on the CPU (", Lit(name), "; ", device(R, name), ", ",
                meta(R, name, "date", op="day"), "):")
        doc.blank()
        f = lambda i, *path, fmt="{:.3f}": figure(R, name, ("rows", i, *path), fmt)
        doc.table(["scene", "threads", "configuration", "forward median", "forward + backward median",
                   "forward + backward min", "load"],
                  [[[f(i, "width", fmt="{}"), " × ", f(i, "height", fmt="{}"), ", ",
                     f(i, "n_gaussians", fmt="{:,}"), " Gaussians"], f(i, "threads", fmt="{}"),
                    f(i, "config", fmt="{}"), unit(f(i, "forward", "median_s"), " s"),
                    unit(f(i, "forward_backward", "median_s"), " s"), unit(f(i, "forward_backward", "min_s"), " s"),
                    f(i, "load_average_1min", fmt="{:.1f}")] for i in range(len(rows))])


def rows_table(doc: Doc, R: Results, name: str, header: Sequence[str], columns: Sequence[tuple[str, str]]) -> None:
    """A table with one line per entry of ``name``'s ``rows`` list: each column a (key, format) of that entry."""
    doc.table(header, [[figure(R, name, ("rows", i, key), fmt) for key, fmt in columns]
                       for i in range(len(R.get(name, ("rows",))))])


def section_scaling(doc: Doc, R: Results, svgs: dict[str, str]) -> None:
    doc.add("## Training cost against the number of Gaussians")
    doc.blank()
    files = R.files("optimize_scaling_*.json")
    if not files:
        doc.add("Not measured (", Lit("python -m bench.optimize_scaling_bench --cpu | --gpu"), ").")
        doc.blank()
        return
    series = []
    for name in files:
        rows = R.get(name, ("rows",))
        where = "GPU" if name.endswith("_gpu.json") else "CPU"
        for model in dict.fromkeys(r["model"] for r in rows):
            mine = [r for r in rows if r["model"] == model]
            series.append((f"{where} {model}", [r["gaussians"] for r in mine], [r["ms_per_step"] for r in mine]))
        doc.add("Full training step (render, losses, Adam; no densification), all Gaussians dynamic; ",
                device(R, name), ", ", meta(R, name, "date", op="day"), ", images ",
                figure(R, name, ("resolution", 0), "{}"), " × ", figure(R, name, ("resolution", 1), "{}"),
                ", SH degree ", figure(R, name, ("sh_degree",), "{}"), " (", Lit(name), "):")
        doc.blank()
        rows_table(doc, R, name, ["Gaussians", "deformation model", "it/s", "ms per step", "peak GPU MiB"],
                   [("gaussians", "{:,}"), ("model", "{}"), ("it_per_s", "{:.1f}"), ("ms_per_step", "{:.1f}"),
                    ("peak_mib", "{}")])
    svgs["optimize_gaussians.svg"] = plots.line_chart(series, "Training step cost against the number of Gaussians",
                                                      "Gaussians", "ms per step", log_x=True, log_y=True)
    doc.add("![training step cost against Gaussians](plots/optimize_gaussians.svg)")
    doc.blank()


def section_plane_sampler(doc: Doc, R: Results) -> None:
    """The planes field's sampler alone: each way of gathering its corners beside the earlier gather."""
    name = "plane_sampler_cuda.json"
    doc.add("## The planes field's sampler")
    doc.blank()
    if not R.has(name, "rows"):
        doc.add("Not measured (", Lit("python -m bench.plane_sampler_bench"), " on a GPU).")
        doc.blank()
        return
    doc.add("Forward + backward of `sample_plane_products` (the dnerf preset's planes: ", Lit("12"), " planes, ",
            Lit("16"), " features; CUDA events, median of rounds), each method of `plane_sampler.METHODS`; ",
            device(R, name), ", ", meta(R, name, "date", op="day"), " (", Lit(name), "):")
    doc.blank()
    rows_table(doc, R, name, ["points", "method", "ms", "speed-up over gather", "peak MiB"],
               [("points", "{:,}"), ("method", "{}"), ("ms_forward_backward", "{:.2f}"),
                ("speedup_over_gather", "{:.2f}"), ("peak_extra_mib", "{:.0f}")])


def section_e2e(doc: Doc, R: Results, svgs: dict[str, str]) -> None:
    doc.add("## End to end (`page4dgs reconstruct`)")
    doc.blank()
    files = R.files("e2e_*.json")
    if not files:
        doc.add("Not measured (", Lit("python -m bench.e2e_bench demo | synthetic | lady-running"), ").")
        doc.blank()
    for name in files:
        runs = R.get(name, ("runs",))
        doc.add("### ", figure(R, name, ("suite",), "{}"), " (", Lit(name), ")")
        doc.blank()
        doc.add(runs_device(R, name), ", ", meta(R, name, "date", op="day"),
                "; wall time of the whole command, per-stage wall time and peak resident memory from the run's "
                "manifest, held-out image metrics from its metrics.json.")
        doc.blank()
        table = []
        for i, run in enumerate(runs):
            f = lambda *path, fmt="{:.1f}": figure(R, name, ("runs", i, *path), fmt)
            stages = run.get("stages", {})
            rss = [(name, ("runs", i, "stages", s, "peak_rss_mib")) for s in stages]
            gpu = [(name, ("runs", i, "stages", s, "peak_gpu_mib")) for s in stages]
            table.append([f("id", fmt="{}"), f("preset", fmt="{}"), f("device", fmt="{}") or device(R, name),
                          f("returncode", fmt="{}"), f("wall_s")]
                         + [f("stages", s, "wall_s") for s in STAGES]
                         + [figure(R, name, rss[0][1], "{:.0f}", "max", rss[1:]) if rss else None,
                            figure(R, name, gpu[0][1], "{:.0f}", "max", gpu[1:]) if gpu else None,
                            f("stages", "optimize", "summary", "gaussians", fmt="{:,}"),
                            f("metrics", "psnr", fmt="{:.2f}"), f("metrics", "ssim", fmt="{:.3f}"),
                            f("metrics", "lpips_alex", fmt="{:.3f}")])
        doc.table(["run", "preset", "device", "exit", "total s", *[f"{s} s" for s in STAGES], "peak RSS MiB", "peak GPU MiB",
                   "Gaussians", "PSNR", "SSIM", "LPIPS-alex"], table)
        summary = R.get(name, ("summary",))
        if summary is not MISSING and summary:
            f = lambda i, key, fmt: figure(R, name, ("summary", i, key), fmt)
            together = any("side_by_side" in row for row in summary)       # files since the column exists
            lone = together and any(row.get("side_by_side", 1) > 1 and row.get("lone_optimize_s") is not None
                                    for row in summary)                   # lone runs beside shared ones
            held = any(row.get("held_out_psnr") is not None for row in summary)   # seeds no setting was chosen on
            doc.table(["scene", "deformation model", "runs", "PSNR"] + (["PSNR held out (seeds)"] if held else [])
                      + ["dB over static", "SSIM", "LPIPS-alex", "optimize s", "total s"]
                      + (["runs side by side"] if together else [])
                      + (["optimize s, lone runs (seeds)"] if lone else []),
                      [[f(i, "kind", "{}"), f(i, "deformation", "{}"), f(i, "runs", "{}"), f(i, "psnr", "{:.2f}")]
                       + ([[f(i, "held_out_psnr", "{:.2f}"), " (",
                            figure(R, name, ("summary", i, "held_out_seeds"), "{}", "join"), ")"]
                           if summary[i].get("held_out_psnr") is not None else None] if held else [])
                       + [f(i, "psnr_over_static", "{:+.2f}"), f(i, "ssim", "{:.3f}"), f(i, "lpips_alex", "{:.3f}"),
                        f(i, "optimize_s", "{:.1f}"), f(i, "wall_s", "{:.1f}")]
                       + ([f(i, "side_by_side", "{}")] if together else [])
                       + ([[f(i, "lone_optimize_s", "{:.1f}"), " (",
                            figure(R, name, ("summary", i, "lone_seeds"), "{}", "join"), ")"]
                           if summary[i].get("lone_optimize_s") is not None else None] if lone else [])
                       for i in range(len(summary))])
            if held:
                doc.add("'PSNR held out': the mean over the seeds outside the object suite's tuning seeds ",
                        Lit("0-9"), " (bench/e2e_bench.py TUNING_SEEDS), which the headline target is judged on.")
                doc.blank()
            if any(row.get("side_by_side", 1) > 1 for row in summary):
                doc.add("Where more than one run shared the GPU host ('runs side by side': the most of any of the "
                        "model's runs), the times are not lone times; the quality figures are unaffected."
                        + (" 'optimize s, lone runs': the mean optimize stage of the runs that had the host to "
                           "themselves, and their seeds." if lone else ""))
                doc.blank()
        stem = name.removesuffix(".json")
        labels = [r["id"] for r in runs]
        stage = lambda s, key: [r.get("stages", {}).get(s, {}).get(key) for r in runs]
        svgs[f"{stem}_time.svg"] = plots.bar_chart(labels, [(s, stage(s, "wall_s")) for s in STAGES],
                                                   f"{stem}: wall time per stage", "seconds", stacked=True)
        svgs[f"{stem}_memory.svg"] = plots.bar_chart(labels, [(s, stage(s, "peak_rss_mib")) for s in STAGES],
                                                     f"{stem}: peak resident memory per stage", "MiB", stacked=False)
        doc.add(f"![{stem} time per stage](plots/{stem}_time.svg) ![{stem} memory per stage](plots/{stem}_memory.svg)")
        if any(v for s in STAGES for v in stage(s, "peak_gpu_mib")):
            svgs[f"{stem}_gpu_memory.svg"] = plots.bar_chart(labels, [(s, stage(s, "peak_gpu_mib")) for s in STAGES],
                                                             f"{stem}: peak CUDA memory per stage", "MiB",
                                                             stacked=False)
            doc.add(f" ![{stem} GPU memory per stage](plots/{stem}_gpu_memory.svg)")
        doc.blank()


def section_evaluate(doc: Doc, R: Results) -> None:
    doc.add("## Evaluation (issue #", Lit("7"), ")")
    doc.blank()
    name = "lpips_parity.json"
    worst = figure(R, name, ("max_abs_diff",), "{:.1e}")
    targets_table(doc, [Measured("LPIPS-alex within 1e-4 of the official values on the 5 fixture pairs", worst,
                                 [worst, " (largest absolute difference)"], at_most(1e-4), None, device(R, name),
                                 name)])
    pairs = R.get(name, ("pairs",))
    if pairs is not MISSING:
        f = lambda i, key, fmt: figure(R, name, ("pairs", i, key), fmt)
        doc.table(["image", "ours", "official", "absolute difference"],
                  [[f(i, "image", "{}"), f(i, "lpips_alex", "{:.5f}"), f(i, "official", "{:.5f}"),
                    f(i, "abs_diff", "{:.1e}")] for i in range(len(pairs))])


def section_suite(doc: Doc, R: Results) -> None:
    from bench.run import GROUPS

    doc.add("## What ran, and what is still to run on a GPU")
    doc.blank()
    for group in GROUPS:
        name = f"suite_{group}.json"
        if R.has(name, "steps"):
            steps = R.get(name, ("steps",))
            doc.add("Last `python -m bench.run ", group, "` (", device(R, name), ", ", meta(R, name, "date", op="day"),
                    "):")
            doc.blank()
            doc.table(["step", "status", "seconds"],
                      [[figure(R, name, ("steps", i, "name"), "{}"), figure(R, name, ("steps", i, "status"), "{}"),
                        figure(R, name, ("steps", i, "seconds"), "{:.0f}")] for i in range(len(steps))])
    doc.add("GPU steps (", Lit("`python -m bench.run --list`"), "). The session that built this suite spent its GPU "
            "time on the rasterizer's parity and speed, the generator's throughput, the partial geometry sweep and "
            "training page4d-tiny; a step without its results file has not run on a GPU yet. On a GPU host, with "
            "the wheels our dependencies need in `.whl/` (and a carried gsplat build in `.gsplat_ext/prebuilt/`, see "
            "`scripts/gsplat_prebuilt.py`), each step is one or a few calls of at most ten minutes; the geometry "
            "calls also carry the official checkout `.official/PAGE4D`, the real clip's a copy of "
            "`../shared/data/lady-running` in `.cache/lady-running`:")
    doc.blank()
    rows = []
    for step in GROUPS["gpu"]:
        file, _, section = step.results.partition(":")
        present = R.has(file, section) if section else R.has(file)
        state = "measured" if present else "not run"
        if step.name == "geometry" and not present and R.files("logs/geometry_gpu_*.txt"):
            state = "partial (log of an interrupted run)"
        rows.append([Lit(step.name), state, Lit("<br>".join(f"`{c}`" for c in step.gpu_host_commands())),
                     Lit(step.results)])
    doc.table(["step", "status", "run it with", "source"], rows)
    doc.add("The end-to-end suites record each finished run and skip it when the same command runs again, so a "
            "suite longer than one call's time limit continues where it stopped; `PAGE4D_OFFICIAL=/path/to/PAGE4D` "
            "puts the official model beside ours in the geometry step; docs/benchmarks.md says how to split the "
            "geometry sweep over calls and carry the real clip. Afterwards `python -m bench.summarize` regenerates "
            "this file.")
    doc.blank()


def section_files(doc: Doc, R: Results) -> None:
    doc.add("## Results files")
    doc.blank()
    rows = []
    for name in R.files("*.json") + R.files("training/*.json") + R.files("logs/*.txt"):
        sections = [s for s in ("cpu", "gpu") if name == "synthetic.json" and R.has(name, s)] or [None]
        for section in sections:
            rows.append([Lit(name + (f" ({section})" if section else "")), device(R, name, section),
                         meta(R, name, "driver", section), meta(R, name, "torch", section),
                         meta(R, name, "cuda", section), meta(R, name, "gsplat", section),
                         meta(R, name, "date", section, op="day"), meta(R, name, "git_commit", section, op="short"),
                         meta(R, name, "command", section, op="oneline")])
    doc.table(["file", "device", "driver", "torch", "CUDA", "gsplat", "date", "commit", "command"], rows)


def build(results: Optional[Results] = None) -> tuple[str, list, dict[str, str]]:
    """(README text, spans of figures and typed pieces, {plot file name: SVG text})."""
    R = results or Results()
    doc, svgs = Doc(), {}
    doc.add("# Benchmarks")
    doc.blank()
    doc.add("Generated by `python -m bench.summarize` from `bench/results/`; do not edit by hand. Every figure below "
            "is read from the results file named beside it (`tests/bench/test_summary.py` checks this), with the "
            "device it ran on; \"not measured\" means no results file holds it yet. Status: \"met\" when the figure "
            "satisfies the issue's target (timings by their median where a file has one), else \"missed\". "
            "`make bench` runs the GPU suite, `make bench-cpu` the CPU one (`bench/run.py`).")
    doc.blank()
    section_synthetic(doc, R)
    section_geometry(doc, R, svgs)
    section_tiny(doc, R)
    section_camera_refinement(doc, R)
    section_train_scaling(doc, R)
    section_rasterizer(doc, R)
    section_scaling(doc, R, svgs)
    section_plane_sampler(doc, R)
    section_e2e(doc, R, svgs)
    section_evaluate(doc, R)
    section_suite(doc, R)
    section_files(doc, R)
    text, spans = doc.render()
    return text.rstrip("\n") + "\n", spans, svgs


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md or a plot is not current")
    args = parser.parse_args(argv)
    text, _, svgs = build()
    wanted = {README: text, **{PLOTS / k: v for k, v in svgs.items()}}
    stale = [p for p, content in wanted.items() if not p.is_file() or p.read_text() != content]
    extra = [p for p in PLOTS.glob("*.svg") if p not in wanted]
    if args.check:
        for p in stale + extra:
            print(f"not current: {p.relative_to(BENCH.parent)}")
        return 1 if stale or extra else 0
    PLOTS.mkdir(exist_ok=True)
    for p in extra:
        p.unlink()
    for p, content in wanted.items():
        p.write_text(content)
    print(f"wrote {README.relative_to(BENCH.parent)} and {len(svgs)} plots in {PLOTS.relative_to(BENCH.parent)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
