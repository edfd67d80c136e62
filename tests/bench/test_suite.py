"""The benchmark suite runner and the end-to-end benchmark's bookkeeping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import e2e_bench, run
from bench.run import Step


def test_a_failing_step_is_reported_and_the_suite_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "RESULTS", tmp_path)
    monkeypatch.delenv("BENCH_TEST_ABSENT", raising=False)
    monkeypatch.setitem(run.GROUPS, "test", (
        Step("broken", "no_such_module", (), "a module that does not exist", results="x.json"),
        Step("needs", "run", ("--list",), "needs a path the host lacks", results="y.json",
             needs_env="BENCH_TEST_ABSENT"),
        Step("fine", "run", ("--list",), "prints the steps", results="z.json"),
    ))
    assert run.main(["test"]) == 1
    record = json.loads((tmp_path / "suite_test.json").read_text())
    assert [(s["name"], s["status"]) for s in record["steps"]] == [("broken", "failed"), ("needs", "skipped"),
                                                                   ("fine", "ok")]
    assert record["steps"][0]["returncode"] != 0 and record["steps"][2]["returncode"] == 0
    assert record["steps"][2]["command"].endswith("-m bench.run --list")
    assert record["environment"]["command"] and record["environment"]["device"]
    marked = {**record, "steps": [{**record["steps"][0], "returncode": 99}, record["steps"][1],
                                  {**record["steps"][2], "status": "stale"}]}
    (tmp_path / "suite_test.json").write_text(json.dumps(marked))
    assert run.main(["test", "--only", "fine"]) == 0
    assert run.main(["test", "--only", "nonexistent"]) == 2
    # The partial run replaced its own step and kept the others' entries, in the group's order.
    after = json.loads((tmp_path / "suite_test.json").read_text())
    assert [(s["name"], s["status"]) for s in after["steps"]] == [("broken", "failed"), ("needs", "skipped"),
                                                                  ("fine", "ok")]
    assert after["steps"][0]["returncode"] == 99


def test_every_step_names_a_script_that_exists():
    for group in ("gpu", "cpu"):
        for step in run.GROUPS[group]:
            assert (run.BENCH_DIR / f"{step.module}.py").is_file(), step
            assert step.results.split(":")[0].endswith(".json"), step


def test_e2e_plan_covers_every_scene_and_model():
    runs = e2e_bench.plan("synthetic", ["object", "room"], [0, 1], ["bases", "none"])
    assert [r.id for r in runs] == ["object-s0-bases", "object-s0-none", "object-s1-bases", "object-s1-none",
                                    "room-s0-bases", "room-s0-none", "room-s1-bases", "room-s1-none"]
    lady = e2e_bench.plan("lady-running", [], [], ["bases"])
    assert lady[0].overrides == ["scene.test_every=8"] and lady[0].source.endswith("lady-running")


def test_e2e_object_scenes_follow_the_issue_protocol(tmp_path, monkeypatch):
    """Synthetic objects are made with 50 training and 20 test views (issue #6's quality protocol), rooms with
    make-scene's defaults; a scene already there is reused, and the command is recorded either way."""
    calls = []

    def fake_run(command, check, cwd):
        calls.append(command)
        out = Path(command[command.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "transforms_train.json").write_text("{}")

    monkeypatch.setattr(e2e_bench.subprocess, "run", fake_run)
    path, info = e2e_bench.make_scene("object", 3, tmp_path)
    assert calls[0][-10:] == ["make-scene", "object", "--out", str(path), "--seed", "3", "--frames", "50",
                              "--test-views", "20"]
    assert "--test-views 20" in info["command"] and "make_scene_s" in info
    again, info = e2e_bench.make_scene("object", 3, tmp_path)
    assert again == path and info["reused"] and len(calls) == 1
    room, _ = e2e_bench.make_scene("room", 3, tmp_path)
    assert calls[1][-4:] == ["--out", str(room), "--seed", "3"] and room != path


def run_entry(kind, seed, model, psnr, optimize_s=10.0, code=0):
    return {"id": f"{kind}-s{seed}-{model}", "kind": kind, "seed": seed, "deformation": model, "returncode": code,
            "wall_s": optimize_s + 5.0, "metrics": {"psnr": psnr, "ssim": 0.8, "lpips_alex": 0.2},
            "stages": {"optimize": {"wall_s": optimize_s}}}


def test_e2e_summary_pairs_each_model_with_the_static_run_of_the_same_scene():
    runs = [run_entry("object", 0, "bases", 30.0), run_entry("object", 0, "none", 24.0),
            run_entry("object", 1, "bases", 28.0, optimize_s=20.0), run_entry("object", 1, "none", 27.0),
            run_entry("object", 2, "bases", 40.0),                       # no static run: no gain for this seed
            run_entry("room", 0, "bases", 99.0, code=1)]                 # failed: left out
    rows = {(r["kind"], r["deformation"]): r for r in e2e_bench.summarize(runs)}
    assert set(rows) == {("object", "bases"), ("object", "none")}
    bases = rows[("object", "bases")]
    assert bases["runs"] == 3 and bases["psnr"] == pytest.approx((30 + 28 + 40) / 3)
    assert bases["psnr_over_static"] == pytest.approx(((30 - 24) + (28 - 27)) / 2)
    assert (bases["psnr_over_static_min"], bases["psnr_over_static_min_seed"]) == (pytest.approx(1.0), 1)
    assert bases["optimize_s"] == pytest.approx((10 + 20 + 10) / 3)
    assert bases["seeds"] == [0, 1, 2]
    assert rows[("object", "none")]["psnr_over_static"] is None
    assert rows[("object", "none")]["psnr_over_static_min"] is None


def test_e2e_summary_keeps_the_lone_runs_time_apart_from_runs_that_shared_the_host():
    shared = [dict(run_entry("object", seed, "bases", 25.0, optimize_s=300.0), side_by_side=4) for seed in (0, 1)]
    lone = [run_entry("object", 10, "bases", 24.0, optimize_s=150.0),
            dict(run_entry("object", 11, "bases", 24.0, optimize_s=130.0), side_by_side=1)]
    alone = [dict(run_entry("object", 0, "none", 17.0), side_by_side=4)]
    rows = {r["deformation"]: r for r in e2e_bench.summarize(shared + lone + alone)}
    bases = rows["bases"]
    assert bases["side_by_side"] == 4 and bases["optimize_s"] == pytest.approx((300 + 300 + 150 + 130) / 4)
    assert bases["lone_seeds"] == [10, 11] and bases["lone_optimize_s"] == pytest.approx(140.0)
    assert rows["none"]["lone_seeds"] == [] and rows["none"]["lone_optimize_s"] is None


def test_e2e_runs_keep_each_test_view_s_psnr_and_time_gap_beside_the_moving_section(tmp_path):
    metrics = {"psnr": 25.0, "per_view": [{"name": "r_000", "psnr": 24.0}, {"name": "r_001", "psnr": 26.0}],
               "moving": {"psnr_moving": 18.0, "per_view": [
                   {"name": "r_000", "time": 0.31, "time_to_train": 0.0106, "psnr_moving": 17.0, "psnr_static": 27},
                   {"name": "r_001", "time": 0.5, "time_to_train": 0.0, "psnr_moving": 19.0, "psnr_static": 29}]}}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    moving = e2e_bench.collect(tmp_path)["metrics"]["moving"]
    assert moving["psnr_moving"] == 18.0 and "per_view" not in moving
    assert moving["views"] == [{"name": "r_000", "psnr": 24.0, "psnr_moving": 17.0, "time_to_train": 0.0106},
                               {"name": "r_001", "psnr": 26.0, "psnr_moving": 19.0, "time_to_train": 0.0}]


def test_e2e_summary_keeps_the_held_out_seeds_mean_apart_from_the_tuning_seeds():
    runs = [run_entry("object", 0, "bases", 26.0), run_entry("object", 9, "bases", 25.0),
            run_entry("object", 10, "bases", 24.0), run_entry("object", 13, "bases", 23.0),
            run_entry("object", 1, "none", 17.0)]
    rows = {r["deformation"]: r for r in e2e_bench.summarize(runs)}
    assert rows["bases"]["psnr"] == pytest.approx(24.5)
    assert rows["bases"]["held_out_seeds"] == [10, 13] and rows["bases"]["held_out_psnr"] == pytest.approx(23.5)
    assert rows["none"]["held_out_seeds"] == [] and rows["none"]["held_out_psnr"] is None
    assert e2e_bench.TUNING_SEEDS == frozenset(range(10))


def test_e2e_runs_keep_the_device_they_ran_on_when_a_later_call_continues_the_file(tmp_path, monkeypatch):
    old = run_entry("object", 0, "bases", 30.0)                        # recorded before runs had a device
    (tmp_path / "e2e_synthetic.json").write_text(json.dumps({"environment": {"device": "GPU A"}, "runs": [old]}))
    monkeypatch.setattr(e2e_bench, "RESULTS", tmp_path)
    monkeypatch.setattr(e2e_bench, "environment", lambda device: {"device": "GPU B"})
    monkeypatch.setattr(e2e_bench, "make_scene", lambda kind, seed, where: (tmp_path / f"{kind}{seed}", {}))
    monkeypatch.setattr(e2e_bench, "reconstruct",
                        lambda run, where, extra, timeout, keep: run_entry(run.kind, run.seed, run.deformation, 20.0))
    assert e2e_bench.main(["synthetic", "--kinds", "object", "--seeds", "0", "--models", "bases", "none"]) == 0
    record = json.loads((tmp_path / "e2e_synthetic.json").read_text())
    assert {r["id"]: r["device"] for r in record["runs"]} == {"object-s0-bases": "GPU A", "object-s0-none": "GPU B"}
    assert record["environment"]["device"] == "GPU B"


def test_e2e_a_call_with_other_overrides_does_not_continue_the_file(tmp_path, monkeypatch, capsys):
    """Runs are skipped by id, and the id does not name the overrides: a call whose overrides differ from the
    file's stops with one line (and leaves the file as it was); the same overrides continue it; --fresh starts
    over."""
    path = tmp_path / "e2e_synthetic.json"
    text = json.dumps({"overrides": ["optimize.iterations=100", "render.video_paths=[]"],
                       "runs": [run_entry("object", 0, "bases", 30.0)]})
    path.write_text(text)
    monkeypatch.setattr(e2e_bench, "RESULTS", tmp_path)
    monkeypatch.setattr(e2e_bench, "environment", lambda device: {"device": "here"})
    monkeypatch.setattr(e2e_bench, "make_scene", lambda kind, seed, where: (tmp_path / f"{kind}{seed}", {}))
    ran = []
    monkeypatch.setattr(e2e_bench, "reconstruct", lambda run, where, extra, timeout, keep: (
        ran.append(run.id) or run_entry(run.kind, run.seed, run.deformation, 20.0)))
    call = ["--kinds", "object", "--seeds", "0", "--models", "bases", "none"]
    assert e2e_bench.main(["synthetic", "optimize.iterations=200", *call]) == 2
    assert "optimize.iterations=100" in capsys.readouterr().err and path.read_text() == text and ran == []
    assert e2e_bench.main(["synthetic", "optimize.iterations=100", *call]) == 0 and ran == ["object-s0-none"]
    assert e2e_bench.main(["synthetic", "optimize.iterations=200", "--fresh", *call]) == 0
    assert ran == ["object-s0-none", "object-s0-bases", "object-s0-none"]


def test_e2e_calls_with_other_result_names_use_other_work_folders(tmp_path, monkeypatch):
    """Two calls side by side on one host (one scene, other overrides, other --name) must not share scenes or run
    folders: the default work folder is /tmp/page4dgs-e2e/NAME (once /tmp/page4dgs-e2e/SUITE for every call)."""
    monkeypatch.setattr(e2e_bench, "RESULTS", tmp_path)
    monkeypatch.setattr(e2e_bench, "environment", lambda device: {"device": "here"})
    where = []
    monkeypatch.setattr(e2e_bench, "make_scene", lambda kind, seed, folder: (where.append(folder) or folder, {}))
    monkeypatch.setattr(e2e_bench, "reconstruct", lambda run, folder, extra, timeout, keep: (
        where.append(folder) or run_entry(run.kind, run.seed, run.deformation, 20.0)))
    for name in ("e2e_control", "e2e_variant"):
        assert e2e_bench.main(["synthetic", "--kinds", "object", "--seeds", "0", "--models", "bases", "--name",
                               name]) == 0
    base = Path("/tmp/page4dgs-e2e")
    assert where == [base / "e2e_control" / "scenes", base / "e2e_control" / "runs",
                     base / "e2e_variant" / "scenes", base / "e2e_variant" / "runs"]


def test_e2e_merge_puts_the_runs_of_side_by_side_calls_into_the_suite_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(e2e_bench, "RESULTS", tmp_path)
    monkeypatch.setattr(e2e_bench, "environment", lambda device: {"device": "here"})
    main = {"suite": "synthetic", "environment": {"device": "GPU A"}, "notes": ["earlier"],
            "runs": [run_entry("object", 0, "bases", 20.0), run_entry("room", 0, "bases", 30.0)]}
    (tmp_path / "e2e_synthetic.json").write_text(json.dumps(main))
    part = {"suite": "synthetic", "environment": {"device": "GPU B"}, "scenes": {"object-s0": {"command": "x"}},
            "runs": [run_entry("object", 0, "bases", 23.0), run_entry("object", 0, "none", 18.0),
                     run_entry("object", 1, "bases", 99.0, code=1)]}          # failed: not merged
    (tmp_path / "e2e_part.json").write_text(json.dumps(part))
    assert e2e_bench.main(["synthetic", "--merge", "e2e_part", "--note", "side by side", "--side-by-side", "8"]) == 0
    record = json.loads((tmp_path / "e2e_synthetic.json").read_text())
    assert {r["id"]: r.get("side_by_side") for r in record["runs"]} == {
        "object-s0-bases": 8, "object-s0-none": 8, "room-s0-bases": None}
    psnr = {r["id"]: (r["metrics"]["psnr"], r["device"]) for r in record["runs"]}
    assert psnr == {"object-s0-bases": (23.0, "GPU B"), "object-s0-none": (18.0, "GPU B"),
                    "room-s0-bases": (30.0, "GPU A")}
    assert record["notes"] == ["earlier", "object-s0-bases, object-s0-none merged from e2e_part.json: side by side"]
    assert record["environment"] == {"device": "GPU A"}              # the file's, not this machine's
    assert "object-s0" in record["scenes"]
    gains = {(r["kind"], r["deformation"]): r["psnr_over_static"] for r in record["summary"]}
    assert gains[("object", "bases")] == pytest.approx(5.0)
    assert {(r["kind"], r["side_by_side"]) for r in record["summary"]} == {("object", 8), ("room", 1)}
    assert not any("extra_overrides" in r for r in record["runs"])
    # a part run with overrides beyond the suite's: merged, its runs marked with them, and the merge says so
    record["overrides"] = ["render.video_paths=[]"]
    (tmp_path / "e2e_synthetic.json").write_text(json.dumps(record))
    part.update(overrides=["optimize.opacity_weighting=time", "render.video_paths=[]"],
                runs=[run_entry("object", 0, "bases", 22.0)])
    (tmp_path / "e2e_time.json").write_text(json.dumps(part))
    assert e2e_bench.main(["synthetic", "--merge", "e2e_time"]) == 0
    assert "e2e_time.json ran with overrides beyond the suite's: optimize.opacity_weighting=time" in \
        capsys.readouterr().out
    record = json.loads((tmp_path / "e2e_synthetic.json").read_text())
    marked = {r["id"]: r.get("extra_overrides") for r in record["runs"]}
    assert marked == {"object-s0-bases": ["optimize.opacity_weighting=time"], "object-s0-none": None,
                      "room-s0-bases": None}
    (tmp_path / "e2e_lady.json").write_text(json.dumps({"suite": "lady-running", "runs": []}))
    assert e2e_bench.main(["synthetic", "--merge", "e2e_lady"]) == 2               # another suite: refused
    assert e2e_bench.main(["synthetic", "--merge", "e2e_missing"]) == 2
