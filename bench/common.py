"""What every benchmark result records about where and how it was measured.

    from bench.common import environment
    record = {"environment": environment("cuda"), ...}

``environment(device)`` gives the device name, the NVIDIA driver (from ``nvidia-smi`` where present), the torch /
CUDA / cuDNN / gsplat / numpy / Python versions, the UTC date, the git commit (and whether the tree had changes), the
host's CPU and core count, the load average, and the exact command line of this process. ``bench/summarize.py`` reads
it (older result files carry some of these at the top level instead; the summary falls back to those).
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def command_line() -> str:
    """This process's command exactly as it was started (``python3 -m bench.x --gpu``), shell-quoted."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return " ".join(shlex.quote(a) for a in argv)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _run(cmd: list[str], cwd: Optional[Path] = None) -> Optional[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def nvidia_driver() -> Optional[str]:
    """Driver version of the first GPU from ``nvidia-smi``; None where it is absent."""
    out = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    return out.splitlines()[0].strip() if out else None


def git_state() -> dict[str, Any]:
    """The commit of the checkout and whether tracked files differ from it (None outside a git checkout).

    ``PAGE4DGS_GIT_COMMIT`` (set by whoever sends the tree to a GPU host, e.g. ``PAGE4DGS_GIT_COMMIT=$(git rev-parse
    HEAD)`` written into the command) wins: a host's copy of the checkout may carry a stale ``.git``; the tree is then
    reported as that commit with ``git_dirty`` None (unknown)."""
    given = os.environ.get("PAGE4DGS_GIT_COMMIT", "").strip()
    if given:
        return {"git_commit": given, "git_dirty": None, "git_commit_source": "PAGE4DGS_GIT_COMMIT"}
    commit = _run(["git", "rev-parse", "HEAD"], cwd=REPO)
    status = _run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO) if commit else None
    return {"git_commit": commit, "git_dirty": None if status is None else bool(status)}


def package_version(name: str) -> Optional[str]:
    """Installed version from the package metadata (does not import the package: gsplat's import may build CUDA
    code)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, Optional[str]]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": None, "gsplat": package_version("gsplat"), "numpy": package_version("numpy")}
    try:
        out["cudnn"] = str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
    except Exception:  # cuDNN probing can fail on hosts without the library
        pass
    return out


def device_name(device: str) -> str:
    """``NVIDIA H100 80GB HBM3`` for CUDA; ``cpu (AMD EPYC, 2 cores)`` for the CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({cpu_name()}, {os.cpu_count()} cores)"


def environment(device: str = "auto") -> dict[str, Any]:
    """Where and how this measurement ran. device: 'cuda', 'cpu' or 'auto' (CUDA when available)."""
    import torch

    if device == "auto" or (device.startswith("cuda") and not torch.cuda.is_available()):
        device = "cuda" if torch.cuda.is_available() else "cpu"        # what this process can actually use
    return {
        "date": utc_now(),
        "command": command_line(),
        "cwd": os.getcwd(),
        **git_state(),
        "device": device_name(device),
        "device_type": "cuda" if device.startswith("cuda") else "cpu",
        "driver": nvidia_driver() if device.startswith("cuda") else None,
        "versions": versions(),
        "host": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                 "platform": platform.platform()},
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def wall_times(fn: Callable[[], object], repeats: int, sync: Callable[[], object] = lambda: None,
               after_warmup: Callable[[], object] = lambda: None) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after one warm-up call; ``sync`` runs after every call (e.g.
    ``torch.cuda.synchronize``) and ``after_warmup`` once between the warm-up and the timed calls (e.g. resetting
    peak-memory statistics)."""
    fn()
    sync()
    after_warmup()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times
