"""Multimodal understanding (image + question → answer) with Show-o2's official prompt, KV-cached greedy decoding.

Prompt (official ``inference_mmu.py``, length ``prefix + block_len + 1 + Nq + 4``)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|> [time token, t = 1] [image tokens] <|vision_end|> {question}\\n<|im_start|>assistant\\n

The image is centre-cropped, encoded to the VAE posterior mean, and fed through both visual branches. Prefill uses
the omni mask; decoding is greedy with a KV cache (upstream re-runs the whole sequence per token — the same tokens,
far more work) and stops at ``<|im_end|>`` or ``max_new_tokens``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image
from torch.profiler import record_function

from ..bundle import Showo2Bundle
from ..errors import FlashuError
from ..io.images import load_image, preprocess_image
from ..model import BASELINE, BackboneOutput, ExecutionPlan, KVCache, omni_attention_mask

SYSTEM_PREFIX = "system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
ASSISTANT_SUFFIX = "\n<|im_start|>assistant\n"


@dataclass
class UnderstandingInputs:
    input_ids: torch.Tensor  # [1, L] with img_pad placeholders in the block
    block_offset: int  # index of the time token
    block_len: int
    latents: torch.Tensor  # [1, C, h, w]


class UnderstandingSession(Protocol):
    """Per-request decisions of one answer (never stored on the model)."""

    def prefill_plan(self) -> ExecutionPlan:
        ...

    def decode_plan(self, index: int) -> ExecutionPlan:
        """Plan for decoding answer token ``index`` (0-based; token 0 comes from the prefill)."""

    def observe(self, index: int, output: BackboneOutput) -> None:
        """See the prefill (``index`` −1) or decode step output."""

    def stats(self) -> dict:
        ...


class UnderstandingPolicy(Protocol):
    name: str

    def start(self, bundle: Showo2Bundle, inputs: UnderstandingInputs) -> UnderstandingSession:
        ...


class BaselineUnderstanding:
    name = "none"

    def start(self, bundle, inputs):
        return self

    def prefill_plan(self) -> ExecutionPlan:
        return BASELINE.with_(logits="last")

    def decode_plan(self, index: int) -> ExecutionPlan:
        return BASELINE.with_(logits="last")

    def observe(self, index, output) -> None:
        pass

    def stats(self) -> dict:
        return {}


@dataclass
class Answer:
    text: str
    token_ids: list[int]
    timings: dict[str, float]  # encode, prefill, decode (seconds)
    prompt_tokens: int
    kept_tokens: int  # sequence positions that survived to the last layer in prefill
    stats: dict = field(default_factory=dict)

    @property
    def decode_tokens_per_s(self) -> float:
        decode = self.timings.get("decode", 0.0)
        return (len(self.token_ids) - 1) / decode if decode > 0 and len(self.token_ids) > 1 else float("nan")


def build_understanding_inputs(bundle: Showo2Bundle, image: Image.Image | str, question: str,
                               image_size: int | None = None) -> UnderstandingInputs:
    if not isinstance(question, str) or not question.strip():
        raise FlashuError("empty question: ask something about the image")
    cfg, sp = bundle.config, bundle.special
    size = cfg.image_size if image_size is None else int(image_size)
    grid = cfg.grid_for(size)
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        image = load_image(image)
    pixels = preprocess_image(image, size)[None].to(bundle.device)
    with record_function("flashu.vae"):
        latents = bundle.codec.encode(pixels)
    block_len = grid * grid + 1
    prefix = [sp.bos, *bundle.encode_text(SYSTEM_PREFIX), sp.boi]
    ids = prefix + [sp.img_pad] * block_len + [sp.eoi] + bundle.encode_text(question) \
        + bundle.encode_text(ASSISTANT_SUFFIX)
    return UnderstandingInputs(input_ids=torch.tensor([ids], device=bundle.device), block_offset=len(prefix),
                               block_len=block_len, latents=latents)


def prefill_embeddings(bundle: Showo2Bundle, inputs: UnderstandingInputs) -> torch.Tensor:
    model = bundle.model
    c = model.time_conditioning(torch.ones(1, device=bundle.device))
    embeds = model.showo.model.embed_tokens(inputs.input_ids)
    offsets = torch.tensor([inputs.block_offset], device=bundle.device)
    return model.place_image_block(embeds, offsets, model.time_token(c), model.image_tokens(inputs.latents))


def prefill_backbone(bundle: Showo2Bundle, inputs: UnderstandingInputs, embeds: torch.Tensor, plan: ExecutionPlan,
                     cache: KVCache | None = None) -> BackboneOutput:
    """The backbone over the whole prompt with the omni mask (block bidirectional), positions 0 … L − 1."""
    length = embeds.shape[1]
    offsets = torch.tensor([inputs.block_offset], device=bundle.device)
    mask = omni_attention_mask(length, offsets, inputs.block_len, bundle.dtype)
    positions = torch.arange(length, device=bundle.device)[None]
    with record_function("flashu.llm"):
        return bundle.model.run_backbone(embeds, positions, mask, plan, cache)


@torch.no_grad()
def answer(bundle: Showo2Bundle, image: Image.Image | str, question: str, *, max_new_tokens: int = 300,
           policy: UnderstandingPolicy | None = None, image_size: int | None = None,
           ignore_eos: bool = False) -> Answer:
    """Answer ``question`` about ``image`` greedily (KV-cached).

    ``ignore_eos``: decode exactly ``max_new_tokens`` tokens, feeding ``<|im_end|>`` back like any token (for
    fixed-length speed measurements); the text still ends at the first ``<|im_end|>``. ``timings["prefill"]``
    covers the visual branches + fusion (also ``timings["prefill_vision"]``) and the backbone prefill (also
    ``timings["prefill_backbone"]``).
    """
    if int(max_new_tokens) <= 0:
        raise FlashuError(f"max_new_tokens must be positive, got {max_new_tokens}")
    if policy is None:
        acc = bundle.acceleration
        policy = (acc.understanding_policy() if acc is not None else None) or BaselineUnderstanding()
    timings = {}
    t0 = time.perf_counter()
    inputs = build_understanding_inputs(bundle, image, question, image_size)
    session = policy.start(bundle, inputs)
    timings["encode"] = time.perf_counter() - t0

    model, eos = bundle.model, bundle.special.eos
    t0 = time.perf_counter()
    embeds = prefill_embeddings(bundle, inputs)
    t1 = time.perf_counter()
    length = embeds.shape[1]
    cache = KVCache(bundle.config.llm.num_layers)
    out = prefill_backbone(bundle, inputs, embeds, session.prefill_plan(), cache)
    session.observe(-1, out)
    kept = out.hidden.shape[1]
    token = int(out.logits[0, -1].argmax())
    t2 = time.perf_counter()
    timings["prefill"] = t2 - t0
    timings["prefill_vision"] = t1 - t0
    timings["prefill_backbone"] = t2 - t1

    t0 = time.perf_counter()
    with record_function("flashu.decode_loop"):
        tokens = _greedy_decode(bundle, session, cache, token, length, max_new_tokens, ignore_eos)
    timings["decode"] = time.perf_counter() - t0
    answer_ids = tokens[:tokens.index(eos)] if eos in tokens else tokens
    return Answer(text=bundle.decode_text(answer_ids).strip(), token_ids=tokens, timings=timings,
                  prompt_tokens=length, kept_tokens=kept, stats=session.stats())


def _greedy_decode(bundle: Showo2Bundle, session: UnderstandingSession, cache: KVCache, token: int, length: int,
                   max_new_tokens: int, ignore_eos: bool) -> list[int]:
    """KV-cached greedy decoding from the prefill's first ``token``; positions continue from ``length``."""
    model, eos = bundle.model, bundle.special.eos
    tokens = [token]
    while (ignore_eos or token != eos) and len(tokens) < max_new_tokens:
        index = len(tokens)
        embeds = model.showo.model.embed_tokens(torch.tensor([[token]], device=bundle.device))
        pos = torch.tensor([[length + index - 1]], device=bundle.device)
        out = model.run_backbone(embeds, pos, None, session.decode_plan(index), cache)
        session.observe(index, out)
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
    return tokens


@torch.no_grad()
def answer_without_cache(bundle: Showo2Bundle, image, question: str, *, max_new_tokens: int = 300,
                         image_size: int | None = None) -> list[int]:
    """Upstream's decoding loop: re-run the whole growing sequence per token. Reference for tests only."""
    inputs = build_understanding_inputs(bundle, image, question, image_size)
    model, eos = bundle.model, bundle.special.eos
    embeds = prefill_embeddings(bundle, inputs)
    offsets = torch.tensor([inputs.block_offset], device=bundle.device)
    tokens: list[int] = []
    while len(tokens) < max_new_tokens:
        length = embeds.shape[1]
        mask = omni_attention_mask(length, offsets, inputs.block_len, bundle.dtype)
        positions = torch.arange(length, device=bundle.device)[None]
        out = model.run_backbone(embeds, positions, mask, BASELINE.with_(logits="last"))
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
        if token == eos:
            break
        new = model.showo.model.embed_tokens(torch.tensor([[token]], device=bundle.device))
        embeds = torch.cat([embeds, new], dim=1)
    return tokens
