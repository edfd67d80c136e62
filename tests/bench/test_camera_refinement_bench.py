"""bench/camera_refinement_bench.py on one short room: the file it writes, and the refinement beating the network."""

from __future__ import annotations

import json

from bench.camera_refinement_bench import main


def test_one_short_panning_room(tmp_path, capsys):
    out = tmp_path / "camera_refinement.json"
    assert main(["--seeds", "1000000", "--pan-scales", "4", "--frames", "12", "--res", "128", "--variants", "network",
                 "refined", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["benchmark"] == "camera_refinement" and record["frames"] == 12
    (row,) = record["rows"]
    network, refined = row["network"], row["refined"]
    assert refined["refinement"]["kept"] and refined["refinement"]["frames"] == 12
    assert network["refinement"] is None and network["refinement_s"] is None
    # deterministic on the CPU: the network's cameras barely turn while this camera pans; the refinement follows it
    assert refined["rpe_rot_deg"] < 0.5 * network["rpe_rot_deg"]
    assert record["summary"]["pan4"]["refined"]["rpe_rot_deg"] == refined["rpe_rot_deg"]
    # without focal refinement the field of view is the network's: the same error either way, and a real one
    assert refined["fov_error_deg"] == network["fov_error_deg"] > 0.1
    assert record["variants"] == {"network": ["geometry.refine_cameras=false"],
                                  "refined": ["geometry.refine_cameras=true", "geometry.refine_focal=false"]}
    assert "| pan4 x1 | refined |" in capsys.readouterr().out
