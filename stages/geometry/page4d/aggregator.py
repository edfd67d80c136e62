"""The alternating-attention aggregator with the PAGE-4D dynamics-aware schedule.

Per frame the token sequence is [camera, registers, patches (row-major)]; frame 0 has its own camera and register
tokens (index 0 of the learned tables), every other frame shares index 1. Layer i runs frame block i on
(B*S, N, C) and global block i on (B, S*N, C); its output is the channel concatenation of both, (B, S, N, 2C).
The mask head reads the tokens right after frame block ``mask_head_after``; its score biases the camera/register
queries of global blocks ``mask_bias_blocks``. Only the layers the heads read are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stages.geometry.page4d.config import ModelConfig
from stages.geometry.page4d.dino import DinoPatchEmbed
from stages.geometry.page4d.layers import Block, Rope2D, SpecialQueryBias
from stages.geometry.page4d.mask_head import SpatialMaskHead, mask_alpha_factor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class AggregatorOutput:
    """layers: {i: (frame output (B, S, N, C), global output (B, S, N, C))} for the kept layers i.
    camera_tokens: (B, S, 2C) camera token of the last layer. mask_score: (B, S, h, w) or None."""

    layers: dict[int, tuple[Tensor, Tensor]]
    camera_tokens: Tensor
    mask_score: Optional[Tensor]
    grid: tuple[int, int]
    patch_start: int

    def patch_tokens(self, layer: int, frames: slice = slice(None)) -> Tensor:
        """(B, F, h*w, 2C) patch tokens of one kept layer for a range of frames."""
        frame_out, global_out = self.layers[layer]
        return torch.cat([frame_out[:, frames, self.patch_start:], global_out[:, frames, self.patch_start:]], -1)


class Aggregator(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config
        self.config = c
        self.patch_embed = DinoPatchEmbed(c.embed_dim, c.dino_depth, c.dino_num_heads, c.patch_size,
                                          c.image_size // c.patch_size, c.num_register_tokens, c.mlp_ratio)
        self.frame_blocks = nn.ModuleList([Block(c.embed_dim, c.num_heads, c.mlp_ratio, qk_norm=True,
                                                 layerscale_init=c.layerscale_init) for _ in range(c.depth)])
        self.global_blocks = nn.ModuleList([Block(c.embed_dim, c.num_heads, c.mlp_ratio, qk_norm=True,
                                                  layerscale_init=c.layerscale_init) for _ in range(c.depth)])
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, c.embed_dim))                        # (1, 2, 1, C)
        self.register_token = nn.Parameter(torch.zeros(1, 2, c.num_register_tokens, c.embed_dim))  # (1, 2, R, C)
        if self.camera_token.device.type != "meta":      # (on meta a checkpoint gives the values: DinoPatchEmbed)
            nn.init.normal_(self.camera_token, std=1e-6)
            nn.init.normal_(self.register_token, std=1e-6)
        self.spatial_mask_head = SpatialMaskHead(c.embed_dim, c.mask_head_hidden) if c.mask_head else None
        self.mask_enabled = False        # inference: bias on (alpha = mask_alpha) or off (alpha = 0, plain VGGT)
        self.mask_step = 0.0             # training forwards seen (the alpha schedule's clock; not saved)
        self.gradient_checkpointing = False
        self.mask_head_detached = True   # the official head reads detached tokens; False lets a supervised mask
                                         # loss train the backbone too (stages.geometry.page4d.train)

    def mask_alpha(self, mask: Optional[bool] = None) -> float:
        """The bias row value for this forward (advances the schedule in training mode)."""
        c = self.config
        if self.spatial_mask_head is None:
            return 0.0
        if self.training:
            self.mask_step += 1.0
            return c.mask_alpha * mask_alpha_factor(self.mask_step, c.mask_hold_start, c.mask_hold_end)
        enabled = self.mask_enabled if mask is None else mask
        return c.mask_alpha if enabled else 0.0

    def scheduled_bias_blocks(self) -> list[Block]:
        """The global blocks whose special-query bias changes from one training forward to the next (the mask
        schedule ramps alpha between mask_hold_start and mask_hold_end); empty when alpha is constant in training."""
        c = self.config
        if self.spatial_mask_head is None or c.mask_hold_end <= c.mask_hold_start:
            return []
        return [self.global_blocks[i] for i in c.biased_blocks]

    def special_tokens(self, B: int, S: int) -> Tensor:
        """(B*S, 1 + R, C): frame 0 gets index 0 of the tables, the other frames index 1."""
        tables = torch.cat([self.camera_token, self.register_token], dim=2)       # (1, 2, 1 + R, C)
        per_frame = torch.cat([tables[:, :1], tables[:, 1:].expand(1, S - 1, -1, -1)], dim=1)  # (1, S, 1 + R, C)
        return per_frame.expand(B, -1, -1, -1).reshape(B * S, *tables.shape[2:])

    def _block(self, block: Block, x: Tensor, rope: Rope2D, bias: Optional[SpecialQueryBias] = None) -> Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, rope, bias, use_reentrant=False)
        return block(x, rope, bias)

    def forward(self, images: Tensor, keep_layers: Iterable[int] = (), mask: Optional[bool] = None,
                want_mask_score: bool = False) -> AggregatorOutput:
        """images: (B, S, 3, H, W) in [0, 1], H and W multiples of the patch size."""
        c = self.config
        B, S, _, H, W = images.shape
        if H % c.patch_size or W % c.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {c.patch_size}")
        grid_h, grid_w = H // c.patch_size, W // c.patch_size
        mean = images.new_tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(1, 1, 3, 1, 1)
        normalised = ((images - mean) / std).reshape(B * S, 3, H, W)
        patches = self.patch_embed(normalised)                                    # (B*S, hw, C)
        special = self.special_tokens(B, S).to(patches.dtype)
        tokens = torch.cat([special, patches], dim=1)                             # (B*S, N, C)
        N, C = tokens.shape[1], tokens.shape[2]
        rope = Rope2D.for_grid(grid_h, grid_w, c.patch_start, C // c.num_heads, c.rope_frequency, images.device)

        alpha = self.mask_alpha(mask)
        keep = set(keep_layers)
        layers: dict[int, tuple[Tensor, Tensor]] = {}
        bias: Optional[SpecialQueryBias] = None
        mask_score: Optional[Tensor] = None
        camera_tokens: Optional[Tensor] = None
        for i in range(c.depth):
            tokens = self._block(self.frame_blocks[i], tokens.view(B * S, N, C), rope)
            frame_out = tokens.view(B, S, N, C)
            if i == c.mask_head_after and self.spatial_mask_head is not None and (alpha != 0.0 or want_mask_score):
                head_input = tokens.detach() if self.mask_head_detached else tokens
                score = self.spatial_mask_head(head_input[:, c.patch_start:], grid_h, grid_w)    # (B*S, h, w)
                mask_score = score.view(B, S, grid_h, grid_w)
                key_bias = score.new_zeros(B, S, N, dtype=torch.promote_types(score.dtype, tokens.dtype))
                key_bias[:, :, c.patch_start:] = score.view(B, S, grid_h * grid_w)
                bias = SpecialQueryBias(key_bias.view(B, S * N), alpha, N, c.patch_start)
            biased = bias if (i in c.biased_blocks and alpha != 0.0) else None
            tokens = self._block(self.global_blocks[i], tokens.view(B, S * N, C), rope, biased)
            global_out = tokens.view(B, S, N, C)
            if i in keep:
                layers[i] = (frame_out, global_out)
            if i == c.camera_layer:
                camera_tokens = torch.cat([frame_out[:, :, 0], global_out[:, :, 0]], dim=-1)  # (B, S, 2C)
        return AggregatorOutput(layers, camera_tokens, mask_score, (grid_h, grid_w), c.patch_start)
