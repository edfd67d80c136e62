from pathlib import Path

import pytest

from pipeline.config import DEFAULTS_HEADER, default_config, dump_yaml, load_config
from pipeline.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def test_default_yaml_is_generated_from_the_dataclasses():
    expected = dump_yaml(default_config(), header=DEFAULTS_HEADER)
    actual = (REPO / "configs" / "default.yaml").read_text()
    assert actual == expected, "configs/default.yaml is stale: run `make defaults`"


def test_overrides_are_typed_and_validated():
    cfg = load_config("default", ["optimize.iterations=123", "seed=7", "scene.background=black"])
    assert cfg.optimize.iterations == 123 and cfg.seed == 7 and cfg.scene.background == "black"
    with pytest.raises(UserError, match="unknown config key 'optimize.iteratons'.*iterations"):
        load_config("default", ["optimize.iteratons=5"])
    with pytest.raises(UserError, match="expects int"):
        load_config("default", ["optimize.iterations=many"])
    with pytest.raises(UserError, match="must be one of"):
        load_config("default", ["device=tpu"])
    with pytest.raises(UserError, match="not of the form"):
        load_config("default", ["seed"])
    # A list option checks its items when read (`[a,b]` was accepted, then failed in int() during training).
    assert load_config("default", ["optimize.planes_resolution=[16,48]"]).optimize.planes_resolution == [16, 48]
    with pytest.raises(UserError, match=r"'optimize.planes_resolution' expects list of int, got \['a', 'b'\]"):
        load_config("default", ["optimize.planes_resolution=[a,b]"])


def test_floats_in_exponent_form_without_a_dot(tmp_path):
    # PyYAML (YAML 1.1) reads `1e-4` as a string; where a float is expected it is the number the user meant.
    cfg = load_config("default", ["optimize.lr_means=1e-4", "optimize.lr_opacities=5E-2", "optimize.lr_scales=+2.5e-3"])
    assert (cfg.optimize.lr_means, cfg.optimize.lr_opacities, cfg.optimize.lr_scales) == (1e-4, 5e-2, 2.5e-3)
    preset = tmp_path / "sci.yaml"
    preset.write_text("optimize:\n  lr_means: 3e-5\n")
    assert load_config(str(preset)).optimize.lr_means == 3e-5
    with pytest.raises(UserError, match="expects float"):
        load_config("default", ["optimize.lr_means=1e-4x"])
    with pytest.raises(UserError, match="expects int"):        # an int key keeps refusing a float in any form
        load_config("default", ["optimize.iterations=1e3"])


def test_every_preset_is_valid():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(str(path))


def test_preset_errors(tmp_path):
    with pytest.raises(UserError, match="unknown config 'nope'"):
        load_config("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimize: {iterations: [1\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_config(str(bad))
    typo = tmp_path / "typo.yaml"
    typo.write_text("optimise:\n  iterations: 3\n")
    with pytest.raises(UserError, match="unknown config key 'optimise'"):
        load_config(str(typo))
    empty = tmp_path / "empty.yaml"
    for text in ("", "  \n\n"):
        empty.write_text(text)
        with pytest.raises(UserError, match="empty config file"):
            load_config(str(empty))
    comments = tmp_path / "comments.yaml"
    comments.write_text("# changes nothing\n")
    assert load_config(str(comments)).optimize == load_config("default").optimize


def test_saved_config_round_trips():
    import yaml

    from pipeline.config import config_from_dict

    cfg = load_config("default", ["optimize.iterations=9", "render.video_paths=[spiral, bullet]"])
    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again.to_dict() == cfg.to_dict()
