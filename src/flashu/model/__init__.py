from .plan import BASELINE, ExecutionPlan, Probe, ProbeGroup, TokenSelector
from .cache import KVCache, additive_mask, omni_attention_mask
from .flow_head import patchify_targets, unpatchify
from .showo2 import (
    UNDERSTANDING_LAYOUTS, BackboneOutput, GenerationInputs, GenerationOutput, Showo2, UnderstandingInputs,
)

__all__ = [
    "BASELINE", "BackboneOutput", "additive_mask", "ExecutionPlan", "GenerationInputs", "GenerationOutput", "KVCache", "Probe",
    "ProbeGroup", "Showo2", "TokenSelector", "UNDERSTANDING_LAYOUTS", "UnderstandingInputs", "omni_attention_mask",
    "patchify_targets", "unpatchify",
]
