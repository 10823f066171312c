"""flashu: task-aware, training-free acceleration of native unified multimodal models (first target: Show-o2).

The public names below are imported on first use (PEP 562), so ``import flashu`` and the ``flashu`` command line
start without loading torch, transformers or diffusers.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .errors import CheckpointError, ConfigError, FlashuError

__version__ = "0.2.0"

# public name -> module that defines it (relative to this package)
_LAZY = {
    "accelerate": ".accel.api", "accelerated": ".accel.api", "restore": ".accel.api",
    "FlashUConfig": ".accel.config", "accel_preset": ".accel.config",
    "resolve_accel": ".accel.spec",
    "MODEL_PRESET_NAMES": ".config", "Showo2Config": ".config", "preset": ".config",
    "ExecutionPlan": ".model", "Showo2": ".model",
    "load_model": ".loading", "save_pretrained": ".loading", "download": ".io.hub",
    "answer": ".pipelines.mmu", "generate": ".pipelines.t2i",
    "compile": ".compiled",
}

__all__ = ["CheckpointError", "ConfigError", "FlashuError", "__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flashu' has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .accel.api import accelerate, accelerated, restore
    from .accel.config import FlashUConfig, accel_preset
    from .accel.spec import resolve_accel
    from .compiled import compile
    from .config import MODEL_PRESET_NAMES, Showo2Config, preset
    from .io.hub import download
    from .loading import load_model, save_pretrained
    from .model import ExecutionPlan, Showo2
    from .pipelines.mmu import answer
    from .pipelines.t2i import generate
