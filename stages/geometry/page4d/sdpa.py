"""Scaled dot-product attention with the fastest working kernel for each shape.

On CUDA, PyTorch's SDPA can run cuDNN, FlashAttention-2 or memory-efficient kernels. Which one is fastest depends
on the GPU, the torch/cuDNN build and the shape (on an H100, cuDNN's Hopper kernels usually beat FlashAttention-2
for long sequences). With the ``auto`` policy, the first call of each shape class times every kernel that accepts
it on the real inputs, checks its output against the first kernel that ran, and keeps the fastest for the rest of
the process. Elsewhere (CPU, float64) the call is plain ``F.scaled_dot_product_attention``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger("page4dgs.geometry.sdpa")

POLICIES = ("auto", "default", "cudnn", "flash", "efficient", "math")
_policy = "auto"
_chosen: dict[tuple, Optional[str]] = {}
_refused: dict[tuple, dict[str, str]] = {}


def set_policy(name: str) -> None:
    """'auto' (time the kernels once per shape class), 'default' (let PyTorch pick), or one kernel by name."""
    global _policy
    if name not in POLICIES:
        raise ValueError(f"unknown attention kernel policy {name!r} (one of {', '.join(POLICIES)})")
    _policy = name


def chosen_kernels() -> dict[str, Optional[str]]:
    """What ``auto`` picked so far, for reports: {'dtype/D/batch*heads/Lq/Lk': kernel}."""
    return {"/".join(str(p) for p in key[1:]): value for key, value in _chosen.items()}


def refused_kernels() -> dict[str, dict[str, str]]:
    """Kernels ``auto`` could not use, with the first line of the reason: {'dtype/D/...': {kernel: reason}}."""
    return {"/".join(str(p) for p in key[1:]): value for key, value in _refused.items()}


def _backends() -> dict[str, object]:
    try:
        from torch.nn.attention import SDPBackend
    except ImportError:  # torch < 2.3
        return {}
    names = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION",
             "math": "MATH"}
    return {name: getattr(SDPBackend, attr) for name, attr in names.items() if hasattr(SDPBackend, attr)}


def _run(kernel: str, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    from torch.nn.attention import sdpa_kernel

    with sdpa_kernel(_backends()[kernel]):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def _bucket(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _autotune(key: tuple, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Optional[str]:
    """The fastest kernel that accepts this shape class and agrees with the first one that ran (None: none did).
    PyTorch warns about every kernel that refuses the inputs (say cuDNN and FlashAttention for float32); those
    warnings are this probe's own business, not the user's: the reasons are kept in :func:`refused_kernels`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _time_kernels(key, q, k, v, scale)


def _time_kernels(key: tuple, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Optional[str]:
    reference: Optional[Tensor] = None
    timings: dict[str, float] = {}
    for kernel in ("cudnn", "flash", "efficient"):
        if kernel not in _backends():
            continue
        try:
            out = _run(kernel, q, k, v, scale)
            if reference is None:
                reference = out.float()
            else:
                error = (out.float() - reference).abs().max().item()
                if not error <= 2e-2 * max(reference.abs().max().item(), 1.0):
                    log.warning(f"attention kernel {kernel} disagrees with the reference ({error:.3g}); skipped")
                    _refused.setdefault(key, {})[kernel] = f"disagrees with the first kernel by {error:.3g}"
                    continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(2):
                _run(kernel, q, k, v, scale)
            end.record()
            end.synchronize()
            timings[kernel] = start.elapsed_time(end) / 2
        except RuntimeError as err:  # the kernel does not accept this shape, dtype or GPU
            message = str(err).strip()
            _refused.setdefault(key, {})[kernel] = message.splitlines()[0][:200] if message else "refused"
            log.debug(f"attention kernel {kernel} unavailable for {key}: {err}")
    best = min(timings, key=timings.get) if timings else None
    log.debug(f"attention kernels for {key}: {timings} -> {best}")
    return best


def _autocast_dtype() -> Optional[torch.dtype]:
    try:
        return torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
    except TypeError:  # torch < 2.4
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale) v. q: (B, H, Lq, D), k, v: (B, H, Lk, D) -> (B, H, Lq, D)."""
    if not q.is_cuda or _policy == "default" or not _backends():
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    dtype = _autocast_dtype() or q.dtype
    if dtype in (torch.float16, torch.bfloat16):
        # One dtype and a dense layout for all three: under autocast q and k arrive in float32 (qk-norm, RoPE) and v
        # as a strided view of the fused qkv projection; cuDNN's kernels refuse such mixed strides.
        q, k, v = (t.to(dtype).contiguous() if t.dtype in (torch.float32, torch.float16, torch.bfloat16) else t
                   for t in (q, k, v))                                # autocast never casts float64 either
    if _policy != "auto":
        if _policy in ("cudnn", "flash") and dtype not in (torch.float16, torch.bfloat16):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)  # these kernels take 16-bit inputs only
        return _run(_policy, q, k, v, scale)
    key = (q.device.index, str(dtype).replace("torch.", ""), q.shape[-1], q.shape[0] * q.shape[1],
           _bucket(q.shape[2]), _bucket(k.shape[2]))
    if key not in _chosen:
        _chosen[key] = _autotune(key, q, k, v, scale)
    kernel = _chosen[key]
    if kernel is None:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return _run(kernel, q, k, v, scale)
