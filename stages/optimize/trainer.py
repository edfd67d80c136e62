"""The optimization loop: one readable loop, its setup, checkpoints with exact resume, and a NaN/explosion guard.

Per step: pick training frames (shuffled epochs), render each at its time (the deformation runs inside the model),
loss = (1 - w) L1 + w (1 - SSIM) [+ depth] [+ motion smoothness] [+ scale], backward, one Adam step per parameter
group, then gsplat's densification (:mod:`stages.optimize.densify`). Every ``log_every`` steps the per-step values are
fetched from the device in one transfer, written to ``log.csv``, and checked: a non-finite loss or one above
``explode_factor`` x its running mean restores the last good state (kept in memory at the previous check) and the
log says so. Every ``checkpoint_every`` steps a checkpoint holds everything the loop depends on - parameters,
optimizer moments, densification statistics, deformation, camera corrections, the frame sampler, the guard and all
random states - so a resumed run continues the same loss sequence.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import random
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.io import atomic_path, write_text
from pipeline.log import get_logger, progress
from pipeline.rng import set_cuda_rng_states
from stages.optimize.config import OptimizeConfig
from stages.optimize.deformation import (KINDS_WITH_BOX, POSITION, Box, FieldWithBases, RigidBases,
                                         build_deformation, deformation_spec_from_config, set_mlp_bf16)
from stages.optimize.densify import DensifyEvents, make_strategy, strategy_state_tensors
from stages.optimize.fused_adam import LeanFusedAdam, fused_adam_supported
from stages.optimize.gaussians import create_splats
from stages.optimize.losses import (acceleration_loss, alpha_loss, anisotropy_loss, coherence_loss, depth_loss,
                                    opacity_loss, photometric_loss, psnr_from_mse, residual_loss, rigidity_loss,
                                    silhouette_loss, temporal_weights)
from stages.optimize.model import (GaussianModel4D, accelerations, compile_function, gaussian_count,
                                   is_device_error, short_reason, temporal_opacity)
from stages.optimize.photometric_graphs import GraphedPhotometricLoss

log = get_logger("optimize")

LOG_COLUMNS = ("step", "loss", "l1", "ssim", "depth", "motion", "rigidity", "scale", "psnr", "gaussians", "seconds")
CHECKPOINT_FORMAT = "page4dgs-optimize-checkpoint"
CHECKPOINT_KEYS = ("splats", "deformation", "cameras", "optimizer", "strategy_state", "loop", "sampler", "rng")
CHECKPOINT_VERSION = 3        # 3: the planes field's planes as one table parameter (2: a parameter per level and
                              # kind; version 2 checkpoints of the other models resume unchanged); 2: one optimizer
                              # with a parameter group per name (1: an optimizer per name)
MAX_CONSECUTIVE_RESTORES = 3


# ----------------------------------------------------------------------------------------------------------------
# Inputs


@dataclass
class TrainView:
    """One training frame. image (H, W, 3) in [0, 1] composited on the scene background; alpha (H, W) for RGBA
    inputs; depth (H, W) geometry-stage z-depth with depth_valid (H, W) bool, for the depth loss.

    Frames too many to keep in memory have ``image`` None and a ``load`` callable returning (image, alpha),
    decoded at every use; ``has_alpha`` says whether alpha exists without decoding.
    """

    name: str
    time: float
    world_to_camera: torch.Tensor    # (4, 4) OpenCV
    K: torch.Tensor                  # (3, 3)
    width: int
    height: int
    image: Optional[torch.Tensor]
    alpha: Optional[torch.Tensor] = None
    depth: Optional[torch.Tensor] = None
    depth_valid: Optional[torch.Tensor] = None
    load: Optional[Callable[[], tuple[torch.Tensor, Optional[torch.Tensor]]]] = None
    has_alpha: Optional[bool] = None

    def __post_init__(self) -> None:
        if self.has_alpha is None:
            self.has_alpha = self.alpha is not None

    def pixels(self, device: torch.device) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(image (H, W, 3), alpha (H, W) or None) as float32 on ``device``."""
        image, alpha = (self.image, self.alpha) if self.image is not None else self.load()
        image = image.to(device, torch.float32, non_blocking=True)
        return image, None if alpha is None else alpha.to(device, torch.float32, non_blocking=True)


@dataclass
class TrainData:
    views: list[TrainView]
    scene_background: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class InitialGaussians:
    """Initial per-Gaussian values (as in ``initialize/gaussians.ply`` + ``labels.npz``), NumPy or torch."""

    means: Any           # (N, 3)
    sh: Any              # (N, K, 3)
    opacity_logits: Any  # (N,)
    log_scales: Any      # (N, 3)
    quats: Any           # (N, 4) (w, x, y, z)
    is_dynamic: Any      # (N,) bool
    anchor_times: Any    # (N,) time each Gaussian was seen (any value for static ones)


def scene_scale(views: list[TrainView], means: torch.Tensor) -> float:
    """1.1 x max(radius of the camera centres around their mean, median distance of the points from that mean).

    The camera radius is gsplat's/3DGS's scene extent; the point term keeps it meaningful for a video whose camera
    barely moves.
    """
    centers = torch.stack([-(v.world_to_camera[:3, :3].T @ v.world_to_camera[:3, 3]) for v in views]).cpu().double()
    mean = centers.mean(0)
    radius = float((centers - mean).norm(dim=-1).max())
    points = float((means.detach().cpu().double() - mean).norm(dim=-1).median()) if len(means) else 0.0
    return 1.1 * max(radius, points, 1e-6)


def opacity_weighting_for(cfg: OptimizeConfig, n_times: int, temporal_opacity: bool = True) -> str:
    """The opacity regulariser's weighting for a scene of ``n_times`` distinct training times: 'all' or 'time'
    as configured, and for 'auto' 'time' from ``cfg.opacity_time_from`` times on, else 'all'. A model without
    temporal opacity (the static one) has no windows to weigh by: always 'all'."""
    if not temporal_opacity or cfg.opacity_weighting == "all":
        return "all"
    if cfg.opacity_weighting == "time":
        return "time"
    return "time" if n_times >= cfg.opacity_time_from else "all"


def median_time_gap(times: list[float]) -> float:
    """Median gap between distinct training times (1 if there is only one time)."""
    distinct = np.unique(np.round(np.asarray(times, dtype=np.float64), 9))
    return float(np.median(np.diff(distinct))) if len(distinct) > 1 else 1.0


# ----------------------------------------------------------------------------------------------------------------
# Setup


def build_model(cfg: OptimizeConfig, initial: InitialGaussians, time_gap: float, n_times: int,
                device: torch.device) -> GaussianModel4D:
    def t(x, dtype=torch.float32):     # always a copy: training must never write into the caller's arrays
        return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(device, dtype, copy=True)

    means, is_dynamic = t(initial.means), t(initial.is_dynamic, torch.bool)
    spec = deformation_spec_from_config(cfg, n_times)
    box = None
    if spec is not None and spec["kind"] in KINDS_WITH_BOX:
        box = Box.around(means[is_dynamic] if bool(is_dynamic.any()) else means).to(device)
    deformation = build_deformation(spec, box)
    set_mlp_bf16(deformation, cfg.mlp_bf16 and device.type == "cuda")     # bf16 on a CPU: slower, not faster
    if deformation is not None and cfg.rigid_fused_tables and device.type == "cuda":
        for part in deformation.modules():
            if isinstance(part, RigidBases):
                check_compile_backend(cfg.compile_backend)
                part.fuse_tables(cfg.compile_backend, everything=cfg.rigid_fused_all)
    temporal = cfg.temporal_opacity and deformation is not None
    splats = create_splats(means, t(initial.sh), t(initial.opacity_logits), t(initial.log_scales), t(initial.quats),
                           is_dynamic, t(initial.anchor_times), cfg.sh_degree,
                           temporal_sigma=cfg.temporal_opacity_init * time_gap if temporal else None,
                           extra=deformation.per_gaussian_shapes() if deformation is not None else None)
    if deformation is not None and bool(is_dynamic.any()):
        deformation.to(device)
        for key, value in deformation.initialize(means[is_dynamic]).items():     # (M, ...) for the dynamic rows
            splats[key].data[is_dynamic] = value.to(splats[key].dtype)
    return GaussianModel4D(splats, deformation, cfg.sh_degree, temporal, cfg.rasterize_mode).to(device)


def splat_learning_rates(cfg: OptimizeConfig, scale: float) -> dict[str, float]:
    """Initial learning rate of every per-Gaussian key."""
    return {"means": cfg.lr_means * scale, "quats": cfg.lr_quats, "scales": cfg.lr_scales,
            "opacities": cfg.lr_opacities, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN, "time_centers": cfg.lr_time,
            "time_log_scales": cfg.lr_time, "motion_coefs": cfg.lr_motion * scale,
            "field_embedding": cfg.lr_field_embedding, "rigid_logits": cfg.lr_rigid_weights}


# Groups whose learning rate decays exponentially (to lr_final_factor of its start).
DECAYING = {"means", "motion_coefs", "field_embedding", "field", "planes", "rigid"}


class GroupOptimizer:
    """One parameter group of a shared optimizer, seen as an optimizer of its own: what gsplat's strategy edits when
    densification replaces a parameter (``param_groups`` - this group only - and ``state``, the shared one)."""

    def __init__(self, optimizer: torch.optim.Optimizer, group: dict[str, Any]):
        self.param_groups = [group]
        self.state = optimizer.state


def build_optimizer(cfg: OptimizeConfig, model: GaussianModel4D, cameras: Optional[torch.nn.Parameter],
                    scale: float) -> torch.optim.Adam:
    """One Adam over every trainable tensor, a parameter group per name: each trainable key of ``model.splats``,
    then the deformation ('bases', 'rigid', 'field', 'planes') and 'cameras'. Fused on every device: a step is one
    kernel per group and one for all step counts (:class:`LeanFusedAdam`, ``cfg.lean_adam``; per-key optimizers cost
    a call each)."""
    rates = splat_learning_rates(cfg, scale)
    groups = [{"name": k, "params": [p], "lr": rates[k]} for k, p in model.splats.items() if p.requires_grad]
    deformation = model.deformation
    if deformation is not None:
        # A hybrid's shared part gets the groups it would have alone, then its bases their own.
        shared = deformation.field if isinstance(deformation, FieldWithBases) else deformation
        if shared.kind == "bases":
            groups.append({"name": "bases", "params": [shared.control], "lr": cfg.lr_bases})
        elif shared.kind == "rigid":
            groups.append({"name": "rigid", "params": [shared.control], "lr": cfg.lr_rigid})
        elif shared.kind == "mlp":
            groups.append({"name": "field", "params": list(shared.parameters()), "lr": cfg.lr_field})
        elif shared.kind == "planes":
            groups.append({"name": "planes", "params": [shared.table], "lr": cfg.lr_planes})
            groups.append({"name": "field", "params": [*shared.hidden.parameters(), *shared.out.parameters()],
                           "lr": cfg.lr_field})
        if isinstance(deformation, FieldWithBases):
            groups.append({"name": "bases", "params": [deformation.bases.control], "lr": cfg.lr_bases})
    if cameras is not None:
        groups.append({"name": "cameras", "params": [cameras], "lr": cfg.lr_cameras})
    if not fused_adam_supported(model.device):
        return torch.optim.Adam(groups, eps=1e-15)
    return LeanFusedAdam(groups, eps=1e-15) if cfg.lean_adam else torch.optim.Adam(groups, eps=1e-15, fused=True)


def splat_optimizers(optimizer: torch.optim.Optimizer, model: GaussianModel4D) -> dict[str, GroupOptimizer]:
    """The per-key optimizers gsplat's strategy expects: the groups of ``optimizer`` named after ``model.splats``."""
    return {g["name"]: GroupOptimizer(optimizer, g) for g in optimizer.param_groups if g["name"] in model.splats}


def set_learning_rates(optimizer: torch.optim.Optimizer, initial: dict[str, float], step: int,
                       cfg: OptimizeConfig) -> None:
    """Exponential decay from the initial rate to ``lr_final_factor`` x it over the run, for :data:`DECAYING`."""
    decay = cfg.lr_final_factor ** min(step / max(cfg.iterations, 1), 1.0)
    for group in optimizer.param_groups:
        group["lr"] = initial[group["name"]] * (decay if group["name"] in DECAYING else 1.0)


def refined_world_to_camera(world_to_camera: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Apply a pose correction delta (6,) = (rotation vector, translation) on the camera side:
    [R | t] -> [R(w) R | R(w) t + v]. world_to_camera (4, 4) -> (4, 4)."""
    w, v = delta[:3], delta[3:]
    zero = torch.zeros((), dtype=delta.dtype, device=delta.device)
    skew = torch.stack([torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]),
                        torch.stack([-w[1], w[0], zero])])
    rotation = torch.linalg.matrix_exp(skew)
    top = torch.cat([rotation @ world_to_camera[:3, :3], (rotation @ world_to_camera[:3, 3] + v)[:, None]], dim=1)
    return torch.cat([top, world_to_camera[3:]], dim=0)


class EpochSampler:
    """Training frames in shuffled epochs (every frame once per epoch), from its own generator."""

    def __init__(self, n: int, seed: int):
        self.n = n
        self.generator = torch.Generator().manual_seed(seed)
        self._shuffle(torch.randperm(n, generator=self.generator))

    def _shuffle(self, order: torch.Tensor) -> None:
        self.order, self._indices, self.cursor = order, order.tolist(), 0     # a list: no tensor op per step

    def next(self, count: int) -> list[int]:
        out = []
        for _ in range(count):
            if self.cursor >= self.n:
                self._shuffle(torch.randperm(self.n, generator=self.generator))
            out.append(self._indices[self.cursor])
            self.cursor += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order.clone(), "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self._shuffle(state["order"].clone())
        self.cursor = int(state["cursor"])


# ----------------------------------------------------------------------------------------------------------------
# Snapshots and checkpoints


def _clone(obj: Any, device: Optional[torch.device] = None) -> Any:
    """Deep copy of nested dicts/lists of tensors (optionally moved to ``device``)."""
    if isinstance(obj, torch.Tensor):
        out = obj.detach().clone()
        return out.to(device) if device is not None else out
    if isinstance(obj, dict):
        return {k: _clone(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v, device) for v in obj)
    return copy.deepcopy(obj)


def _rng_state(device: torch.device, generator: Optional[torch.Generator]) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
            "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                      "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
            "python": random.getstate(),
            "device_generator": None if generator is None else generator.get_state()}


def _set_rng_state(state: dict[str, Any], generator: Optional[torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        set_cuda_rng_states(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if generator is not None and state.get("device_generator") is not None:
        generator.set_state(state["device_generator"])


@dataclass
class Guard:
    """Running mean of the loss for the explosion test, and the count of consecutive restores."""

    mean_loss: Optional[float] = None
    restores: int = 0
    total_restores: int = 0


@dataclass
class LoopState:
    """Everything of the loop besides the parameters that a checkpoint must carry."""

    step: int = 0
    elapsed_s: float = 0.0
    guard: Guard = field(default_factory=Guard)


def capture(model, optimizer, strategy_state, cameras, loop: LoopState, sampler: EpochSampler,
            device: Optional[torch.device] = None) -> dict[str, Any]:
    """A self-contained copy of the training state (tensors cloned; moved to ``device`` if given)."""
    return _clone({
        "splats": {k: v.data for k, v in model.splats.items()},
        "deformation": None if model.deformation is None else model.deformation.state_dict(),
        "cameras": None if cameras is None else cameras.data,
        "optimizer": optimizer.state_dict(),
        "strategy_state": strategy_state_tensors(strategy_state),
        "loop": {"step": loop.step, "elapsed_s": loop.elapsed_s, "guard": asdict(loop.guard)},
        "sampler": sampler.state_dict(),
    }, device)


def restore(snapshot: dict[str, Any], cfg: OptimizeConfig, model: GaussianModel4D, cameras,
            strategy_state: dict[str, Any], loop: LoopState, sampler: Optional[EpochSampler],
            scale: float) -> torch.optim.Adam:
    """Load a :func:`capture` (or checkpoint) into the live objects; returns a fresh optimizer over the restored
    parameters. ``sampler`` None: keep the sampler where it is (the NaN guard continues with fresh frames)."""
    device = model.device
    for key, value in snapshot["splats"].items():
        model.splats[key] = torch.nn.Parameter(value.to(device).clone(), requires_grad=model.splats[key].requires_grad)
    if model.deformation is not None:
        model.deformation.load_state_dict(snapshot["deformation"])
    if cameras is not None:
        cameras.data.copy_(snapshot["cameras"].to(device))
    optimizer = build_optimizer(cfg, model, cameras, scale)
    kernels = [(g.get("fused"), g.get("foreach")) for g in optimizer.param_groups]
    optimizer.load_state_dict(_clone(snapshot["optimizer"]))
    for group, (fused, foreach) in zip(optimizer.param_groups, kernels):   # a checkpoint of the unfused CPU Adam
        group["fused"], group["foreach"] = fused, foreach                   # (before lean_adam) keeps the kernel here
    strategy_state.clear()
    strategy_state.update(_clone(snapshot["strategy_state"], device))
    saved = snapshot["loop"]
    loop.step, loop.elapsed_s = saved["step"], saved["elapsed_s"]
    loop.guard = Guard(**saved["guard"])
    if sampler is not None:
        sampler.load_state_dict(snapshot["sampler"])
    return optimizer


def check_fits(snapshot: dict[str, Any], model: GaussianModel4D, cameras: Optional[torch.nn.Parameter],
               sampler: EpochSampler) -> None:
    """Raise ValueError naming the first way a checkpoint's ``snapshot`` does not fit this run before
    :func:`restore` loads it: its splats must be the model's entries, each (N, ...) with the model's trailing shape
    and dtype, one N >= 1 for all (the strategy state's tensors too); its camera corrections and frame order those of
    this run's ``cameras`` and ``sampler``."""
    splats = snapshot["splats"]
    if not isinstance(splats, dict) or set(splats) != set(model.splats.keys()):
        have = sorted(splats) if isinstance(splats, dict) else type(splats).__name__
        raise ValueError(f"its Gaussians have the entries {have}, this run's {sorted(model.splats.keys())}")
    n = gaussian_count(splats)
    for key, value in splats.items():
        want = model.splats[key]
        if value.shape[1:] != want.shape[1:]:
            raise ValueError(f"splats {key} has shape {list(value.shape)}, expected {[n, *want.shape[1:]]}")
        if value.dtype != want.dtype:
            raise ValueError(f"splats {key} is {str(value.dtype).replace('torch.', '')}, "
                             f"expected {str(want.dtype).replace('torch.', '')}")
    for key, value in snapshot["strategy_state"].items():
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] != n:
            raise ValueError(f"the densification state {key} has {value.shape[0]} rows for {n} Gaussians")
    saved = snapshot["cameras"]
    if (saved is None) != (cameras is None) or (cameras is not None and saved.shape != cameras.shape):
        describe = lambda c: "no camera corrections" if c is None else f"camera corrections {list(c.shape)}"
        raise ValueError(f"{describe(saved)}, this run has {describe(cameras)}")
    order = snapshot["sampler"]["order"]
    if order.shape != (sampler.n,):
        raise ValueError(f"a frame order of shape {list(order.shape)}, this run trains on {sampler.n} frames")
    step = snapshot["loop"]["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step {step!r}")


def check_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Raise ValueError when a restored optimizer's moments do not have the shapes of their parameters."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != param.shape:
                    raise ValueError(f"the optimizer's {key} of {group.get('name', 'a group')} has shape "
                                     f"{list(value.shape)}, its parameter {list(param.shape)}")


def resume_from(path: Path, snapshot: dict[str, Any], cfg: OptimizeConfig, model: GaussianModel4D, cameras,
                strategy_state: dict[str, Any], loop: LoopState, sampler: EpochSampler, scale: float,
                generator: Optional[torch.Generator]) -> torch.optim.Adam:
    """:func:`restore` the checkpoint ``snapshot`` read from ``path``, random states included; returns the
    optimizer. A checkpoint that does not fit this run (shapes, counts, entries) is a one-line :class:`UserError`."""
    try:
        check_fits(snapshot, model, cameras, sampler)
        optimizer = restore(snapshot, cfg, model, cameras, strategy_state, loop, sampler, scale)
        check_optimizer(optimizer)
        _set_rng_state(snapshot["rng"], generator)
    except (ValueError, RuntimeError, KeyError, TypeError, IndexError, AttributeError) as err:
        if is_device_error(err):       # the GPU's trouble (memory, a CUDA error), not the file's
            raise
        raise UserError(f"checkpoint does not fit this run ({short_reason(err)}); delete it to start over "
                        "(an older one, if kept, is used next)", path) from None
    return optimizer


def time_jitter_std(cfg: OptimizeConfig, step: int, gap: float) -> float:
    """Standard deviation of the render-time offset at ``step`` (units of time): ``cfg.time_jitter`` median gaps
    ``gap``, falling linearly to 0 at ``time_jitter_until`` (0: the last step, ``iterations``); 0 when off."""
    until = cfg.time_jitter_until or cfg.iterations
    if cfg.time_jitter <= 0 or step >= until:
        return 0.0
    return cfg.time_jitter * gap * (1.0 - step / until)


def jittered_time(time: float, std: float, generator: torch.Generator, low: float, high: float) -> float:
    """``time`` plus N(0, std^2) drawn host-side from ``generator`` (no device sync), clamped to [low, high]."""
    if std <= 0:
        return time
    return min(max(time + std * float(torch.randn((), generator=generator)), low), high)


def temporal_width_floor(cfg: OptimizeConfig, step: int, gap: float) -> float:
    """The lower bound (in time units) on the temporal-opacity width of dynamic Gaussians at ``step``: 0 when
    ``cfg.temporal_width_floor`` is off; else rising linearly from ``temporal_opacity_init`` to
    ``temporal_width_floor`` median gaps ``gap`` between steps ``temporal_widen_from`` and ``temporal_widen_until``
    (0 before the first; the full floor from ``temporal_widen_until`` on, also when the two steps are equal)."""
    if cfg.temporal_width_floor <= 0 or step < cfg.temporal_widen_from:
        return 0.0
    span = cfg.temporal_widen_until - cfg.temporal_widen_from
    progress_ = min((step - cfg.temporal_widen_from) / span, 1.0) if span > 0 else 1.0
    start = min(cfg.temporal_opacity_init, cfg.temporal_width_floor)
    return gap * (start + progress_ * (cfg.temporal_width_floor - start))


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:07d}.pt"


def read_latest_checkpoint(directory: Path) -> tuple[Optional[Path], Optional[dict[str, Any]]]:
    """The newest checkpoint of ``directory`` that can be read, and its state; (None, None) without one. An
    unreadable newer one (a truncated file: checkpoints are written atomically, so only damage from outside) is
    passed over with a warning, so the run resumes from the one before; with none readable, the error names the
    newest."""
    files = sorted(directory.glob("step_*.pt"), reverse=True) if directory.is_dir() else []
    first_error: Optional[UnreadableCheckpoint] = None
    for path in files:
        try:
            return path, read_checkpoint(path)
        except UnreadableCheckpoint as err:
            first_error = first_error or err
            log.warning(f"{err}: trying the checkpoint before it")
    if first_error is not None:
        raise first_error
    return None, None


def write_checkpoint(directory: Path, state: dict[str, Any], keep: int) -> Path:
    path = checkpoint_path(directory, state["loop"]["step"])
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    for old in sorted(directory.glob("step_*.pt"))[:-max(keep, 1)]:
        old.unlink()
    return path


class PhaseClock:
    """Seconds of the named phases of a piece of work (training's set-up), each from the mark before; on a GPU each
    mark first waits for the device, so a phase's queued device work counts in that phase."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, {}
        self._last = time.perf_counter()

    def mark(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


class CheckpointWriter:
    """Writes checkpoints (:func:`write_checkpoint`) on a background thread, one at a time, so that training goes on
    while ``torch.save`` writes (eight in line took 2.7 s of the 100-frame scene's 127.7 s on an H200 host).

    ``submit(state)`` takes a state that shares no tensor with the live training state (:func:`capture` with
    ``device=cpu``: clones, already copied off the GPU); it first waits for the write before it. ``wait()`` blocks
    until the last write is on disk and raises what a write raised (an ``OSError`` such as a full disk), in the
    training thread. The thread is not a daemon: an interrupted run still finishes the file it is writing (files
    appear whole, by rename, either way)."""

    def __init__(self, directory: Path, keep: int):
        self.directory, self.keep = directory, keep
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    def submit(self, state: dict[str, Any]) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(state,), name="optimize-checkpoint")
        self._thread.start()

    def _write(self, state: dict[str, Any]) -> None:
        try:
            write_checkpoint(self.directory, state, self.keep)
        except BaseException as err:        # raised again by wait(), in the training thread
            self._error = err

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait_quietly(self) -> None:
        """:meth:`wait`, logging a write's error instead of raising it (while another error is on its way out)."""
        try:
            self.wait()
        except Exception as err:
            log.warning(f"optimize: writing a checkpoint failed too ({type(err).__name__}: {err})")


class UnreadableCheckpoint(UserError):
    """A checkpoint file that torch cannot load (truncated or damaged); :func:`read_latest_checkpoint` passes over
    it to the one before."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state a checkpoint file holds: a dict of :data:`CHECKPOINT_FORMAT`, a version this code resumes and every
    entry of :data:`CHECKPOINT_KEYS`, else a one-line :class:`UserError` (:class:`UnreadableCheckpoint` for a file
    torch cannot load). Whether it fits the run is :func:`resume_from`'s to say."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UnreadableCheckpoint(f"unreadable checkpoint ({type(err).__name__}); delete it to start over",
                                   path) from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError("not an optimize checkpoint; delete it to start over", path)
    version = state.get("version", 1)
    deformation = state.get("deformation")
    if deformation is not None and not (isinstance(deformation, dict) and all(isinstance(k, str) for k in deformation)):
        raise UserError("damaged checkpoint (its deformation state is not a dict of named tensors); delete it to "
                        "start over", path)
    planes_before_table = any(re.match(r"planes\.\d", k) for k in (deformation or {}))
    if version != CHECKPOINT_VERSION and not (version == 2 and not planes_before_table):
        raise UserError(f"checkpoint version {state.get('version', 1)}, this page4dgs resumes version "
                        f"{CHECKPOINT_VERSION}; delete it to start over", path)
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise UserError(f"incomplete checkpoint (no {', '.join(missing)}); delete it to start over", path)
    return state


# ----------------------------------------------------------------------------------------------------------------
# The CSV log


def read_log_rows(path: Path, before_step: int) -> list[list[str]]:
    """Rows of an existing log.csv with step < before_step (what a resumed run keeps)."""
    if not path.is_file():
        return []
    rows = list(csv.reader(path.read_text(encoding="utf-8", errors="replace").splitlines()))
    return [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < before_step]


def append_log_rows(path: Path, rows: list[list[Any]]) -> None:
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(LOG_COLUMNS)
        writer.writerows(rows)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


# ----------------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    model: GaussianModel4D
    steps: int
    seconds: float
    train_psnr: float
    restores: int
    resumed_from: Optional[int]
    opacity_weighting: str = "all"      # the opacity regulariser's weighting as trained ('auto' resolved)
    setup_seconds: float = 0.0          # this call's set-up before its first step (model, optimizer, resume)
    checkpoint_seconds: float = 0.0     # the training thread's time on checkpoints (state to the CPU, handing it to
                                        # the writer thread, waiting for the write before it); not in seconds
    setup_parts: dict[str, float] = field(default_factory=dict)   # setup_seconds by phase (model, optimizer, ...)


@contextlib.contextmanager
def torch_threads(count: int):
    """Temporarily use ``count`` intra-op threads (0: unchanged)."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def cuda_tf32(enabled: bool):
    """Temporarily allow (or forbid) TF32 in CUDA float32 matrix products; the previous setting comes back.

    Newer torch keeps this as ``torch.backends.cuda.matmul.fp32_precision`` ('tf32' / 'ieee' / 'none'); setting the
    legacy ``allow_tf32`` there would mix the two APIs, so the new one is used where it exists.
    """
    matmul = torch.backends.cuda.matmul
    name = "fp32_precision" if hasattr(matmul, "fp32_precision") else "allow_tf32"
    previous = getattr(matmul, name)
    setattr(matmul, name, ("tf32" if enabled else "ieee") if name == "fp32_precision" else enabled)
    try:
        yield
    finally:
        setattr(matmul, name, previous)


def motion_penalty(deformation, means: torch.Tensor, per_gaussian: dict[str, torch.Tensor], pick: torch.Tensor,
                   times: torch.Tensor, step: float, scene_scale: float, parts: str = "all") -> torch.Tensor:
    """The motion regulariser: :func:`acceleration_loss` of the Gaussians ``pick`` (M,) at times (M,) with time
    step ``step``, plus the deformation's own regulariser (planes: total variation). means (N, 3); per_gaussian:
    the deformation's per-Gaussian parameters, all N rows. parts ('all' | 'coefficients',
    ``optimize.motion_parts``): for a hybrid (:class:`FieldWithBases`), 'coefficients' takes the accelerations of
    its per-Gaussian bases alone. A pure function of tensors (what torch.compile traces)."""
    moving = deformation
    if parts == "coefficients" and isinstance(deformation, FieldWithBases):
        moving, per_gaussian = deformation.bases, {"motion_coefs": per_gaussian["motion_coefs"]}
    return motion_penalty_from(accelerations(moving, means, per_gaussian, pick, times, step), deformation, scene_scale)


def motion_penalty_from(acceleration: torch.Tensor, deformation, scene_scale: float) -> torch.Tensor:
    """The motion regulariser from second differences of positions (K, 3) already at hand (the training step's
    render computes them with its own deformation, ``GaussianModel4D.gaussians_at(motion=...)``):
    :func:`acceleration_loss` plus the deformation's own regulariser (planes: total variation)."""
    penalty = acceleration_loss(acceleration, scene_scale)
    field = deformation.regularization()
    return penalty if field is None else penalty + field


def drop_rate_at(cfg: OptimizeConfig, step: int) -> float:
    """DropGaussian's progressive rate: ``drop_rate`` x step / iterations (0 at the first step)."""
    return cfg.drop_rate * step / max(cfg.iterations, 1)


def drop_factors(rate: float, unit: str, is_dynamic: torch.Tensor, anchor_times: torch.Tensor,
                 training_times: torch.Tensor, generator: torch.Generator) -> Optional[torch.Tensor]:
    """Opacity factors (N,) that leave a random fraction ``rate`` out of one training render: 0 for a Gaussian left
    out, 1 / (1 - rate) for one kept (so that the render stays as opaque on average); None at rate 0.

    unit 'gaussian': each Gaussian on its own. 'copy': the dynamic Gaussians by their anchor time (is_dynamic (N,)
    bool, anchor_times (N,)), each matched to the nearest of ``training_times`` (T,) sorted, one draw per training
    time, so a per-time copy of the moving parts is kept or left out whole; static Gaussians keep factor 1. Draws
    from ``generator`` (on the Gaussians' device) only: no host synchronisation, and a resumed run draws the same.
    """
    if rate <= 0:
        return None
    keep = 1.0 / (1.0 - rate)
    if unit == "gaussian":
        draw = torch.rand(is_dynamic.shape, device=is_dynamic.device, generator=generator)
        return torch.where(draw >= rate, keep, 0.0)
    midpoints = (training_times[1:] + training_times[:-1]) / 2                      # (T - 1,)
    copy_index = torch.bucketize(anchor_times.detach(), midpoints)                  # (N,) in [0, T)
    dropped = torch.rand(training_times.shape, device=is_dynamic.device, generator=generator) < rate   # (T,)
    return torch.where(is_dynamic, torch.where(dropped[copy_index], 0.0, keep), 1.0)


def random_rows(index: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``limit`` entries of ``index`` (M,), drawn without replacement in a random order."""
    return index[torch.randperm(index.numel(), device=index.device, generator=generator)[:limit]]


@torch.no_grad()
def dynamic_near_time(model: GaussianModel4D, time: float) -> torch.Tensor:
    """Model rows (V,) of the dynamic Gaussians within two temporal widths of ``time`` (all dynamic ones without
    temporal opacity). One host synchronisation (the count)."""
    splats = model.splats
    index = model.dynamic_index()
    if model.temporal_opacity:
        z = (time - splats["time_centers"][index]) / torch.exp(splats["time_log_scales"][index])
        index = index[z.abs() <= 2.0]
    return index


@torch.no_grad()
def coherence_groups(model: GaussianModel4D, time: float, samples: int, k: int, generator: torch.Generator,
                     chunk: int = 512) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """Who the motion-coherence regulariser compares at ``time``: up to ``samples`` dynamic Gaussians drawn from
    those within two temporal widths of ``time`` (all dynamic ones without temporal opacity), each with its ``k``
    nearest among the same set by position at ``time``, whatever copy (anchor time) they belong to. Returns (group
    (M, 1 + k) int64 model rows, the sampled one first; distance (M, k) to each neighbour, world units), or None
    when there are k or fewer. One host synchronisation (the set's size); the distances in chunks of ``chunk``
    rows, so that memory stays at chunk x the set's size."""
    index = dynamic_near_time(model, time)                                             # (V,): one sync
    count = index.numel()
    if count <= k:
        return None
    positions = model.positions_at_time(time, index)                                  # (V, 3)
    query = torch.randperm(count, device=index.device, generator=generator)[:samples]  # (M,)
    nearest, distance = [], []
    for lo in range(0, len(query), chunk):
        rows = query[lo:lo + chunk]
        d = torch.cdist(positions[rows], positions)                                    # (b, V)
        d[torch.arange(len(rows), device=d.device), rows] = float("inf")               # not itself
        values, columns = d.topk(k, dim=1, largest=False)                              # (b, k), nearest first
        nearest.append(columns)
        distance.append(values)
    group = index[torch.cat([query[:, None], torch.cat(nearest)], dim=1)]              # (M, 1 + k)
    return group, torch.cat(distance)


def outside_distance(alpha: torch.Tensor) -> torch.Tensor:
    """(H, W) distance in pixels from each pixel to the nearest pixel of the object mask alpha > 0.5 (alpha (H, W));
    0 inside. Everything outside when the mask is empty (the distances are then 0 too: no pull)."""
    from scipy import ndimage

    inside = alpha.detach().cpu().numpy() > 0.5
    if not inside.any():
        return torch.zeros_like(alpha)
    return torch.as_tensor(ndimage.distance_transform_edt(~inside), dtype=alpha.dtype, device=alpha.device)


def outside_map(cache: dict[int, torch.Tensor], index: int, view: TrainView, device: torch.device,
                alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
    """View ``index``'s :func:`outside_distance` map (H, W), half precision, on ``device``: from ``cache``, else
    made from ``alpha`` (H, W) (the view's own, decoded when not given) and kept in ``cache`` unless the view is
    decoded at each use (so that their memory stays bounded). The view must have alpha."""
    outside = cache.get(index)
    if outside is None:
        if alpha is None:
            alpha = view.alpha if view.image is not None else view.load()[1]
        outside = outside_distance(alpha.float()).to(device, torch.float16)
        if view.image is not None:
            cache[index] = outside
    return outside


def other_views(count: int, index: int, draws: int, generator: torch.Generator) -> list[int]:
    """``draws`` view indices drawn uniformly, with replacement, from the ``count`` views other than ``index``
    (none when there is no other view). Draws nothing from ``generator`` when ``draws`` is 0."""
    if draws <= 0 or count < 2:
        return []
    picks = torch.randint(count - 1, (draws,), generator=generator).tolist()
    return [k + (k >= index) for k in picks]                  # skip the view itself


def silhouette_penalty(model: GaussianModel4D, time: float, world_to_camera: torch.Tensor, K: torch.Tensor,
                       outside: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """:func:`silhouette_loss` of up to ``samples`` dynamic Gaussians drawn from those within two temporal widths of
    ``time`` (all dynamic ones without temporal opacity), carried to it, weighted by their opacity at ``time``
    (detached: the term moves Gaussians, it does not fade them). world_to_camera (4, 4) OpenCV, K (3, 3); outside
    (H, W) from :func:`outside_distance`. One host synchronisation (the set's size)."""
    splats = model.splats
    index = dynamic_near_time(model, time)                                             # (V,): one sync
    if index.numel() == 0:
        return outside.new_zeros(())
    pick = random_rows(index, samples, generator)                                       # (M,)
    with torch.no_grad():
        weights = torch.sigmoid(splats["opacities"][pick])
        if model.temporal_opacity:
            weights = temporal_opacity(weights, time, splats["time_centers"][pick], splats["time_log_scales"][pick],
                                       splats["is_dynamic"][pick])
    positions = model.positions_at_time(time, pick)                                     # (M, 3) world
    camera = positions @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]            # (M, 3)
    return silhouette_loss(camera, K, outside, weights)


def rendered_silhouette_penalty(gaussians: dict[str, torch.Tensor], world_to_camera: torch.Tensor, K: torch.Tensor,
                                outside: torch.Tensor) -> torch.Tensor:
    """:func:`silhouette_loss` of every Gaussian a training render carried to its time (``gaussians`` as
    :meth:`GaussianModel4D.gaussians_at` returned them: the rows ``deformed``, with skip_invisible the dynamic ones
    visible then), weighted by their opacity in that render (detached). No deformation of its own and no host
    synchronisation: the render's means and graph are reused. world_to_camera (4, 4) OpenCV, K (3, 3); outside
    (H, W) from :func:`outside_distance`. Zero when no row was deformed."""
    rows = gaussians["deformed"]
    if rows is None:
        return outside.new_zeros(())
    positions = gaussians["means"].index_select(0, rows)                              # (M, 3) world
    weights = gaussians["opacities"].index_select(0, rows).detach()
    camera = positions @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]            # (M, 3)
    return silhouette_loss(camera, K, outside, weights)


def coherence_penalty(model: GaussianModel4D, group: torch.Tensor, distance: torch.Tensor, time: float,
                      other_time: float) -> torch.Tensor:
    """:func:`coherence_loss` of the Gaussians ``group`` (M, 1 + k) from :func:`coherence_groups`, their velocities
    being their displacements from ``time`` to ``other_time`` (one frame gap away)."""
    velocity = model.positions_at_time(other_time, group) - model.positions_at_time(time, group)   # (M, 1 + k, 3)
    return coherence_loss(velocity[:, 0], velocity[:, 1:], distance)


def residual_penalty(model: GaussianModel4D, pick: torch.Tensor, times: torch.Tensor,
                     scene_scale: float) -> torch.Tensor:
    """planes_bases, mlp_bases, rigid_bases: :func:`residual_loss` of the displacement that the Gaussians ``pick``
    (M,) get from their own motion-bases coefficients alone, between their anchor times and ``times`` (M,)."""
    splats = model.splats
    moved = model.deformation.bases.displacement(
        splats["means"].index_select(0, pick), times, splats["anchor_times"].index_select(0, pick),
        {"motion_coefs": splats["motion_coefs"].index_select(0, pick)}, cache=False)           # (M, D)
    return residual_loss(moved, scene_scale)


@dataclass
class StepFunctions:
    """The parts of a training step that may run through torch.compile (``optimize.compile``): the model's
    ``state_at`` (set on the model), the photometric loss and the motion regulariser. ``cuda_graphs``: they replay
    as CUDA graphs (``optimize.cuda_graphs`` on a GPU), so each step is marked and deforms every dynamic Gaussian
    (graphs replay the sizes they recorded; the visible set changes its size at every step)."""

    photometric: Callable
    motion: Callable
    cuda_graphs: bool = False

    def start_step(self) -> None:
        """Call at the start of every training step: graphs' outputs of the last step may be reused from here."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if isinstance(self.photometric, GraphedPhotometricLoss):
            self.photometric.start_step()


def check_compile_backend(name: str) -> None:
    """A one-line :class:`UserError` for a ``optimize.compile_backend`` that torch.compile does not know."""
    known = torch._dynamo.list_backends(exclude_tags=())
    if name not in known:
        raise UserError(f"optimize.compile_backend: unknown torch.compile backend {name!r} (known: {', '.join(known)})")


def step_functions(cfg: OptimizeConfig, model: GaussianModel4D, device: torch.device) -> StepFunctions:
    """Eager functions, or compiled ones when ``cfg.compile`` asks for it on this device (then also
    :meth:`GaussianModel4D.compile_deformation`)."""
    if cfg.cuda_graphs and (cfg.compile == "never" or cfg.compile_backend != "inductor"):
        raise UserError("optimize.cuda_graphs needs optimize.compile=always or cuda and "
                        f"optimize.compile_backend=inductor (not compile={cfg.compile}, "
                        f"compile_backend={cfg.compile_backend})")
    compiled = cfg.compile == "always" or (cfg.compile == "cuda" and device.type == "cuda")
    graphed_loss = cfg.photometric_graphs == "cuda" and device.type == "cuda"
    if compiled and graphed_loss:
        log.debug(f"optimize.compile={cfg.compile}: the photometric loss is compiled, not replayed as CUDA graphs "
                  "(optimize.photometric_graphs applies to eager training)")
    if not compiled:
        photometric = GraphedPhotometricLoss(cfg.ssim_lambda) if graphed_loss else photometric_loss
        return StepFunctions(photometric=photometric, motion=motion_penalty)
    check_compile_backend(cfg.compile_backend)
    graphs = cfg.cuda_graphs and device.type == "cuda"
    mode = "reduce-overhead" if graphs else None
    model.compile_deformation(cfg.compile_backend, mode)
    return StepFunctions(photometric=compile_function(photometric_loss, cfg.compile_backend, mode),
                         motion=compile_function(motion_penalty, cfg.compile_backend, mode), cuda_graphs=graphs)


def train(cfg: OptimizeConfig, data: TrainData, initial: InitialGaussians, out_dir: Path,
          device: str | torch.device = "cpu", seed: int = 0, resume: bool = True,
          stop_after: Optional[int] = None) -> TrainResult:
    """Optimize a 4D Gaussian model on ``data`` from ``initial``; writes ``out_dir``/log.csv and checkpoints/.

    resume: continue from the latest checkpoint in ``out_dir``/checkpoints if there is one.
    stop_after: return after this many steps of this call (tests; the state then is as at a checkpoint).
    On a CPU, training runs with ``cfg.cpu_threads`` torch threads.
    """
    device = torch.device(device)
    precision = cuda_tf32(cfg.tf32) if device.type == "cuda" else contextlib.nullcontext()
    writer = CheckpointWriter(Path(out_dir) / "checkpoints", cfg.keep_checkpoints)
    with torch_threads(cfg.cpu_threads if device.type == "cpu" else 0), precision:
        try:
            return _train(cfg, data, initial, out_dir, device, seed, resume, stop_after, writer)
        except BaseException:
            writer.wait_quietly()       # no write goes on behind a caller that handles the error (and resumes)
            raise


def _train(cfg: OptimizeConfig, data: TrainData, initial: InitialGaussians, out_dir: Path, device: torch.device,
           seed: int, resume: bool, stop_after: Optional[int], writer: CheckpointWriter) -> TrainResult:
    # -------- setup --------
    clock = PhaseClock(device)          # the set-up's phases, for the summary
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = writer.directory         # out_dir / "checkpoints"
    log_path = out_dir / "log.csv"
    views = data.views
    if not views:
        raise UserError("optimize: no training frames")
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    random.seed(seed)
    times = [v.time for v in views]
    gap = median_time_gap(times)
    time_range = (min(times), max(times))
    distinct_times = np.unique(np.round(times, 9))                                  # (T,) sorted
    training_times = torch.tensor(distinct_times, dtype=torch.float32, device=device)   # for drop_unit 'copy'
    model = build_model(cfg, initial, gap, len(distinct_times), device)
    clock.mark("model")
    opacity_weighting = opacity_weighting_for(cfg, len(distinct_times), model.temporal_opacity)
    if cfg.opacity_lambda > 0 and cfg.opacity_weighting == "auto":
        log.info(f"opacity regulariser weighted by '{opacity_weighting}' (auto: {len(distinct_times)} training "
                 f"times; 'time' from {cfg.opacity_time_from})")
    scale = scene_scale(views, model.splats["means"])
    cameras = torch.nn.Parameter(torch.zeros(len(views), 6, device=device)) if cfg.refine_cameras else None
    optimizer = build_optimizer(cfg, model, cameras, scale)
    initial_rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    splat_opts = splat_optimizers(optimizer, model)
    clock.mark("optimizer")
    functions = step_functions(cfg, model, device)
    clock.mark("step functions")
    skip_invisible = cfg.skip_invisible and not functions.cuda_graphs       # graphs replay fixed sizes
    share_motion = cfg.shared_motion == "always" or (cfg.shared_motion == "cuda" and device.type == "cuda")
    strategy = make_strategy(cfg)
    strategy.check_sanity(model.splats, splat_opts)
    strategy_state = strategy.initialize_state(scene_scale=scale)
    sampler = EpochSampler(len(views), seed)
    generator = torch.Generator(device=device).manual_seed(seed + 1)     # on-device randomness (backgrounds, regs)
    loop = LoopState()
    clock.mark("strategy")

    resumed_from = None
    latest, state = read_latest_checkpoint(ckpt_dir) if resume else (None, None)
    if latest is not None:
        optimizer = resume_from(latest, state, cfg, model, cameras, strategy_state, loop, sampler, scale, generator)
        splat_opts = splat_optimizers(optimizer, model)
        resumed_from = loop.step
        log.info(f"resuming from {latest.name} (step {loop.step})")
        kept = read_log_rows(log_path, loop.step)
        write_text(log_path, ",".join(LOG_COLUMNS) + "\n" + "".join(",".join(r) + "\n" for r in kept))
    elif log_path.exists():
        log_path.unlink()
    clock.mark("resume")

    scene_bg = torch.tensor(data.scene_background, dtype=torch.float32, device=device)
    fixed_color = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}.get(cfg.background)
    fixed_bg = None if fixed_color is None else torch.tensor(fixed_color, device=device)
    fixed_differs = fixed_color is not None and tuple(fixed_color) != tuple(map(float, data.scene_background))
    want_depth = cfg.depth_lambda > 0 and any(v.depth is not None for v in views)
    render_mode = "RGB+ED" if want_depth else "RGB"
    n_dynamic_model = model.deformation is not None
    use_rigidity = n_dynamic_model and cfg.rigidity_lambda > 0
    use_coherence = n_dynamic_model and cfg.coherence_lambda > 0
    use_silhouette = n_dynamic_model and cfg.silhouette_lambda > 0
    silhouette_from_render = use_silhouette and cfg.silhouette_source == "render"
    outside_by_view: dict[int, torch.Tensor] = {}     # silhouette loss: each RGBA view's distance map, made once
    use_residual = n_dynamic_model and cfg.residual_lambda > 0 and isinstance(model.deformation, FieldWithBases)
    neighbors: Optional[torch.Tensor] = None      # (N, k) same-slice neighbours, recomputed when the rows change
    zero = torch.zeros((), device=device)     # the value of a loss term that is off (made once, not per step)
    good = capture(model, optimizer, strategy_state, cameras, loop, sampler)
    buffer: list[torch.Tensor] = []       # per-step values (8,) on the device, fetched every log_every steps
    buffer_meta: list[tuple[int, int]] = []   # (step, gaussians)
    last_psnr = float("nan")
    start_step = loop.step
    end_step = cfg.iterations if stop_after is None else min(cfg.iterations, start_step + stop_after)
    bar = progress(None, desc="optimize", total=end_step, initial=start_step, unit="step")
    clock.mark("the rest")
    tick = time.perf_counter()
    checkpoint_seconds = 0.0

    # -------- the loop --------
    while loop.step < end_step:
        step = loop.step
        functions.start_step()          # CUDA graphs: the outputs of the last step's replays may be reused now
        set_learning_rates(optimizer, initial_rates, step, cfg)
        model.deform_enabled = step >= cfg.deform_warmup
        sh_degree = min(step // max(cfg.sh_degree_interval, 1), cfg.sh_degree)
        jitter_std = time_jitter_std(cfg, step, gap) if n_dynamic_model else 0.0

        # The motion regulariser's rows and times, drawn first: their second differences come from the first
        # view's deformation (one evaluation of a field for both). motion_parts 'coefficients' reads the bases alone.
        motion_query = None
        if n_dynamic_model and model.deform_enabled and cfg.motion_lambda > 0 and step % cfg.motion_every == 0:
            dynamic = model.dynamic_index()
            if dynamic.numel() > 0:
                pick = random_rows(dynamic, 4096, generator)
                t = torch.rand(len(pick), device=device, generator=generator) * max(1 - 2 * gap, 0.0) + min(gap, 0.5)
                motion_query = (pick, t, gap)
        fuse_motion = motion_query is not None and cfg.motion_parts == "all" and share_motion
        second = None                   # (K, D): the motion rows' second differences, from the first render

        infos, losses, view_terms, render_times = [], [], [], []
        for index in sampler.next(cfg.batch_size):
            view = views[index]
            image, alpha = view.pixels(device)
            if cfg.background == "random" and view.has_alpha:
                background, recomposite = torch.rand(3, device=device, generator=generator), True
            elif fixed_bg is not None:
                background, recomposite = fixed_bg, view.has_alpha and fixed_differs
            else:
                background, recomposite = scene_bg, False
            target = image
            # RGBA: the ground truth composited on this step's background instead (a frame without alpha in an RGBA
            # scene, e.g. a D-NeRF folder mixing RGB and RGBA PNGs, is opaque and stays as it is)
            if recomposite and alpha is not None:
                target = image + (background - scene_bg) * (1.0 - alpha[..., None])
            viewmat = view.world_to_camera if cameras is None else refined_world_to_camera(view.world_to_camera,
                                                                                           cameras[index])
            when = jittered_time(view.time, jitter_std, sampler.generator, time_range[0], time_range[1])
            render_time = when
            render_times.append(float(when))
            factors = drop_factors(drop_rate_at(cfg, step), cfg.drop_unit, model.splats["is_dynamic"],
                                   model.splats["anchor_times"], training_times, generator)
            gaussians = None          # the silhouette loss's 'render' source reads the render's Gaussians too
            with_motion = fuse_motion and second is None
            if with_motion or (silhouette_from_render and alpha is not None and model.deform_enabled):
                gaussians = model.gaussians_at(when, sh_degree, skip_invisible=skip_invisible,
                                               opacity_factors=factors,
                                               motion=motion_query if with_motion else None)
                second = gaussians["second_difference"] if with_motion else second
            colors, alphas, info = model.rasterize(when, viewmat[None], view.K[None], view.width, view.height,
                                                   backgrounds=background[None], render_mode=render_mode,
                                                   sh_degree=sh_degree, backend=cfg.backend, absgrad=cfg.absgrad,
                                                   skip_invisible=skip_invisible, opacity_factors=factors,
                                                   gaussians=gaussians)
            strategy.step_pre_backward(model.splats, splat_opts, strategy_state, step, info)
            infos.append(info)
            rgb = colors[0, ..., :3]
            loss, l1, ssim_value = functions.photometric(rgb, target, cfg.ssim_lambda)
            d_loss = zero
            if want_depth and view.depth is not None:
                valid = view.depth_valid & (alphas[0, ..., 0].detach() > 0.5)
                d_loss = depth_loss(colors[0, ..., 3], view.depth, valid)
                loss = loss + cfg.depth_lambda * d_loss
            if cfg.alpha_lambda > 0 and alpha is not None:
                loss = loss + cfg.alpha_lambda * alpha_loss(alphas[0, ..., 0], alpha)
            if use_silhouette and alpha is not None and model.deform_enabled:
                # this view at its render time, then up to silhouette_views - 1 other views at their own times
                # (drawn from the sampler's generator); the cameras are detached: the term moves Gaussians only
                own = outside_map(outside_by_view, index, view, device, alpha).float()
                penalties = [rendered_silhouette_penalty(gaussians, viewmat.detach(), view.K, own)
                             if silhouette_from_render else
                             silhouette_penalty(model, float(render_time), viewmat.detach(), view.K, own, 4096,
                                                generator)]
                for other in other_views(len(views), index, cfg.silhouette_views - 1, sampler.generator):
                    other_view = views[other]
                    if not other_view.has_alpha:
                        continue
                    with torch.no_grad():
                        other_viewmat = other_view.world_to_camera if cameras is None else refined_world_to_camera(
                            other_view.world_to_camera, cameras[other])
                    penalties.append(silhouette_penalty(
                        model, float(other_view.time), other_viewmat, other_view.K,
                        outside_map(outside_by_view, other, other_view, device).float(), 4096, generator))
                loss = loss + cfg.silhouette_lambda * torch.stack(penalties).mean()
            losses.append(loss)
            with torch.no_grad():       # for the log: l1, ssim, depth, mean squared error (-> PSNR at the flush)
                view_terms.append([l1, ssim_value, d_loss, (rgb - target).square().mean()])
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean()

        motion = zero
        if fuse_motion:
            motion = motion_penalty_from(second[:, POSITION], model.deformation, scale)
        elif motion_query is not None:
            motion = functions.motion(model.deformation, model.splats["means"], model.deformation_parameters(),
                                      *motion_query, scale, cfg.motion_parts)
        if motion_query is not None:
            loss = loss + cfg.motion_lambda * cfg.motion_every * motion
        if use_coherence and model.deform_enabled:
            found = coherence_groups(model, render_time, 2048, cfg.coherence_neighbors, generator)
            if found is not None:
                other_time = render_time + gap if render_time + gap <= time_range[1] else render_time - gap
                loss = loss + cfg.coherence_lambda * coherence_penalty(model, *found, render_time, other_time)
        rigidity = zero
        if use_rigidity and model.deform_enabled and model.dynamic_index().numel() > 1:
            if neighbors is None:
                neighbors = model.same_time_neighbors(cfg.rigidity_neighbors)
            pick = random_rows(model.dynamic_index(), 2048, generator)
            group = torch.cat([pick[:, None], neighbors[pick]], dim=1)                 # (M, 1 + k)
            when = float(torch.rand((), generator=sampler.generator))                 # host-side: no sync
            deformed = model.positions_at_time(when, group)                            # (M, 1 + k, 3)
            canonical = model.splats["means"].index_select(0, group.reshape(-1)).view(*group.shape, 3)
            rigidity = rigidity_loss(deformed[:, 0], deformed[:, 1:], canonical[:, 0], canonical[:, 1:])
            loss = loss + cfg.rigidity_lambda * rigidity
        if use_residual and model.deform_enabled:
            index = model.dynamic_index()
            if index.numel() > 0:
                pick = random_rows(index, 4096, generator)
                t = torch.rand(len(pick), device=device, generator=generator)
                loss = loss + cfg.residual_lambda * residual_penalty(model, pick, t, scale)
        scale_reg = zero
        if cfg.scale_lambda > 0:
            scale_reg = anisotropy_loss(model.splats["scales"], cfg.max_anisotropy)
            loss = loss + cfg.scale_lambda * scale_reg
        if cfg.opacity_lambda > 0:
            splats = model.splats
            weights = temporal_weights(render_times, splats["time_centers"], splats["time_log_scales"],
                                       splats["is_dynamic"]) if opacity_weighting == "time" else None
            loss = loss + cfg.opacity_lambda * opacity_loss(splats["opacities"], weights)

        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        width_floor = temporal_width_floor(cfg, step, gap) if model.temporal_opacity else 0.0
        if width_floor > 0:
            with torch.no_grad():
                model.splats["time_log_scales"].clamp_(min=math.log(width_floor))
        events: DensifyEvents = strategy.step_post_backward(model.splats, splat_opts, strategy_state, step,
                                                            infos if len(infos) > 1 else infos[0], packed=False)
        if events.opacity_reset:
            loop.guard.mean_loss = None      # the reset raises the loss on purpose: restart the running mean
        if events.changed:
            neighbors = None

        with torch.no_grad():
            l1, ssim_value, d_loss, mse = (view_terms[0] if len(view_terms) == 1 else
                                          torch.stack([torch.stack(t) for t in view_terms]).mean(0))
            buffer.append(torch.stack([loss, l1, ssim_value, d_loss, motion, rigidity, scale_reg, mse]))
        buffer_meta.append((step, model.num_gaussians()))
        loop.step += 1
        bar.update(1)

        # -------- every log_every steps: fetch, log, guard --------
        is_checkpoint = cfg.checkpoint_every > 0 and loop.step % cfg.checkpoint_every == 0
        if loop.step % max(cfg.log_every, 1) == 0 or loop.step == end_step or is_checkpoint:
            now = time.perf_counter()
            loop.elapsed_s += now - tick
            tick = now
            values = torch.stack(buffer).tolist()      # (steps, 8): the one device->host transfer
            window = [v[0] for v in values]
            bad = next((x for x in window if not math.isfinite(x)
                        or (loop.guard.mean_loss is not None and x > cfg.explode_factor * loop.guard.mean_loss)), None)
            if bad is not None:
                loop.guard.restores += 1
                loop.guard.total_restores += 1
                if loop.guard.restores > MAX_CONSECUTIVE_RESTORES:
                    raise UserError(f"optimize: the loss was {bad:.4g} after {MAX_CONSECUTIVE_RESTORES} restores "
                                    f"(around step {buffer_meta[0][0]}); lower the learning rates")
                kept_guard = loop.guard
                optimizer = restore(good, cfg, model, cameras, strategy_state, loop, None, scale)
                splat_opts = splat_optimizers(optimizer, model)
                neighbors = None
                loop.guard = kept_guard          # keep counting restores; the restored mean stays valid
                log.warning(f"optimize: loss {bad:.4g} at steps {buffer_meta[0][0]}-{buffer_meta[-1][0]} "
                            f"(NaN or > {cfg.explode_factor:g} x running mean); restored the state of step "
                            f"{loop.step} and continued with fresh random samples")
                bar.n = loop.step
                bar.refresh()
                buffer.clear()
                buffer_meta.clear()
                continue
            loop.guard.restores = 0
            mean_window = float(np.mean(window))
            loop.guard.mean_loss = (mean_window if loop.guard.mean_loss is None
                                    else 0.8 * loop.guard.mean_loss + 0.2 * mean_window)
            psnrs = [psnr_from_mse(v[7]) for v in values]
            rows = [[s, *[_format(x) for x in v[:7]], _format(p), n, f"{loop.elapsed_s:.3f}"]
                    for (s, n), v, p in zip(buffer_meta, values, psnrs)]
            append_log_rows(log_path, rows)
            last_psnr = float(np.mean(psnrs))
            bar.set_postfix(loss=f"{values[-1][0]:.4f}", psnr=f"{last_psnr:.2f}", n=buffer_meta[-1][1], refresh=False)
            buffer.clear()
            buffer_meta.clear()
            good = capture(model, optimizer, strategy_state, cameras, loop, sampler)
            if is_checkpoint or loop.step == end_step:
                writing = time.perf_counter()
                state = capture(model, optimizer, strategy_state, cameras, loop, sampler, device=torch.device("cpu"))
                state.update({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                              "rng": _rng_state(device, generator)})
                writer.submit(state)            # written on a thread while training goes on
                neighbors = None        # a run resumed from here finds them anew from these means: so does this one
                checkpoint_seconds += time.perf_counter() - writing
                tick = time.perf_counter()     # checkpoint writing is not training time
    bar.close()
    waiting = time.perf_counter()
    writer.wait()                           # the last checkpoint is on disk before the stage goes on
    checkpoint_seconds += time.perf_counter() - waiting
    model.deform_enabled = True
    return TrainResult(model=model, steps=loop.step, seconds=loop.elapsed_s, train_psnr=last_psnr,
                       restores=loop.guard.total_restores, resumed_from=resumed_from,
                       opacity_weighting=opacity_weighting,
                       setup_seconds=sum(clock.seconds.values()),
                       checkpoint_seconds=checkpoint_seconds, setup_parts=clock.seconds)
