"""bench.train_eval_bench: the scene sets it evaluates on stay apart."""

from bench import train_eval_bench as bench


def test_validation_evaluation_and_training_seeds_are_disjoint():
    from stages.geometry.page4d.train_data import EVAL_SEED_BASE

    training = range(0, EVAL_SEED_BASE)     # step_seed draws every training batch's seed below it
    evaluation = {*range(bench.ROOM_SEED_BASE, bench.ROOM_SEED_BASE + 50),
                  *range(bench.OBJECT_SEED_BASE, bench.OBJECT_SEED_BASE + 50)}
    validation = {*range(bench.VALIDATION_ROOM_SEED_BASE, bench.VALIDATION_ROOM_SEED_BASE + 50),
                  *range(bench.VALIDATION_OBJECT_SEED_BASE, bench.VALIDATION_OBJECT_SEED_BASE + 50)}
    assert not evaluation & validation, "up to 50 scenes of each kind in each set"
    assert min(evaluation | validation) >= training.stop


def test_validation_refuses_to_write_over_the_evaluation(capsys):
    assert bench.main(["--validation", "--cpu"]) == 2
    assert "--out" in capsys.readouterr().err


def test_horizontal_field_of_view_from_intrinsics():
    import numpy as np

    K = np.array([[[128.0, 0, 128], [0, 128, 72], [0, 0, 1]], [[221.7025033688163, 0, 128], [0, 1, 72], [0, 0, 1]]])
    assert np.allclose(bench.horizontal_fov_deg(K, 256), [90.0, 60.0])     # tan(45) = 128/128, tan(30) = 128/221.7



def _row(intersection, union, predicted, truth):
    return {"mask_intersection": intersection, "mask_union": union, "mask_predicted": predicted,
            "mask_truth": truth, "valid_pixels": 1, "depth_abs_rel": 0.0, "depth_delta_1.25": 1.0,
            "ate_normalized": 0.0, "rpe_rot_deg": 0.0, "fov_error_deg": 0.0, "frames": 1}


def test_masks_pool_iou_precision_and_recall_over_frames():
    # sequence 1: 8 predicted, 6 true, 4 right (union 10); sequence 2: 8 predicted, 4 true, 4 right (union 8)
    pooled = bench.pool([_row(4, 10, 8, 6), _row(4, 8, 8, 4)])
    assert pooled["mask_iou"] == 8 / 18 and pooled["mask_precision"] == 8 / 16 and pooled["mask_recall"] == 8 / 10


def test_the_mask_bound_keeps_a_patch_aligned_mask_and_loses_a_thin_one():
    import numpy as np

    dynamic = np.zeros((2, 56, 112), bool)      # at the network's width 112 with patches of 14: no resizing
    dynamic[0, 14:42, 28:56] = True             # 2 x 2 whole patches
    dynamic[1, 20, :] = True                    # one row: 1/14 of each patch it crosses
    seq = bench.Sequence("room", 0, 0, [np.zeros((56, 112, 3), np.float32)] * 2, np.ones((2, 56, 112)), dynamic,
                         np.tile(np.eye(4), (2, 1, 1)), np.zeros((2, 56, 112, 3)), np.tile(np.eye(3), (2, 1, 1)))
    out = bench.PatchMaskBound(112, 14)(seq)
    rows, cols = np.nonzero(out.dynamic[0])
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (14, 41, 28, 55)    # the block's own extent
    assert out.dynamic[0][20:36, 34:50].all()                                       # bilinear: corners rounded
    assert 0.85 < (out.dynamic[0] & dynamic[0]).sum() / (out.dynamic[0] | dynamic[0]).sum() < 1.0
    assert not out.dynamic[1].any()


def test_lady_running_picture_runs_the_network_cameras_unless_asked_for_refined_ones(tmp_path):
    import torch

    from pipeline.config import load_config

    for refine in (False, True):
        cmd = bench.lady_running_command("weights.safetensors", torch.device("cpu"), refine, tmp_path / "run")
        overrides = cmd[cmd.index(str(bench.LADY_RUNNING)) + 1:cmd.index("--out")]
        config = load_config("default", overrides)         # every override is a real key with a valid value
        assert config.geometry.refine_cameras is refine
        assert (config.geometry.cameras, config.geometry.checkpoint, config.device) == ("model", "weights.safetensors",
                                                                                        "cpu")
        assert cmd[cmd.index("--out") + 1] == str(tmp_path / "run") and cmd[-2:] == ["--until", "geometry"]
