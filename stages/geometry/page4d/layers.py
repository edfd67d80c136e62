"""Transformer building blocks: attention (with 2D RoPE and the PAGE-4D special-query bias), MLP, LayerScale.

Shapes: B batch (or frames for per-frame attention), L tokens, C channels, H heads, D = C / H head dim.
Parameter names match the official checkpoints (``qkv``, ``q_norm``, ``k_norm``, ``proj``, ``ls1.gamma``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stages.geometry.page4d import sdpa


class LayerScale(nn.Module):
    """Per-channel residual scale: x * gamma."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    """Linear -> exact (erf) GELU -> Linear. Without autograd, long sequences run in token chunks (same numbers,
    a fraction of the hidden activation's memory)."""

    chunk_tokens = 1 << 16

    def __init__(self, dim: int, hidden: int, out: Optional[int] = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out or dim)

    def _forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x: Tensor) -> Tensor:
        tokens = x.shape[:-1].numel()
        if torch.is_grad_enabled() or tokens <= self.chunk_tokens or x.dim() < 2:
            return self._forward(x)
        flat = x.reshape(tokens, x.shape[-1])                               # (T, C)
        parts = [self._forward(part) for part in flat.split(self.chunk_tokens)]
        return torch.cat(parts).view(*x.shape[:-1], -1)


# ----------------------------------------------------------------------------------------------------------------
# 2D rotary position embedding


@dataclass
class Rope2D:
    """Rotation tables of one frame's token layout, broadcast over the frames of a sequence.

    cos, sin: (N, D) for the N tokens of one frame. Dims [0, D/2) rotate with the token's row position and
    [D/2, D) with its column position; inside each half, dim j pairs with j + D/4 and uses frequency index j mod D/4.
    """

    cos: Tensor
    sin: Tensor

    @staticmethod
    def for_grid(grid_h: int, grid_w: int, num_special: int, head_dim: int, frequency: float,
                 device: torch.device, dtype: torch.dtype = torch.float32) -> "Rope2D":
        """Tables for [num_special tokens at (0, 0), then the grid_h x grid_w patches row-major at (r+1, c+1)]."""
        quarter = head_dim // 4
        exponents = torch.arange(0, 2 * quarter, 2, device=device).float() / (2 * quarter)
        inv_freq = 1.0 / (frequency ** exponents)                          # (D/4,)
        rows = torch.arange(grid_h, device=device).repeat_interleave(grid_w) + 1
        cols = torch.arange(grid_w, device=device).repeat(grid_h) + 1
        zeros = torch.zeros(num_special, dtype=rows.dtype, device=device)
        pos_y = torch.cat([zeros, rows]).float()                           # (N,)
        pos_x = torch.cat([zeros, cols]).float()
        angle_y = (pos_y[:, None] * inv_freq[None]).to(dtype)              # (N, D/4)
        angle_x = (pos_x[:, None] * inv_freq[None]).to(dtype)
        angles = torch.cat([angle_y, angle_y, angle_x, angle_x], dim=-1)  # (N, D)
        return Rope2D(angles.cos(), angles.sin())

    def apply(self, x: Tensor) -> Tensor:
        """Rotate x (B, H, F*N, D), a sequence of F frames of N tokens each."""
        B, H, L, D = x.shape
        N = self.cos.shape[0]
        frames = x.reshape(B, H, L // N, N, 2, 2, D // 4)                  # (B, H, F, N, axis, half, D/4)
        first, second = frames.unbind(-2)
        rotated = torch.stack([-second, first], dim=-2).reshape(B, H, L // N, N, D)
        out = frames.reshape(B, H, L // N, N, D) * self.cos.to(x.dtype) + rotated * self.sin.to(x.dtype)
        return out.reshape(B, H, L, D)


# ----------------------------------------------------------------------------------------------------------------
# PAGE-4D bias on the special-token queries


@dataclass
class SpecialQueryBias:
    """The PAGE-4D rank-1 attention bias: logit_ij += alpha * key_bias_j for the camera and register queries i.

    key_bias: (B, F*N) the mask-head score at patch keys and 0 at the special keys of every frame.
    alpha: the row value at special queries (64 when the mask is on). Patch queries are never biased.
    tokens_per_frame: N; num_special: special tokens at the start of each frame (1 camera + registers).
    """

    key_bias: Tensor
    alpha: float
    tokens_per_frame: int
    num_special: int

    def query_index(self, frames: int, device: torch.device) -> Tensor:
        """(F * num_special,) positions of the special tokens in the frame-major global sequence."""
        starts = torch.arange(frames, device=device) * self.tokens_per_frame
        return (starts[:, None] + torch.arange(self.num_special, device=device)[None]).reshape(-1)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        """Biased attention of the special queries. q, k, v: (B, H, L, D) -> (B, H, F * num_special, D).

        The bias rides along as one extra head channel (q' = [q, alpha / scale], k' = [k, key_bias]), so a flash
        kernel runs it without materialising a (rows, L) mask; the channel count is padded to a multiple of 8.
        """
        B, H, L, D = q.shape
        index = self.query_index(L // self.tokens_per_frame, q.device)
        q_rows = q[:, :, index]                                             # (B, H, R, D)
        pad = (-(D + 1)) % 8
        dtype = torch.promote_types(q.dtype, k.dtype)
        bias_q = torch.full((B, H, q_rows.shape[2], 1), self.alpha / scale, dtype=dtype, device=q.device)
        bias_k = self.key_bias.to(dtype)[:, None, :, None].expand(B, H, L, 1)
        q_aug = F.pad(torch.cat([q_rows.to(dtype), bias_q], dim=-1), (0, pad))    # (B, H, R, D + 1 + pad)
        k_aug = F.pad(torch.cat([k.to(dtype), bias_k], dim=-1), (0, pad))         # (B, H, L, D + 1 + pad)
        v_aug = F.pad(v, (0, pad + 1))                                             # (B, H, L, D + 1 + pad)
        return sdpa.attention(q_aug, k_aug, v_aug, scale=scale)[..., :D]

    def additive_mask(self, frames: int, dtype: torch.dtype) -> Tensor:
        """The same bias as an explicit (B, 1, L, L) additive mask (reference; memory grows as L^2)."""
        L = frames * self.tokens_per_frame
        rows = torch.zeros(L, dtype=dtype, device=self.key_bias.device)
        rows[self.query_index(frames, self.key_bias.device)] = self.alpha
        return (rows[None, :, None] * self.key_bias.to(dtype)[:, None, :])[:, None]


# ----------------------------------------------------------------------------------------------------------------
# Attention and block


class Attention(nn.Module):
    """Multi-head self-attention with optional qk-norm (LayerNorm over the head dim, shared by heads) and RoPE."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Optional[Rope2D] = None, bias: Optional[SpecialQueryBias] = None) -> Tensor:
        """x: (B, L, C) -> (B, L, C)."""
        B, L, C = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, L, D)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        out = sdpa.attention(q, k, v, scale=self.scale)                   # (B, H, L, D)
        if bias is not None and bias.alpha != 0.0:
            index = bias.query_index(L // bias.tokens_per_frame, x.device)
            out = out.index_copy(2, index, bias.attend(q, k, v, self.scale).to(out.dtype))
        out = out.transpose(1, 2).reshape(B, L, C)
        return self.proj(out)


class Block(nn.Module):
    """Pre-LN transformer block: x += ls1(attn(norm1(x))); x += ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = False,
                 layerscale_init: float = 0.01, norm_eps: float = 1e-5):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm)
        self.ls1 = LayerScale(dim, layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layerscale_init)

    def forward(self, x: Tensor, rope: Optional[Rope2D] = None, bias: Optional[SpecialQueryBias] = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope, bias))
        return x + self.ls2(self.mlp(self.norm2(x)))


# Compiled graphs one code object (Block.forward) may hold before torch falls back to eager for new cases: the blocks
# of the patch embed, the aggregator and the camera head differ in RoPE, qk-norm and bias, and batches of one
# sequence specialise on size 1, so torch's default of 8 can be reached by page4d-tiny's training alone.
COMPILED_GRAPHS_PER_BLOCK_CODE = 32


def compile_blocks(model: nn.Module, backend: str = "inductor", skip: tuple[nn.Module, ...] = ()) -> int:
    """Compile every :class:`Block` of ``model`` but ``skip`` in place (``nn.Module.compile``, dynamic shapes);
    returns how many.

    One block is ~35 small operators (norms, RoPE, LayerScale, residuals around the matmuls and the attention), most
    of a step's kernel launches; compiled, their elementwise parts fuse. Blocks of the same kind share a compiled
    graph (torch inlines modules, so parameters are graph inputs), and names, parameters and state dicts are
    unchanged: checkpoints and exported weights do not see it. A graph is specialised on the Python values it reads,
    so blocks given a :class:`SpecialQueryBias` whose ``alpha`` changes from call to call (the mask schedule's ramp
    in training) belong in ``skip``. Raises torch's recompile limit to :data:`COMPILED_GRAPHS_PER_BLOCK_CODE`
    (a process-wide torch setting; never lowered)."""
    import torch._dynamo

    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"    # torch < 2.7
    setattr(config, name, max(getattr(config, name), COMPILED_GRAPHS_PER_BLOCK_CODE))
    skipped = {id(m) for m in skip}
    blocks = [m for m in model.modules() if isinstance(m, Block) and id(m) not in skipped]
    for block in blocks:
        block.compile(backend=backend, dynamic=True)
    return len(blocks)
