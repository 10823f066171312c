"""``flashu.compile(bundle)``: the model's forward pieces compiled with ``torch.compile(fullgraph=True)``.

Compiled: the visual branches (``image_tokens``), the decoder (``run_backbone`` — every text-to-image evaluation,
the understanding prefill and each decoding step), the flow-head blocks (``run_head_blocks``) and the final layer
(``velocity_from_features``). ``fullgraph=True``: a graph break is an error, never a silent fallback. Understanding
then decodes with a static, preallocated KV cache (attention spans every slot, so a decode step has fixed shapes;
``pipelines/mmu.answer``), reading tokens back to the host only to stop at ``<|im_end|>``.

Recompilations: a graph is specialised to the plan's structure — which decoder layers run and which FFN/head ranges
they use — and to the tensor shapes. A baseline generation compiles each piece once; an accelerated one once per
distinct configuration it uses (FlashU ``paper``/``plus``: the ranking, skipping and full-network phases, and a new
skip set after each ranking), an understanding answer once for the prefill and once per distinct decoding plan.
:func:`compile_stats` counts the graphs compiled so far. ``flashu.compile(bundle, enabled=False)`` undoes it.
"""

from __future__ import annotations

import torch

from .bundle import Showo2Bundle

RECOMPILE_LIMIT = 64  # graphs per compiled piece before torch falls back to eager (its default is 8)


def compile(bundle: Showo2Bundle, *, backend: str = "inductor", mode: str | None = None,
            enabled: bool = True) -> Showo2Bundle:
    """Compile ``bundle``'s model in place (``enabled=False``: back to eager). Returns the bundle."""
    model = bundle.model
    model.use_compiled(None)
    bundle.compiled = False
    if not enabled:
        return bundle
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, RECOMPILE_LIMIT)
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    model.use_compiled({name: torch.compile(getattr(model, name), fullgraph=True, dynamic=False, backend=backend,
                                            mode=mode) for name in model.COMPILABLE})
    bundle.compiled = True
    return bundle


def compile_stats() -> dict:
    """Graphs compiled so far in this process (``unique_graphs``) and calls captured by dynamo."""
    from torch._dynamo.utils import counters

    stats = counters["stats"]
    return {"unique_graphs": int(stats.get("unique_graphs", 0)), "calls_captured": int(stats.get("calls_captured", 0))}
