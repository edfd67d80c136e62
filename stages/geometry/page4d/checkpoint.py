"""Finding and loading weights, key for key, without executing pickled code.

Formats (detected from the file):
- ``vggt``: facebook/VGGT-1B ``model.pt`` (a raw state dict) or ``model.safetensors``.
- ``page4d``: PAGE-4D ``checkpoint_nomask.pt`` / ``checkpoint_mask.pt`` (the trainer's dict, state dict under
  ``"model"``). The mask is on at inference for the mask variant and off for nomask.
- ``page4dgs``: our own safetensors, with the model config and flags in the header metadata; its weights are
  float16 (or float32), or 8-bit (``weights_format`` ``int8-per-channel-symmetric``, see :func:`encode_state`), which
  :func:`read_checkpoint` dequantizes, so every loader gets float tensors under the model's own names.

Where a file comes from: a path; an alias (``vggt-1b``, ``page4d-nomask``, ``page4d-mask``) looked up in the
Hugging Face cache, or downloaded through ``huggingface_hub`` where a network is allowed; or, for ``page4d-tiny``,
the bundled weights. The layout (VGGT or PAGE-4D) follows the file's keys; ``track_head.*`` entries are reported
and skipped (the track head is not built). Any other missing, unexpected or mis-shaped key is an error naming them.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch

from pipeline.errors import UserError
from stages.geometry.page4d.config import ModelConfig
from stages.geometry.page4d.model import PAGE4D

log = logging.getLogger("page4dgs.geometry.checkpoint")

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED = {"page4d-tiny": WEIGHTS_DIR / "page4d-tiny.safetensors"}
MASK_HEAD_PREFIX = "aggregator.spatial_mask_head."
IGNORED_PREFIXES = ("track_head.",)


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    repo_type: str  # "model" or "dataset"

    def __str__(self) -> str:
        kind = "dataset " if self.repo_type == "dataset" else ""
        return f"Hugging Face {kind}{self.repo_id}/{self.filename}"


ALIASES: dict[str, tuple[HubFile, ...]] = {
    "vggt-1b": (HubFile("facebook/VGGT-1B", "model.safetensors", "model"),
                HubFile("facebook/VGGT-1B", "model.pt", "model")),
    "page4d-nomask": (HubFile("zhouk777/PAGE4D", "checkpoint_nomask.pt", "dataset"),),
    "page4d-mask": (HubFile("zhouk777/PAGE4D", "checkpoint_mask.pt", "dataset"),),
}
DEFAULT_CHECKPOINT = {"page4d-1b": "page4d-nomask"}


@dataclass
class CheckpointInfo:
    """What was loaded: file, format, layout, the mask flags and what the loader skipped."""

    path: str
    format: str                       # "vggt" | "page4d" | "page4dgs"
    layout: str                       # "vggt" (no mask head) | "page4d"
    mask_enabled: bool                # bias on at inference
    mask_supervised: bool             # the mask head was trained with a mask loss (its score is a dynamic cue)
    ignored_keys: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"path": self.path, "format": self.format, "layout": self.layout, "mask_enabled": self.mask_enabled,
                "mask_supervised": self.mask_supervised, "ignored_keys": len(self.ignored_keys),
                "metadata": self.metadata}


# ----------------------------------------------------------------------------------------------------------------
# Locating the file


def _from_hub(hub: HubFile, allow_download: bool) -> Optional[Path]:
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    cached = try_to_load_from_cache(hub.repo_id, hub.filename, repo_type=hub.repo_type)
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    if not allow_download or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return None
    try:
        log.info(f"downloading {hub} (several GB)")
        return Path(hf_hub_download(hub.repo_id, hub.filename, repo_type=hub.repo_type))
    except Exception as err:  # no network, no such file, no permission: all end in the same one-line error
        log.debug(f"download of {hub} failed: {err}")
        return None


def resolve_checkpoint(checkpoint: str, model: str, allow_download: bool = True) -> Path:
    """The weights file for ``geometry.checkpoint`` (path or alias; '' = the model's default)."""
    spec = checkpoint or DEFAULT_CHECKPOINT.get(model, "")
    if not spec:
        bundled = BUNDLED.get(model)
        if bundled is None:
            raise UserError(f"model '{model}' has no bundled weights: set geometry.checkpoint=PATH")
        if not bundled.is_file():
            raise UserError(f"bundled {model} weights are missing: train them with `page4dgs train-model --config "
                            f"{model}` (writes this file) or pass geometry.checkpoint=PATH", bundled)
        return bundled
    if spec in ALIASES:
        for hub in ALIASES[spec]:
            path = _from_hub(hub, allow_download)
            if path is not None:
                return path
        hub = ALIASES[spec][0]
        raise UserError(f"checkpoint '{spec}' ({hub}) is not in the Hugging Face cache and could not be downloaded: "
                        f"fetch it where a network is available and pass geometry.checkpoint=PATH")
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(f"checkpoint not found (a path, or one of: {', '.join(ALIASES)})", path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Reading


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], str, dict[str, Any]]:
    """(state dict, format, metadata) without executing pickled code. A file that is not one is a UserError."""
    path = Path(path)
    metadata: dict[str, Any] = {}
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                state = {key: f.get_tensor(key) for key in f.keys()}
            fmt = "page4dgs" if "page4dgs" in header else "vggt"
            metadata = _decode_metadata(header)
            if fmt == "page4dgs":
                state = decode_state(state, metadata.get("weights_format"), path)
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
            if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
                state, fmt = obj["model"], "page4d"
                metadata = {k: v for k, v in obj.items() if isinstance(v, (int, float, str)) and k != "model"}
            else:
                state, fmt = obj, "vggt"
    except UserError:
        raise
    except Exception as err:  # unpickling refused, truncated file, not a checkpoint at all
        # The library's first sentence (torch's zip errors go on with advice about miniz), never cut mid-word.
        text = str(err).strip()
        reason = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(err).__name__
        raise UserError(f"not a readable checkpoint ({type(err).__name__}: {reason})", path) from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError("not a model checkpoint (expected a state dict of tensors, or one under 'model')", path)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, fmt, metadata


def read_metadata(path: Path) -> dict[str, Any]:
    """The header metadata of one of our safetensors files (JSON values decoded), without reading its tensors; {}
    for any other file or one that cannot be read."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return _decode_metadata(f.metadata() or {})
    except Exception:       # not safetensors, truncated, unreadable: no metadata of ours
        return {}


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _decode_metadata(header: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in header.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, ValueError):
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# Key-for-key loading


def check_keys(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str], list[str],
                                                                               list[str]]:
    """(missing, unexpected, shape mismatches, ignored) between the model and a state dict."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    ignored = sorted(k for k in state if k.startswith(IGNORED_PREFIXES) and k not in expected)
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected and k not in ignored)
    mismatched = sorted(f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
                        if k in state and tuple(state[k].shape) != expected[k])
    return missing, unexpected, mismatched, ignored


def _names(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def load_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> list[str]:
    """Strict load of every model key; returns the ignored ``track_head.*`` keys. Mismatches raise a UserError."""
    missing, unexpected, mismatched, ignored = check_keys(model, state)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_names(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatches: {_names(mismatched, 3)}")
    if problems:
        for key in missing + unexpected + mismatched:
            log.debug(f"checkpoint key problem: {key}")
        raise UserError("weights do not fit the model: " + "; ".join(problems), source)
    if ignored:
        log.info(f"skipped {len(ignored)} track_head.* entries (the track head is not built)")
    model.load_state_dict({k: v for k, v in state.items() if k not in ignored}, strict=True)
    return ignored


def _mask_enabled(fmt: str, path: Path, metadata: dict, mask: str) -> bool:
    if mask in ("on", "off"):
        return mask == "on"
    if fmt == "page4dgs":
        return bool(metadata.get("mask_enabled", False))
    name = path.name.lower()
    if re.search(r"no_?mask", name):
        return False
    return fmt == "page4d" and "mask" in name


def load_model(model_name: str, checkpoint: str = "", mask: str = "auto", device: str | torch.device = "cpu",
               allow_download: bool = True) -> tuple[PAGE4D, CheckpointInfo]:
    """Build the network for ``model_name`` (a config name or path) and load its weights key for key.

    mask: 'auto' (PAGE-4D: on for the mask checkpoint, off for nomask; ours: as recorded), 'on' or 'off'.
    """
    path = resolve_checkpoint(checkpoint, model_name, allow_download)
    state, fmt, metadata = read_checkpoint(path)
    config = ModelConfig.load(model_name)
    if fmt == "page4dgs" and isinstance(metadata.get("model_config"), dict):
        # The file's architecture wins; fields it predates (inference preferences such as `window`) keep the
        # values of the named config.
        named = config.to_dict()
        config = dataclasses.replace(config, **metadata["model_config"])
        differ = [k for k, v in metadata["model_config"].items() if k != "name" and named.get(k) != v]
        if config.name != named["name"] or differ:
            fields = f" ({', '.join(differ[:3])}{' ...' if len(differ) > 3 else ''} differ)" if differ else ""
            log.warning(f"geometry.model={model_name}, but {path} holds a {config.name}{fields}: running the file's "
                        "architecture")
    has_mask_head = any(k.startswith(MASK_HEAD_PREFIX) for k in state)
    config = replace(config, mask_head=has_mask_head)
    with torch.device("meta"):
        model = PAGE4D(config)
    model = model.to_empty(device="cpu")
    ignored = load_state(model, state, str(path))
    del state
    enabled = _mask_enabled(fmt, path, metadata, mask) and has_mask_head
    if mask == "on" and not has_mask_head:
        raise UserError("geometry.mask=on needs a checkpoint with a mask head (this one has the VGGT layout)", path)
    model.mask_enabled = enabled
    info = CheckpointInfo(str(path), fmt, "page4d" if has_mask_head else "vggt", enabled,
                          bool(metadata.get("mask_supervised", False)) and has_mask_head, ignored, metadata)
    stored = f", {metadata['weights_format']} weights" if "weights_format" in metadata else ""
    bundled = "bundled " if path == BUNDLED.get(model_name) else ""
    log.info(f"{config.name}: {bundled}weights {path} ({fmt}{stored})")
    return model.to(device).eval(), info


# ----------------------------------------------------------------------------------------------------------------
# Our format: float16 or 8-bit weights


INT8_FORMAT = "int8-per-channel-symmetric"
INT8_VALUES = ".int8"              # "<name>.int8": int8 values, the tensor's own shape
INT8_SCALE = ".int8_scale"         # "<name>.int8_scale": float32 (shape[0],), one scale per slice of dim 0
INT8_MIN_ELEMENTS = 4096
INT8_MAX = 127                     # symmetric range [-127, 127]; -128 is never written
FLOAT_FORMATS = ("float16", "bfloat16", "float32", "float64")


def is_int8_candidate(tensor: torch.Tensor, min_elements: int = INT8_MIN_ELEMENTS) -> bool:
    """Linear / conv / embedding matrices: floating, >= 2 dims, >= ``min_elements`` values and more than one slice
    along dim 0 (a leading broadcast axis of 1, as in ``pos_embed`` (1, N, C), has no channels to scale)."""
    return (tensor.is_floating_point() and tensor.dim() >= 2 and tensor.numel() >= min_elements
            and tensor.shape[0] > 1)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-channel 8-bit quantization, round to nearest.

    weight (R, ...) floating -> (values int8 (R, ...) in [-127, 127], scale float32 (R,) = max|w| over the slice
    / 127). ``values * scale`` is within ``scale / 2`` of ``weight`` per element (plus float32 rounding). For Linear
    and Conv weights dim 0 is the output channel (for ConvTranspose it is the input channel: the bound is the same).
    An all-zero slice gets scale 0 and values 0.
    """
    w = weight.detach().to("cpu", torch.float32)
    scale = w.abs().amax(dim=tuple(range(1, w.dim()))) / INT8_MAX           # (R,); NaN/inf where w has one
    if not torch.isfinite(scale).all():
        raise ValueError("cannot quantize non-finite weights")
    per_row = scale.view(-1, *([1] * (w.dim() - 1)))                       # (R, 1, ...) broadcast over the slice
    values = torch.round(w / torch.where(per_row > 0, per_row, 1.0)).clamp_(-INT8_MAX, INT8_MAX)
    return values.to(torch.int8), scale


def dequantize_int8(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """values int8 (R, ...), scale (R,) -> float32 (R, ...) = values * scale per slice of dim 0."""
    return values.to(torch.float32) * scale.to(torch.float32).view(-1, *([1] * (values.dim() - 1)))


def encode_state(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float16, int8: bool = False,
                 min_elements: int = INT8_MIN_ELEMENTS) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict -> (tensors to store, header entries describing them).

    Floating tensors are stored in ``dtype``. With ``int8``, each :func:`is_int8_candidate` tensor ``name`` is
    stored instead as ``name.int8`` (int8 values) and ``name.int8_scale`` (float32 scales), quantized from the given
    values (pass float32 master weights where they exist). Non-floating tensors are stored as they are.
    """
    tensors: dict[str, torch.Tensor] = {}
    quantized = 0
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if int8 and is_int8_candidate(tensor, min_elements):
            try:
                values, scale = quantize_int8(tensor)
            except ValueError as err:
                raise UserError(f"weights cannot be exported in 8 bits: {name}: {err}") from None
            tensors[name + INT8_VALUES], tensors[name + INT8_SCALE] = values.contiguous(), scale.contiguous()
            quantized += 1
        else:
            tensors[name] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    other = str(dtype).removeprefix("torch.")
    if not int8:
        return tensors, {"weights_format": other}
    return tensors, {"weights_format": INT8_FORMAT,
                     "quantization": {"values": f"<name>{INT8_VALUES} int8 in [-{INT8_MAX}, {INT8_MAX}]",
                                      "scale": f"<name>{INT8_SCALE} float32 (shape[0],) = max|w| per slice of dim 0"
                                               f" / {INT8_MAX}",
                                      "weight": f"<name>{INT8_VALUES} * <name>{INT8_SCALE} (per slice of dim 0)",
                                      "rounding": "nearest", "min_elements": min_elements,
                                      "quantized_tensors": quantized, "other_tensors": other}}


def decode_state(stored: dict[str, torch.Tensor], weights_format: Optional[str],
                 source: str | Path = "checkpoint") -> dict[str, torch.Tensor]:
    """Stored tensors of our format -> the state dict under the model's names (8-bit ones dequantized to float32).

    ``weights_format`` is the header's entry (None in files older than it: float weights). A file whose tensors do
    not fit its declared format is a UserError naming the first problem.
    """
    packed = sorted(k for k in stored if k.endswith((INT8_VALUES, INT8_SCALE)))
    if weights_format is None or weights_format in FLOAT_FORMATS:
        if packed:
            raise UserError(f"8-bit tensors ({packed[0]}) in a file whose weights_format is "
                            f"{weights_format or 'unset'} (expected {INT8_FORMAT})", source)
        return stored
    if weights_format != INT8_FORMAT:
        raise UserError(f"unknown weights_format {weights_format!r} (this version reads "
                        f"{', '.join(FLOAT_FORMATS)} and {INT8_FORMAT})", source)
    state = {k: v for k, v in stored.items() if not k.endswith((INT8_VALUES, INT8_SCALE))}
    problems = []
    for key in packed:
        base = key.removesuffix(INT8_VALUES) if key.endswith(INT8_VALUES) else key.removesuffix(INT8_SCALE)
        values, scale = stored.get(base + INT8_VALUES), stored.get(base + INT8_SCALE)
        if key != base + INT8_VALUES and values is not None:
            continue                                    # the pair is checked from its values entry
        if values is None or scale is None:
            problems.append(f"{key} has no {INT8_SCALE if values is not None else INT8_VALUES} partner")
        elif base in stored:
            problems.append(f"{base} is stored both as float and as 8 bits")
        elif values.dtype != torch.int8 or values.dim() < 2:
            problems.append(f"{key} is {values.dtype} {tuple(values.shape)}, expected int8 with >= 2 dims")
        elif not scale.is_floating_point() or tuple(scale.shape) != (values.shape[0],):
            problems.append(f"{base}{INT8_SCALE} is {scale.dtype} {tuple(scale.shape)}, expected float "
                            f"({values.shape[0]},)")
        elif not (torch.isfinite(scale).all() and (scale >= 0).all()):
            problems.append(f"{base}{INT8_SCALE} has negative or non-finite scales")
        else:
            state[base] = dequantize_int8(values, scale)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise UserError(f"inconsistent 8-bit weights: {problems[0]}{more}", source)
    return state


def write_weights(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any],
                  dtype: torch.dtype = torch.float16, int8: bool = False) -> None:
    """Write ``state`` in our safetensors format with ``metadata`` (JSON-encoded values) and the format entries."""
    from safetensors.torch import save_file

    from pipeline.io import atomic_path

    tensors, format_entries = encode_state(state, dtype, int8)
    kept = {k: v for k, v in metadata.items() if k not in ("weights_format", "quantization")}  # a re-encoded file's
    header = {k: json.dumps(v) for k, v in {**kept, **format_entries}.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)


def save_weights(model: PAGE4D, path: str | Path, mask_enabled: bool = False, mask_supervised: bool = False,
                 dtype: torch.dtype = torch.float16, int8: bool = False, **extra: Any) -> None:
    """Our safetensors format: weights (``dtype``, or 8-bit matrices with ``int8``, see :func:`encode_state`) +
    metadata {page4dgs, model_config, mask flags, weights_format[, quantization], extra}."""
    metadata = {"page4dgs": 1, "model_config": model.config.to_dict(), "mask_enabled": bool(mask_enabled),
                "mask_supervised": bool(mask_supervised), **extra}
    write_weights(model.state_dict(), path, metadata, dtype, int8)
