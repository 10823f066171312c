"""Importing optional libraries without their import-time chatter.

With torchao installed (``flashu[quant]``), importing diffusers or torchao logs warnings about torchao's optional
CUDA extensions and diffusers' torchao integration — on every run, about features flashu does not use. They are
silenced for the import only; later warnings from these libraries are untouched.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

NOISY_LOGGERS = ("torchao", "diffusers.quantizers.torchao.torchao_quantizer", "torch.utils._pytree")


@contextmanager
def quiet_import() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
