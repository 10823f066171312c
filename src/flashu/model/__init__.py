from .plan import BASELINE, ExecutionPlan, Probe, ProbeGroup, TokenSelector
from .showo2 import (
    UNDERSTANDING_LAYOUTS, BackboneOutput, GenerationInputs, GenerationOutput, KVCache, Showo2, UnderstandingInputs,
    omni_attention_mask, patchify_targets, unpatchify,
)

__all__ = [
    "BASELINE", "BackboneOutput", "ExecutionPlan", "GenerationInputs", "GenerationOutput", "KVCache", "Probe",
    "ProbeGroup", "Showo2", "TokenSelector", "UNDERSTANDING_LAYOUTS", "UnderstandingInputs", "omni_attention_mask",
    "patchify_targets", "unpatchify",
]
