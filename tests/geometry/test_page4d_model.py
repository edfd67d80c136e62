"""PAGE-4D network: key layout, the rank-1 bias, mask off = VGGT, RoPE, pose encoding, schedule, kept layers."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from stages.geometry.page4d import PAGE4D, ModelConfig, extri_intri_to_pose_encoding, pose_encoding_to_extri_intri
from stages.geometry.page4d.checkpoint import check_keys
from stages.geometry.page4d.layers import Attention, Rope2D, SpecialQueryBias
from stages.geometry.page4d.mask_head import mask_alpha_factor
from stages.geometry.page4d.pose import mat_to_quat, quat_to_mat
from tests.geometry.spec_keys import Dims, official_shapes



# A small config on the same code path: 4 pairs, mask head after frame block 1, bias on global blocks 2..3.
SMALL = ModelConfig(name="test-small", image_size=56, input_width=56, embed_dim=64, num_heads=2, dino_depth=1,
                    dino_num_heads=2, depth=4, mask_head_hidden=16, mask_head_after=1, mask_bias_blocks=[2, 3],
                    camera_num_heads=2, camera_trunk_depth=1, dpt_layers=[0, 1, 2, 3], dpt_features=16,
                    dpt_out_channels=[8, 16, 32, 32])


def random_model(config: ModelConfig, seed: int = 0) -> PAGE4D:
    """A model whose every block matters: LayerScale and special tokens re-drawn at larger scales."""
    torch.manual_seed(seed)
    model = PAGE4D(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".gamma"):
                p.uniform_(0.05, 0.3)
            elif name.endswith(("camera_token", "register_token")):
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("layout", ["vggt", "page4d"])
def test_official_1b_key_layout_matches_the_spec(layout):
    config = replace(ModelConfig.load("page4d-1b"), mask_head=layout == "page4d")
    with torch.device("meta"):
        model = PAGE4D(config)
    spec = official_shapes(Dims(), layout)
    spec_state = {k: torch.empty(shape, device="meta") for k, shape in spec.items()}
    spec_state["track_head.tracker.query_ref_token"] = torch.empty(1, 2, 388, device="meta")
    missing, unexpected, mismatched, ignored = check_keys(model, spec_state)
    assert (missing, unexpected, mismatched) == ([], [], [])
    assert ignored == ["track_head.tracker.query_ref_token"]
    n_params = sum(math.prod(s) for s in spec.values())
    assert (len(spec), n_params) == ((1409, 1_190_869_017) if layout == "page4d" else (1403, 1_190_596_120))
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_a_model_built_on_a_real_device_gets_its_initial_tokens_and_position_table():
    """Training from scratch: the camera/register tokens draw N(0, 1e-6) and the patch embedding's position table
    N(0, 0.02) truncated, on a real device (on meta they are skipped: a checkpoint gives the values there)."""
    torch.manual_seed(0)
    model = PAGE4D(replace(SMALL, embed_dim=192, num_heads=3))
    aggregator = model.aggregator
    for token in (aggregator.camera_token, aggregator.register_token, aggregator.patch_embed.cls_token,
                  aggregator.patch_embed.register_tokens):
        assert 0.5e-6 < float(token.detach().std()) < 1.5e-6
    assert 0.018 < float(aggregator.patch_embed.pos_embed.detach().std()) < 0.022   # bounds +-2, not +-2 std
    with torch.device("meta"):
        on_meta = PAGE4D(SMALL)
    assert on_meta.aggregator.camera_token.device.type == "meta"


def test_small_spec_state_loads_strictly_and_runs():
    spec = official_shapes(Dims.of(SMALL), "page4d")
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=generator) * 0.05 for k, shape in spec.items()}
    model = PAGE4D(SMALL).eval()
    model.load_state_dict(state, strict=True)
    out = model(torch.rand(1, 2, 3, 28, 42, generator=generator))
    assert out["depth"].shape == (1, 2, 28, 42, 1) and torch.isfinite(out["depth"]).all()


def reference_attention_with_mask(q, k, v, scale, additive):
    """softmax(q k^T * scale + additive) v written out in float64."""
    logits = q @ k.transpose(-1, -2) * scale + additive
    return torch.softmax(logits, dim=-1) @ v


def test_rank1_bias_path_equals_an_explicit_additive_mask_float64():
    torch.manual_seed(0)
    B, H, D, frames, N, special = 2, 3, 64, 3, 9, 5
    L = frames * N
    q, k, v = (torch.randn(B, H, L, D, dtype=torch.float64) for _ in range(3))
    key_bias = (torch.rand(B, frames, N, dtype=torch.float64) - 0.5)
    key_bias[:, :, :special] = 0.0                                   # special keys get no bias
    bias = SpecialQueryBias(key_bias.view(B, L), 64.0, N, special)
    scale = D ** -0.5
    # The explicit (B, 1, L, L) mask: row i gets alpha * key_bias_j iff token i is a special token of its frame.
    rows = torch.tensor([64.0 if (i % N) < special else 0.0 for i in range(L)], dtype=torch.float64)
    additive = (rows[None, :, None] * key_bias.view(B, 1, L))[:, None]
    expected = reference_attention_with_mask(q, k, v, scale, additive)
    plain = F.scaled_dot_product_attention(q, k, v, scale=scale)
    index = bias.query_index(frames, q.device)
    got = plain.index_copy(2, index, bias.attend(q, k, v, scale))
    assert torch.allclose(got, expected, atol=1e-12, rtol=0)
    assert torch.allclose(bias.additive_mask(frames, torch.float64), additive)
    # Patch rows are untouched by the bias; special rows are changed by it.
    patch_rows = torch.tensor([i for i in range(L) if i % N >= special])
    assert torch.equal(got[:, :, patch_rows], plain[:, :, patch_rows])
    assert (got[:, :, index] - plain[:, :, index]).abs().max() > 1e-3


def test_attention_module_bias_matches_reference_float64():
    torch.manual_seed(0)
    attn = Attention(128, 2, qk_norm=True).double()
    frames, grid_h, grid_w, special = 2, 3, 4, 5
    N = special + grid_h * grid_w
    x = torch.randn(1, frames * N, 128, dtype=torch.float64)
    rope = Rope2D.for_grid(grid_h, grid_w, special, 64, 100.0, x.device, torch.float64)
    key_bias = torch.rand(1, frames, N, dtype=torch.float64) - 0.5
    key_bias[:, :, :special] = 0
    bias = SpecialQueryBias(key_bias.view(1, -1), 64.0, N, special)
    got = attn(x, rope, bias)
    qkv = attn.qkv(x).view(1, frames * N, 3, 2, 64).permute(2, 0, 3, 1, 4)
    q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
    q, k = rope.apply(q), rope.apply(k)
    out = reference_attention_with_mask(q, k, v, 64 ** -0.5, bias.additive_mask(frames, torch.float64))
    expected = attn.proj(out.transpose(1, 2).reshape(1, frames * N, 128))
    assert torch.allclose(got, expected, atol=1e-11, rtol=0)


def test_rope_matches_a_per_token_rotation():
    torch.manual_seed(0)
    grid_h, grid_w, special, D = 3, 5, 2, 16
    rope = Rope2D.for_grid(grid_h, grid_w, special, D, 100.0, torch.device("cpu"), torch.float64)
    x = torch.randn(1, 2, 2 * (special + grid_h * grid_w), D, dtype=torch.float64)  # 2 frames
    got = rope.apply(x)
    positions = [(0, 0)] * special + [(r + 1, c + 1) for r in range(grid_h) for c in range(grid_w)]
    expected = x.clone()
    quarter = D // 4
    for t in range(x.shape[2]):
        for axis, pos in enumerate(positions[t % len(positions)]):  # axis 0 = row dims, 1 = column dims
            for j in range(quarter):
                theta = pos * 100.0 ** (-2 * j / (2 * quarter))
                a, b = axis * 2 * quarter + j, axis * 2 * quarter + j + quarter
                expected[..., t, a] = x[..., t, a] * math.cos(theta) - x[..., t, b] * math.sin(theta)
                expected[..., t, b] = x[..., t, b] * math.cos(theta) + x[..., t, a] * math.sin(theta)
    assert torch.allclose(got, expected, atol=1e-12)


def test_mask_off_equals_plain_vggt_and_mask_on_differs():
    page4d = random_model(SMALL)
    vggt = PAGE4D(replace(SMALL, mask_head=False)).eval()
    state = {k: v for k, v in page4d.state_dict().items() if "spatial_mask_head" not in k}
    vggt.load_state_dict(state, strict=True)
    images = torch.rand(1, 3, 3, 28, 42, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        off = page4d(images, mask=False, want_mask_score=True)
        plain = vggt(images)
        on = page4d(images, mask=True)
    for key in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        assert torch.equal(off[key], plain[key]), key
    assert off["mask_score"].shape == (1, 3, 2, 3) and off["mask_score"].abs().max() < 0.5
    assert (on["pose_enc"] - off["pose_enc"]).abs().max() > 1e-4
    # Frame 0 owns its special tokens: reordering frames 1 and 2 permutes their outputs only.
    with torch.no_grad():
        swapped = page4d(images[:, [0, 2, 1]], mask=True)
    assert torch.allclose(swapped["depth"][:, [0, 2, 1]], on["depth"], atol=1e-5)


def test_only_the_layers_heads_read_are_kept():
    model = random_model(SMALL)
    agg = model.aggregator(torch.rand(1, 2, 3, 28, 28), keep_layers=[1, 3])
    assert sorted(agg.layers) == [1, 3] and agg.camera_tokens.shape == (1, 2, 128)
    assert agg.mask_score is None   # mask off and not asked for: the head is skipped


def test_pose_encoding_roundtrip_is_exact():
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 50, 4, dtype=torch.float64, generator=generator)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[..., 3:] < 0, -q, q)
    t = torch.randn(2, 50, 3, dtype=torch.float64, generator=generator)
    fov = torch.rand(2, 50, 2, dtype=torch.float64, generator=generator) * 1.5 + 0.3
    encoding = torch.cat([t, q, fov], dim=-1)
    extrinsics, intrinsics = pose_encoding_to_extri_intri(encoding, (294, 518))
    R = extrinsics[..., :3, :3]
    assert torch.allclose(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-12)
    assert torch.allclose(intrinsics[..., 0, 2], torch.full_like(intrinsics[..., 0, 2], 259.0))
    back = extri_intri_to_pose_encoding(extrinsics, intrinsics, (294, 518))
    assert torch.allclose(back, encoding, atol=1e-12)
    # Rotations near 180 degrees (w ~ 0) and the identity take other branches of mat_to_quat.
    for angle in (0.0, math.pi, math.pi - 1e-9):
        axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
        axis = axis / axis.norm()
        quat = torch.cat([axis * math.sin(angle / 2), torch.tensor([math.cos(angle / 2)], dtype=torch.float64)])
        assert torch.allclose(quat_to_mat(mat_to_quat(quat_to_mat(quat))), quat_to_mat(quat), atol=1e-12)


def test_pose_encoding_agrees_with_scipy_and_the_pinhole_formulas():
    """Against an independent reference, not a round trip: a rotation of 90 degrees about z (x -> y) is the
    quaternion xyzw (0, 0, sin 45, cos 45) in scipy's convention, and the encoding's intrinsics follow the
    field-of-view formulas of the spec (fx = (W/2) / tan(fov_w/2), principal point at the image centre)."""
    from scipy.spatial.transform import Rotation

    R_z90 = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    half = math.sqrt(0.5)
    assert torch.allclose(mat_to_quat(R_z90), torch.tensor([0.0, 0.0, half, half], dtype=torch.float64), atol=1e-12)
    rotations = Rotation.random(20, random_state=3)
    matrices = torch.from_numpy(rotations.as_matrix())
    quats = torch.from_numpy(rotations.as_quat())                                # (20, 4) xyzw
    quats = torch.where(quats[:, 3:] < 0, -quats, quats)                          # w >= 0, as ours
    assert torch.allclose(mat_to_quat(matrices), quats, atol=1e-12)
    assert torch.allclose(quat_to_mat(quats), matrices, atol=1e-12)
    # The extrinsics map world to camera (x_cam = R x_world + t): the camera centre -R^T t maps to the origin.
    t = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    encoding = torch.cat([t, quats[0], torch.tensor([0.8, 1.2], dtype=torch.float64)])[None, None]
    extrinsics, intrinsics = pose_encoding_to_extri_intri(encoding, (140, 252))
    centre = -matrices[0].T @ t
    in_camera = extrinsics[0, 0, :, :3] @ centre + extrinsics[0, 0, :, 3]
    assert torch.allclose(in_camera, torch.zeros(3, dtype=torch.float64), atol=1e-12)
    assert intrinsics[0, 0, 0, 0].item() == pytest.approx(126.0 / math.tan(0.6), rel=1e-12)
    assert intrinsics[0, 0, 1, 1].item() == pytest.approx(70.0 / math.tan(0.4), rel=1e-12)
    assert (intrinsics[0, 0, 0, 2].item(), intrinsics[0, 0, 1, 2].item()) == (126.0, 70.0)


def test_mask_alpha_schedule():
    assert mask_alpha_factor(0, 0, 0) == 0.0            # nomask: off from the start
    assert mask_alpha_factor(0, 1, 1) == 1.0            # mask variant at inference (step 0)
    assert mask_alpha_factor(5999, 6000, 10000) == 1.0
    assert mask_alpha_factor(8000, 6000, 10000) == pytest.approx(0.5)
    assert mask_alpha_factor(10000, 6000, 10000) == 0.0
    model = PAGE4D(replace(SMALL, mask_hold_start=1, mask_hold_end=3)).train()
    alphas = [model.aggregator.mask_alpha() for _ in range(4)]  # steps 1..4
    assert alphas == [64.0, 32.0, 0.0, 0.0]
    model.eval()
    assert model.aggregator.mask_alpha() == 0.0 and model.aggregator.mask_alpha(mask=True) == 64.0
