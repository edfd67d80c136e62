"""A tiny finished run for render / export / evaluate tests, without running the upstream stages.

``TinyModel`` stands in for ``stages.optimize.model.GaussianModel4D`` with the agreed interface (``sh_degree``,
``num_gaussians``, ``gaussians_at``, ``render``), rendering through the project's rasterizer: a static 3x3x3 grid
of coloured Gaussians and one dynamic Gaussian that moves along +x as time runs 0 -> 1. ``make_fake_run`` writes a
D-NeRF scene rendered from that model (so ground truth and renders agree), and a run folder with what the geometry
and optimize stages would have left: ``config.yaml``, ``geometry/{cameras,predicted_cameras}.json``, depth maps,
dynamic masks, ``points.ply``, ``optimize/log.csv`` and a ``manifest.json`` with stage timings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.cameras import Sim3, intrinsics_from_fov, look_at_w2c, opencv_w2c_to_opengl_c2w
from pipeline.config import dump_yaml, load_config
from pipeline.io import write_json, write_npy, write_png, write_text

SH_C0 = 0.28209479177387814


class TinyModel:
    """A stand-in 4D Gaussian model (same interface as GaussianModel4D)."""

    sh_degree = 1
    rasterize_mode = "classic"

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        grid = np.stack(np.meshgrid(*[np.linspace(-0.5, 0.5, 3)] * 3, indexing="ij"), -1).reshape(-1, 3)
        n = len(grid) + 1
        self.means = torch.tensor(np.vstack([grid, [[-0.6, 0.0, 0.8]]]), dtype=torch.float32)
        self.quats = torch.tensor(rng.standard_normal((n, 4)), dtype=torch.float32)
        self.scales = torch.full((n, 3), 0.12)
        self.scales[-1] = 0.18
        self.opacities = torch.full((n,), 0.9)
        colors = rng.uniform(0.1, 0.9, (n, 3))
        colors[-1] = [0.95, 0.1, 0.1]
        sh = np.zeros((n, 4, 3))
        sh[:, 0] = (colors - 0.5) / SH_C0
        sh[:, 1:] = 0.05 * rng.standard_normal((n, 3, 3))
        self.sh = torch.tensor(sh, dtype=torch.float32)
        self.is_dynamic = torch.zeros(n, dtype=torch.bool)
        self.is_dynamic[-1] = True

    def num_gaussians(self) -> int:
        return len(self.means)

    def gaussians_at(self, time: float) -> dict:
        means = self.means.clone()
        means[-1, 0] += 1.2 * float(time)
        return {"means": means, "quats": self.quats, "scales": self.scales, "opacities": self.opacities,
                "sh": self.sh, "is_dynamic": self.is_dynamic}

    def render(self, world_to_camera, K, width, height, time, background=(1.0, 1.0, 1.0), backend="auto"):
        from stages.optimize.rasterize import rasterization

        g = self.gaussians_at(time)
        viewmats = torch.as_tensor(np.asarray(world_to_camera), dtype=torch.float32).reshape(-1, 4, 4)
        Ks = torch.as_tensor(np.asarray(K), dtype=torch.float32).reshape(-1, 3, 3)
        backgrounds = torch.tensor(background, dtype=torch.float32).reshape(1, 3).expand(len(viewmats), 3)
        colors, alphas, _ = rasterization(g["means"], g["quats"], g["scales"], g["opacities"], g["sh"], viewmats,
                                          Ks, width, height, sh_degree=self.sh_degree, backgrounds=backgrounds,
                                          render_mode="RGB+ED", backend="torch")
        out = {"rgb": colors[..., :3].clamp(0, 1), "alpha": alphas[..., 0], "depth": colors[..., 3]}
        return {k: v[0] for k, v in out.items()} if np.asarray(world_to_camera).ndim == 2 else out


@dataclass
class FakeRun:
    run_dir: Path
    scene_dir: Path
    model: TinyModel
    test_names: list[str]
    train_names: list[str]


def ring_cameras(n: int, radius: float = 3.0, height: float = 1.2) -> list[np.ndarray]:
    """n OpenCV world-to-camera matrices on a ring around the origin (z up), all looking at it."""
    return [look_at_w2c(np.array([radius * math.cos(a), radius * math.sin(a), height]), np.zeros(3))
            for a in np.linspace(0.0, 2 * math.pi, n, endpoint=False)]


def make_fake_run(root: Path, n_frames: int = 8, width: int = 40, height: int = 32, test_every: int = 4,
                  overrides: tuple[str, ...] = (), seed: int = 0) -> FakeRun:
    """A D-NeRF scene in ``root/scene`` (every ``test_every``-th frame held out) and a run in ``root/run``."""
    model = TinyModel()
    scene_dir, run_dir = root / "scene", root / "run"
    fov_x = 2 * math.atan(0.5 * width / 40.0)            # fx = 40 px
    K = intrinsics_from_fov(fov_x, width, height)
    w2cs = ring_cameras(n_frames)
    times = np.linspace(0.0, 1.0, n_frames)
    rng = np.random.default_rng(seed)
    splits = {"train": [], "test": []}
    renders = {}                                          # time -> render (every frame has its own time)
    for i, (w2c, t) in enumerate(zip(w2cs, times)):
        split = "test" if i % test_every == test_every // 2 else "train"
        name = f"r_{len(splits[split]):03d}"
        out = renders[float(t)] = model.render(w2c, K, width, height, float(t))
        noise = 0.03 * rng.standard_normal((height, width, 3))          # the model is not a perfect fit
        write_png(scene_dir / split / f"{name}.png", np.clip(out["rgb"].numpy() + noise, 0, 1))
        splits[split].append({"file_path": f"./{split}/{name}", "time": float(t),
                              "transform_matrix": opencv_w2c_to_opengl_c2w(w2c).tolist(), "_w2c": w2c})
    for split, entries in splits.items():
        write_json(scene_dir / f"transforms_{split}.json",
                   {"camera_angle_x": fov_x, "frames": [{k: v for k, v in e.items() if k != "_w2c"}
                                                        for e in entries]})

    from pipeline.scene import load_scene

    config = load_config("default", [f"scene.source={scene_dir}", "render.video_frames=4", "render.video_max_size=32",
                                     *overrides])
    scene = load_scene(config.scene)
    write_text(run_dir / "config.yaml", dump_yaml(config))
    frames_json, predicted = [], []
    sim3 = Sim3(1.5, np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), np.array([0.2, -0.1, 0.3]))
    for f in scene.frames:
        cam = f.camera
        entry = {"name": f.name, "index": f.index, "time": f.time, "time_index": f.time_index, "split": f.split,
                 "width": f.width, "height": f.height, "K": cam.K.tolist(),
                 "world_to_camera": cam.world_to_camera.tolist()}
        frames_json.append(entry)
        # "Network" cameras: the same cameras in another world, centres perturbed by ~1 cm.
        noisy = np.linalg.inv(cam.world_to_camera)
        noisy[:3, 3] += 0.01 * rng.standard_normal(3)
        predicted.append({**entry, "world_to_camera": sim3.transform_w2c(np.linalg.inv(noisy)).tolist()})
        out = renders[f.time]
        depth = np.where(out["alpha"].numpy() > 0.5, out["depth"].numpy(), 0.0).astype(np.float32)
        write_npy(run_dir / "geometry" / "depth" / f"{f.name}.npy", depth)
        dynamic = _projected_disk(model, cam, f.width, f.height, f.time)
        write_png(run_dir / "geometry" / "dynamic_mask" / f"{f.name}.png", (dynamic * 255).astype(np.uint8))
    write_json(run_dir / "geometry" / "cameras.json", {"convention": "opencv", "source": "dataset",
                                                       "frames": frames_json})
    write_json(run_dir / "geometry" / "predicted_cameras.json", {"convention": "opencv", "source": "dataset",
                                                                 "frames": predicted})
    _write_points(run_dir / "geometry" / "points.ply", model)
    steps = np.arange(0, 101, 10)
    lines = ["step,loss,l1,ssim,depth,motion,scale,psnr,gaussians,seconds"] + [
        f"{s},{0.2 * math.exp(-s / 40) + 0.01:.6f},{0.15 * math.exp(-s / 40):.6f},{0.3 * math.exp(-s / 50):.6f},"
        f"0.0,,0.001,{18 + 10 * (1 - math.exp(-s / 30)):.4f},{28 + s // 10},{0.05 * s:.3f}" for s in steps]
    write_text(run_dir / "optimize" / "log.csv", "\n".join(lines) + "\n")
    write_json(run_dir / "manifest.json", {"page4dgs": "test", "stages": {
        name: {"status": "done", "wall_s": wall, "device": "cpu (test)"}
        for name, wall in (("geometry", 1.5), ("initialize", 0.5), ("optimize", 12.0))}})
    return FakeRun(run_dir=run_dir, scene_dir=scene_dir, model=model,
                   test_names=[f.name for f in scene.test_frames], train_names=[f.name for f in scene.train_frames])


def _projected_disk(model: TinyModel, camera, width: int, height: int, time: float) -> np.ndarray:
    """(H, W) bool: pixels within 2 sigma of the dynamic Gaussian's projected centre (a stand-in network mask)."""
    mean = model.gaussians_at(time)["means"][-1].numpy()
    uv, z = camera.project(mean[None])
    radius = 2 * float(model.scales[-1, 0]) * camera.K[0, 0] / z[0]
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return (cols - uv[0, 0]) ** 2 + (rows - uv[0, 1]) ** 2 < radius**2


def _write_points(path: Path, model: TinyModel) -> None:
    from plyfile import PlyData, PlyElement

    means = model.means.numpy()
    colors = np.clip((model.sh[:, 0].numpy() * SH_C0 + 0.5) * 255, 0, 255).astype(np.uint8)
    rows = np.empty(len(means), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                       ("blue", "u1")])
    for i, k in enumerate("xyz"):
        rows[k] = means[:, i]
    for i, k in enumerate(("red", "green", "blue")):
        rows[k] = colors[:, i]
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(rows, "vertex")]).write(str(path))


def use_tiny_model(monkeypatch, model: TinyModel) -> None:
    """Make the render stage and the CLI load ``model`` instead of ``optimize/model.pt``."""
    import stages.render.stage as stage

    monkeypatch.setattr(stage, "load_run_model", lambda run_dir, device: model)


def copy_fake_run(template: FakeRun, root: Path) -> FakeRun:
    """A private copy of a template's run folder (the scene folder is shared: tests only read it)."""
    import shutil

    run_dir = root / "run"
    shutil.copytree(template.run_dir, run_dir)
    return FakeRun(run_dir=run_dir, scene_dir=template.scene_dir, model=template.model,
                   test_names=list(template.test_names), train_names=list(template.train_names))
