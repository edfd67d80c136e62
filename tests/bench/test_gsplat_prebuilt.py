"""scripts/gsplat_prebuilt.py: a carried gsplat extension is loaded as gsplat.csrc by gsplat's own import code, only
when it was built for this host, and never by compiling.

The "extension" here is a tiny C module with gsplat's init name (``PyInit_gsplat_cuda``), compiled with the system C
compiler in a fraction of a second; gsplat's Python package is copied into a private site folder as the GPU host set-up
installs it. Subprocesses run without a CUDA toolkit on PATH, so a fallback to gsplat's JIT build would show as
``_C is None`` instead of compiling for minutes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gsplat_prebuilt.py"
FAKE_EXTENSION = r"""
#include <Python.h>
static PyObject *marker(PyObject *self, PyObject *args) { return PyUnicode_FromString("carried build"); }
static PyMethodDef methods[] = {{"marker", marker, METH_NOARGS, ""}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "gsplat_cuda", NULL, -1, methods};
PyMODINIT_FUNC PyInit_gsplat_cuda(void) { return PyModule_Create(&module); }
"""


def load_script():
    spec = importlib.util.spec_from_file_location("gsplat_prebuilt", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """(site folder with a copy of gsplat's Python package, a compiled fake extension)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    include = Path(sysconfig.get_paths()["include"])
    if compiler is None or not (include / "Python.h").is_file():
        pytest.skip("needs a C compiler and Python's headers")
    root = tmp_path_factory.mktemp("gsplat-prebuilt")
    source = root / "fake.c"
    source.write_text(FAKE_EXTENSION)
    library = root / "build" / "gsplat_cuda.so"
    library.parent.mkdir()
    subprocess.run([compiler, "-shared", "-fPIC", f"-I{include}", "-o", str(library), str(source)], check=True)
    installed = Path(importlib.util.find_spec("gsplat").submodule_search_locations[0])
    site = root / "site"
    shutil.copytree(installed, site / "gsplat", ignore=shutil.ignore_patterns("csrc", "include", "__pycache__"))
    return site, library


def host_env(site: Path) -> dict[str, str]:
    """The test's environment, gsplat from ``site``, and no CUDA toolkit to fall back to. The paths already on
    PYTHONPATH stay after it: on a GPU host they hold the carried wheels (gsplat's metadata and dependencies)."""
    path = os.pathsep.join(p for p in (str(site), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, PYTHONPATH=path, CUDA_HOME=str(site / "no-cuda"),
               PATH=os.pathsep.join(p for p in ("/usr/bin", "/bin") if Path(p).is_dir()))
    return env


def test_carried_build_is_loaded_as_gsplat_csrc_without_compiling(sandbox, tmp_path):
    site, library = sandbox
    prebuilt = tmp_path / "prebuilt"
    load_script().store(library, prebuilt)
    env = host_env(site)
    done = subprocess.run([sys.executable, str(SCRIPT), "ensure", str(prebuilt), "--site", str(site)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "(carried build)" in done.stdout, done.stdout
    assert (site / "gsplat" / "csrc.py").is_file()
    # A later process (a benchmark) gets the same module through gsplat's backend, as gsplat's ops look it up.
    check = ("from gsplat.cuda._backend import _C\n"
             "print(_C.marker(), _C.__file__)")
    later = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=120)
    assert later.returncode == 0, later.stderr
    marker, path = later.stdout.strip().rsplit(" ", 1)
    assert marker == "carried build"
    assert Path(path).resolve() == (prebuilt / "gsplat_cuda.so").resolve()


def test_a_build_for_another_host_is_not_used(sandbox, tmp_path, monkeypatch):
    site, library = sandbox
    script = load_script()
    monkeypatch.setattr(script, "gsplat_package", lambda: site / "gsplat")
    prebuilt = tmp_path / "prebuilt"
    script.store(library, prebuilt)
    assert script.use_prebuilt(prebuilt, site)[0]
    shim = site / "gsplat" / "csrc.py"
    assert shim.is_file()

    info = json.loads((prebuilt / "build.json").read_text())
    info["fingerprint"]["torch"] = "0.0.0"
    (prebuilt / "build.json").write_text(json.dumps(info))
    installed, why = script.use_prebuilt(prebuilt, site)
    assert not installed and "torch 0.0.0 !=" in why
    assert not shim.exists(), "a stale shim from an earlier host must not stay"

    script.store(library, prebuilt)                                 # matching again, but the file is altered
    with open(prebuilt / "gsplat_cuda.so", "ab") as f:
        f.write(b"\0")
    installed, why = script.use_prebuilt(prebuilt, site)
    assert not installed and "checksum" in why and not shim.exists()

    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0")               # compiled for another GPU architecture
    script.store(library, prebuilt)
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    installed, why = script.use_prebuilt(prebuilt, site)
    assert not installed and "arch_list 8.0 != 9.0" in why


def test_the_hosts_own_gsplat_is_left_alone(sandbox, tmp_path):
    site, library = sandbox
    script = load_script()
    prebuilt = tmp_path / "prebuilt"
    script.store(library, prebuilt)
    installed, why = script.use_prebuilt(prebuilt, tmp_path / "other-site")   # gsplat here is the venv's own
    assert not installed and "left alone" in why
