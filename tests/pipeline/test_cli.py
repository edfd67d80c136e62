"""The command line: one-line errors with exit code 2 and no traceback."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv,message", [
    (["reconstruct", "/nonexistent/scene"], "no such file or folder"),
    (["reconstruct", "demo", "optimize.iteratons=3"], "unknown config key"),
    (["reconstruct", "demo", "--config", "nope"], "unknown config 'nope'"),
    (["frobnicate"], "invalid choice"),
    (["make-scene", "room", "--out", "/nonexistent/never-written", "--seed", "-1"], "--seed must lie in"),
    (["reconstruct", "demo", "scene.stride=0", "--out", "/nonexistent/never-written"], "scene.stride must be"),
    (["reconstruct"], "reconstruct: the scene is required"),
    (["config", "initialize.init_opacity=2"], "init_opacity in (0, 1)"),
    # `config` refuses what `reconstruct` would (these printed a config and exited 0)
    (["config", "seed=-1"], "seed must be an integer in [0, 2**32) (got -1)"),
    (["config", "seed=4294967296"], "seed must be an integer in [0, 2**32) (got 4294967296)"),
    (["config", "scene.stride=0"], "scene.stride must be >= 1 (got 0)"),
    (["config", "scene.max_size=3"], "scene.max_size must be 0 (keep) or >= 16 pixels (got 3)"),
    (["reconstruct", "demo", "seed=-1", "--out", "/nonexistent/never-written"], "seed must be an integer in"),
    (["config", "render.video_paths=[spiral,nope]", "render.video_fps=0"], "render: unknown camera path 'nope'"),
    (["reconstruct", "--out", "/nonexistent/never-written", "seed=2"], "reconstruct: the scene is required"),
])
def test_errors_are_one_line_with_exit_code_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("page4dgs: error:") and message in err[0]


def test_a_later_stage_config_error_fails_before_any_stage_runs(tmp_path, capsys):
    # optimize's own check runs up front: nothing is computed or written for a config that cannot finish.
    run = tmp_path / "run"
    assert main(["reconstruct", "demo", "optimize.iterations=-5", "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "page4dgs: error: optimize: iterations must be >= 1" and not run.exists()


@pytest.mark.parametrize("override, message", [
    ("geometry.fusion_percentile=150", "fusion_percentile must be in [0, 100]"),    # was a numpy traceback
    ("geometry.max_points=0", "max_points must be >= 1"),
    ("geometry.consistency_gap=0", "consistency_gap >= 1"),
    ("geometry.consistency_vote=2", "consistency_vote must be in [0, 1]"),
    ("geometry.mask_head_weight=-1", "mask_head_weight must be in [0, 1]"),
    ("geometry.input_width=15", "multiple of the patch size 14"),
    ("geometry.window=8 geometry.overlap=8", "overlap (8) must be smaller than window (8)"),
    ("evaluate.report_image_size=0", "report_image_size must be >= 16"),
    ("evaluate.report_views=-1", "report_views and report_inputs must be >= 0"),
    ("evaluate.depth_max=-1", "depth_max must be a number >= 0"),
])
def test_geometry_and_evaluate_values_are_checked_before_any_stage_runs(override, message, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["reconstruct", "demo", *override.split(), "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("page4dgs: error:") and not run.exists()


@pytest.mark.parametrize("override, message", [
    # Each was a traceback once training started (or was accepted and trained nonsense).
    ("optimize.planes_resolution=[a,b]", "config key 'optimize.planes_resolution' expects list of int"),
    ("optimize.planes_resolution=[]", "planes_resolution must be a non-empty list of integers >= 1"),
    ("optimize.planes_resolution=[32,0]", "planes_resolution must be a non-empty list of integers >= 1"),
    ("optimize.mlp_depth=0", "mlp_depth must be >= 1 (got 0)"),
    ("optimize.silhouette_views=0", "silhouette_views must be >= 1 (got 0)"),
    ("initialize.init_scale=.nan", "initialize.init_scale must be a finite number > 0, got nan"),
    ("initialize.init_scale=0", "initialize.init_scale must be a finite number > 0, got 0"),
    ("initialize.confidence_percentile=150", "initialize.confidence_percentile must be in [0, 100], got 150"),
    ("initialize.confidence_percentile=.nan", "initialize.confidence_percentile must be in [0, 100], got nan"),
    ("initialize.min_confidence=.nan", "initialize.min_confidence must be a finite number >= 0, got nan"),
    ("initialize.max_depth_edge=-1", "initialize.max_depth_edge must be a finite number >= 0, got -1"),
    ("optimize.lr_means=-1", "lr_means must be a finite number >= 0 (got -1)"),
    ("optimize.lr_planes=.nan", "lr_planes must be a finite number >= 0 (got nan)"),
    ("optimize.lr_cameras=.inf", "lr_cameras must be a finite number >= 0 (got inf)"),
    ("optimize.lr_final_factor=0", "lr_final_factor must be a finite number > 0 (got 0)"),
    ("optimize.refine_every=0", "refine_every must be >= 1 (got 0)"),
    ("optimize.log_every=0", "log_every must be >= 1 (got 0)"),
    ("optimize.sh_degree_interval=0", "sh_degree_interval must be >= 1 (got 0)"),
    ("optimize.bases_count=0", "bases_count must be >= 1 (got 0)"),
    ("optimize.bases_knots=3", "bases_knots must be >= 4"),
    ("optimize.checkpoint_every=-1", "checkpoint_every must be >= 0 (got -1)"),
    ("optimize.keep_checkpoints=0", "keep_checkpoints must be >= 1 (got 0)"),
    ("optimize.reset_every=-1", "reset_every must be >= 0 (got -1)"),
    ("optimize.planes_time_resolution=-1", "planes_time_resolution must be >= 0 (got -1)"),
    ("optimize.planes_level_time_resolution=[6]", "planes_level_time_resolution must be [] or one integer >= 1 "
                                                  "per level"),
    ("optimize.mlp_time_frequencies=-1", "mlp_time_frequencies must be >= 0 (got -1)"),
    ("optimize.mlp_position_frequencies=-2", "mlp_position_frequencies must be >= 0 (got -2)"),
    ("optimize.max_anisotropy=1", "max_anisotropy must be a finite number > 1 (got 1)"),
    ("optimize.max_anisotropy=.nan", "max_anisotropy must be a finite number > 1 (got nan)"),
    ("optimize.batch_size=0", "batch_size must be >= 1 (got 0)"),
    ("optimize.temporal_opacity_init=.nan", "temporal_opacity_init must be > 0"),
    ("optimize.residual_lambda=-1", "residual_lambda must be a finite number >= 0 (got -1)"),
    ("optimize.residual_lambda=0.5", "residual_lambda applies to deformation=planes_bases, mlp_bases or "
                                     "rigid_bases only (deformation=bases)"),
    ("optimize.deform_opacity=true optimize.deformation=rigid",             # two overrides
     "deform_opacity does not apply to deformation=rigid"),
    ("optimize.rigid_count=0", "rigid_count must be >= 1 (got 0)"),
    ("optimize.opacity_lambda=.nan", "opacity_lambda must be a finite number >= 0 (got nan)"),
    ("render.bullet_arc_deg=.nan", "bullet_arc_deg must be a finite number (got nan)"),
    ("render.video_fps=.inf", "video_fps must be a finite number (got inf)"),
    ("optimize.explode_factor=-1", "explode_factor must be > 1 (got -1)"),
    ("optimize.explode_factor=.nan", "explode_factor must be a finite number (got nan)"),
    ("optimize.max_gaussians=-5", "max_gaussians must be >= 0 (got -5)"),
    ("optimize.grow_grad2d=-1", "grow_grad2d must be >= 0 (got -1)"),
    ("optimize.prune_opacity=.nan", "prune_opacity must be a finite number (got nan)"),
    ("optimize.prune_opacity=1", "prune_opacity must be in [0, 1) (got 1)"),
    ("optimize.prune_scale3d=-1", "prune_scale3d must be >= 0 (got -1)"),
    ("optimize.refine_start=-5", "refine_start must be >= 0 (got -5)"),
    ("optimize.deform_warmup=-1", "deform_warmup must be >= 0 (got -1)"),
    ("optimize.rigidity_neighbors=0", "rigidity_neighbors must be >= 1 (got 0)"),
    ("optimize.cpu_threads=-1", "cpu_threads must be >= 0 (got -1)"),
    ("optimize.time_jitter=.inf", "time_jitter must be a finite number (got inf)"),
    ("optimize.temporal_width_floor=.inf", "temporal_width_floor must be a finite number (got inf)"),
    ("optimize.grow_grad2d=-.inf", "grow_grad2d must be >= 0 (got -inf)"),
])
def test_optimize_and_initialize_values_are_checked_when_the_config_is_read(override, message, capsys):
    assert main(["config", *override.split(" ")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("page4dgs: error:") and message in err[0]


def test_each_bad_optimize_value_is_named_once(capsys):
    # time_jitter is a prefix of time_jitter_until: both are named; -inf is not both "finite" and ">= 0"
    assert main(["config", "optimize.time_jitter=.inf", "optimize.time_jitter_until=-1",
                 "optimize.grow_grad2d=-.inf"]) == 2
    err = capsys.readouterr().err.strip()
    assert "time_jitter must be a finite number (got inf)" in err and "time_jitter_until must be >= 0" in err
    assert err.count("grow_grad2d") == 1


def test_config_defaults_takes_no_preset_or_overrides(capsys):
    for extra in (["--config", "dnerf"], ["optimize.iterations=5"]):
        assert main(["config", "--defaults", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "config --defaults prints the built-in defaults" in err[0]


def test_the_default_values_pass_every_check(capsys):
    assert main(["config"]) == 0


def test_console_script_error_has_no_traceback(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "reconstruct", str(tmp_path / "empty")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "folder is empty" in proc.stderr


def test_bad_input_does_not_touch_an_existing_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text("{}")
    assert main(["reconstruct", str(tmp_path / "missing"), "--out", str(run)]) == 2
    assert (run / "metrics.json").read_text() == "{}" and sorted(p.name for p in run.iterdir()) == ["metrics.json"]


def test_unwritable_or_unreadable_paths_are_one_line_errors(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00 not text")
    for argv, message in ((["make-scene", "room", "--out", str(a_file / "sub")], f"{a_file} is a file, not a folder"),
                          (["make-scene", "room", "--out", str(a_file)], "is a file, not a folder"),
                          (["train-model", "--config", "page4d-tiny", "out_dir=" + str(a_file / "run"), "steps=1"],
                           f"{a_file} is a file, so the folder {a_file / 'run'} cannot be made"),
                          (["reconstruct", "demo", "--config", str(binary)], "not a UTF-8 text file")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("page4dgs: error:") and message in err[0], err


def test_overrides_may_follow_options(monkeypatch):
    """`make reconstruct OUT=... ARGS="k=v"` puts the overrides after --out."""
    import pipeline.commands as commands

    seen = {}
    monkeypatch.setattr(commands, "reconstruct", lambda args: seen.update(vars(args)) or 0)
    assert main(["reconstruct", "demo", "--out", "runs/x", "optimize.iterations=5", "--config", "demo", "seed=2"]) == 0
    assert seen["overrides"] == ["optimize.iterations=5", "seed=2"] and str(seen["out"]) == "runs/x"
    assert main(["reconstruct", "demo", "--bogus"]) == 2


def test_a_folder_that_is_not_a_run_or_holds_another_scene_is_refused(tmp_path, capsys, monkeypatch):
    # The stages replace geometry/, render/, metrics.json ... of their run folder: a folder of the user's is not
    # used as one, and two scenes with the same name (whose default folder is the same runs/<name>) do not share it.
    for where in ("a", "b"):
        assert main(["make-scene", "object", "--out", str(tmp_path / where / "S"), "--frames", "6", "--res", "32"]) == 0
    quick = ["--until", "geometry", "device=cpu", "geometry.model=oracle"]
    mine = tmp_path / "mine"
    (mine / "render").mkdir(parents=True)
    (mine / "render" / "notes.txt").write_text("keep")
    capsys.readouterr()
    assert main(["reconstruct", str(tmp_path / "a" / "S"), "--out", str(mine), *quick]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a page4dgs run folder and is not empty" in err[0]
    assert sorted(p.name for p in mine.rglob("*")) == ["notes.txt", "render"]
    monkeypatch.chdir(tmp_path)
    assert main(["reconstruct", str(tmp_path / "a" / "S"), *quick]) == 0
    assert main(["reconstruct", str(tmp_path / "b" / "S"), *quick]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"holds the run of another scene ({tmp_path / 'a' / 'S'})" in err[-1]
    assert main(["reconstruct", str(tmp_path / "a" / "S"), *quick]) == 0              # its own scene: fine
    (tmp_path / "c" / "S").mkdir(parents=True)                                       # a scene that fails to load
    shutil.copy(next((tmp_path / "a" / "S" / "train").glob("*.png")), tmp_path / "c" / "S")      # (one frame)
    capsys.readouterr()
    assert main(["reconstruct", str(tmp_path / "c" / "S"), "--out", "runs/S", *quick]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "replaced" not in err[0]                 # no warning of a replacement that never came
    assert main(["reconstruct", "nowhere", "--from", "evaluate", "--until", "geometry"]) == 2   # before the scene
    assert "--from evaluate comes after --until geometry" in capsys.readouterr().err
    assert main(["reconstruct", str(tmp_path / "b" / "S"), "--out", "runs/S", *quick]) == 0   # named: replaced


def test_symbolic_links_as_output_folders(tmp_path, capsys):
    # A dangling link or a loop as --out said "File exists" (reconstruct) or named a temporary folder (make-scene,
    # after generating the whole scene); a link to an empty folder failed in make-scene though reconstruct took it.
    (tmp_path / "dangle").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for link in ("dangle", "loop"):
        for argv, message in ((["make-scene", "object", "--out", str(tmp_path / link), "--frames", "4", "--res", "16"],
                               "is a symbolic link to nothing (dangling, or a loop)"),
                              (["reconstruct", "demo", "--out", str(tmp_path / link)],
                               "run folder is a symbolic link to nothing (dangling, or a loop)")):
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and message in err[0] and f"{tmp_path / link}:" in err[0], err
    for argv, message in ((["reconstruct", str(tmp_path / "dangle"), "--out", str(tmp_path / "never")],
                           "a symbolic link to nothing"),
                          (["reconstruct", "demo", "--config", str(tmp_path / "loop")], "symbolic link to nothing")):
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["dangle", "loop"]
    (tmp_path / "empty").mkdir(mode=0o750)
    (tmp_path / "empty").chmod(0o750)               # whatever the umask
    inode = (tmp_path / "empty").stat().st_ino
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    assert main(["make-scene", "object", "--out", str(tmp_path / "link"), "--frames", "4", "--res", "16"]) == 0
    assert (tmp_path / "link").is_symlink() and (tmp_path / "empty" / "transforms_train.json").is_file()
    # the user's folder was filled, not replaced: the same inode, its own permissions, nothing staged left beside it
    target = (tmp_path / "empty").stat()
    assert target.st_ino == inode and target.st_mode & 0o777 == 0o750
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_path_that_starts_with_a_dash_gets_a_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-clip").mkdir()
    assert main(["reconstruct", "-clip"]) == 2
    assert "unrecognized arguments: -clip (a path that starts with '-' is written ./-clip)" in capsys.readouterr().err


def test_a_torchrun_rank_of_train_model_leaves_through_os_exit_with_its_code_and_output_flushed(monkeypatch, capsys):
    # The console command (argv from sys.argv) under torchrun (WORLD_SIZE > 1) running train-model hands its code to
    # os._exit after its output, skipping the interpreter teardown where gloo can abort. Any other command, a plain
    # process, and every in-process call (argv given, as here and in tests run inside a torchrun job) return it.
    import pipeline.cli as cli

    left = []

    def fake_exit(code):
        left.append((code, capsys.readouterr()))
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", fake_exit)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    train = ["train-model", "--config", "no-such-recipe"]
    monkeypatch.setattr(sys, "argv", ["page4dgs", *train])
    assert main() == 2 and not left                                  # a plain process
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(train) == 2 and not left                             # in process
    monkeypatch.setattr(sys, "argv", ["page4dgs", "config", "seed=3"])
    assert main() == 0 and not left                                  # another command
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["page4dgs", *train])
    with pytest.raises(SystemExit):
        main()
    code, output = left.pop()
    assert code == 2 and "no-such-recipe" in output.err
    monkeypatch.setenv("WORLD_SIZE", "two")                          # not torchrun's: no early exit
    assert main() == 2 and not left


def test_the_global_flags_count_after_the_command_too(tmp_path, capsys):
    """`--debug` and `-v` may follow the command: `-v` is not an unknown argument there, and `--debug` shows the
    error's traceback (raises) instead of failing on itself."""
    from pipeline.errors import UserError

    assert main(["reconstruct", str(tmp_path / "nope"), "-v"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized" not in err and "nope" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UserError, match="nope"):
        main(["reconstruct", str(tmp_path / "nope"), "--debug"])


@pytest.mark.parametrize("extra, advice", [([], "run the same command again to resume"),
                                           (["--from", "optimize"], "run the command again without --from optimize")])
def test_an_interrupted_reconstruct_says_how_to_resume(extra, advice, monkeypatch, capsys):
    """`--from` makes its stage start over, so after Ctrl-C the same command would not resume: the message says to
    drop it."""
    import pipeline.commands

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.commands, "reconstruct", interrupted)
    assert main(["reconstruct", "demo", *extra]) == 130
    assert advice in capsys.readouterr().err


def test_usage_errors_name_the_command_once_and_hint_at_key_value(capsys):
    assert main(["make-scene", "blob"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("page4dgs: error: make-scene: argument kind: invalid choice: 'blob'")
    assert main(["reconstruct", "demo", "--until", "geometry", "optimize.iterations"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("page4dgs") == 1 and "written key=value, e.g. optimize.iterations=..." in err
    assert main(["render", "runs/x", "optimize.iterations"]) == 2          # render takes no overrides: no hint
    assert capsys.readouterr().err.strip() == "page4dgs: error: unrecognized arguments: optimize.iterations"


def test_train_model_with_a_missing_checkpoint_makes_no_output_folder(tmp_path, capsys):
    out = tmp_path / "train"
    assert main(["train-model", "--config", "page4d-tiny", f"out_dir={out}", "export=",
                 "--resume", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint to resume from not found" in capsys.readouterr().err and not out.exists()


def test_a_folder_given_as_config_says_it_is_a_folder(tmp_path, capsys):
    (tmp_path / "presets").mkdir()
    assert main(["config", "--config", str(tmp_path / "presets")]) == 2
    assert capsys.readouterr().err.strip() == (f"page4dgs: error: {tmp_path / 'presets'}: is a folder, not a config "
                                               "file (a YAML file is needed)")
