"""Operators per optimize-stage training step, counted on the CPU: the host-side cost a GPU step pays.

    python -m bench.optimize_ops [--models bases mlp planes none] [--densify] [--set optimize.KEY=VALUE ...]
                                 [--preset dnerf --rgba] [--parts] [--json optimize_ops_cpu.json]

On an H100/H200 a training step at 400x400 with 100k Gaussians is bound by the host (Python and ~400 kernel
launches), so what a change to the trainer buys shows in the number of operators a step dispatches and the host
synchronisations among them. Both are counted here, without a GPU, with a ``TorchDispatchMode`` over steady-state
training steps of the speed benchmark's setting (``bench.optimize_bench.speed_config``) at a small size:

- ``ops``: every aten operator the step dispatches (forward, backward, optimizer, bookkeeping), rasterizer excluded;
- ``kernels``: those that run a kernel (views - ``view``, ``expand``, ``slice``, ... - only make tensor metadata);
- ``syncs``: operators that wait for the GPU on CUDA (``item``, ``nonzero``, boolean-mask indexing, ...).

The rasterizer is the same for every model and is gsplat's on the GPU, so it is replaced by two opaque stand-ins
(projection, and colour + compositing; the torch backend inside, not counted) mirroring gsplat's structure:
``meta["means2d"]`` is an intermediate with a gradient, so densification statistics work unchanged. Counts do not
depend on the number of Gaussians or the resolution; optimizer steps take the CUDA path (fused Adam) even on the CPU,
and so does the motion regulariser (``optimize.shared_motion`` 'always', what its default 'cuda' does on a GPU).

``--preset NAME --rgba`` counts a preset's step instead (its losses and regularisers, on views with alpha masks:
what a D-NeRF-style scene trains with), and ``--parts`` what each part of the step costs (the step with the part on
minus with it off). On an H200 a step costs about 29 us of host time per device launch in both the speed setting
and the 100-frame scene (docs/gaussians.md, "The cost of a training step").
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import sys
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Optional
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from stages.optimize.fused_adam import LeanFusedAdam   # imported before any patching of torch.optim.Adam

# Operators that make the host wait for the device when their inputs live on a GPU. ``lift_fresh`` is a tensor made
# from Python data (``torch.tensor``, ``as_tensor``): on CUDA it is then a blocking host-to-device copy.
SYNCING = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim",
           "unique_consecutive", "repeat_interleave", "masked_scatter", "lift_fresh"}
# Profiler markers (``record_function`` in optimizer.step and zero_grad): host work, no kernel.
MARKERS = {"_record_function_enter_new", "_record_function_exit"}


def _is_view(func) -> bool:
    """True for operators whose result aliases an input without writing to it (no kernel on any device)."""
    return any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)


class OpCounter(TorchDispatchMode):
    """Counts dispatched aten operators by name (``counts``), skipping whatever runs inside :meth:`paused`."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()
        self.views: set[str] = set()            # names of the operators seen that only make views
        self._pause_depth = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._pause_depth == 0:
            name = func._schema.name.split("::")[-1]
            self.counts[name] += 1
            if _is_view(func):
                self.views.add(name)
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._pause_depth += 1
        try:
            yield
        finally:
            self._pause_depth -= 1

    def summary(self, counts: Optional[dict[str, float]] = None) -> dict[str, Any]:
        """ops, kernels (ops less views and profiler markers), syncs and the syncing operators, of ``counts``
        (default: everything counted so far)."""
        counts = self.counts if counts is None else counts
        total = sum(counts.values())
        no_kernel = sum(v for k, v in counts.items() if k in self.views or k in MARKERS)
        syncs = {k: v for k, v in counts.items() if k in SYNCING and v}
        return {"ops": round(total, 1), "kernels": round(total - no_kernel, 1), "syncs": round(sum(syncs.values()), 1),
                "sync_ops": syncs}


# ----------------------------------------------------------------------------------------------------------------
# The opaque rasterizer stand-in


class _Opaque(torch.autograd.Function):
    """``fn(*inputs)`` as one autograd node whose forward and backward (by recomputation) are not counted."""

    @staticmethod
    def forward(ctx, counter: OpCounter, fn: Callable, *inputs):
        with counter.paused():
            outputs = tuple(fn(*inputs))
        ctx.counter, ctx.fn = counter, fn
        ctx.save_for_backward(*inputs)
        ctx.mark_non_differentiable(*[o for o in outputs if not o.is_floating_point()])
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        needs = ctx.needs_input_grad[2:]
        with ctx.counter.paused(), torch.enable_grad():
            inputs = [x.detach().requires_grad_(need) for x, need in zip(ctx.saved_tensors, needs)]
            outputs = ctx.fn(*inputs)
            pairs = [(o, g) for o, g in zip(outputs, grads) if g is not None and o.requires_grad]
            wanted = [x for x in inputs if x.requires_grad]
            found = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], allow_unused=True))
        return (None, None, *[next(found) if need else None for need in needs])


def opaque_rasterization(counter: OpCounter) -> Callable:
    """A drop-in ``rasterization`` (RGB / RGB+ED, SH colours, one camera batch) that counts as two operators in the
    forward and two in the backward, like gsplat's projection and rasterization kernels."""
    from stages.optimize.rasterize.projection import camera_centers, project_gaussians
    from stages.optimize.rasterize.sh import sh_to_color
    from stages.optimize.rasterize.torch_backend import rasterize_to_pixels

    def rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, near_plane=0.01,
                      far_plane=1e10, eps2d=0.3, sh_degree=None, backgrounds=None, render_mode="RGB",
                      rasterize_mode="classic", absgrad=False, backend="auto"):
        # the classic mode only (every preset's): the antialiased compensation is not replayed here
        assert render_mode in ("RGB", "RGB+ED") and sh_degree is not None and rasterize_mode == "classic"

        def project(means, quats, scales, opacities, viewmats, Ks):
            p = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, near_plane,
                                  far_plane, eps2d)
            return p.means2d, p.conics, p.depths, p.opacities, p.radii

        def render(means2d, conics, depths, opacities2d, means, sh, viewmats, background, radii):
            directions = means[None] - camera_centers(viewmats)[:, None]                   # [C, N, 3]
            rgb = sh_to_color(sh_degree, directions, sh.expand(len(viewmats), *sh.shape))  # [C, N, 3]
            pixels, alphas = rasterize_to_pixels(means2d, conics, torch.cat([rgb, depths[..., None]], -1),
                                                 opacities2d, radii, depths, width, height,
                                                 backgrounds=torch.cat([background, background[:, :1] * 0], -1))
            return pixels, alphas

        background = backgrounds if backgrounds is not None else colors.new_zeros(len(viewmats), 3)
        means2d, conics, depths, opacities2d, radii = _Opaque.apply(counter, project, means, quats, scales,
                                                                    opacities, viewmats, Ks)
        pixels, alphas = _Opaque.apply(counter, render, means2d, conics, depths, opacities2d, means, colors,
                                       viewmats, background, radii)
        if render_mode == "RGB":
            pixels = pixels[..., :3]
        meta = {"means2d": means2d, "radii": radii, "depths": depths, "conics": conics, "opacities": opacities2d,
                "width": width, "height": height, "n_cameras": len(viewmats), "n_batches": 1, "gaussian_ids": None,
                "camera_ids": None, "batch_ids": None, "backend": "opaque"}
        return pixels, alphas, meta

    return rasterization


def _cuda_adam(params, **kwargs):
    """What build_optimizer makes on CUDA (LeanFusedAdam, its default), for a trainer running on the CPU."""
    kwargs = {k: v for k, v in kwargs.items() if k not in ("fused", "foreach")}
    return LeanFusedAdam(params, **kwargs)


@contextlib.contextmanager
def cuda_optimizer_path() -> Iterator[None]:
    """Adam optimizers built meanwhile are LeanFusedAdam, as build_optimizer's default makes them on CUDA. Since
    the forty-third session it makes them on the CPU too; the patch still covers ``lean_adam=false`` and any other
    ``torch.optim.Adam`` built while it is active."""
    with mock.patch.object(torch.optim, "Adam", _cuda_adam):
        yield


# ----------------------------------------------------------------------------------------------------------------


def rgba_views(n: int, size: int) -> list:
    """:func:`bench.optimize_bench.orbit_views` with an alpha mask each (a centred square, half the image wide), so
    that the terms of RGBA scenes (random background, silhouette and mask losses) run."""
    from bench.optimize_bench import orbit_views

    alpha = torch.zeros(size, size)
    alpha[size // 4:3 * size // 4, size // 4:3 * size // 4] = 1.0
    return [dataclasses.replace(v, alpha=alpha.clone(), has_alpha=True) for v in orbit_views(n, size, "cpu")]


def preset_step_config(preset: str, kind: Optional[str], iterations: int, log_every: int, **overrides):
    """A preset's training settings (``configs/NAME.yaml``; its deformation unless ``kind``), with the speed
    setting's bookkeeping: SH degree 3 from step 3, no densification, no checkpoint before the end."""
    from pipeline.config import load_config

    cfg = load_config(preset).optimize
    settings = dict(iterations=iterations, log_every=log_every, sh_degree=3, sh_degree_interval=1, densify=False,
                    checkpoint_every=0, backend="auto", **({"deformation": kind} if kind else {}))
    return dataclasses.replace(cfg, **{**settings, **overrides})


# The parts of a step --parts measures: (name, the override that turns the part off).
PARTS = (("motion regulariser", "motion_lambda", 0.0), ("silhouette loss", "silhouette_lambda", 0.0),
         ("D-SSIM", "ssim_lambda", 0.0), ("scale regulariser", "scale_lambda", 0.0),
         ("opacity regulariser", "opacity_lambda", 0.0), ("random background", "background", "white"),
         ("mask loss", "alpha_lambda", 0.0), ("depth loss", "depth_lambda", 0.0))


def count_step_ops(kind: str, *, gaussians: int = 2000, size: int = 48, densify: bool = False,
                   log_every: int = 10, preset: Optional[str] = None, rgba: bool = False,
                   **overrides) -> dict[str, Any]:
    """Operators per training step of ``kind``: the ops of a run of 3 x ``log_every`` steps minus those of a run of
    2 x ``log_every`` steps, divided by ``log_every`` (set-up cancels; one log flush is included, as in training).
    The counted steps come after the first epoch over the 20 views (``log_every`` >= 10), so that what is computed
    once per view time is not counted.

    densify: count steps inside the densification window (statistics every step; no growth or pruning falls in
    the counted steps, whose count depends on the data). preset: the training settings of that preset instead of
    the speed setting's defaults (``kind`` '' keeps the preset's deformation); rgba: views with alpha masks."""
    from bench.optimize_bench import orbit_views, random_gaussians, speed_config
    from stages.optimize import rasterize as rasterize_module
    from stages.optimize.trainer import TrainData, train

    if log_every < 10:
        raise ValueError("log_every must be at least 10: the counted steps must follow the first epoch")
    initial = random_gaussians(gaussians)
    views = rgba_views(20, size) if rgba else orbit_views(20, size, "cpu")

    def config(iterations: int, **extra):
        extra.setdefault("shared_motion", "always")               # as on a GPU ('cuda', the default, there)
        if preset is None:
            return speed_config(kind, iterations, **extra)
        return preset_step_config(preset, kind, iterations, extra.pop("log_every", 10), **extra)

    counter = OpCounter()
    runs: list[dict[str, int]] = []
    workdir = Path(tempfile.mkdtemp(prefix="optimize_ops_"))
    try:
        with cuda_optimizer_path():       # fills process-wide caches (the SSIM window) before counting
            train(config(2, **overrides), TrainData(views=views), initial, workdir / "warm-up", device="cpu",
                  resume=False)
        for iterations in (2 * log_every, 3 * log_every):
            cfg = config(iterations, log_every=log_every, **overrides)
            if densify:      # statistics every step from step 0, refinement only after the counted steps
                cfg.densify, cfg.refine_start, cfg.refine_stop, cfg.reset_every = True, 10**6 - 1, 10**6, 0
            counter.counts.clear()
            with cuda_optimizer_path(), \
                    mock.patch.object(rasterize_module, "rasterization", opaque_rasterization(counter)), counter:
                train(cfg, TrainData(views=views), initial, workdir / f"run{iterations}", device="cpu",
                      resume=False)
            runs.append(dict(counter.counts))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    short, long = runs
    per_step = {k: (long.get(k, 0) - short.get(k, 0)) / log_every for k in set(short) | set(long)}
    per_step = {k: v for k, v in sorted(per_step.items(), key=lambda kv: (-kv[1], kv[0])) if v}
    return {"model": kind or config(1).deformation, **counter.summary(per_step), "by_op": per_step}


def count_parts(kind: str, **settings) -> list[dict[str, Any]]:
    """What each part of a step (:data:`PARTS`) costs: the step's operators with the part on minus with it off,
    for the parts that are on in the setting (``settings`` as :func:`count_step_ops` takes them)."""
    from bench.optimize_bench import speed_config

    preset = settings.get("preset")
    overrides = {k: v for k, v in settings.items() if k not in ("gaussians", "size", "densify", "log_every",
                                                                 "preset", "rgba")}
    base = (preset_step_config(preset, kind, 1, 10, **overrides) if preset else speed_config(kind, 1, **overrides))
    whole = count_step_ops(kind, **settings)
    rows = []
    for name, key, off in PARTS:
        if getattr(base, key) == off:
            continue
        without = count_step_ops(kind, **{**settings, key: off})
        rows.append({"part": name, "off": f"optimize.{key}={off}", "ops": round(whole["ops"] - without["ops"], 1),
                     "kernels": round(whole["kernels"] - without["kernels"], 1)})
    return [{"part": "whole step", "off": "", "ops": whole["ops"], "kernels": whole["kernels"]}, *rows]


def optimize_overrides(texts: list[str]) -> dict[str, Any]:
    """``optimize.KEY=VALUE`` overrides (checked and typed as the pipeline's config does) -> the OptimizeConfig
    fields they change, for :func:`count_step_ops`."""
    from pipeline.config import apply_overrides, default_config
    from pipeline.errors import UserError
    from stages.optimize.config import OptimizeConfig

    for text in texts:
        if not text.startswith("optimize."):
            raise UserError(f"--set {text}: only optimize.KEY=VALUE settings apply to a training step")
    config, base = default_config(), OptimizeConfig()
    apply_overrides(config, texts)
    return {f.name: getattr(config.optimize, f.name) for f in dataclasses.fields(base)
            if getattr(config.optimize, f.name) != getattr(base, f.name)}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["bases", "mlp", "planes", "none"])
    parser.add_argument("--densify", action="store_true", help="count steps inside the densification window")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="optimize.KEY=VALUE",
                        help="change a training setting for every model counted (repeatable), e.g. "
                             "optimize.motion_parts=coefficients")
    parser.add_argument("--preset", help="the training settings of configs/NAME.yaml instead of the speed "
                        "setting's (e.g. dnerf); --models '' keeps the preset's deformation")
    parser.add_argument("--rgba", action="store_true", help="views with alpha masks (the terms of RGBA scenes run)")
    parser.add_argument("--parts", action="store_true", help="also what each part of the step costs (the step "
                        "with the part on minus with it off: motion regulariser, silhouette, D-SSIM, ...)")
    parser.add_argument("--top", type=int, default=12, help="operators listed per model")
    parser.add_argument("--json", default="", help="also write bench/results/<name>")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from pipeline.errors import UserError

    try:
        overrides = optimize_overrides(args.overrides)
    except UserError as err:
        print(f"optimize_ops: {err}", file=sys.stderr)
        return 2
    settings = dict(densify=args.densify, preset=args.preset, rgba=args.rgba, **overrides)
    try:
        rows = [count_step_ops(kind, **settings) for kind in args.models]
    except UserError as err:                                           # an unknown preset
        print(f"optimize_ops: {err}", file=sys.stderr)
        return 2
    parts = {row["model"]: count_parts(kind, **settings) for kind, row in zip(args.models, rows)} if args.parts \
        else {}
    setting = f"the {args.preset} preset's settings" if args.preset else "speed setting"
    print(f"\nOperators per training step ({setting}{', RGBA views' if args.rgba else ''}"
          f"{', densification statistics on' if args.densify else ''}"
          f"{''.join(', ' + o for o in args.overrides)}; rasterizer = 2 forward + 2 backward stand-ins, not counted)")
    print(f"{'model':12s} {'ops':>7s} {'kernels':>8s} {'syncs':>6s}")
    for r in rows:
        print(f"{r['model']:12s} {r['ops']:7.1f} {r['kernels']:8.1f} {r['syncs']:6.1f}  "
              + ", ".join(f"{k} {v:g}" for k, v in r["sync_ops"].items()))
    for model, table in parts.items():
        print(f"\n{model}, by part (the step with the part on minus with it off)")
        print(f"{'part':22s} {'ops':>7s} {'kernels':>8s}  turned off by")
        for p in table:
            print(f"{p['part']:22s} {p['ops']:7.1f} {p['kernels']:8.1f}  {p['off']}")
    for r in rows:
        print(f"\n{r['model']}: " + ", ".join(f"{k} {v:g}" for k, v in list(r["by_op"].items())[:args.top]))
    if args.json:
        from bench.common import RESULTS, environment

        out = RESULTS / args.json
        out.write_text(json.dumps({"environment": environment("cpu"), "densify": args.densify,
                                   "preset": args.preset, "rgba": args.rgba, "overrides": args.overrides,
                                   "models": rows, "parts": parts}, indent=1) + "\n")
        print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
