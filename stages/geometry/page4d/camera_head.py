"""Camera head: iterative refinement of a 9-d pose encoding from the last layer's camera tokens.

Each iteration embeds the current (detached) raw encoding, turns it into an adaptive-LayerNorm modulation
(shift, scale, gate) of the normalised camera tokens, runs a small transformer across the S frames and adds a
delta. Activation: translation and quaternion linear, field of view ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.geometry.page4d.layers import Block, Mlp

POSE_ENCODING_DIM = 9  # [t (3), quaternion xyzw (4), fov_h, fov_w]


def activate_pose(raw: Tensor) -> Tensor:
    """(..., 9): translation and quaternion unchanged, field of view through ReLU."""
    return torch.cat([raw[..., :7], F.relu(raw[..., 7:])], dim=-1)


class CameraHead(nn.Module):
    def __init__(self, dim: int, num_heads: int, trunk_depth: int, mlp_ratio: float = 4.0,
                 layerscale_init: float = 0.01):
        super().__init__()
        self.trunk = nn.Sequential(*[Block(dim, num_heads, mlp_ratio, layerscale_init=layerscale_init)
                                     for _ in range(trunk_depth)])
        self.token_norm = nn.LayerNorm(dim)
        self.trunk_norm = nn.LayerNorm(dim)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_DIM))
        self.embed_pose = nn.Linear(POSE_ENCODING_DIM, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim, dim // 2, POSE_ENCODING_DIM)

    def forward(self, camera_tokens: Tensor, iterations: int = 4) -> list[Tensor]:
        """camera_tokens: (B, S, 2C) -> list of ``iterations`` activated encodings (B, S, 9)."""
        tokens = self.token_norm(camera_tokens)
        B, S, _ = tokens.shape
        normed = self.adaln_norm(tokens)
        raw = None
        encodings = []
        for _ in range(iterations):
            previous = self.empty_pose_tokens.expand(B, S, -1) if raw is None else raw.detach()
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(previous)).chunk(3, dim=-1)
            x = gate * (normed * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(x)))
            raw = delta if raw is None else raw + delta
            encodings.append(activate_pose(raw))
        return encodings
