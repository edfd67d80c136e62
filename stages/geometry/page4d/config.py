"""Network dimensions and layer schedule (``configs/models/<name>.yaml``); one code path for every size."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import UserError

MODELS_DIR = Path(__file__).resolve().parents[3] / "configs" / "models"


@dataclass
class ModelConfig:
    """PAGE-4D / VGGT dimensions. Defaults are the official 1B model (``page4d-1b``)."""

    name: str = "page4d-1b"
    patch_size: int = 14              # pixels per patch side; input H and W must be multiples of it
    image_size: int = 518             # side of the square the DINO position table was trained at
    input_width: int = 518            # preprocessing width (crop mode) / longest side (pad mode)
    window: int = 100                 # frames per forward pass the model is meant for (longer: overlapping windows)
    embed_dim: int = 1024             # C; the heads read 2C (frame and global outputs concatenated)
    num_heads: int = 16               # aggregator heads (head dim C / heads; RoPE needs it divisible by 4)
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4      # per frame, after the camera token: patch_start_idx = 1 + registers
    dino_depth: int = 24              # DINO ViT blocks
    dino_num_heads: int = 16
    depth: int = 24                   # aggregator frame/global block pairs
    rope_frequency: float = 100.0
    layerscale_init: float = 0.01     # aggregator LayerScale init (DINO uses 1.0)
    mask_head: bool = True            # PAGE-4D layout (spatial mask head); False = plain VGGT layout
    mask_head_hidden: int = 256
    mask_head_after: int = 9          # the mask head reads the tokens after this frame block
    mask_bias_blocks: list = field(default_factory=lambda: [10, 19])   # first and last biased global block
    mask_alpha: float = 64.0          # bias row value while the mask is on
    mask_hold_start: int = 0          # training schedule in training forwards: alpha = mask_alpha * a(step)
    mask_hold_end: int = 0
    camera_num_heads: int = 16
    camera_trunk_depth: int = 4
    camera_iterations: int = 4
    dpt_layers: list = field(default_factory=lambda: [4, 11, 17, 23])
    dpt_features: int = 256
    dpt_out_channels: list = field(default_factory=lambda: [256, 512, 1024, 1024])

    def __post_init__(self) -> None:
        problems = []
        if (self.embed_dim // self.num_heads) % 4 or self.embed_dim % self.num_heads:
            problems.append("embed_dim / num_heads must be an integer divisible by 4 (2D RoPE)")
        if len(self.dpt_layers) != 4 or len(self.dpt_out_channels) != 4:
            problems.append("dpt_layers and dpt_out_channels need 4 entries")
        if any(not 0 <= i < self.depth for i in self.dpt_layers):
            problems.append(f"dpt_layers must lie in [0, {self.depth})")
        first, last = self.mask_bias_blocks
        if not (0 <= self.mask_head_after < first <= last < self.depth):
            problems.append("need 0 <= mask_head_after < mask_bias_blocks[0] <= mask_bias_blocks[1] < depth")
        if self.input_width % self.patch_size or self.image_size % self.patch_size:
            problems.append("input_width and image_size must be multiples of patch_size")
        if problems:
            raise UserError(f"model config '{self.name}': " + "; ".join(problems))

    @property
    def patch_start(self) -> int:
        """Special tokens per frame: 1 camera + registers."""
        return 1 + self.num_register_tokens

    @property
    def camera_layer(self) -> int:
        return self.depth - 1

    @property
    def biased_blocks(self) -> range:
        return range(self.mask_bias_blocks[0], self.mask_bias_blocks[1] + 1)

    @classmethod
    def load(cls, name_or_path: str | Path) -> "ModelConfig":
        """A model config by name (``configs/models/<name>.yaml``) or path."""
        path = Path(name_or_path)
        if not path.suffix:
            path = MODELS_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))
            raise UserError(f"unknown model config (known: {', '.join(known)})", path)
        from pipeline.config import coerce, read_yaml

        data = read_yaml(path)
        if not isinstance(data, dict):
            raise UserError("a model config must be a mapping of keys to values", path)
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise UserError(f"unknown model config keys: {', '.join(unknown)}", path)
        hints = typing.get_type_hints(cls)
        try:                                    # the YAML values must have the fields' types
            data = {key: coerce(value, hints[key], key) for key, value in data.items()}
        except UserError as err:
            raise UserError(f"model {err}", path) from None
        return cls(**data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
