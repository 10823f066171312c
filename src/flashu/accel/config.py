"""``FlashUConfig``: one validated, JSON-serialisable configuration for both tasks, with named presets.

Step semantics (generation): the user asks for ``steps`` grid points N₀ (N₀ − 1 evaluations). FlashU samples on
``round(step_fraction · N₀)`` grid points N, i.e. E = N − 1 evaluations, and **every interval below counts
evaluations** k = 0 … E − 1 (the paper's 1-based "step" is k + 1):

* layer-skip ranking at full depth on evaluations with ``k % layer_skip_interval == 0``; skipping in between;
* head cache stored on evaluations with ``(k + 1) % head_cache_interval == 0`` and reused on the following ones
  (the reference code's rule, which recomputes the first interval in full);
* the last ``round(full_ffn_fraction · E)`` evaluations (lowest noise) run the full FFN, no layer skipping and no
  head cache;
* guidance ``guidance_low_factor · s₀`` for the first ``round(guidance_low_fraction · E)`` evaluations, then s₀.

Presets: ``paper`` (Table 7 of the paper, Show-o2 1.5B) and ``plus`` (paper + our exact/lossless improvements).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

TOKEN_SCORERS = ("vnorm", "random", "knorm", "attention")
SKIP_SCOPES = ("image", "sequence")


@dataclass
class GenerationAccelConfig:
    """Text-to-image techniques. A ratio of 0 or an interval of 0 disables the technique."""

    prune_ratio: float = 0.2  # r_p: FFN neurons pruned per decoder layer
    prune_alignment: int = 64  # kept count rounded down to a multiple of this (never zero)
    attention_group_prune_ratio: float = 0.0  # GQA KV groups (with their query heads) pruned per layer
    layer_skip_ratio: float = 0.2  # r_LS: ⌊r_LS·L⌋ least important layers skipped
    layer_skip_interval: int = 10  # T_LS, in evaluations
    layer_skip_scope: str = "image"  # "image": image-block tokens; "sequence": the reference's whole-sequence mean
    protect_first_last: bool = False  # never skip the first and last decoder layers
    full_ffn_fraction: float = 0.3  # τ: final fraction of evaluations with the full network
    head_cache_interval: int = 5  # T_cache, in evaluations (0: no head cache)
    step_fraction: float = 0.7  # grid points relative to the requested steps
    guidance_low_factor: float = 0.75  # s_low / s₀
    guidance_low_fraction: float = 0.7  # first fraction of evaluations at s_low
    lazy_backbone: bool = False  # plus: skip the backbone on head-cache evaluations (bit-identical output)
    exact_trims: bool = False  # plus: drop positions after the image block (no logits is always on)

    def validate(self) -> None:
        _ratio("generation.prune_ratio", self.prune_ratio)
        _ratio("generation.attention_group_prune_ratio", self.attention_group_prune_ratio)
        _ratio("generation.layer_skip_ratio", self.layer_skip_ratio)
        _closed_ratio("generation.full_ffn_fraction", self.full_ffn_fraction)
        _closed_ratio("generation.guidance_low_fraction", self.guidance_low_fraction)
        _positive("generation.prune_alignment", self.prune_alignment)
        _non_negative("generation.layer_skip_interval", self.layer_skip_interval)
        _non_negative("generation.head_cache_interval", self.head_cache_interval)
        if not 0 < self.step_fraction <= 1:
            raise ConfigError(f"generation.step_fraction must be in (0, 1], got {self.step_fraction}")
        if self.guidance_low_factor < 0:
            raise ConfigError(f"generation.guidance_low_factor must be >= 0, got {self.guidance_low_factor}")
        if self.layer_skip_ratio > 0 and self.layer_skip_interval == 0:
            raise ConfigError("generation.layer_skip_interval must be positive when layer_skip_ratio > 0")
        if self.layer_skip_scope not in SKIP_SCOPES:
            raise ConfigError(f"generation.layer_skip_scope must be one of {SKIP_SCOPES}, got {self.layer_skip_scope!r}")

    def evaluations(self, requested_steps: int) -> int:
        """Model evaluations E for a request of ``requested_steps`` grid points."""
        return max(2, round(self.step_fraction * requested_steps)) - 1


@dataclass
class UnderstandingAccelConfig:
    """Understanding techniques. A ratio of 0 disables the technique."""

    prune_ratio: float = 0.2  # static FFN pruning with understanding-specific neurons
    prune_alignment: int = 64
    layer_skip_ratio: float = 0.2  # layers skipped while decoding (ranked by the last token's cos similarity)
    layer_skip_interval: int = 8  # re-rank at full depth every this many decoded tokens (0: rank at prefill only)
    skip_in_prefill: bool = False  # also skip layers in prefill (set from calibration, else from a scout pass)
    fill_skipped_kv: bool = True  # a layer skipped on a decode step still appends that token's keys/values
    protect_first_last: bool = True
    token_prune_ratio: float = 0.5  # ρ: fraction of image tokens dropped at layer K
    token_prune_layer: int = 2  # K
    token_scorer: str = "vnorm"  # vnorm (drop the largest value norms) | random | knorm | attention
    seed: int = 0  # for the random scorer

    def validate(self) -> None:
        _ratio("understanding.prune_ratio", self.prune_ratio)
        _ratio("understanding.layer_skip_ratio", self.layer_skip_ratio)
        _ratio("understanding.token_prune_ratio", self.token_prune_ratio)
        _positive("understanding.prune_alignment", self.prune_alignment)
        _non_negative("understanding.layer_skip_interval", self.layer_skip_interval)
        _non_negative("understanding.token_prune_layer", self.token_prune_layer)
        if self.token_scorer not in TOKEN_SCORERS:
            raise ConfigError(f"understanding.token_scorer must be one of {TOKEN_SCORERS}, got {self.token_scorer!r}")

    def kept_image_tokens(self, image_tokens: int) -> int:
        """Image tokens kept after pruning (validated: never zero)."""
        kept = image_tokens - int(self.token_prune_ratio * image_tokens)
        if kept <= 0:
            raise ConfigError(f"understanding.token_prune_ratio {self.token_prune_ratio} keeps no image token "
                              f"out of {image_tokens}")
        return kept


@dataclass
class FlashUConfig:
    """Which techniques run for each task (``None``: the task runs unaccelerated)."""

    name: str = "custom"
    generation: GenerationAccelConfig | None = field(default_factory=GenerationAccelConfig)
    understanding: UnderstandingAccelConfig | None = field(default_factory=UnderstandingAccelConfig)
    calibration_samples: int = 20  # calibration prompts / image-question pairs per task

    def validate(self) -> "FlashUConfig":
        if self.generation is not None:
            self.generation.validate()
        if self.understanding is not None:
            self.understanding.validate()
        _positive("calibration_samples", self.calibration_samples)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlashUConfig":
        if not isinstance(data, dict):
            raise ConfigError("a FlashU config must be a JSON object")
        data = dict(data)
        try:
            if data.get("generation") is not None:
                data["generation"] = GenerationAccelConfig(**data["generation"])
            if data.get("understanding") is not None:
                data["understanding"] = UnderstandingAccelConfig(**data["understanding"])
            return cls(**data).validate()
        except TypeError as exc:
            raise ConfigError(f"invalid FlashU config: {exc}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "FlashUConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read FlashU config {path}: {exc}") from None
        return cls.from_dict(data)

    @property
    def needs_generation_scores(self) -> bool:
        g = self.generation
        return g is not None and (g.prune_ratio > 0 or g.attention_group_prune_ratio > 0)

    @property
    def needs_understanding_scores(self) -> bool:
        return self.understanding is not None and self.understanding.prune_ratio > 0


def _ratio(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


def _closed_ratio(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _non_negative(name: str, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")


def _paper() -> FlashUConfig:
    return FlashUConfig(name="paper", generation=GenerationAccelConfig(), understanding=UnderstandingAccelConfig())


def _plus() -> FlashUConfig:
    cfg = _paper()
    cfg.name = "plus"
    cfg.generation.lazy_backbone = True
    cfg.generation.exact_trims = True
    return cfg


def _ablation(name: str, **generation_changes) -> callable:
    def build() -> FlashUConfig:
        cfg = _paper()
        cfg.name = name
        for key, value in generation_changes.items():
            setattr(cfg.generation, key, value)
        return cfg
    return build


_NOTHING = dict(prune_ratio=0.0, layer_skip_ratio=0.0, full_ffn_fraction=0.0, head_cache_interval=0,
                step_fraction=1.0, guidance_low_factor=1.0, guidance_low_fraction=0.0)

PRESETS = {
    "paper": _paper,
    "plus": _plus,
    # The paper's Table 4 ablations (generation side)
    "no-layer-skip": _ablation("no-layer-skip", layer_skip_ratio=0.0),
    "no-hybrid-ffn": _ablation("no-hybrid-ffn", full_ffn_fraction=0.0),
    "no-adaptive-guidance": _ablation("no-adaptive-guidance", step_fraction=1.0, guidance_low_factor=1.0,
                                      guidance_low_fraction=0.0),
    "prune-only": _ablation("prune-only", **{**_NOTHING, "prune_ratio": 0.2}),
    # One technique at a time
    "only-layer-skip": _ablation("only-layer-skip", **{**_NOTHING, "layer_skip_ratio": 0.2}),
    "only-head-cache": _ablation("only-head-cache", **{**_NOTHING, "head_cache_interval": 5}),
    "only-guidance": _ablation("only-guidance", **{**_NOTHING, "step_fraction": 0.7, "guidance_low_factor": 0.75,
                                                   "guidance_low_fraction": 0.7}),
}
PRESET_NAMES = tuple(PRESETS)


def accel_preset(name: str) -> FlashUConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown acceleration preset {name!r}; choose one of {', '.join(PRESET_NAMES)}")
    return PRESETS[name]().validate()
