"""The front door: ``flashu.accelerate`` / ``flashu.restore`` / ``flashu.accelerated``.

``accelerate(bundle, spec, task=...)`` resolves any spec with the one grammar of :mod:`.spec`, checks every
technique against the model (refusing, in one line, what this model cannot run), gets the importance scores it
needs (given, from the on-disk cache, or calibrated once — only for the task being run), and only then permutes the
weights in place, all layers or none. The model stays a valid baseline (the permutation preserves its function);
each task's plan then runs its own contiguous neuron range. ``restore`` applies the inverse permutation: parameters
and outputs are bit-identical to before.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from torch import nn

from ..bundle import Showo2Bundle
from ..errors import ConfigError, FlashuError
from .config import FlashUConfig, GenerationAccelConfig, UnderstandingAccelConfig
from .importance import ImportanceScores
from .layer_skip import skip_count
from .pruning import PruningLayout, inverse, kept_count, permute_model, plan_layout
from .quantization import QuantizedLinears, build_linears, resolve_backend
from .speculative import DraftLedger
from .spec import resolve_accel


@dataclass
class Acceleration:
    """What ``accelerate`` applied to a bundle (model-level, not per request)."""

    config: FlashUConfig
    layout: PruningLayout | None
    # the understanding calibration's mean last-token similarity per layer (prefill layer-skip prior), if known
    understanding_layer_similarity: list[float] | None = None
    scores: dict | None = None  # the importance scores used, per task (reusable for the next accelerate)
    # what self-speculative decoding has earned on this model across answers (speed only; see accel/speculative)
    draft_ledger: DraftLedger = field(default_factory=DraftLedger)
    linears: QuantizedLinears | None = None  # quantized kernels (config.quantization), shared by both tasks

    def __repr__(self) -> str:
        """One line: the config and what was applied (tensors stay out; ``.layout`` and ``.scores`` hold them)."""
        from .spec import changes

        parts = []
        for task, fields in changes(self.config).items():
            if task == "quantization":
                parts.append(f"quantization: {self.linears.mode} ({self.linears.backend})" if self.linears
                             else "quantization: none")
                continue
            kept = self.layout.kept_neurons(task) if self.layout is not None else None
            ffn = f", FFN {sum(kept)}/{sum(len(o) for o in self.layout.ffn_order)} neurons" if kept else ""
            parts.append(f"{task}: {len(fields)} settings{ffn}")
        scores = ", ".join(sorted(self.scores)) if self.scores else "none"
        return f"Acceleration({self.config.name!r}; {'; '.join(parts) or 'nothing applied'}; scores: {scores})"

    __str__ = __repr__

    def generation_policy(self):
        from .generation import FlashUGenerationPolicy

        cfg = self.config
        if cfg.generation is None and not cfg.quantizes("t2i"):
            return None
        layout = self.layout
        return FlashUGenerationPolicy(cfg.generation or GenerationAccelConfig.off(),
                                      layout and layout.ffn_ranges["t2i"], layout and layout.group_ranges["t2i"],
                                      name=cfg.name, linears=self.linears if cfg.quantizes("t2i") else None,
                                      quantize_full_phase=cfg.quantizes("t2i") and cfg.quantization.full_phase)

    def understanding_policy(self):
        from .understanding import FlashUUnderstandingPolicy

        cfg = self.config
        if cfg.understanding is None and not cfg.quantizes("mmu"):
            return None
        return FlashUUnderstandingPolicy(cfg.understanding or UnderstandingAccelConfig.off(),
                                         self.layout and self.layout.ffn_ranges["mmu"], name=cfg.name,
                                         calibrated_similarity=self.understanding_layer_similarity,
                                         ledger=self.draft_ledger,
                                         linears=self.linears if cfg.quantizes("mmu") else None)


ScoresArg = Mapping[str, "ImportanceScores | str | Path"] | None


def accelerate(bundle: Showo2Bundle, spec: "FlashUConfig | str | Path | None" = "paper", *, task: str | None = None,
               scores: ScoresArg = None, progress: bool = True, calibration_samples: int | None = None,
               use_cache: bool = True) -> Acceleration:
    """Apply FlashU to ``bundle``. ``spec``: see :mod:`flashu.accel.spec`; ``task`` (``t2i``/``mmu``) keeps only
    that task's techniques. ``scores`` maps task to importance scores or their file; missing ones come from the
    calibration cache or are calibrated once (with a progress bar)."""
    if bundle.acceleration is not None:
        raise FlashuError("this model is already accelerated; call flashu.restore(bundle) first")
    if calibration_samples is not None and (isinstance(calibration_samples, bool)
                                            or not isinstance(calibration_samples, int) or calibration_samples < 1):
        raise FlashuError(f"calibration_samples must be a positive integer, got {calibration_samples!r}")
    cfg = resolve_accel(spec, task)
    check_supported(bundle, cfg)
    resolved = _resolve_scores(bundle, cfg, scores, progress, calibration_samples, use_cache)
    und = cfg.understanding
    prior = resolved["mmu"].layer_similarity if "mmu" in resolved else None
    if und is not None and und.layer_skip_ratio > 0 and und.skip_in_prefill and prior is None:
        raise ConfigError("understanding.skip_in_prefill needs the layer similarity that understanding calibration "
                          "records; recalibrate ('flashu calibrate --task mmu') or set skip_in_prefill=false")
    layout = None
    if resolved:
        gen = cfg.generation
        layout = plan_layout(
            bundle.model, resolved,
            ffn_ratio={"t2i": gen.prune_ratio if gen else 0.0, "mmu": und.prune_ratio if und else 0.0},
            group_ratio={"t2i": gen.attention_group_prune_ratio if gen else 0.0, "mmu": 0.0},
            alignment={"t2i": gen.prune_alignment if gen else 64, "mmu": und.prune_alignment if und else 64},
        )
    linears = None
    if cfg.quantization is not None:  # copies the weights as the layout leaves them: permute first, then quantize
        order = layout and (layout.ffn_order, layout.group_order)
        if order:
            permute_model(bundle.model, *order)
        try:
            linears = build_linears(bundle.model, cfg.quantization, layout and {
                task: layout.ffn_ranges[task] for task in ("t2i", "mmu") if cfg.quantizes(task)})
        except BaseException:
            if order:  # never a half-modified model
                permute_model(bundle.model, [inverse(o) for o in order[0]], [inverse(o) for o in order[1]])
            raise
    elif layout is not None:
        permute_model(bundle.model, layout.ffn_order, layout.group_order)
    bundle.acceleration = Acceleration(cfg, layout, None if prior is None else [float(v) for v in prior], resolved,
                                       linears=linears)
    return bundle.acceleration


def _resolve_scores(bundle, cfg: FlashUConfig, scores: ScoresArg, progress: bool, samples: int | None,
                    use_cache: bool) -> dict[str, ImportanceScores]:
    needed = [task for task in ("t2i", "mmu") if cfg.needs_scores(task)]
    resolved: dict[str, ImportanceScores] = {}
    if scores is not None and not isinstance(scores, Mapping):
        raise FlashuError(f"scores must map a task (t2i, mmu) to importance scores or their file, not "
                          f"{type(scores).__name__}")
    for task, item in dict(scores or {}).items():  # check what was given before spending time on calibration
        if not isinstance(item, (ImportanceScores, str, Path)):
            raise FlashuError(f"scores[{task!r}] must be importance scores or the path of their file, not "
                              f"{type(item).__name__}")
        item = item if isinstance(item, ImportanceScores) else ImportanceScores.load(item)
        if item.task != task:
            raise FlashuError(f"the importance scores given for {task} are for {item.task}: pass the {task} file")
        if task in needed:
            item.check_model(bundle.model, task)
            resolved[task] = item
    for task in needed:
        if task not in resolved:
            from .calibration import cached_scores

            resolved[task] = cached_scores(bundle, task, samples=samples or cfg.calibration_samples,
                                           progress=progress, use_cache=use_cache)
    return resolved


def check_supported(bundle: Showo2Bundle, cfg: FlashUConfig) -> None:
    """Refuse, in one line, any technique this model cannot run as configured (nothing is changed yet)."""
    model = bundle.model
    llm = model.config.llm
    gen, und = cfg.generation, cfg.understanding
    if gen is not None:
        _protected(skip_count(gen.layer_skip_ratio, llm.num_layers, "generation.layer_skip_ratio"),
                   gen.protect_first_last, llm.num_layers, "generation.layer_skip_ratio", gen.layer_skip_ratio)
        groups = int(gen.attention_group_prune_ratio * llm.num_kv_heads)
        if gen.attention_group_prune_ratio > 0 and (groups == 0 or groups >= llm.num_kv_heads):
            raise ConfigError(f"generation.attention_group_prune_ratio {gen.attention_group_prune_ratio} prunes "
                              f"{groups} of this model's {llm.num_kv_heads} KV groups; use 0 or a ratio that "
                              "prunes some but not all")
    if und is not None:
        _protected(skip_count(und.layer_skip_ratio, llm.num_layers, "understanding.layer_skip_ratio"),
                   und.protect_first_last, llm.num_layers, "understanding.layer_skip_ratio", und.layer_skip_ratio)
        if und.speculative_decoding:
            _protected(skip_count(und.draft_skip_ratio, llm.num_layers, "understanding.draft_skip_ratio"),
                       True, llm.num_layers, "understanding.draft_skip_ratio", und.draft_skip_ratio)
        if und.token_prune_ratio > 0 and und.token_prune_layer >= llm.num_layers:
            raise ConfigError(f"understanding.token_prune_layer {und.token_prune_layer} must be below this model's "
                              f"{llm.num_layers} decoder layers")
    for section, part in (("generation", gen), ("understanding", und)):
        if part is not None and part.prune_ratio > 0 \
                and kept_count(llm.intermediate_size, part.prune_ratio, part.prune_alignment) >= llm.intermediate_size:
            raise ConfigError(f"{section}.prune_ratio {part.prune_ratio} with prune_alignment {part.prune_alignment} "
                              f"prunes no neuron of this model's {llm.intermediate_size}-neuron FFNs; use a smaller "
                              "prune_alignment, or prune_ratio 0 (off)")
    if cfg.needs_generation_scores or cfg.needs_understanding_scores or cfg.quantization is not None:
        _check_weights_resident(model)
    if cfg.quantization is not None:
        resolve_backend(cfg.quantization, next(model.parameters()).device)


def _protected(count: int, protect: bool, num_layers: int, field: str, ratio: float) -> None:
    """With the first and last layers never skipped, ``count`` must fit in the other ``num_layers - 2`` (else fewer
    layers than configured would be skipped, silently)."""
    if protect and count > num_layers - 2:
        raise ConfigError(f"{field} {ratio} skips {count} of this model's {num_layers} layers, but with the first "
                          f"and last protected only {max(num_layers - 2, 0)} can be skipped; use a smaller ratio")


def _check_weights_resident(model) -> None:
    """Pruning permutes and slices the decoder's weights and quantization copies them: they must be plain,
    resident ``nn.Linear`` weights."""
    for name, module in model.layers.named_modules():
        if isinstance(module, nn.Linear) and type(module) is not nn.Linear:
            raise FlashuError(f"decoder layer module {name} is a {type(module).__name__}, not a plain Linear (an "
                              "adapter such as a LoRA?): merge it into the weights first (peft: "
                              "model.merge_and_unload()), or use a configuration without FFN pruning or quantization")
        if type(module).__name__.startswith("Lora") or hasattr(module, "lora_A"):
            raise FlashuError(f"decoder layer module {name} carries a LoRA adapter: merge it first (peft: "
                              "model.merge_and_unload()), or use a configuration without FFN pruning or quantization")
        weight = getattr(module, "weight", None)
        if getattr(module, "_hf_hook", None) is not None or (weight is not None and weight.is_meta):
            raise FlashuError("FFN pruning permutes the decoder weights in place and quantization copies them, "
                              "which offloaded or dispatched weights do not allow: load the model without offload, "
                              "or use a configuration without FFN pruning or quantization")


def restore(bundle: Showo2Bundle) -> None:
    """Undo ``accelerate``: bit-identical parameters and outputs. A no-op on an unaccelerated model."""
    acc = bundle.acceleration
    if acc is None:
        return
    if acc.layout is not None:
        permute_model(bundle.model, [inverse(o) for o in acc.layout.ffn_order],
                      [inverse(o) for o in acc.layout.group_order])
    bundle.acceleration = None


@contextmanager
def accelerated(bundle: Showo2Bundle, spec: "FlashUConfig | str | Path | None" = "paper",
                **kwargs) -> Iterator[Acceleration]:
    """``with flashu.accelerated(bundle, "plus"): ...`` — restored on exit, even after an error."""
    acc = accelerate(bundle, spec, **kwargs)
    try:
        yield acc
    finally:
        restore(bundle)
