"""flashu: task-aware, training-free acceleration of native unified multimodal models (first target: Show-o2)."""

from .accel.api import accelerate, accelerated, restore
from .accel.config import FlashUConfig, accel_preset
from .config import PRESET_NAMES, Showo2Config, preset
from .errors import CheckpointError, ConfigError, FlashuError
from .model import ExecutionPlan, Showo2
from .loading import load_model, save_pretrained
from .pipelines.mmu import answer
from .pipelines.t2i import generate

__version__ = "0.1.0"

__all__ = [
    "FlashUConfig", "accel_preset", "accelerate", "accelerated", "restore",
    "PRESET_NAMES", "CheckpointError", "ConfigError", "ExecutionPlan", "FlashuError", "Showo2", "Showo2Config",
    "answer", "generate", "load_model", "preset", "save_pretrained",
]
