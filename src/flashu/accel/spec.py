"""The one grammar for naming an acceleration, used by every command and the Python API.

A spec is one of:

* ``none`` — the unaccelerated model;
* ``exact`` — only what provably leaves the output unchanged (defined per task in :func:`accel.config._exact`);
* a preset name (``flashu accel-presets`` lists them: ``paper``, ``plus``, the ablations…);
* a FlashU config JSON file (its path; ``schema``/``version`` checked);
* either of the last two followed by overrides: ``paper:understanding.token_scorer=random,generation.prune_ratio=0.3``
  (``SECTION.FIELD=VALUE``, comma-separated; values are parsed as the field's type); a ``quantization.`` override
  adds the quantization section when the base has none (``plus:quantization.mode=int8-dynamic``);
* a :class:`FlashUConfig` (Python API).

:func:`resolve_accel` turns a spec into a validated :class:`FlashUConfig`, restricted to one task when asked.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import ConfigError
from .config import ACCEL_PRESET_NAMES, ACCEL_PRESETS, FlashUConfig, QuantizationConfig, accel_preset

SPEC_HELP = ("none | exact | a preset (see 'flashu accel-presets') | a FlashU config JSON file, optionally followed "
             "by :SECTION.FIELD=VALUE,... overrides")


def resolve_accel(spec: "str | Path | FlashUConfig | None", task: str | None = None) -> FlashUConfig:
    """A validated :class:`FlashUConfig` for ``spec`` (see the module docstring); with ``task`` (``t2i``/``mmu``)
    only that task's section is kept, so nothing is calibrated or applied for the other one."""
    if spec is None:
        cfg = accel_preset("none")
    elif isinstance(spec, FlashUConfig):
        cfg = spec.copy()
    elif isinstance(spec, (str, Path)):
        cfg = _parse(str(spec).strip())
    else:
        raise ConfigError(f"an acceleration is a name, a JSON file or a FlashUConfig, not {type(spec).__name__}")
    return cfg.for_task(task) if task is not None else cfg


def _parse(text: str) -> FlashUConfig:
    if not text:
        raise ConfigError(f"empty acceleration spec; use {SPEC_HELP}")
    base, overrides = _split(text)
    if base in ACCEL_PRESETS:
        cfg = accel_preset(base)
    elif base.endswith(".json") or Path(base).is_file():
        if not Path(base).is_file():
            raise ConfigError(f"FlashU config file {base} does not exist")
        cfg = FlashUConfig.from_file(base)
    else:
        raise ConfigError(f"unknown acceleration {base!r}; choose one of {', '.join(ACCEL_PRESET_NAMES)} "
                          "or give a FlashU config JSON file")
    if overrides:
        cfg = apply_overrides(cfg, overrides)
        cfg.name = text
    return cfg


def _split(text: str) -> tuple[str, str]:
    """``"paper:a.b=1"`` → ``("paper", "a.b=1")``; a JSON path's own colons stay in the base."""
    head, sep, tail = text.partition(":")
    if sep and head in ACCEL_PRESETS:
        return head, tail
    head, sep, tail = text.rpartition(":")
    if sep and (head.endswith(".json") or Path(head).is_file()):
        return head, tail
    return text, ""


def apply_overrides(cfg: FlashUConfig, overrides: str) -> FlashUConfig:
    """``SECTION.FIELD=VALUE`` pairs (comma-separated) applied to a copy of ``cfg``, validated."""
    data = cfg.to_dict()
    for item in filter(None, (piece.strip() for piece in overrides.split(","))):
        key, eq, value = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not eq or not dot:
            raise ConfigError(f"bad override {item!r}; use SECTION.FIELD=VALUE, e.g. generation.prune_ratio=0.3")
        if section not in ("generation", "understanding", "quantization"):
            raise ConfigError(f"bad override {item!r}: the section is generation, understanding or quantization")
        if section == "quantization" and data[section] is None:
            data[section] = dataclasses.asdict(QuantizationConfig())
        if data[section] is None:
            raise ConfigError(f"bad override {item!r}: this configuration has no {section} section")
        if name not in data[section]:
            raise ConfigError(f"bad override {item!r}: {section} has no field {name!r} (fields: "
                              f"{', '.join(data[section])})")
        data[section][name] = _coerce(value.strip(), data[section][name], item)
    return FlashUConfig.from_dict(data)


def _coerce(value: str, current, item: str):
    try:
        if isinstance(current, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if isinstance(current, int):
            return int(value)
        if isinstance(current, float):
            return float(value)
        return value
    except ValueError:
        raise ConfigError(f"bad value in override {item!r}: expected {type(current).__name__}") from None


def split_specs(text: str) -> list[str]:
    """``"none,paper:a.b=1,c.d=2,plus"`` → ``["none", "paper:a.b=1,c.d=2", "plus"]``: a piece with ``=`` and no
    ``:`` continues the previous spec's overrides (names never contain ``=``)."""
    specs: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if specs and "=" in piece and ":" not in piece and ":" in specs[-1]:
            specs[-1] += "," + piece
        else:
            specs.append(piece)
    return specs


def changes(cfg: FlashUConfig) -> dict[str, dict]:
    """Per task (``t2i``/``mmu``), the fields that differ from the techniques-off config; tasks left off are absent;
    ``quantization``: its section, when there is one."""
    diff = {}
    for section, task in (("generation", "t2i"), ("understanding", "mmu")):
        value = getattr(cfg, section)
        if value is None:
            continue
        base = dataclasses.asdict(type(value).off())
        diff[task] = {k: v for k, v in dataclasses.asdict(value).items() if base[k] != v}
    if cfg.quantization is not None:
        diff["quantization"] = dataclasses.asdict(cfg.quantization)
    return diff


def describe(cfg: FlashUConfig) -> str:
    """One-line JSON of what differs from the techniques-off config (for reports)."""
    names = {"t2i": "generation", "mmu": "understanding", "quantization": "quantization"}
    return json.dumps({names[task]: fields for task, fields in changes(cfg).items()}, sort_keys=True)
