"""The approximate float32 instructions of gsplat's CUDA build, for the projection's parity with it on a GPU.

gsplat 1.5.3 compiles its kernels with ``-use_fast_math``. Its projection's SASS (read off a build for sm_90 with
``cuobjdump -sass``; docs/rasterizer.md) computes every reciprocal and every division with the special-function
unit: ``1 / z`` and ``1 / det`` are ``MUFU.RCP``, a quotient ``a / b`` is ``a * MUFU.RCP(b)`` (two roundings), square
roots are ``MUFU.SQRT`` and the radius' logarithm is ``MUFU.LG2``. These differ from the correctly rounded results
that PyTorch's CUDA kernels give in the last bit or two, for a sizeable share of inputs, and the rasterizer's
threshold decisions (alpha >= 1/255, the transmittance stop) turn such bits into pixel differences.

On CUDA in float32 this module evaluates the same PTX instructions (``rcp.approx.ftz.f32``, ``sqrt.approx.ftz.f32``,
``lg2.approx.ftz.f32``) in one-instruction elementwise kernels that PyTorch's jiterator compiles at first use (NVRTC,
part of PyTorch's CUDA build; no extension to build). Gradients are those of the exact functions, evaluated at the
approximate outputs. Everywhere else (CPU, float64, a PyTorch without jiterator) the exact function is used: there
is no gsplat there to match. :func:`approximate_math_available` says which applies.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

_PTX = {"reciprocal": "rcp.approx.ftz.f32", "sqrt": "sqrt.approx.ftz.f32", "log2": "lg2.approx.ftz.f32"}


@functools.cache
def _kernel(name: str):
    """An elementwise CUDA function running one PTX instruction on float32 (compiled by jiterator on first call)."""
    code = (f"template <typename T> T approx_{name}(T x) {{ float y; "
            f"asm(\"{_PTX[name]} %0, %1;\" : \"=f\"(y) : \"f\"(static_cast<float>(x))); return static_cast<T>(y); }}")
    return torch.cuda.jiterator._create_jit_fn(code)


@functools.cache
def approximate_math_available() -> bool:
    """True where CUDA is present and the one-instruction kernels compile and run (checked once per process)."""
    if not torch.cuda.is_available() or not hasattr(torch.cuda, "jiterator"):
        return False
    try:
        probe = torch.tensor([4.0, 0.25], device="cuda")
        return bool(torch.allclose(_kernel("reciprocal")(probe), 1 / probe)
                    and torch.allclose(_kernel("sqrt")(probe), probe.sqrt())
                    and torch.allclose(_kernel("log2")(probe), probe.log2()))
    except Exception:   # noqa: BLE001 - NVRTC or jiterator missing or failing: the exact functions serve instead
        return False


def _use_hardware(x: Tensor) -> bool:
    return x.is_cuda and x.dtype == torch.float32 and approximate_math_available()


# d f / d x from f's output y: 1/x -> -1/x^2 = -y^2; sqrt(x) -> 1 / (2 sqrt(x)) = 0.5 / y.
_DERIVATIVE_FROM_OUTPUT = {"reciprocal": lambda y: -y * y, "sqrt": lambda y: 0.5 / y}


class _ApproxUnary(torch.autograd.Function):
    """f(x) from the one-instruction kernel ``name``; the exact f's derivative, evaluated at the output."""

    @staticmethod
    def forward(ctx, x: Tensor, name: str) -> Tensor:
        y = _kernel(name)(x)
        ctx.save_for_backward(y)
        ctx.kernel_name = name
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        return grad * _DERIVATIVE_FROM_OUTPUT[ctx.kernel_name](y), None


def approx_reciprocal(x: Tensor) -> Tensor:
    """1 / x, elementwise: ``rcp.approx.ftz.f32`` on CUDA float32 (as gsplat's ``1.f / x``), else exact."""
    return _ApproxUnary.apply(x, "reciprocal") if _use_hardware(x) else torch.reciprocal(x)


def approx_divide(numerator: Tensor | float, denominator: Tensor) -> Tensor:
    """numerator / denominator as gsplat's fast-math build computes it: numerator * (1 / denominator), the
    reciprocal from :func:`approx_reciprocal` (so two roundings, also where the exact reciprocal serves)."""
    return numerator * approx_reciprocal(denominator)


def approx_sqrt(x: Tensor) -> Tensor:
    """sqrt(x), elementwise: ``sqrt.approx.ftz.f32`` on CUDA float32 (as gsplat's ``sqrtf``), else exact."""
    return _ApproxUnary.apply(x, "sqrt") if _use_hardware(x) else torch.sqrt(x)


def approx_log2(x: Tensor) -> Tensor:
    """log2(x), elementwise, without gradient: ``lg2.approx.ftz.f32`` on CUDA float32 (as gsplat's ``__logf``
    before its multiplication by ln 2), else exact."""
    with torch.no_grad():
        return _kernel("log2")(x) if _use_hardware(x) else torch.log2(x)


__all__ = ["approx_divide", "approx_log2", "approx_reciprocal", "approx_sqrt", "approximate_math_available"]
