"""Generate a synthetic scene and write it to a folder: images in the D-NeRF layout (plus ``frames/`` for rooms),
exact ground truth in ``ground_truth/`` and a README that documents both.

The same seed gives the same bytes: every random number comes from one seeded generator, rendering runs on one CPU
thread (torch's intra-op threading may change reduction orders and, on a busy machine, is slower anyway), PNGs are
encoded by Pillow with fixed settings and no metadata, and ``points.npz`` is a zip with fixed timestamps.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipeline.cameras import opencv_w2c_to_opengl_c2w
from pipeline.errors import UserError
from pipeline.io import with_default_mode
from pipeline.log import progress
from pipeline.scene.loaders.common import holdout_split
from pipeline.synthetic.cameras import intrinsics, sphere_viewpoints
from pipeline.synthetic.render import render
from pipeline.synthetic.scenes import RoomOptions, SceneSpec, pose, sample_object, sample_room
from pipeline.synthetic.textures import TextureBank, make_texture_bank

GENERATOR_VERSION = 2            # bump when the same seed would give different scenes
PNG_COMPRESS_LEVEL = 6
POINTS_TARGET = 150_000          # about this many surface points in ground_truth/points.npz


@dataclass
class RoomSceneOptions:
    """``make-scene room``: a handheld video of a furnished room with moving objects."""

    frames: int = 48
    width: int = 256
    height: int = 0              # 0 = 9/16 of the width (rounded to even)
    supersample: int = 3         # colour rays per side at silhouettes and creases
    test_every: int = 8          # hold out every n-th frame (pipeline.scene.loaders.common.holdout_split)
    fov_deg: float = 65.0        # horizontal field of view
    textures: int = 40           # procedural textures in the bank (besides the 8 photographs)
    pan_scale: float = 1.0       # multiplies the camera's pan amplitude (how far it turns over the video)


@dataclass
class ObjectSceneOptions:
    """``make-scene object``: a D-NeRF-like articulated figure seen by a monocular camera that teleports on a
    sphere (one time per training frame), plus held-out views at new viewpoints and times."""

    frames: int = 100            # training frames
    resolution: int = 200        # square images
    test_views: int = 20
    val_views: int = 10
    supersample: int = 3
    camera_angle_x: float = 0.6911112070083618   # the D-NeRF scenes' horizontal field of view, radians
    camera_distance: float = 3.6
    elevation_deg: tuple[float, float] = (-10.0, 65.0)
    textures: int = 40


@dataclass
class FrameRecord:
    split: str
    stem: str                    # file stem in the split folder ("r_004")
    time: float
    frame_index: int             # position in time order over the whole scene
    frame_file: str = ""         # rooms: the same image in frames/ ("frames/00004.png")


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 (H, W), (H, W, 3) or (H, W, 4) array with fixed settings and no metadata."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` readable by ``np.load`` whose bytes depend only on the arrays (fixed timestamps)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.save(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def _fresh_output(out: Path) -> None:
    if out.is_symlink() and not out.exists():
        raise UserError("is a symbolic link to nothing (dangling, or a loop); choose another --out or remove the link",
                        out)
    if out.exists() and not out.is_dir():
        raise UserError("is a file, not a folder; choose another --out", out)
    if out.exists() and any(out.iterdir()):
        raise UserError("exists and is not an empty folder; choose another --out or remove it", out)


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    """A temporary folder next to ``out`` that becomes ``out`` on success (so a scene folder is never partial). An
    ``out`` that exists (an empty folder, or a link to one) is kept and filled, not replaced: its permissions, owner
    and mount stay the user's, and a link keeps pointing at it."""
    out = Path(out)
    _fresh_output(out)
    if out.is_symlink():        # a link to an empty folder: the scene goes into that folder, the link stays
        out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = with_default_mode(Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent)))
    try:
        yield stage
        if out.is_dir():
            # empty (checked above): the staged entries move in, a rename each (a copy where out is a mount point)
            for entry in sorted(stage.iterdir()):
                shutil.move(str(entry), str(out / entry.name))
        else:
            stage.rename(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)


@dataclass
class GeneratedScene:
    """A scene ready to render: everything :func:`write_scene` needs, and what tests need to re-render it."""

    kind: str                    # "room" or "object"
    seed: int
    options: dict
    spec: SceneSpec              # B = 1
    bank: TextureBank
    records: list[FrameRecord]
    times: torch.Tensor          # (n,) float32, one per record
    world_to_camera: torch.Tensor  # (n, 4, 4) float32 OpenCV, as rendered
    K: torch.Tensor              # (n, 3, 3) float64 (rendered in float32)
    fov_x: float                 # horizontal field of view, radians
    width: int
    height: int
    supersample: int
    transparent: bool            # RGBA images with alpha = coverage (no room around the scene)


def room_scene(seed: int = 0, options: RoomSceneOptions | None = None) -> GeneratedScene:
    """The room scene of ``seed``: a handheld video of ``options.frames`` frames."""
    options = options or RoomSceneOptions()
    width = options.width
    height = options.height or 2 * round(width * 9 / 32)
    if options.frames < 2 or min(width, height) < 8:
        raise UserError(f"a room scene needs at least 2 frames and 8 x 8 pixels, got {options.frames} frames of "
                        f"{width} x {height}")
    generator = torch.Generator().manual_seed(seed)
    bank = make_texture_bank(generator, options.textures)
    room = RoomOptions(fov_deg=(options.fov_deg, options.fov_deg), moving_light=0.0, pan_m=options.pan_scale)
    spec = sample_room(generator, 1, bank.count, width, height, room)
    fov_x = math.radians(options.fov_deg)  # sample_room's field of view is for the longer side; this is horizontal
    spec.fov_x = torch.full((1,), fov_x)
    n = options.frames
    times = (torch.arange(n, dtype=torch.float64) / (n - 1)).float()
    records = [FrameRecord(holdout_split(i, options.test_every), f"r_{i:03d}", float(times[i]), i,
                           f"frames/{i:05d}.png") for i in range(n)]
    return GeneratedScene("room", seed, asdict(options), spec, bank, records, times,
                          spec.camera_path.world_to_camera(times[None])[0], _intrinsics(fov_x, n, width, height),
                          fov_x, width, height, options.supersample, transparent=False)


def object_scene(seed: int = 0, options: ObjectSceneOptions | None = None) -> GeneratedScene:
    """The object scene of ``seed``: training frames at times i / (n - 1) from random viewpoints, then validation
    and test views at new random viewpoints and times."""
    options = options or ObjectSceneOptions()
    size = options.resolution
    if options.frames < 2 or size < 8:
        raise UserError(f"an object scene needs at least 2 frames and 8 x 8 pixels, got {options.frames} frames "
                        f"of {size} x {size}")
    generator = torch.Generator().manual_seed(seed)
    bank = make_texture_bank(generator, options.textures)
    spec = sample_object(generator, 1, bank.count)
    records, times, poses = [], [], []
    for split, count in (("train", options.frames), ("val", options.val_views), ("test", options.test_views)):
        if count == 0:
            continue
        if split == "train":
            split_times = torch.arange(count, dtype=torch.float64) / (count - 1)
        else:  # new times, uniform in [0, 1)
            split_times = torch.rand(count, generator=generator, dtype=torch.float64)
        poses.append(sphere_viewpoints(generator, count, options.camera_distance, options.elevation_deg,
                                       target=(0.0, 0.0, -0.1)))
        records += [FrameRecord(split, f"r_{k:03d}", float(split_times[k]), 0) for k in range(count)]
        times.append(split_times)
    for position, i in enumerate(sorted(range(len(records)), key=lambda i: (records[i].time, i))):
        records[i].frame_index = position
    n = len(records)
    return GeneratedScene("object", seed, asdict(options), spec, bank, records, torch.cat(times).float(),
                          torch.cat(poses), _intrinsics(options.camera_angle_x, n, size, size),
                          options.camera_angle_x, size, size, options.supersample, transparent=True)


def _intrinsics(fov_x: float, n: int, width: int, height: int) -> torch.Tensor:
    """(n, 3, 3) float64 K, computed as the D-NeRF loader computes it from camera_angle_x."""
    return intrinsics(torch.full((n,), fov_x, dtype=torch.float64), width, height)


def make_room_scene(out: Path, seed: int = 0, options: RoomSceneOptions | None = None) -> Path:
    """Generate the room scene of ``seed`` into the new folder ``out``; returns ``out``."""
    with single_thread():
        write_scene(out, room_scene(seed, options))
    return Path(out)


def make_object_scene(out: Path, seed: int = 0, options: ObjectSceneOptions | None = None) -> Path:
    """Generate the object scene of ``seed`` into the new folder ``out``; returns ``out``."""
    with single_thread():
        write_scene(out, object_scene(seed, options))
    return Path(out)


def render_scene(scene: GeneratedScene, frames: slice = slice(None), spec: SceneSpec | None = None,
                 **kwargs) -> dict[str, torch.Tensor]:
    """Render frames of ``scene`` (optionally a modified ``spec``) as written; outputs (F, H, W, ...)."""
    spec = spec or scene.spec
    times = scene.times[frames]
    posed = pose(spec, times[None].to(spec.offset.dtype))
    kwargs.setdefault("supersample", scene.supersample)
    out = render(posed, scene.K[None, frames], scene.world_to_camera[None, frames], scene.width, scene.height,
                 scene.bank, **kwargs)
    return {k: v[0] for k, v in out.items()}


def write_scene(out: Path, scene: GeneratedScene) -> None:
    """Render every frame of ``scene`` and write images, transforms, ground truth and README into the new folder
    ``out`` (atomically: the folder appears complete or not at all)."""
    with _staging(Path(out)) as stage:
        _write(stage, scene)


def _write(root: Path, scene: GeneratedScene) -> None:
    """Render every frame and write images, transforms, ground truth and README into ``root``."""
    records, spec, kind = scene.records, scene.spec, scene.kind
    width, height, fov_x = scene.width, scene.height, scene.fov_x
    n = len(records)
    images, depths, masks, slots, points = [], [], [], [], []
    for start in progress(range(0, n, 4), desc=f"rendering {kind}", total=(n + 3) // 4, unit="x4 frames"):
        out = render_scene(scene, slice(start, min(n, start + 4)))
        images.append(torch.cat([out["rgb"], out["alpha"][..., None]], -1))
        depths.append(out["depth"])
        masks.append(out["dynamic"])
        slots.append(out["slot"])
        points.append(out["points"])
    image = torch.cat(images).numpy()
    depth = torch.cat(depths).numpy().astype(np.float32)
    dynamic = torch.cat(masks).numpy()
    slot = torch.cat(slots).numpy()
    point = torch.cat(points).numpy().astype(np.float32)
    w2c = scene.world_to_camera.double().numpy()                                     # (n, 4, 4), as rendered
    K = scene.K.numpy()
    transparent = scene.transparent

    rgb8 = _to_uint8(image[..., :3] * (image[..., 3:] > 0))
    encoded = []
    for i in range(n):
        pixels = np.concatenate([rgb8[i], _to_uint8(image[i, ..., 3:])], -1) if transparent else rgb8[i]
        encoded.append(png_bytes(pixels))
    for i, record in enumerate(records):
        (root / record.split).mkdir(exist_ok=True)
        (root / record.split / f"{record.stem}.png").write_bytes(encoded[i])
        if record.frame_file:
            (root / "frames").mkdir(exist_ok=True)
            (root / record.frame_file).write_bytes(encoded[i])
        depth_file = root / "ground_truth" / "depth" / record.split / f"{record.stem}.npy"
        depth_file.parent.mkdir(parents=True, exist_ok=True)
        with open(depth_file, "wb") as f:
            np.save(f, depth[i], allow_pickle=False)
        mask_file = root / "ground_truth" / "dynamic_mask" / record.split / f"{record.stem}.png"
        mask_file.parent.mkdir(parents=True, exist_ok=True)
        mask_file.write_bytes(png_bytes(dynamic[i].astype(np.uint8) * 255))

    splits = sorted({r.split for r in records}, key=("train", "val", "test").index)
    for split in splits:
        frames = [{"file_path": f"./{r.split}/{r.stem}", "time": r.time,
                   "transform_matrix": opencv_w2c_to_opengl_c2w(w2c[i]).tolist()}
                  for i, r in enumerate(records) if r.split == split]
        (root / f"transforms_{split}.json").write_bytes(_json({"camera_angle_x": fov_x, "frames": frames}))

    cameras = [{"file_path": f"{r.split}/{r.stem}.png", "split": r.split, "stem": r.stem, "time": r.time,
                "frame_index": r.frame_index, **({"frame_file": r.frame_file} if r.frame_file else {}),
                "width": width, "height": height, "K": K[i].tolist(), "world_to_camera": w2c[i].tolist()}
               for i, r in enumerate(records)]
    gt = root / "ground_truth"
    (gt / "cameras.json").write_bytes(_json({"convention": "opencv", "frames": cameras}))
    (gt / "points.npz").write_bytes(npz_bytes(_point_sample(records, depth, point, rgb8, dynamic, slot)))
    layout = spec.layout
    active = spec.active[0].tolist()
    is_dynamic = spec.dynamic()[0].tolist()
    description = {
        "generator_version": GENERATOR_VERSION, "kind": kind, "seed": scene.seed, "options": scene.options,
        "width": width, "height": height, "camera_angle_x": fov_x, "frames": n,
        "light": {"position": spec.light_position[0].tolist(), "moving": bool(spec.light_amplitude.any()),
                  "ambient": float(spec.ambient[0])},
        "textures": list(scene.bank.names),
        "primitives": [{"slot": i, "name": s.name, "kind": s.kind, "object": s.group, "parent": s.parent,
                        "active": active[i], "dynamic": is_dynamic[i]} for i, s in enumerate(layout.slots)],
    }
    (gt / "scene.json").write_bytes(_json(description))
    moving = sorted({s.group for i, s in enumerate(layout.slots) if active[i] and is_dynamic[i]})
    (root / "README.md").write_text(_readme(kind, scene.seed, description, records, moving))


def _point_sample(records: list[FrameRecord], depth: np.ndarray, point: np.ndarray, rgb8: np.ndarray,
                  dynamic: np.ndarray, slot: np.ndarray) -> dict[str, np.ndarray]:
    """About POINTS_TARGET surface points: the centre-ray hits of every frame on a regular pixel lattice that shifts
    from frame to frame, with their time, frame, pixel, colour, dynamic flag and primitive."""
    n, H, W = depth.shape
    step = max(1, math.ceil(math.sqrt((depth > 0).sum() / POINTS_TARGET)))
    rows, cols = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    out = {k: [] for k in ("xyz", "time", "frame", "pixel", "rgb", "is_dynamic", "slot")}
    for i, record in enumerate(records):
        shift = (i * 7) % (step * step)
        pick = (rows % step == shift // step) & (cols % step == shift % step) & (depth[i] > 0)
        out["xyz"].append(point[i][pick])
        out["time"].append(np.full(pick.sum(), record.time, np.float32))
        out["frame"].append(np.full(pick.sum(), i, np.int32))
        out["pixel"].append(np.stack([cols[pick], rows[pick]], -1).astype(np.int32))
        out["rgb"].append(rgb8[i][pick])
        out["is_dynamic"].append(dynamic[i][pick])
        out["slot"].append(slot[i][pick].astype(np.int16))
    return {k: np.concatenate(v) for k, v in out.items()}


def _readme(kind: str, seed: int, description: dict, records: list[FrameRecord], moving: list[str]) -> str:
    counts = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    W, H = description["width"], description["height"]
    if kind == "room":
        what = (f"A handheld video ({len(records)} frames, {W} x {H}) of a textured room with static furniture and "
                f"moving objects: {', '.join(moving)}. The camera dollies, pans and shakes a little; the light is "
                f"static. Every {description['options']['test_every']}th frame (frames n/2, n/2 + n, ...) is held "
                f"out as a test frame. `frames/` holds the whole video as a frame folder (`00000.png` ...); the "
                f"same images are in `train/` and `test/`, named `r_<frame index>`.")
    else:
        what = (f"A D-NeRF-like dynamic object ({W} x {H}, transparent background): an articulated figure "
                f"(breathing torso, swinging limbs) on a static pedestal, with rigid parts orbiting it "
                f"(moving: {', '.join(moving)}). {counts['train']} training frames, one time each "
                f"(t = i / (n - 1)) from random viewpoints on a sphere; {counts['val']} validation and "
                f"{counts['test']} test views at new viewpoints and new times.")
    return f"""# Synthetic {kind} scene (page4dgs make-scene {kind}, seed {seed})

{what}

Generated by `page4dgs make-scene {kind} --seed {seed}` (generator version {description['generator_version']});
the same command reproduces these files byte for byte.

## Layout

| path | content |
|---|---|
| `transforms_{{{"train,val,test" if kind == "object" else "train,test"}}}.json` | D-NeRF format: `camera_angle_x` (horizontal field of view, radians), per frame `file_path`, `time` in [0, 1], `transform_matrix` (camera-to-world, OpenGL/Blender axes) |
| {"`train/`, `val/`, `test/`" if kind == "object" else "`train/`, `test/`"} `r_XXX.png` | 8-bit {"RGBA (straight alpha = pixel coverage)" if kind == "object" else "RGB"} images |
{"| `frames/NNNNN.png` | the whole video in time order |" + chr(10) if kind == "room" else ""}| `ground_truth/cameras.json` | per frame: `file_path`, `split`, `stem`, `time`, `frame_index` (time order), `width`, `height`, `K` (3 x 3), `world_to_camera` (4 x 4, OpenCV){", `frame_file`" if kind == "room" else ""} |
| `ground_truth/depth/<split>/<stem>.npy` | float32 (H, W) z-depth along the camera's optical axis, metres; 0 = background |
| `ground_truth/dynamic_mask/<split>/<stem>.png` | uint8 (H, W), 255 where the pixel centre sees a moving object |
| `ground_truth/points.npz` | a sample of surface points: `xyz` float32 (N, 3) world, `time` float32 (N,), `frame` int32 (index into `cameras.json`), `pixel` int32 (N, 2) (column, row), `rgb` uint8 (N, 3) (the image there), `is_dynamic` bool, `slot` int16 (primitive, see `scene.json`) |
| `ground_truth/scene.json` | generator version, seed, options, light, texture names, and every primitive: kind, object, parent, active, dynamic |

## Conventions

- Cameras: OpenCV (x right, y down, z forward), world-to-camera 4 x 4; `K` in pixels with pixel (row i, column j)
  centred at (j + 0.5, i + 0.5); `K` = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]] with f = W / (2 tan(camera_angle_x / 2)).
  World: z up, metres.
- Depth, dynamic masks and points are exact at pixel centres: analytic ray casting of spheres, ellipsoids, boxes,
  capsules and the room, in float32. Unprojecting a depth map with `K` and `world_to_camera` gives points that
  project to the same depth in any other view of the same time, unless something occludes them there.
- A pixel is dynamic when its centre ray first hits a primitive that moves (rigidly along smooth curves,
  articulated, or deforming); static primitives never move, so static pixels are consistent across all times.
- Colours: Lambert shading (ambient + diffuse from a point light, no shadows) of procedural and photographic
  textures, mip-mapped; silhouettes and creases supersampled {description['options']['supersample']} x
  {description['options']['supersample']}.
"""
