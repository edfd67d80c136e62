"""Reuse gsplat's compiled CUDA extension across fresh GPU hosts instead of compiling it again (about a minute).

    python3 scripts/gsplat_prebuilt.py ensure .gsplat_ext/prebuilt --site /tmp/page4dgs-site
    python3 scripts/gsplat_prebuilt.py fingerprint

Why gsplat rebuilt a carried ``gsplat_cuda.so`` (gsplat 1.5.3 ``gsplat/cuda/_backend.py``): it first tries
``from gsplat import csrc`` (a prebuilt module; absent in the source wheel), then JIT-compiles through torch's
``_jit_compile``. That function keeps its "already built" record in memory only (``JIT_EXTENSION_VERSIONER``), so in
every new process it rewrites ``build.ninja`` and runs ninja, and ninja recompiles every object file that is missing
or older than its source; only the .so was carried (the objects are larger than the carry limit allows), and pip
gives the freshly installed sources new modification times, so everything was compiled again.

What this does instead: ``ensure`` compares the host with the ``build.json`` stored next to a carried
``gsplat_cuda.so`` (gsplat, torch, CUDA and Python versions, the C++ ABI, TORCH_CUDA_ARCH_LIST and the fast-math
switch, plus the file's SHA-256). When they match, it writes ``gsplat/csrc.py`` into the gsplat package installed in
the private ``--site`` folder: a module that loads the carried file under its own init name (``gsplat_cuda``) and
takes the place of ``gsplat.csrc``, so gsplat's first import attempt succeeds and nothing is compiled. Any mismatch
(or a load error, which gsplat catches as ImportError) falls back to the normal JIT build; after a build, the new .so
and its build.json are stored in the prebuilt folder, ready to be carried to the next host. Packages outside
``--site`` (the host's own) are never modified.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
import time
from pathlib import Path
from typing import Optional

SO_NAME = "gsplat_cuda.so"         # torch's JIT names the library after the extension (gsplat_cuda)
SHIM = "csrc.py"                   # gsplat/csrc.py: what `from gsplat import csrc` finds first
SHIM_TEXT = '''"""Written by scripts/gsplat_prebuilt.py: gsplat's CUDA extension, built earlier on a host with the same
versions (see that script), loaded as gsplat.csrc; a failure here is an ImportError, after which gsplat compiles."""
import importlib.util
import sys

import torch  # noqa: F401  (the library links against libtorch, which must be loaded first)

_spec = importlib.util.spec_from_file_location("gsplat_cuda", {so!r})
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)
sys.modules[__name__] = _module
'''


def fingerprint() -> dict[str, Optional[str]]:
    """What a compiled gsplat extension depends on. Reads versions without importing gsplat (whose import may start
    a build)."""
    import torch

    return {"gsplat": importlib.metadata.version("gsplat"), "torch": torch.__version__,
            "cuda": torch.version.cuda, "python_abi": sysconfig.get_config_var("EXT_SUFFIX"),
            "cxx11_abi": str(bool(torch._C._GLIBCXX_USE_CXX11_ABI)),
            "arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST", ""),
            "no_fast_math": os.environ.get("NO_FAST_MATH", "0"), "fast_compile": os.environ.get("FAST_COMPILE", "0")}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def store(library: Path, prebuilt: Path) -> Path:
    """Copy a compiled extension into ``prebuilt`` with its build.json (this host's fingerprint and the checksum)."""
    prebuilt.mkdir(parents=True, exist_ok=True)
    target = prebuilt / SO_NAME
    if library.resolve() != target.resolve():
        shutil.copyfile(library, target.with_suffix(".tmp"))
        target.with_suffix(".tmp").replace(target)
    info = {"fingerprint": fingerprint(), "sha256": sha256(target), "built_from": str(library)}
    (prebuilt / "build.json").write_text(json.dumps(info, indent=2) + "\n")
    return target


def gsplat_package() -> Optional[Path]:
    spec = importlib.util.find_spec("gsplat")                     # finds the folder; runs nothing of gsplat
    return Path(next(iter(spec.submodule_search_locations))) if spec and spec.submodule_search_locations else None


def use_prebuilt(prebuilt: Path, site: Path) -> tuple[bool, str]:
    """Install the gsplat.csrc shim when the carried build fits this host. Returns (installed, why)."""
    package = gsplat_package()
    if package is None:
        return False, "gsplat is not installed"
    shim = package / SHIM
    if site.resolve() not in package.resolve().parents:
        return False, f"gsplat at {package} is not in {site} (the host's own packages are left alone)"
    shim.unlink(missing_ok=True)                                   # a stale shim from an earlier host never stays
    library, info_path = prebuilt / SO_NAME, prebuilt / "build.json"
    if not (library.is_file() and info_path.is_file()):
        return False, f"no carried build in {prebuilt}"
    info = json.loads(info_path.read_text())
    here = fingerprint()
    differs = {k: (info["fingerprint"].get(k), v) for k, v in here.items() if info["fingerprint"].get(k) != v}
    if differs:
        return False, "built for another host: " + ", ".join(f"{k} {a} != {b}" for k, (a, b) in differs.items())
    if sha256(library) != info["sha256"]:
        return False, f"{library} does not match the checksum in build.json"
    shim.write_text(SHIM_TEXT.format(so=str(library.resolve())))
    return True, f"using {library} (built for gsplat {here['gsplat']}, torch {here['torch']}, CUDA {here['cuda']})"


def ensure(prebuilt: Path, site: Path) -> int:
    """Load gsplat's extension (carried when it fits, else compiled) and keep a freshly compiled one for carrying."""
    installed, why = use_prebuilt(prebuilt, site)
    print(f"gsplat prebuilt: {why}", flush=True)
    start = time.perf_counter()
    from gsplat.cuda._backend import _C

    seconds = time.perf_counter() - start
    if _C is None:
        print("gsplat: the CUDA extension is not available (no CUDA toolkit, or the build failed)", file=sys.stderr)
        return 1
    library = Path(_C.__file__).resolve()
    carried = library == (prebuilt / SO_NAME).resolve()
    print(f"gsplat extension ready in {seconds:.1f} s from {library} ({'carried build' if carried else 'compiled'})")
    if installed and not carried:
        print("gsplat prebuilt: the carried build did not load; compiled instead", file=sys.stderr)
    if not carried:
        print(f"gsplat prebuilt: stored as {store(library, prebuilt)} (carry {prebuilt} to the next host)")
        use_prebuilt(prebuilt, site)                 # the processes that follow on this host load it directly too
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("ensure", help="load gsplat's extension, from the carried build where it fits")
    p.add_argument("prebuilt", type=Path, help="folder of the carried build (gsplat_cuda.so + build.json)")
    p.add_argument("--site", type=Path, required=True, help="the private folder the carried wheels went into")
    sub.add_parser("fingerprint", help="print what a build must match on this host")
    args = parser.parse_args(argv)
    if args.command == "fingerprint":
        print(json.dumps(fingerprint(), indent=2))
        return 0
    return ensure(args.prebuilt, args.site)


if __name__ == "__main__":
    sys.exit(main())
