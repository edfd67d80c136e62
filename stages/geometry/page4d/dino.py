"""DINOv2-style ViT patch embedding with register tokens (``aggregator.patch_embed``).

Conv patchify -> [cls, registers, patches] + learned position embedding (cls and patches only; the patch table is
bicubically resampled, with antialiasing, to the input's patch grid) -> pre-LN blocks without qk-norm or RoPE ->
final LayerNorm. Only the normalised patch tokens leave the module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.geometry.page4d.layers import Block


class ConvPatchify(nn.Module):
    """(B, 3, H, W) -> (B, H/p * W/p, C) with one strided convolution (``patch_embed.proj``)."""

    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class DinoPatchEmbed(nn.Module):
    """ViT with registers; its position table covers a ``table_size`` x ``table_size`` patch grid."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int, table_size: int,
                 num_register_tokens: int, mlp_ratio: float = 4.0, layerscale_init: float = 1.0):
        super().__init__()
        self.patch_size = patch_size
        self.table_size = table_size
        self.num_register_tokens = num_register_tokens
        self.patch_embed = ConvPatchify(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + table_size * table_size, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim), requires_grad=False)  # unused, kept for the key
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qk_norm=False, layerscale_init=layerscale_init, norm_eps=1e-6)
            for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        if self.pos_embed.device.type != "meta":
            # (a model built on the meta device gets its values from a checkpoint; there these initialisers run
            # torch's Python reference kernels, whose first call imports torch._dynamo: about 1 s on a CPU, 7.6 s
            # on a fresh H200 host, bench/results/sweeps/importtime_dynamo_h200_42.txt)
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            nn.init.normal_(self.register_tokens, std=1e-6)

    def position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        """(1, 1 + grid_h * grid_w, C) float32: the table, resampled when the grid differs from it."""
        table = self.pos_embed.float()
        if grid_h == grid_w == self.table_size:
            return table
        M, C = self.table_size, table.shape[-1]
        patches = table[:, 1:].reshape(1, M, M, C).permute(0, 3, 1, 2)           # (1, C, M, M)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", antialias=True)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, C)
        return torch.cat([table[:, :1], patches], dim=1)

    def forward(self, images: Tensor) -> Tensor:
        """images: (B, 3, H, W), ImageNet-normalised -> patch tokens (B, H/p * W/p, C)."""
        B, _, H, W = images.shape
        grid_h, grid_w = H // self.patch_size, W // self.patch_size
        patches = self.patch_embed(images)                                    # (B, hw, C)
        pos = self.position_embedding(grid_h, grid_w)
        cls = self.cls_token.float().expand(B, -1, -1)
        x = torch.cat([cls, patches.float()], dim=1) + pos                    # (B, 1 + hw, C), float32
        registers = self.register_tokens.float().expand(B, -1, -1)
        x = torch.cat([x[:, :1], registers, x[:, 1:]], dim=1)                 # (B, 1 + R + hw, C)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 1 + self.num_register_tokens:]
