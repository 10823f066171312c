"""The one acceleration grammar (``flashu.accel.spec``) every command and the Python API use."""

import json

import pytest

from flashu.accel.config import FlashUConfig, GenerationAccelConfig, accel_preset
from flashu.accel.spec import apply_overrides, resolve_accel, split_specs
from flashu.errors import ConfigError


def test_names_presets_and_none():
    assert resolve_accel("none").generation is None and resolve_accel("none").understanding is None
    assert resolve_accel(None).name == "none"
    paper = resolve_accel("paper")
    assert paper == accel_preset("paper")
    assert resolve_accel(paper) == paper and resolve_accel(paper) is not paper  # a copy


def test_exact_is_defined_per_task_in_one_place():
    t2i, mmu = resolve_accel("exact", "t2i"), resolve_accel("exact", "mmu")
    exact_gen = GenerationAccelConfig.off(exact_trims=True, prefix_reuse=True, share_cfg_visual=True)
    assert t2i.generation == exact_gen and t2i.understanding is None
    assert mmu.generation is None and mmu.understanding is None  # nothing lossless to drop in understanding


def test_task_restriction_drops_the_other_section():
    cfg = resolve_accel("paper", "mmu")
    assert cfg.generation is None and cfg.understanding == accel_preset("paper").understanding
    with pytest.raises(ConfigError, match="unknown task"):
        resolve_accel("paper", "video")


def test_overrides_are_typed_and_validated():
    cfg = resolve_accel("paper:understanding.token_scorer=random,understanding.token_prune_ratio=0.25", "mmu")
    assert cfg.understanding.token_scorer == "random" and cfg.understanding.token_prune_ratio == 0.25
    assert cfg.name == "paper:understanding.token_scorer=random,understanding.token_prune_ratio=0.25"
    assert resolve_accel("plus:generation.lazy_backbone=false").generation.lazy_backbone is False
    assert resolve_accel("paper:generation.layer_skip_interval=3").generation.layer_skip_interval == 3
    for spec, needle in [("paper:nosuch.field=1", "section"), ("paper:generation.bogus=1", "no field"),
                         ("paper:generation.prune_ratio=abc", "expected float"),
                         ("paper:generation.prune_ratio=1.5", "prune_ratio"),
                         ("paper:generation.prune_ratio", "SECTION.FIELD=VALUE"),
                         ("paper:generation.lazy_backbone=maybe", "expected bool"),
                         ("none:generation.prune_ratio=0.1", "no generation section"),
                         ("fast", "unknown acceleration"), ("", "empty")]:
        with pytest.raises(ConfigError, match=needle):
            resolve_accel(spec)


def test_json_files_with_and_without_overrides(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(accel_preset("plus").to_json())
    assert resolve_accel(str(path)) == accel_preset("plus")
    tweaked = resolve_accel(f"{path}:generation.head_cache_interval=3")
    assert tweaked.generation.head_cache_interval == 3 and tweaked.generation.lazy_backbone
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_accel(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"generation": {"prune_ratio": "0.2"}}))
    with pytest.raises(ConfigError, match="generation.prune_ratio must be a finite number"):
        resolve_accel(str(bad))
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_accel(str(bad))


def test_apply_overrides_leaves_the_original_alone():
    cfg = accel_preset("paper")
    tweaked = apply_overrides(cfg, "generation.prune_ratio=0.3")
    assert tweaked.generation.prune_ratio == 0.3 and cfg.generation.prune_ratio == 0.2


def test_split_specs_keeps_override_lists_together():
    assert split_specs("none,paper:a.b=1,c.d=2,plus") == ["none", "paper:a.b=1,c.d=2", "plus"]
    assert split_specs(" none , ,exact") == ["none", "exact"]


def test_config_json_round_trip_for_every_preset():
    from flashu.accel.config import ACCEL_PRESET_NAMES

    for name in ACCEL_PRESET_NAMES:
        cfg = accel_preset(name)
        assert FlashUConfig.from_dict(json.loads(cfg.to_json())) == cfg, name
