"""Training PAGE-4D: ``page4dgs train-model --config NAME [--resume CKPT] [key=value ...]``.

One loop for both recipes (``configs/train/``):
- ``page4d-tiny``: the small network from scratch on synthetic dynamic scenes, with the supervised mask loss;
  its exported weights are the geometry stage's bundled default;
- ``page4d-1b-finetune``: PAGE-4D's targeted fine-tuning of VGGT-1B (spec ``page4d.md`` §12): only frame and
  global blocks 10-19 and the mask head train, with the official per-group schedules and no mask loss.

Each optimizer step draws one batch (S frames per sequence, S random in [frames_min, frames_max], floor(max_images
/ S) sequences), splits it into ``accum_steps`` chunks, runs forward (bf16 autocast on CUDA, fp32 on CPU), loss and
backward per chunk, clips the gradient norm per module (aggregator, camera/depth/point heads), sets each parameter
group's learning rate from its warm-up + cosine schedule and steps AdamW. Non-finite losses or gradients skip the
step. Batches are a pure function of (seed, step), so a run resumed from a checkpoint sees exactly the data it would
have seen, and on the CPU it continues bit for bit.

Files in ``out_dir``: ``checkpoint.pt`` (model, optimizer, step, RNG states, config; written atomically every
``checkpoint_every`` steps and when the run stops), ``train_log.csv`` (one row per logged step: learning rates, loss
terms, throughput, GPU memory), ``export/<model>.safetensors`` (fp16 weights + training metadata, written when the
run stops; it also resumes training, weights-only, where the full checkpoint is too large to carry) and
``summary.json``. A ``max_minutes`` budget ends the run cleanly, with a checkpoint, before the budget is spent.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import functools
import json
import logging
import math
import random
import signal
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from pipeline.config import CONFIG_DIR, _apply, option, parse_override, read_yaml
from pipeline.errors import StageInterrupted, UserError
from pipeline.io import atomic_path, write_json
from pipeline.log import get_logger, progress
from pipeline.rng import set_cuda_rng_states
from stages.geometry.page4d import data_parallel, prefetch
from stages.geometry.page4d.data_parallel import World
from stages.geometry.page4d.losses import LossConfig, objective

log = get_logger("train")

TRAIN_CONFIG_DIR = CONFIG_DIR / "train"
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "train_log.csv"
CHECKPOINT_VERSION = 1
# Gradient clipping groups: parameter-name prefixes, each clipped to ``clip_grad_norm`` on its own (the official
# recipe clips the aggregator and each head separately).
CLIP_GROUPS = ("aggregator", "camera_head", "depth_head", "point_head")
# Fields that change nothing of what is computed: they may differ between a checkpoint and the resuming config.
BOOKKEEPING_FIELDS = ("out_dir", "checkpoint_every", "log_every", "max_minutes", "stop_after", "export",
                      "export_format", "device", "description", "compile_blocks", "compile_backend")
LOSS_COLUMNS = ("loss", "loss_camera", "loss_T", "loss_R", "loss_FoV", "loss_Rrel", "loss_depth",
                "loss_conf_depth", "loss_reg_depth", "loss_grad_depth", "loss_point", "loss_conf_point",
                "loss_reg_point", "loss_grad_point", "loss_mask")


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class ParamGroupConfig:
    """Parameters matching ``params`` (glob patterns on names) with their own learning-rate schedule and decay."""

    name: str = option("group", "Name used in the log.")
    params: list[str] = option([], "Glob patterns of parameter names (fnmatch; '*' also matches dots).")
    lr: float = option(1e-5, "Peak learning rate, reached at the end of the warm-up.")
    lr_start: float = option(1e-8, "Learning rate at step 0 (linear warm-up from here to lr).")
    lr_end: float = option(1e-8, "Learning rate at the last step (cosine decay from lr to here).")
    warmup: float = option(0.05, "Fraction of the schedule spent warming up.")
    weight_decay: float = option(0.0, "AdamW decoupled weight decay.")


@dataclass
class TrainConfig:
    """One training run. Defaults train ``page4d-tiny`` from scratch; presets live in ``configs/train/``."""

    description: str = option("", "What this recipe is, for the log and the exported weights' metadata.")
    # --- model ---
    model: str = option("page4d-tiny", "Model config name (configs/models/NAME.yaml) or path.")
    init_weights: str = option("", "Weights to start from: a path, or an alias of stages.geometry.page4d.checkpoint "
                               "('vggt-1b', 'page4d-nomask', ...); '' = random initialisation. Keys the file lacks "
                               "may only be the mask head's (VGGT -> PAGE-4D); they keep their initialisation.")
    trainable: list[str] = option(["*"], "Glob patterns of the parameters that train; every other parameter is "
                                  "frozen (requires_grad False, never given to the optimizer).")
    gradient_checkpointing: bool = option(False, "Recompute aggregator activations in the backward pass (memory "
                                          "for compute; needed for the 1B model).")
    compile_blocks: bool = option(False, "Compile every transformer block (stages.geometry.page4d.layers."
                                  "compile_blocks: torch.compile with dynamic shapes, backend `compile_backend`): "
                                  "fused kernels for a step that is bound by its ~7,900 launches (docs/training.md, "
                                  "'Throughput of a step'). Each new shape family pays its compilation once per "
                                  "process; names, weights and checkpoints are unchanged.")
    compile_backend: str = option("inductor", "torch.compile backend of `compile_blocks` ('inductor'; the tests use "
                                  "'aot_eager', which traces the same graphs without generating code).")
    mask_head_backprop: bool = option(False, "Let the supervised mask loss reach the backbone: the mask head reads "
                                      "the tokens after frame block mask_head_after without the official detach, "
                                      "so the blocks below it learn motion cues too (a training choice; the "
                                      "network and its keys are unchanged). Needs loss.mask_weight > 0.")
    # --- optimisation ---
    steps: int = option(20000, "Optimizer steps of the whole schedule (the learning-rate schedules span them).")
    schedule_start: int = option(0, "Step at which the learning-rate schedules begin: warm-up and cosine span "
                                 "[schedule_start, steps]. 0 for a fresh run; the step of the weights a longer "
                                 "schedule continues from gives that continuation a whole schedule of its own "
                                 "(with 0 it would run on the old cosine's tail).")
    accum_steps: int = option(1, "Gradient accumulation: each step's batch is split into this many chunks, one "
                              "forward/backward each.")
    draws_per_step: int = option(1, "Independent batches drawn per optimizer step and per process, their gradients "
                                 "averaged: a step of one process with draws_per_step N computes what N data-parallel "
                                 "processes compute with 1 (data_parallel.py), e.g. to continue a multi-GPU run on "
                                 "one GPU with the same batch.")
    lr: float = option(3e-4, "Peak learning rate of trainable parameters that no param_group matches.")
    lr_start: float = option(3e-6, "Their learning rate at step 0.")
    lr_end: float = option(3e-6, "Their learning rate at the last step.")
    warmup: float = option(0.03, "Their warm-up fraction (linear), followed by a cosine decay.")
    weight_decay: float = option(0.05, "Their AdamW weight decay.")
    decay_matrices_only: bool = option(False, "Apply each group's weight decay to matrices only (parameters of 2 "
                                       "or more dimensions): biases, norm weights and LayerScale gammas (1-D) "
                                       "then get none, as in nanoGPT. Off, decay pulls them to 0 too: the "
                                       "attention's q/k-norm weights (its sharpness) and the blocks' LayerScale "
                                       "gammas (their share of the residual stream). Each group gets a twin "
                                       "'<name>_nodecay' in the optimizer and the log.")
    param_groups: list[dict] = option([], "Parameter groups with their own schedule: a list of mappings with the "
                                      "keys of ParamGroupConfig (name, params, lr, lr_start, lr_end, warmup, "
                                      "weight_decay); the first group whose patterns match a parameter takes it.")
    adam_betas: list[float] = option([0.9, 0.999], "AdamW betas.")
    clip_grad_norm: float = option(1.0, "Max L2 gradient norm, applied separately to the aggregator and to each "
                                   "head; <= 0 disables clipping.")
    autocast: str = option("bf16", "Mixed precision of the forward pass on CUDA ('bf16' or 'none'); the CPU always "
                           "runs float32.", choices=("bf16", "none"))
    attention: str = option("default", "Attention kernel policy (stages.geometry.page4d.sdpa): 'default' lets "
                            "PyTorch choose per call (training sees many shapes and needs backward kernels), 'auto' "
                            "times the kernels per shape class.", choices=("default", "auto", "cudnn", "flash",
                                                                            "efficient", "math"))
    rewarmup_steps: int = option(200, "After a weights-only resume (fresh AdamW moments), learning rates ramp up "
                                 "linearly over this many steps.")
    # --- data ---
    seed: int = option(0, "Seed of the data stream and of the initialisation.")
    max_images: int = option(32, "Frames per optimizer step: batch size = floor(max_images / S).")
    frames_min: int = option(2, "Fewest frames per sequence (S is drawn uniformly per step).")
    frames_max: int = option(16, "Most frames per sequence.")
    input_width: int = option(0, "Image width in pixels (multiple of the patch size); 0 = the model's input_width.")
    aspect_min: float = option(0.33, "Smallest height/width ratio; the height is rounded down to whole patches.")
    aspect_max: float = option(1.0, "Largest height/width ratio.")
    frame_choices: list[int] = option([], "If set, S is drawn from these values instead of [frames_min, frames_max] "
                                      "(e.g. [2, 4, 8, 16] with max_images 32 keeps B*S constant).")
    aspect_buckets: int = option(0, "If > 0, the aspect ratio is drawn from this many evenly spaced values in "
                                 "[aspect_min, aspect_max]. Few distinct shapes let cuDNN reuse its plans: on an "
                                 "H100 its per-shape planning cost more CPU time than the whole step's GPU work.")
    fov_min_deg: float = option(40.0, "Smallest horizontal field of view of synthetic cameras, degrees.")
    fov_max_deg: float = option(90.0, "Largest horizontal field of view of synthetic cameras, degrees.")
    color_jitter: float = option(0.5, "Brightness, contrast and saturation jitter strength (factors in "
                                 "[1 - j, 1 + j]), one draw per sequence.")
    hue_jitter: float = option(0.1, "Hue jitter (fraction of a turn).")
    jitter_prob: float = option(0.9, "Probability that a sequence is colour-jittered.")
    grayscale_prob: float = option(0.05, "Probability that a sequence is turned grey.")
    object_fraction: float = option(0.3, "Fraction of synthetic steps that draw 'object' scenes (a figure seen from "
                                    "random viewpoints) instead of 'room' scenes (a handheld video of a room).")
    room_pan_scale: list[float] = option([1.0, 1.0], "Range [low, high] of a multiplier of how far room cameras "
                                         "turn (their pan amplitude), drawn uniformly per room step; [1, 1] = the "
                                         "rooms make-scene writes (and the evaluation uses). Larger turns give the "
                                         "camera and point losses more to learn from across frames.")
    scenes: list[str] = option([], "Scene folders with ground-truth depth and cameras mixed into the synthetic "
                               "stream (any format the loaders read).")
    scene_fraction: float = option(0.0, "Fraction of steps that draw their batch from ``scenes``.")
    # --- bookkeeping ---
    out_dir: str = option("", "Run folder ('' = runs/train/<config name>).")
    checkpoint_every: int = option(500, "Write checkpoint.pt every this many steps (and when the run stops).")
    log_every: int = option(20, "Log and write a CSV row every this many steps.")
    max_minutes: float = option(0.0, "Wall-clock budget of this run in minutes (0 = none): the run stops with a "
                                "checkpoint before it would overrun.")
    stop_after: int = option(0, "Stop this run after this many steps (0 = run to the end of the schedule).")
    export: str = option("", "Also write the final weights here when the schedule completes ('' = only "
                         "out_dir/export/).")
    export_format: str = option("float16", "Format of the final weights written to ``export``: 'float16', or 'int8' "
                                "(8-bit matrices with per-slice scales + fp16 rest: half the size; the accuracy "
                                "change is measured by bench/quantization_bench.py). out_dir/export/ is always "
                                "float16.", choices=("float16", "int8"))
    device: str = option("auto", "'auto' (CUDA if available), 'cpu' or 'cuda'.", choices=("auto", "cpu", "cuda"))
    prefetch: int = option(-1, "Batches drawn ahead by a data worker (stages/geometry/page4d/prefetch.py; the same "
                           "batches, bit for bit); 0 = drawn by the training loop when needed; -1 = 2 on CUDA, 0 on "
                           "the CPU. On a GPU the synthetic renderer's host work otherwise stalls every step: with a "
                           "process worker a step took 0.81 of the time (docs/training.md, 'Throughput').")
    prefetch_worker: str = option("process", "What draws the batches ahead: a separate 'process' (its own CUDA "
                                  "context; ~7 s to start) or a 'thread' of the training process (on its own CUDA "
                                  "stream; sharing the interpreter lock, it gained half as much).",
                                  choices=("thread", "process"))
    loss: LossConfig = field(default_factory=LossConfig, metadata={"doc": "Loss weights (see losses.LossConfig)."})

    def groups(self) -> list[ParamGroupConfig]:
        """The validated parameter groups (configured ones first, then the default group)."""
        out = []
        for i, raw in enumerate(self.param_groups):
            group = ParamGroupConfig()
            _apply(group, raw, f"param_groups.{i}.", "train config")
            out.append(group)
        out.append(ParamGroupConfig("default", ["*"], self.lr, self.lr_start, self.lr_end, self.warmup,
                                    self.weight_decay))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_train_config(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not path.is_file():
            raise UserError("training config not found", path)
        return path
    path = TRAIN_CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in TRAIN_CONFIG_DIR.glob("*.yaml"))
        raise UserError(f"unknown training config '{name_or_path}' (available: {', '.join(names)})")
    return path


def _update(config: TrainConfig, mapping: dict[str, Any], source: str) -> None:
    """Apply a mapping (YAML or overrides) to ``config``; ``loss`` is the one nested section."""
    if not isinstance(mapping, dict):
        raise UserError(f"{source}: a training config must be a mapping")
    mapping = dict(mapping)
    loss = mapping.pop("loss", None)
    _apply(config, mapping, "", source)
    if loss is not None:
        _apply(config.loss, loss, "loss.", source)


def load_train_config(name_or_path: str = "", overrides: typing.Iterable[str] = ()) -> TrainConfig:
    """Defaults <- configs/train/NAME.yaml (or a path) <- ``key=value`` overrides (``loss.mask_weight=0.5``)."""
    config = TrainConfig()
    if name_or_path:
        path = resolve_train_config(name_or_path)
        if not path.read_bytes().strip():            # a truncated save or the wrong file, not a recipe
            raise UserError("empty training config file (one that changes nothing can hold just a comment)", path)
        _update(config, read_yaml(path), str(path))
        if not config.out_dir:
            config.out_dir = str(Path("runs") / "train" / path.stem)
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 1:
            _update(config, {keys[0]: value}, "command line")
        elif len(keys) == 2 and keys[0] == "loss":
            _update(config, {"loss": {keys[1]: value}}, "command line")
        else:
            raise UserError(f"command line: unknown training config key '{'.'.join(keys)}'")
    if not config.out_dir:
        config.out_dir = str(Path("runs") / "train" / Path(config.model).stem)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    problems = []
    if config.steps < 1:
        problems.append("steps must be >= 1")
    if not 0 <= config.seed < 2**32:
        problems.append("seed must be an integer in [0, 2**32)")
    if not 0 <= config.schedule_start < config.steps:
        problems.append("schedule_start must lie in [0, steps)")
    if config.accum_steps < 1:
        problems.append("accum_steps must be >= 1")
    if config.draws_per_step < 1:
        problems.append("draws_per_step must be >= 1")
    if not 1 <= config.frames_min <= config.frames_max:
        problems.append("need 1 <= frames_min <= frames_max")
    if config.max_images < config.frames_max:
        problems.append("max_images must be >= frames_max (at least one sequence per step)")
    if not 0 < config.aspect_min <= config.aspect_max:
        problems.append("need 0 < aspect_min <= aspect_max")
    if not 0.0 <= config.object_fraction <= 1.0:
        problems.append("object_fraction must lie in [0, 1]")
    if not 0.0 <= config.scene_fraction <= 1.0:
        problems.append("scene_fraction must lie in [0, 1]")
    if config.scene_fraction > 0 and not config.scenes:
        problems.append("scene_fraction > 0 needs scenes")
    if len(config.adam_betas) != 2:
        problems.append("adam_betas needs two values")
    if any(not 1 <= s <= config.max_images for s in config.frame_choices):
        problems.append("frame_choices must lie in [1, max_images]")
    if config.checkpoint_every < 1 or config.log_every < 1:
        problems.append("checkpoint_every and log_every must be >= 1")
    if not (math.isfinite(config.lr) and config.lr > 0):
        problems.append("lr must be a positive number")
    if not all(math.isfinite(v) and v >= 0 for v in (config.lr_start, config.lr_end)):
        problems.append("lr_start and lr_end must be numbers >= 0")
    if not 0.0 <= config.warmup < 1.0:
        problems.append("warmup must lie in [0, 1)")
    if config.stop_after < 0 or config.max_minutes < 0:
        problems.append("stop_after and max_minutes must be >= 0")
    if config.input_width < 0:
        problems.append("input_width must be >= 0")
    if not 0.0 < config.fov_min_deg <= config.fov_max_deg < 180.0:
        problems.append("need 0 < fov_min_deg <= fov_max_deg < 180")
    if len(config.room_pan_scale) != 2 or not 0 < config.room_pan_scale[0] <= config.room_pan_scale[1]:
        problems.append("room_pan_scale needs two numbers 0 < low <= high")
    weights = {f"loss.{f.name}": getattr(config.loss, f.name) for f in dataclasses.fields(config.loss)
               if f.name.endswith("_weight")}
    bad = [name for name, value in weights.items() if not (math.isfinite(value) and value >= 0)]
    if bad:
        problems.append(f"{', '.join(bad)}: loss weights must be numbers >= 0 (0 turns a term off)")
    if config.compile_blocks and config.attention == "auto":
        problems.append("compile_blocks needs attention 'default' or a named kernel ('auto' times kernels per shape "
                        "class on the host, which a compiled block cannot do)")
    if config.mask_head_backprop and not config.loss.mask_weight > 0:
        problems.append("mask_head_backprop needs loss.mask_weight > 0 (without a mask loss nothing flows back)")
    config.groups()  # validates the group mappings
    if problems:
        raise UserError("training config: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------------------
# Model, freezing, optimizer, schedule


def build_model(config: TrainConfig, device: torch.device):
    """The network of ``config.model``, seeded by ``config.seed``, with ``init_weights`` loaded if set."""
    from stages.geometry.page4d.config import ModelConfig
    from stages.geometry.page4d.model import PAGE4D

    torch.manual_seed(config.seed)
    model = PAGE4D(ModelConfig.load(config.model))
    if config.init_weights:
        load_initial_weights(model, config.init_weights, config.model)
    model.aggregator.gradient_checkpointing = config.gradient_checkpointing
    model.aggregator.mask_head_detached = not config.mask_head_backprop
    model = model.to(device)
    if config.compile_blocks:
        from stages.geometry.page4d.layers import compile_blocks
        eager = model.aggregator.scheduled_bias_blocks()     # alpha ramps: a graph would be specialised per value
        compiled = compile_blocks(model, config.compile_backend, skip=tuple(eager))
        log.info(f"compiled {compiled} transformer blocks (backend {config.compile_backend}, dynamic shapes)"
                 + (f"; {len(eager)} global blocks with the scheduled mask bias stay eager" if eager else ""))
    return model


def load_initial_weights(model: torch.nn.Module, spec: str, model_name: str) -> None:
    """Load weights key for key; only mask-head keys may be missing (starting PAGE-4D from VGGT-1B)."""
    from stages.geometry.page4d.checkpoint import (IGNORED_PREFIXES, MASK_HEAD_PREFIX, check_keys,
                                                   read_checkpoint, resolve_checkpoint)

    path = resolve_checkpoint(spec, model_name)
    state, fmt, _ = read_checkpoint(path)
    missing, unexpected, mismatched, ignored = check_keys(model, state)
    not_mask = [k for k in missing if not k.startswith(MASK_HEAD_PREFIX)]
    if not_mask or unexpected or mismatched:
        raise UserError(f"initial weights do not fit '{model_name}': {len(not_mask)} missing, {len(unexpected)} "
                        f"unexpected, {len(mismatched)} mis-shaped keys (first: "
                        f"{(not_mask + unexpected + mismatched)[:3]})", path)
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}, strict=False)
    log.info(f"initial weights: {path} ({fmt}); {len(missing)} mask-head keys keep their initialisation, "
             f"{len(ignored)} track-head keys skipped")


def apply_trainable(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Freeze every parameter whose name matches none of ``patterns``; returns the trainable names."""
    names = []
    for name, param in model.named_parameters():
        train = any(fnmatch.fnmatchcase(name, p) for p in patterns)
        param.requires_grad_(train)
        if train:
            names.append(name)
    if not names:
        raise UserError(f"no parameter matches the trainable patterns {patterns}")
    return names


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> tuple[torch.optim.AdamW, list[ParamGroupConfig]]:
    """AdamW over the trainable parameters, one optimizer group per non-empty ParamGroupConfig (in order).

    Fused: one kernel per group and step instead of a dozen multi-tensor launches per group. On a GPU the step is
    bound by the host; under the profiler torch's default multi-tensor AdamW took ~18 ms of host time per step
    (``bench/profile_train.py``), but the fused one alone did not change a step measurably (docs/training.md).
    """
    groups = config.groups()
    if config.decay_matrices_only:       # each group, then its 1-D twin without decay (same schedule)
        groups = [twin for g in groups
                  for twin in (g, dataclasses.replace(g, name=f"{g.name}_nodecay", weight_decay=0.0))]
    members: list[list[torch.nn.Parameter]] = [[] for _ in groups]
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        index = next(i for i, g in enumerate(groups) if any(fnmatch.fnmatchcase(name, p) for p in g.params))
        if config.decay_matrices_only and param.dim() < 2:
            index += 1
        members[index].append(param)
    used = [(g, params) for g, params in zip(groups, members) if params]
    optimizer = torch.optim.AdamW([{"params": params, "lr": g.lr_start, "weight_decay": g.weight_decay,
                                    "name": g.name} for g, params in used],
                                  betas=tuple(config.adam_betas), eps=1e-8, fused=True)
    return optimizer, [g for g, _ in used]


def scheduled_lr(group: ParamGroupConfig, progress_fraction: float) -> float:
    """Linear warm-up lr_start -> lr over ``warmup``, then cosine lr -> lr_end (fvcore's 'rescaled' composite)."""
    p = min(max(progress_fraction, 0.0), 1.0)
    if group.warmup > 0 and p < group.warmup:
        return group.lr_start + (group.lr - group.lr_start) * p / group.warmup
    t = (p - group.warmup) / (1.0 - group.warmup) if group.warmup < 1 else 1.0
    return group.lr_end + 0.5 * (group.lr - group.lr_end) * (1.0 + math.cos(math.pi * t))


def clip_gradients(model: torch.nn.Module, max_norm: float) -> dict[str, float]:
    """Clip each module group's gradient to ``max_norm`` (L2); returns the norms before clipping."""
    norms = {}
    for prefix in CLIP_GROUPS:
        grads = [p for n, p in model.named_parameters() if n.startswith(prefix + ".") and p.grad is not None]
        if grads:
            norm = torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm > 0 else float("inf"))
            norms[prefix] = float(norm)
    return norms


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


@dataclass
class TrainState:
    """Counters that a checkpoint carries besides the weights and the optimizer."""

    step: int = 0                      # optimizer steps done
    sequences: int = 0                 # sequences seen
    frames: int = 0                    # frames seen
    train_seconds: float = 0.0         # wall time spent in training steps, all runs together
    skipped_steps: int = 0             # steps skipped for non-finite losses or gradients
    runs: int = 0                      # runs (chunks) that contributed
    weights_only_resumes: int = 0      # resumes that had to restart the optimizer moments
    rewarmup_from: int = -1            # step of the last weights-only resume (-1: none)
    ranks: int = 1                     # data-parallel processes of the latest run (data_parallel.py)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        set_cuda_rng_states(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    random.setstate(_tuples(state["python"]))


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def save_checkpoint(path: Path, model, optimizer, state: TrainState, config: TrainConfig) -> None:
    """Everything needed to continue exactly: fp32 weights, AdamW state, counters, RNG states, config."""
    payload = {"version": CHECKPOINT_VERSION, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "mask_step": float(model.aggregator.mask_step), "state": dataclasses.asdict(state),
               "rng": rng_state(), "config": config.to_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UserError(f"not a readable training checkpoint ({type(err).__name__})", path) from None
    if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
        raise UserError("not a training checkpoint of this version", path)
    missing = [k for k in ("config", "model", "optimizer", "state", "rng", "mask_step") if k not in payload]
    if missing:
        raise UserError(f"incomplete training checkpoint (no {', '.join(missing)})", path)
    for key, kind in (("config", "a mapping"), ("model", "a mapping"), ("optimizer", "a mapping")):
        if not isinstance(payload[key], dict):
            raise UserError(f"damaged training checkpoint (its {key} is a {type(payload[key]).__name__}, not "
                            f"{kind})", path)
    if isinstance(payload["mask_step"], bool) or not isinstance(payload["mask_step"], (int, float)):
        raise UserError(f"damaged training checkpoint (its mask_step is a {type(payload['mask_step']).__name__}, "
                        f"not a number)", path)
    train_state_from(payload["state"], path)
    return payload


def train_state_from(saved: Any, path: Path) -> TrainState:
    """The :class:`TrainState` of a checkpoint's (or exported weights') counters ``saved``: a mapping of its fields
    (``step`` at least; one it lacks keeps its default) to numbers. Anything else is a one-line :class:`UserError`
    naming ``path``."""
    fields = {f.name: type(f.default) for f in dataclasses.fields(TrainState)}

    def damaged(reason: str) -> UserError:
        what = "weights file" if Path(path).suffix == ".safetensors" else "training checkpoint"
        return UserError(f"damaged {what} (its training state {reason})", path)

    if not isinstance(saved, dict):
        raise damaged(f"is a {type(saved).__name__}, not a mapping of counters")
    unknown = sorted(str(k) for k in saved if k not in fields)
    if unknown:
        raise damaged(f"has unknown entries {', '.join(unknown)}")
    if "step" not in saved:
        raise damaged("has no step")
    for key, value in saved.items():
        kinds = (int,) if fields[key] is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise damaged(f"has {key} {value!r}, not {'an integer' if fields[key] is int else 'a number'}")
    return TrainState(**saved)


def compare_configs(saved: dict[str, Any], config: TrainConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """Keys whose values differ between a checkpoint's config and the resuming one (bookkeeping and ``ignore``
    left out). A key the saved config lacks (an option added since) counts as its default, which keeps the earlier
    behaviour."""
    current, defaults = config.to_dict(), TrainConfig().to_dict()
    return sorted(k for k in current if k not in BOOKKEEPING_FIELDS + ignore
                  and saved.get(k, defaults[k]) != current[k])


def draws_changed(saved_config: dict[str, Any], saved_ranks: int, config: TrainConfig, world: World) -> Optional[str]:
    """Why a resumed run's steps draw other batches than the run that wrote the checkpoint, or None. A step takes
    (processes x draws_per_step) draws (data_parallel.py), so 4 processes with 1 draw each continue exactly as 1
    process with 4 draws."""
    saved_draws = int(saved_config.get("draws_per_step", 1)) if isinstance(saved_config, dict) else 1
    before, now = saved_ranks * saved_draws, world.size * config.draws_per_step
    if before == now:
        return None
    return (f"the run that wrote it took {before} draw(s) per step ({saved_ranks} process(es) x {saved_draws}), this "
            f"one takes {now} ({world.size} x {config.draws_per_step}): each step now draws other batches, so the "
            f"run goes on but not as an exact continuation")


def export_weights(model, path: Path, config: TrainConfig, state: TrainState, extra: Optional[dict] = None,
                   int8: bool = False) -> None:
    """fp16 (or, with ``int8``, 8-bit matrices + fp16) safetensors in the format of
    :func:`stages.geometry.page4d.checkpoint.save_weights` plus training metadata (config, steps, data, time);
    :func:`train` can also resume from it (weights only)."""
    from stages.geometry.page4d.checkpoint import save_weights
    from stages.geometry.page4d.mask_head import mask_alpha_factor

    mc = model.config
    # The bias stays on at inference only if the schedule had not switched it off (hold_start = hold_end = 0 means
    # it never was on).
    bias_on = mc.mask_head and mask_alpha_factor(model.aggregator.mask_step, mc.mask_hold_start,
                                                 mc.mask_hold_end) > 0
    save_weights(model, path, mask_enabled=bias_on, mask_supervised=config.loss.mask_weight > 0,
                 dtype=torch.float16, int8=int8, train_config=config.to_dict(), train_state=dataclasses.asdict(state),
                 mask_step=float(model.aggregator.mask_step), data=describe_data(config), **(extra or {}))


def describe_data(config: TrainConfig) -> str:
    text = (f"synthetic dynamic scenes ({1 - config.object_fraction:.0%} rooms, {config.object_fraction:.0%} "
            f"objects; pipeline.synthetic, seed {config.seed}, S in [{config.frames_min}, "
            f"{config.frames_max}], {config.max_images} frames per step, aspect {config.aspect_min}-"
            f"{config.aspect_max}, FoV {config.fov_min_deg}-{config.fov_max_deg} deg, colour jitter "
            f"{config.color_jitter}/{config.hue_jitter})")
    if config.scenes and config.scene_fraction > 0:
        text += f" + {config.scene_fraction:.0%} of steps from {len(config.scenes)} scene folder(s)"
    return text


# ----------------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    out_dir: Path
    state: TrainState
    losses: list[float]                # total loss of every step this run executed (NaN for skipped steps)
    finished: bool                     # the schedule is complete
    stop_reason: str


def _device(name: str, world: World = data_parallel.SINGLE) -> torch.device:
    """The training device; a data-parallel rank on CUDA takes the GPU of its ``local_rank``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device=cuda but CUDA is not available")
    if name == "cuda" and world.distributed:
        if world.local_rank >= torch.cuda.device_count():
            raise UserError(f"rank {world.rank} wants GPU {world.local_rank}, but this host has "
                            f"{torch.cuda.device_count()}: start fewer processes per node")
        torch.cuda.set_device(world.local_rank)
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


def split_batch(batch: dict[str, torch.Tensor], chunks: int) -> list[dict[str, torch.Tensor]]:
    """Split every (B, ...) tensor of a batch along B into at most ``chunks`` non-empty chunks."""
    B = next(iter(batch.values())).shape[0]
    bounds = np.linspace(0, B, min(chunks, B) + 1).round().astype(int)
    return [{k: v[a:b] for k, v in batch.items()} for a, b in zip(bounds[:-1], bounds[1:])]


class CsvLog:
    """``train_log.csv``: a fixed header, one row per logged step; on resume, rows past the checkpoint are dropped."""

    def __init__(self, path: Path, columns: list[str], resume_step: Optional[int]):
        self.path, self.columns = path, columns
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
            self._rewrite(rows)
        elif resume_step is None or not path.is_file():
            self._rewrite([])

    def _rewrite(self, rows: list[dict]) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def train(config: TrainConfig, resume: Optional[Path] = None, data=None) -> TrainResult:
    """Run (or continue) training. ``data`` replaces the configured data stream (tests); its ``batch(index)`` is a
    pure function of the draw index. Started by torchrun (``WORLD_SIZE`` > 1), this process is one rank of a
    data-parallel run (``data_parallel.py``): every rank trains, rank 0 writes the files."""
    world = data_parallel.world_from_environment()
    device = _device(config.device, world)
    data_parallel.join(world, device)
    if not world.is_main:
        log.setLevel(logging.ERROR)        # rank 0 speaks for the run (the ranks agree on every warning it gives)
    try:
        return _train(config, resume, data, world, device)
    finally:
        data_parallel.leave(world)


def _train(config: TrainConfig, resume: Optional[Path], data, world: World, device: torch.device) -> TrainResult:
    from stages.geometry.page4d.train_data import TrainingData, targets_from_batch

    wall_start = time.perf_counter()
    out_dir = Path(config.out_dir)
    if resume is None and (out_dir / CHECKPOINT_NAME).exists():
        resume = _interrupted_run(out_dir, config)         # the same command again continues an unfinished run
    if resume is not None and not (resume / CHECKPOINT_NAME if resume.is_dir() else resume).is_file():
        raise UserError("checkpoint to resume from not found", resume)      # before out_dir is made
    out_dir.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    from stages.geometry.page4d import sdpa

    sdpa.set_policy(config.attention)

    model = build_model(config, device)
    trainable = apply_trainable(model, config.trainable)
    optimizer, groups = build_optimizer(model, config)
    state = TrainState()
    resumed_at: Optional[int] = None
    if resume is not None:
        resumed_at = _resume(Path(resume), model, optimizer, state, config, device, world)
        if state.step >= config.steps:
            raise UserError(f"is at step {state.step}, the end of a {config.steps}-step schedule: nothing to train "
                            f"(pass steps=N with N > {state.step} to continue it)", resume)
    state.runs += 1
    state.ranks = world.size
    model.train()
    # Every rank built and resumed the same model; rank 0's copy is the reference all the same.
    data_parallel.broadcast_parameters(list(model.parameters()) + list(model.buffers()), world)
    trainable_parameters = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    n_total = sum(p.numel() for p in model.parameters())
    log.info(f"model {model.config.name}: {n_total:,} parameters, {n_trainable:,} trainable "
             f"({len(trainable)} tensors); groups: "
             + ", ".join(f"{g.name} (lr {g.lr:g}, wd {g.weight_decay:g})" for g in groups))
    if world.distributed:
        log.info(f"data parallel: {world.size} processes ({device.type}), {config.draws_per_step} draw(s) of "
                 f"{config.max_images} frames each per step and process")
    if world.is_main:
        write_json(out_dir / "config.json", config.to_dict())

    columns = (["step", "elapsed_s", "S", "B", "seq_per_s", "frames_per_s", "gpu_mem_gb", "skipped"]
               + [f"lr_{g.name}" for g in groups] + list(LOSS_COLUMNS) + [f"grad_{p}" for p in CLIP_GROUPS])
    csv_log = CsvLog(out_dir / LOG_NAME, columns, resumed_at) if world.is_main else None
    mask_wanted = config.loss.mask_weight > 0
    use_autocast = device.type == "cuda" and config.autocast == "bf16"
    last_step = config.steps if config.stop_after <= 0 else min(config.steps, state.step + config.stop_after)
    budget_s = config.max_minutes * 60.0 if config.max_minutes > 0 else float("inf")
    # The batches of this run's draws, in order; drawn ahead by a data worker on a GPU (prefetch.py).
    indices = (data_parallel.draw_index(step, world, config.draws_per_step, draw)
               for step in range(state.step, last_step) for draw in range(config.draws_per_step))
    if data is not None:                                  # a caller's stream (tests): drawn when asked for
        stream = prefetch.batch_stream(lambda: data, indices, 0)
    else:
        depth = config.prefetch if config.prefetch >= 0 else (2 if device.type == "cuda" else 0)
        stream = prefetch.batch_stream(functools.partial(TrainingData, config, model.config, device), indices,
                                       depth, device, config.prefetch_worker)

    losses: list[float] = []
    window = {"seconds": 0.0, "sequences": 0, "frames": 0, "terms": {}, "count": 0}
    slowest_step = 0.0
    checkpoint_seconds = 0.0
    stop_reason = ""
    checkpoint_path = out_dir / CHECKPOINT_NAME

    def checkpoint(collective: bool = True) -> None:
        """Rank 0 writes checkpoint.pt; with ``collective`` (every rank calls it) the ranks first check that they
        hold rank 0's weights, and take them if not. An interrupted rank cannot count on the others and skips that."""
        nonlocal checkpoint_seconds
        t = time.perf_counter()
        gap = data_parallel.resynchronize_weights(model, world) if collective else 0.0
        if gap > 0:
            log.warning(f"step {state.step}: the data-parallel ranks' weights differed by up to {gap:.3g}; every "
                        f"rank now holds rank 0's")
        if world.is_main:
            save_checkpoint(checkpoint_path, model, optimizer, state, config)
        checkpoint_seconds = max(checkpoint_seconds, time.perf_counter() - t)

    last: dict[str, Any] = {}

    def write_row() -> None:
        """One CSV row: the averages of the steps since the previous row (window), then a fresh window."""
        nonlocal window
        n = max(window["count"], 1)
        row = {"step": state.step, "elapsed_s": state.train_seconds, **last,
               "seq_per_s": window["sequences"] / max(window["seconds"], 1e-9),
               "frames_per_s": window["frames"] / max(window["seconds"], 1e-9),
               "gpu_mem_gb": (torch.cuda.max_memory_allocated() / 2**30) if device.type == "cuda" else 0.0,
               "skipped": state.skipped_steps, **{k: v / n for k, v in window["terms"].items()}}
        if csv_log is not None:
            csv_log.write(row)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}", fps=f"{row['frames_per_s']:.0f}")
        log.debug(f"step {state.step}: loss {row.get('loss', float('nan')):.4f}, {row['frames_per_s']:.1f} frames/s")
        window = {"seconds": 0.0, "sequences": 0, "frames": 0, "terms": {}, "count": 0}

    # In a data-parallel run a signal (Ctrl-C, SIGTERM) reaches the ranks at different points, some inside a
    # collective: it only sets a flag, and the ranks stop together at the top of the next step.
    signalled = False

    def on_signal(signum, frame) -> None:
        nonlocal signalled
        signalled = True

    handlers = ({sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
                if world.distributed else {})
    bar = (progress(range(state.step, last_step), desc=f"train {model.config.name}", total=last_step - state.step,
                    unit="step") if world.is_main else range(state.step, last_step))
    try:
        for _ in bar:
            step_start = time.perf_counter()
            # Stop cleanly if one more step and a checkpoint might not fit in the budget (of any rank), or if a
            # rank of a data-parallel run was signalled (the ranks stop together, at the top of a step).
            late = time.perf_counter() - wall_start + 1.5 * slowest_step + 2.0 * checkpoint_seconds + 5.0 > budget_s
            code = data_parallel.max_over_ranks(2.0 if signalled else 1.0 if late else 0.0, world, device)
            if code == 2.0:
                stop_reason = "interrupted"
                break
            if code == 1.0:
                stop_reason = f"time budget of {config.max_minutes:g} min"
                break
            lrs = {}
            for param_group, group in zip(optimizer.param_groups, groups):
                lr = scheduled_lr(group, (state.step - config.schedule_start)
                                  / (config.steps - config.schedule_start))
                if state.rewarmup_from >= 0 and config.rewarmup_steps > 0:
                    lr *= min(1.0, (state.step - state.rewarmup_from + 1) / config.rewarmup_steps)
                param_group["lr"] = lrs[f"lr_{group.name}"] = lr

            optimizer.zero_grad(set_to_none=True)
            # This process's draws: forward, loss and backward per accumulation chunk; the loss terms of each draw
            # are summed (and counted) for the log. The gradient is the mean over every rank's draws.
            sequences, frames, finite = 0, 0, True
            term_sums = torch.zeros(2, len(LOSS_COLUMNS), dtype=torch.float64)      # (sums, draws having it)
            mask_clock = model.aggregator.mask_step     # counts one rank's forwards: every draw starts from it
            for draw in range(config.draws_per_step):
                model.aggregator.mask_step = mask_clock
                index, batch = next(stream)
                if index != data_parallel.draw_index(state.step, world, config.draws_per_step, draw):
                    raise RuntimeError(f"step {state.step}: the data stream is out of order (batch {index})")
                B, S = batch["images"].shape[:2]
                sequences, frames = sequences + B, frames + B * S
                chunks = split_batch(batch, config.accum_steps)
                draw_terms: dict[str, float] = {}
                for chunk in chunks:
                    targets = targets_from_batch(chunk)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
                        predictions = model(chunk["images"], want_mask_score=mask_wanted)
                    if mask_wanted and "mask_logits" not in predictions:
                        predictions["mask_logits"] = score_to_logit(predictions["mask_score"])
                    total, terms = objective(predictions, targets, config.loss)
                    if not torch.isfinite(total):
                        finite = False
                        break
                    (total / (len(chunks) * config.draws_per_step)).backward()
                    for key, value in terms.items():
                        draw_terms[key] = draw_terms.get(key, 0.0) + float(value.detach()) / len(chunks)
                if not finite:
                    break
                for i, key in enumerate(LOSS_COLUMNS):
                    if key in draw_terms:
                        term_sums[0, i] += draw_terms[key]
                        term_sums[1, i] += 1
            finite = data_parallel.every_rank(finite, world, device)
            if finite:
                data_parallel.average_gradients(trainable_parameters, world)
            counters = torch.cat([torch.tensor([sequences, frames], dtype=torch.float64), term_sums.reshape(-1)])
            if world.distributed:           # NCCL reduces CUDA tensors only; one process needs no copy at all
                counters = data_parallel.sum_over_ranks(counters.to(device), world).cpu()
            sequences, frames = int(counters[0]), int(counters[1])
            sums, counts = counters[2:].reshape(2, -1).tolist()
            step_terms = {key: total_ / count for key, total_, count in zip(LOSS_COLUMNS, sums, counts) if count}
            grad_norms = clip_gradients(model, config.clip_grad_norm) if finite else {}
            if finite and all(math.isfinite(v) for v in grad_norms.values()):
                optimizer.step()
                losses.append(step_terms["loss"])
            else:
                optimizer.zero_grad(set_to_none=True)
                state.skipped_steps += 1
                losses.append(float("nan"))
                log.warning(f"step {state.step}: non-finite loss or gradient, step skipped")
            state.step += 1
            state.sequences += sequences
            state.frames += frames

            if device.type == "cuda" and (state.step % config.log_every == 0):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - step_start
            state.train_seconds += seconds
            slowest_step = max(slowest_step, seconds)
            window["seconds"] += seconds
            window["sequences"] += sequences
            window["frames"] += frames
            window["count"] += 1
            for key, value in step_terms.items():
                window["terms"][key] = window["terms"].get(key, 0.0) + value

            last = {"S": S, "B": B, **lrs, **{f"grad_{k}": v for k, v in grad_norms.items()}}
            if state.step % config.log_every == 0 or state.step == last_step:
                write_row()
            if state.step % config.checkpoint_every == 0 and state.step < last_step:
                checkpoint()
    except (KeyboardInterrupt, StageInterrupted):
        log.warning(f"interrupted at step {state.step}: writing the checkpoint")
        checkpoint(collective=False)
        raise
    finally:
        batch = chunks = chunk = predictions = targets = None     # the data process's tensors, released first
        stream.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if hasattr(bar, "close"):
            bar.close()

    if window["count"]:
        write_row()                    # the steps since the last row (a run stopped by its time budget)
    checkpoint()
    if stop_reason == "interrupted":
        log.warning(f"interrupted at step {state.step}: checkpoint written")
        raise StageInterrupted("interrupted")
    finished = state.step >= config.steps
    stop_reason = stop_reason or ("schedule complete" if finished else f"stop_after: {config.stop_after} steps")
    if not world.is_main:
        return TrainResult(out_dir, state, losses, finished, stop_reason)
    export_path = out_dir / "export" / f"{model.config.name}.safetensors"
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    extra = {"device": device_name, "finished": finished}
    export_weights(model, export_path, config, state, extra)
    final_export = config.export if finished and config.export else None
    if final_export and not _may_replace(Path(final_export), config):
        # Weights of another recipe (e.g. the bundled file that the page4d-tiny recipe names, under a changed
        # steps= or data setting) are not replaced: this run's weights stay in out_dir/export/.
        log.warning(f"not overwriting {final_export}: it holds weights of another recipe (or none this project "
                    f"wrote); this run's weights are in {export_path} (copy them there to replace the file)")
        final_export = None
    if final_export:
        export_weights(model, Path(final_export), config, state, extra, int8=config.export_format == "int8")
        log.info(f"exported the final weights ({config.export_format}) to {final_export}")
    summary = {"stop_reason": stop_reason, "finished": finished, "state": dataclasses.asdict(state),
               "run_wall_s": time.perf_counter() - wall_start, "device": device_name,
               "torch": torch.__version__, "parameters": n_total, "trainable_parameters": n_trainable,
               "data_parallel_processes": world.size, "draws_per_step": config.draws_per_step,
               "checkpoint": str(checkpoint_path), "export": str(export_path),
               "final_export": final_export, "final_export_format": config.export_format if final_export else None,
               "resumed_from": str(resume) if resume else None}
    write_json(out_dir / "summary.json", summary)
    log.info(f"{stop_reason}: step {state.step}/{config.steps}, {state.train_seconds / 60:.1f} min of training in "
             f"total; checkpoint {checkpoint_path}")
    return TrainResult(out_dir, state, losses, finished, stop_reason)


def score_to_logit(score: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The mask head's score m = sigmoid(logit) - 0.5 back to its logit: log((0.5 + m) / (0.5 - m))."""
    p = (score.float() + 0.5).clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)


def _may_replace(path: Path, config: TrainConfig) -> bool:
    """Whether the final export may write ``path``: it does not exist, or it holds weights that this recipe wrote
    (its ``train_config`` metadata agrees with ``config`` but for bookkeeping fields)."""
    if not path.exists():
        return True
    from stages.geometry.page4d.checkpoint import read_metadata

    saved = read_metadata(path).get("train_config")
    return isinstance(saved, dict) and not compare_configs(saved, config)


def _interrupted_run(out_dir: Path, config: TrainConfig) -> Path:
    """The checkpoint of ``out_dir``, when the same command may continue it: an unfinished run of the same recipe
    (bookkeeping fields aside). Anything else there is refused rather than overwritten."""
    checkpoint = out_dir / CHECKPOINT_NAME
    payload = load_checkpoint(checkpoint)
    differing = compare_configs(payload["config"], config, ignore=("draws_per_step",))
    step = int(payload["state"].get("step", 0))
    if differing or step >= config.steps:
        why = (f"a run of another recipe (differs in {', '.join(differing)})" if differing
               else f"a finished {config.steps}-step schedule")
        raise UserError(f"already holds a training run ({CHECKPOINT_NAME}, {why}): continue it with --resume "
                        f"{checkpoint} and steps=N, or choose another out_dir", out_dir)
    log.info(f"{out_dir} holds an unfinished run of this recipe (step {step}/{config.steps}): continuing it")
    return checkpoint


def _resume(path: Path, model, optimizer, state: TrainState, config: TrainConfig, device: torch.device,
            world: World = data_parallel.SINGLE) -> int:
    """Restore from a full checkpoint (exact) or from exported weights (weights only). Returns the step."""
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise UserError("checkpoint to resume from not found", path)
    if path.suffix == ".safetensors":
        return _resume_weights_only(path, model, state, config, world)
    payload = load_checkpoint(path)
    differing = compare_configs(payload["config"], config, ignore=("draws_per_step",))
    if differing:
        log.warning(f"resuming with a different config ({', '.join(differing)}): the run is not an exact "
                    f"continuation")
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[1:2] or [str(err)[:200]]
        raise UserError(f"checkpoint does not fit the configured model ({first[0].strip().rstrip('.')}); a "
                        "different model= than the run that wrote it?", path) from None
    try:
        optimizer.load_state_dict(payload["optimizer"])
        for group in optimizer.param_groups:      # checkpoints before the fused optimizer saved fused=None
            group["fused"], group["foreach"] = True, None
    except (ValueError, KeyError, TypeError, IndexError):
        raise UserError("checkpoint's optimizer state does not fit this config's trainable parameters or "
                        "parameter groups (changed trainable=, param_groups= or decay_matrices_only=?); resume "
                        "from the run's exported weights instead (weights only)", path) from None
    model.aggregator.mask_step = payload["mask_step"]
    restored = train_state_from(payload["state"], path)
    for f in dataclasses.fields(TrainState):
        setattr(state, f.name, getattr(restored, f.name))
    try:
        set_rng_state(payload["rng"])
    except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as err:
        raise UserError(f"damaged training checkpoint (its random states: {type(err).__name__})", path) from None
    change = draws_changed(payload["config"], state.ranks, config, world)
    if change:
        log.warning(f"{path}: {change}")
    log.info(f"resumed from {path} at step {state.step} (exact: weights, optimizer, RNG states)")
    return state.step


def _resume_weights_only(path: Path, model, state: TrainState, config: TrainConfig,
                         world: World = data_parallel.SINGLE) -> int:
    from stages.geometry.page4d.checkpoint import load_state, read_checkpoint

    tensors, fmt, metadata = read_checkpoint(path)
    if "train_state" not in metadata:
        raise UserError("these weights carry no training state: use them as init_weights instead", path)
    load_state(model, {k: v.float() for k, v in tensors.items()}, str(path))
    restored = train_state_from(metadata["train_state"], path)
    for f in dataclasses.fields(TrainState):
        setattr(state, f.name, getattr(restored, f.name))
    state.weights_only_resumes += 1
    state.rewarmup_from = state.step
    model.aggregator.mask_step = float(metadata.get("mask_step", 0.0))
    if str(metadata.get("weights_format", "float16")).startswith("int8"):
        log.warning(f"{path} holds 8-bit weights: training continues from their dequantized values (each within "
                    f"half an 8-bit step of the trained ones), not from the float weights they were made from")
    differing = compare_configs(metadata.get("train_config", {}), config, ignore=("draws_per_step",))
    if differing:
        log.warning(f"resuming with a different config ({', '.join(differing)})")
    change = draws_changed(metadata.get("train_config", {}), state.ranks, config, world)
    if change:
        log.warning(f"{path}: {change}")
    log.info(f"resumed weights only from {path} at step {state.step}: {metadata.get('weights_format', 'float16')} "
             f"weights, fresh AdamW moments, learning rates ramped up again over {config.rewarmup_steps} steps")
    return state.step


def train_command(args: argparse.Namespace) -> int:
    """``page4dgs train-model --config NAME [--resume CKPT] [key=value ...]``."""
    config = load_train_config(args.config, getattr(args, "overrides", []) or [])
    result = train(config, resume=args.resume)
    if not data_parallel.world_from_environment().is_main:
        return 0
    print(json.dumps({"out_dir": str(result.out_dir), "step": result.state.step, "steps": config.steps,
                      "finished": result.finished, "stop_reason": result.stop_reason}))
    return 0
