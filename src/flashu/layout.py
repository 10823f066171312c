"""Show-o2's two sequence layouts, in one place: which positions hold text, the time token, the image block and
the closing tokens. The pipelines build their inputs with these functions; FLOP counting, memory checks and the
testbed's training packer count positions with them.

Text-to-image (``inference_t2i.py``), one row per prompt (and one per empty prompt for CFG)::

    [bos] text… [boi] [time] [image]×grid² [eoi] [eos] [pad]×(max_text_len − len(text))

Understanding (``inference_mmu.py``)::

    [bos] system… user-role… [boi] [time] [image]×grid² [eoi] question… assistant-role…

The *image block* is the time token plus the image tokens (``grid² + 1`` positions).
"""

from __future__ import annotations

from .config import Showo2Config

GENERATION_FRAME = 4  # [bos] [boi] before the block, [eoi] [eos] after it
# [bos] + the Qwen2.5 system prompt + "user\n" + [boi]: 15 tokens with the official tokenizer (counted from a
# tokenizer where one is at hand: ``prompt_prefix(bundle)``); used where only a config is known (FLOPs, limits)
UNDERSTANDING_PREFIX = 15
UNDERSTANDING_SUFFIX = 4  # "\n<|im_start|>assistant\n" after the question (with the official tokenizer)


def block_length(cfg: Showo2Config, image_size: int) -> int:
    """Positions of one image block at ``image_size`` px: the time token and ``grid²`` image tokens."""
    return cfg.grid_for(image_size) ** 2 + 1


# ------------------------------------------------------------------------------------------------ generation
def generation_row(text: list[int], block_len: int, max_text: int, special) -> tuple[list[int], int]:
    """One text-to-image row (``text`` already truncated to ``max_text``) and the offset of its image block."""
    sp = special
    ids = [sp.bos, *text, sp.boi] + [sp.img_pad] * block_len + [sp.eoi, sp.eos] + [sp.pad] * (max_text - len(text))
    return ids, len(text) + 2


def generation_length(cfg: Showo2Config, image_size: int | None = None) -> int:
    """Positions of a text-to-image row (every row has this length: the text is padded to ``max_text_len``)."""
    return cfg.max_text_len + block_length(cfg, image_size or cfg.image_size) + GENERATION_FRAME


# ------------------------------------------------------------------------------------------------ understanding
def understanding_row(prefix: list[int], block_len: int, question: list[int], suffix: list[int],
                      special) -> tuple[list[int], int]:
    """The understanding prompt and the offset of its image block (the time token)."""
    return prefix + [special.img_pad] * block_len + [special.eoi] + question + suffix, len(prefix)


def understanding_length(cfg: Showo2Config, question_tokens: int = 6, image_size: int | None = None,
                         prefix_tokens: int = UNDERSTANDING_PREFIX, suffix_tokens: int = UNDERSTANDING_SUFFIX) -> int:
    """Positions of an understanding prompt with a ``question_tokens``-token question."""
    block = block_length(cfg, image_size or cfg.mmu_image_size)
    return prefix_tokens + block + 1 + question_tokens + suffix_tokens  # the block, then [eoi]
