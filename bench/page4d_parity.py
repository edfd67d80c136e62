"""Numerical parity of our PAGE-4D with the official code: same random weights, same frames, every output.

    python -m bench.page4d_parity /path/to/PAGE4D [--sizes small,1b] [--json bench/results/page4d_parity.json]

The official checkout (``kaichen-z/PAGE4D``) stays outside the repository. Both models run in float32 on the CPU;
the official model is built from its classes with random initialisation, its parameters are loaded into ours
strictly (every key, every shape), then LayerScale factors and special tokens are re-drawn at larger scales so that
every block changes the output measurably. Reported per output: max |ours - official| / max |official|.
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("official", nargs="?", help="official PAGE4D checkout (default: $PAGE4D_OFFICIAL)")
    parser.add_argument("--sizes", default="small,1b", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--json", default="bench/results/page4d_parity.json")
    parser.add_argument("--tolerance", type=float, default=1e-4)
    args = parser.parse_args(argv)
    root = official_path(args.official)
    if root is None:
        print("page4d_parity: the official PAGE4D checkout was not found (pass its path or set $PAGE4D_OFFICIAL)",
              file=sys.stderr)
        return 2
    torch.set_grad_enabled(False)
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
