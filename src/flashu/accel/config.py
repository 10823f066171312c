"""``FlashUConfig``: one validated, versioned, JSON-serialisable configuration for both tasks, with named presets.

Step semantics (generation): the user asks for ``steps`` grid points N₀ (N₀ − 1 evaluations). FlashU samples on
``round(step_fraction · N₀)`` grid points N, i.e. E = N − 1 evaluations, and **every interval below counts
evaluations** k = 0 … E − 1 (the paper's 1-based "step" is k + 1):

* layer-skip ranking at full depth on evaluations with ``k % layer_skip_interval == 0``; skipping in between;
* head cache stored on evaluations with ``(k + 1) % head_cache_interval == 0`` and reused on the following ones
  (the reference code's rule, which recomputes the first interval in full);
* the last ``round(full_ffn_fraction · E)`` evaluations (lowest noise) run the full FFN, no layer skipping and no
  head cache;
* guidance ``guidance_low_factor · s₀`` for the first ``round(guidance_low_fraction · E)`` evaluations, then s₀.

Presets: ``none`` (nothing), ``exact`` (only what provably leaves the output unchanged), ``paper`` (Table 7 of the
paper, Show-o2 1.5B), ``plus`` (flashu's own recipe) and the paper's ablations. Every field is type-checked at
construction and on loading, so a config that exists is valid; JSON carries ``schema``/``version``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import check_value
from ..errors import ConfigError

SCHEMA = "flashu-accel"
SCHEMA_VERSION = 2  # 2: the quantization section (version 1 files, which have none, still load)
READABLE_VERSIONS = (1, 2)
TOKEN_SCORERS = ("vnorm", "random", "knorm", "attention", "query", "dart")
SKIP_SCOPES = ("image", "sequence")
TASKS = ("t2i", "mmu")
QUANT_MODES = ("int8-dynamic", "int8-weight", "fp8")
QUANT_BACKENDS = ("auto", "fbgemm", "torchao")


class _Checked:
    """Validated dataclass: fields are type-checked (JSON types: bool, int, finite float, str) on construction."""

    def __post_init__(self) -> None:
        self.validate()

    def _check_types(self, section: str) -> None:
        for f in dataclasses.fields(self):
            check_value(f"{section}.{f.name}", getattr(self, f.name), str(f.type))

    def validate(self):  # pragma: no cover - overridden
        raise NotImplementedError


@dataclass
class GenerationAccelConfig(_Checked):
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
    lazy_backbone: bool = False  # skip the backbone on head-cache evaluations (bit-identical output)
    exact_trims: bool = False  # drop positions after the image block (exact: they cannot influence it)
    prefix_reuse: bool = False  # the text prefix's keys/values computed once per generation (exact)
    share_cfg_visual: bool = False  # CFG rows share x_t: one visual-branch pass for both (exact)

    def validate(self) -> "GenerationAccelConfig":
        self._check_types("generation")
        for name in ("prune_ratio", "attention_group_prune_ratio", "layer_skip_ratio"):
            _ratio(f"generation.{name}", getattr(self, name))
        _closed_ratio("generation.full_ffn_fraction", self.full_ffn_fraction)
        _closed_ratio("generation.guidance_low_fraction", self.guidance_low_fraction)
        _positive("generation.prune_alignment", self.prune_alignment)
        _non_negative("generation.layer_skip_interval", self.layer_skip_interval)
        _non_negative("generation.head_cache_interval", self.head_cache_interval)
        if not 0 < self.step_fraction <= 1:
            raise ConfigError(f"generation.step_fraction must be in (0, 1], got {self.step_fraction}")
        if not 0 <= self.guidance_low_factor <= 10:  # s_low = factor · s₀ (the paper: 0.75); beyond 10 it overflows
            raise ConfigError(f"generation.guidance_low_factor must be in [0, 10], got {self.guidance_low_factor}")
        if self.layer_skip_ratio > 0 and self.layer_skip_interval == 0:
            raise ConfigError("generation.layer_skip_interval must be positive when layer_skip_ratio > 0")
        if self.layer_skip_scope not in SKIP_SCOPES:
            raise ConfigError(f"generation.layer_skip_scope must be one of {SKIP_SCOPES}, got {self.layer_skip_scope!r}")
        return self

    @classmethod
    def off(cls, **changes) -> "GenerationAccelConfig":
        """Every technique off (the baseline's decisions), with ``changes`` applied."""
        return cls(**{**_GENERATION_OFF, **changes})

    def evaluations(self, requested_steps: int) -> int:
        """Model evaluations E for a request of ``requested_steps`` grid points."""
        return max(2, round(self.step_fraction * requested_steps)) - 1

    @property
    def needs_scores(self) -> bool:
        return self.prune_ratio > 0 or self.attention_group_prune_ratio > 0


@dataclass
class UnderstandingAccelConfig(_Checked):
    """Understanding techniques. A ratio of 0 disables the technique."""

    prune_ratio: float = 0.2  # static FFN pruning with understanding-specific neurons
    prune_alignment: int = 64
    layer_skip_ratio: float = 0.2  # layers skipped while decoding (ranked by the last token's cos similarity)
    layer_skip_interval: int = 8  # re-rank at full depth every this many decoded tokens (0: rank at prefill only)
    skip_in_prefill: bool = False  # also skip layers in prefill (the set comes from understanding calibration)
    fill_skipped_kv: bool = True  # a layer skipped on a decode step still appends that token's keys/values
    protect_first_last: bool = True
    token_prune_ratio: float = 0.5  # ρ: fraction of image tokens dropped at layer K
    token_prune_layer: int = 2  # K
    token_scorer: str = "vnorm"  # vnorm (largest value norms dropped) | random | knorm | attention | query | dart
    seed: int = 0  # for the random scorer
    speculative_decoding: bool = False  # lossless: a layer-skipping draft verified by the full-depth plan
    draft_skip_ratio: float = 0.5  # layers the draft skips (ranked at prefill by the last token's similarity)
    draft_tokens: int = 4  # initial draft length k (adapted per round)
    max_draft_tokens: int = 8

    def validate(self) -> "UnderstandingAccelConfig":
        self._check_types("understanding")
        _ratio("understanding.prune_ratio", self.prune_ratio)
        _ratio("understanding.layer_skip_ratio", self.layer_skip_ratio)
        _ratio("understanding.token_prune_ratio", self.token_prune_ratio)
        _positive("understanding.prune_alignment", self.prune_alignment)
        _non_negative("understanding.layer_skip_interval", self.layer_skip_interval)
        _non_negative("understanding.token_prune_layer", self.token_prune_layer)
        _non_negative("understanding.seed", self.seed)
        if self.token_scorer not in TOKEN_SCORERS:
            raise ConfigError(f"understanding.token_scorer must be one of {TOKEN_SCORERS}, got {self.token_scorer!r}")
        _ratio("understanding.draft_skip_ratio", self.draft_skip_ratio)
        _positive("understanding.draft_tokens", self.draft_tokens)
        _positive("understanding.max_draft_tokens", self.max_draft_tokens)
        if self.draft_tokens > self.max_draft_tokens:
            raise ConfigError("understanding.draft_tokens must not exceed understanding.max_draft_tokens")
        if self.speculative_decoding and self.layer_skip_ratio > 0:
            raise ConfigError("understanding.speculative_decoding replaces lossy layer skipping while decoding: set "
                              "understanding.layer_skip_ratio to 0")
        return self

    @classmethod
    def off(cls, **changes) -> "UnderstandingAccelConfig":
        return cls(**{**_UNDERSTANDING_OFF, **changes})

    def kept_image_tokens(self, image_tokens: int) -> int:
        """Image tokens kept after pruning: ``n − ⌊ρ·n⌋``, never zero since ρ < 1."""
        return image_tokens - int(self.token_prune_ratio * image_tokens)

    @property
    def needs_scores(self) -> bool:
        return self.prune_ratio > 0


@dataclass
class QuantizationConfig(_Checked):
    """Quantized kernels for the decoder's linear maps (``flashu.accel.quantization``), composed with every technique.

    ``mode``: ``int8-dynamic`` (int8 weights, activations quantized per call), ``int8-weight`` (int8 weights,
    activations as they are) or ``fp8`` (GPU only). ``backend``: ``fbgemm`` (PyTorch's own x86 int8 kernels, the
    CPU choice), ``torchao`` (torchao's ``quantize_`` configs, the GPU choice) or ``auto`` (torchao on a GPU,
    fbgemm on a CPU). The weights themselves are never changed.
    """

    mode: str = "int8-dynamic"
    backend: str = "auto"
    generation: bool = True  # text-to-image runs the quantized kernels
    understanding: bool = True  # understanding runs them (prefill, and decode steps where they pay)
    full_phase: bool = False  # also in generation's final full-network phase (off: that phase runs full precision)
    protect_first_last: bool = True  # the first and last decoder layers keep full precision

    def validate(self) -> "QuantizationConfig":
        self._check_types("quantization")
        if self.mode not in QUANT_MODES:
            raise ConfigError(f"quantization.mode must be one of {', '.join(QUANT_MODES)}, got {self.mode!r}")
        if self.backend not in QUANT_BACKENDS:
            raise ConfigError(f"quantization.backend must be one of {', '.join(QUANT_BACKENDS)}, "
                              f"got {self.backend!r}")
        if self.backend == "fbgemm" and self.mode != "int8-dynamic":
            raise ConfigError(f"quantization.backend fbgemm runs int8-dynamic only; use backend torchao for "
                              f"{self.mode}")
        return self

    def applies_to(self, task: str) -> bool:
        return self.generation if task == "t2i" else self.understanding


_GENERATION_OFF = dict(prune_ratio=0.0, attention_group_prune_ratio=0.0, layer_skip_ratio=0.0, full_ffn_fraction=0.0,
                       head_cache_interval=0, step_fraction=1.0, guidance_low_factor=1.0, guidance_low_fraction=0.0,
                       lazy_backbone=False, exact_trims=False, prefix_reuse=False, share_cfg_visual=False)
_UNDERSTANDING_OFF = dict(prune_ratio=0.0, layer_skip_ratio=0.0, skip_in_prefill=False, token_prune_ratio=0.0,
                          speculative_decoding=False)


@dataclass
class FlashUConfig:
    """Which techniques run for each task (``None``: the task runs unaccelerated)."""

    name: str = "custom"
    generation: GenerationAccelConfig | None = field(default_factory=GenerationAccelConfig)
    understanding: UnderstandingAccelConfig | None = field(default_factory=UnderstandingAccelConfig)
    calibration_samples: int = 20  # calibration prompts / image-question pairs per task
    quantization: QuantizationConfig | None = None  # quantized kernels (None: the weights' own precision)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "FlashUConfig":
        check_value("name", self.name, "str")
        for section, cls in (("generation", GenerationAccelConfig), ("understanding", UnderstandingAccelConfig)):
            value = getattr(self, section)
            if value is not None and not isinstance(value, cls):
                raise ConfigError(f"{section} must be a {cls.__name__} or None, got {type(value).__name__}")
            if value is not None:
                value.validate()
        if self.quantization is not None and not isinstance(self.quantization, QuantizationConfig):
            raise ConfigError(f"quantization must be a QuantizationConfig or None, got "
                              f"{type(self.quantization).__name__}")
        if self.quantization is not None:
            self.quantization.validate()
        _positive("calibration_samples", self.calibration_samples)
        return self

    def for_task(self, task: str) -> "FlashUConfig":
        """A copy with only ``task``'s section (``t2i``: generation, ``mmu``: understanding)."""
        if task not in TASKS:
            raise ConfigError(f"unknown task {task!r}; use t2i (generation) or mmu (understanding)")
        other = "understanding" if task == "t2i" else "generation"
        copy = dataclasses.replace(self.copy(), **{other: None})
        if copy.quantization is not None:
            copy.quantization = dataclasses.replace(copy.quantization, **{other: False})
            if not copy.quantization.applies_to(task):
                copy.quantization = None
        return copy

    def copy(self) -> "FlashUConfig":
        return FlashUConfig.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, **dataclasses.asdict(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlashUConfig":
        if not isinstance(data, dict):
            raise ConfigError("a FlashU config must be a JSON object")
        data = dict(data)
        schema, version = data.pop("schema", SCHEMA), data.pop("version", SCHEMA_VERSION)
        if schema != SCHEMA:
            raise ConfigError(f"not a FlashU config (schema {schema!r}, expected {SCHEMA!r})")
        if version not in READABLE_VERSIONS:
            raise ConfigError(f"FlashU config version {version!r} is not supported (this flashu reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))}); export it again with 'flashu accel-presets'")
        sections = {"generation": GenerationAccelConfig, "understanding": UnderstandingAccelConfig,
                    "quantization": QuantizationConfig}
        for key, section in sections.items():
            value = data.get(key)
            if value is not None:
                if not isinstance(value, dict):
                    raise ConfigError(f"{key} must be a JSON object or null, got {type(value).__name__}")
                data[key] = _build(section, value, key)
        return _build(cls, data, None)

    @classmethod
    def from_file(cls, path: str | Path) -> "FlashUConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise ConfigError(f"cannot read FlashU config {path}: {str(exc)[:200]}") from None
        return cls.from_dict(data)

    @property
    def needs_generation_scores(self) -> bool:
        return self.generation is not None and self.generation.needs_scores

    @property
    def needs_understanding_scores(self) -> bool:
        return self.understanding is not None and self.understanding.needs_scores

    def needs_scores(self, task: str) -> bool:
        return self.needs_generation_scores if task == "t2i" else self.needs_understanding_scores

    def quantizes(self, task: str) -> bool:
        """Whether ``task`` runs quantized kernels (the task's section may be off: then only quantization runs)."""
        return self.quantization is not None and self.quantization.applies_to(task)


def _build(cls, data: dict, section: str | None):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{section}." if section else ""
        raise ConfigError(f"unknown FlashU config field {where}{unknown[0]} (known: {', '.join(sorted(names))})")
    return cls(**data)


def _ratio(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


def _closed_ratio(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(f"{name} must be in [0, 1], got {value}")


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _non_negative(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")


# ---------------------------------------------------------------------------------------------------- presets
def _none() -> FlashUConfig:
    return FlashUConfig(name="none", generation=None, understanding=None)


EXACT_GENERATION = dict(exact_trims=True, prefix_reuse=True, share_cfg_visual=True)


def _exact() -> FlashUConfig:
    """Only what provably leaves the output unchanged, up to float rounding (for each task, in this one place):
    generation drops the positions after the image blocks, computes the text prefix once and runs the visual
    branches once for both CFG rows; understanding has nothing of the kind to drop."""
    return FlashUConfig(name="exact", generation=GenerationAccelConfig.off(**EXACT_GENERATION), understanding=None)


def _paper() -> FlashUConfig:
    return FlashUConfig(name="paper", generation=GenerationAccelConfig(), understanding=UnderstandingAccelConfig())


# plus, understanding: what keeps >= 97 % of the trained testbed's baseline accuracy in every question kind: the
# understanding FFN and lossless self-speculative decoding in place of lossy layer skipping; no visual-token pruning,
# which fell below that bar in some question kind on both trained testbeds, v1 and v2 (docs/testbed.md). The draft
# depth was chosen by measurement (benchmarks/speculative_draft.py).
PLUS_UNDERSTANDING = dict(layer_skip_ratio=0.0, token_prune_ratio=0.0, speculative_decoding=True,
                          draft_skip_ratio=0.5)


def _plus() -> FlashUConfig:
    cfg = _paper()
    cfg.name = "plus"
    cfg.generation = dataclasses.replace(cfg.generation, lazy_backbone=True, **EXACT_GENERATION)
    cfg.understanding = dataclasses.replace(cfg.understanding, **PLUS_UNDERSTANDING)
    return cfg


def _plus_int8() -> FlashUConfig:
    """``plus`` with int8 kernels (dynamic activations): fbgemm on a CPU, torchao on a GPU."""
    cfg = _plus()
    cfg.name = "plus-int8"
    cfg.quantization = QuantizationConfig()
    return cfg


def _ablation(name: str, **generation_changes):
    def build() -> FlashUConfig:
        cfg = _paper()
        cfg.name = name
        cfg.generation = dataclasses.replace(cfg.generation, **generation_changes)
        return cfg
    return build


ACCEL_PRESETS = {
    "none": _none,
    "exact": _exact,
    "paper": _paper,
    "plus": _plus,
    "plus-int8": _plus_int8,
    # The paper's Table 4 ablations (generation side)
    "no-layer-skip": _ablation("no-layer-skip", layer_skip_ratio=0.0),
    "no-hybrid-ffn": _ablation("no-hybrid-ffn", full_ffn_fraction=0.0),
    "no-adaptive-guidance": _ablation("no-adaptive-guidance", step_fraction=1.0, guidance_low_factor=1.0,
                                      guidance_low_fraction=0.0),
    "prune-only": _ablation("prune-only", **{**_GENERATION_OFF, "prune_ratio": 0.2}),
    # One technique at a time
    "only-layer-skip": _ablation("only-layer-skip", **{**_GENERATION_OFF, "layer_skip_ratio": 0.2}),
    "only-head-cache": _ablation("only-head-cache", **{**_GENERATION_OFF, "head_cache_interval": 5}),
    "only-guidance": _ablation("only-guidance", **{**_GENERATION_OFF, "step_fraction": 0.7,
                                                   "guidance_low_factor": 0.75, "guidance_low_fraction": 0.7}),
}
ACCEL_PRESET_NAMES = tuple(ACCEL_PRESETS)


def accel_preset(name: str) -> FlashUConfig:
    """A fresh copy of a named preset."""
    if name not in ACCEL_PRESETS:
        raise ConfigError(f"unknown acceleration preset {name!r}; choose one of {', '.join(ACCEL_PRESET_NAMES)}")
    return ACCEL_PRESETS[name]()
