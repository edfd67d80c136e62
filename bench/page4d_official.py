"""Build the official PAGE-4D model from a copy of its code outside this repository (for parity and benchmarks).

The copy is ``kaichen-z/PAGE4D`` (its ``model/page`` package). Nothing of it is imported by page4dgs itself. Its
model classes import ``einops`` (track head) and ``matplotlib`` (visual helpers) at module level but do not use them
for the outputs compared here; where either is missing, an empty stand-in module is registered so the import works
(any call into it would raise).
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Optional

import torch

OFFICIAL_ENV = "PAGE4D_OFFICIAL"


def official_path(path: Optional[str] = None) -> Optional[Path]:
    """The official checkout (argument, else $PAGE4D_OFFICIAL), or None when absent."""
    candidate = path or os.environ.get(OFFICIAL_ENV)
    if not candidate:
        return None
    root = Path(candidate).expanduser()
    return root if (root / "model" / "page" / "models" / "vggt.py").is_file() else None


def _stub(name: str) -> None:
    try:
        __import__(name)
    except ImportError:
        module = types.ModuleType(name)

        def missing(*args, **kwargs):
            raise RuntimeError(f"{name} is a stand-in registered by bench/official.py")

        def attribute(attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)
            return missing

        module.__path__ = []  # a package, so that stand-in submodules can be registered under it
        module.__getattr__ = attribute  # type: ignore[attr-defined]
        sys.modules[name] = module


def import_official(root: Path):
    """(VGGT class, Aggregator class) of the official code."""
    for name in ("einops", "einops.layers", "einops.layers.torch", "matplotlib"):
        _stub(name)
    sys.path.insert(0, str(root / "model"))
    from page.models.aggregator import Aggregator  # type: ignore
    from page.models.vggt import VGGT  # type: ignore

    return VGGT, Aggregator


def build_official(root: Path, config, mask_on: bool, device: str = "cpu") -> torch.nn.Module:
    """The official model with our config's dimensions (random init), without track head.

    The official code fixes the aggregator schedule to 24 layers and the DINO variant by name, so ``config`` must
    have depth 24 and a DINO of ViT-L (1024) or ViT-S (384) size.
    """
    VGGT, Aggregator = import_official(root)
    hold = 1 if mask_on else 0   # eval mode keeps the step at 0: hold > 0 gives alpha = 64, hold = 0 gives 0
    with torch.device(device):
        model = VGGT(img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
                     enable_track=False, mask_hold_start=hold, mask_hold_end=hold)
        if config.embed_dim != 1024:
            dino = {384: "dinov2_vits14_reg", 768: "dinov2_vitb14_reg"}[config.embed_dim]
            model.aggregator = Aggregator(img_size=config.image_size, patch_size=config.patch_size,
                                          embed_dim=config.embed_dim, num_heads=config.num_heads,
                                          patch_embed=dino, mask_hold_start=hold, mask_hold_end=hold)
    return model.to(device).eval()   # legacy FloatTensor buffers ignore the device context


def set_official_mask(model: torch.nn.Module, mask_on: bool) -> None:
    hold = 1 if mask_on else 0
    head = model.aggregator.spatial_mask_head
    head.mask_hold_start = head.mask_hold_end = hold
    head.step = 0.0
