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
