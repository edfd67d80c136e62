"""PAGE-4D: the VGGT network with the dynamics-aware aggregator, in one module with the official key layout."""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from stages.geometry.page4d.aggregator import Aggregator, AggregatorOutput
from stages.geometry.page4d.camera_head import CameraHead
from stages.geometry.page4d.config import ModelConfig
from stages.geometry.page4d.dpt_head import DPTHead

__all__ = ["PAGE4D", "ModelConfig"]

HEADS = ("camera", "depth", "point")


class PAGE4D(nn.Module):
    """images (B, S, 3, H, W) in [0, 1] -> cameras, depth, world points, confidences (and the mask-head score).

    Heads run without autocast, in the dtype of their own parameters (float32 as in the official inference;
    :func:`stages.geometry.page4d.inference.prepare_model` can store them in bfloat16 on GPUs).
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        dim = 2 * config.embed_dim
        self.aggregator = Aggregator(config)
        self.camera_head = CameraHead(dim, config.camera_num_heads, config.camera_trunk_depth, config.mlp_ratio)
        dpt = dict(features=config.dpt_features, out_channels=tuple(config.dpt_out_channels),
                   patch_size=config.patch_size)
        self.depth_head = DPTHead(dim, 2, "exp", **dpt)
        self.point_head = DPTHead(dim, 4, "inv_log", **dpt)

    @property
    def mask_enabled(self) -> bool:
        return self.aggregator.mask_enabled

    @mask_enabled.setter
    def mask_enabled(self, value: bool) -> None:
        if value and self.aggregator.spatial_mask_head is None:
            raise ValueError(f"model '{self.config.name}' has no mask head (VGGT layout)")
        self.aggregator.mask_enabled = bool(value)

    def forward(self, images: Tensor, heads: Iterable[str] = HEADS, mask: Optional[bool] = None,
                want_mask_score: bool = False, dpt_chunk: int = 8) -> dict[str, Tensor]:
        """Returns (only for the requested heads):
        pose_enc (B, S, 9) and pose_enc_list (iterations x (B, S, 9)); depth (B, S, H, W, 1), depth_conf
        (B, S, H, W); world_points (B, S, H, W, 3) in the frame-0 camera, world_points_conf (B, S, H, W);
        mask_score (B, S, H/p, W/p) in (-0.5, 0.5) when the bias is on or ``want_mask_score``.
        ``mask`` overrides ``mask_enabled`` for this call. Frames go through the DPT heads ``dpt_chunk`` at a time.
        """
        if images.dim() == 4:
            images = images[None]
        heads = tuple(heads)
        unknown = set(heads) - set(HEADS)
        if unknown:
            raise ValueError(f"unknown heads {sorted(unknown)} (choose from {HEADS})")
        dense = [h for h in heads if h != "camera"]
        keep = self.config.dpt_layers if dense else ()
        agg = self.aggregator(images, keep_layers=keep, mask=mask, want_mask_score=want_mask_score)
        out: dict[str, Tensor] = {}
        if agg.mask_score is not None:
            out["mask_score"] = agg.mask_score.float()
        device_type = images.device.type
        with torch.autocast(device_type, enabled=False):
            if "camera" in heads:
                encodings = self.camera_head(agg.camera_tokens.float(), self.config.camera_iterations)
                out["pose_enc"], out["pose_enc_list"] = encodings[-1], encodings
            for name in dense:
                head = self.depth_head if name == "depth" else self.point_head
                values, conf = run_dense_head(head, agg, self.config.dpt_layers, dpt_chunk)
                key = "depth" if name == "depth" else "world_points"
                out[key], out[f"{key}_conf"] = values, conf
        return out


def run_dense_head(head: DPTHead, agg: AggregatorOutput, layers: Iterable[int], chunk: int) -> tuple[Tensor, Tensor]:
    """A DPT head over frame chunks, written into preallocated float32 outputs (B, S, H, W, D), (B, S, H, W)."""
    layers = list(layers)
    first = agg.layers[layers[0]][0]
    B, S = first.shape[:2]
    H, W = agg.grid[0] * head.patch_size, agg.grid[1] * head.patch_size
    dtype = head.norm.weight.dtype
    chunk = max(1, chunk)
    values = conf = None
    for start in range(0, S, chunk):
        frames = slice(start, min(S, start + chunk))
        n = frames.stop - frames.start
        tokens = [agg.patch_tokens(i, frames) for i in layers]                     # 4 x (B, n, hw, 2C)
        tokens = [t.reshape(B * n, *t.shape[2:]).to(dtype) for t in tokens]        # 4 x (B*n, hw, 2C)
        chunk_values, chunk_conf = head(tokens, agg.grid)                          # (B*n, H, W, D), (B*n, H, W)
        if values is None:
            values = torch.empty(B, S, H, W, chunk_values.shape[-1], device=first.device)
            conf = torch.empty(B, S, H, W, device=first.device)
        values[:, frames] = chunk_values.view(B, n, H, W, -1)
        conf[:, frames] = chunk_conf.view(B, n, H, W)
    return values, conf
