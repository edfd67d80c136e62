"""Random dynamic scenes as training batches, rendered on the fly on any device.

Each sequence is a random furnished room (:func:`~pipeline.synthetic.scenes.sample_room`): random size, furniture,
textures, light (sometimes moving), 1-3 moving objects (rigid, articulated, deforming), and a random handheld camera
path (dolly, pan, shake, roll) with a field of view of 40-90 degrees on the image's longer side. The S frames of a
sequence cover a random window of the scene's time, so consecutive frames move by varying amounts. Everything is
generated and rendered as batched tensors by the same renderer as the scenes written to disk.

    batches = SyntheticBatches(device="cuda", seed=0)
    batch = batches.sample(batch_size=8, num_frames=16, height=224, width=224)
    batch["images"]  # (8, 16, 3, 224, 224) in [0, 1]

    batch = random_batch(8, 16, 224, 224, seed=step, device="cuda")   # stateless: the seed alone decides
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from torch import Tensor

from pipeline.synthetic.cameras import intrinsics
from pipeline.synthetic.render import render
from pipeline.synthetic.scenes import RoomOptions, SceneSpec, pose, sample_room
from pipeline.synthetic.textures import TextureBank, make_texture_bank


@dataclass
class BatchOptions:
    """What the training scenes vary."""

    fov_deg: tuple[float, float] = (40.0, 90.0)     # field of view of the longer image side, degrees
    dynamic_objects: tuple[int, int] = (1, 3)       # moving objects per room (inclusive)
    moving_light: float = 0.3                       # probability that a room's light moves
    time_span: tuple[float, float] = (0.1, 1.0)     # fraction of the scene's time a sequence covers
    pan_scale: float = 1.0                          # multiplies the camera's pan amplitude, i.e. how far it
                                                    # turns (1 = the rooms make-scene writes)
    supersample: int = 1                            # colour rays per side at silhouettes (1 = none)
    textures: int = 40                              # procedural textures per bank (plus 8 photographs)
    texture_refresh: int = 64                       # SyntheticBatches: new procedural textures every n batches
    texture_banks: int = 4                          # random_batch: size of its cached pool of texture banks


def render_batch(spec: SceneSpec, times: Tensor, height: int, width: int, bank: TextureBank,
                 supersample: int = 1) -> dict[str, Tensor]:
    """Render rooms sampled by :func:`sample_room` along their camera paths at ``times`` (B, S).

    Returns images (B, S, 3, H, W) in [0, 1]; depth (B, S, H, W) z-depth (0 = invalid); world_points
    (B, S, H, W, 3); dynamic_mask (B, S, H, W) bool; valid (B, S, H, W) bool; world_to_camera (B, S, 4, 4)
    OpenCV; K (B, S, 3, 3) in pixels; times (B, S).
    """
    B, S = times.shape
    world_to_camera = spec.camera_path.world_to_camera(times)
    K = intrinsics(spec.fov_x[:, None].expand(B, S), width, height)
    out = render(pose(spec, times), K, world_to_camera, width, height, bank, supersample=supersample)
    return {"images": out["rgb"].permute(0, 1, 4, 2, 3), "depth": out["depth"], "world_points": out["points"],
            "dynamic_mask": out["dynamic"], "valid": out["depth"] > 0, "world_to_camera": world_to_camera,
            "K": K, "times": times}


def random_times(generator: torch.Generator, batch: int, frames: int, span: tuple[float, float]) -> Tensor:
    """(B, S) increasing times covering a random window of length in ``span`` inside [0, 1]."""
    device = generator.device
    length = span[0] + (span[1] - span[0]) * torch.rand(batch, 1, generator=generator, device=device)
    start = (1.0 - length) * torch.rand(batch, 1, generator=generator, device=device)
    steps = torch.arange(frames, device=device, dtype=torch.float32) / max(frames - 1, 1)
    return start + length * steps


def random_image_size(generator: torch.Generator, pixels: int = 224 * 224, multiple: int = 14,
                      aspect: tuple[float, float] = (9 / 16, 21 / 9)) -> tuple[int, int]:
    """(height, width), multiples of ``multiple`` with about ``pixels`` pixels and width / height drawn
    log-uniformly in ``aspect`` (portrait to wide)."""
    lo, hi = math.log(aspect[0]), math.log(aspect[1])
    ratio = math.exp(lo + (hi - lo) * torch.rand(1, generator=generator, device=generator.device).item())
    height = max(multiple, round(math.sqrt(pixels / ratio) / multiple) * multiple)
    width = max(multiple, round(math.sqrt(pixels * ratio) / multiple) * multiple)
    return height, width


def to_first_camera(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch in the world of each sequence's first camera (PAGE-4D's convention): world points and
    world-to-camera matrices change, images, depth and masks do not."""
    w2c = batch["world_to_camera"]
    first = w2c[:, :1]                                                    # (B, 1, 4, 4)
    first_inverse = torch.linalg.inv(first)
    points = batch["world_points"]
    # x_new = first @ x for points; w2c_new = w2c @ first^-1.
    moved = torch.einsum("bij,bshwj->bshwi", first[:, 0, :3, :3], points) + first[:, 0, None, None, None, :3, 3]
    out = dict(batch)
    out["world_points"] = torch.where(batch["valid"][..., None], moved, torch.zeros_like(moved))
    out["world_to_camera"] = w2c @ first_inverse
    return out


@lru_cache(maxsize=8)
def _shared_bank(device: str, bank_seed: int, textures: int) -> TextureBank:
    return make_texture_bank(torch.Generator(device=device).manual_seed(bank_seed), textures)


def random_batch(batch_size: int, frames: int, height: int, width: int, seed: int, device: str | torch.device = "cpu",
                 fov_deg: tuple[float, float] = (40.0, 90.0), options: BatchOptions | None = None
                 ) -> dict[str, Tensor]:
    """A batch that depends only on its arguments (stateless; e.g. seed = a hash of the training step). The
    textures come from a cached pool of ``options.texture_banks`` banks (bank ``seed % texture_banks``), so only
    the first calls pay for building them. Tensors as :func:`render_batch`."""
    options = replace(options or BatchOptions(), fov_deg=tuple(fov_deg))
    device = torch.device(device)
    bank = _shared_bank(str(device), 1_000_003 + seed % max(1, options.texture_banks), options.textures)
    generator = torch.Generator(device=device).manual_seed(seed)
    room = RoomOptions(fov_deg=options.fov_deg, dynamic_objects=options.dynamic_objects,
                       moving_light=options.moving_light, pan_m=options.pan_scale)
    spec = sample_room(generator, batch_size, bank.count, width, height, room)
    times = random_times(generator, batch_size, frames, options.time_span)
    return render_batch(spec, times, height, width, bank, options.supersample)


class SyntheticBatches:
    """An endless source of random training batches on ``device``, reproducible from ``seed``."""

    def __init__(self, device: str | torch.device = "cpu", seed: int = 0, options: BatchOptions | None = None):
        self.device = torch.device(device)
        self.options = options or BatchOptions()
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.bank = make_texture_bank(self.generator, self.options.textures)
        self.batches = 0

    def sample_spec(self, batch_size: int, num_frames: int, height: int, width: int) -> tuple[SceneSpec, Tensor]:
        """Random rooms and their frame times (B, S), without rendering."""
        o = self.options
        if self.batches and o.texture_refresh and self.batches % o.texture_refresh == 0:
            self.bank = make_texture_bank(self.generator, o.textures)
        self.batches += 1
        room = RoomOptions(fov_deg=o.fov_deg, dynamic_objects=o.dynamic_objects, moving_light=o.moving_light,
                           pan_m=o.pan_scale)
        spec = sample_room(self.generator, batch_size, self.bank.count, width, height, room)
        return spec, random_times(self.generator, batch_size, num_frames, o.time_span)

    def sample(self, batch_size: int, num_frames: int, height: int, width: int) -> dict[str, Tensor]:
        """A batch of ``batch_size`` sequences of ``num_frames`` (2-16 typically) frames of height x width; see
        :func:`render_batch` for the tensors."""
        if num_frames < 1 or height < 2 or width < 2:
            raise ValueError(f"bad batch shape: {num_frames} frames of {height} x {width}")
        spec, times = self.sample_spec(batch_size, num_frames, height, width)
        return render_batch(spec, times, height, width, self.bank, self.options.supersample)
