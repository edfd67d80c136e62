"""Checkpoint files: official layouts key for key, safe loading, mask flags, one-line errors."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import UserError
from stages.geometry.page4d import PAGE4D
from stages.geometry.page4d import checkpoint as ckpt
from stages.geometry.page4d.checkpoint import load_model, save_weights
from tests.geometry.spec_keys import Dims, official_shapes



TINY = "page4d-tiny"


@pytest.fixture
def small(tmp_path):
    """(config path, dims) of a small model on the page4d-tiny code path (fast on a shared CPU)."""
    import yaml

    from tests.geometry.test_page4d_model import SMALL

    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(SMALL.to_dict()))
    return str(path), Dims.of(SMALL)


def spec_state(dims: Dims, layout: str, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in official_shapes(dims, layout).items()}


def single_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("layout, fmt", [("vggt", "pt"), ("vggt", "safetensors"), ("page4d", "trainer")])
def test_official_layouts_load_key_for_key(tmp_path, small, layout, fmt):
    name, dims = small
    state = spec_state(dims, layout)
    state_with_track = {**state, "track_head.tracker.fmap_norm.weight": torch.ones(128)}
    if fmt == "pt":
        path = tmp_path / "model.pt"
        torch.save(state_with_track, path)
    elif fmt == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "model.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "checkpoint_mask.pt"
        torch.save({"model": state, "prev_epoch": 3, "steps": {"train": 10}, "optimizer": {"state": {}}}, path)
    model, info = load_model(name, str(path))
    assert info.layout == layout and info.format == ("page4d" if fmt == "trainer" else "vggt")
    assert (model.aggregator.spatial_mask_head is not None) == (layout == "page4d")
    assert info.mask_enabled == (layout == "page4d")      # checkpoint_mask.pt: on; VGGT: no head
    assert info.ignored_keys == (["track_head.tracker.fmap_norm.weight"] if fmt == "pt" else [])
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_nomask_checkpoint_turns_the_mask_off(tmp_path, small):
    name, dims = small
    path = tmp_path / "checkpoint_nomask.pt"
    torch.save({"model": spec_state(dims, "page4d")}, path)
    model, info = load_model(name, str(path))
    assert not info.mask_enabled and not model.mask_enabled
    _, forced = load_model(name, str(path), mask="on")
    assert forced.mask_enabled


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path, small):
    name, dims = small
    state = spec_state(dims, "page4d")
    del state["camera_head.embed_pose.bias"]
    state["aggregator.extra.weight"] = torch.zeros(3)
    state["depth_head.norm.weight"] = torch.zeros(5)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(UserError) as err:
        load_model(name, str(path))
    message = single_line(err)
    assert "1 missing keys: camera_head.embed_pose.bias" in message
    assert "1 unexpected keys: aggregator.extra.weight" in message
    assert "depth_head.norm.weight (5,) != (128,)" in message


class _Exploit:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_wrong_files_are_one_line_errors(tmp_path, capsys):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(UserError) as err:
        load_model(TINY, str(text))
    assert "not a readable checkpoint" in single_line(err)
    exploit = tmp_path / "exploit.pt"
    torch.save({"model": _Exploit()}, exploit)
    with pytest.raises(UserError) as err:
        load_model(TINY, str(exploit))
    assert "not a readable checkpoint" in single_line(err)
    assert "pickled code ran" not in capsys.readouterr().out
    whole = tmp_path / "whole.pt"
    torch.save({"a": torch.zeros(10_000)}, whole)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[:3000])
    with pytest.raises(UserError) as err:
        load_model(TINY, str(truncated))
    # torch's zip error, up to its first sentence (it goes on with advice about its zip library)
    assert single_line(err).endswith("failed finding central directory)"), single_line(err)
    numbers = tmp_path / "numbers.pt"
    torch.save({"epoch": 3}, numbers)
    with pytest.raises(UserError) as err:
        load_model(TINY, str(numbers))
    assert "not a model checkpoint" in single_line(err)
    with pytest.raises(UserError) as err:
        load_model(TINY, str(tmp_path / "absent.pt"))
    assert "checkpoint not found" in single_line(err)


def test_missing_bundled_weights_say_which_file_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(ckpt.BUNDLED, TINY, tmp_path / "weights" / "page4d-tiny.safetensors")
    with pytest.raises(UserError) as err:
        load_model(TINY)
    message = single_line(err)
    assert "page4d-tiny.safetensors" in message and "train-model" in message and "checkpoint=" in message


def test_official_alias_offline_without_cache_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UserError) as err:
        ckpt.resolve_checkpoint("", "page4d-1b")
    message = single_line(err)
    assert "zhouk777/PAGE4D/checkpoint_nomask.pt" in message and "geometry.checkpoint=PATH" in message


def test_our_format_roundtrips_config_and_flags(tmp_path):
    from tests.geometry.test_page4d_model import SMALL, random_model

    model = random_model(SMALL)
    path = tmp_path / "small.safetensors"
    save_weights(model, path, mask_enabled=True, mask_supervised=True, dtype=torch.float32, steps=12)
    loaded, info = load_model(TINY, str(path))       # the file's own config wins over the name
    assert loaded.config == SMALL and info.format == "page4dgs"
    assert info.mask_enabled and info.mask_supervised and info.metadata["steps"] == 12
    images = torch.rand(1, 2, 3, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(images)["depth"], model(images, mask=True)["depth"])
    assert isinstance(loaded, PAGE4D)


def test_a_file_of_another_architecture_than_the_named_model_says_so(tmp_path, caplog):
    """geometry.model=page4d-1b with a page4dgs file of a small model runs the file's model, with a warning (it once
    ran silently, and the stage's summary named page4d-1b)."""
    import dataclasses

    from tests.geometry.test_page4d_model import SMALL, random_model

    small = dataclasses.replace(SMALL, name="small-test")
    path = tmp_path / "small.safetensors"
    save_weights(random_model(small), path, dtype=torch.float32)
    loaded, _ = load_model("page4d-1b", str(path))
    assert loaded.config.name == "small-test"
    assert any(r.getMessage().startswith("geometry.model=page4d-1b, but") and "holds a small-test (" in r.getMessage()
               and "running the file's architecture" in r.getMessage() for r in caplog.records)
