"""The per-Gaussian parameter dict (the tensors gsplat's DefaultStrategy splits, duplicates and prunes).

Every entry has the Gaussian count N as its first dimension; everything else (deformation networks, shared motion
bases, camera corrections) lives outside, with its own optimizer.

| key              | shape       | stored as                  | trained | used when                    |
|------------------|-------------|----------------------------|---------|------------------------------|
| means            | (N, 3)      | world position (canonical: at the anchor time for dynamic Gaussians) | yes | always |
| quats            | (N, 4)      | raw quaternion (w, x, y, z)| yes     | always                       |
| scales           | (N, 3)      | log standard deviation     | yes     | always                       |
| opacities        | (N,)        | logit                      | yes     | always                       |
| sh0              | (N, 1, 3)   | SH DC coefficients         | yes     | always                       |
| shN              | (N, K-1, 3) | higher SH bands            | yes     | sh_degree > 0                |
| time_centers     | (N,)        | centre of temporal opacity | yes     | dynamic model, temporal opacity |
| time_log_scales  | (N,)        | log width of temporal opacity | yes  | dynamic model, temporal opacity |
| motion_coefs     | (N, B, D)   | motion-basis coefficients  | yes     | bases and the hybrids (*_bases) |
| rigid_logits     | (N, K)      | blending logits of the rigid motions | yes | deformation = rigid  |
| field_embedding  | (N, E)      | latent code the field reads | yes    | mlp/planes, field_embedding > 0 |
| anchor_times     | (N,)        | time the Gaussian was seen | no      | dynamic model                |
| is_dynamic       | (N,)        | bool                       | no      | dynamic model                |

Non-trained entries are ``nn.Parameter(requires_grad=False)`` so that they follow every split and prune.
"""

from __future__ import annotations

import math

import torch
from torch import nn

SH_C0 = 0.28209479177387814
TRAINABLE_ALWAYS = ("means", "quats", "scales", "opacities", "sh0", "shN")
TIME_KEYS = ("time_centers", "time_log_scales")
FROZEN_KEYS = ("anchor_times", "is_dynamic")


def num_sh_coefficients(degree: int) -> int:
    return (degree + 1) ** 2


def create_splats(means: torch.Tensor, sh: torch.Tensor, opacity_logits: torch.Tensor, log_scales: torch.Tensor,
                  quats: torch.Tensor, is_dynamic: torch.Tensor, anchor_times: torch.Tensor, sh_degree: int,
                  temporal_sigma: float | None = None,
                  extra: dict[str, tuple[int, ...]] | None = None) -> nn.ParameterDict:
    """Build the parameter dict from initial values.

    means (N, 3); sh (N, K0, 3) with any K0 (truncated or zero-padded to (sh_degree + 1)^2); opacity_logits (N,);
    log_scales (N, 3); quats (N, 4); is_dynamic (N,) bool; anchor_times (N,).
    temporal_sigma: initial temporal-opacity width (None = no temporal opacity entries).
    extra: per-Gaussian trailing shapes a deformation model needs (zero-initialised), e.g. {"motion_coefs": (B, D)}.
    """
    n = means.shape[0]
    K = num_sh_coefficients(sh_degree)
    sh_full = torch.zeros(n, K, 3, dtype=torch.float32, device=means.device)
    k0 = min(K, sh.shape[1])
    sh_full[:, :k0] = sh[:, :k0].float()
    tensors: dict[str, torch.Tensor] = {
        "means": means.float(),
        "quats": quats.float(),
        "scales": log_scales.float(),
        "opacities": opacity_logits.float().reshape(n),
        "sh0": sh_full[:, :1].clone(),
    }
    if K > 1:
        tensors["shN"] = sh_full[:, 1:].clone()
    if temporal_sigma is not None:
        tensors["time_centers"] = anchor_times.float().clone()
        tensors["time_log_scales"] = torch.full((n,), math.log(temporal_sigma), device=means.device)
    for key, shape in (extra or {}).items():
        tensors[key] = torch.zeros((n, *shape), device=means.device)
    splats = nn.ParameterDict({k: nn.Parameter(v.contiguous()) for k, v in tensors.items()})
    splats["anchor_times"] = nn.Parameter(anchor_times.float().clone(), requires_grad=False)
    splats["is_dynamic"] = nn.Parameter(is_dynamic.bool().clone(), requires_grad=False)
    return splats


def splats_from_state(state: dict[str, torch.Tensor]) -> nn.ParameterDict:
    """Rebuild the parameter dict from saved tensors (trainability follows :data:`FROZEN_KEYS`)."""
    return nn.ParameterDict({k: nn.Parameter(v.clone(), requires_grad=k not in FROZEN_KEYS and v.is_floating_point())
                             for k, v in state.items()})


def trainable_keys(splats: nn.ParameterDict) -> list[str]:
    return [k for k, p in splats.items() if p.requires_grad]


def sh_coefficients(splats: nn.ParameterDict) -> torch.Tensor:
    """(N, K, 3): DC and higher bands concatenated."""
    if "shN" in splats:
        return torch.cat([splats["sh0"], splats["shN"]], dim=1)
    return splats["sh0"]
