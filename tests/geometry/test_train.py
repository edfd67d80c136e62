"""PAGE-4D training loop (CPU, tiny dimensions): loss goes down, freezing recipe, exact resume, schedules, data."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from stages.geometry.page4d import train as training
from stages.geometry.page4d.config import ModelConfig
from stages.geometry.page4d.model import PAGE4D
from stages.geometry.page4d.train import (ParamGroupConfig, TrainConfig, apply_trainable, build_optimizer,
                                          load_train_config, scheduled_lr, split_batch)
from stages.geometry.page4d.train_data import (EVAL_SEED_BASE, TrainingData, color_jitter, step_seed,
                                               targets_from_batch, unproject_depth)

MICRO = dict(name="page4d-micro", patch_size=14, image_size=56, input_width=56, embed_dim=32, num_heads=2,
             mlp_ratio=2.0, num_register_tokens=4, dino_depth=1, dino_num_heads=2, depth=4, mask_head=True,
             mask_head_hidden=8, mask_head_after=0, mask_bias_blocks=[1, 2], mask_hold_start=0, mask_hold_end=0,
             camera_num_heads=2, camera_trunk_depth=1, camera_iterations=4, dpt_layers=[0, 1, 2, 3],
             dpt_features=8, dpt_out_channels=[8, 8, 16, 16])


class PlaneScenes:
    """Analytic training batches: a tilted textured plane with a moving disc, seen by S cameras that translate and
    pan. Exact depth, world points, masks and cameras; deterministic in (seed, step)."""

    def __init__(self, height=28, width=56, frames=3, sequences=2, seed=0, fixed=False):
        self.H, self.W, self.S, self.B, self.seed, self.fixed = height, width, frames, sequences, seed, fixed

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + (0 if self.fixed else step))
        B, S, H, W = self.B, self.S, self.H, self.W

        def u(*shape, low=0.0, high=1.0):
            return low + (high - low) * torch.rand(*shape, generator=g)

        f = W / (2 * math.tan(math.radians(30)))
        K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]]).expand(B, S, 3, 3).clone()
        pan = u(B, 1, low=-0.05, high=0.05) * torch.arange(S)                           # (B, S) radians
        R = torch.zeros(B, S, 3, 3)
        R[..., 0, 0], R[..., 0, 2], R[..., 1, 1] = torch.cos(pan), torch.sin(pan), 1.0
        R[..., 2, 0], R[..., 2, 2] = -torch.sin(pan), torch.cos(pan)
        centres = u(B, 1, 3, low=-0.2, high=0.2) * torch.arange(S)[:, None]             # (B, S, 3)
        w2c = torch.eye(4).expand(B, S, 4, 4).clone()
        w2c[..., :3, :3] = R
        w2c[..., :3, 3] = -torch.einsum("bsij,bsj->bsi", R, centres)
        normal = torch.nn.functional.normalize(torch.cat([u(B, 2, low=-0.3, high=0.3), torch.ones(B, 1)], -1), dim=-1)
        offset = u(B, low=2.0, high=4.0)                                                 # plane n.X = offset
        ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        rays_cam = torch.stack([(xs - W / 2) / f, (ys - H / 2) / f, torch.ones(H, W)], -1)  # (H, W, 3), z = 1
        rays_world = torch.einsum("bsji,hwj->bshwi", R, rays_cam)
        n = normal[:, None, None, None]
        along_normal = (normal[:, None] * centres).sum(-1)                              # (B, S) n.C
        depth = (offset[:, None, None, None] - along_normal[..., None, None]) / (n * rays_world).sum(-1)
        points = centres[:, :, None, None] + depth[..., None] * rays_world
        freq = u(B, 3, low=2.0, high=6.0)[:, None, None, None]
        phase = u(B, 3, low=0.0, high=6.0)[:, None, None, None]
        texture = 0.5 + 0.4 * torch.sin(freq * points[..., :1] + phase) * torch.cos(freq * points[..., 1:2])
        disc_centre = u(B, 1, 2, low=-0.3, high=0.3) + 0.1 * torch.arange(S)[:, None]    # moves along x over time
        moving = (points[..., :2] - disc_centre[:, :, None, None]).norm(dim=-1) < 0.35
        images = torch.where(moving[..., None], torch.tensor([0.9, 0.1, 0.1]), texture).permute(0, 1, 4, 2, 3)
        valid = depth > 0
        return {"images": images.clamp(0, 1).contiguous(), "depth": depth, "world_points": points, "valid": valid,
                "dynamic_mask": moving, "world_to_camera": w2c, "K": K}



@pytest.fixture
def micro_model(tmp_path):
    path = tmp_path / "page4d-micro.yaml"
    path.write_text(yaml.safe_dump(MICRO))
    return str(path)


def _config(tmp_path, model, **changes) -> TrainConfig:
    config = TrainConfig(model=model, out_dir=str(tmp_path / "run"), device="cpu", steps=4, lr=1e-3, lr_start=1e-3,
                         lr_end=1e-4, warmup=0.0, log_every=1, checkpoint_every=100, frames_max=3, max_images=6)
    config.loss.mask_weight = 0.5
    for key, value in changes.items():
        setattr(config, key, value)
    return config


# ----------------------------------------------------------------------------------------------------------------
# Optimisation


def test_a_few_steps_of_page4d_tiny_lower_the_loss(tmp_path):
    # One fixed batch (2 frames of 28 x 28), 12 steps of the real page4d-tiny network (short warm-up, then a
    # constant learning rate): the loss must fall clearly below its starting value.
    config = _config(tmp_path, "page4d-tiny", steps=12, lr=1e-3, lr_start=1e-5, lr_end=1e-3, warmup=0.3,
                     weight_decay=0.0)
    result = training.train(config, data=PlaneScenes(height=28, width=28, frames=2, sequences=1, fixed=True))
    losses = result.losses
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses


def test_relative_rotation_term_is_logged_only_when_weighted(tmp_path, micro_model):
    data = PlaneScenes(height=28, width=28, frames=3, seed=3)
    rows = {}
    for weight in (0.0, 2.0):
        config = _config(tmp_path / str(weight), micro_model, steps=2)
        config.loss.camera_relative_rotation_weight = weight
        result = training.train(config, data=data)
        with open(result.out_dir / "train_log.csv", newline="") as f:
            rows[weight] = list(csv.DictReader(f))
    assert [r["loss_Rrel"] for r in rows[0.0]] == ["", ""]
    relative = [float(r["loss_Rrel"]) for r in rows[2.0]]
    assert all(math.isfinite(v) and v > 0 for v in relative)
    # The camera loss grows by exactly the weighted term on the first step (same weights, same batch).
    first_off, first_on = rows[0.0][0], rows[2.0][0]
    assert float(first_on["loss_camera"]) == pytest.approx(float(first_off["loss_camera"]) + 2.0 * relative[0],
                                                           rel=1e-4)


def test_compiled_blocks_train_like_the_eager_network(tmp_path, micro_model):
    # compile_blocks traces every transformer block (aot_eager: the traced graphs run without generated code, so
    # the numbers are eager's up to the traced decompositions). Same data and seed: the same losses and weights,
    # under the same parameter names. Steps alternate 3 and 2 frames, so the graphs see more than one shape.
    from stages.geometry.page4d.layers import Block

    class Alternating:
        sources = (PlaneScenes(height=28, width=28, frames=3, seed=5), PlaneScenes(height=28, width=42, frames=2))

        def batch(self, step):
            return self.sources[step % 2].batch(step)

    eager = training.train(_config(tmp_path / "eager", micro_model, steps=3), data=Alternating())
    compiled = training.train(_config(tmp_path / "compiled", micro_model, steps=3, compile_blocks=True,
                                      compile_backend="aot_eager"), data=Alternating())
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5, abs=1e-6)
    a = torch.load(eager.out_dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(compiled.out_dir / "checkpoint.pt", weights_only=True)["model"]
    assert list(a) == list(b)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-4
    model = training.build_model(_config(tmp_path / "c", micro_model, compile_blocks=True,
                                         compile_backend="aot_eager"), torch.device("cpu"))
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert blocks and all(m._compiled_call_impl is not None for m in blocks)
    # Switching it on continues an interrupted run as the same recipe, with the same losses.
    first = training.train(_config(tmp_path / "switch", micro_model, steps=3, stop_after=2), data=Alternating())
    rest = training.train(_config(tmp_path / "switch", micro_model, steps=3, compile_blocks=True,
                                  compile_backend="aot_eager"), data=Alternating())
    assert rest.finished and first.losses + rest.losses == pytest.approx(eager.losses, rel=1e-5, abs=1e-6)


def test_compiled_blocks_leave_the_blocks_with_a_ramping_mask_bias_eager(tmp_path):
    # A graph is specialised on the bias's alpha, which the mask schedule changes at every training forward
    # between mask_hold_start and mask_hold_end: those global blocks stay eager, every other block is compiled.
    from stages.geometry.page4d.layers import COMPILED_GRAPHS_PER_BLOCK_CODE, Block

    path = tmp_path / "ramp.yaml"
    path.write_text(yaml.safe_dump({**MICRO, "mask_hold_start": 2, "mask_hold_end": 6}))
    model = training.build_model(_config(tmp_path, str(path), compile_blocks=True, compile_backend="aot_eager"),
                                 torch.device("cpu"))
    ramped = [model.aggregator.global_blocks[i] for i in model.aggregator.config.biased_blocks]
    assert ramped and model.aggregator.scheduled_bias_blocks() == ramped
    assert all(m._compiled_call_impl is None for m in ramped)
    others = [m for m in model.modules() if isinstance(m, Block) and all(m is not r for r in ramped)]
    assert others and all(m._compiled_call_impl is not None for m in others)
    assert torch._dynamo.config.recompile_limit >= COMPILED_GRAPHS_PER_BLOCK_CODE
    # Without the ramp (the micro model holds alpha at 0 from the start) nothing is left out.
    path.write_text(yaml.safe_dump(MICRO))
    plain = training.build_model(_config(tmp_path, str(path), compile_blocks=True, compile_backend="aot_eager"),
                                 torch.device("cpu"))
    assert plain.aggregator.scheduled_bias_blocks() == []


def test_resume_continues_bit_for_bit(tmp_path, micro_model):
    data = PlaneScenes(height=28, width=28, frames=2, seed=3)
    straight = training.train(_config(tmp_path / "a", micro_model), data=data)
    first = training.train(_config(tmp_path / "b", micro_model, stop_after=2), data=data)
    assert first.state.step == 2 and not first.finished
    second = training.train(_config(tmp_path / "b", micro_model), resume=first.out_dir / "checkpoint.pt", data=data)
    assert second.finished and second.state.step == 4
    assert first.losses + second.losses == straight.losses                   # exact float equality
    a = torch.load(straight.out_dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(second.out_dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The CSV log of the resumed run has each step once, in order.
    with open(second.out_dir / "train_log.csv", newline="") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert steps == [1, 2, 3, 4]


def test_the_same_command_continues_an_interrupted_run_of_the_same_recipe(tmp_path, micro_model):
    from pipeline.errors import UserError

    data = PlaneScenes(height=28, width=28, frames=2, seed=3)
    straight = training.train(_config(tmp_path / "a", micro_model), data=data)
    first = training.train(_config(tmp_path / "b", micro_model, stop_after=2), data=data)   # as if interrupted
    again = training.train(_config(tmp_path / "b", micro_model), data=data)                # no --resume
    assert again.finished and again.state.step == 4
    assert first.losses + again.losses == straight.losses                                  # exact float equality
    # Another recipe in that folder is refused, not continued.
    other = training.train(_config(tmp_path / "c", micro_model, stop_after=1), data=data)
    with pytest.raises(UserError, match="another recipe .differs in lr"):
        training.train(_config(tmp_path / "c", micro_model, lr=5e-4), data=data)
    assert other.state.step == 1


def test_the_final_export_does_not_replace_weights_of_another_recipe(tmp_path, micro_model):
    data = PlaneScenes(height=28, width=28, frames=2, seed=8)
    shipped = tmp_path / "shipped.safetensors"
    first = training.train(_config(tmp_path / "a", micro_model, steps=2, export=str(shipped)), data=data)
    assert first.finished and shipped.is_file()
    before = shipped.read_bytes()
    # A longer schedule of the same recipe from scratch (the audit's case was steps=2 of the page4d-tiny recipe
    # over the bundled file): its weights stay in its own export folder.
    other = training.train(_config(tmp_path / "b", micro_model, steps=3, export=str(shipped)), data=data)
    assert other.finished and shipped.read_bytes() == before
    assert (other.out_dir / "export" / "page4d-micro.safetensors").is_file()
    assert json.loads((other.out_dir / "summary.json").read_text())["final_export"] is None
    # A file this project did not write is not replaced either; the same recipe may rewrite its own file.
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(b"not ours")
    training.train(_config(tmp_path / "c", micro_model, steps=2, export=str(foreign)), data=data)
    assert foreign.read_bytes() == b"not ours"
    again = training.train(_config(tmp_path / "d", micro_model, steps=2, export=str(shipped)), data=data)
    assert json.loads((again.out_dir / "summary.json").read_text())["final_export"] == str(shipped)


def test_time_budget_stops_cleanly_and_weights_only_resume_restores_the_step(tmp_path, micro_model):
    data = PlaneScenes(height=28, width=28, frames=2, seed=5)
    stopped = training.train(_config(tmp_path, micro_model, max_minutes=1e-6), data=data)
    assert stopped.state.step == 0 and "time budget" in stopped.stop_reason
    assert (stopped.out_dir / "checkpoint.pt").is_file()
    run = training.train(_config(tmp_path, micro_model, stop_after=2), resume=stopped.out_dir, data=data)
    assert run.state.step == 2
    exported = run.out_dir / "export" / "page4d-micro.safetensors"
    resumed = training.train(_config(tmp_path, micro_model, stop_after=1, rewarmup_steps=4), resume=exported,
                             data=data)
    assert resumed.state.step == 3 and resumed.state.weights_only_resumes == 1 and resumed.state.rewarmup_from == 2
    with open(resumed.out_dir / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # Step 3 ran at 1/4 of its scheduled learning rate (first step of the re-warm-up).
    group = ParamGroupConfig("default", ["*"], 1e-3, 1e-3, 1e-4, 0.0, 0.0)
    assert float(rows[-1]["lr_default"]) == pytest.approx(scheduled_lr(group, 2 / 4) / 4, rel=1e-5)
    # A longer schedule from the export (now at step 3) with schedule_start=2: its cosine spans steps 2-6, so step
    # 3 runs at a quarter of it, not at 3/6 of the 6-step one (what schedule_start=0 gives).
    longer = training.train(_config(tmp_path, micro_model, steps=6, schedule_start=2, stop_after=1,
                                    rewarmup_steps=1), resume=exported, data=data)
    with open(longer.out_dir / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert int(rows[-1]["step"]) == 4
    assert float(rows[-1]["lr_default"]) == pytest.approx(1e-4 + 0.45e-3 * (1 + math.cos(math.pi / 4)), rel=1e-6)
    assert scheduled_lr(group, 3 / 6) == pytest.approx(5.5e-4)           # schedule_start=0 would give this


# ----------------------------------------------------------------------------------------------------------------
# Freezing, parameter groups, schedules


def test_official_recipe_trains_exactly_blocks_10_to_19_and_the_mask_head():
    config = load_train_config("page4d-1b-finetune")
    with torch.device("meta"):
        model = PAGE4D(ModelConfig.load("page4d-1b"))
    trainable = set(apply_trainable(model, config.trainable))
    expected = {name for name, _ in model.named_parameters()
                if name.startswith("aggregator.spatial_mask_head.")
                or any(name.startswith(f"aggregator.{kind}_blocks.{i}.") for kind in ("frame", "global")
                       for i in range(10, 20))}
    assert trainable == expected
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == 20 * 12_598_528 + 272_897 == 252_243_457
    optimizer, groups = build_optimizer(model, config)
    sizes = {g.name: sum(p.numel() for p in pg["params"]) for g, pg in zip(groups, optimizer.param_groups)}
    assert sizes == {"mask_head": 272_897, "blocks_10_19": 20 * 12_598_528}
    assert [pg["weight_decay"] for pg in optimizer.param_groups] == [0.02, 0.01]


def test_mask_head_recipe_trains_only_the_head_on_the_mask_loss_alone():
    config = load_train_config("page4d-tiny-mask")
    model = PAGE4D(ModelConfig.load("page4d-tiny"))
    trainable = set(apply_trainable(model, config.trainable))
    head = {name for name, _ in model.named_parameters() if name.startswith("aggregator.spatial_mask_head.")}
    assert trainable == head and len(head) == 6
    # depthwise 3x3 (192 x 9 + 192) + 1x1 192 -> 64 (+ bias) + 1x1 64 -> 1 (+ bias)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1920 + 12_352 + 65 == 14_337
    assert not config.mask_head_backprop        # the head reads detached tokens: no gradient reaches the trunk
    assert (config.loss.camera_weight, config.loss.depth_weight, config.loss.point_weight) == (0.0, 0.0, 0.0)
    assert config.loss.mask_weight > 0
    assert Path(config.init_weights).is_file()  # the bundled first stage, in the repository


def test_mask_head_recipe_changes_only_the_head_of_the_shipped_file(tmp_path):
    # Two real steps of the recipe (small frames on the CPU), exported in 8 bits as the shipped file is: every
    # tensor but the head's is byte for byte the first stage's, so depth and points are exactly as before.
    from safetensors.torch import load_file

    final = tmp_path / "page4d-tiny.safetensors"
    config = load_train_config("page4d-tiny-mask", [
        "device=cpu", "steps=2", "max_images=2", "frames_max=2", "frame_choices=[2]", "input_width=56",
        "aspect_buckets=0", "attention=default", f"out_dir={tmp_path / 'run'}", f"export={final}"])
    run = training.train(config)
    assert run.finished
    before, after = load_file(config.init_weights), load_file(final)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("aggregator.spatial_mask_head.") for k in changed)


def test_decay_matrices_only_leaves_vectors_undecayed():
    config = load_train_config("page4d-1b-finetune", ["decay_matrices_only=true"])
    with torch.device("meta"):
        model = PAGE4D(ModelConfig.load("page4d-1b"))
    apply_trainable(model, config.trainable)
    optimizer, groups = build_optimizer(model, config)
    assert [g.name for g in groups] == ["mask_head", "mask_head_nodecay", "blocks_10_19", "blocks_10_19_nodecay"]
    assert [pg["weight_decay"] for pg in optimizer.param_groups] == [0.02, 0.0, 0.01, 0.0]
    assert [g.lr for g in groups[0:2]] == [groups[0].lr] * 2          # a twin keeps its group's schedule
    names = {id(p): n for n, p in model.named_parameters()}
    for g, pg in zip(groups, optimizer.param_groups):
        dims = {p.dim() >= 2 for p in pg["params"]}
        assert dims == ({False} if g.name.endswith("_nodecay") else {True}), g.name
    nodecay = {names[id(p)].split(".")[-1] for p in optimizer.param_groups[3]["params"]}
    assert nodecay == {"bias", "weight", "gamma"}            # biases, norm weights, LayerScale gammas
    # One AdamW step with zero gradients: only decay moves anything, and only the matrices.
    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    config = TrainConfig(lr=0.1, lr_start=0.1, weight_decay=0.5, decay_matrices_only=True)
    optimizer, _ = build_optimizer(tiny, config)
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    for p in tiny.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for n, p in tiny.named_parameters():
        expected = before[n] * (1 - 0.1 * 0.5) if p.dim() >= 2 else before[n]
        torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-7)


def test_scheduled_lr_warmup_then_cosine():
    group = ParamGroupConfig("g", ["*"], lr=1e-5, lr_start=1e-8, lr_end=1e-8, warmup=0.05)
    assert scheduled_lr(group, 0.0) == pytest.approx(1e-8)
    assert scheduled_lr(group, 0.025) == pytest.approx(1e-8 + 0.5 * (1e-5 - 1e-8))      # half-way up
    assert scheduled_lr(group, 0.05) == pytest.approx(1e-5)
    # Half-way through the cosine (progress 0.05 + 0.95 / 2): the mean of peak and end.
    assert scheduled_lr(group, 0.525) == pytest.approx(0.5 * (1e-5 + 1e-8))
    assert scheduled_lr(group, 1.0) == pytest.approx(1e-8)


def test_split_batch_into_accumulation_chunks():
    batch = {"images": torch.arange(3)[:, None], "depth": torch.arange(3)[:, None] * 10}
    chunks = split_batch(batch, 2)
    assert [c["images"].flatten().tolist() for c in chunks] == [[0, 1], [2]]
    assert [c["depth"].flatten().tolist() for c in chunks] == [[0, 10], [20]]
    assert len(split_batch(batch, 8)) == 3


def test_overrides_and_unknown_keys():
    config = load_train_config("page4d-tiny", ["steps=7", "loss.mask_weight=0.25"])
    assert config.steps == 7 and config.loss.mask_weight == 0.25 and config.out_dir == "runs/train/page4d-tiny"
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="unknown config key 'stepz'"):
        load_train_config("page4d-tiny", ["stepz=7"])
    with pytest.raises(UserError, match="unknown training config"):
        load_train_config("nope")


def test_an_empty_training_config_file_is_refused(tmp_path):
    # It used to train the defaults; a file that changes nothing on purpose can hold a comment.
    from pipeline.errors import UserError

    empty = tmp_path / "recipe.yaml"
    empty.write_text("\n  \n")
    with pytest.raises(UserError, match=f"^{empty}: empty training config file"):
        load_train_config(str(empty))
    empty.write_text("# the defaults\n")
    assert load_train_config(str(empty)).steps == load_train_config().steps


@pytest.mark.parametrize("override, message", [
    ("frame_choices=[0]", "frame_choices"), ("log_every=0", "log_every"), ("checkpoint_every=0", "log_every"),
    ("lr=.nan", "lr must be"), ("lr=-1", "lr must be"), ("warmup=2", "warmup"), ("stop_after=-1", "stop_after"),
    ("fov_min_deg=100", "fov_min_deg"), ("fov_max_deg=200", "fov_min_deg"), ("input_width=-14", "input_width"),
    ("loss.mask_weight=0 mask_head_backprop=true", "mask_head_backprop needs"),
    ("room_pan_scale=[2,1]", "room_pan_scale"), ("room_pan_scale=[0,1]", "room_pan_scale"),
    ("schedule_start=-1", "schedule_start"), ("steps=10 schedule_start=10", "schedule_start"),
    ("seed=-1", r"seed must be an integer in \[0, 2\*\*32\)"), ("seed=4294967296", "seed must be an integer"),
    ("loss.camera_relative_rotation_weight=-1", "loss.camera_relative_rotation_weight: loss weights must be"),
    ("loss.depth_weight=.nan", "loss.depth_weight: loss weights must be"),
    ("compile_blocks=true attention=auto", "compile_blocks needs attention")])
def test_bad_training_values_are_refused(override, message):
    from pipeline.errors import UserError

    with pytest.raises(UserError, match=message):
        load_train_config("page4d-tiny", override.split())


def test_an_input_width_off_the_patch_grid_is_a_one_line_error():
    from pipeline.errors import UserError

    config = load_train_config("page4d-tiny", ["input_width=50"])
    with pytest.raises(UserError, match="input_width 50 is not a multiple of the model's patch size 14"):
        TrainingData(config, ModelConfig.load("page4d-tiny"), torch.device("cpu"))


@pytest.mark.parametrize("backprop", [False, True])
def test_mask_loss_reaches_the_backbone_only_with_mask_head_backprop(tmp_path, micro_model, backprop):
    # The official head reads detached tokens: the mask loss then trains the head alone. With mask_head_backprop
    # the frame block it reads after (and the patch embedding) get a gradient from the mask loss too.
    from stages.geometry.page4d.losses import mask_loss
    from stages.geometry.page4d.train import build_model

    config = _config(tmp_path, micro_model, mask_head_backprop=backprop)
    model = build_model(config, torch.device("cpu")).train()
    batch = PlaneScenes(height=28, width=56, frames=2, sequences=1).batch(0)
    score = model(batch["images"], heads=("camera",), want_mask_score=True)["mask_score"]
    logits = torch.logit(score + 0.5)
    mask_loss(logits, batch["dynamic_mask"], 2.0).backward()
    head = model.aggregator.spatial_mask_head.head0[0].weight.grad
    block = model.aggregator.frame_blocks[0].attn.qkv.weight.grad
    assert head is not None and head.abs().sum() > 0
    if backprop:
        assert block is not None and block.abs().sum() > 0
    else:
        assert block is None or block.abs().sum() == 0


def test_a_finished_schedule_or_an_existing_run_is_not_overwritten(tmp_path, micro_model):
    from pipeline.errors import UserError

    data = PlaneScenes(height=28, width=28, frames=2, seed=4)
    export = tmp_path / "final.safetensors"
    done = training.train(_config(tmp_path, micro_model, steps=2, export=str(export)), data=data)
    assert done.finished and export.is_file()
    files = {p: p.read_bytes() for p in [export, *done.out_dir.rglob("*")] if p.is_file()}
    # Resuming a finished schedule (from its checkpoint or its export) has nothing to train: refused, no rewrite.
    for resume in (done.out_dir / "checkpoint.pt", done.out_dir / "export" / "page4d-micro.safetensors"):
        with pytest.raises(UserError, match="nothing to train"):
            training.train(_config(tmp_path, micro_model, steps=2, export=str(export)), resume=resume, data=data)
    # Starting over in a folder that holds a run, without --resume, would wipe its log: refused.
    with pytest.raises(UserError, match="already holds a training run"):
        training.train(_config(tmp_path, micro_model, steps=2, export=str(export)), data=data)
    assert {p: p.read_bytes() for p in files} == files


def test_resuming_into_a_different_model_or_trainable_set_is_a_clear_error(tmp_path, micro_model):
    from pipeline.errors import UserError

    data = PlaneScenes(height=28, width=28, frames=2, seed=6)
    first = training.train(_config(tmp_path / "a", micro_model, stop_after=1), data=data)
    checkpoint = first.out_dir / "checkpoint.pt"
    with pytest.raises(UserError, match="optimizer state does not fit"):
        training.train(_config(tmp_path / "b", micro_model, trainable=["camera_head.*"]), resume=checkpoint,
                       data=data)
    wider = yaml.safe_load(Path(micro_model).read_text())
    wider["embed_dim"] *= 2
    other = tmp_path / "wider.yaml"
    other.write_text(yaml.safe_dump(wider))
    with pytest.raises(UserError, match="does not fit the configured model"):
        training.train(_config(tmp_path / "c", str(other)), resume=checkpoint, data=data)


@pytest.mark.parametrize("change, message", [
    ({"state": "step 2"}, r"its training state is a str, not a mapping of counters"),
    ({"state": {"step": "2"}}, r"its training state has step '2', not an integer"),
    ({"state": {"steps": 2}}, r"its training state has unknown entries steps"),
    ({"config": ["lr"]}, r"its config is a list, not a mapping"),
    ({"mask_step": "0"}, r"its mask_step is a str, not a number"),
    ({"rng": {"torch": "seed"}}, r"its random states: \w+Error"),
])
def test_resuming_from_a_checkpoint_with_damaged_entries_is_a_one_line_error(tmp_path, micro_model, change,
                                                                             message):
    """A checkpoint whose counters (or config, mask step) are not what train-model wrote: a one-line error naming
    the file, from --resume and from the same command in its folder, not a TypeError from TrainState(**state)."""
    from pipeline.errors import UserError

    data = PlaneScenes(height=28, width=28, frames=2, seed=6)
    first = training.train(_config(tmp_path / "a", micro_model, stop_after=1), data=data)
    checkpoint = first.out_dir / "checkpoint.pt"
    payload = torch.load(checkpoint, weights_only=True)
    damaged = tmp_path / "ck.pt"
    torch.save({**payload, **change}, damaged)
    pattern = rf"ck.pt: damaged training checkpoint \({message}\)$"
    with pytest.raises(UserError, match=pattern) as caught:
        training.train(_config(tmp_path / "b", micro_model), resume=damaged, data=data)
    assert "\n" not in str(caught.value)
    damaged.replace(checkpoint)                                            # the run folder's own checkpoint
    with pytest.raises(UserError, match=pattern.replace("ck.pt", "checkpoint.pt")):
        training.train(_config(tmp_path / "a", micro_model), data=data)


def test_model_config_values_are_typed(tmp_path, micro_model):
    from pipeline.errors import UserError

    values = yaml.safe_load(Path(micro_model).read_text())
    path = tmp_path / "typed.yaml"
    path.write_text(yaml.safe_dump({**values, "layerscale_init": "1e-5"}))
    assert ModelConfig.load(path).layerscale_init == 1e-5
    path.write_text(yaml.safe_dump({**values, "embed_dim": "abc"}))
    with pytest.raises(UserError, match="'embed_dim' expects int"):
        ModelConfig.load(path)
    path.write_text("- a list\n")
    with pytest.raises(UserError, match="must be a mapping"):
        ModelConfig.load(path)


# ----------------------------------------------------------------------------------------------------------------
# Data


def test_step_seeds_avoid_the_evaluation_range_and_are_deterministic():
    seeds = [step_seed(0, s) for s in range(2000)]
    assert all(0 <= s < EVAL_SEED_BASE for s in seeds)
    assert seeds == [step_seed(0, s) for s in range(2000)] and len(set(seeds)) > 1990
    assert step_seed(1, 0) != step_seed(0, 0)


def test_training_stream_is_a_function_of_the_step():
    config = TrainConfig(max_images=4, frames_min=2, frames_max=2, input_width=28, aspect_min=1.0, object_fraction=0.0)
    from stages.geometry.page4d.train_data import TrainingData

    data = TrainingData(config, ModelConfig.load("page4d-tiny"), torch.device("cpu"))
    first, again = data.batch(3), data.batch(3)
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert first["images"].shape == (2, 2, 3, 28, 28) and first["valid"].any()
    targets = targets_from_batch(first)
    assert torch.allclose(targets["pose_enc"][:, 0, :3], torch.zeros(2, 3), atol=1e-5)


def test_unproject_depth_inverts_projection():
    batch = PlaneScenes().batch(0)
    points = unproject_depth(batch["depth"], batch["K"], batch["world_to_camera"])
    assert torch.allclose(points, batch["world_points"], atol=1e-4)


def test_targets_from_batch_frame0_is_identity_and_fov_matches_K():
    batch = PlaneScenes().batch(1)
    targets = targets_from_batch(batch)
    H, W = batch["images"].shape[-2:]
    enc = targets["pose_enc"]
    assert torch.allclose(enc[:, 0, :7], torch.tensor([0, 0, 0, 0, 0, 0, 1.0]).expand(2, 7), atol=1e-6)
    f = batch["K"][0, 0, 0, 0]
    assert enc[0, 1, 7].item() == pytest.approx(2 * math.atan(H / 2 / f.item()), rel=1e-6)
    assert enc[0, 1, 8].item() == pytest.approx(2 * math.atan(W / 2 / f.item()), rel=1e-6)
    # Mean distance of the valid normalised points from the frame-0 camera is 1.
    distance = targets["world_points"].norm(dim=-1)[targets["valid"]]
    per_sequence = [targets["world_points"][b].norm(dim=-1)[targets["valid"][b]].mean().item() for b in range(2)]
    assert per_sequence == pytest.approx([1.0, 1.0], rel=1e-4) and distance.numel() > 0


def test_color_jitter_identity_brightness_and_grayscale():
    images = torch.rand(2, 3, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    g = torch.Generator().manual_seed(1)
    assert torch.equal(color_jitter(images, g, 0.5, 0.1, prob=0.0, grayscale_prob=0.0), images)
    same = color_jitter(images, g, 0.0, 0.0, prob=1.0, grayscale_prob=0.0)
    assert torch.allclose(same, images, atol=1e-6)
    gray = color_jitter(images, g, 0.0, 0.0, prob=0.0, grayscale_prob=1.0)
    luma = 0.299 * images[:, :, 0] + 0.587 * images[:, :, 1] + 0.114 * images[:, :, 2]
    assert torch.allclose(gray, luma[:, :, None].expand_as(images), atol=1e-6)
    # A hue rotation keeps the luma (no clamping happens for these mid-range colours).
    from stages.geometry.page4d.train_data import rotate_hue

    rotated = rotate_hue(images + 0.25, torch.tensor([0.1, -0.07]))
    luma_rot = 0.299 * rotated[:, :, 0] + 0.587 * rotated[:, :, 1] + 0.114 * rotated[:, :, 2]
    assert torch.allclose(luma_rot, luma + 0.25, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# Export


def test_exported_weights_load_in_the_geometry_stage_and_match_the_trained_model(tmp_path, micro_model):
    from stages.geometry.page4d.checkpoint import load_model
    from stages.geometry.page4d.export_weights import export_checkpoint, join_parts, split_file

    data = PlaneScenes(height=28, width=28, frames=2, seed=7)
    run = training.train(_config(tmp_path, micro_model, steps=2), data=data)
    out = tmp_path / "weights" / "micro.safetensors"
    assert export_checkpoint(run.out_dir / "checkpoint.pt", out)["step"] == 2
    model, info = load_model(micro_model, str(out))
    assert info.format == "page4dgs" and info.mask_supervised and not info.mask_enabled
    assert info.metadata["train_state"]["step"] == 2 and info.metadata["train_config"]["model"] == micro_model
    trained = training.build_model(_config(tmp_path, micro_model), torch.device("cpu"))
    trained.load_state_dict(torch.load(run.out_dir / "checkpoint.pt", weights_only=True)["model"])
    images = data.batch(0)["images"][:1]
    with torch.no_grad():
        a, b = model(images), trained.eval()(images)
    assert torch.allclose(a["depth"], b["depth"], rtol=1e-2, atol=1e-3)               # fp16 weights
    assert torch.allclose(a["pose_enc"], b["pose_enc"], rtol=1e-2, atol=1e-3)
    # The GPU host returns files of <= 16 MiB: split into parts and join back, verified.
    parts = split_file(out, part_mib=0.05, to=tmp_path / "parts")
    assert len(parts) > 1 and all(p.stat().st_size <= 0.05 * 2**20 for p in parts)
    joined = join_parts(parts[0], tmp_path / "joined.safetensors")
    assert joined.read_bytes() == out.read_bytes()


def test_final_export_is_written_in_the_configured_format(tmp_path, micro_model):
    from stages.geometry.page4d.checkpoint import read_checkpoint

    data = PlaneScenes(height=28, width=28, frames=2, seed=9)
    final = tmp_path / "shipped" / "micro.safetensors"
    run = training.train(_config(tmp_path, micro_model, steps=2, export=str(final), export_format="int8"), data=data)
    assert run.finished and final.is_file()
    _, _, shipped = read_checkpoint(final)
    _, _, resumable = read_checkpoint(run.out_dir / "export" / "page4d-micro.safetensors")
    assert shipped["weights_format"] == "int8-per-channel-symmetric"
    assert resumable["weights_format"] == "float16"                    # what a weights-only resume reads
    assert shipped["train_state"] == resumable["train_state"]
    summary = json.loads((run.out_dir / "summary.json").read_text())
    assert summary["final_export"] == str(final) and summary["final_export_format"] == "int8"


def test_room_pan_scale_turns_room_cameras_further_and_defaults_to_make_scene_rooms():
    # The multiplier scales the pan amplitude of the same random rooms: the camera turns about 3x further with 3,
    # and [1, 1] (the default) draws nothing extra, so the stream stays that of make-scene's rooms.
    from stages.geometry.page4d.pose import mat_to_quat
    from stages.geometry.page4d.train_data import BatchShape, SyntheticSource

    def turn_deg(batch):
        relative = batch["world_to_camera"][:, 1:, :3, :3] @ batch["world_to_camera"][:, :1, :3, :3].transpose(-1, -2)
        w = mat_to_quat(relative)[..., 3].clamp(max=1.0)
        return torch.rad2deg(2 * torch.acos(w)).mean().item()

    config = load_train_config("page4d-tiny")
    source = SyntheticSource(config, torch.device("cpu"))
    shape = BatchShape(frames=4, sequences=2, height=14, width=28)
    plain, wide = (source.batch(shape, 12345, "room", pan_scale=s) for s in (1.0, 3.0))
    assert 2.0 < turn_deg(wide) / turn_deg(plain) < 4.0
    assert torch.equal(source.batch(shape, 12345, "room")["images"], plain["images"])
    assert load_train_config("page4d-tiny", ["room_pan_scale=[1, 4]"]).room_pan_scale == [1, 4]
