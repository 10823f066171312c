"""Train the shapes-world ``testbed`` model: ``python -m flashu.testbed.train``.

One joint objective per step, on the shapes world's ``train`` split (an endless, seeded stream of scenes):

* **Generation — flow matching**, Show-o2's semantics: ``x_t = t·x1 + (1 − t)·x0`` with x0 ~ N(0, I) and x1 the
  image (pixel space for the testbed), target velocity ``x1 − x0``, ``t = sigmoid(N(0, 1))`` (optionally shifted
  towards noise with ``--time-shift``). The rows are exactly what :func:`~flashu.pipelines.t2i.build_generation_inputs`
  builds (``[bos] caption [boi] [time][image…] [eoi] [eos] [pad]…``), a ``--uncond-prob`` fraction with the empty
  caption (the CFG row), truncated after the last image block (later positions cannot influence it under the omni
  mask, so the outputs are identical). The loss is the MSE of :meth:`Showo2.forward_generation`'s velocity — the
  flow head's image-token outputs through the official ``unpatchify`` — against ``x1 − x0``.
* **Understanding — next-token cross-entropy** on the official understanding prompt of
  :func:`~flashu.pipelines.mmu.build_understanding_inputs` (system prefix, ``<|vision_start|>`` [time token at
  t = 1][image tokens] ``<|vision_end|>``, question, assistant suffix) followed by the answer and ``<|im_end|>``;
  omni mask; loss on the answer tokens and ``<|im_end|>`` only. All questions of a scene are *packed* into one row:
  the shared prefix once, then each question/answer segment with the positions and the attention it would have
  alone (it sees the prefix and itself, never another segment), so each segment's logits equal those of its own
  official sequence (checked in ``tests/test_testbed.py``) at a fraction of the cost.

AdamW, linear warm-up then cosine decay, gradient clipping. Everything random is derived from ``--seed`` and the
step number, so a run resumed from a checkpoint (``--resume``) continues exactly as if it had not stopped.
Checkpoints (``checkpoint.pt``), the loss log (``losses.csv``) and the loss curves (``losses.png``, with
matplotlib) go to ``--out``; ``--export DIR`` writes the final model with :func:`flashu.save_pretrained` plus
``reference.json`` (outputs recorded for the reproduction test).

The shipped checkpoint (``flashu/data/testbed``) was produced in two stages (``SHIPPED_COMMANDS``; settings and
times in ``src/flashu/data/testbed/training.json``)::

    python -m flashu.testbed.train --out runs/testbed --threads 2 --export src/flashu/data/testbed
    python -m flashu.testbed.train --out runs/testbed-stage2 --init runs/testbed --steps 1000 --lr 5e-4 \\
        --warmup 50 --seed 1 --threads 2 --export src/flashu/data/testbed

The second stage (``--init``: the first stage's weights, a fresh optimizer and a short, lower cosine schedule on a
new stream of scenes) is what lifts the baseline's generation accuracy on the validation split (the first stage's
squares still had ragged edges; docs/testbed.md has the figures).
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..bundle import Showo2Bundle
from ..config import Showo2Config, preset
from ..model import KVCache, Showo2
from ..model.layers import RMSNorm
from ..model.visual import resize_position_table
from ..io.files import write_json
from ..io.tokenizer import SpecialTokens, build_local_tokenizer
from ..io.vae import LatentCodec, build_vae
from . import vqa, world
from .data import GenerationBatch, UnderstandingBatch, draw_generation_batch, draw_understanding_batch, to_device

SHIPPED_COMMANDS = (
    "python -m flashu.testbed.train --out runs/testbed --threads 2 --export src/flashu/data/testbed",
    "python -m flashu.testbed.train --out runs/testbed-stage2 --init runs/testbed --steps 1000 --lr 5e-4 --warmup 50"
    " --seed 1 --threads 2 --export src/flashu/data/testbed",
)
CHECKPOINT = "checkpoint.pt"
LOSSES_CSV = "losses.csv"
LOSSES_PNG = "losses.png"
TRAINING_JSON = "training.json"  # settings and times of every stage, next to the checkpoint and the export
CSV_FIELDS = ("step", "loss", "flow", "ce", "lr", "grad_norm", "seconds")


@dataclass
class TrainConfig:
    model: str = "testbed"  # preset name of the architecture
    steps: int = 4000
    gen_batch: int = 24  # generation rows per step
    mmu_batch: int = 4  # understanding scenes per step (each packs all of its questions)
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup: int = 100
    weight_decay: float = 0.05
    beta2: float = 0.95
    grad_clip: float = 1.0
    flow_weight: float = 1.0
    ce_weight: float = 0.5
    answer_weighting: str = "token"  # "answer": every answer weighs the same in the CE, whatever its token count
    mmu_families: str = ""  # VQA world: train only these question families (comma list; "": all) — a curriculum
    mmu_questions: int = 0  # VQA world: questions packed per scene (0: one of each family)
    mmu_prefix_once: bool = True  # each scene's prefix runs once, then its questions (same loss, less attention)
    mmu_topic_weights: str = ""  # VQA world, with mmu_questions: "count=0.25,…" keeps fewer extra questions of a topic
    position_sincos: float = 0.0  # on a fresh start: add a 2-D sin/cos pattern, this many times the SigLIP position
    # table's RMS, to the table (every row and column distinct; a smooth or resized table hardly tells columns apart)
    uncond_prob: float = 0.1  # captions dropped to the empty (CFG) row
    time_shift: float = 3.0  # t ← t / (t + shift·(1 − t)): noisy times as often as the sampler's grid (shift 3)
    seed: int = 0
    autocast: str = "none"  # "bf16": forward passes under bf16 autocast (CPUs with AVX512-BF16, GPUs)
    device: str = "cpu"  # where the model trains ("cuda" on a GPU); batches and noise are drawn on the CPU
    checkpoint_every: int = 200
    log_every: int = 10
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------- model


def build_bundle(config: Showo2Config, seed: int) -> Showo2Bundle:
    """A freshly initialised model for training (fp32, CPU): N(0, 0.02) weights, then the usual zero-inits of a
    flow head (adaLN modulation and output layer, so each block starts as an identity at the image positions and
    the velocity starts at 0), residual output projections scaled by 1/√(2·layers), and a fusion projection
    initialised to keep its input's scale (N(0, 1/fan_in), the last layer ×0.5), all norm gains at 1.

    The last point matters: with N(0, 0.02) everywhere the fused image tokens enter the decoder with a norm of
    ~0.01 (``init_random_weights`` also draws the fusion RMSNorm's gain from N(0, 0.02)), below what every layer
    adds to them, so the noisy latent is invisible at the decoder's output and flow
    matching stalls at "predict the mean" (a linear probe finds no trace of x_t there). Show-o2 starts from a
    pre-trained fusion; from scratch, the image tokens must be heard."""
    model = Showo2(config)
    model.init_random_weights(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():  # every norm gain at 1 (init_random_weights misses the fusion RMSNorm's)
            if isinstance(module, (RMSNorm, torch.nn.LayerNorm)):
                module.weight.fill_(1.0)
        for index, gain in ((1, 1.0), (3, 0.5)):
            linear = model.fusion_proj[index]
            linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * gain / math.sqrt(linear.in_features))
        for block in model.diffusion_head_a:
            block.adaLN_modulation[-1].weight.zero_()
            block.adaLN_modulation[-1].bias.zero_()
        model.diffusion_head_b.adaLN_modulation[-1].weight.zero_()
        model.diffusion_head_b.adaLN_modulation[-1].bias.zero_()
        model.diffusion_head_b.linear.weight.zero_()
        model.diffusion_head_b.linear.bias.zero_()
        scale = 1.0 / math.sqrt(2 * config.llm.num_layers)
        for layer in model.layers:
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)
        for name, param in model.named_parameters():  # biases start at zero
            if name.endswith(".bias") and "norm" not in name:
                param.zero_()
    model.tie_weights_if_needed()
    tokenizer = build_local_tokenizer()
    vae = build_vae(config.vae)
    return Showo2Bundle(model=model.float(), tokenizer=tokenizer, codec=LatentCodec(vae), special=SpecialTokens.from_tokenizer(tokenizer),
                        source=config.name)


# ------------------------------------------------------------------------------------------- batches and losses


def flow_loss(bundle: Showo2Bundle, batch: GenerationBatch) -> torch.Tensor:
    t = batch.t.view(-1, 1, 1, 1)
    xt = t * batch.x1 + (1 - t) * batch.x0
    velocity = bundle.model.forward_generation(xt, batch.t, batch.inputs).velocity
    return F.mse_loss(velocity.float(), batch.x1 - batch.x0)


def generation_batch(bundle: Showo2Bundle, cfg: TrainConfig, step: int) -> GenerationBatch:
    return draw_generation_batch(bundle, cfg.seed, step, cfg.gen_batch, cfg.uncond_prob, cfg.time_shift)


def understanding_batch(bundle: Showo2Bundle, cfg: TrainConfig, step: int) -> UnderstandingBatch:
    return draw_understanding_batch(bundle, cfg.seed, step, cfg.mmu_batch, cfg.mmu_families, cfg.mmu_questions,
                                    topic_weights(cfg.mmu_topic_weights), cfg.mmu_prefix_once)


def topic_weights(spec: str) -> dict[str, float] | None:
    """``"count=0.25,shape=0.5"`` → {"count": 0.25, "shape": 0.5}; ``""`` → None. ValueError names what is wrong."""
    if not spec:
        return None
    weights = {}
    for part in spec.split(","):
        topic, sep, value = part.partition("=")
        topic = topic.strip()
        if not sep or topic not in vqa.TOPICS:
            raise ValueError(f"{part!r}: expected TOPIC=WEIGHT with TOPIC one of {', '.join(vqa.TOPICS)}")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"{part!r}: the weight must be a number in (0, 1]") from None
        if not 0 < weight <= 1:
            raise ValueError(f"{part!r}: the weight must be in (0, 1]")
        weights[topic] = weight
    return weights


def understanding_logits(bundle: Showo2Bundle, batch: UnderstandingBatch) -> torch.Tensor:
    """LM logits at every position of the packed rows [B, L, V] (image at t = 1, as in ``answer``)."""
    out = bundle.model.forward_understanding(batch.inputs, positions=batch.positions, mask=batch.mask)
    return bundle.model.showo.lm_head(out.hidden)


def segment_logits(bundle: Showo2Bundle, batch: UnderstandingBatch) -> list[torch.Tensor]:
    """LM logits of each batch of ``batch.segments`` [N, Ls, V]: each scene's prefix runs once (keys/values kept in
    a cache, differentiably), then every question row attends to its scene's. The same function as the packed rows
    (up to float rounding) without their attention between segments."""
    model = bundle.model
    scenes, length = batch.prefix.input_ids.shape
    cache = KVCache.for_model(model, scenes, length)
    model.forward_understanding(batch.prefix, cache=cache)
    logits = []
    for seg in batch.segments:
        per_segment = copy.copy(cache)  # the same cache, one row per segment (its scene's)
        per_segment.keys = [k.index_select(0, seg.scene) for k in cache.keys]
        per_segment.values = [v.index_select(0, seg.scene) for v in cache.values]
        out = model.run_backbone(model.showo.model.embed_tokens(seg.ids), seg.positions, seg.mask,
                                 prefix=per_segment)
        logits.append(model.showo.lm_head(out.hidden))
    return logits


def ce_loss(bundle: Showo2Bundle, batch: UnderstandingBatch, per_answer: bool = False,
            prefix_once: bool = False) -> torch.Tensor:
    """Next-token cross-entropy on the answers: averaged over answer tokens, or (``per_answer``) over answers, each
    answer's tokens averaged first — a one-letter answer then weighs as much as a spelled-out word. ``prefix_once``:
    computed on the segment rows after each prefix ran once (:func:`segment_logits`) instead of the packed rows."""
    if prefix_once:
        parts = [(logits, seg.targets, seg.answer_weights)
                 for logits, seg in zip(segment_logits(bundle, batch), batch.segments)]
    else:
        parts = [(understanding_logits(bundle, batch), batch.targets, batch.answer_weights)]
    total = count = 0
    for logits, targets, weights in parts:
        losses = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100,
                                 reduction="none")
        weights = weights.flatten() if per_answer else (targets.flatten() != -100).float()
        total = total + (losses * weights).sum()
        count = count + weights.sum()
    return total / count


# ------------------------------------------------------------------------------------------------ training


@dataclass
class StopRequest:
    """Signals received (SIGTERM/SIGINT) and the step at which training stopped for them."""

    signals: list = field(default_factory=list)
    at_step: int | None = None

    def is_set(self) -> bool:
        return bool(self.signals)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr_ratio·lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    decay, no_decay = [], []
    seen = set()
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.ndim >= 2 and "embed_tokens" not in name and "position_embedding" not in name
         else no_decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(0.9, cfg.beta2), eps=1e-8)


def save_checkpoint(out: Path, bundle: Showo2Bundle, optimizer, cfg: TrainConfig, step: int, elapsed: float) -> None:
    from ..io.files import torch_save

    state = {"model": bundle.model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "config": asdict(cfg), "model_config": bundle.config.to_dict(), "elapsed": elapsed}
    torch_save(state, out / CHECKPOINT)


def _append_csv(path: Path, rows: list[dict]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_losses(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def plot_losses(out: Path) -> Path | None:
    """``losses.png`` from ``losses.csv`` (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = read_losses(out / LOSSES_CSV)
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("flow", "ce", "lr"),
                              ("flow matching (MSE of velocity)", "understanding (answer CE)", "learning rate")):
        ax.plot(steps, [r[key] for r in rows], lw=0.8)
        ax.set_title(title)
        ax.set_xlabel("step")
        if key != "lr":
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    from ..io.files import save_figure

    path = save_figure(fig, out / LOSSES_PNG, dpi=110)
    plt.close(fig)
    return path


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
          model_config: Showo2Config | None = None, init: str | Path | None = None,
          stop=None) -> Showo2Bundle:
    """Train (or resume) into ``out``; returns the trained bundle (eval mode).

    ``stop``: a :class:`StopRequest` checked between steps; once set, a checkpoint of the completed steps is
    written and training returns early (``stop.at_step`` says where), so ``--resume`` continues exactly.

    ``init``: start from the weights of another run (its directory or a ``checkpoint.pt``) with a fresh optimizer
    and schedule — a second stage; ``resume`` continues ``out``'s own checkpoint and takes precedence."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = model_config or preset(cfg.model)
    torch.manual_seed(cfg.seed)
    bundle = build_bundle(config, cfg.seed)
    device = torch.device(cfg.device)
    model = bundle.model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    start, elapsed = 0, 0.0
    ckpt_path = out / CHECKPOINT
    if resume and ckpt_path.exists():
        state = _load_weights(model, ckpt_path, config)
        optimizer.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state.get("elapsed", 0.0))
        # drop log rows past the checkpoint (written after it, before the interruption)
        rows = [r for r in read_losses(out / LOSSES_CSV) if r["step"] <= start]
        (out / LOSSES_CSV).unlink(missing_ok=True)
        _append_csv(out / LOSSES_CSV, [{k: (int(v) if k == "step" else v) for k, v in r.items()} for r in rows])
    else:
        if init is not None:
            init_path = Path(init) / CHECKPOINT if (Path(init) / CHECKPOINT).is_file() else Path(init)
            if not (init_path.is_file() or (init_path / "config.json").is_file()):
                raise SystemExit(f"--init {init}: neither a training run ({CHECKPOINT}) nor an exported model "
                                 "(config.json); pass a run directory, its checkpoint or a save_pretrained directory")
            _load_weights(model, init_path, config)
        if cfg.position_sincos:
            add_position_pattern(model, cfg.position_sincos)
        (out / LOSSES_CSV).unlink(missing_ok=True)
    write_json(out / "train_config.json", {"train": asdict(cfg), "model": config.to_dict()})

    pending: list[dict] = []
    acc = {"loss": 0.0, "flow": 0.0, "ce": 0.0, "grad_norm": 0.0, "n": 0}
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="training", unit="step",
               disable=not progress, dynamic_ncols=True)
    t_last = time.perf_counter()
    for step in bar:
        if stop is not None and stop.is_set():
            save_checkpoint(out, bundle, optimizer, cfg, step, elapsed)
            stop.at_step = step
            break
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        terms = {}
        loss = torch.zeros((), device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16"):
            if cfg.flow_weight > 0 and cfg.gen_batch > 0:
                terms["flow"] = flow_loss(bundle, to_device(generation_batch(bundle, cfg, step), device))
                loss = loss + cfg.flow_weight * terms["flow"]
            if cfg.ce_weight > 0 and cfg.mmu_batch > 0:
                terms["ce"] = ce_loss(bundle, to_device(understanding_batch(bundle, cfg, step), device),
                                      per_answer=cfg.answer_weighting == "answer", prefix_once=cfg.mmu_prefix_once)
                loss = loss + cfg.ce_weight * terms["ce"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        optimizer.step()
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"loss became {float(loss.detach())} at step {step}")
        acc["loss"] += float(loss.detach())
        acc["flow"] += float(terms["flow"].detach()) if "flow" in terms else 0.0
        acc["ce"] += float(terms["ce"].detach()) if "ce" in terms else 0.0
        acc["grad_norm"] += grad_norm
        acc["n"] += 1
        now = time.perf_counter()
        elapsed += now - t_last
        t_last = now
        done = step + 1
        if done % cfg.log_every == 0 or done == cfg.steps:
            n = acc.pop("n")
            row = {"step": done, **{k: v / n for k, v in acc.items()}, "lr": lr, "seconds": round(elapsed, 2)}
            pending.append(row)
            bar.set_postfix(flow=f"{row['flow']:.4f}", ce=f"{row['ce']:.4f}")
            acc = {"loss": 0.0, "flow": 0.0, "ce": 0.0, "grad_norm": 0.0, "n": 0}
            _append_csv(out / LOSSES_CSV, pending)  # rows past the last checkpoint are dropped on --resume
            pending = []
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            save_checkpoint(out, bundle, optimizer, cfg, done, elapsed)
            plot_losses(out)
            t_last = time.perf_counter()  # checkpoint I/O is not training time
    bar.close()
    model.to("cpu").eval()  # exports, references and evaluation run on the CPU
    return bundle


# Settings that do not change a single weight's shape or meaning: free to differ between stages.
_NOT_ARCHITECTURE = ("name", "default_steps", "default_guidance", "understanding_image_size", "calibration_source")


def _architecture(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _NOT_ARCHITECTURE}


def sincos_grid(grid: int, width: int) -> torch.Tensor:
    """A fixed 2-D sin/cos position pattern [grid², width]: the first half encodes the row, the second the column,
    each with ``width // 4`` frequencies (unit RMS)."""
    quarter = width // 4
    omega = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    angles = torch.arange(grid, dtype=torch.float32)[:, None] * omega[None] * (math.pi / 2)
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # [grid, width / 2]
    rows = axis[:, None, :].expand(grid, grid, -1)
    columns = axis[None, :, :].expand(grid, grid, -1)
    pattern = torch.cat([rows, columns], dim=-1).reshape(grid * grid, -1)
    pattern = F.pad(pattern, (0, width - pattern.shape[1]))
    return pattern / pattern.pow(2).mean().sqrt()


@torch.no_grad()
def add_position_pattern(model: torch.nn.Module, scale: float) -> None:
    """Add ``scale`` × the table's RMS × :func:`sincos_grid` to the SigLIP position table (a training start only:
    the table stays a learnt table, so the architecture and the exactness against Show-o2 are unchanged)."""
    table = model.position_embedding.weight
    grid = model.config.vision.position_grid
    rms = table.float().pow(2).mean().sqrt()
    table += (scale * rms * sincos_grid(grid, table.shape[1]).to(table.device)).to(table.dtype)


def _load_weights(model: torch.nn.Module, path: Path, config: Showo2Config) -> dict:
    """Load weights into ``model`` after checking they have ``config``'s architecture: a training checkpoint
    (``checkpoint.pt``, returned whole) or a :func:`flashu.save_pretrained` directory (an exported model, e.g. the
    shipped testbed: fp16 weights cast to fp32)."""
    if path.is_dir():
        from ..loading import load_model

        loaded = load_model(str(path), device="cpu", dtype="float32")
        state = {"model": loaded.model.state_dict(), "model_config": loaded.config.to_dict()}
    else:
        state = torch.load(path, map_location="cpu", weights_only=False)
    weights = state["model"]
    saved, wanted = _architecture(state["model_config"]), _architecture(config.to_dict())
    saved_grid, wanted_grid = saved["vision"]["position_grid"], wanted["vision"]["position_grid"]
    if saved_grid != wanted_grid:  # a second stage may widen the SigLIP position table: resized as at run time
        saved["vision"] = {**saved["vision"], "position_grid": wanted_grid}
        weights = {k: (resize_position_table(v, saved_grid, wanted_grid) if k.endswith("position_embedding.weight")
                       else v)
                   for k, v in weights.items()}
    if saved != wanted:
        raise SystemExit(f"{path} was trained with another model architecture")
    model.load_state_dict(weights)
    model.tie_weights_if_needed()
    return state


# ------------------------------------------------------------------------------------------------ export


def export(bundle: Showo2Bundle, directory: str | Path, *, dtype: torch.dtype = torch.float16,
           train_info: dict | None = None) -> Path:
    """Write the model with :func:`flashu.save_pretrained` (weights stored as ``dtype``; ``load_model`` casts them
    back to fp32 on the CPU), ``training.json`` and ``reference.json`` (outputs of the *saved* checkpoint)."""
    from ..loading import load_model, save_pretrained

    directory = Path(directory)
    model = bundle.model
    original = model.dtype
    model.to(dtype)
    try:
        save_pretrained(bundle, directory)
    finally:
        model.to(original)
    if train_info is not None:
        write_json(directory / TRAINING_JSON, train_info)
    loaded = load_model(str(directory), device="cpu", dtype="float32")
    write_json(directory / "reference.json", record_reference(loaded))
    return directory


REFERENCE_PROMPT = "a red circle left of a blue triangle"
REFERENCE_QUESTION_SPLIT = ("test", 0)


@torch.no_grad()
def record_reference(bundle: Showo2Bundle) -> dict:
    """Outputs of a fixed generation (prompt, seed, steps, guidance) and a fixed answer, for the load test."""
    from ..pipelines.mmu import answer
    from ..pipelines.t2i import generate

    result = generate(bundle, [REFERENCE_PROMPT], steps=8, guidance=bundle.config.default_guidance, seed=0,
                      progress=False)
    lat = result.latents.double()
    example = world.sample(*REFERENCE_QUESTION_SPLIT)
    qa = example.qas[0]
    reply = answer(bundle, example.image, qa.question, max_new_tokens=16)
    return {
        "generation": {"prompt": REFERENCE_PROMPT, "steps": 8, "guidance": bundle.config.default_guidance,
                       "seed": 0, "latent_sum": float(lat.sum()), "latent_abs_sum": float(lat.abs().sum()),
                       "latent_first": [float(v) for v in result.latents.flatten()[:8]]},
        "understanding": {"split": REFERENCE_QUESTION_SPLIT[0], "index": REFERENCE_QUESTION_SPLIT[1],
                          "question": qa.question, "answer": reply.text, "token_ids": reply.token_ids,
                          "expected": qa.answer},
    }


# ------------------------------------------------------------------------------------------------ CLI


def _flag(text: str) -> bool:
    value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m flashu.testbed.train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="run directory (checkpoint, losses.csv, losses.png)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--init", type=Path, default=None,
                   help="start from another run's weights (its directory or checkpoint.pt), fresh optimizer and "
                        "schedule: a second training stage")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    p.add_argument("--export", type=Path, default=None, help="write the trained model here (save_pretrained)")
    p.add_argument("--export-dtype", choices=("float16", "float32"), default="float16")
    p.add_argument("--no-progress", action="store_true")
    for f in TrainConfig.__dataclass_fields__.values():
        if f.name == "extra":
            continue
        value = getattr(defaults, f.name)
        if isinstance(value, bool):  # --flag true|false (bool("false") would be True)
            p.add_argument("--" + f.name.replace("_", "-"), type=_flag, metavar="{true,false}", default=value)
            continue
        p.add_argument("--" + f.name.replace("_", "-"), type=type(value), default=value)
    args = p.parse_args(argv)
    cfg = TrainConfig(**{name: getattr(args, name) for name in TrainConfig.__dataclass_fields__ if name != "extra"})
    if cfg.autocast not in ("none", "bf16"):
        p.error(f"--autocast must be 'none' or 'bf16', got {cfg.autocast!r}")
    if cfg.answer_weighting not in ("token", "answer"):
        p.error(f"--answer-weighting must be 'token' or 'answer', got {cfg.answer_weighting!r}")
    if not math.isfinite(cfg.position_sincos) or cfg.position_sincos < 0:
        p.error(f"--position-sincos must be a finite number >= 0, got {cfg.position_sincos}")
    if cfg.mmu_questions < 0:
        p.error(f"--mmu-questions must be 0 (one per family) or a positive count, got {cfg.mmu_questions}")
    if cfg.mmu_topic_weights:
        if not cfg.mmu_questions:
            p.error("--mmu-topic-weights weighs the extra questions of --mmu-questions; give both")
        try:
            topic_weights(cfg.mmu_topic_weights)
        except ValueError as exc:
            p.error(f"--mmu-topic-weights {exc}")
    if cfg.mmu_questions and not vqa.asks(preset(cfg.model)):
        p.error(f"--mmu-questions needs a VQA-world model (testbed-v2); {cfg.model!r} asks a fixed set per scene")
    return cfg, args


def training_record(stage: dict, init: Path | None) -> dict:
    """What ``training.json`` says of a run: every stage that led to its weights (those of the ``--init`` run
    first, read from its ``training.json``), the commands joined with ``&&``, total training time, final losses."""
    stages = [stage]
    if init is not None:
        earlier = (init if init.is_dir() else init.parent) / TRAINING_JSON
        if earlier.is_file():
            stages = json.loads(earlier.read_text())["stages"] + stages
    seconds = [s["train_seconds"] for s in stages]
    return {"command": " && ".join(s["command"] for s in stages), "stages": stages,
            "train_seconds": None if None in seconds else round(sum(seconds), 2), "final": stage["final"],
            "torch": stage["torch"], "threads": stage["threads"]}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cfg, args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    stop = StopRequest()
    for sig in (signal.SIGTERM, signal.SIGINT):  # finish the step, checkpoint, exit: --resume continues exactly
        signal.signal(sig, lambda signum, frame: stop.signals.append(signum))
    bundle = train(cfg, args.out, resume=args.resume, progress=not args.no_progress, init=args.init, stop=stop)
    if stop.at_step is not None:
        print(f"stopped by signal {stop.signals[0]} after step {stop.at_step}: checkpoint written to "
              f"{args.out / CHECKPOINT}; continue with the same command and --resume", file=sys.stderr)
        return 128 + stop.signals[0]
    rows = read_losses(args.out / LOSSES_CSV)
    print(f"trained {cfg.steps} steps in {rows[-1]['seconds'] if rows else 0:.0f} s of training "
          f"({time.time() - t0:.0f} s this run); final flow {rows[-1]['flow']:.4f}, ce {rows[-1]['ce']:.4f}"
          if rows else "no steps run", file=sys.stderr)
    stage = {"command": " ".join(["python -m flashu.testbed.train", *(argv if argv is not None else sys.argv[1:])]),
             "train": asdict(cfg), "threads": torch.get_num_threads(), "torch": torch.__version__,
             "train_seconds": rows[-1]["seconds"] if rows else None,
             "final": {k: rows[-1][k] for k in ("flow", "ce")} if rows else None}
    info = training_record(stage, args.init)
    write_json(args.out / TRAINING_JSON, info)
    if args.export is not None:
        dtype = torch.float16 if args.export_dtype == "float16" else torch.float32
        path = export(bundle, args.export, dtype=dtype, train_info=info)
        print(f"exported to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
