"""Training batches for PAGE-4D: random synthetic dynamic scenes on the training device, plus loaded scenes.

Every batch is a pure function of (config.seed, step): the step's generator is seeded with
``step_seed(seed, step)``, which lies in [0, 10^6). Evaluation scenes use seeds >= 10^6 (``EVAL_SEED_BASE``), so
training never draws an evaluation scene.

A batch is a dict of tensors on the device (B sequences of S frames, H x W pixels):
    images (B, S, 3, H, W) in [0, 1], depth (B, S, H, W) z-depth (0 = invalid), world_points (B, S, H, W, 3),
    valid (B, S, H, W) bool, dynamic_mask (B, S, H, W) bool (True = moving; absent for scenes without masks),
    world_to_camera (B, S, 4, 4) OpenCV, K (B, S, 3, 3) in pixels of the image.
:func:`targets_from_batch` turns it into the normalised loss targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.errors import UserError
from stages.geometry.page4d.normalize import normalize_targets
from stages.geometry.page4d.pose import extri_intri_to_pose_encoding

EVAL_SEED_BASE = 1_000_000     # evaluation scenes: seeds >= this; training step seeds: below it


def step_seed(seed: int, step: int) -> int:
    """The seed of one training step's batch, in [0, EVAL_SEED_BASE)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0]) % EVAL_SEED_BASE


@dataclass(frozen=True)
class BatchShape:
    frames: int        # S
    sequences: int     # B
    height: int        # H, a multiple of the patch size
    width: int         # W


def draw_shape(rng: np.random.Generator, config, patch_size: int, width: int) -> BatchShape:
    """S uniform in [frames_min, frames_max] (or from ``frame_choices``), B = floor(max_images / S),
    H = floor(W * aspect / p) * p with the aspect uniform (or from ``aspect_buckets`` evenly spaced values)."""
    choices = getattr(config, "frame_choices", [])
    S = int(rng.choice(choices)) if choices else int(rng.integers(config.frames_min, config.frames_max + 1))
    B = max(1, config.max_images // S)
    buckets = getattr(config, "aspect_buckets", 0)
    if buckets > 0:
        aspect = float(np.linspace(config.aspect_min, config.aspect_max, buckets)[rng.integers(buckets)])
    else:
        aspect = float(rng.uniform(config.aspect_min, config.aspect_max))
    H = max(patch_size, int(width * aspect / patch_size) * patch_size)
    return BatchShape(S, B, H, width)


# ----------------------------------------------------------------------------------------------------------------
# Photometric augmentation


def _gray(images: Tensor) -> Tensor:
    """ITU-R 601 luma of (..., 3, H, W) -> (..., 1, H, W)."""
    r, g, b = images.unbind(-3)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(-3)


def rotate_hue(images: Tensor, turns: Tensor) -> Tensor:
    """Rotate the hue of (B, S, 3, H, W) RGB by ``turns`` (B,) of a full turn, in YIQ (luma and chroma kept)."""
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    from_yiq = torch.linalg.inv(to_yiq)
    angle = 2 * math.pi * turns
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(turns.shape[0], 3, 3, dtype=images.dtype, device=images.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    matrix = from_yiq @ rot @ to_yiq                                          # (B, 3, 3)
    return torch.einsum("bij,bsjhw->bsihw", matrix, images)


def color_jitter(images: Tensor, generator: torch.Generator, strength: float, hue: float, prob: float,
                 grayscale_prob: float) -> Tensor:
    """Per-sequence brightness, contrast, saturation and hue jitter (applied in that order to all S frames, with
    probability ``prob``), then grayscale with probability ``grayscale_prob``. (B, S, 3, H, W) -> same, in [0, 1].

    Contrast blends with the mean luma of each frame, saturation with each pixel's luma (as torchvision does).
    """
    B = images.shape[0]
    dev, dt = images.device, images.dtype

    def uniform(low: float, high: float) -> Tensor:
        return low + (high - low) * torch.rand(B, generator=generator, device=dev, dtype=dt)

    apply = torch.rand(B, generator=generator, device=dev, dtype=dt) < prob
    brightness = torch.where(apply, uniform(1 - strength, 1 + strength), torch.ones(B, device=dev, dtype=dt))
    contrast = torch.where(apply, uniform(1 - strength, 1 + strength), torch.ones(B, device=dev, dtype=dt))
    saturation = torch.where(apply, uniform(1 - strength, 1 + strength), torch.ones(B, device=dev, dtype=dt))
    turns = torch.where(apply, uniform(-hue, hue), torch.zeros(B, device=dev, dtype=dt))
    gray_out = torch.rand(B, generator=generator, device=dev, dtype=dt) < grayscale_prob
    view = (B, 1, 1, 1, 1)
    x = (images * brightness.view(view)).clamp(0, 1)
    mean = _gray(x).mean(dim=(-2, -1), keepdim=True)
    x = ((x - mean) * contrast.view(view) + mean).clamp(0, 1)
    luma = _gray(x)
    x = ((x - luma) * saturation.view(view) + luma).clamp(0, 1)
    x = rotate_hue(x, turns).clamp(0, 1)
    x = torch.where(apply.view(view), x, images)                             # untouched sequences stay exact
    return torch.where(gray_out.view(view), _gray(x).expand_as(x), x)


# ----------------------------------------------------------------------------------------------------------------
# Sources


class SyntheticSource:
    """Random dynamic scenes rendered on the device by :mod:`pipeline.synthetic`, in the two kinds that
    ``make-scene`` writes (and that the evaluation uses, from held-out seeds):

    - ``room``: a furnished room with 1-3 moving objects, filmed by a smooth handheld camera
      (:func:`pipeline.synthetic.batch.random_batch`);
    - ``object``: an articulated figure with orbiting parts on a pedestal, seen by a camera that jumps to a random
      viewpoint on a sphere at every frame (D-NeRF style), composited on white like the D-NeRF loader does.
    """

    TEXTURE_BANKS = 4            # object batches: a cached pool of texture banks, bank = seed % 4

    def __init__(self, config, device: torch.device):
        self.config = config
        self.device = device
        self._banks: dict[int, object] = {}

    def batch(self, shape: BatchShape, seed: int, kind: str, pan_scale: float = 1.0) -> dict[str, Tensor]:
        """One batch of ``kind``; ``pan_scale`` multiplies how far a room's camera turns (1 = make-scene's)."""
        from pipeline.synthetic.batch import BatchOptions, random_batch

        c = self.config
        if kind == "room":
            out = random_batch(shape.sequences, shape.frames, shape.height, shape.width, seed=seed,
                               device=self.device, fov_deg=(c.fov_min_deg, c.fov_max_deg),
                               options=BatchOptions(pan_scale=pan_scale))
        else:
            out = self.object_batch(shape, seed)
        return {k: v for k, v in out.items() if k != "times"}

    def _bank(self, seed: int):
        from pipeline.synthetic.textures import make_texture_bank

        index = seed % self.TEXTURE_BANKS
        if index not in self._banks:
            generator = torch.Generator(device=self.device).manual_seed(2_000_003 + index)
            self._banks[index] = make_texture_bank(generator, 40)
        return self._banks[index]

    def object_batch(self, shape: BatchShape, seed: int) -> dict[str, Tensor]:
        """B figures, each seen from S random viewpoints (distance 3-4.5, elevation -15..70 deg, horizontal field
        of view drawn in [fov_min_deg, fov_max_deg] / 1.5) at S increasing times."""
        from pipeline.synthetic.batch import random_times
        from pipeline.synthetic.cameras import intrinsics, sphere_viewpoints
        from pipeline.synthetic.render import render
        from pipeline.synthetic.scenes import pose, sample_object

        B, S, H, W = shape.sequences, shape.frames, shape.height, shape.width
        generator = torch.Generator(device=self.device).manual_seed(seed)
        bank = self._bank(seed)
        spec = sample_object(generator, B, bank.count)
        times = random_times(generator, B, S, (0.1, 1.0))
        distance = 3.0 + 1.5 * torch.rand(B, generator=generator, device=self.device)
        w2c = torch.stack([sphere_viewpoints(generator, S, float(d), (-15.0, 70.0), target=(0.0, 0.0, -0.1))
                           for d in distance.tolist()])                                  # (B, S, 4, 4)
        low, high = (math.radians(v) / 1.5 for v in (self.config.fov_min_deg, self.config.fov_max_deg))
        fov_x = low + (high - low) * torch.rand(B, 1, generator=generator, device=self.device)
        K = intrinsics(fov_x.expand(B, S), W, H)
        out = render(pose(spec, times), K, w2c, W, H, bank)
        alpha = out["alpha"][..., None]
        images = out["rgb"] * alpha + (1.0 - alpha)                                       # on white
        return {"images": images.permute(0, 1, 4, 2, 3).contiguous(), "depth": out["depth"],
                "world_points": out["points"], "dynamic_mask": out["dynamic"], "valid": out["depth"] > 0,
                "world_to_camera": w2c, "K": K}


class SceneSource:
    """Frames of loaded scenes with ground-truth depth and cameras (any format the loaders read).

    A batch takes B windows of S frames (random start, stride 1-3, in time order) from one scene, resized to the
    batch width (height follows the scene's aspect, rounded to whole patches). World points are the ground-truth
    depth unprojected at pixel centres (+0.5) with the scene's cameras. Frames are decoded once and kept on the CPU.
    """

    def __init__(self, folders: list[str], patch_size: int, width: int):
        from pipeline.scene import SceneConfig, load_scene
        from pipeline.errors import UserError

        self.scenes = []
        for folder in folders:
            scene = load_scene(SceneConfig(source=folder))
            frames = sorted(scene.train_frames or scene.frames, key=lambda f: (f.time, f.camera_id))
            if not (all(f.camera is not None for f in frames) and all(f.load_depth is not None for f in frames)):
                raise UserError("training scenes need ground-truth cameras and depth", folder)
            self.scenes.append((scene, frames))
        self.patch_size, self.width = patch_size, width
        self._cache: dict[int, dict[str, Tensor]] = {}

    def _decoded(self, index: int) -> dict[str, Tensor]:
        if index not in self._cache:
            scene, frames = self.scenes[index]
            W = self.width
            H = max(self.patch_size, int(round(frames[0].height * W / frames[0].width / self.patch_size))
                    * self.patch_size)
            images, depths, masks, w2c, Ks = [], [], [], [], []
            for frame in frames:
                rgb = torch.from_numpy(scene.rgb(frame)).permute(2, 0, 1)[None]          # (1, 3, h, w)
                images.append(F.interpolate(rgb, size=(H, W), mode="bilinear", align_corners=False,
                                            antialias=True)[0].clamp(0, 1))
                depth = torch.from_numpy(np.asarray(frame.load_depth(), np.float32))[None, None]
                depths.append(F.interpolate(depth, size=(H, W), mode="nearest")[0, 0])
                if frame.load_dynamic_mask is not None:
                    mask = torch.from_numpy(np.asarray(frame.load_dynamic_mask(), np.float32))[None, None]
                    masks.append(F.interpolate(mask, size=(H, W), mode="nearest")[0, 0] > 0.5)
                camera = frame.camera.scaled(W, H)
                w2c.append(torch.from_numpy(camera.world_to_camera).float())
                Ks.append(torch.from_numpy(camera.K).float())
            self._cache[index] = {"images": torch.stack(images), "depth": torch.stack(depths),
                                  "world_to_camera": torch.stack(w2c), "K": torch.stack(Ks)}
            if len(masks) == len(frames):
                self._cache[index]["dynamic_mask"] = torch.stack(masks)
        return self._cache[index]

    def batch(self, rng: np.random.Generator, frames: int, sequences: int, device: torch.device) -> dict[str, Tensor]:
        data = self._decoded(int(rng.integers(len(self.scenes))))
        n = data["images"].shape[0]
        windows = []
        for _ in range(sequences):
            stride = int(rng.integers(1, 4))
            while stride > 1 and (frames - 1) * stride >= n:
                stride -= 1
            span = (frames - 1) * stride + 1
            start = int(rng.integers(0, max(1, n - span + 1)))
            windows.append(torch.arange(start, start + span, stride).clamp(max=n - 1))
        index = torch.stack(windows)                                              # (B, S)
        out = {key: value[index].to(device) for key, value in data.items()}
        depth = out["depth"]
        out["valid"] = (depth > 0) & torch.isfinite(depth)
        out["depth"] = torch.where(out["valid"], depth, torch.zeros_like(depth))
        out["world_points"] = unproject_depth(out["depth"], out["K"], out["world_to_camera"])
        return out


def unproject_depth(depth: Tensor, K: Tensor, world_to_camera: Tensor) -> Tensor:
    """z-depth (B, S, H, W) -> world points (B, S, H, W, 3), pixel centres at (j + 0.5, i + 0.5)."""
    B, S, H, W = depth.shape
    ys, xs = torch.meshgrid(torch.arange(H, device=depth.device, dtype=depth.dtype) + 0.5,
                            torch.arange(W, device=depth.device, dtype=depth.dtype) + 0.5, indexing="ij")
    fx, fy = K[..., 0, 0, None, None], K[..., 1, 1, None, None]
    cx, cy = K[..., 0, 2, None, None], K[..., 1, 2, None, None]
    camera_points = torch.stack([(xs - cx) / fx * depth, (ys - cy) / fy * depth, depth], dim=-1)
    R, t = world_to_camera[..., :3, :3], world_to_camera[..., :3, 3]
    # X_w = R^T (X_c - t)
    return torch.einsum("bsji,bshwj->bshwi", R, camera_points - t[:, :, None, None, :])


class TrainingData:
    """The training stream: ``batch(step)`` is deterministic in (config.seed, step)."""

    def __init__(self, config, model_config, device: torch.device):
        self.config = config
        self.device = device
        self.patch_size = model_config.patch_size
        self.width = config.input_width or model_config.input_width
        if self.width % self.patch_size:
            raise UserError(f"training config: input_width {self.width} is not a multiple of the model's patch size "
                            f"{self.patch_size}")
        self.synthetic: Optional[SyntheticSource] = (SyntheticSource(config, device)
                                                     if config.scene_fraction < 1.0 else None)
        self.scenes: Optional[SceneSource] = (SceneSource(config.scenes, self.patch_size, self.width)
                                              if config.scenes and config.scene_fraction > 0 else None)

    def batch(self, step: int) -> dict[str, Tensor]:
        c = self.config
        seed = step_seed(c.seed, step)
        rng = np.random.default_rng(seed)
        shape = draw_shape(rng, c, self.patch_size, self.width)
        if self.scenes is not None and rng.random() < c.scene_fraction:
            batch = self.scenes.batch(rng, shape.frames, shape.sequences, self.device)
        else:
            kind = "object" if rng.random() < c.object_fraction else "room"
            low, high = c.room_pan_scale
            pan_scale = float(rng.uniform(low, high)) if kind == "room" and high > low else low
            batch = self.synthetic.batch(shape, seed, kind, pan_scale)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        batch["images"] = color_jitter(batch["images"], generator, c.color_jitter, c.hue_jitter, c.jitter_prob,
                                       c.grayscale_prob)
        return batch


def targets_from_batch(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Normalised loss targets (spec §12.2) and the ground-truth pose encoding of a batch (or chunk)."""
    H, W = batch["images"].shape[-2:]
    normalized = normalize_targets(batch["world_to_camera"].float(), batch["world_points"].float(),
                                   batch["depth"].float(), batch["valid"])
    pose_enc = extri_intri_to_pose_encoding(normalized.world_to_camera[..., :3, :], batch["K"].float(), (H, W))
    targets = {"pose_enc": pose_enc, "depth": normalized.depth, "world_points": normalized.world_points,
               "valid": batch["valid"]}
    if "dynamic_mask" in batch:
        targets["dynamic_mask"] = batch["dynamic_mask"]
    return targets
