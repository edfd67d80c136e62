"""The runner: skipping, rerunning on config change, --from, atomic outputs, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.runner import StageSpec, run_pipeline
from pipeline.scene.config import SceneConfig
from pipeline.scene import load_scene
from tests.pipeline.test_loaders import make_frames

CALLS: list[str] = []


def first(ctx):
    CALLS.append("first")
    ctx.out("first/value.txt").write_text(str(ctx.config.optimize.iterations))
    return {"value": ctx.config.optimize.iterations}


def second(ctx):
    CALLS.append("second")
    upstream = int(ctx.artifact("first/value.txt").read_text())
    ctx.out("second/double.txt").write_text(str(2 * upstream + ctx.config.seed))
    return {}


STAGES = (
    StageSpec("first", first, ("first",), (), ("optimize",)),
    StageSpec("second", second, ("second",), ("first",), ()),
)


@pytest.fixture
def scene(tmp_path):
    return load_scene(SceneConfig(source=str(make_frames(tmp_path / "frames", n=3))))


def test_skip_rerun_and_from(tmp_path, scene):
    run = tmp_path / "run"
    CALLS.clear()
    run_pipeline(load_config("default", ["optimize.iterations=5"]), run, scene, stages=STAGES)
    assert CALLS == ["first", "second"] and (run / "second/double.txt").read_text() == "10"
    run_pipeline(load_config("default", ["optimize.iterations=5"]), run, scene, stages=STAGES)
    assert CALLS == ["first", "second"], "nothing changed: both stages skipped"
    run_pipeline(load_config("default", ["optimize.iterations=6"]), run, scene, stages=STAGES)
    assert CALLS[2:] == ["first", "second"] and (run / "second/double.txt").read_text() == "12"
    run_pipeline(load_config("default", ["optimize.iterations=6", "seed=1"]), run, scene, stages=STAGES)
    assert CALLS[4:] == ["first", "second"], "seed is part of every stage's inputs"
    run_pipeline(load_config("default", ["optimize.iterations=6", "seed=1"]), run, scene, stages=STAGES,
                 from_stage="second")
    assert CALLS[6:] == ["second"]
    manifest = json.loads((run / "manifest.json").read_text())
    entry = manifest["stages"]["second"]
    assert entry["status"] == "done" and entry["upstream_hashes"]["first"] == manifest["stages"]["first"][
        "output_hash"]
    assert entry["wall_s"] >= 0 and entry["peak_rss_mb"] > 10 and "torch" in entry["versions"]
    assert (run / "config.yaml").read_text().count("iterations: 6") == 1
    assert manifest["working_directory"] == os.getcwd()     # a relative scene.source is relative to it


def third(ctx):
    ctx.out("third/copy.txt").write_text(ctx.artifact("second/double.txt").read_text())
    return {}


def test_later_stages_made_before_an_earlier_stage_ran_again_are_stale_and_refused(tmp_path, scene, caplog):
    """``reconstruct --until`` that runs an earlier stage again leaves the later stages' outputs from the old run:
    the runner says so, and render / export / evaluate (``load_run_config``) refuse the run folder in one line
    until the later stages run again. Staleness passes down the chain (third reads second, which read first)."""
    from pipeline.errors import UserError
    from pipeline.runner import check_not_stale, stale_stages
    from stages.render.cli import load_run_config

    stages = (*STAGES, StageSpec("third", third, ("third",), ("second",), ()))
    run = tmp_path / "run"
    run_pipeline(load_config("default", ["optimize.iterations=5"]), run, scene, stages=stages)
    manifest = lambda: json.loads((run / "manifest.json").read_text())["stages"]      # noqa: E731
    assert stale_stages(manifest(), stages) == {}
    check_not_stale(run, stages=stages)
    run_pipeline(load_config("default", ["optimize.iterations=7"]), run, scene, stages=stages, until_stage="first")
    assert stale_stages(manifest(), stages) == {"second": "first", "third": "first"}
    assert "second, third outputs in this run folder predate" in caplog.text
    with pytest.raises(UserError, match="its second, third outputs were made before its first stage ran again"):
        check_not_stale(run, stages=stages)
    run_pipeline(load_config("default", ["optimize.iterations=7"]), run, scene, stages=stages)
    assert stale_stages(manifest(), stages) == {} and (run / "third/copy.txt").read_text() == "14"
    check_not_stale(run, stages=stages)
    # The same first stage run again with the same inputs gives the same outputs: nothing downstream is stale.
    run_pipeline(load_config("default", ["optimize.iterations=7"]), run, scene, stages=stages, from_stage="first",
                 until_stage="first")
    assert stale_stages(manifest(), stages) == {}
    # The commands that read a finished run (render, export, evaluate) check it first, with the pipeline's stages.
    real = tmp_path / "real"
    real.mkdir()
    (real / "config.yaml").write_text("seed: 0\n")
    entries = {"geometry": {"status": "done", "output_hash": "new"},
               "initialize": {"status": "done", "output_hash": "i", "upstream_hashes": {"geometry": "new"}},
               "optimize": {"status": "done", "output_hash": "o", "upstream_hashes": {"geometry": "old",
                                                                                      "initialize": "i"}}}
    (real / "manifest.json").write_text(json.dumps({"stages": entries}))
    with pytest.raises(UserError, match="its optimize outputs were made before its geometry stage ran again"):
        load_run_config(real)
    # A command that reads only fresh stages is not refused for a stale one it does not read.
    entries["optimize"]["upstream_hashes"]["geometry"] = "new"
    entries["render"] = {"status": "done", "output_hash": "r", "upstream_hashes": {"geometry": "new", "optimize": "o0"}}
    (real / "manifest.json").write_text(json.dumps({"stages": entries}))
    check_not_stale(real, reads=("geometry", "optimize"))
    with pytest.raises(UserError, match="its render outputs were made before its optimize stage ran again"):
        check_not_stale(real, reads=("geometry", "initialize", "optimize", "render"))


def test_an_unreadable_config_yaml_is_written_again_when_every_stage_is_up_to_date(tmp_path, scene, caplog):
    run = tmp_path / "run"
    run_pipeline(load_config("default", ["optimize.iterations=5"]), run, scene, stages=STAGES)
    (run / "config.yaml").write_text("optimize: [\n")
    CALLS.clear()
    run_pipeline(load_config("default", ["optimize.iterations=5"]), run, scene, stages=STAGES)
    assert CALLS == [] and "config.yaml was unreadable" in caplog.text
    assert load_config(str(run / "config.yaml")).optimize.iterations == 5


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_refused_before_the_run_folder_is_made(tmp_path, scene):
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="CUDA"):
        run_pipeline(load_config("default", ["device=cuda"]), tmp_path / "run", scene, stages=STAGES)
    assert not (tmp_path / "run").exists()


def test_the_same_scene_named_relatively_or_absolutely_reuses_the_stages(tmp_path, monkeypatch):
    """The scene's source enters every stage's input hash as an absolute path: `reconstruct frames` and
    `reconstruct /abs/frames` (or through a symlink) find the same run up to date; another folder does not."""
    make_frames(tmp_path / "frames", n=3)
    (tmp_path / "link").symlink_to(tmp_path / "frames")
    monkeypatch.chdir(tmp_path)
    stages = (StageSpec("first", first, ("first",), (), ("scene", "optimize")),)
    run = tmp_path / "run"
    CALLS.clear()
    for source in ("frames", str(tmp_path / "frames"), "./link"):
        config = load_config("default", [f"scene.source={source}"])
        run_pipeline(config, run, load_scene(config.scene), stages=stages)
    assert CALLS == ["first"]
    make_frames(tmp_path / "other", n=3)
    config = load_config("default", ["scene.source=other"])
    run_pipeline(config, run, load_scene(config.scene), stages=stages)
    assert CALLS == ["first", "first"]


@pytest.mark.parametrize("text", ["[]", '{"stages": 5}', '{"stages": {"first": 3}}'])
def test_a_manifest_of_the_wrong_shape_reruns_every_stage(tmp_path, scene, text):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(text)
    CALLS.clear()
    run_pipeline(load_config("default"), run, scene, stages=STAGES)
    assert CALLS == ["first", "second"]
    assert json.loads((run / "manifest.json").read_text())["stages"]["second"]["status"] == "done"


@pytest.mark.parametrize("files", [5, "first/value.txt", [5], [["first/value.txt"]], {"a": 1}])
def test_a_malformed_stage_entry_reruns_that_stage(tmp_path, scene, files):
    # "files": 5 was a TypeError traceback in is_current; like a manifest of the wrong shape, it means "run again".
    run = tmp_path / "run"
    run_pipeline(load_config("default"), run, scene, stages=STAGES)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["stages"]["first"]["files"] = files
    (run / "manifest.json").write_text(json.dumps(manifest))
    CALLS.clear()
    run_pipeline(load_config("default"), run, scene, stages=STAGES)
    assert CALLS == ["first"], "first reruns; its output is unchanged, so second is still current"
    entry = json.loads((run / "manifest.json").read_text())["stages"]["first"]
    assert entry["status"] == "done" and entry["files"] == [["first/value.txt", 4]]
    assert "manifest.json: the 'first' entry is malformed; the stage will run again" in (run / "log.txt").read_text()


def test_an_unknown_stage_name_writes_nothing(tmp_path, scene):
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="unknown stage 'bogus'"):
        run_pipeline(load_config("default"), tmp_path / "run", scene, stages=STAGES, until_stage="bogus")
    assert not (tmp_path / "run").exists()


def test_from_after_until_is_refused_before_anything_is_written(tmp_path, scene):
    from pipeline.errors import UserError

    with pytest.raises(UserError, match="--from evaluate comes after --until geometry: no stage would run"):
        run_pipeline(load_config("default"), tmp_path / "run", scene, from_stage="evaluate", until_stage="geometry")
    assert not (tmp_path / "run").exists()


def test_a_deleted_output_is_rebuilt(tmp_path, scene):
    run = tmp_path / "run"
    CALLS.clear()
    cfg = load_config("default")
    run_pipeline(cfg, run, scene, stages=STAGES)
    (run / "second/double.txt").unlink()
    run_pipeline(cfg, run, scene, stages=STAGES)
    assert CALLS == ["first", "second", "second"]


def test_a_failing_stage_leaves_finished_work_alone(tmp_path, scene):
    run = tmp_path / "run"
    cfg = load_config("default")
    run_pipeline(cfg, run, scene, stages=STAGES)
    before = (run / "second/double.txt").read_text()

    def broken(ctx):
        ctx.out("second/double.txt").write_text("half-writ")
        raise KeyboardInterrupt

    stages = (STAGES[0], StageSpec("second", broken, ("second",), ("first",), ("render",)))
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg, run, scene, stages=stages)
    assert (run / "second/double.txt").read_text() == before
    entry = json.loads((run / "manifest.json").read_text())["stages"]["second"]
    # The finished outputs still match their recorded inputs: the stage stays done, the failed attempt beside it.
    assert entry["status"] == "done" and entry["input_hash_attempted"] != entry["input_hash"]


def test_a_failed_attempt_with_a_new_config_keeps_the_run_as_it_was(tmp_path, scene):
    run = tmp_path / "run"
    CALLS.clear()
    run_pipeline(load_config("default", ["optimize.iterations=5"]), run, scene, stages=STAGES)
    config_before = (run / "config.yaml").read_text()

    def failing_first(ctx):
        raise RuntimeError("bad value")

    stages = (StageSpec("first", failing_first, ("first",), (), ("optimize",)), STAGES[1])
    with pytest.raises(RuntimeError):
        run_pipeline(load_config("default", ["optimize.iterations=7"]), run, scene, stages=stages)
    assert (run / "config.yaml").read_text() == config_before, "config.yaml still describes the outputs"
    run_pipeline(load_config("default", ["optimize.iterations=5"]), run, scene, stages=STAGES)
    assert CALLS == ["first", "second"], "the original command finds every stage up to date"
    run_pipeline(load_config("default", ["optimize.iterations=7"]), run, scene, stages=STAGES)
    assert CALLS[2:] == ["first", "second"] and "iterations: 7" in (run / "config.yaml").read_text()


def test_a_full_disk_is_one_line_naming_the_run_and_the_manifest_is_not_left_running(tmp_path, scene,
                                                                                      monkeypatch):
    # A write that fails with ENOSPC names no file; the manifest write in the error path may fail too.
    import errno

    from pipeline import runner
    from pipeline.errors import UserError

    run = tmp_path / "run"
    cfg = load_config("default")
    run_pipeline(cfg, run, scene, stages=STAGES)

    def disk_full(ctx):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    stages = (STAGES[0], StageSpec("second", disk_full, ("second",), ("first",), ("render",)))
    with pytest.raises(UserError) as raised:
        run_pipeline(load_config("default", ["seed=3"]), run, scene, stages=stages)
    assert str(raised.value) == (f"{run}: stage 'second' stopped: No space left on device (finished stages are "
                                 "kept; run the same command again to resume)")
    entry = json.loads((run / "manifest.json").read_text())["stages"]["second"]
    assert entry["status"] == "done" and "input_hash_attempted" in entry
    # When the disk refuses the manifest as well, the stage's own error is still the one reported.
    real_update = runner.Manifest.update
    calls = []

    def update_then_full(self, name, **entry):
        if name == "second":
            calls.append(entry.get("status"))
        if name == "second" and entry.get("status") != "running":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_update(self, name, **entry)

    monkeypatch.setattr(runner.Manifest, "update", update_then_full)
    with pytest.raises(UserError, match="stage 'second' stopped: No space left on device"):
        run_pipeline(load_config("default", ["seed=4"]), run, scene, stages=stages)
    assert calls == ["running", "done"]      # the error path tried to write the manifest, and the disk refused it


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_runs(tmp_path, scene):
    # Two reconstructs into one --out used to interleave: one committed geometry/ while the other's initialize read
    # it ("missing depth map"). The folder is locked while its stages run; the lock goes with the run.
    from pipeline.errors import UserError
    from pipeline.runner import run_folder_lock

    run = tmp_path / "run"
    run.mkdir()
    CALLS.clear()
    with run_folder_lock(run):
        with pytest.raises(UserError, match=rf"^{run}: another page4dgs process \(pid {os.getpid()}\) is running in "
                                            "this run folder; wait for it to finish or choose another --out$"):
            run_pipeline(load_config("default"), run, scene, stages=STAGES)
    assert CALLS == [] and not (run / "manifest.json").exists()
    run_pipeline(load_config("default"), run, scene, stages=STAGES)
    assert CALLS == ["first", "second"]
    with run_folder_lock(run):      # released after the run, and after a failed one
        pass


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b"", None])
def test_an_unreadable_resume_marker_means_a_fresh_start(tmp_path, scene, content):
    run = tmp_path / "run"
    cfg = load_config("default")
    work = run / ".work" / "first"
    work.mkdir(parents=True)
    (work / "first").mkdir()
    (work / "first" / "stale.txt").write_text("from an earlier attempt")    # would be committed if resumed
    if content is None:
        (work / ".input_hash").mkdir()               # not even a file
    else:
        (work / ".input_hash").write_bytes(content)
    CALLS.clear()
    run_pipeline(cfg, run, scene, stages=STAGES)
    assert CALLS == ["first", "second"]
    assert (run / "second/double.txt").read_text() == str(2 * cfg.optimize.iterations + cfg.seed)
    assert not (run / "first" / "stale.txt").exists(), "a work folder of unknown inputs is not resumed"


RESUMABLE = '''
import sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from pipeline.config import load_config
from pipeline.runner import StageSpec, run_pipeline
from pipeline.scene import load_scene
from pipeline.scene.config import SceneConfig

def slow(ctx):
    # A checkpointing stage: counts to 6, one step at a time, resuming from its last checkpoint.
    ckpt = ctx.out("slow/checkpoint.txt")
    step = int(ckpt.read_text()) if ckpt.exists() else 0
    log = Path({log!r})
    with log.open("a") as f:
        f.write(f"start {{step}}\\n")
    while step < 6:
        time.sleep(0.3)
        step += 1
        tmp = ckpt.with_suffix(".tmp"); tmp.write_text(str(step)); tmp.replace(ckpt)
    ctx.out("slow/result.txt").write_text("done after 6 steps")
    return {{}}

stages = (StageSpec("slow", slow, ("slow",), (), ()),)
scene = load_scene(SceneConfig(source={frames!r}))
run_pipeline(load_config("default"), Path({run!r}), scene, stages=stages)
'''


def test_killed_run_resumes_from_its_checkpoint(tmp_path, scene):
    repo = str(Path(__file__).resolve().parents[2])
    script = tmp_path / "job.py"
    log = tmp_path / "starts.txt"
    script.write_text(RESUMABLE.format(repo=repo, log=str(log), frames=str(tmp_path / "frames"),
                                       run=str(tmp_path / "run")))
    proc = subprocess.Popen([sys.executable, str(script)])
    ckpt = tmp_path / "run/.work/slow/slow/checkpoint.txt"
    deadline = time.time() + 30
    while time.time() < deadline and not (ckpt.exists() and int(ckpt.read_text() or 0) >= 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "run/slow").exists(), "nothing is committed before the stage finishes"
    subprocess.run([sys.executable, str(script)], check=True)
    starts = log.read_text().split()
    assert starts[0:2] == ["start", "0"] and starts[2] == "start" and int(starts[3]) >= 2
    assert (tmp_path / "run/slow/result.txt").read_text() == "done after 6 steps"
    assert not (tmp_path / "run/.work/slow").exists()


def test_a_changed_file_that_a_stage_reads_reruns_it(tmp_path, scene):
    """StageSpec.reads names files outside the run (the geometry stage: its weights file): same content -> the
    stage is skipped; new content at the same path -> it runs again, and so does what depends on it."""
    from pipeline.io import sha256_file

    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"first")

    def reads(config):
        return {"weights": str(weights), "sha256": sha256_file(weights)}

    stages = (StageSpec("first", first, ("first",), (), ("optimize",), reads=reads), STAGES[1])
    run = tmp_path / "run"
    CALLS.clear()
    run_pipeline(load_config("default"), run, scene, stages=stages)
    weights.write_bytes(b"first")                 # rewritten, same content: still up to date
    run_pipeline(load_config("default"), run, scene, stages=stages)
    assert CALLS == ["first", "second"]
    weights.write_bytes(b"second")
    run_pipeline(load_config("default"), run, scene, stages=stages)
    assert CALLS == ["first", "second", "first"], "the output of 'first' is unchanged, so 'second' is skipped"


def test_the_geometry_stage_reads_its_weights_file(tmp_path):
    from stages.geometry.page4d.checkpoint import BUNDLED
    from stages.geometry.stage import external_inputs
    from pipeline.io import sha256_file

    bundled = external_inputs(load_config("default"))
    assert bundled == {"checkpoint": str(BUNDLED["page4d-tiny"].resolve()),
                       "bytes": BUNDLED["page4d-tiny"].stat().st_size, "sha256": sha256_file(BUNDLED["page4d-tiny"])}
    own = tmp_path / "mine.safetensors"
    own.write_bytes(b"not really weights")
    assert external_inputs(load_config("default", [f"geometry.checkpoint={own}"]))["sha256"] == sha256_file(own)
    assert external_inputs(load_config("default", ["geometry.model=oracle"])) == {}
    assert external_inputs(load_config("default", ["geometry.model=page4d-1b"])) == {"checkpoint": "page4d-nomask"}
    missing = external_inputs(load_config("default", [f"geometry.checkpoint={tmp_path / 'nope.pt'}"]))
    assert missing["missing"] is True
