"""A loaded Show-o2: the network, its tokenizer and its VAE, as the pipelines use them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import Showo2Config
from .model import Showo2
from .io.tokenizer import SpecialTokens
from .io.vae import LatentCodec


@dataclass
class Showo2Bundle:
    model: Showo2
    tokenizer: object  # a transformers tokenizer
    codec: LatentCodec
    special: SpecialTokens
    source: str  # preset name, directory or hub id it came from
    acceleration: object | None = None  # set by flashu.accelerate (model-level, never per-request state)

    @property
    def config(self) -> Showo2Config:
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
