"""N3DV / Neu3D (DyNeRF multi-view video): ``cam00.mp4 ... camNN.mp4`` and ``poses_bounds.npy``.

``poses_bounds.npy`` is (N_cameras, 17), one row per video in sorted file-name order: the first 15 numbers are a
3x5 matrix [R | t | (H, W, focal)] where R's columns are the camera's [down, right, back] axes and t its centre
(LLFF camera-to-world), the last two the near/far bounds (unused). Converted to OpenCV world-to-camera by
:func:`pipeline.cameras.llff_c2w_to_opencv_w2c`; K = [[f, 0, W/2], [0, f, H/2]] at the (W, H) of the row, then
scaled to the decoded frame size (focal x W_frame / W).

Protocol (DyNeRF, 4DGaussians): camera 0 (``cam00``) is the test camera, all others train; frames are 2x
downsampled (1352x1014 from 2704x2028), which is ``scene.resolution: auto``; '1x', '4x', ... choose another factor.
Each video is decoded once through the video cache (:func:`pipeline.scene.loaders.video.decoded_frames`), keeping
every ``scene.stride``-th frame and at most ``scene.max_frames`` of them; where videos have different lengths the
shortest sets the frame count.

Frames are named ``<video stem>_<frame number>`` (``cam00_00012``); ``camera_id`` is the video's position in sorted
order, ``time_index`` the kept frame's position and time = time_index / (n_kept - 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.cameras import llff_c2w_to_opencv_w2c
from pipeline.errors import UserError
from pipeline.io import read_npy_numbers
from pipeline.log import progress
from pipeline.scene.config import SceneConfig
from pipeline.scene.images import image_size, natural_key
from pipeline.scene.loaders.common import (MIN_FRAMES, aspect_ratios_differ, background_rgb, finish_frames,
                                           image_loader, resolution_factor, split_counts)
from pipeline.scene.loaders.video import decoded_frames, video_fps
from pipeline.scene.model import Camera, Frame, Scene

AUTO_FACTOR = 2     # 1352x1014, the resolution every N3DV result is reported at
TEST_CAMERA = 0     # cam00 is held out


def camera_videos(path: Path) -> list[Path]:
    """``cam*.mp4`` in sorted name order (the row order of ``poses_bounds.npy``)."""
    return sorted(p for p in path.glob("cam*.mp4") if p.is_file())


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "poses_bounds.npy").is_file() and bool(camera_videos(path))


def read_poses_bounds(path: Path, n_cameras: int) -> tuple[np.ndarray, np.ndarray]:
    """Read an LLFF ``poses_bounds.npy`` with ``n_cameras`` rows.

    Returns world_to_camera (N, 4, 4) OpenCV and hwf (N, 3): image height, width and focal length in pixels of the
    capture each row describes."""
    array = read_npy_numbers(path, "LLFF camera array")
    if array.ndim != 2 or array.shape[1] != 17:
        raise UserError(f"expected an (N_cameras, 17) array, got shape {array.shape}", path)
    if array.shape[0] != n_cameras:
        raise UserError(f"has {array.shape[0]} rows but the folder holds {n_cameras} cam*.mp4 videos", path)
    if not np.all(np.isfinite(array)):
        raise UserError("holds non-finite numbers", path)
    poses = array[:, :15].astype(np.float64).reshape(-1, 3, 5)  # (N, 3, 5): [R | t | hwf]
    rotations = poses[:, :, :3]
    if not np.allclose(rotations @ rotations.transpose(0, 2, 1), np.eye(3), atol=1e-3):
        raise UserError("the 3x3 blocks of some rows are not rotations", path)
    hwf = poses[:, :, 4]  # (N, 3): H, W, focal
    if np.any(hwf <= 0):
        raise UserError("image height, width and focal (column 5) must be positive", path)
    world_to_camera = np.stack([llff_c2w_to_opencv_w2c(p[:, :4]) for p in poses])
    return world_to_camera, hwf


def load(path: Path, config: SceneConfig) -> Scene:
    videos = camera_videos(path)
    if len(videos) < 2:
        raise UserError(f"needs at least 2 cam*.mp4 videos (one test camera, one or more training cameras), "
                        f"found {len(videos)}", path)
    world_to_camera, hwf = read_poses_bounds(path / "poses_bounds.npy", len(videos))
    factor = resolution_factor(config.resolution, AUTO_FACTOR)

    # Decode every camera once (cached); PNG names are the video's frame numbers.
    frame_lists = []
    for video in progress(videos, "N3DV cameras", unit="video"):
        folder = decoded_frames(video, config.stride, config.max_frames, factor, config.max_size)
        frame_lists.append(sorted(folder.glob("*.png"), key=natural_key))
    counts = [len(f) for f in frame_lists]
    n = min(counts)
    if n < MIN_FRAMES:
        shortest = videos[counts.index(n)]
        raise UserError(f"needs at least {MIN_FRAMES} frames per camera, found {n}", shortest)

    frames: list[Frame] = []
    for camera_id, (video, images) in enumerate(zip(videos, frame_lists)):
        width, height = image_size(images[0])
        H0, W0, focal = hwf[camera_id]
        if aspect_ratios_differ((width, height), (W0, H0)):
            raise UserError(f"decoded frames are {width}x{height} but poses_bounds.npy gives this camera "
                            f"{W0:.0f}x{H0:.0f} (aspect ratios differ)", video)
        K = np.array([[focal, 0.0, W0 / 2.0], [0.0, focal, H0 / 2.0], [0.0, 0.0, 1.0]])
        camera = Camera(K, world_to_camera[camera_id], int(round(W0)), int(round(H0))).scaled(width, height)
        split = "test" if camera_id == TEST_CAMERA else "train"
        for time_index, image in enumerate(images[:n]):
            frames.append(Frame(name=f"{video.stem}_{image.stem}", index=0, time=time_index / (n - 1), split=split,
                                width=width, height=height, load_image=image_loader(image), camera=camera,
                                camera_id=camera_id, time_index=time_index, source_path=image))
    finish_frames(frames)
    notes = [f"N3DV: {len(videos)} cameras x {n} frames ({split_counts(frames)}; {videos[TEST_CAMERA].name} is "
             f"the test camera), {frames[0].width}x{frames[0].height} (factor {factor:g} of the videos, "
             f"stride {config.stride}, max_frames {config.max_frames or 'all'})"]
    if len(set(counts)) > 1:
        notes.append(f"videos have {min(counts)}..{max(counts)} decoded frames: the first {n} of each are used")
    return Scene(name=path.name, format="n3dv", source=path, frames=frames, frames_decoded=True,
                 background=background_rgb(config.background), fps=video_fps(videos[0]), notes=notes)
