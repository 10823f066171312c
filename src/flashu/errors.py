"""User-facing errors: one clear line saying what was wrong and what to do.

Anything a user can cause (bad path, bad preset, bad value) raises :class:`FlashuError`; the CLI prints its
message on one line and exits non-zero. Anything else is a bug and keeps its traceback.
"""

from contextlib import ContextDecorator


class FlashuError(Exception):
    """An error caused by user input, with a message fit to show as is."""


class ConfigError(FlashuError, ValueError):
    """A configuration value is invalid; the message names the field."""


class CheckpointError(FlashuError):
    """A checkpoint is missing, unreadable, truncated or does not match the model."""


class RandomWeightsWarning(UserWarning):
    """A random-weight preset was loaded: its outputs are noise (fine for speed measurements and tests)."""


class OutOfMemory(FlashuError, MemoryError):
    """An allocation failed (CPU or accelerator); the message names the amount, the work and what to try. The
    model is left as it was and can be used again with smaller inputs."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or ``kill`` stopping the job), raised where the program was so that the Ctrl-C paths
    run: records kept, models restored. The command line exits with status 143."""


_OOM_HINT = ("try fewer prompts or questions per call, fewer steps or tokens, a smaller image size, bfloat16 "
             "(--dtype bfloat16), another device (--device), or offloading other work from it")


def out_of_memory_message(exc: BaseException, what: str) -> str | None:
    """One line for an allocation failure during ``what`` (None if ``exc`` is not one): the amount when the
    allocator says it, and what to try."""
    import re

    text = str(exc)
    oom = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text))
    if not oom or isinstance(exc, OutOfMemory):
        return None
    amount = ""
    if match := re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]i?B)", text):  # CUDA / MPS allocators
        amount = f" ({match.group(1)} requested)"
    elif match := re.search(r"allocate (\d+) bytes", text):  # the CPU allocator
        amount = f" ({int(match.group(1)) / 2**30:.2f} GiB requested)"
    return f"out of memory during {what}{amount}; {_OOM_HINT}"


class memory_guard(ContextDecorator):
    """``with memory_guard("generate"):`` or ``@memory_guard("generate")`` — an allocation failure inside becomes :class:`OutOfMemory` (one line),
    after freeing cached accelerator memory; everything else passes through."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> "memory_guard":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            return False
        message = out_of_memory_message(exc, self.what)
        if message is None:
            return False
        import gc
        import sys

        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory(message) from None
