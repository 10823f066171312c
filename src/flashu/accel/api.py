"""``flashu.accelerate`` / ``flashu.restore``: apply FlashU to a loaded model and take it back off.

Applying computes everything first (scores, kept sets, permutations) and only then permutes the weights in place,
so a failed call leaves the model untouched. The model stays a valid baseline (the permutation preserves its
function); each task's plan then runs its own contiguous neuron range. ``restore`` applies the inverse
permutation: parameters and outputs are bit-identical to before.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

from ..bundle import Showo2Bundle
from ..errors import FlashuError
from .config import FlashUConfig, accel_preset
from .importance import ImportanceScores
from .pruning import PruningLayout, inverse, permute_model, plan_layout


@dataclass
class Acceleration:
    """What ``accelerate`` applied to a bundle (model-level, not per request)."""

    config: FlashUConfig
    layout: PruningLayout
    # the understanding calibration's mean last-token similarity per layer (prefill layer-skip prior), if known
    understanding_layer_similarity: list[float] | None = None

    def generation_policy(self):
        from .generation import FlashUGenerationPolicy

        if self.config.generation is None:
            return None
        return FlashUGenerationPolicy(self.config.generation, self.layout.ffn_ranges["t2i"],
                                      self.layout.group_ranges["t2i"], name=self.config.name)

    def understanding_policy(self):
        from .understanding import FlashUUnderstandingPolicy

        if self.config.understanding is None:
            return None
        return FlashUUnderstandingPolicy(self.config.understanding, self.layout.ffn_ranges["mmu"],
                                         name=self.config.name,
                                         calibrated_similarity=self.understanding_layer_similarity)


ScoresArg = Mapping[str, "ImportanceScores | str | Path"] | None


def accelerate(bundle: Showo2Bundle, config: FlashUConfig | str = "paper", *, scores: ScoresArg = None,
               progress: bool = True, calibration_samples: int | None = None) -> Acceleration:
    """Apply FlashU to ``bundle``. ``scores`` maps task (``t2i``/``mmu``) to importance scores or their file;
    missing scores are calibrated on the fly (with a progress bar)."""
    if getattr(bundle, "acceleration", None) is not None:
        raise FlashuError("this model is already accelerated; call flashu.restore(bundle) first")
    cfg = accel_preset(config) if isinstance(config, str) else config.validate()
    given = dict(scores or {})
    needed = {"t2i": cfg.needs_generation_scores, "mmu": cfg.needs_understanding_scores}
    resolved: dict[str, ImportanceScores] = {}
    for task, item in given.items():  # check what was given before spending time on calibration
        if needed.get(task):
            item = item if isinstance(item, ImportanceScores) else ImportanceScores.load(item)
            item.check_model(bundle.model, task)
            resolved[task] = item
    for task, need in needed.items():
        if need and task not in resolved:
            from .calibration import calibrate

            resolved[task] = calibrate(bundle, task, samples=calibration_samples or cfg.calibration_samples,
                                       progress=progress)
    gen, und = cfg.generation, cfg.understanding
    layout = plan_layout(
        bundle.model, resolved,
        ffn_ratio={"t2i": gen.prune_ratio if gen else 0.0, "mmu": und.prune_ratio if und else 0.0},
        group_ratio={"t2i": gen.attention_group_prune_ratio if gen else 0.0, "mmu": 0.0},
        alignment={"t2i": gen.prune_alignment if gen else 64, "mmu": und.prune_alignment if und else 64},
    )
    permute_model(bundle.model, layout.ffn_order, layout.group_order)
    prior = resolved["mmu"].layer_similarity if "mmu" in resolved else None
    bundle.acceleration = Acceleration(cfg, layout, None if prior is None else [float(v) for v in prior])
    return bundle.acceleration


def restore(bundle: Showo2Bundle) -> None:
    """Undo ``accelerate``: bit-identical parameters and outputs. A no-op on an unaccelerated model."""
    acc = getattr(bundle, "acceleration", None)
    if acc is None:
        return
    permute_model(bundle.model, [inverse(o) for o in acc.layout.ffn_order],
                  [inverse(o) for o in acc.layout.group_order])
    bundle.acceleration = None


@contextmanager
def accelerated(bundle: Showo2Bundle, config: FlashUConfig | str = "paper", **kwargs) -> Iterator[Acceleration]:
    """``with flashu.accelerated(bundle, "plus"): ...`` — restored on exit, even after an error."""
    acc = accelerate(bundle, config, **kwargs)
    try:
        yield acc
    finally:
        restore(bundle)
