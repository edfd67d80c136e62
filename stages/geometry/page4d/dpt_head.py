"""DPT dense head (depth: exp + confidence; world points: inverse-log + confidence).

Four kept aggregator layers -> LayerNorm -> 1x1 projections at the patch grid (h, w) + a sinusoidal UV embedding
-> resampled to (4h, 4w), (2h, 2w), (h, w), (h/2, w/2) -> RefineNet fusion from coarse to fine -> (8h, 8w) ->
bilinear to the image size (14h, 14w) + UV embedding -> 3x3 conv, ReLU, 1x1 conv -> activation.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_INTERPOLATE_ELEMENTS = 1 << 30


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, align_corners=True, split over the batch when the output would exceed int32 indexing."""
    elements = x.shape[0] * x.shape[1] * size[0] * size[1]
    if elements <= MAX_INTERPOLATE_ELEMENTS:
        return F.interpolate(x, size=size, mode="bilinear", align_corners=True)
    chunks = x.split(max(1, x.shape[0] * MAX_INTERPOLATE_ELEMENTS // elements))
    return torch.cat([F.interpolate(chunk, size=size, mode="bilinear", align_corners=True) for chunk in chunks])


@lru_cache(maxsize=16)
def _uv_embedding(channels: int, height: int, width: int, aspect: float, device: torch.device) -> Tensor:
    """(channels, height, width) float32 sinusoidal embedding of a UV grid spanning the image diagonal, cached
    per device (computed in float64).

    The grid spans [-a, a] x [-b, b] (a = aspect / sqrt(aspect^2 + 1), b = 1 / sqrt(aspect^2 + 1)), shrunk by
    (n - 1) / n per axis; each axis gets channels/2: [sin(u w_d), cos(u w_d)] with w_d = 100^(-d / (channels/4)).
    """
    diagonal = (aspect ** 2 + 1.0) ** 0.5
    span_x, span_y = aspect / diagonal, 1.0 / diagonal
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width).double()
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height).double()
    quarter = channels // 4
    omega = 1.0 / 100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)   # (C/4,)
    ux = u[:, None] * omega                                                        # (W, C/4)
    vy = v[:, None] * omega                                                        # (H, C/4)
    emb_x = torch.cat([ux.sin(), ux.cos()], dim=-1)[None].expand(height, -1, -1)   # (H, W, C/2)
    emb_y = torch.cat([vy.sin(), vy.cos()], dim=-1)[:, None].expand(-1, width, -1)  # (H, W, C/2)
    return torch.cat([emb_x, emb_y], dim=-1).permute(2, 0, 1).float().contiguous().to(device)


def add_uv_embedding(x: Tensor, image_hw: tuple[int, int], ratio: float = 0.1) -> Tensor:
    """x: (B, C, h, w) + ratio * UV embedding for the image aspect ratio W/H."""
    emb = _uv_embedding(x.shape[1], x.shape[2], x.shape[3], image_hw[1] / image_hw[0], x.device)
    return x + ratio * emb.to(x.dtype)


class ResidualConvUnit(nn.Module):
    """relu(x) + conv2(relu(conv1(relu(x)))): the official unit rectifies its input in place, so the skip
    connection carries relu(x)."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FusionBlock(nn.Module):
    """(coarser + RCU1(skip)) -> RCU2 -> bilinear resize -> 1x1 out_conv."""

    def __init__(self, features: int, has_skip: bool = True):
        super().__init__()
        if has_skip:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1)

    def forward(self, x: Tensor, skip: Optional[Tensor], size: tuple[int, int]) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        return self.out_conv(resize(self.resConfUnit2(x), size))


class DPTHead(nn.Module):
    def __init__(self, dim_in: int, output_dim: int, activation: str, features: int = 256,
                 out_channels: tuple[int, ...] = (256, 512, 1024, 1024), patch_size: int = 14):
        super().__init__()
        if activation not in ("exp", "inv_log"):
            raise ValueError(f"unknown DPT activation {activation!r}")
        self.activation = activation
        self.patch_size = patch_size
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, oc, 1) for oc in out_channels])
        self.resize_layers = nn.ModuleList([
            nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
            nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
        ])
        self.scratch = nn.Module()
        for k, oc in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{k}_rn", nn.Conv2d(oc, features, 3, padding=1, bias=False))
        self.scratch.refinenet1 = FusionBlock(features)
        self.scratch.refinenet2 = FusionBlock(features)
        self.scratch.refinenet3 = FusionBlock(features)
        self.scratch.refinenet4 = FusionBlock(features, has_skip=False)
        self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
        self.scratch.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, output_dim, 1))

    def forward(self, layer_tokens: list[Tensor], grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """layer_tokens: 4 x (F, h*w, dim_in) patch tokens of F frames -> (values (F, H, W, D-1), conf (F, H, W))."""
        grid_h, grid_w = grid
        image_hw = (grid_h * self.patch_size, grid_w * self.patch_size)
        pyramid = []
        for k, tokens in enumerate(layer_tokens):
            x = self.norm(tokens)
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid_h, grid_w)   # (F, dim_in, h, w)
            x = add_uv_embedding(self.projects[k](x), image_hw)
            pyramid.append(getattr(self.scratch, f"layer{k + 1}_rn")(self.resize_layers[k](x)))
        s = self.scratch
        out = s.refinenet4(pyramid[3], None, pyramid[2].shape[2:])
        out = s.refinenet3(out, pyramid[2], pyramid[1].shape[2:])
        out = s.refinenet2(out, pyramid[1], pyramid[0].shape[2:])
        out = s.refinenet1(out, pyramid[0], (pyramid[0].shape[2] * 2, pyramid[0].shape[3] * 2))
        out = add_uv_embedding(resize(s.output_conv1(out), image_hw), image_hw)
        out = s.output_conv2(out).permute(0, 2, 3, 1)                                # (F, H, W, D)
        values, conf = out[..., :-1], 1.0 + out[..., -1].exp()
        if self.activation == "exp":
            values = values.exp()
        else:
            values = values.sign() * values.abs().expm1()
        return values, conf
