"""The stage graph and the run folder: caching, atomic stage outputs, resume, manifest.

A stage is a function ``run(ctx: StageContext) -> dict`` (the returned dict is a short summary stored in the
manifest). It reads upstream artifacts from ``ctx.run_dir`` and writes its own into ``ctx.work_dir``, whose layout
mirrors the run folder. When the stage returns, each of its declared outputs is moved into the run folder and the
manifest records the stage's input hash (its config sections, the scene, the upstream output hashes), output hash,
wall time and peak memory. A later run skips a stage whose input hash and files are unchanged.

If a run is interrupted (Ctrl-C, SIGTERM, a crash), nothing in the run folder is touched: the finished stages stay
valid and the interrupted stage's work folder (``.work/<stage>``) is kept, so a stage that checkpoints (optimize)
continues from its last checkpoint when the same command is run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import platform
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

from pipeline import __version__
from pipeline.config import Config, dump_yaml, read_yaml
from pipeline.errors import UserError
from pipeline.io import read_json, sha256_file, sha256_json, write_json, write_text
from pipeline.log import add_file_log, get_logger
from pipeline.scene import Scene
from pipeline.scene.config import canonical_source

log = get_logger("runner")


@dataclass(frozen=True)
class StageSpec:
    """A node of the stage graph."""

    name: str
    entry: Any                   # "module:function", or the function itself
    outputs: tuple[str, ...]     # paths (relative to the run folder) that this stage owns
    upstream: tuple[str, ...]    # stages whose outputs it reads
    sections: tuple[str, ...]    # config sections that its input hash covers (besides seed and device)
    check: str = ""              # "module:function" refusing bad values of its config section, run up front
    reads: Any = ""              # "module:function" or a function (config -> dict) naming the files outside
                                 # the run folder and the scene that the stage reads (e.g. network weights),
                                 # with their content digests: part of its input hash, so a changed file reruns
                                 # the stage


STAGES: tuple[StageSpec, ...] = (
    StageSpec("geometry", "stages.geometry:run", ("geometry",), (), ("scene", "geometry"),
              "stages.geometry.stage:check_config", reads="stages.geometry.stage:external_inputs"),
    StageSpec("initialize", "stages.initialize:run", ("initialize",), ("geometry",), ("initialize",),
              "stages.initialize.stage:check_config"),
    StageSpec("optimize", "stages.optimize:run", ("optimize",), ("geometry", "initialize"), ("optimize",),
              "stages.optimize.stage:check_config"),
    StageSpec("render", "stages.render:run", ("render", "videos"), ("geometry", "optimize"), ("render",),
              "stages.render.stage:check_config"),
    StageSpec("evaluate", "stages.evaluate:run", ("metrics.json", "report.html"),
              ("geometry", "initialize", "optimize", "render"), ("evaluate",), "stages.evaluate.stage:check_config"),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stage_function(spec: StageSpec) -> Optional[Callable[["StageContext"], dict]]:
    """The stage's entry point, or None while that stage is not implemented."""
    if callable(spec.entry):
        return spec.entry
    module_name, func_name = spec.entry.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:
            return None
        raise
    return getattr(module, func_name, None)


@dataclass
class StageContext:
    """What a stage sees: the config, the scene, where to read upstream artifacts and where to write its own."""

    spec: StageSpec
    run_dir: Path
    work_dir: Path
    config: Config
    scene: Scene
    device: str
    resumed: bool = False
    log: Any = field(default=None)

    @property
    def section(self) -> Any:
        return self.config.sections.get(self.spec.name)

    def out(self, relative: str | Path) -> Path:
        """Path for one of this stage's artifacts (inside the work folder; parents created)."""
        path = self.work_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def artifact(self, relative: str | Path) -> Path:
        """Path of an upstream artifact in the run folder; a missing one is an error naming it."""
        path = self.run_dir / relative
        if not path.exists():
            raise UserError(f"missing upstream artifact '{relative}' (rerun with --from an earlier stage)",
                            self.run_dir)
        return path


# ----------------------------------------------------------------------------------------------------------------
# Measurements


class PeakMemory:
    """Samples this process's resident memory (and CUDA's peak allocation) while a stage runs."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def rss_bytes() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.rss_bytes())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "PeakMemory":
        self.peak_rss = self.rss_bytes()
        torch = _torch_if_loaded()
        if torch is not None and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.rss_bytes())

    @staticmethod
    def peak_gpu_bytes() -> int:
        torch = _torch_if_loaded()
        if torch is not None and torch.cuda.is_available():
            return int(torch.cuda.max_memory_allocated())
        return 0


def _torch_if_loaded():
    import sys

    return sys.modules.get("torch")


def resolve_device(name: str, advice: str = "use device=auto or device=cpu") -> str:
    """'auto' -> 'cuda' when available, else 'cpu'; 'cuda' without CUDA is a user error ending in ``advice`` (the
    option of the command at hand)."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device=cuda was requested but no CUDA device is available ({advice})")
    return name


def versions() -> dict[str, str]:
    out = {"page4dgs": __version__, "python": platform.python_version()}
    for name in ("torch", "gsplat", "numpy"):
        try:
            out[name] = importlib.import_module(name).__version__
        except Exception:
            out[name] = "missing"
    torch = _torch_if_loaded()
    if torch is not None:
        out["cuda"] = str(torch.version.cuda)
    return out


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ----------------------------------------------------------------------------------------------------------------
# Manifest


def tree_files(run_dir: Path, outputs: tuple[str, ...]) -> list[tuple[str, int]]:
    """(relative path, size) of every file under the given outputs."""
    files = []
    for out in outputs:
        path = run_dir / out
        if path.is_file():
            files.append((out, path.stat().st_size))
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file():
                    files.append((p.relative_to(run_dir).as_posix(), p.stat().st_size))
    return files


def output_hash(run_dir: Path, files: list[tuple[str, int]]) -> str:
    return sha256_json([(rel, sha256_file(run_dir / rel)) for rel, _ in files])


class Manifest:
    """``manifest.json``: per stage status, hashes, timing, memory, device and versions."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "manifest.json"
        self.data: dict[str, Any] = {"page4dgs": __version__, "stages": {}}
        if self.path.exists():
            try:
                data = read_json(self.path)
            except UserError:
                log.warning("manifest.json is unreadable; every stage will run again")
            else:
                stages = data.get("stages", {}) if isinstance(data, dict) else None
                if isinstance(stages, dict) and all(isinstance(v, dict) for v in stages.values()):
                    self.data = {**data, "stages": stages}
                else:
                    log.warning("manifest.json is not a page4dgs manifest; every stage will run again")

    def stage(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def update(self, name: str, **entry: Any) -> None:
        self.data["stages"][name] = entry
        write_json(self.path, self.data)


# ----------------------------------------------------------------------------------------------------------------
# Runner


def _hashed_section(config: Config, name: str) -> dict:
    """A config section as it enters a stage's input hash; the scene's source as
    :func:`~pipeline.scene.config.canonical_source` gives it, so the same folder named relatively or absolutely
    reuses the stages already run."""
    values = dataclasses.asdict(config.sections[name])
    if name == "scene" and values.get("source"):
        values["source"] = canonical_source(values["source"])
    return values


def input_hash(spec: StageSpec, config: Config, scene_fingerprint: dict, manifest: Manifest) -> tuple[str, dict]:
    parts = {
        "stage": spec.name,
        "seed": config.seed,
        "device": config.device,
        "sections": {s: _hashed_section(config, s) for s in spec.sections},
        "scene": scene_fingerprint,
        "upstream": {u: manifest.stage(u).get("output_hash") for u in spec.upstream},
    }
    if spec.reads:
        reads = spec.reads if callable(spec.reads) else _function(spec.reads)
        parts["reads"] = reads(config)
    return sha256_json(parts), parts["upstream"]


def is_current(spec: StageSpec, run_dir: Path, manifest: Manifest, in_hash: str) -> bool:
    entry = manifest.stage(spec.name)
    if entry.get("status") != "done" or entry.get("input_hash") != in_hash:
        return False
    files = entry.get("files", [])
    if not (isinstance(files, list) and all(isinstance(f, list) and len(f) == 2 for f in files)):
        log.warning(f"manifest.json: the '{spec.name}' entry is malformed; the stage will run again")
        return False
    expected = [tuple(f) for f in files]
    return expected == tree_files(run_dir, spec.outputs)


def stale_stages(entries: dict[str, Any], stages: tuple[StageSpec, ...] = STAGES) -> dict[str, str]:
    """Finished stages whose outputs were made from upstream outputs that have been replaced since (a later
    ``reconstruct --until`` ran an earlier stage again): stage -> the upstream stage it is stale against (directly,
    or through a stale upstream stage). From the manifest's per-stage ``entries`` (recorded hashes) alone."""
    def entry_of(name: str) -> dict[str, Any]:
        entry = entries.get(name)
        return entry if isinstance(entry, dict) else {}

    stale: dict[str, str] = {}
    for spec in stages:
        entry = entry_of(spec.name)
        recorded = entry.get("upstream_hashes")
        if entry.get("status") != "done" or not isinstance(recorded, dict):
            continue
        for name in spec.upstream:
            if name in stale:
                stale[spec.name] = stale[name]
                break
            if name in recorded and recorded[name] != entry_of(name).get("output_hash"):
                stale[spec.name] = name
                break
    return stale


def check_not_stale(run_dir: Path, reads: Optional[tuple[str, ...]] = None,
                    stages: tuple[StageSpec, ...] = STAGES) -> None:
    """Refuse a run folder in which a stage whose outputs a command ``reads`` (None: every stage) was made from
    earlier upstream outputs than the folder now holds (render, export and evaluate use those outputs as they are)."""
    try:
        entries = read_json(run_dir / "manifest.json").get("stages")
    except (UserError, AttributeError):         # no manifest, or not one: the commands' own checks speak
        return
    stale = stale_stages(entries, stages) if isinstance(entries, dict) else {}
    stale = {name: upstream for name, upstream in stale.items() if reads is None or name in reads}
    if stale:
        first = next(iter(stale))
        raise UserError(f"its {', '.join(stale)} outputs were made before its {stale[first]} stage ran again: "
                        "run `page4dgs reconstruct` on this run folder to bring them up to date", run_dir)


def commit_outputs(spec: StageSpec, work_dir: Path, run_dir: Path) -> None:
    """Move the stage's outputs from its work folder into the run folder (each entry by an atomic rename)."""
    for out in spec.outputs:
        src, dst = work_dir / out, run_dir / out
        trash = run_dir / ".work" / f".old-{spec.name}-{Path(out).name}"
        if trash.exists():
            shutil.rmtree(trash) if trash.is_dir() else trash.unlink()
        if dst.exists():
            os.replace(dst, trash)
        if src.exists():
            os.replace(src, dst)
        if trash.exists():
            shutil.rmtree(trash) if trash.is_dir() else trash.unlink()


def _function(name: str) -> Callable:
    """The function a "module:function" string names."""
    module_name, func_name = name.split(":")
    return getattr(importlib.import_module(module_name), func_name)


def check_stage_configs(config: Config, stages: tuple[StageSpec, ...] = STAGES) -> None:
    """The run's seed, the scene options and every stage's check of its own config section, so that a bad value
    fails before hours of earlier stages (and ``page4dgs config`` refuses what ``reconstruct`` would)."""
    from pipeline.scene import check_scene_options

    if not 0 <= config.seed < 2**32:       # numpy's and torch's generators take seeds in [0, 2**32)
        raise UserError(f"seed must be an integer in [0, 2**32) (got {config.seed})")
    check_scene_options(config.scene)
    for spec in stages:
        if spec.check:
            _function(spec.check)(getattr(config, spec.name))


def check_stage_range(from_stage: Optional[str], until_stage: Optional[str],
                      stages: tuple[StageSpec, ...] = STAGES) -> None:
    """``--from`` and ``--until`` name stages, the first not after the second."""
    names = [s.name for s in stages]
    for option, value in (("--from", from_stage), ("--until", until_stage)):
        if value is not None and value not in names:
            raise UserError(f"{option}: unknown stage '{value}' (stages: {', '.join(names)})")
    if from_stage is not None and until_stage is not None and names.index(from_stage) > names.index(until_stage):
        raise UserError(f"--from {from_stage} comes after --until {until_stage}: no stage would run "
                        f"(stages in order: {', '.join(names)})")


def run_pipeline(config: Config, run_dir: Path, scene: Scene, from_stage: Optional[str] = None,
                 until_stage: Optional[str] = None, stages: tuple[StageSpec, ...] = STAGES) -> dict[str, dict]:
    """Run every stage that is out of date, in order. Returns each stage's manifest entry."""
    check_stage_range(from_stage, until_stage, stages)
    check_stage_configs(config, stages)
    resolve_device(config.device)               # device=cuda without CUDA: refused before the folder is made
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_folder_lock(run_dir):
        handler = add_file_log(run_dir / "log.txt")
        try:
            return _run(config, run_dir, scene, from_stage, until_stage, stages)
        finally:
            get_logger().removeHandler(handler)
            handler.close()


@contextlib.contextmanager
def run_folder_lock(run_dir: Path):
    """Hold an exclusive lock on ``run_dir`` (``.work/lock``, flock) while its stages run: a second process on the same
    folder would commit outputs under the first one's feet. The lock goes with the process, however it ends. Where
    flock is missing (not POSIX) runs are not locked."""
    try:
        import fcntl
    except ImportError:            # pragma: no cover - Windows
        yield
        return
    lock_path = run_dir / ".work" / "lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            raise UserError(f"another page4dgs process{f' (pid {holder})' if holder.isdigit() else ''} is running "
                            "in this run folder; wait for it to finish or choose another --out", run_dir) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(config: Config, run_dir: Path, scene: Scene, from_stage: Optional[str], until_stage: Optional[str],
         stages: tuple[StageSpec, ...]) -> dict[str, dict]:
    device = resolve_device(config.device)
    # config.yaml describes the run's outputs: a new run writes it at once; an existing run's copy is replaced only
    # once a stage has finished with the new config, so a failed attempt leaves the old description in place.
    if not (run_dir / "config.yaml").exists():
        _write_run_config(config, run_dir)
    manifest = Manifest(run_dir)
    # Where the run was made from: a relative scene.source in config.yaml is relative to it (render, export and
    # evaluate resolve it from there when they run elsewhere). Not part of any hash.
    manifest.data["working_directory"] = os.getcwd()
    fingerprint = scene.fingerprint()
    forced = False
    results: dict[str, dict] = {}
    for spec in stages:
        forced = forced or spec.name == from_stage
        func = stage_function(spec)
        if func is None:
            log.info(f"[{spec.name}] not implemented yet: stopping here")
            break
        in_hash, upstream = input_hash(spec, config, fingerprint, manifest)
        work_dir = run_dir / ".work" / spec.name
        if not forced and is_current(spec, run_dir, manifest, in_hash):
            log.info(f"[{spec.name}] up to date, skipped")
            results[spec.name] = manifest.stage(spec.name)
        else:
            results[spec.name] = _run_stage(spec, func, config, run_dir, work_dir, scene, device, manifest,
                                            in_hash, upstream, fresh=forced)
            _write_run_config(config, run_dir)
        if spec.name == until_stage:
            break
    if not _readable_config(run_dir):
        # every stage was up to date (else config.yaml was written after it ran), so this config describes them
        log.warning("config.yaml was unreadable; written again from this run's config")
        _write_run_config(config, run_dir)
    stale = stale_stages(manifest.data["stages"], stages)
    if stale:
        log.warning(f"the {', '.join(stale)} outputs in this run folder predate what it now holds upstream: "
                    "render, export and evaluate refuse them until `reconstruct` runs those stages again")
    return results


def _write_run_config(config: Config, run_dir: Path) -> None:
    write_text(run_dir / "config.yaml", dump_yaml(config, header=f"Resolved config of this run (page4dgs "
                                                                  f"{__version__}). Rerun with --config this file."))


def _readable_config(run_dir: Path) -> bool:
    """Whether ``run_dir/config.yaml`` parses to a non-empty mapping."""
    try:
        data = read_yaml(run_dir / "config.yaml")
    except (UserError, OSError):
        return False
    return isinstance(data, dict) and bool(data)


def _read_marker(marker: Path) -> str | None:
    """The input hash a work folder was started with; None if absent or unreadable (a fresh start, not an error)."""
    try:
        return marker.read_bytes().decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None


def _run_stage(spec, func, config, run_dir, work_dir, scene, device, manifest, in_hash, upstream,
               fresh: bool) -> dict:
    marker = work_dir / ".input_hash"
    resumed = not fresh and _read_marker(marker) == in_hash
    if not resumed:
        shutil.rmtree(work_dir, ignore_errors=True)
        work_dir.mkdir(parents=True)
        marker.write_text(in_hash)
    log.info(f"[{spec.name}] {'resuming' if resumed else 'running'}")
    previous = manifest.stage(spec.name)
    manifest.update(spec.name, status="running", input_hash=in_hash,
                    started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    ctx = StageContext(spec=spec, run_dir=run_dir, work_dir=work_dir, config=config, scene=scene,
                       device=device, resumed=resumed, log=get_logger(spec.name))
    start = time.perf_counter()
    try:
        with PeakMemory() as mem:
            summary = func(ctx) or {}
    except BaseException as err:
        # Leave the run folder as it was: finished outputs stay, this stage's work folder is kept for resuming.
        # A stage that had finished before keeps its "done" entry (its outputs are untouched and still match its
        # recorded inputs); the failed attempt is recorded beside it.
        entry = dict(previous) if previous else {}
        if entry.get("status") != "done":
            entry["status"] = "interrupted"
        entry["input_hash_attempted"] = in_hash
        try:
            manifest.update(spec.name, **entry)
        except OSError:         # a full disk may refuse this too: the stage's own error is the one to report
            pass
        if isinstance(err, OSError) and not err.filename:
            # e.g. a disk that filled during a write: the system names no path, so say where it happened
            raise UserError(f"stage '{spec.name}' stopped: {err.strerror or err} (finished stages are kept; run "
                            "the same command again to resume)", run_dir) from None
        raise
    wall = time.perf_counter() - start
    commit_outputs(spec, work_dir, run_dir)
    files = tree_files(run_dir, spec.outputs)
    entry = {
        "status": "done",
        "input_hash": in_hash,
        "config_hash": sha256_json({s: dataclasses.asdict(config.sections[s]) for s in spec.sections}),
        "upstream_hashes": upstream,
        "output_hash": output_hash(run_dir, files),
        "files": files,
        "wall_s": round(wall, 3),
        "peak_rss_mb": round(mem.peak_rss / 2**20, 1),
        "peak_gpu_mb": round(PeakMemory.peak_gpu_bytes() / 2**20, 1),
        "device": device_name(device),
        "versions": versions(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "summary": summary,
    }
    manifest.update(spec.name, **entry)
    shutil.rmtree(work_dir, ignore_errors=True)
    log.info(f"[{spec.name}] done in {wall:.1f} s" + (f": {_short(summary)}" if summary else ""))
    return entry


def _short(summary: dict) -> str:
    parts = []
    for k, v in summary.items():
        if isinstance(v, float):
            parts.append(f"{k} {v:.4g}")
        elif isinstance(v, (int, str)):
            parts.append(f"{k} {v}")
    return ", ".join(parts[:6])
