"""Numerical parity of our PAGE-4D with the official code: same random weights, same frames, every output.

    python -m bench.page4d_parity /path/to/PAGE4D [--sizes small,1b] [--json bench/results/page4d_parity.json]

The official checkout (``kaichen-z/PAGE4D``) stays outside the repository. Both models run in float32 on the CPU;
the official model is built from its classes with random initialisation, its parameters are loaded into ours
strictly (every key, every shape), then LayerScale factors and special tokens are re-drawn at larger scales so that
every block changes the output measurably. Reported per output: max |ours - official| / max |official|.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from bench.common import environment
from bench.page4d_official import build_official, official_path, set_official_mask
from pipeline.io import write_json
from stages.geometry.page4d import PAGE4D, ModelConfig

# (config overrides, frames, height, width)
SIZES = {
    # ViT-S-sized DINO and aggregator (the official code hard-wires 24 layers and the ViT name): quick.
    "small": (dict(name="parity-small", embed_dim=384, num_heads=6, dino_depth=12, dino_num_heads=6,
                   mask_head_hidden=256), 3, 294, 518),
    # The released dimensions, two frames at a small non-square size (position table resampled).
    "1b": (dict(), 2, 126, 182),
}


# The golden file: the official outputs for weights drawn by `seeded_weights` (our own function, so that a test can
# draw them again without the official code) at a size small enough to keep in the repository.
GOLDEN_SIZE = "small"
GOLDEN_FRAMES, GOLDEN_HEIGHT, GOLDEN_WIDTH = 2, 56, 84
GOLDEN_SEED = 0
GOLDEN_PATH = Path("tests/geometry/fixtures/page4d_official_golden.npz")
GOLDEN_KEYS = ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "mask_score")


def seeded_weights(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter and buffer-free weight of ``model`` from ``seed``, independently of how the model was
    initialised: parameters in name order, each from one CPU generator (deterministic across torch versions).

    Matrices ~ N(0, 1 / fan_in); biases ~ N(0, 0.02); norm weights ~ 1 + N(0, 0.1); LayerScale gammas ~ U(0.05, 0.3)
    (so that every block changes the output); special tokens ~ N(0, 0.5); position tables ~ N(0, 0.1).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            shape = param.shape
            if name.endswith(".gamma"):
                value = torch.rand(shape, generator=generator) * 0.25 + 0.05
            elif name.endswith(("camera_token", "register_token", "register_tokens", "cls_token", "mask_token")):
                value = torch.randn(shape, generator=generator) * 0.5
            elif "pos_embed" in name:
                value = torch.randn(shape, generator=generator) * 0.1
            elif param.ndim == 1 and "norm" in name and name.endswith(".weight"):
                value = 1.0 + torch.randn(shape, generator=generator) * 0.1
            elif param.ndim == 1:
                value = torch.randn(shape, generator=generator) * 0.02
            else:
                fan_in = max(1, param[0].numel())
                value = torch.randn(shape, generator=generator) / fan_in ** 0.5
            param.copy_(value.to(param.dtype))


def golden_images(seed: int = GOLDEN_SEED) -> torch.Tensor:
    """(1, S, 3, H, W) frames in [0, 1] of the golden file."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.rand(1, GOLDEN_FRAMES, 3, GOLDEN_HEIGHT, GOLDEN_WIDTH, generator=generator)


def golden_config() -> ModelConfig:
    return ModelConfig(**SIZES[GOLDEN_SIZE][0])


def write_golden(root: Path, path: Path) -> dict:
    """Run the official model with `seeded_weights` on `golden_images`, mask off and on; save its outputs."""
    import numpy as np

    config = golden_config()
    official = build_official(root, config, mask_on=False)
    with torch.device("meta"):
        ours = PAGE4D(config)
    ours.load_state_dict(official.state_dict(), strict=True, assign=True)      # shares the official tensors
    seeded_weights(ours, GOLDEN_SEED)                                            # so this fills both
    images = golden_images()
    arrays, errors = {}, {}
    for mask_on in (False, True):
        set_official_mask(official, mask_on)
        ref = official_outputs(official, images)
        with torch.no_grad():
            mine = ours.eval()(images, mask=mask_on, want_mask_score=True)
        errors["mask_on" if mask_on else "mask_off"] = relative_errors(mine, ref)
        tag = "on" if mask_on else "off"
        for key in GOLDEN_KEYS:
            arrays[f"{key}_mask_{tag}"] = ref[key].float().numpy()
        for i, pose in enumerate(ref["pose_enc_list"]):
            arrays[f"pose_enc_list{i}_mask_{tag}"] = pose.float().numpy()
    for key, value in arrays.items():
        if not np.isfinite(value).all():
            raise RuntimeError(f"golden output {key} is not finite: change the weight scales")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return {"path": str(path), "config": dataclasses.asdict(config), "frames": GOLDEN_FRAMES,
            "height": GOLDEN_HEIGHT, "width": GOLDEN_WIDTH, "seed": GOLDEN_SEED, "ours_vs_official": errors,
            "official_mask_effect": float(np.abs(arrays["pose_enc_mask_on"] - arrays["pose_enc_mask_off"]).max()),
            "output_ranges": {k: [float(v.min()), float(v.max())] for k, v in arrays.items()}}


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Make every block matter: LayerScale gammas ~ U(0.05, 0.3), special tokens ~ N(0, 0.5)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".gamma"):
                param.copy_(torch.rand(param.shape, generator=generator) * 0.25 + 0.05)
            elif name.endswith(("camera_token", "register_token", "register_tokens", "cls_token")):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def official_outputs(model, images: torch.Tensor) -> dict[str, torch.Tensor]:
    captured = {}
    hook = model.aggregator.spatial_mask_head.register_forward_hook(
        lambda module, args, output: captured.__setitem__("key_vis", output[1]))
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        hook.remove()
    B, S = images.shape[:2]
    grid_h, grid_w = images.shape[-2] // 14, images.shape[-1] // 14
    key_vis = captured["key_vis"].view(B, S, -1)[:, :, -grid_h * grid_w:]
    out["mask_score"] = key_vis.reshape(B, S, grid_h, grid_w)
    return out


def relative_errors(ours: dict, ref: dict) -> dict[str, float]:
    errors = {}
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf", "mask_score"):
        a, b = ours[key].double(), ref[key].double()
        assert a.shape == b.shape, f"{key}: shape {tuple(a.shape)} vs official {tuple(b.shape)}"
        errors[key] = ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()
    for i, (a, b) in enumerate(zip(ours["pose_enc_list"], ref["pose_enc_list"])):
        errors[f"pose_enc_list[{i}]"] = ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
    return errors


def run_size(root: Path, size: str, seed: int = 0) -> dict:
    overrides, frames, height, width = SIZES[size]
    config = ModelConfig(**overrides)
    torch.manual_seed(seed)
    start = time.perf_counter()
    official = build_official(root, config, mask_on=False)
    generator = torch.Generator().manual_seed(seed)
    randomise(official, generator)
    with torch.device("meta"):
        ours = PAGE4D(config)
    report = ours.load_state_dict(official.state_dict(), strict=True, assign=True)  # shares the tensors
    ours.eval()
    images = torch.rand(1, frames, 3, height, width, generator=generator)
    result = {"size": size, "frames": frames, "height": height, "width": width,
              "parameters": sum(p.numel() for p in ours.parameters()), "strict_load": str(report), "modes": {}}
    refs = {}
    for mask_on in (False, True):
        set_official_mask(official, mask_on)
        refs[mask_on] = official_outputs(official, images)
        with torch.no_grad():
            mine = ours(images, mask=mask_on, want_mask_score=True)
        result["modes"]["mask_on" if mask_on else "mask_off"] = relative_errors(mine, refs[mask_on])
    # The bias must change something: the official outputs with the mask on against those with it off.
    result["official_mask_effect"] = relative_errors(refs[True], refs[False])["pose_enc"]
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["max_relative_error"] = max(max(m.values()) for m in result["modes"].values())
    return result


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", nargs="?", help="official PAGE4D checkout (default: $PAGE4D_OFFICIAL)")
    parser.add_argument("--sizes", default="small,1b", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--json", default="bench/results/page4d_parity.json")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--golden", action="store_true",
                        help=f"instead, write the official outputs for seeded weights to {GOLDEN_PATH} (for the tests)")
    args = parser.parse_args(argv)
    root = official_path(args.official)
    if root is None:
        print("page4d_parity: the official PAGE4D checkout was not found (pass its path or set $PAGE4D_OFFICIAL)",
              file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
    if args.golden:
        record = write_golden(root, GOLDEN_PATH)
        record.update(benchmark="page4d_official_golden", date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      command="python -m bench.page4d_parity " + " ".join(argv if argv is not None else sys.argv[1:]),
                      official_commit=_git_commit(root), torch=torch.__version__,
                      device=f"cpu ({platform.machine()}), float32")
        write_json(GOLDEN_PATH.with_suffix(".json"), record)
        print(json.dumps(record["ours_vs_official"], indent=1))
        return 0
    results = []
    for size in args.sizes.split(","):
        result = run_size(root, size.strip())
        results.append(result)
        print(f"\n{size}: {result['parameters']:,} parameters, {result['frames']} frames at "
              f"{result['width']}x{result['height']}, {result['seconds']} s (strict load: {result['strict_load']})")
        print(f"  {'output':<22} {'mask off':>10} {'mask on':>10}")
        for key in result["modes"]["mask_off"]:
            print(f"  {key:<22} {result['modes']['mask_off'][key]:10.2e} {result['modes']['mask_on'][key]:10.2e}")
        print(f"  official outputs, mask on vs off: pose_enc differs by {result['official_mask_effect']:.2e}")
    worst = max(r["max_relative_error"] for r in results)
    ok = worst <= args.tolerance
    print(f"\nmax relative error {worst:.2e} ({'<=' if ok else '>'} {args.tolerance:g}): {'PASS' if ok else 'FAIL'}")
    record = {"benchmark": "page4d_parity", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": "python -m bench.page4d_parity " + " ".join(argv if argv is not None else sys.argv[1:]),
              "device": f"cpu ({platform.machine()}), float32", "torch": torch.__version__,
              "tolerance": args.tolerance, "pass": ok, "results": results, "environment": environment("cpu")}
    write_json(Path(args.json), record)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
