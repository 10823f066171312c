"""Quantized kernels for the decoder's linear maps (``FlashUConfig.quantization``), composed with every technique.

The weights are never changed. :class:`QuantizedLinears` holds, per decoder linear map and per weight range a plan
can ask for (the whole map, a task's pruned FFN range, a KV-group range), a quantized copy built once; a plan that
carries it (``ExecutionPlan.linears``) computes each linear map with it, a plan without it uses the weights as they
are. Hence:

* FFN pruning, layer skipping, token pruning and speculative decoding are unchanged: they decide ranges, layers and
  positions; the kernels only compute ``F.linear(x, W[rows, cols], b[rows])`` another way. The hybrid pruned/full
  FFN keeps its zero-copy slices on the full-precision weights; its quantized range is a packed copy of the slice.
* Calibration reads the full-precision weights (its plans carry no kernels), ``flashu.restore`` has nothing to undo
  but the permutation (bit-identical), and concurrent sessions share read-only kernels.
* The cost: the quantized copies (int8: a quarter of the fp32 weights per range kept) beside the originals.

Backends:

* ``fbgemm`` — PyTorch's own x86 int8 kernels (``quantized::linear_dynamic``: per-channel int8 weights packed once,
  activations quantized per call). The CPU choice: on CPUs without AVX512-VNNI/AMX torchao's int8 paths fall back to
  slow reference code (``docs/benchmarks.md`` has the measurement). They cannot be traced by ``torch.compile``: a
  compiled model runs its full-precision weights (the session records ``quantized: false``). PyTorch 2.13 announces
  that its quantized tensor dtypes will be removed in a future release; flashu moves this backend to torchao's
  kernels once those are fast on such CPUs.
* ``torchao`` — torchao's ``quantize_`` configs (``Int8DynamicActivationInt8WeightConfig``,
  ``Int8WeightOnlyConfig``, ``Float8DynamicActivationFloat8WeightConfig``) on an ``nn.Linear`` copy of each range:
  the GPU choice, and traceable by ``torch.compile``. Optional: ``pip install 'flashu[quant]'``.

Where precision matters most, it is kept: the first and last decoder layers (``protect_first_last``) and
generation's final full-network phase (unless ``full_phase``), the low-noise evaluations that draw the details,
run the full-precision weights — what the trained testbed's generation accuracy asked for (``docs/testbed.md``).

Where a kernel does not pay, it is not used: with fbgemm, a call with fewer than :data:`FEW_ROWS` rows (a decoding
step) on a map with fewer than :data:`FEW_ROWS_MIN_WEIGHTS` weights runs the full-precision weights — at a few rows
such a map is too small for the activation quantization to be amortised (``benchmarks/quant_kernels.py``).
"""

from __future__ import annotations

import threading
import warnings
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError, FlashuError
from ..io.quiet import quiet_import
from ..model import ExecutionPlan
from ..model.layers import Range, linear
from .config import QuantizationConfig
from .technique import RequestContext, Step, Technique

FEW_ROWS = 8
FEW_ROWS_MIN_WEIGHTS = 1 << 19  # in × out below which fbgemm at < FEW_ROWS rows is slower than fp32 (measured)

Kernel = Callable[[torch.Tensor], torch.Tensor]


def resolve_backend(cfg: QuantizationConfig, device: torch.device) -> str:
    """The backend that runs ``cfg`` on ``device``, or a one-line :class:`ConfigError` saying why none can."""
    backend = cfg.backend
    if backend == "auto":
        backend = "torchao" if device.type == "cuda" else "fbgemm"
    if backend == "fbgemm":
        if device.type != "cpu":
            raise ConfigError(f"quantization.backend fbgemm runs on a CPU, and this model is on {device.type}; use "
                              "backend torchao (or auto)")
        if cfg.mode == "fp8":
            raise ConfigError("quantization.mode fp8 needs a GPU with fp8 tensor cores (compute capability 8.9 or "
                              "newer); on a CPU use int8-dynamic")
        if cfg.mode != "int8-dynamic":
            raise ConfigError(f"quantization.mode {cfg.mode} does not pay on a CPU in eager mode (no faster kernel "
                              "than fp32 there); use int8-dynamic, or backend torchao to run it anyway")
        if not {"fbgemm", "x86"} & set(torch.backends.quantized.supported_engines):
            raise ConfigError("this PyTorch build has no x86 int8 engine (fbgemm); use quantization.backend torchao")
        return backend
    if cfg.mode == "fp8":
        if device.type != "cuda":
            raise ConfigError("quantization.mode fp8 needs a GPU with fp8 tensor cores (compute capability 8.9 or "
                              "newer); on a CPU use int8-dynamic")
        if torch.cuda.get_device_capability(device) < (8, 9):
            major, minor = torch.cuda.get_device_capability(device)
            raise ConfigError(f"quantization.mode fp8 needs compute capability 8.9 or newer; this GPU has "
                              f"{major}.{minor}: use int8-dynamic")
    _torchao_quantization()
    return backend


def _torchao_quantization():
    try:
        with quiet_import():
            import torchao.quantization as tq
    except ImportError:
        raise FlashuError("quantization.backend torchao needs torchao: pip install 'flashu[quant]'") from None
    return tq


def _torchao_config(mode: str):
    tq = _torchao_quantization()
    if mode == "int8-dynamic":
        return tq.Int8DynamicActivationInt8WeightConfig()
    if mode == "int8-weight":
        return tq.Int8WeightOnlyConfig()
    from torchao.quantization.granularity import PerRow

    return tq.Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def _weight_range(module: nn.Linear, rows: Range | None, cols: Range | None):
    weight, bias = module.weight.detach(), module.bias
    if rows is not None:
        weight = weight[rows[0]:rows[1]]
        bias = None if bias is None else bias[rows[0]:rows[1]]
    if cols is not None:
        weight = weight[:, cols[0]:cols[1]]
    return weight, None if bias is None else bias.detach()


def _fbgemm_kernel(weight: torch.Tensor, bias: torch.Tensor | None) -> Kernel:
    """int8 per-output-channel symmetric weights, packed once; activations quantized per call in a 7-bit range: what
    ``torch.ao.quantization.quantize_dynamic`` does with its per-channel config on x86 (the invariant suite checks
    that the two agree)."""
    w = weight.float().contiguous()
    scales = (w.abs().amax(dim=1) / 127.5).clamp_min(torch.finfo(torch.float32).eps).double()
    zeros = torch.zeros(w.shape[0], dtype=torch.long)
    with warnings.catch_warnings():  # PyTorch 2.13 announces the quantized dtypes' deprecation (module docstring)
        warnings.simplefilter("ignore", UserWarning)
        packed = torch.ops.quantized.linear_prepack(torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8),
                                                    None if bias is None else bias.float().contiguous())

    def run(x: torch.Tensor) -> torch.Tensor:
        y = torch.ops.quantized.linear_dynamic(x if x.dtype == torch.float32 else x.float(), packed, True)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    return run


def _torchao_kernel(weight: torch.Tensor, bias: torch.Tensor | None, mode: str) -> Kernel:
    quantize_ = _torchao_quantization().quantize_
    copy = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device,
                     dtype=weight.dtype)
    with torch.no_grad():
        copy.weight.copy_(weight)
        if bias is not None:
            copy.bias.copy_(bias)
    copy.requires_grad_(False)
    quantize_(copy, _torchao_config(mode))
    return copy


class QuantizedLinears:
    """Implements :class:`~flashu.model.layers.LinearKernels`: quantized copies of the decoder's linear maps, built
    per (map, rows, cols) once — at construction for the ranges given, on first use (under a lock) for others."""

    def __init__(self, model: nn.Module, cfg: QuantizationConfig, backend: str,
                 ffn_ranges: dict[str, list] | None = None):
        self.mode, self.backend = cfg.mode, backend
        self.compiles = backend == "torchao"
        self._kernels: dict[tuple, Kernel] = {}
        self._lock = threading.Lock()
        last = len(model.layers) - 1
        self.layers = [i for i in range(len(model.layers)) if not (cfg.protect_first_last and i in (0, last))]
        self._protected = [module for i, layer in enumerate(model.layers) if i not in self.layers
                           for module in _linears(layer)]
        self._full_precision = {id(module) for module in self._protected}
        for i in self.layers:
            for module in _linears(model.layers[i]):
                self._kernel(module, None, None)
        for ranges in (ffn_ranges or {}).values():
            for i, (layer, neurons) in enumerate(zip(model.layers, ranges or ())):
                if neurons is not None and i in self.layers:
                    self._kernel(layer.mlp.gate_proj, tuple(neurons), None)
                    self._kernel(layer.mlp.up_proj, tuple(neurons), None)
                    self._kernel(layer.mlp.down_proj, None, tuple(neurons))

    def __deepcopy__(self, memo) -> "QuantizedLinears":
        """A copy of an accelerated bundle has other modules: its kernels are built again, on first use."""
        import copy as _copy

        clone = object.__new__(QuantizedLinears)
        clone.mode, clone.backend, clone.compiles, clone.layers = self.mode, self.backend, self.compiles, self.layers
        clone._kernels, clone._lock = {}, threading.Lock()
        clone._protected = _copy.deepcopy(self._protected, memo)  # the copied bundle's own modules
        clone._full_precision = {id(module) for module in clone._protected}
        return clone

    def __repr__(self) -> str:
        return f"QuantizedLinears({self.mode}, {self.backend}, {len(self._kernels)} kernels)"

    def __call__(self, module: nn.Linear, x: torch.Tensor, rows: Range | None, cols: Range | None) -> torch.Tensor:
        if id(module) in self._full_precision:
            return linear(module, x, rows, cols)
        if self.backend == "fbgemm" and x.numel() < FEW_ROWS * x.shape[-1]:
            out_features = module.out_features if rows is None else rows[1] - rows[0]
            in_features = module.in_features if cols is None else cols[1] - cols[0]
            if in_features * out_features < FEW_ROWS_MIN_WEIGHTS:
                return linear(module, x, rows, cols)
        return self._kernel(module, rows, cols)(x)

    def _kernel(self, module: nn.Linear, rows: Range | None, cols: Range | None) -> Kernel:
        key = (id(module), rows, cols)
        kernel = self._kernels.get(key)
        if kernel is None:
            with self._lock:
                kernel = self._kernels.get(key)
                if kernel is None:
                    weight, bias = _weight_range(module, rows, cols)
                    kernel = _fbgemm_kernel(weight, bias) if self.backend == "fbgemm" else \
                        _torchao_kernel(weight, bias, self.mode)
                    self._kernels[key] = kernel
        return kernel


def _linears(layer: nn.Module) -> tuple[nn.Linear, ...]:
    attn, mlp = layer.self_attn, layer.mlp
    return attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj


def build_linears(model: nn.Module, cfg: QuantizationConfig, ffn_ranges: dict[str, list] | None = None) -> QuantizedLinears:
    """Quantized kernels of ``model``'s decoder (after any FFN permutation: they copy the weights as they are)."""
    device = next(model.parameters()).device
    return QuantizedLinears(model, cfg, resolve_backend(cfg, device), ffn_ranges)


def for_session(linears: QuantizedLinears | None, compiled: bool) -> QuantizedLinears | None:
    """The kernels a session's plans carry: none when the model is compiled and the kernels cannot be traced (the
    compiled full-precision graphs run instead)."""
    if linears is None or (compiled and not linears.compiles):
        return None
    return linears


class QuantizedKernels(Technique):
    """Every plan carries the kernels (``ExecutionPlan.linears``), except generation's full-network phase unless
    ``quantization.full_phase``."""

    name = "quantization"

    def __init__(self, linears: QuantizedLinears | None, full_phase: bool):
        self.linears = linears
        self.full_phase = full_phase

    @classmethod
    def start(cls, ctx: RequestContext) -> "QuantizedKernels":
        return cls(ctx.linears, ctx.quantize_full_phase)  # always: "quantized" is in every request's stats

    def engaged(self) -> bool:
        return self.linears is not None

    def plan(self, step: Step, plan: ExecutionPlan) -> ExecutionPlan:
        if self.linears is None or (step.full and not self.full_phase):
            return plan
        return plan.with_(linears=self.linears)

    def stats(self) -> dict:
        return {"quantized": self.linears is not None}
