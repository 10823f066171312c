"""Multimodal understanding (image + question → answer) with Show-o2's official prompt, KV-cached greedy decoding.

Prompt (official ``inference_mmu.py``, length ``prefix + block_len + 1 + Nq + 4``)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n
    <|vision_start|> [time token, t = 1] [image tokens] <|vision_end|> {question}\\n<|im_start|>assistant\\n

The image is centre-cropped, encoded to the VAE posterior mean, and fed through both visual branches. Prefill uses
the omni mask; decoding is greedy with a KV cache (upstream re-runs the whole sequence per token — the same tokens,
far more work) and stops at ``<|im_end|>`` or ``max_new_tokens``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Protocol

import torch
from PIL import Image
from torch.profiler import record_function

from ..bundle import Showo2Bundle
from ..errors import FlashuError, memory_guard
from ..layout import understanding_length, understanding_row
from ..io.images import load_image, preprocess_image
from ..io.paths import check_text
from ..limits import check_answer_fits, check_understanding_fits
from ..model import BASELINE, BackboneOutput, ExecutionPlan, KVCache, UnderstandingInputs
from .timing import DeviceClock

# The official prompt pieces (inference_mmu.py), tokenized separately as upstream does.
SYSTEM_PROMPT = "system\nYou are a helpful assistant.<|im_end|>"
USER_ROLE = "\n<|im_start|>user\n"
ASSISTANT_ROLE = "\n<|im_start|>assistant\n"
MAX_QUESTION_TOKENS = 2048  # longer questions are truncated (with a warning), as text-to-image prompts are


class Speculation(Protocol):
    """Self-speculative decoding's decisions within one answer (``flashu.accel.speculative.SelfSpeculation``)."""

    def depth(self, remaining: int) -> int:
        """Draft tokens for the next round when ``remaining`` tokens may still be emitted."""

    def draft_plan(self) -> ExecutionPlan:
        ...

    def verify_plan(self) -> ExecutionPlan:
        ...

    def update(self, drafted: int, accepted: int) -> None:
        """See how many of the round's drafted tokens the target accepted."""


class UnderstandingSession(Protocol):
    """Per-request decisions of one answer (never stored on the model). ``speculation``: ``None`` for plain greedy
    decoding, else the draft/verify decisions of self-speculative decoding."""

    speculation: Speculation | None

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
    """The trivial decider: the unaccelerated plan for the prefill and every decoding step."""

    name = "none"
    speculation = None

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

    def __repr__(self) -> str:
        timing = ", ".join(f"{k} {v * 1000:.1f}ms" for k, v in self.timings.items())
        return (f"Answer({self.text!r}, {len(self.token_ids)} tokens, prompt {self.prompt_tokens} tokens "
                f"({self.kept_tokens} kept), {timing})")

    @property
    def decode_tokens_per_s(self) -> float:
        decode = self.timings.get("decode", 0.0)
        return (len(self.token_ids) - 1) / decode if decode > 0 and len(self.token_ids) > 1 else float("nan")


def prompt_prefix(bundle: Showo2Bundle) -> list[int]:
    """``[bos] system-prompt user-role [boi]``: every id before the time token."""
    sp = bundle.special
    return [sp.bos, *bundle.encode_text(SYSTEM_PROMPT), *bundle.encode_text(USER_ROLE), sp.boi]


def question_ids(bundle: Showo2Bundle, question: str) -> list[int]:
    """The question as text (control tokens typed in it are not control tokens), truncated with a warning."""
    check_text(question, "question")  # a string, UTF-8, not empty
    ids = bundle.encode_user_text(question)
    if len(ids) > MAX_QUESTION_TOKENS:
        warnings.warn(f"question has {len(ids)} tokens; truncated to the first {MAX_QUESTION_TOKENS}", stacklevel=3)
        ids = ids[:MAX_QUESTION_TOKENS]
    return ids


def build_understanding_inputs(bundle: Showo2Bundle, image: Image.Image | str | None, question: str,
                               image_size: int | None = None, *, latents: torch.Tensor | None = None,
                               layout: str | None = None) -> UnderstandingInputs:
    """The official understanding prompt for one image (``latents``: normalized latents [1, C, h, w] given
    directly instead of an image, skipping the VAE). ``layout`` defaults to the model's
    (``config.understanding_layout``)."""
    cfg, sp = bundle.config, bundle.special
    q_ids = question_ids(bundle, question)
    if latents is None:
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)):
            raise FlashuError(f"image_size must be an integer, got {image_size!r}")
        size = cfg.mmu_image_size if image_size is None else image_size  # understanding_image_size or image_size
        cfg.grid_for(size)
        check_understanding_fits(cfg, understanding_length(cfg, len(q_ids), size), bundle.dtype, bundle.device)
        if image is None:
            raise FlashuError("give an image (or its latents) to ask about")
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            image = load_image(image)
        if not isinstance(image, Image.Image):
            raise FlashuError(f"image must be a PIL image or a path, got {type(image).__name__}")
        pixels = preprocess_image(image, size)[None].to(bundle.device)
        with record_function("flashu.vae"):
            latents = bundle.require_codec().encode(pixels)
    grid = latents.shape[-1] // cfg.patch_size
    block_len = grid * grid + 1
    ids, time_offset = understanding_row(prompt_prefix(bundle), block_len, q_ids, bundle.encode_text(ASSISTANT_ROLE),
                                         sp)
    check_understanding_fits(cfg, len(ids), bundle.dtype, bundle.device)
    return UnderstandingInputs(input_ids=torch.tensor([ids], device=bundle.device), time_offset=time_offset,
                               block_len=block_len, latents=latents.to(bundle.device),
                               layout=layout or cfg.understanding_layout)


@torch.no_grad()
@memory_guard("answering")
def answer(bundle: Showo2Bundle, image: Image.Image | str | None, question: str, *, max_new_tokens: int = 300,
           policy: UnderstandingPolicy | None = None, image_size: int | None = None,
           ignore_eos: bool = False, latents: torch.Tensor | None = None, layout: str | None = None,
           observer=None, static_cache: bool | None = None) -> Answer:
    """Answer ``question`` about ``image`` greedily (KV-cached).

    ``ignore_eos``: decode exactly ``max_new_tokens`` tokens, feeding ``<|im_end|>`` back like any token (for
    fixed-length speed measurements); the text still ends at the first ``<|im_end|>``. ``timings["prefill"]``
    covers the visual branches + fusion (also ``timings["prefill_vision"]``) and the backbone prefill (also
    ``timings["prefill_backbone"]``). ``observer``: a :class:`~flashu.pipelines.t2i.StepObserver` (step −1 is the
    prefill). ``static_cache``: attention spans the whole preallocated cache (fixed shapes; default: when the model
    was compiled with :func:`flashu.compile`).
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise FlashuError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if policy is None:
        acc = bundle.acceleration
        policy = (acc.understanding_policy() if acc is not None else None) or BaselineUnderstanding()
    clock = DeviceClock(bundle.device)
    timings = {}
    t0 = clock()
    inputs = build_understanding_inputs(bundle, image, question, image_size, latents=latents, layout=layout)
    session = policy.start(bundle, inputs)
    timings["encode"] = clock() - t0

    model = bundle.model
    t0 = clock()
    length = inputs.input_ids.shape[1]
    embeds = model.understanding_embeddings(inputs)
    t1 = clock()
    static = bundle.compiled if static_cache is None else static_cache
    check_answer_fits(bundle.config, length, max_new_tokens, bundle.dtype, bundle.device)
    cache = KVCache.for_model(model, 1, length + max_new_tokens, static=static)
    plan = _observed(observer, -1, session.prefill_plan())
    out = model.forward_understanding(inputs, plan, cache, embeds=embeds)
    session.observe(-1, out)
    if observer is not None:
        observer.observe(-1, plan, out)
    kept = out.hidden.shape[1]
    first = out.logits[:, -1].argmax(-1, keepdim=True)
    t2 = clock()
    timings["prefill"] = t2 - t0
    timings["prefill_vision"] = t1 - t0
    timings["prefill_backbone"] = t2 - t1

    t0 = clock()
    decode = _speculative_decode if session.speculation is not None else _greedy_decode
    with record_function("flashu.decode_loop"):
        tokens = decode(bundle, session, cache, first, length, max_new_tokens, ignore_eos, observer)
    timings["decode"] = clock() - t0
    eos = bundle.special.eos
    answer_ids = tokens[:tokens.index(eos)] if eos in tokens else tokens
    return Answer(text=bundle.decode_text(answer_ids).strip(), token_ids=tokens, timings=timings,
                  prompt_tokens=length, kept_tokens=kept, stats=session.stats())


def _observed(observer, step: int, plan: ExecutionPlan) -> ExecutionPlan:
    return plan if observer is None else observer.plan(step, plan)


def eos_check_due(device: torch.device, index: int) -> bool:
    """Whether to read the decoded tokens back to the host before step ``index`` (stopping at eos needs it): on
    every step on the CPU (free there), and on an accelerator for the first 4 tokens (short answers stop early)
    and then every 8 (each read is a synchronisation)."""
    return device.type == "cpu" or index <= 4 or index % 8 == 0


def _greedy_decode(bundle: Showo2Bundle, session: UnderstandingSession, cache: KVCache, first: torch.Tensor,
                   length: int, max_new_tokens: int, ignore_eos: bool, observer=None) -> list[int]:
    """KV-cached greedy decoding from the prefill's first token [1, 1] (a device tensor: no host round trip per
    token); positions continue from ``length``. Tokens after an ``<|im_end|>`` found late are trimmed."""
    model, eos, device = bundle.model, bundle.special.eos, bundle.device
    pending = [first]
    tokens: list[int] = []
    token = first
    for index in range(1, max_new_tokens + 1):
        if not ignore_eos and (index == max_new_tokens or eos_check_due(device, index)):
            tokens += torch.cat(pending, dim=1)[0].tolist()
            pending = []
            if eos in tokens:
                return tokens[:tokens.index(eos) + 1]
        if index == max_new_tokens:
            break
        pos = torch.tensor([[length + index - 1]], device=device)
        plan = _observed(observer, index, session.decode_plan(index))
        out = model.decode_step(token, pos, plan, cache)
        session.observe(index, out)
        if observer is not None:
            observer.observe(index, plan, out)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        pending.append(token)
    if pending:
        tokens += torch.cat(pending, dim=1)[0].tolist()
    return tokens


def _speculative_decode(bundle: Showo2Bundle, session: UnderstandingSession, cache: KVCache, first: torch.Tensor,
                        length: int, max_new_tokens: int, ignore_eos: bool, observer=None) -> list[int]:
    """Self-speculative decoding (``session.speculation`` decides the plans and the draft length): each round the
    draft plan proposes k tokens, one forward of the target plan scores them all, the agreeing prefix and the
    target's next token are kept and the cache is rolled back past the rest. One host read per round."""
    spec = session.speculation
    model, eos, device = bundle.model, bundle.special.eos, bundle.device
    tokens = first[0].tolist()
    last, position = first, length  # the last emitted token is not in the cache yet; it sits at `position`
    step = 1
    while len(tokens) < max_new_tokens and (ignore_eos or eos not in tokens):
        k = spec.depth(max_new_tokens - len(tokens))
        before = cache.snapshot()
        drafts, token = [], last
        for j in range(k):
            out = model.decode_step(token, torch.tensor([[position + j]], device=device), spec.draft_plan(), cache)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            drafts.append(token)
        cache.rollback(before)
        proposed = torch.cat([last, *drafts], dim=1)  # [1, k + 1]
        positions = position + torch.arange(k + 1, device=device)[None]
        plan = _observed(observer, step, spec.verify_plan())
        out = model.decode_step(proposed, positions, plan, cache)
        if observer is not None:
            observer.observe(step, plan, out)
        target = out.logits[0].argmax(-1)  # the target's token after each proposed one [k + 1]
        said, wanted = proposed[0, 1:].tolist(), target.tolist()
        accepted = 0
        while accepted < k and said[accepted] == wanted[accepted]:
            accepted += 1
        written = cache.lengths - before
        cache.rollback(before + written.clamp(max=accepted + 1))  # keep the accepted tokens' entries only
        spec.update(k, accepted)
        tokens += wanted[: accepted + 1]
        last, position, step = target[accepted].view(1, 1), position + accepted + 1, step + 1
    tokens = tokens[:max_new_tokens]
    if not ignore_eos and eos in tokens:
        tokens = tokens[: tokens.index(eos) + 1]
    return tokens


@torch.no_grad()
def answer_without_cache(bundle: Showo2Bundle, image, question: str, *, max_new_tokens: int = 300,
                         image_size: int | None = None, ignore_eos: bool = False,
                         latents: torch.Tensor | None = None, layout: str | None = None) -> list[int]:
    """Upstream's ``mmu_generate`` loop: re-run the whole growing sequence for every token (no KV cache). The
    reference the KV-cached loop is tested against, and the paper's baseline in ``flashu bench``."""
    inputs = build_understanding_inputs(bundle, image, question, image_size, latents=latents, layout=layout)
    eos, device = bundle.special.eos, bundle.device
    tokens: list[int] = []
    while len(tokens) < max_new_tokens:
        ids = torch.cat([inputs.input_ids, torch.tensor([tokens], dtype=torch.long, device=device)], dim=1)
        step = UnderstandingInputs(ids, inputs.time_offset, inputs.block_len, inputs.latents, inputs.layout)
        out = bundle.model.forward_understanding(step, BASELINE.with_(logits="last"))
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
        if token == eos and not ignore_eos:
            break
    return tokens
