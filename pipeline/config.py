"""Configs: dataclasses with documented defaults, plain YAML presets, ``key=value`` overrides, strict validation.

Every section is a dataclass defined next to the code it configures (``pipeline/scene/config.py``,
``stages/<stage>/config.py``); each field carries its documentation in ``metadata["doc"]``. ``configs/default.yaml``
is generated from these dataclasses (``page4dgs config --defaults``) and a test keeps the two identical, so the YAML a
user reads is always the truth. A preset (``configs/<name>.yaml``) lists only what it changes.

Resolution order: dataclass defaults <- preset <- ``key=value`` overrides. An unknown key or a value of the wrong
type is a :class:`~pipeline.errors.UserError`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def option(default: Any, doc: str, choices: typing.Sequence[Any] | None = None) -> Any:
    """A config field with its documentation. Lists and dicts are copied per instance."""
    metadata = {"doc": doc}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: typing.cast(Any, default).copy(), metadata=metadata)
    return field(default=default, metadata=metadata)


def _sections() -> dict[str, type]:
    # Imported here so that `pipeline.config` stays importable without the stage packages' heavy dependencies:
    # every config module below imports only this module.
    from pipeline.scene.config import SceneConfig
    from stages.evaluate.config import EvaluateConfig
    from stages.geometry.config import GeometryConfig
    from stages.initialize.config import InitializeConfig
    from stages.optimize.config import OptimizeConfig
    from stages.render.config import RenderConfig

    return {
        "scene": SceneConfig,
        "geometry": GeometryConfig,
        "initialize": InitializeConfig,
        "optimize": OptimizeConfig,
        "render": RenderConfig,
        "evaluate": EvaluateConfig,
    }


@dataclass
class Config:
    """The resolved configuration of one run: top-level options plus one section per stage."""

    seed: int = option(0, "Random seed for everything stochastic in the run (initialization, sampling, densification).")
    device: str = option("auto", "Where to compute: 'auto' (CUDA if available, else CPU), 'cpu' or 'cuda'.",
                         choices=("auto", "cpu", "cuda"))
    preset: str = option("default", "Name or path of the preset this config was built from (set automatically).")
    sections: dict[str, Any] = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seed": self.seed, "device": self.device, "preset": self.preset}
        for name, section in self.sections.items():
            out[name] = dataclasses.asdict(section)
        return out


def default_config() -> Config:
    return Config(sections={name: cls() for name, cls in _sections().items()})


# ----------------------------------------------------------------------------------------------------------------
# Validation


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return f"list of {_type_name(item)}"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


# A float in exponent form that YAML 1.1 (PyYAML) leaves as a string: `1e-4`, `3E5`, `-2.5e+3`.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type hint ``hint``; return it (ints are accepted where floats are expected)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return coerce(value, arg, key)
            except UserError:
                continue
        raise UserError(f"config key '{key}' expects {_type_name(hint)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise UserError(f"config key '{key}' must be one of {_type_name(hint)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            raise UserError(f"config key '{key}' expects a list, got {value!r}")
        try:
            return [coerce(v, item, key) for v in value]
        except UserError:
            raise UserError(f"config key '{key}' expects {_type_name(hint)}, got {value!r}") from None
    if hint is type(None):
        if value is None:
            return None
        raise UserError(f"config key '{key}' expects null, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)      # YAML 1.1 reads `1e-4` (no dot) as a string; users mean the number
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise UserError(f"config key '{key}' expects {_type_name(hint)}, got {value!r}")


def _apply(target: Any, updates: dict[str, Any], prefix: str, source: str) -> None:
    """Set fields of the dataclass ``target`` from ``updates`` (a nested dict), validating names and types."""
    if not isinstance(updates, dict):
        raise UserError(f"{source}: '{prefix.rstrip('.')}' must be a mapping, got {updates!r}")
    hints = typing.get_type_hints(type(target))
    known = {f.name: f for f in dataclasses.fields(target) if f.name != "sections"}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in known:
            close = _close_matches(key, list(known))
            hint = f" (did you mean {close}?)" if close else ""
            raise UserError(f"{source}: unknown config key '{full}'{hint}")
        value = coerce(value, hints[key], full)
        choices = known[key].metadata.get("choices")
        if choices is not None and value not in choices:
            raise UserError(f"{source}: config key '{full}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        setattr(target, key, value)


def _close_matches(word: str, candidates: list[str]) -> str:
    import difflib

    matches = difflib.get_close_matches(word, candidates, n=1)
    return f"'{matches[0]}'" if matches else ""


def apply_mapping(config: Config, mapping: dict[str, Any], source: str) -> None:
    """Apply a nested mapping (as read from a YAML preset) to ``config``."""
    if not isinstance(mapping, dict):
        raise UserError(f"{source}: a config file must hold a mapping of sections")
    top = {k: v for k, v in mapping.items() if k not in config.sections}
    _apply(config, top, "", source)
    for name, section_updates in mapping.items():
        if name in config.sections:
            _apply(config.sections[name], section_updates or {}, f"{name}.", source)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optimize.iterations=300"`` -> (["optimize", "iterations"], 300). Values are parsed as YAML scalars."""
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise UserError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(config: Config, overrides: typing.Iterable[str]) -> None:
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            apply_mapping(config, {path[0]: value}, "command line")
        elif len(path) == 2 and path[0] in config.sections:
            apply_mapping(config, {path[0]: {path[1]: value}}, "command line")
        else:
            raise UserError(f"command line: unknown config key '{'.'.join(path)}'")


def resolve_preset(name_or_path: str) -> Path:
    """A preset name (``dnerf``) is ``configs/<name>.yaml``; anything with a suffix or a slash is a path."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.is_file():
            raise UserError("config file is a symbolic link to nothing" if candidate.is_symlink() and
                            not candidate.exists() else
                            "is a folder, not a config file (a YAML file is needed)" if candidate.is_dir() else
                            "config file not found", candidate)
        return candidate
    path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise UserError(f"unknown config '{name_or_path}' (available: {', '.join(names)})")
    return path


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"malformed YAML{where}", path) from None
    except UnicodeDecodeError:
        raise UserError("not a UTF-8 text file (expected YAML)", path) from None
    return data or {}


def load_config(preset: str = "default", overrides: typing.Iterable[str] = ()) -> Config:
    """Build a validated config from the defaults, a preset (name or path) and ``key=value`` overrides."""
    config = default_config()
    if preset != "default":
        path = resolve_preset(preset)
        if not path.read_bytes().strip():            # a truncated save or the wrong file, not a preset
            raise UserError("empty config file (a preset that changes nothing can hold just a comment)", path)
        apply_mapping(config, read_yaml(path), str(path))
    config.preset = preset
    apply_overrides(config, overrides)
    return config


def config_from_dict(data: dict[str, Any], source: str = "config.yaml") -> Config:
    """Rebuild a config from a saved ``config.yaml`` (validated like any preset)."""
    config = default_config()
    apply_mapping(config, data, source)
    return config


# ----------------------------------------------------------------------------------------------------------------
# Writing YAML with documentation


def _yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("\n...").strip()


def _dump_dataclass(obj: Any, indent: str, with_docs: bool) -> list[str]:
    lines = []
    for f in dataclasses.fields(obj):
        if f.name == "sections":
            continue
        if with_docs and f.metadata.get("doc"):
            doc = f.metadata["doc"]
            choices = f.metadata.get("choices")
            if choices:
                doc += f" Choices: {', '.join(map(str, choices))}."
            for line in _wrap(doc, 116 - len(indent)):
                lines.append(f"{indent}# {line}")
        lines.append(f"{indent}{f.name}: {_yaml_scalar(getattr(obj, f.name))}")
    return lines


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def dump_yaml(config: Config, with_docs: bool = True, header: str | None = None) -> str:
    lines: list[str] = []
    if header:
        lines += [f"# {line}" if line else "#" for line in header.splitlines()]
        lines.append("")
    lines += _dump_dataclass(config, "", with_docs)
    for name, section in config.sections.items():
        lines.append("")
        if with_docs and section.__doc__:
            for line in _wrap(" ".join(section.__doc__.split()), 116):
                lines.append(f"# {line}")
        lines.append(f"{name}:")
        lines += _dump_dataclass(section, "  ", with_docs)
    return "\n".join(lines) + "\n"


DEFAULTS_HEADER = """page4dgs default configuration: every option, its default and what it does.
Generated from the config dataclasses by `page4dgs config --defaults`; a test keeps this file in sync.
Presets (configs/<name>.yaml) list only what they change; override any key with key=value on the command line."""


def config_hash(section: Any) -> str:
    from pipeline.io import sha256_json

    return sha256_json(dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section)
