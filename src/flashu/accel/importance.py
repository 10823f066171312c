"""Structured Wanda importance per task: activation norms from real calibration forwards, then scores.

For a linear map ``y = W x`` with input feature norms ‖X_j‖₂ accumulated over calibration tokens:

* output-neuron maps (gate/up/q/k/v): row score ``s_i = Σ_j |W_ij|·‖X_j‖``;
* input-neuron maps (down/o): column score ``s_j = ‖X_j‖·Σ_i |W_ij|``.

An FFN neuron is ranked by its ``down_proj`` column score (its intermediate activation feeds only that column);
a GQA KV group by the sum of the ``o_proj`` column scores of its query heads.
Scores are saved to safetensors with metadata (model fingerprint, task, sample count) and refused for another model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ConfigError, FlashuError
from ..model import Probe, Showo2
from .config import TASKS

SCORES_FORMAT = "flashu-importance-v1"


class ActivationNormProbe(Probe):
    """Accumulates Σ x_j² per input feature of every decoder linear map (over all tokens seen)."""

    wants_linear_inputs = True

    def __init__(self, num_layers: int):
        self.sums: dict[str, list[torch.Tensor | None]] = {k: [None] * num_layers for k in ("qkv", "o", "gate_up", "down")}
        self.tokens = 0

    def linear_inputs(self, layer: int, name: str, x: torch.Tensor) -> None:
        sq = x.detach().float().pow(2).reshape(-1, x.shape[-1]).sum(0)
        current = self.sums[name][layer]
        self.sums[name][layer] = sq if current is None else current + sq
        if layer == 0 and name == "qkv":
            self.tokens += x.shape[0] * x.shape[1]

    def norms(self, name: str) -> torch.Tensor:
        """‖X_j‖₂ per layer [L, features]."""
        missing = [i for i, s in enumerate(self.sums[name]) if s is None]
        if missing:
            raise FlashuError(f"calibration saw no activations for decoder layers {missing}")
        return torch.stack(self.sums[name]).sqrt().cpu()


@dataclass
class ImportanceScores:
    """Per-task importance of every decoder layer's FFN neurons and KV groups."""

    task: str
    ffn: torch.Tensor  # [L, d_ff]
    attention_groups: torch.Tensor  # [L, kv_heads]
    activation_norms: dict[str, torch.Tensor]  # qkv/o/gate_up/down: [L, features]
    fingerprint: str
    samples: int
    tokens: int
    # mmu: mean over the calibration pairs of the last prompt token's cos(h_in, h_out) per decoder layer [L] (the
    # prefill's layer-skip prior: no full-depth pass exists before the prefill); None for t2i and older files
    layer_similarity: torch.Tensor | None = None

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"ffn": self.ffn.contiguous(), "attention_groups": self.attention_groups.contiguous()}
        tensors.update({f"norms.{k}": v.contiguous() for k, v in self.activation_norms.items()})
        if self.layer_similarity is not None:
            tensors["layer_similarity"] = self.layer_similarity.contiguous()
        meta = {"format": SCORES_FORMAT, "task": self.task, "fingerprint": self.fingerprint,
                "samples": str(self.samples), "tokens": str(self.tokens)}
        from ..io.files import save_safetensors

        return save_safetensors(tensors, path, metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "ImportanceScores":
        path = Path(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises several types for bad files
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FlashuError(f"cannot read importance scores {path}: {reason}") from None
        if meta.get("format") != SCORES_FORMAT or "ffn" not in tensors:
            raise FlashuError(f"{path} is not a flashu importance-score file (run 'flashu calibrate')")
        missing = [k for k in ("task", "fingerprint", "samples", "tokens") if k not in meta]
        if missing or "attention_groups" not in tensors:
            raise FlashuError(f"{path} is incomplete (missing {', '.join(missing) or 'attention_groups'}); "
                              "recalibrate with 'flashu calibrate'")
        try:
            samples, tokens = int(meta["samples"]), int(meta["tokens"])
        except ValueError:
            raise FlashuError(f"{path} has unreadable metadata; recalibrate with 'flashu calibrate'") from None
        if meta["task"] not in TASKS:
            raise FlashuError(f"{path} is for unknown task {meta['task']!r}; recalibrate with 'flashu calibrate'")
        norms = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("norms.")}
        scores = cls(task=meta["task"], ffn=tensors["ffn"], attention_groups=tensors["attention_groups"],
                     activation_norms=norms, fingerprint=meta["fingerprint"], samples=samples, tokens=tokens,
                     layer_similarity=tensors.get("layer_similarity"))
        for name, value in (("ffn", scores.ffn), ("attention_groups", scores.attention_groups),
                            ("layer_similarity", scores.layer_similarity)):
            if value is not None and not torch.isfinite(value.float()).all():
                raise FlashuError(f"{path}: {name} holds NaN or infinite values; recalibrate with 'flashu calibrate'")
        return scores

    def check_model(self, model: Showo2, task: str) -> None:
        if self.task != task:
            raise FlashuError(f"these importance scores are for task {self.task!r}, not {task!r}: pass the "
                              f"{task} file (flashu calibrate --task {task})")
        cfg = model.config.llm
        shapes = {"ffn": (cfg.num_layers, cfg.intermediate_size), "attention_groups": (cfg.num_layers, cfg.num_kv_heads)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise FlashuError(f"importance scores {name} have shape {list(getattr(self, name).shape)}, this model "
                                  f"needs {list(shape)}; recalibrate with 'flashu calibrate' on this model")
        if self.layer_similarity is not None and tuple(self.layer_similarity.shape) != (cfg.num_layers,):
            raise FlashuError("importance scores layer_similarity do not match this model's layers; recalibrate")
        if self.fingerprint != model_fingerprint(model):
            raise FlashuError("importance scores were computed on another model (fingerprint mismatch); "
                              "recalibrate with 'flashu calibrate' on this model")


def scores_from_norms(model: Showo2, probe: ActivationNormProbe, task: str, samples: int) -> ImportanceScores:
    cfg = model.config.llm
    down_norms, o_norms = probe.norms("down"), probe.norms("o")
    ffn, groups = [], []
    for i, layer in enumerate(model.layers):
        w_down = layer.mlp.down_proj.weight.detach().float().abs().sum(0).cpu()  # Σ_i |W_ij| per column j
        ffn.append(down_norms[i] * w_down)
        w_o = layer.self_attn.o_proj.weight.detach().float().abs().sum(0).cpu()
        columns = o_norms[i] * w_o  # [heads·head_dim]
        per_group = cfg.num_heads // cfg.num_kv_heads * cfg.head_dim
        groups.append(columns.reshape(cfg.num_kv_heads, per_group).sum(-1))
    norms = {k: probe.norms(k) for k in ("qkv", "o", "gate_up", "down")}
    return ImportanceScores(task=task, ffn=torch.stack(ffn), attention_groups=torch.stack(groups),
                            activation_norms=norms, fingerprint=model_fingerprint(model), samples=samples,
                            tokens=probe.tokens)


def model_fingerprint(model: Showo2) -> str:
    """Identifies a model's weights independently of FFN/head order, so an accelerated (permuted) model and its
    original share a fingerprint: config + per-layer fp64 sums of |W| (order-independent to ~1e-13), rounded."""
    digest = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    with torch.no_grad():
        sums = []
        for layer in model.layers:
            for w in (layer.mlp.gate_proj.weight, layer.mlp.down_proj.weight, layer.self_attn.q_proj.weight,
                      layer.self_attn.o_proj.weight):
                sums.append(float(w.detach().double().abs().sum()))
        sums.append(float(model.showo.model.embed_tokens.weight.detach()[:8].double().abs().sum()))
    digest.update(",".join(f"{s:.9e}" for s in sums).encode())
    return digest.hexdigest()[:32]


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; use t2i (generation) or mmu (understanding)")
    return task
