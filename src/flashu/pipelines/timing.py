"""Clocks that tell the truth on an accelerator: synchronise the device before reading the time."""

from __future__ import annotations

import time

import torch


class DeviceClock:
    """``clock()`` returns ``time.perf_counter()`` after waiting for the work queued on ``device`` (CUDA, MPS); on
    the CPU it is just the timer."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elif self.device.type == "mps":
            torch.mps.synchronize()
        return time.perf_counter()
