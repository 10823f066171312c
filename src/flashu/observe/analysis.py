"""Parameter specialization between generation and understanding (the paper's §2.1 / Figure 1) on any model.

For each task the unaccelerated model runs its *real* forwards with one probe attached — ``t2i``: denoising
evaluations along the sampler's trajectory (time token, noisy latents, CFG rows, the exact position trim), as in
:mod:`flashu.accel.calibration`; ``mmu``: understanding prefills of image + question. The probe accumulates, per
decoder layer ℓ and intermediate FFN neuron k, ``Σ a_k²`` over every token of every forward (``a`` = the input of
``down_proj``, ``silu(gate(x))·up(x)``), and the cosine similarity between the layer's input and output.
From these, two importance scores per neuron:

* **Wanda** (what FlashU prunes with): the ``down_proj`` column score ``‖A_k‖₂ · Σ_i |W_down[i, k]|``
  (:func:`flashu.accel.importance.scores_from_norms`).
* **Leave-one-out squared error** (the OBD-style analysis; the community reconstruction's squared variant):
  ``S_ℓ,k = mean over samples of ‖Layer_ℓ(H_ℓ) − Layer_ℓ(H_ℓ; a_k := 0)‖²`` with ``H_ℓ`` the recorded (unablated)
  input of layer ℓ. Computed exactly without ablating anything: the FFN is the last operation of a decoder layer,
  ``Layer_ℓ(H) = R + W_down·a`` with ``R = H + Attn(H)`` the residual stream, untouched by ``a``, and ``down_proj``
  has no bias. Zeroing ``a_k`` therefore changes the output of every token t by exactly ``a_k(t) · W_down[:, k]``,
  so ``‖ΔY‖² = Σ_t a_k(t)² · ‖W_down[:, k]‖²`` — the probe's ``Σ a_k²`` times the squared column norm, divided by
  the number of samples. (Instead of d_ff ablated forwards per layer; the squared error keeps the per-sample
  ranking of the unsquared one and makes the per-sample mean a plain sum.) A *sample* is one prompt (all its
  denoising evaluations, CFG rows included) or one image/question prefill.

Overlap (Figure 1 as the community reconstruction draws it): per layer, each task's top ``top_fraction`` neurons
(``flashu.accel.pruning.top_set``, the same selection FlashU prunes with), their IoU and the shares of the layer's
neurons that are generation-only / in both / understanding-only. Independent random selections would give
``both = f²`` and ``IoU = f / (2 − f)``; they are in the result for comparison.

Similarity profiles: mean ``cos(h_in, h_out)`` per layer — ``t2i`` over the image-block tokens (time token + image
tokens, every row; what FlashU's layer skipping ranks by), ``mmu`` at the last prefill position
(:class:`~flashu.accel.understanding.LastTokenSimilarityProbe`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from ..accel.calibration import CALIBRATION_STEPS, calibration_items
from ..accel.config import TASKS
from ..accel.importance import ActivationNormProbe, scores_from_norms
from ..accel.pruning import top_set
from ..bundle import Showo2Bundle
from ..errors import FlashuError
from ..model import ExecutionPlan, Probe

SCHEMA = "flashu-specialization"
SCHEMA_VERSION = 1
METHODS = ("wanda", "loo")
METHOD_TITLES = {"wanda": "Wanda (|W|·‖X‖)", "loo": "leave-one-out squared error"}
SHARES = ("generation_only", "both", "understanding_only")


# ---------------------------------------------------------------------------------------------- forwards
class _Collect:
    """Pipeline step observer: attaches ``probe`` to every forward, asks the model for the per-layer input/output
    similarity over ``scope`` and averages what the forwards return."""

    def __init__(self, probe: Probe, scope: str, num_layers: int):
        self.probe, self.scope = probe, scope
        self.sums = torch.zeros(num_layers, dtype=torch.float64)
        self.counts = torch.zeros(num_layers, dtype=torch.float64)

    def plan(self, step: int, plan: ExecutionPlan) -> ExecutionPlan:
        return plan.with_(probe=self.probe, similarity=self.scope)

    def observe(self, step: int, plan: ExecutionPlan, output) -> None:
        backbone = getattr(output, "backbone", output)
        if backbone is None or backbone.similarity is None:
            return
        value = backbone.similarity.double().cpu()
        seen = ~torch.isnan(value)
        self.sums[seen] += value[seen]
        self.counts[seen] += 1

    def similarity(self) -> list[float | None]:
        return [float(s / n) if n else None for s, n in zip(self.sums, self.counts)]


def task_forwards(bundle: Showo2Bundle, task: str, items: Sequence, probe: Probe, *,
                  steps: int = CALIBRATION_STEPS, guidance: float | None = None, seed: int = 0,
                  progress: bool = False) -> list[float | None]:
    """Run ``task``'s real forwards on ``items`` with ``probe`` attached to every backbone forward; returns the mean
    per-layer input/output cosine similarity (t2i: over the image blocks; mmu: the last prefill position).

    ``t2i``: ``items`` are prompts; each is generated (``steps`` grid points, seed ``seed``, no VAE decode) exactly
    like calibration. ``mmu``: ``items`` are (image, question) pairs; each runs the understanding prefill.
    """
    from ..pipelines.mmu import build_understanding_inputs
    from ..pipelines.t2i import generate

    num_layers = bundle.config.llm.num_layers
    if task == "t2i":
        collect = _Collect(probe, "image", num_layers)
        for prompt in tqdm(items, desc="analysis t2i", unit="prompt", disable=not progress):
            generate(bundle, prompt, steps=steps, guidance=guidance, seed=seed, progress=False, decode=False,
                     observer=collect)
        return collect.similarity()
    if task != "mmu":
        raise FlashuError(f"unknown task {task!r}; use t2i or mmu")
    collect = _Collect(probe, "last", num_layers)
    with torch.no_grad():
        for image, question in tqdm(items, desc="analysis mmu", unit="pair", disable=not progress):
            inputs = build_understanding_inputs(bundle, image, question)
            plan = collect.plan(-1, ExecutionPlan())
            collect.observe(-1, plan, bundle.model.forward_understanding(inputs, plan))
    return collect.similarity()


# ---------------------------------------------------------------------------------------------- scores
def loo_scores(model, probe: ActivationNormProbe, samples: int) -> torch.Tensor:
    """Leave-one-out squared error per FFN neuron [L, d_ff], averaged per sample: ``Σ_t a_k(t)² · ‖W_down[:, k]‖²
    / samples`` (the exact change of the layer output when ``a_k := 0``; see the module docstring)."""
    act_sq = torch.stack([s.detach().double().cpu() for s in probe.sums["down"]])
    col_sq = torch.stack([layer.mlp.down_proj.weight.detach().double().pow(2).sum(0).cpu()
                          for layer in model.layers])
    return (act_sq * col_sq / max(samples, 1)).float()


def overlap(gen: torch.Tensor, und: torch.Tensor, top_fraction: float = 0.5) -> dict:
    """Per-layer overlap of each task's top ``top_fraction`` neurons. ``gen``/``und``: scores [L, N].

    Shares are percentages of the layer's N neurons; ``iou`` = |G ∩ U| / |G ∪ U|; ``spearman`` is the rank
    correlation of the two score vectors.
    """
    if gen.shape != und.shape or gen.ndim != 2:
        raise FlashuError(f"score tensors must both be [layers, neurons], got {tuple(gen.shape)} and "
                          f"{tuple(und.shape)}")
    if not 0.0 < top_fraction <= 1.0:
        raise FlashuError(f"top_fraction must be in (0, 1], got {top_fraction}")
    layers, total = gen.shape
    count = max(1, round(top_fraction * total))
    out = {"top_fraction": top_fraction, "top_count": count, "iou": [], "spearman": [],
           **{s: [] for s in SHARES}}
    for layer in range(layers):
        g, u = top_set(gen[layer], count), top_set(und[layer], count)
        both = len(g & u)
        out["generation_only"].append(100.0 * len(g - u) / total)
        out["both"].append(100.0 * both / total)
        out["understanding_only"].append(100.0 * len(u - g) / total)
        out["iou"].append(both / len(g | u))
        out["spearman"].append(_spearman(gen[layer], und[layer]))
    out["mean"] = {k: sum(out[k]) / layers for k in ("iou", "spearman", *SHARES)}
    f = count / total
    out["independent"] = {"both": 100.0 * f * f, "iou": f / (2.0 - f)}
    return out


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = torch.argsort(torch.argsort(a.double(), stable=True)).double()
    rb = torch.argsort(torch.argsort(b.double(), stable=True)).double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else 0.0


def _top_share(scores: torch.Tensor, count: int) -> list[float]:
    """Share of each layer's total importance held by its top ``count`` neurons (how long-tailed it is)."""
    top = scores.double().topk(count, dim=-1).values.sum(-1)
    total = scores.double().sum(-1)
    return [float(t / s) if s > 0 else 0.0 for t, s in zip(top, total)]


# ---------------------------------------------------------------------------------------------- the analysis
def specialization(bundle: Showo2Bundle, *, samples: int = 20, top_fraction: float = 0.5, loo: bool = True,
                   progress: bool = True, prompts: Sequence[str] | None = None,
                   pairs: Sequence[tuple[object, str]] | None = None, steps: int = CALIBRATION_STEPS,
                   guidance: float | None = None, include_scores: bool = False) -> dict:
    """The specialization analysis of ``bundle`` (see the module docstring); a JSON-serialisable dict.

    ``samples`` prompts and image/question pairs (default: the model's calibration data, see
    :mod:`flashu.accel.calibration`) — or give ``prompts``/``pairs`` (e.g. from ``read_prompts``/``read_pairs``).
    ``include_scores`` adds every neuron's scores (``scores[method][task]``, [L][d_ff]); large for real models.
    """
    if samples < 1:
        raise FlashuError(f"samples must be at least 1, got {samples}")
    if bundle.acceleration is not None:
        raise FlashuError("analyse the unaccelerated model: call flashu.restore(bundle) first")
    model = bundle.model
    num_layers = bundle.config.llm.num_layers
    items = {"t2i": list(prompts or calibration_items(bundle, "t2i", samples)[1])[:samples],
             "mmu": list(pairs or calibration_items(bundle, "mmu", samples)[1])[:samples]}
    methods = METHODS if loo else ("wanda",)
    scores: dict[str, dict[str, torch.Tensor]] = {m: {} for m in methods}
    similarity, tokens = {}, {}
    for task in TASKS:
        probe = ActivationNormProbe(num_layers)
        similarity[task] = task_forwards(bundle, task, items[task], probe, steps=steps, guidance=guidance,
                                         progress=progress)
        n = len(items[task])
        scores["wanda"][task] = scores_from_norms(model, probe, task, n).ffn.float()
        if loo:
            scores["loo"][task] = loo_scores(model, probe, n)
        tokens[task] = probe.tokens

    result = {
        "schema": SCHEMA, "version": SCHEMA_VERSION, "model": bundle.source,
        "num_layers": num_layers, "ffn_size": bundle.config.llm.intermediate_size,
        "samples": {t: len(items[t]) for t in TASKS}, "tokens": tokens,
        "t2i_steps": steps, "t2i_guidance": bundle.config.default_guidance if guidance is None else guidance,
        "top_fraction": top_fraction, "methods": list(methods),
        "overlap": {m: overlap(scores[m]["t2i"], scores[m]["mmu"], top_fraction) for m in methods},
        "top_share": {m: {t: _top_share(scores[m][t], max(1, round(top_fraction * scores[m][t].shape[1])))
                          for t in TASKS} for m in methods},
        "similarity": similarity,
        "similarity_tokens": {"t2i": "image block (time token + image tokens, all CFG rows), mean over "
                                     "denoising evaluations and prompts",
                              "mmu": "last prefill position, mean over pairs"},
    }
    if include_scores:
        result["scores"] = {m: {t: scores[m][t].tolist() for t in TASKS} for m in methods}
    return result


# ---------------------------------------------------------------------------------------------- output
def markdown(result: dict) -> str:
    """A per-layer table: shares and IoU for each method, similarity per task."""
    methods = result["methods"]
    f = result["top_fraction"]
    lines = [f"specialization of `{result['model']}`: top {f:.0%} FFN neurons per task and layer "
             f"({result['samples']['t2i']} prompts, {result['samples']['mmu']} image/question pairs)", ""]
    head = ["layer"]
    for m in methods:
        head += [f"{m} gen-only %", f"{m} both %", f"{m} und-only %", f"{m} IoU"]
    head += ["cos t2i", "cos mmu"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for layer in range(result["num_layers"]):
        cells = [str(layer)]
        for m in methods:
            o = result["overlap"][m]
            cells += [f"{o['generation_only'][layer]:.1f}", f"{o['both'][layer]:.1f}",
                      f"{o['understanding_only'][layer]:.1f}", f"{o['iou'][layer]:.3f}"]
        for t in TASKS:
            value = result["similarity"][t][layer]
            cells.append("–" if value is None else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    for m in methods:
        mean, ind = result["overlap"][m]["mean"], result["overlap"][m]["independent"]
        lines.append(f"\n{m}: mean IoU {mean['iou']:.3f} (independent selections: {ind['iou']:.3f}), both "
                     f"{mean['both']:.1f} % (independent: {ind['both']:.1f} %), rank correlation "
                     f"{mean['spearman']:.3f}")
    return "\n".join(lines)


def plot_specialization(result: dict, path_png: str) -> None:
    """Figure 1 style: per method, horizontal stacked bars per layer (generation only / both / understanding
    only, % of the layer's neurons); last panel, the per-layer input/output cosine similarity of each task."""
    from .bench import pyplot

    plt = pyplot()
    import matplotlib.ticker

    methods = result["methods"]
    layers = list(range(result["num_layers"]))
    height = max(4.0, 0.28 * len(layers) + 1.8)
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(6 * (len(methods) + 1), height), squeeze=False)
    colours = {"generation_only": "#e4572e", "both": "#8e7dbe", "understanding_only": "#2e86ab"}
    labels = {"generation_only": "Generation only", "both": "Both tasks (overlap)",
              "understanding_only": "Understanding only"}
    for ax, method in zip(axes[0], methods):
        o = result["overlap"][method]
        left = [0.0] * len(layers)
        for share in SHARES:
            ax.barh(layers, o[share], left=left, color=colours[share], label=labels[share])
            left = [a + b for a, b in zip(left, o[share])]
        ax.set_xlabel("Percentage of key FFN neurons (%)")
        ax.set_ylabel("FFN layer index")
        ax.set_yticks(layers)
        ax.invert_yaxis()
        ax.set_xlim(0, 100)
        ax.set_title(f"{METHOD_TITLES.get(method, method)}\ntop {result['top_fraction']:.0%} per task, "
                     f"mean IoU {o['mean']['iou']:.2f}", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    ax = axes[0][-1]
    names = {"t2i": "generation (image-block tokens)", "mmu": "understanding (last token)"}
    for task in TASKS:
        values = [float("nan") if v is None else v for v in result["similarity"][task]]
        ax.plot(layers, values, marker="o", label=names[task])
    ax.set_xlabel("decoder layer")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel("cos(layer input, layer output)")
    ax.set_title("input/output similarity per layer", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from ..io.files import save_figure

    save_figure(fig, path_png, dpi=110)
    plt.close(fig)
