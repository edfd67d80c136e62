"""scripts/gpu_parallel.sh without a GPU: a stand-in gpu_host.sh records the GPU each line was given and writes a
result file per line; a stand-in nvidia-smi reports the host's GPUs. Checks the round-robin dealing, that a line
keeps a GPU set by the caller, that each call's output comes back as a log, that more than 8 files under $OUT come
back as one archive, and GPU_SEQUENTIAL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_HOST = """#!/usr/bin/env bash
# stand-in for scripts/gpu_host.sh: no arguments = the set-up; else record the GPU and write one result file
[ "$#" -eq 0 ] && exit 0
name=$(printf '%s\\n' "$@" | sed -n 's/^--name=//p;/^--name$/{n;p}')
[ -n "${ARGS_LOG:-}" ] && echo "$*" >> "$ARGS_LOG"
[ -n "${ORDER_LOG:-}" ] && echo "start $name ${GPU_HOST_BUDGET_S:-unset}" >> "$ORDER_LOG" && sleep 0.3
mkdir -p "$OUT/results"
echo "${CUDA_VISIBLE_DEVICES:-unset}" > "$OUT/results/$name.json"
[ -n "${ORDER_LOG:-}" ] && echo "end $name" >> "$ORDER_LOG"
exit 0
"""


def run_sweep(tmp_path: Path, lines: int, gpus: int, env_extra: dict[str, str] | None = None,
              scripts: dict[str, str] | None = None, command: str = "e2e synthetic", returncode: int = 0) -> Path:
    """scripts: stand-in bench scripts (file name under bench/ -> text) that gpu_parallel.sh reads."""
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "bench").mkdir()
    for name, text in (scripts or {}).items():
        (repo / "bench" / name).write_text(text)
    shutil.copy(ROOT / "scripts/gpu_parallel.sh", repo / "scripts/gpu_parallel.sh")
    (repo / "scripts/gpu_host.sh").write_text(FAKE_HOST)
    (repo / "scripts/gpu_host.sh").chmod(0o755)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\n" + "".join(
        f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})'\n" for i in range(gpus)))
    (bin_dir / "nvidia-smi").chmod(0o755)
    sweep = repo / "sweep.txt"
    sweep.write_text("# a comment\n\n" + "".join(f"{command} --name run{n}\n" for n in range(1, lines + 1)))
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", OUT=str(out), **(env_extra or {}))
    done = subprocess.run(["bash", "scripts/gpu_parallel.sh", "sweep.txt"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == returncode, done.stdout + done.stderr
    return out


def gpus_given(out: Path) -> dict[str, str]:
    archive = out / "results.tar.gz"
    if archive.is_file():
        with tarfile.open(archive) as tar:
            return {Path(m.name).stem: tar.extractfile(m).read().decode().strip() for m in tar.getmembers()
                    if m.isfile() and m.name.startswith("results/")}
    return {p.stem: p.read_text().strip() for p in (out / "results").iterdir()}


def test_lines_are_dealt_round_robin_over_the_gpus_and_many_results_come_back_as_one_archive(tmp_path):
    out = run_sweep(tmp_path, lines=10, gpus=4)
    assert sorted(p.name for p in out.iterdir()) == ["results.tar.gz"]          # 10 files > 8: archived
    assert gpus_given(out) == {f"run{n}": str((n - 1) % 4) for n in range(1, 11)}
    with tarfile.open(out / "results.tar.gz") as tar:                            # each call's whole output
        assert sorted(m.name for m in tar.getmembers() if m.name.startswith("logs/")) == sorted(
            f"logs/call_{n}.log" for n in range(1, 11))


def test_one_gpu_or_a_gpu_set_by_the_caller_is_left_alone_and_few_results_stay_files(tmp_path):
    out = run_sweep(tmp_path / "one", lines=3, gpus=1)
    assert not (out / "results.tar.gz").exists() and gpus_given(out) == {f"run{n}": "unset" for n in (1, 2, 3)}
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["call_1.log", "call_2.log", "call_3.log"]
    out = run_sweep(tmp_path / "set", lines=3, gpus=4, env_extra={"CUDA_VISIBLE_DEVICES": "2"})
    assert gpus_given(out) == {f"run{n}": "2" for n in (1, 2, 3)}


def test_sequential_lines_run_one_after_another_on_what_is_left_of_the_budget(tmp_path):
    order = tmp_path / "order.log"
    out = run_sweep(tmp_path, lines=3, gpus=1, env_extra={"GPU_SEQUENTIAL": "1", "GPU_HOST_BUDGET_S": "500",
                                                          "ORDER_LOG": str(order)})
    events = [line.split() for line in order.read_text().splitlines()]
    assert [e[:2] for e in events] == [[k, f"run{n}"] for n in (1, 2, 3) for k in ("start", "end")]
    budgets = [int(e[2]) for e in events if e[0] == "start"]
    assert 490 <= budgets[-1] <= budgets[1] <= budgets[0] <= 500
    assert gpus_given(out) == {f"run{n}": "unset" for n in (1, 2, 3)}



def test_sequential_lines_with_too_little_budget_left_are_skipped(tmp_path):
    """A line that would start with less than GPU_MIN_LINE_S seconds left does not start (a stopped benchmark
    takes up to 30 s more, and a call past its 10 minutes brings nothing back): its log says so, the sweep fails."""
    order = tmp_path / "order.log"
    out = run_sweep(tmp_path, lines=2, gpus=1, returncode=1, env_extra={
        "GPU_SEQUENTIAL": "1", "GPU_HOST_BUDGET_S": "100", "GPU_MIN_LINE_S": "101", "ORDER_LOG": str(order)})
    assert not order.exists() and not (out / "results").exists()
    assert [(out / "logs" / f"call_{n}.log").read_text().split(":")[0] for n in (1, 2)] == ["skipped", "skipped"]
    out = run_sweep(tmp_path / "enough", lines=2, gpus=1, env_extra={
        "GPU_SEQUENTIAL": "1", "GPU_HOST_BUDGET_S": "100", "GPU_MIN_LINE_S": "90"})
    assert gpus_given(out) == {"run1": "unset", "run2": "unset"}

FAKE_BENCH = """import json, sys
from pathlib import Path
name = sys.argv[sys.argv.index("--json") + 1]
run = int(Path(name).stem[-1])
Path("bench/results", name).write_text(json.dumps({"environment": {"git_commit": "OLD"}, "speed": {"models": [
    {"model": "mlp", "variant": "eager", "it_per_s": 50.0 + run, "it_per_s_runs": [50.0 + run]}]}}))
print("speed: old", Path(name).stem, " ".join(a for a in sys.argv[1:4]))
"""
FAKE_SPEED_HOST = """#!/usr/bin/env bash
[ "$#" -eq 0 ] && exit 0
name=${@: -1}
mkdir -p bench/results/sweeps
run=$(basename "$name" .json); run=${run: -1}
echo '{"environment": {"git_commit": "NEW"}, "speed": {"models": [{"model": "mlp", "variant": "eager", ' \\
     '"it_per_s": 6'$run'.0, "it_per_s_runs": [6'$run'.0]}]}}' > "bench/results/$name"
echo "speed: new $(basename "$name" .json) $2 $3 $4"
"""


def test_speed_ab_runs_the_two_trees_in_turn_and_collects_both(tmp_path):
    """scripts/speed_ab.sh with stand-ins: new, old, new, old, each printing its speed line, the old tree's results
    copied to $OUT/old/; without an old tree, a one-line error and exit 2."""
    if shutil.which("bash") is None or shutil.which("python3") is None:
        pytest.skip("no bash or python3")
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts/speed_ab.sh", repo / "scripts/speed_ab.sh")
    (repo / "bench").mkdir()
    for name in ("__init__.py", "speed_ab_table.py"):
        shutil.copy(ROOT / "bench" / name, repo / "bench" / name)
    host = repo / "scripts/gpu_host.sh"
    host.write_text(FAKE_SPEED_HOST)
    host.chmod(0o755)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OUT=str(out))
    missing = subprocess.run(["bash", "scripts/speed_ab.sh"], cwd=repo, env=env, capture_output=True, text=True)
    assert missing.returncode == 2 and "no old tree in ab_old/" in missing.stderr
    (repo / "ab_old/bench").mkdir(parents=True)
    (repo / "ab_old/bench/__init__.py").write_text("")
    (repo / "ab_old/bench/optimize_bench.py").write_text(FAKE_BENCH)
    done = subprocess.run(["bash", "scripts/speed_ab.sh"], cwd=repo, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    speed = [line for line in done.stdout.splitlines() if line.startswith("speed:")]
    assert speed == ["speed: new ab_new_1 --gpu --only speed", "speed: old ab_old_1 --gpu --only speed",
                     "speed: new ab_new_2 --gpu --only speed", "speed: old ab_old_2 --gpu --only speed"]
    assert sorted(p.name for p in (out / "old").iterdir()) == ["ab_old_1.json", "ab_old_2.json"]
    table = done.stdout.split("== both, side by side\n")[1].splitlines()
    assert table[0].startswith("new = NEW; old = OLD")
    assert table[2].split() == ["mlp", "eager", "61.0", "/", "62.0", "51.0", "/", "52.0", "61.5", "51.5", "1.194"]
    summary = json.loads((out / "ab_summary.json").read_text())
    assert summary["rows"][0]["new_over_old"] == 1.194 and summary["old_commits"] == ["OLD", "OLD"]


def test_speed_ab_table_names_a_missing_or_foreign_file(tmp_path, capsys):
    from bench.speed_ab_table import main

    other = tmp_path / "other.json"
    other.write_text('{"quality": []}')
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    assert main(["--new", str(tmp_path / "absent.json"), "--old", str(other)]) == 2
    assert main(["--new", str(other), "--old", str(other)]) == 2
    assert main(["--new", str(listed), "--old", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[:2] == [f"speed_ab_table: no results file {tmp_path / 'absent.json'}",
                       "speed_ab_table: not an optimize_bench speed result (KeyError: 'speed')"]
    assert err[2].startswith("speed_ab_table: not an optimize_bench speed result (AttributeError")


def test_lines_of_a_script_that_takes_a_work_folder_get_one_each(tmp_path):
    """A script with a --workdir option (e2e_bench.py here) gets /tmp/parallel.N per line, so that lines side by
    side never share scenes or run folders; a script without one (deformation_bench.py) gets none. (Under the
    script's pipefail, the test once failed for a script with no second file to read, and e2e lines shared one.)"""
    args_log = tmp_path / "args.log"
    run_sweep(tmp_path / "e2e", lines=2, gpus=1, env_extra={"ARGS_LOG": str(args_log)},
              scripts={"e2e_bench.py": 'parser.add_argument("--workdir")\n'})
    # the lines run side by side: they append to the log in either order
    assert sorted(args_log.read_text().splitlines()) == [f"e2e synthetic --name run{n} --workdir /tmp/parallel.{n}"
                                                         for n in (1, 2)]
    args_log.unlink()
    run_sweep(tmp_path / "deformation", lines=1, gpus=1, env_extra={"ARGS_LOG": str(args_log)},
              scripts={"deformation_bench.py": "# no work folder\n"}, command="deformation --gpu")
    assert args_log.read_text().splitlines() == ["deformation --gpu --name run1"]


def test_speed_ab_table_reads_render_sections_as_fps_rows(tmp_path, capsys):
    """An A/B of ``--only render``: each model's frames per second as the variant 'render-fps', medians and ratio
    as for training speed; a model rendered at one commit only is left out and said to be."""
    from bench.speed_ab_table import main

    def render_file(name, commit, fps):
        path = tmp_path / name
        path.write_text(json.dumps({"environment": {"git_commit": commit},
                                    "render": {"models": [{"model": m, "fps": v} for m, v in fps.items()]}}))
        return str(path)

    new = [render_file("n1.json", "NEW", {"bases": 493.1}), render_file("n2.json", "NEW", {"bases": 486.3})]
    old = [render_file("o1.json", "OLD", {"bases": 442.8, "mlp": 369.6}),
           render_file("o2.json", "OLD", {"bases": 555.9, "mlp": 411.3})]
    assert main(["--new", *new, "--old", *old, "--out", str(tmp_path / "summary.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split() == ["bases", "render-fps", "493.1", "/", "486.3", "442.8", "/", "555.9", "489.7",
                                "499.4", "0.981"]
    assert lines[3].split()[:2] == ["mlp", "render-fps"] and lines[3].endswith("timed at one commit only: left out")
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [(r["model"], r["variant"], r["new_over_old"]) for r in rows] == [("bases", "render-fps", 0.981)]
