"""Text-to-image with Show-o2's official semantics, driven by a per-request :class:`GenerationSession`.

Sequence per prompt (official layout, length ``max_text_len + block_len + 4``)::

    cond   : [bos] prompt(≤ max_text_len) [boi] [img_pad]×block_len [eoi] [eos] [pad]×(max_text_len − Lp)
    uncond : [bos] [boi] [img_pad]×block_len [eoi] [eos] [pad]×max_text_len

with ``block_len = 1 + grid²`` (time token + image tokens). CFG rows are ``[cond…; uncond…]`` sharing the noise.
The session decides the plan of every evaluation; the baseline session runs the default plan.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch
from torch.profiler import record_function
from tqdm.auto import tqdm

from ..bundle import Showo2Bundle
from ..errors import FlashuError, memory_guard
from ..layout import block_length, generation_row
from ..io.images import to_pil
from ..io.paths import check_text
from ..limits import check_generation_fits
from ..model import BASELINE, ExecutionPlan, GenerationInputs, GenerationOutput, omni_attention_mask
from .sampling import DenoisingSchedule, euler_update, guided, time_grid
from .timing import DeviceClock


class GenerationSession(Protocol):
    """Per-request decisions and state of one generation (never stored on the model)."""

    schedule: DenoisingSchedule

    def plan(self, k: int) -> ExecutionPlan:
        """The plan of evaluation ``k`` (0-based)."""

    def observe(self, k: int, output: GenerationOutput) -> None:
        """See the output of evaluation ``k`` (e.g. to cache head features or re-rank layers)."""

    def stats(self) -> dict:
        """Counts worth reporting (evaluations with reused head, skipped layers…)."""


class GenerationPolicy(Protocol):
    """Creates a fresh session for each request."""

    name: str

    def start(self, bundle: Showo2Bundle, inputs: GenerationInputs, steps: int, guidance: float) -> GenerationSession:
        ...


class StepObserver(Protocol):
    """Optional per-step hook of a pipeline, for tools (calibration, analysis, benchmarks): it may extend each
    step's plan (e.g. attach a probe) and sees each step's output. Deciding stays with the session."""

    def plan(self, step: int, plan: ExecutionPlan) -> ExecutionPlan:
        ...

    def observe(self, step: int, plan: ExecutionPlan, output) -> None:
        ...


class BaselineSession:
    """The trivial decider: the unaccelerated plan at every evaluation, the requested steps and guidance."""

    def __init__(self, steps: int, guidance: float):
        self.schedule = DenoisingSchedule(time_grid(steps), [guidance] * (steps - 1))

    def plan(self, k: int) -> ExecutionPlan:
        return BASELINE

    def observe(self, k: int, output: GenerationOutput) -> None:
        pass

    def stats(self) -> dict:
        return {}


class BaselinePolicy:
    name = "none"

    def start(self, bundle, inputs, steps, guidance) -> GenerationSession:
        return BaselineSession(steps, guidance)


@dataclass
class GenerationResult:
    images: list  # PIL images, one per prompt
    latents: torch.Tensor  # final normalized latents [B, C, h, w] (fp32)
    evaluations: int
    timings: dict[str, float]  # seconds per phase
    stats: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        size = "x".join(str(d) for d in self.images[0].size) if self.images else "-"
        timing = ", ".join(f"{k} {v:.3f}s" for k, v in self.timings.items())
        return (f"GenerationResult({len(self.images)} image(s) {size}, {self.evaluations} evaluations, {timing}; "
                f"latents {tuple(self.latents.shape)})")


def default_generation_policy(bundle: Showo2Bundle) -> GenerationPolicy:
    """The accelerated policy when ``flashu.accelerate`` was applied to the bundle, else the baseline."""
    acc = bundle.acceleration
    policy = acc.generation_policy() if acc is not None else None
    return policy or BaselinePolicy()


def build_generation_inputs(bundle: Showo2Bundle, prompts: Sequence[str], image_size: int,
                            with_uncond: bool) -> GenerationInputs:
    cfg, sp = bundle.config, bundle.special
    block_len = block_length(cfg, image_size)
    max_text = cfg.max_text_len
    rows, offsets = [], []
    for prompt in prompts:
        ids = bundle.encode_user_text(prompt)
        if len(ids) > max_text:
            warnings.warn(f"prompt has {len(ids)} tokens; truncated to the first {max_text}", stacklevel=3)
            ids = ids[:max_text]
        row, offset = generation_row(ids, block_len, max_text, sp)
        rows.append(row)
        offsets.append(offset)
    if with_uncond:
        for _ in prompts:
            row, offset = generation_row([], block_len, max_text, sp)
            rows.append(row)
            offsets.append(offset)
    device = bundle.device
    input_ids = torch.tensor(rows, dtype=torch.long, device=device)
    block_offsets = torch.tensor(offsets, dtype=torch.long, device=device)
    mask = omni_attention_mask(input_ids.shape[1], block_offsets, block_len, bundle.dtype)
    return GenerationInputs(input_ids=input_ids, block_offsets=block_offsets, block_len=block_len, mask=mask)


def initial_noise(bundle: Showo2Bundle, count: int, image_size: int, seed: int) -> torch.Tensor:
    """x_0 ~ N(0, I) in fp32, drawn on the CPU from ``seed`` so results do not depend on the device."""
    side = image_size // bundle.config.vae.spatial_factor
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(count, bundle.config.latent_channels, side, side, generator=gen).to(bundle.device)


NOISE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _given_noise(bundle: Showo2Bundle, noise: torch.Tensor, count: int, image_size: int) -> torch.Tensor:
    side = image_size // bundle.config.vae.spatial_factor
    expected = (count, bundle.config.latent_channels, side, side)
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != expected:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise FlashuError(f"noise must be a tensor of shape {list(expected)}, got {got}")
    return noise.detach().float().to(bundle.device)


def validate_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    elif isinstance(prompts, (list, tuple)):
        prompts = list(prompts)
    else:
        raise FlashuError(f"prompts must be a string or a list of strings, not {type(prompts).__name__}")
    if not prompts:
        raise FlashuError("no prompt given: pass at least one prompt")
    for p in prompts:
        if not isinstance(p, str):
            raise FlashuError(f"a prompt must be a string, not {type(p).__name__}")
        check_text(p, "prompt")
    return prompts


def _integer(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FlashuError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


MAX_STEPS = 10_000
MAX_SEED = 2**63 - 1


@torch.no_grad()
@memory_guard("generation")
def generate(bundle: Showo2Bundle, prompts: str | Sequence[str], *, steps: int | None = None,
             guidance: float | None = None, seed: int = 0, image_size: int | None = None,
             policy: GenerationPolicy | None = None, progress: bool = True, decode: bool = True,
             noise: torch.Tensor | None = None, noise_dtype: str = "float32",
             observer: StepObserver | None = None) -> GenerationResult:
    """Generate one image per prompt. ``steps`` counts grid points (N points → N − 1 evaluations).

    ``guidance`` > 0 runs classifier-free guidance with an empty-prompt row per prompt; 0 runs the conditional
    rows only. The initial noise x₀ is drawn on the CPU from ``seed`` (or given as ``noise`` [n, C, h, w]) and kept
    in fp32; ``noise_dtype="bfloat16"`` rounds it to bf16 first, as the official ``inference_t2i.py`` does.
    """
    cfg = bundle.config
    prompts = validate_prompts(prompts)
    steps = _integer(cfg.default_steps if steps is None else steps, "steps", 2, MAX_STEPS)  # also the config's
    guidance = cfg.default_guidance if guidance is None else guidance
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance) \
            or guidance < 0:
        raise FlashuError(f"guidance must be a finite number >= 0, got {guidance!r}")
    guidance = float(guidance)
    _integer(seed, "seed", 0, MAX_SEED)
    image_size = cfg.image_size if image_size is None else _integer(image_size, "image_size", 1, 1 << 20)
    cfg.grid_for(image_size)
    check_generation_fits(cfg, image_size, len(prompts), 2 if guidance > 0 else 1, bundle.dtype, bundle.device)
    policy = policy or default_generation_policy(bundle)
    timings: dict[str, float] = {}

    clock = DeviceClock(bundle.device)
    t0 = clock()
    use_cfg = guidance > 0
    inputs = build_generation_inputs(bundle, prompts, image_size, with_uncond=use_cfg)
    session = policy.start(bundle, inputs, steps, guidance)
    schedule = session.schedule
    n = len(prompts)
    x = initial_noise(bundle, n, image_size, seed) if noise is None else _given_noise(bundle, noise, n, image_size)
    if noise_dtype not in NOISE_DTYPES:
        raise FlashuError(f"noise_dtype must be one of {', '.join(NOISE_DTYPES)}, got {noise_dtype!r}")
    x = x.to(NOISE_DTYPES[noise_dtype]).float()
    timings["prepare"] = clock() - t0

    t0 = clock()
    grid = schedule.grid.tolist()
    for k in tqdm(range(schedule.num_evaluations), desc="denoising", unit="eval", disable=not progress,
                  leave=False):
        rows = torch.cat([x, x]) if use_cfg else x
        t = torch.full((rows.shape[0],), grid[k], device=x.device)
        plan = session.plan(k)
        if observer is not None:
            plan = observer.plan(k, plan)
        output = bundle.model.forward_generation(rows.to(bundle.dtype), t, inputs, plan)
        session.observe(k, output)
        if observer is not None:
            observer.observe(k, plan, output)
        v = guided(output.velocity, schedule.guidance[k], n) if use_cfg else output.velocity.float()
        x = euler_update(x, v, grid[k], grid[k + 1])
    timings["denoise"] = clock() - t0
    if not bool(torch.isfinite(x).all()):  # one host sync per generation; never save a flat black image silently
        raise FlashuError("generation produced non-finite latents (NaN or infinity): the guidance scale "
                          f"({max(abs(g) for g in schedule.guidance):g} at most) overflows {bundle.dtype}, or the "
                          "checkpoint has non-finite weights; use a smaller guidance or check the weights")

    images = []
    if decode:
        t0 = clock()
        with record_function("flashu.vae"):
            images = to_pil(bundle.require_codec().decode(x))
        timings["decode"] = clock() - t0
    return GenerationResult(images=images, latents=x, evaluations=schedule.num_evaluations, timings=timings,
                            stats=session.stats())
