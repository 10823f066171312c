"""The techniques each task's session composes, in the order they shape a plan (:mod:`.technique` says what a
technique is). Adding a technique: its file under ``accel/``, its line here, its lines in the invariant suite
(``tests/test_techniques.py``) — ``docs/architecture.md`` walks through it.

Order matters where decisions meet: the head cache comes before layer skipping (a ranking evaluation runs the
backbone even when the head reuses its features), and prefix reuse comes last (it keys the text prefix's K/V on the
backbone configuration the others chose); self-speculation comes last among understanding's (its target plan is
what the others made of a full-depth decode step).
"""

from __future__ import annotations

from .exact import ExactTrims, ShareCfgVisual
from .head_cache import HeadCacheReuse
from .layer_skip import GenerationLayerSkip, UnderstandingLayerSkip
from .prefix_reuse import PrefixReuse
from .pruning import HybridFfn, StaticFfn
from .quantization import QuantizedKernels
from .speculative import SelfSpeculation
from .technique import Technique
from .token_pruning import TokenPruning

GENERATION: tuple[type[Technique], ...] = (
    HybridFfn,
    QuantizedKernels,
    HeadCacheReuse,
    GenerationLayerSkip,
    ExactTrims,
    ShareCfgVisual,
    PrefixReuse,
)

UNDERSTANDING: tuple[type[Technique], ...] = (
    StaticFfn,
    QuantizedKernels,
    TokenPruning,
    UnderstandingLayerSkip,
    SelfSpeculation,
)
