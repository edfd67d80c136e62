"""VGGT input preprocessing and the exact map back to each frame's stored resolution.

Modes (``shared/spec/page4d.md`` §3), for a model input width Wn (518 for the 1B model):
- ``crop``: width Wn, height round(h * Wn / w / 14) * 14 (PIL bicubic); taller than Wn: centre crop to Wn.
- ``pad``: the longer side Wn, the other rounded the same way, padded with white to Wn x Wn (floor/ceil split).
- ``squash``: ``crop``, then bilinear (align_corners=False) to Wn x Wn: the released PAGE-4D evaluation input.
Frames of different shapes are padded with white, centred, to the largest height and width.

Every frame keeps a :class:`FrameMapping`, an axis-aligned affine map from network-input pixel coordinates to
stored-frame coordinates (continuous, pixel centres at +0.5, which PIL's resize and align_corners=False both map
linearly): x_stored = scale_x * (x_net - offset_x), likewise for y.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MODES = ("crop", "pad", "squash")


@dataclass(frozen=True)
class FrameMapping:
    """Network-input pixels -> stored pixels: x_s = scale_x * (x_n - offset_x), y_s = scale_y * (y_n - offset_y)."""

    stored_size: tuple[int, int]     # (width, height) of the stored frame
    net_size: tuple[int, int]        # (width, height) of the network input
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def then_resize(self, new_size: tuple[int, int]) -> "FrameMapping":
        """The mapping after the network image is resized (align_corners=False) to ``new_size`` (width, height)."""
        rx, ry = self.net_size[0] / new_size[0], self.net_size[1] / new_size[1]
        return FrameMapping(self.stored_size, new_size, self.scale_x * rx, self.scale_y * ry,
                            self.offset_x / rx, self.offset_y / ry)

    def shifted(self, dx: float, dy: float, new_size: tuple[int, int]) -> "FrameMapping":
        """The mapping after the network image is padded by (dx, dy) pixels on the left/top to ``new_size``."""
        return FrameMapping(self.stored_size, new_size, self.scale_x, self.scale_y,
                            self.offset_x + dx, self.offset_y + dy)

    def intrinsics_to_stored(self, K_net: np.ndarray) -> np.ndarray:
        """(3, 3) intrinsics in network pixels -> in stored-frame pixels."""
        K = np.array(K_net, dtype=np.float64)
        K[0, 0] *= self.scale_x
        K[0, 2] = self.scale_x * (K[0, 2] - self.offset_x)
        K[1, 1] *= self.scale_y
        K[1, 2] = self.scale_y * (K[1, 2] - self.offset_y)
        return K

    def intrinsics_to_network(self, K_stored: np.ndarray) -> np.ndarray:
        """(3, 3) intrinsics in stored-frame pixels -> in network pixels (the inverse of intrinsics_to_stored)."""
        K = np.array(K_stored, dtype=np.float64)
        K[0, 0] /= self.scale_x
        K[0, 2] = K[0, 2] / self.scale_x + self.offset_x
        K[1, 1] /= self.scale_y
        K[1, 2] = K[1, 2] / self.scale_y + self.offset_y
        return K

    def stored_sample_grid(self, device: torch.device | str = "cpu") -> Tensor:
        """(1, H_s, W_s, 2) grid_sample coordinates (align_corners=False) of each stored pixel in the network image."""
        W_s, H_s = self.stored_size
        W_n, H_n = self.net_size
        xs = (torch.arange(W_s, dtype=torch.float64, device=device) + 0.5) / self.scale_x + self.offset_x
        ys = (torch.arange(H_s, dtype=torch.float64, device=device) + 0.5) / self.scale_y + self.offset_y
        gx = (2.0 * xs / W_n - 1.0)[None, :].expand(H_s, W_s)
        gy = (2.0 * ys / H_n - 1.0)[:, None].expand(H_s, W_s)
        return torch.stack([gx, gy], dim=-1)[None].float()

    def to_stored(self, maps: Tensor, mode: str = "bilinear") -> Tensor:
        """Resample (C, H_n, W_n) network-resolution maps to (C, H_s, W_s); outside the network view, the edge value."""
        grid = self.stored_sample_grid(maps.device)
        return F.grid_sample(maps[None].float(), grid, mode=mode, padding_mode="border", align_corners=False)[0]

    def stored_coverage(self) -> np.ndarray:
        """(H_s, W_s) bool: stored pixels whose centre the network input covers (False where cropped away)."""
        W_s, H_s = self.stored_size
        W_n, H_n = self.net_size
        xs = (np.arange(W_s) + 0.5) / self.scale_x + self.offset_x
        ys = (np.arange(H_s) + 0.5) / self.scale_y + self.offset_y
        return ((ys >= 0) & (ys <= H_n))[:, None] & ((xs >= 0) & (xs <= W_n))[None, :]

    def network_coverage(self) -> np.ndarray:
        """(H_n, W_n) bool: network pixels whose centre shows the stored frame (False on padding)."""
        W_s, H_s = self.stored_size
        W_n, H_n = self.net_size
        xs = self.scale_x * (np.arange(W_n) + 0.5 - self.offset_x)
        ys = self.scale_y * (np.arange(H_n) + 0.5 - self.offset_y)
        return ((ys >= 0) & (ys <= H_s))[:, None] & ((xs >= 0) & (xs <= W_s))[None, :]


@dataclass
class PreparedFrames:
    """Network inputs of a frame sequence. images: (S, 3, H, W) uint8; squash_to: final (W, H) or None."""

    images: Tensor
    mappings: list[FrameMapping]
    mode: str
    squash_to: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def net_size(self) -> tuple[int, int]:
        """(width, height) the network sees."""
        return self.squash_to or (self.images.shape[3], self.images.shape[2])

    def batch(self, indices: Sequence[int] | slice, device: torch.device | str = "cpu") -> Tensor:
        """(n, 3, H, W) float32 in [0, 1] for the given frames."""
        x = self.images[indices].to(device).float().div_(255.0)
        if self.squash_to is not None:
            x = F.interpolate(x, size=(self.squash_to[1], self.squash_to[0]), mode="bilinear", align_corners=False)
        return x


def _round14(x: float, patch: int) -> int:
    return int(round(x / patch)) * patch


def resized_size(width: int, height: int, mode: str, target: int, patch: int = 14) -> tuple[int, int]:
    """(width, height) after the resize step of ``mode`` (before cropping or padding)."""
    if mode in ("crop", "squash") or width >= height:
        return target, _round14(height * (target / width), patch)
    return _round14(width * (target / height), patch), target


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float [0, 1] (H, W, 3) -> uint8, exact for images decoded from 8-bit files."""
    return np.clip(np.round(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def prepare_frames(images: Sequence[np.ndarray], mode: str = "crop", target: int = 518,
                   patch: int = 14) -> PreparedFrames:
    """RGB frames (H, W, 3) float32 in [0, 1] (or uint8) -> network inputs and per-frame mappings."""
    from PIL import Image

    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r} (one of {', '.join(MODES)})")
    if not len(images):
        raise ValueError("no frames to preprocess")
    tensors, mappings = [], []
    for image in images:
        pixels = image if image.dtype == np.uint8 else to_uint8(image)
        H_s, W_s = pixels.shape[:2]
        W_r, H_r = resized_size(W_s, H_s, mode, target, patch)
        resized = np.asarray(Image.fromarray(pixels[..., :3]).resize((W_r, H_r), Image.Resampling.BICUBIC))
        x = torch.from_numpy(resized.copy()).permute(2, 0, 1)                   # (3, H_r, W_r) uint8
        mapping = FrameMapping((W_s, H_s), (W_r, H_r), W_s / W_r, H_s / H_r, 0.0, 0.0)
        if mode in ("crop", "squash") and H_r > target:
            top = (H_r - target) // 2
            x = x[:, top:top + target]
            mapping = mapping.shifted(0.0, -top, (W_r, target))
        if mode == "pad":
            pad_h, pad_w = target - x.shape[1], target - x.shape[2]
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=255)
            mapping = mapping.shifted(pad_w // 2, pad_h // 2, (target, target))
        tensors.append(x)
        mappings.append(mapping)
    H = max(t.shape[1] for t in tensors)
    W = max(t.shape[2] for t in tensors)
    for i, x in enumerate(tensors):
        pad_h, pad_w = H - x.shape[1], W - x.shape[2]
        if pad_h or pad_w:
            tensors[i] = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=255)
            mappings[i] = mappings[i].shifted(pad_w // 2, pad_h // 2, (W, H))
    squash_to = None
    if mode == "squash":
        squash_to = (target, target)
        mappings = [m.then_resize(squash_to) for m in mappings]
    return PreparedFrames(torch.stack(tensors), mappings, mode, squash_to)
