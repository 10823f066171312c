from .plan import BASELINE, ExecutionPlan, Probe, ProbeGroup, TokenSelector
from .showo2 import (
    BackboneOutput, GenerationInputs, GenerationOutput, KVCache, Showo2, omni_attention_mask, patchify_targets,
    unpatchify,
)

__all__ = [
    "BASELINE", "BackboneOutput", "ExecutionPlan", "GenerationInputs", "GenerationOutput", "KVCache", "Probe",
    "ProbeGroup",
    "Showo2", "TokenSelector", "omni_attention_mask", "patchify_targets", "unpatchify",
]
