"""A loaded Show-o2: the network, its tokenizer and its VAE, as the pipelines use them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .config import Showo2Config
from .model import Showo2
from .io.tokenizer import SpecialTokens
from .io.vae import LatentCodec


class TextTokenizer(Protocol):
    """What the pipelines use of a tokenizer (a transformers tokenizer, or flashu's local ones)."""

    def __call__(self, text: str, **kwargs: Any) -> Any: ...  # a mapping with "input_ids"

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...


class AppliedAcceleration(Protocol):
    """What ``flashu.accelerate`` leaves on a bundle (``flashu.accel.api.Acceleration``): the policies the pipelines
    run by default (``None``: that task runs unaccelerated)."""

    def generation_policy(self) -> Any: ...

    def understanding_policy(self) -> Any: ...


@dataclass
class Showo2Bundle:
    model: Showo2
    tokenizer: TextTokenizer
    codec: LatentCodec | None  # None: loaded without a VAE (latents in, latents out)
    special: SpecialTokens
    source: str  # preset name, directory or hub id it came from
    acceleration: AppliedAcceleration | None = None  # set by flashu.accelerate (model-level, never per-request)
    compiled: bool = False  # set by flashu.compile: understanding then decodes with a static KV cache

    @property
    def config(self) -> Showo2Config:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def require_codec(self) -> LatentCodec:
        if self.codec is None:
            from .errors import FlashuError

            raise FlashuError("this model was loaded without a VAE (vae='none'): generate with decode=False, answer "
                              "with latents=, or load it with a VAE")
        return self.codec

    def encode_text(self, text: str) -> list[int]:
        """Template text: control tokens written in it (``<|im_end|>``…) are the control tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_user_text(self, text: str) -> list[int]:
        """User text (prompts, questions): control tokens typed in it are plain text, never control tokens."""
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
