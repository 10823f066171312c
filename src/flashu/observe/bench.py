"""The benchmark harness behind ``flashu bench``: configurations side by side in one process.

Protocol: every configuration gets one warm-up run, then ``repeats`` timed rounds run the configurations interleaved
(A B C A B C …) so that drift (thermal, other load) hits them alike; the median and the min–max spread are
reported. Accelerated configurations are applied with ``flashu.accelerate`` before their run and restored after it
(importance scores are calibrated once per task and shared). After the timed rounds, one instrumented run per
configuration measures the time per component (``torch.profiler`` labels ``flashu.*`` in the model code) and the
FLOPs actually executed (``FlopCounterMode``, attention counted through the math SDPA kernel). Fidelity is measured
against ``none`` on the same seeds and inputs.

Configuration names: ``none``, ``exact``, any FlashU preset (``flashu accel-presets``), optionally with overrides:
``paper:understanding.token_scorer=random,understanding.token_prune_ratio=0.25``.
"""

from __future__ import annotations

import copy
import math
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..accel.api import accelerate, restore
from ..accel.config import FlashUConfig
from ..accel.spec import resolve_accel
from ..pipelines.timing import DeviceClock
from ..bundle import Showo2Bundle
from ..errors import FlashuError
from .metrics import exact_match, psnr, relative_l2, ssim, token_agreement

SCHEMA = "flashu-bench"
SCHEMA_VERSION = 1
COMPONENTS = ("visual", "llm", "flow_head", "vae", "decode_loop")
DEFAULT_PROMPTS = ("a red circle left of a blue square", "a lighthouse on a cliff at sunset")
DEFAULT_QUESTIONS = ("What color is the circle?", "How many shapes are there?")


# ---------------------------------------------------------------------------------------------- measurement
class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __init__(self):
        import psutil

        self._proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def measure_peak_memory(device: torch.device, fn: Callable):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device)
    with PeakRSS() as rss:
        out = fn()
    return out, rss.peak


def component_times(fn: Callable) -> dict[str, float]:
    """Seconds per labelled component (self-contained labels; ``other`` is the rest of the wall time)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        fn()
    wall = time.perf_counter() - t0
    times = {c: 0.0 for c in COMPONENTS}
    for event in prof.key_averages():
        if event.key.startswith("flashu."):
            name = event.key.split(".", 1)[1]
            if name in times:
                device_time = getattr(event, "device_time_total", 0) or 0
                times[name] += max(event.cpu_time_total, device_time) / 1e6
    times["other"] = max(0.0, wall - sum(times.values()))
    return times


def counted_flops(fn: Callable) -> int:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    # The fused CPU attention kernels are not in the counter's table; the math kernel decomposes into counted bmms.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class TaskInputs:
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    steps: int | None = None
    guidance: float | None = None
    seed: int = 0
    images: list = field(default_factory=list)  # PIL images or paths
    questions: list[str] = field(default_factory=lambda: list(DEFAULT_QUESTIONS))
    max_new_tokens: int = 32


def default_images(bundle: Showo2Bundle, count: int) -> list:
    """Benchmark images when none are given: flashu's synthetic calibration-style images at the model's size."""
    from ..accel.calibration import synthetic_pairs

    return [image for image, _ in synthetic_pairs(count, bundle.config.image_size, seed=1)]


class ConfigRunner:
    """Applies a configuration through the front door, runs the task once, restores. Importance scores are kept
    per task across configurations (and come from the calibration cache the first time)."""

    def __init__(self, bundle: Showo2Bundle, task: str, inputs: TaskInputs, scores: dict, calibration_samples: int,
                 progress: bool):
        self.bundle, self.task, self.inputs = bundle, task, inputs
        self.scores, self.calibration_samples, self.progress = scores, calibration_samples, progress

    def run(self, config: FlashUConfig, wrap: Callable[[Callable], object] = lambda f: f()):
        acc = accelerate(self.bundle, config, task=self.task, scores=self.scores, progress=self.progress,
                         calibration_samples=self.calibration_samples)
        self.scores.update(acc.scores or {})
        try:
            return wrap(self._once)
        finally:
            restore(self.bundle)

    def _once(self):
        from ..pipelines.mmu import answer
        from ..pipelines.t2i import generate

        i = self.inputs
        clock = DeviceClock(self.bundle.device)
        t0 = clock()
        if self.task == "t2i":
            result = generate(self.bundle, i.prompts, steps=i.steps, guidance=i.guidance, seed=i.seed,
                              progress=False)
            return clock() - t0, result
        answers = [answer(self.bundle, img, q, max_new_tokens=i.max_new_tokens, ignore_eos=True)
                   for img, q in zip(i.images, i.questions)]
        return clock() - t0, answers


def _summary(task: str, result) -> dict:
    if task == "t2i":
        return {"evaluations": result.evaluations, "timings": result.timings,
                "stats": {k: v for k, v in result.stats.items() if k not in ("skip_sets", "guidance")}}
    return {"prefill_s": sum(a.timings["prefill"] for a in result),
            "prefill_backbone_s": sum(a.timings.get("prefill_backbone", 0.0) for a in result),
            "decode_s": sum(a.timings["decode"] for a in result),
            "decode_tokens_per_s": statistics.mean(a.decode_tokens_per_s for a in result),
            "prompt_tokens": [a.prompt_tokens for a in result], "kept_tokens": [a.kept_tokens for a in result]}


def _fidelity(task: str, result, reference) -> dict:
    if task == "t2i":
        return {"latent_rel_l2": relative_l2(result.latents, reference.latents),
                "psnr_db": statistics.mean(psnr(a, b) for a, b in zip(result.images, reference.images)),
                "ssim": statistics.mean(ssim(a, b) for a, b in zip(result.images, reference.images))}
    return {"exact_match": statistics.mean(float(exact_match(a.token_ids, b.token_ids))
                                           for a, b in zip(result, reference)),
            "token_agreement": statistics.mean(token_agreement(a.token_ids, b.token_ids)
                                               for a, b in zip(result, reference))}


def run_task(bundle: Showo2Bundle, task: str, config_specs: list[str], *, repeats: int = 3,
             inputs: TaskInputs | None = None, calibration_samples: int = 20, instrument: bool = True,
             progress: bool = True, scores: dict | None = None) -> dict:
    """Benchmark ``config_specs`` on ``task`` (``t2i`` or ``mmu``); returns the report section of that task."""
    from tqdm.auto import tqdm

    if repeats < 1:
        raise FlashuError(f"repeats must be at least 1, got {repeats}")
    if not config_specs:
        raise FlashuError("no configuration to benchmark")
    inputs = copy.deepcopy(inputs) if inputs is not None else TaskInputs()
    if task == "mmu" and not inputs.images:
        inputs.images = default_images(bundle, len(inputs.questions))
    if task == "mmu" and len(inputs.images) != len(inputs.questions):
        raise FlashuError("give as many questions as images")
    configs = {spec: resolve_accel(spec, task) for spec in config_specs}
    runner = ConfigRunner(bundle, task, inputs, dict(scores or {}), calibration_samples, progress)
    names = list(configs)
    total = len(names) * (repeats + 1 + (1 if instrument else 0))
    bar = tqdm(total=total, desc=f"bench {task}", unit="run", disable=not progress)

    for name in names:  # warm-up (also calibrates and caches scores)
        runner.run(configs[name])
        bar.update()
    walls = {n: [] for n in names}
    peaks = {n: 0 for n in names}
    last = {}
    order = []
    for _ in range(repeats):
        for name in names:
            order.append(name)
            (seconds, result), peak = runner.run(configs[name], lambda f: measure_peak_memory(bundle.device, f))
            walls[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
            last[name] = result
            bar.update()
    components, flops = {}, {}
    if instrument:
        for name in names:
            components[name] = runner.run(configs[name], lambda f: component_times(f))
            flops[name] = runner.run(configs[name], lambda f: counted_flops(f))
            bar.update()
    bar.close()

    rows = []
    reference = last.get("none")
    for name in names:
        median = statistics.median(walls[name])
        row = {"config": name, "runs_s": walls[name], "median_s": median, "min_s": min(walls[name]),
               "max_s": max(walls[name]), "peak_memory_bytes": peaks[name], **_summary(task, last[name])}
        for base in ("none", "exact"):
            if base in walls:
                row[f"speedup_vs_{base}"] = statistics.median(walls[base]) / median
        if instrument:
            row["components_s"] = components[name]
            row["flops"] = flops[name]
            if "none" in flops and flops[name] > 0:
                row["flop_ratio_vs_none"] = flops["none"] / flops[name]
                row["speedup_per_flop_ratio"] = row.get("speedup_vs_none", float("nan")) / row["flop_ratio_vs_none"]
        if reference is not None:
            row["fidelity"] = _fidelity(task, last[name], reference)
        rows.append(row)
    return {"task": task, "repeats": repeats, "run_order": order, "inputs": _inputs_dict(task, inputs),
            "rows": rows}


def _inputs_dict(task: str, inputs: TaskInputs) -> dict:
    if task == "t2i":
        return {"prompts": inputs.prompts, "steps": inputs.steps, "guidance": inputs.guidance, "seed": inputs.seed}
    return {"questions": inputs.questions, "images": len(inputs.images), "max_new_tokens": inputs.max_new_tokens}


def run_benchmark(bundle: Showo2Bundle, tasks: list[str], config_specs: list[str], **kwargs) -> dict:
    """The whole report: environment + one section per task. JSON-serialisable (schema ``flashu-bench`` v1)."""
    report = {
        "schema": SCHEMA, "version": SCHEMA_VERSION, "model": bundle.source,
        "device": str(bundle.device), "dtype": str(bundle.dtype).replace("torch.", ""),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "tasks": {task: run_task(bundle, task, config_specs, **kwargs) for task in tasks},
    }
    return report


# ---------------------------------------------------------------------------------------------- output
def markdown(report: dict) -> str:
    lines = [f"model `{report['model']}` on {report['device']} ({report['dtype']}, torch {report['torch']}, "
             f"{report['threads']} threads)"]
    for task, section in report["tasks"].items():
        lines.append("")
        if task == "t2i":
            inp = section["inputs"]
            lines.append(f"**text-to-image** — {len(inp['prompts'])} prompt(s), steps {inp['steps'] or 'default'}, "
                         f"median of {section['repeats']} interleaved runs")
            lines.append("| config | median s (min–max) | × none | × exact | evals | FLOP ratio | ×/FLOP ratio | "
                         "peak MiB | rel-L2 | PSNR dB | SSIM |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in section["rows"]:
                f = r.get("fidelity", {})
                lines.append(f"| {r['config']} | {r['median_s']:.2f} ({r['min_s']:.2f}–{r['max_s']:.2f}) | "
                             f"{_x(r, 'speedup_vs_none')} | {_x(r, 'speedup_vs_exact')} | {r['evaluations']} | "
                             f"{_x(r, 'flop_ratio_vs_none')} | {_x(r, 'speedup_per_flop_ratio')} | "
                             f"{r['peak_memory_bytes'] / 2**20:.0f} | {f.get('latent_rel_l2', float('nan')):.4f} | "
                             f"{f.get('psnr_db', float('nan')):.1f} | {f.get('ssim', float('nan')):.3f} |")
        else:
            inp = section["inputs"]
            lines.append(f"**understanding** — {inp['images']} image/question pair(s), prefill + "
                         f"{inp['max_new_tokens']} greedy tokens, median of {section['repeats']} interleaved runs")
            lines.append("| config | median s (min–max) | × none | prefill s | prefill backbone s | decode tok/s | "
                         "kept/prompt tokens | FLOP ratio | peak MiB | exact match | token agreement |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in section["rows"]:
                f = r.get("fidelity", {})
                lines.append(f"| {r['config']} | {r['median_s']:.2f} ({r['min_s']:.2f}–{r['max_s']:.2f}) | "
                             f"{_x(r, 'speedup_vs_none')} | {r['prefill_s']:.3f} | {r['prefill_backbone_s']:.3f} | "
                             f"{r['decode_tokens_per_s']:.1f} | {sum(r['kept_tokens'])}/{sum(r['prompt_tokens'])} | "
                             f"{_x(r, 'flop_ratio_vs_none')} | {r['peak_memory_bytes'] / 2**20:.0f} | "
                             f"{f.get('exact_match', float('nan')):.2f} | {f.get('token_agreement', float('nan')):.2f} |")
        if section["rows"] and "components_s" in section["rows"][0]:
            lines.append("")
            lines.append("time per component, s (instrumented run): | config | " + " | ".join(
                (*COMPONENTS, "other")) + " |")
            lines.append("|---|" + "---|" * (len(COMPONENTS) + 1))
            for r in section["rows"]:
                comp = r["components_s"]
                lines.append(f"| {r['config']} | " + " | ".join(f"{comp[c]:.2f}" for c in (*COMPONENTS, "other"))
                             + " |")
    return "\n".join(lines)


def _x(row: dict, key: str) -> str:
    value = row.get(key)
    return "–" if value is None else f"{value:.2f}×"


def plot(report: dict, path: str) -> None:
    """Speed vs fidelity (left) and a per-component stacked bar (right), one row per task."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FlashuError("--plot needs matplotlib: pip install 'flashu[plot]'") from None
    tasks = list(report["tasks"].items())
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4.5 * len(tasks)), squeeze=False)
    for (task, section), (ax_speed, ax_comp) in zip(tasks, axes):
        rows = section["rows"]
        metric = "psnr_db" if task == "t2i" else "token_agreement"
        for r in rows:
            x = r.get("speedup_vs_none", 1.0)
            y = r.get("fidelity", {}).get(metric, float("nan"))
            if y == float("inf"):
                y = 60.0  # identical images: plot at a ceiling rather than off the chart
            ax_speed.scatter([x], [y])
            ax_speed.annotate(r["config"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax_speed.set_xlabel("speedup vs none (×)")
        ax_speed.set_ylabel("PSNR vs none (dB)" if task == "t2i" else "token agreement vs none")
        ax_speed.set_title(f"{task}: speed vs fidelity")
        if rows and "components_s" in rows[0]:
            bottom = [0.0] * len(rows)
            labels = [r["config"] for r in rows]
            for comp in (*COMPONENTS, "other"):
                values = [r["components_s"][comp] for r in rows]
                ax_comp.bar(labels, values, bottom=bottom, label=comp)
                bottom = [b + v for b, v in zip(bottom, values)]
            ax_comp.set_ylabel("seconds (instrumented run)")
            ax_comp.set_title(f"{task}: time per component")
            ax_comp.legend(fontsize=8)
            ax_comp.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def strict_json(value):
    """``value`` with every NaN or infinity replaced by ``None`` (JSON has neither; ``json`` would write
    ``NaN``/``Infinity``, which strict parsers reject)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value
