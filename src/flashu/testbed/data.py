"""Testbed training data: each step's batches, drawn deterministically from the seed and the step (so resuming is
exact), and the packing of understanding rows (several questions about one image share its prefix)."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
import torch

from ..bundle import Showo2Bundle
from ..layout import block_length
from ..model.showo2 import GenerationInputs, UnderstandingInputs, additive_mask
from ..pipelines.mmu import ASSISTANT_ROLE, prompt_prefix, question_ids
from ..pipelines.t2i import build_generation_inputs
from ..io.images import preprocess_image
from . import vqa, world

TRAIN_INDEX_SPACE = 10**7  # scenes are drawn uniformly from the first ten million of the endless train split


def image_tensor(images) -> torch.Tensor:
    """PIL images → [B, 3, H, W] fp32 in [-1, 1] (``preprocess_image`` at the native size is this exactly)."""
    arrays = np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)


def step_rng(seed: int, step: int, stream: str) -> random.Random:
    return random.Random(f"flashu-testbed-train:{seed}:{stream}:{step}")


def step_generator(seed: int, step: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(step_rng(seed, step, stream).getrandbits(63))


@dataclass
class GenerationBatch:
    inputs: GenerationInputs
    x1: torch.Tensor  # [B, 3, H, W] images in [-1, 1] (latents of the identity codec)
    x0: torch.Tensor
    t: torch.Tensor  # [B]


def draw_generation_batch(bundle: Showo2Bundle, seed: int, step: int, count: int, uncond_prob: float,
                          time_shift: float) -> GenerationBatch:
    """Step ``step``'s text-to-image batch of ``count`` shapes-world captions and images, its noise and times
    (the same for a given seed and step on any machine: resuming is exact)."""
    rng = step_rng(seed, step, "gen")
    size = bundle.config.image_size
    examples = [world.sample("train", rng.randrange(TRAIN_INDEX_SPACE), size) for _ in range(count)]
    captions = ["" if rng.random() < uncond_prob else ex.caption for ex in examples]
    # Empty caption = exactly the official unconditional row ([bos][boi] block [eoi][eos] [pad]×max_text_len).
    full = build_generation_inputs(bundle, captions, size, with_uncond=False)
    length = full.used_length  # positions after the last image block cannot influence any block
    inputs = GenerationInputs(input_ids=full.input_ids[:, :length], block_offsets=full.block_offsets,
                              block_len=full.block_len, mask=full.mask[..., :length, :length])
    x1 = bundle.codec.encode(image_tensor([ex.image for ex in examples]))
    gen = step_generator(seed, step, "noise")
    x0 = torch.randn(x1.shape, generator=gen)
    t = torch.sigmoid(torch.randn(x1.shape[0], generator=gen))
    if time_shift != 1.0:
        t = t / (t + time_shift * (1 - t))
    return GenerationBatch(inputs, x1, x0, t)


@dataclass
class SegmentRows:
    """The packed rows' questions again, one row per question: to run after each scene's prefix has run once
    (its keys/values then serve every question of the scene), which spares the packed rows' attention between
    segments that the mask discards anyway."""

    ids: torch.Tensor  # [N, Ls] question + answer tokens, padded
    scene: torch.Tensor  # [N] the prefix row (scene) each segment reads
    positions: torch.Tensor  # [N, Ls] continuing from the prefix, as in the segment's own sequence
    mask: torch.Tensor  # [N, 1, Ls, P + Ls] additive over [prefix, segment]: the whole prefix, the segment causally
    targets: torch.Tensor  # [N, Ls]
    answer_weights: torch.Tensor  # [N, Ls]


@dataclass
class UnderstandingBatch:
    """One step's questions, either as packed rows (``inputs`` … ``answer_weights``) or, with the prefix run once,
    as the scenes' prefixes and the question rows that follow them (``prefix``, ``segments``)."""

    inputs: UnderstandingInputs | None = None  # [B, L] packed rows (the same prefix in every row)
    positions: torch.Tensor | None = None  # [B, L]
    mask: torch.Tensor | None = None  # [B, 1, L, L] additive
    targets: torch.Tensor | None = None  # [B, L] next-token labels, -100 where no loss
    # [B, L] per-position loss weights: 1 / (tokens of its answer), so that every answer counts once whatever its
    # length (``--answer-weighting answer``); zero where there is no loss
    answer_weights: torch.Tensor | None = None
    prefix: UnderstandingInputs | None = None  # [B, P] each scene's prefix alone (the image block included)
    segments: list[SegmentRows] | None = None  # its questions, one row each (batched by length), after it


def understanding_prefix(bundle: Showo2Bundle, image_size: int | None = None) -> tuple[list[int], int, int]:
    """Ids up to and including ``<|vision_end|>`` of the official understanding prompt for images of ``image_size``
    px (default: the model's understanding size), the time-token offset and the block length (time token + image
    tokens)."""
    sp = bundle.special
    block_len = block_length(bundle.config, image_size or bundle.config.mmu_image_size)
    head = prompt_prefix(bundle)
    return head + [sp.img_pad] * block_len + [sp.eoi], len(head), block_len


def qa_segment(bundle: Showo2Bundle, question: str, answer: str) -> tuple[list[int], int]:
    """Question + assistant role + answer + ``<|im_end|>``; also how many leading tokens are prompt."""
    prompt = question_ids(bundle, question) + bundle.encode_text(ASSISTANT_ROLE)
    return prompt + bundle.encode_user_text(answer) + [bundle.special.eos], len(prompt)


def pack_understanding(bundle: Showo2Bundle, scenes: list[tuple[object, list[tuple[str, str]]]],
                       prefix_once: bool = False) -> UnderstandingBatch:
    """Rows of [prefix][segment 1][segment 2]…: each segment sees the prefix (omni mask: the image block
    bidirectional) and, causally, itself; its positions continue from the prefix as in its own sequence.
    ``prefix_once``: the same questions as each scene's prefix plus one row per question (:func:`segment_rows`)."""
    prefix, block_offset, block_len = understanding_prefix(bundle)
    P = len(prefix)
    size = bundle.config.mmu_image_size  # as answer() preprocesses (the identity at the native size)
    latents = bundle.codec.encode(torch.stack([preprocess_image(image, size) for image, _ in scenes]))
    if prefix_once:
        prefix_inputs = UnderstandingInputs(torch.tensor([prefix] * len(scenes)), block_offset, block_len, latents,
                                            bundle.config.understanding_layout)
        return UnderstandingBatch(prefix=prefix_inputs, segments=segment_rows(bundle, scenes, P))
    rows, rows_pos, rows_seg, rows_tgt = [], [], [], []
    for _, qas in scenes:
        ids, pos, seg, tgt = list(prefix), list(range(P)), [0] * P, [-100] * P
        for n, (question, answer) in enumerate(qas, 1):
            tokens, prompt_len = qa_segment(bundle, question, answer)
            start = len(ids)
            ids += tokens
            pos += range(P, P + len(tokens))
            seg += [n] * len(tokens)
            tgt += [-100] * len(tokens)
            # token j (j ≥ prompt_len) is predicted at position j − 1 of the segment
            for j in range(prompt_len, len(tokens)):
                tgt[start + j - 1] = tokens[j]
        rows.append(ids)
        rows_pos.append(pos)
        rows_seg.append(seg)
        rows_tgt.append(tgt)
    L = max(len(r) for r in rows)
    pad = bundle.special.pad
    for ids, pos, seg, tgt in zip(rows, rows_pos, rows_seg, rows_tgt):
        extra = L - len(ids)
        ids += [pad] * extra
        pos += [0] * extra
        seg += [-1] * extra  # padding: attends to itself only
        tgt += [-100] * extra
    ids = torch.tensor(rows)
    seg = torch.tensor(rows_seg)
    inputs = UnderstandingInputs(ids, block_offset, block_len, latents, bundle.config.understanding_layout)
    start, length = inputs.attention_block
    idx = torch.arange(L)
    causal = idx[:, None] >= idx[None, :]
    in_block = (idx >= start) & (idx < start + length)
    key_prefix = (seg == 0)[:, None, :]
    same = seg[:, :, None] == seg[:, None, :]
    allowed = (causal[None] & (key_prefix | same)) | (in_block[:, None] & in_block[None, :])[None]
    allowed = allowed & (seg[:, :, None] >= 0) | (same & (seg[:, :, None] < 0))
    allowed = allowed | torch.eye(L, dtype=torch.bool)[None]
    targets = torch.tensor(rows_tgt)
    segments = torch.tensor(rows_seg)
    answered = (targets != -100) & (segments > 0)
    weights = torch.zeros(targets.shape)
    for row in range(targets.shape[0]):  # 1 / answer length, per segment
        for n in segments[row][answered[row]].unique().tolist():
            where = answered[row] & (segments[row] == n)
            weights[row][where] = 1.0 / int(where.sum())
    return UnderstandingBatch(inputs, torch.tensor(rows_pos), additive_mask(allowed[:, None], torch.float32),
                              targets, weights)


def segment_rows(bundle: Showo2Bundle, scenes: list[tuple[object, list[tuple[str, str]]]], P: int,
                 groups: int = 6) -> list[SegmentRows]:
    """One row per question of ``scenes`` (prefix length ``P``): the tokens, targets and weights its packed
    segment has, its scene's index, positions from ``P`` and the [prefix | causal segment] mask. Rows are sorted
    by length into ``groups`` batches, each padded to its own longest (a lettered choice is three times a short
    question: one batch would be half padding)."""
    rows = []
    for index, (_, qas) in enumerate(scenes):
        for question, answer in qas:
            tokens, prompt_len = qa_segment(bundle, question, answer)
            tgt = [-100] * len(tokens)
            for j in range(prompt_len, len(tokens)):
                tgt[j - 1] = tokens[j]
            weight = 1.0 / (len(tokens) - prompt_len)
            rows.append((tokens, index, tgt, [weight if t != -100 else 0.0 for t in tgt]))
    rows.sort(key=lambda r: len(r[0]))
    size = -(-len(rows) // max(1, groups))
    return [_segment_batch(bundle, rows[i:i + size], P) for i in range(0, len(rows), size)]


def _segment_batch(bundle: Showo2Bundle, rows: list[tuple], P: int) -> SegmentRows:
    Ls = max(len(tokens) for tokens, *_ in rows)
    pad = bundle.special.pad
    lengths = torch.tensor([len(tokens) for tokens, *_ in rows])
    ids = torch.tensor([tokens + [pad] * (Ls - len(tokens)) for tokens, *_ in rows])
    tgt = torch.tensor([t + [-100] * (Ls - len(t)) for _, _, t, _ in rows])
    wts = torch.tensor([w + [0.0] * (Ls - len(w)) for *_, w in rows])
    steps = torch.arange(Ls)
    positions = (P + steps)[None] * (steps[None] < lengths[:, None])  # padding at position 0, as in packed rows
    causal = steps[:, None] >= steps[None, :]
    allowed = torch.cat([torch.ones(Ls, P, dtype=torch.bool), causal], dim=1)  # padding is after every real token
    mask = additive_mask(allowed[None, None].expand(len(rows), 1, Ls, P + Ls), torch.float32)
    return SegmentRows(ids, torch.tensor([scene for _, scene, _, _ in rows]), positions, mask, tgt, wts)


def draw_understanding_batch(bundle: Showo2Bundle, seed: int, step: int, count: int,
                             families: str = "", per_scene: int = 0,
                             topic_weights: dict[str, float] | None = None,
                             prefix_once: bool = False) -> UnderstandingBatch:
    """Step ``step``'s understanding batch: ``count`` scenes, each row packing its questions (only ``families``, a
    comma list, when given: a curriculum; ``per_scene`` > 0, VQA world only: that many distinct questions per
    scene, the families in turn, the extra ones kept per topic with probability ``topic_weights``; ``prefix_once``:
    laid out for :func:`flashu.testbed.train.segment_logits`)."""
    rng = step_rng(seed, step, "mmu")
    keep = tuple(f for f in filter(None, families.split(",")))
    scenes = []
    for _ in range(count):
        index = rng.randrange(TRAIN_INDEX_SPACE)
        ex = vqa.sample("train", index) if vqa.asks(bundle.config) else world.sample(
            "train", index, bundle.config.mmu_image_size)
        qas = [qa for qa in ex.qas if not keep or qa.kind in keep]
        if per_scene:
            qas = vqa.more_questions(ex.scene, rng, qas, per_scene, keep or vqa.FAMILIES, topic_weights)[:per_scene]
        scenes.append((ex.image, [(qa.question, qa.answer) for qa in qas]))
    return pack_understanding(bundle, scenes, prefix_once)


def to_device(batch, device: torch.device):
    """A batch (dataclass of tensors and input dataclasses) with every tensor on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: to_device(getattr(batch, f.name), device)
                                             for f in dataclasses.fields(batch) if f.init})
    return batch
