"""Turn a training checkpoint into the weights file the geometry stage loads, and move large files in parts.

    python -m stages.geometry.page4d.export_weights runs/train/page4d-tiny/checkpoint.pt \\
        [--out stages/geometry/page4d/weights/page4d-tiny.safetensors] [--int8]
    python -m stages.geometry.page4d.export_weights WEIGHTS.safetensors --int8 --out W8.safetensors  # re-encode
    python -m stages.geometry.page4d.export_weights --split FILE --part-mib 15 --to DIR   # FILE -> DIR/FILE.partNN
    python -m stages.geometry.page4d.export_weights --join DIR/FILE.part00 --out FILE      # parts -> FILE, verified

The weights file is fp16 safetensors with metadata (model config, mask flags, training config and state, data,
device); it loads with :func:`stages.geometry.page4d.checkpoint.load_model` and also resumes training (weights only).
``--int8`` stores every Linear/Conv matrix (>= 2 dims, >= 4096 values) as int8 with one float32 scale per slice of
dim 0 and the rest in fp16 (``weights_format`` ``int8-per-channel-symmetric``; half the size); the readers
dequantize it transparently. Quantize from the training checkpoint (float32 masters) where it exists; a weights
file given instead is re-encoded from its stored values (its metadata is kept).
Splitting exists because the GPU host returns files of at most 16 MiB: the parts carry a SHA-256 manifest and the
join checks it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from pipeline.errors import UserError
from pipeline.io import atomic_path, write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "weights" / "page4d-tiny.safetensors"


def export_checkpoint(checkpoint: Path, out: Path, int8: bool = False) -> dict:
    """Write the fp16 (``int8``: 8-bit matrices + fp16) weights of a training checkpoint (``checkpoint.pt``) to
    ``out``; returns its step, schedule length and path."""
    from stages.geometry.page4d.config import ModelConfig
    from stages.geometry.page4d.model import PAGE4D
    from stages.geometry.page4d.train import TrainConfig, TrainState, _update, export_weights, load_checkpoint

    payload = load_checkpoint(Path(checkpoint))
    config = TrainConfig()
    saved = dict(payload["config"])
    _update(config, saved, str(checkpoint))
    model = PAGE4D(ModelConfig.load(config.model))
    model.load_state_dict(payload["model"])
    model.aggregator.mask_step = payload["mask_step"]
    state = TrainState(**payload["state"])
    export_weights(model, Path(out), config, state, {"finished": state.step >= config.steps}, int8=int8)
    return {"step": state.step, "steps": config.steps, "out": str(out), "bytes": Path(out).stat().st_size}


def convert_weights(weights: Path, out: Path, int8: bool = True) -> dict:
    """Re-encode one of our weights files (float or 8-bit) as 8-bit (``int8``) or fp16, keeping its metadata."""
    from stages.geometry.page4d.checkpoint import INT8_FORMAT, read_checkpoint, write_weights

    state, fmt, metadata = read_checkpoint(Path(weights))
    if fmt != "page4dgs":
        raise UserError("not a page4dgs weights file (give a training checkpoint.pt or our .safetensors)", weights)
    write_weights(state, out, metadata, int8=int8)
    return {"source": str(weights), "out": str(out), "bytes": Path(out).stat().st_size,
            "weights_format": INT8_FORMAT if int8 else "float16"}


def split_file(path: Path, part_mib: float, to: Path) -> list[Path]:
    """``path`` -> ``to/<name>.part00``, ``.part01``, ... of at most ``part_mib`` MiB, plus ``<name>.parts.json``."""
    data = Path(path).read_bytes()
    size = int(part_mib * 2**20)
    to.mkdir(parents=True, exist_ok=True)
    parts = []
    for index, start in enumerate(range(0, max(len(data), 1), size)):
        part = to / f"{Path(path).name}.part{index:02d}"
        with atomic_path(part) as tmp:
            tmp.write_bytes(data[start:start + size])
        parts.append(part)
    write_json(to / f"{Path(path).name}.parts.json", {"name": Path(path).name, "bytes": len(data),
                                                       "sha256": hashlib.sha256(data).hexdigest(),
                                                       "parts": [p.name for p in parts]})
    return parts


def join_parts(first_part: Path, out: Path) -> Path:
    """Reassemble ``<name>.partNN`` files (next to ``first_part``) into ``out``, checking size and SHA-256."""
    first_part = Path(first_part)
    name = first_part.name.rsplit(".part", 1)[0]
    manifest_path = first_part.parent / f"{name}.parts.json"
    if not manifest_path.is_file():
        raise UserError("parts manifest not found", manifest_path)
    manifest = json.loads(manifest_path.read_text())
    data = b"".join((first_part.parent / p).read_bytes() for p in manifest["parts"])
    if len(data) != manifest["bytes"] or hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise UserError("parts do not reassemble into the recorded file (size or SHA-256 differs)", manifest_path)
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.geometry.page4d.export_weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", nargs="?", type=Path,
                        help="training checkpoint (checkpoint.pt), or a weights file (.safetensors) to re-encode")
    parser.add_argument("--out", type=Path, default=None, help=f"output file (default {DEFAULT_OUT})")
    parser.add_argument("--int8", action="store_true",
                        help="8-bit matrices (int8, one float32 scale per output channel) + fp16 for the rest")
    parser.add_argument("--split", type=Path, help="split this file into parts")
    parser.add_argument("--part-mib", type=float, default=15.0)
    parser.add_argument("--to", type=Path, default=Path("."))
    parser.add_argument("--join", type=Path, help="first part (NAME.part00) of a split file")
    args = parser.parse_args(argv)
    try:
        if args.split:
            for part in split_file(args.split, args.part_mib, args.to):
                print(part)
        elif args.join:
            print(join_parts(args.join, args.out or Path(args.join.name.rsplit(".part", 1)[0])))
        elif args.checkpoint and args.checkpoint.suffix == ".safetensors":
            if args.out is None or args.out.resolve() == args.checkpoint.resolve():
                parser.error("re-encoding a weights file needs --out (another file)")
            print(json.dumps(convert_weights(args.checkpoint, args.out, args.int8)))
        elif args.checkpoint:
            print(json.dumps(export_checkpoint(args.checkpoint, args.out or DEFAULT_OUT, args.int8)))
        else:
            parser.error("give a checkpoint, --split FILE or --join PART")
    except UserError as err:
        print(f"export_weights: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
