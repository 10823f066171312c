"""The benchmark harness behind ``flashu bench``: configurations side by side in one process.

Protocol: every configuration gets one warm-up run, then ``repeats`` timed rounds run the configurations interleaved
(A B C A B C …) so that drift (thermal, other load) hits them alike; the median and the min–max spread are
reported, with device-synchronised clocks. Configurations are applied through the front door
(``flashu.accelerate``) before their run and restored after it; importance scores come from the calibration cache
or are calibrated once per task and shared. After the timed rounds, one profiled run per configuration measures
the time per component (``torch.profiler`` labels ``flashu.*``; its own total is reported beside them, since the
profiler slows a run) and one more the FLOPs actually executed (``FlopCounterMode``, attention counted through the
math SDPA kernel). Fidelity is measured against ``none`` on the same seeds and inputs.

Workloads: ``t2i`` (one generation of the prompts); understanding in two, side by side — ``mmu-short``
(benchmark-style answers: at most 2 tokens, eos honoured — the paper's latency protocol, prefill-dominated) and
``mmu-long`` (``max_new_tokens`` forced tokens, decode-dominated). Understanding rows are compared with the
KV-cached baseline (``none``) and, in a separate column, with the official cache-less decoding loop (the whole
sequence re-run per token, as upstream's ``mmu_generate``), timed in the same rounds on the unaccelerated model.

Configurations are acceleration specs (:mod:`flashu.accel.spec`).
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import platform
import statistics
import sys
import threading
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..accel.api import accelerate, restore
from ..accel.config import FlashUConfig
from ..accel.spec import resolve_accel
from ..bundle import Showo2Bundle
from ..errors import FlashuError, memory_guard
from ..pipelines.timing import DeviceClock
from .metrics import exact_match, psnr, relative_l2, ssim, token_agreement

SCHEMA = "flashu-bench"
SCHEMA_VERSION = 2
COMPONENTS = ("visual", "llm", "flow_head", "vae", "decode_loop")
DEFAULT_PROMPTS = ("a red circle left of a blue square", "a lighthouse on a cliff at sunset")
DEFAULT_QUESTIONS = ("Is there a red object in the image? Answer yes or no.",
                     "How many objects are there? A. one B. two C. three D. four Answer with the letter.")
OFFICIAL_LOOP = "official loop (no KV cache)"  # its row's name


@dataclass(frozen=True)
class OfficialLoop:
    """The configuration that runs upstream's cache-less understanding loop instead of flashu's (a bench row beside
    the FlashU configurations)."""
SHORT_ANSWER_TOKENS = 2


@dataclass(frozen=True)
class Workload:
    name: str
    task: str  # t2i | mmu
    max_new_tokens: int | None = None
    ignore_eos: bool = False


def workloads(task: str, long_tokens: int = 32, mmu: tuple[str, ...] = ("short", "long")) -> list[Workload]:
    """The workloads of ``task`` (``t2i``, ``mmu`` or ``both``)."""
    out = []
    if task in ("t2i", "both"):
        out.append(Workload("t2i", "t2i"))
    if task in ("mmu", "both"):
        if "short" in mmu:
            out.append(Workload("mmu-short", "mmu", SHORT_ANSWER_TOKENS, ignore_eos=False))
        if "long" in mmu:
            out.append(Workload("mmu-long", "mmu", long_tokens, ignore_eos=True))
    if not out:
        raise FlashuError(f"no workload for task {task!r} (mmu workloads: short, long)")
    return out


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
    clock = DeviceClock("cuda" if torch.cuda.is_available() else "cpu")
    with _stderr_silenced():  # the profiler's C++ side prints start/stop lines on the process's stderr
        t0 = clock()
        with profile(activities=activities) as prof:
            fn()
        wall = clock() - t0
    times = {c: 0.0 for c in COMPONENTS}
    for event in prof.key_averages():
        if event.key.startswith("flashu."):
            name = event.key.split(".", 1)[1]
            if name in times:
                device_time = getattr(event, "device_time_total", 0) or 0
                times[name] += max(event.cpu_time_total, device_time) / 1e6
    times["other"] = max(0.0, wall - sum(times.values()))
    times["total"] = wall
    return times


@contextlib.contextmanager
def _stderr_silenced():
    """Send file descriptor 2 to /dev/null for the block (C++ libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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
    max_new_tokens: int = 32  # the long-answer workload's length


def default_images(bundle: Showo2Bundle, count: int) -> list:
    """Benchmark images when none are given: flashu's synthetic calibration-style images at the model's size."""
    from ..accel.calibration import synthetic_pairs

    return [image for image, _ in synthetic_pairs(count, bundle.config.image_size, seed=1)]


class ConfigRunner:
    """Applies a configuration through the front door, runs one workload once, restores. Importance scores are
    kept per task across configurations (and come from the calibration cache the first time)."""

    def __init__(self, bundle: Showo2Bundle, workload: Workload, inputs: TaskInputs, scores: dict,
                 calibration_samples: int, progress: bool):
        self.bundle, self.workload, self.inputs = bundle, workload, inputs
        self.scores, self.calibration_samples, self.progress = scores, calibration_samples, progress

    def run(self, config: FlashUConfig | OfficialLoop, wrap: Callable[[Callable], object] = lambda f: f()):
        if isinstance(config, OfficialLoop):
            return wrap(self._official_loop)
        acc = accelerate(self.bundle, config, task=self.workload.task, scores=self.scores, progress=self.progress,
                         calibration_samples=self.calibration_samples)
        self.scores.update(acc.scores or {})
        try:
            return wrap(self._once)
        finally:
            restore(self.bundle)

    def _once(self):
        from ..pipelines.mmu import answer
        from ..pipelines.t2i import generate

        i, w = self.inputs, self.workload
        clock = DeviceClock(self.bundle.device)
        t0 = clock()
        if w.task == "t2i":
            result = generate(self.bundle, i.prompts, steps=i.steps, guidance=i.guidance, seed=i.seed,
                              progress=False)
            return clock() - t0, result
        answers = [answer(self.bundle, img, q, max_new_tokens=w.max_new_tokens, ignore_eos=w.ignore_eos)
                   for img, q in zip(i.images, i.questions)]
        return clock() - t0, answers

    def _official_loop(self):
        from ..pipelines.mmu import answer_without_cache

        i, w = self.inputs, self.workload
        clock = DeviceClock(self.bundle.device)
        t0 = clock()
        answers = [LoopAnswer(answer_without_cache(self.bundle, img, q, max_new_tokens=w.max_new_tokens,
                                                   ignore_eos=w.ignore_eos)) for img, q in zip(i.images, i.questions)]
        return clock() - t0, answers


@dataclass
class LoopAnswer:
    """What the cache-less loop returns, shaped like an ``Answer`` for the report."""

    token_ids: list[int]
    timings: dict = field(default_factory=dict)
    prompt_tokens: int = 0
    kept_tokens: int = 0
    stats: dict = field(default_factory=dict)
    decode_tokens_per_s: float = float("nan")


def _summary(task: str, result) -> dict:
    if task == "t2i":
        return {"evaluations": result.evaluations, "timings": result.timings,
                "stats": {k: v for k, v in result.stats.items() if k not in ("skip_sets", "guidance")}}
    out = {"answer_tokens": statistics.mean(len(a.token_ids) for a in result),
           "prompt_tokens": [a.prompt_tokens for a in result], "kept_tokens": [a.kept_tokens for a in result]}
    if all(a.timings for a in result):
        out.update(prefill_s=sum(a.timings["prefill"] for a in result),
                   prefill_backbone_s=sum(a.timings.get("prefill_backbone", 0.0) for a in result),
                   decode_s=sum(a.timings["decode"] for a in result),
                   decode_tokens_per_s=statistics.mean(a.decode_tokens_per_s for a in result))
    spec = [a.stats for a in result if a.stats.get("drafted_tokens")]
    if spec:
        drafted = sum(s["drafted_tokens"] for s in spec)
        out["acceptance_rate"] = sum(s["accepted_tokens"] for s in spec) / drafted
    return out


def _fidelity(task: str, result, reference) -> dict:
    if task == "t2i":
        return {"latent_rel_l2": relative_l2(result.latents, reference.latents),
                "psnr_db": statistics.mean(psnr(a, b) for a, b in zip(result.images, reference.images)),
                "ssim": statistics.mean(ssim(a, b) for a, b in zip(result.images, reference.images))}
    return {"exact_match": statistics.mean(float(exact_match(a.token_ids, b.token_ids))
                                           for a, b in zip(result, reference)),
            "token_agreement": statistics.mean(token_agreement(a.token_ids, b.token_ids)
                                               for a, b in zip(result, reference))}


def run_workload(bundle: Showo2Bundle, workload: Workload, config_specs: list[str], *, repeats: int = 3,
                 inputs: TaskInputs | None = None, calibration_samples: int = 20, instrument: bool = True,
                 progress: bool = True, scores: dict | None = None, official_loop: bool = True) -> dict:
    """Benchmark ``config_specs`` on one workload; returns its report section."""
    from tqdm.auto import tqdm

    if repeats < 1:
        raise FlashuError(f"repeats must be at least 1, got {repeats}")
    if not config_specs:
        raise FlashuError("no configuration to benchmark")
    task = workload.task
    inputs = copy.deepcopy(inputs) if inputs is not None else TaskInputs()
    if task == "mmu" and not inputs.images:
        inputs.images = default_images(bundle, len(inputs.questions))
    if task == "mmu" and len(inputs.images) != len(inputs.questions):
        raise FlashuError("give as many questions as images")
    configs: dict[str, FlashUConfig | OfficialLoop] = {spec: resolve_accel(spec, task) for spec in config_specs}
    if task == "mmu" and official_loop:
        configs[OFFICIAL_LOOP] = OfficialLoop()
    runner = ConfigRunner(bundle, workload, inputs, dict(scores or {}), calibration_samples, progress)
    names = list(configs)
    measured = [n for n in names if not isinstance(configs[n], OfficialLoop)]
    total = len(names) * (repeats + 1) + (len(measured) if instrument else 0)
    bar = tqdm(total=total, desc=f"bench {workload.name}", unit="run", disable=not progress)

    for name in names:  # warm-up (also calibrates and caches scores)
        runner.run(configs[name])
        bar.update()
    walls = {n: [] for n in names}
    peaks = {n: 0 for n in names}
    results, order = {n: [] for n in names}, []
    for _ in range(repeats):
        for name in names:
            order.append(name)
            (seconds, result), peak = runner.run(configs[name], lambda f: measure_peak_memory(bundle.device, f))
            walls[name].append(seconds)
            peaks[name] = max(peaks[name], peak)
            results[name].append(result)
            bar.update()
    # per-phase timings (prefill, decode, …) come from each configuration's median run, as its wall time does
    last = {n: results[n][sorted(range(len(walls[n])), key=walls[n].__getitem__)[len(walls[n]) // 2]]
            for n in names}
    components, flops = {}, {}
    if instrument:
        for name in measured:
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
        for base in ("none", "exact", OFFICIAL_LOOP):
            if base in walls:
                key = "speedup_vs_official_loop" if base == OFFICIAL_LOOP else f"speedup_vs_{base}"
                row[key] = statistics.median(walls[base]) / median
        if name in components:
            row["components_s"] = components[name]
            row["flops"] = flops[name]
            if "none" in flops and flops[name] > 0:
                row["flop_ratio_vs_none"] = flops["none"] / flops[name]
                row["speedup_per_flop_ratio"] = row.get("speedup_vs_none", float("nan")) / row["flop_ratio_vs_none"]
        if reference is not None:
            row["fidelity"] = _fidelity(task, last[name], reference)
        rows.append(row)
    return {"workload": workload.name, "task": task, "repeats": repeats, "run_order": order,
            "inputs": _inputs_dict(workload, inputs), "rows": rows}


def _inputs_dict(workload: Workload, inputs: TaskInputs) -> dict:
    if workload.task == "t2i":
        return {"prompts": inputs.prompts, "steps": inputs.steps, "guidance": inputs.guidance, "seed": inputs.seed}
    return {"questions": inputs.questions, "images": len(inputs.images), "max_new_tokens": workload.max_new_tokens,
            "ignore_eos": workload.ignore_eos}


@memory_guard("the benchmark")
def run_benchmark(bundle: Showo2Bundle, tasks: list[str] | str, config_specs: list[str], *,
                  inputs: TaskInputs | None = None, mmu_workloads: tuple[str, ...] = ("short", "long"),
                  **kwargs) -> dict:
    """The whole report: environment + one section per workload. JSON-serialisable (schema ``flashu-bench`` v2)."""
    task = tasks if isinstance(tasks, str) else ("both" if set(tasks) == {"t2i", "mmu"} else tasks[0])
    long_tokens = (inputs or TaskInputs()).max_new_tokens
    sections = {w.name: run_workload(bundle, w, config_specs, inputs=inputs, **kwargs)
                for w in workloads(task, long_tokens, mmu_workloads)}
    return {
        "schema": SCHEMA, "version": SCHEMA_VERSION, "model": bundle.source,
        "device": str(bundle.device), "dtype": str(bundle.dtype).replace("torch.", ""),
        "compiled": bool(getattr(bundle, "compiled", False)),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "tasks": sections,
    }


# ---------------------------------------------------------------------------------------------- output
def markdown(report: dict) -> str:
    """The report as Markdown: one table per workload, then the time per component of its profiled run."""
    mode = "compiled" if report.get("compiled") else "eager"
    lines = [f"model `{report['model']}` on {report['device']} ({report['dtype']}, {mode}, torch {report['torch']}, "
             f"{report['threads']} threads)"]
    for name, section in report["tasks"].items():
        lines.append("")
        inp = section["inputs"]
        if section["task"] == "t2i":
            lines.append(f"**text-to-image** — {len(inp['prompts'])} prompt(s), steps {inp['steps'] or 'default'}, "
                         f"median of {section['repeats']} interleaved runs")
            lines.append("")
            lines.append("| config | median s (min–max) | × none | × exact | evals | FLOP ratio | ×/FLOP ratio | "
                         "peak MiB | rel-L2 | PSNR dB | SSIM |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in section["rows"]:
                f = r.get("fidelity", {})
                lines.append(f"| {r['config']} | {_s(r)} | {_x(r, 'speedup_vs_none')} | {_x(r, 'speedup_vs_exact')} "
                             f"| {r['evaluations']} | {_x(r, 'flop_ratio_vs_none')} | "
                             f"{_x(r, 'speedup_per_flop_ratio')} | {r['peak_memory_bytes'] / 2**20:.0f} | "
                             f"{_f(f.get('latent_rel_l2'), 4)} | {_f(f.get('psnr_db'), 1)} | {_f(f.get('ssim'), 3)} |")
        else:
            what = (f"short answers (≤ {inp['max_new_tokens']} tokens, eos honoured)" if not inp["ignore_eos"]
                    else f"long answers ({inp['max_new_tokens']} tokens, eos ignored)")
            lines.append(f"**understanding, {what}** — {inp['images']} image/question pair(s), median of "
                         f"{section['repeats']} interleaved runs; × official loop: against upstream's cache-less "
                         "decoding (the paper's baseline)")
            lines.append("")
            lines.append("| config | median s (min–max) | × none | × official loop | prefill s | decode tok/s | "
                         "answer tokens | kept/prompt tokens | acceptance | FLOP ratio | peak MiB | exact match | "
                         "token agreement |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in section["rows"]:
                f = r.get("fidelity", {})
                kept = f"{sum(r['kept_tokens'])}/{sum(r['prompt_tokens'])}" if sum(r["prompt_tokens"]) else "–"
                lines.append(f"| {r['config']} | {_s(r)} | {_x(r, 'speedup_vs_none')} | "
                             f"{_x(r, 'speedup_vs_official_loop')} | {_f(r.get('prefill_s'), 3)} | "
                             f"{_f(r.get('decode_tokens_per_s'), 1)} | {r['answer_tokens']:.1f} | {kept} | "
                             f"{_f(r.get('acceptance_rate'), 2)} | {_x(r, 'flop_ratio_vs_none')} | "
                             f"{r['peak_memory_bytes'] / 2**20:.0f} | {_f(f.get('exact_match'), 2)} | "
                             f"{_f(f.get('token_agreement'), 2)} |")
        profiled = [r for r in section["rows"] if "components_s" in r]
        if profiled:
            lines.append("")
            lines.append(f"time per component in one profiled run of `{name}`, s (the profiler slows a run: its own "
                         "total is the last column; the components and `other` add up to it)")
            lines.append("")
            lines.append("| config | " + " | ".join((*COMPONENTS, "other", "total")) + " |")
            lines.append("|---|" + "---|" * (len(COMPONENTS) + 2))
            for r in profiled:
                comp = r["components_s"]
                lines.append(f"| {r['config']} | " + " | ".join(f"{comp[c]:.2f}" for c in (*COMPONENTS, "other",
                                                                                              "total")) + " |")
    return "\n".join(lines)


def _s(row: dict) -> str:
    return f"{row['median_s']:.3f} ({row['min_s']:.3f}–{row['max_s']:.3f})"


def _f(value, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _x(row: dict, key: str) -> str:
    value = row.get(key)
    return "–" if value is None else f"{value:.2f}×"


def pyplot():
    """matplotlib's pyplot on the Agg backend, or one line naming the extra (called before any work)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FlashuError("--plot needs matplotlib: pip install 'flashu[plot]'") from None
    return plt


PSNR_CEILING = 60.0  # identical images (infinite PSNR; None in a strict-JSON report) are drawn at this height


def plot(report: dict, path: str) -> None:
    """Speed vs fidelity (left) and a per-component stacked bar (right), one row per task. Takes the raw report or
    its :func:`strict_json` form (where an infinite PSNR became None)."""
    plt = pyplot()
    tasks = list(report["tasks"].items())
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4.5 * len(tasks)), squeeze=False)
    for (task, section), (ax_speed, ax_comp) in zip(tasks, axes):
        rows = section["rows"]
        metric = "psnr_db" if section["task"] == "t2i" else "token_agreement"
        for r in rows:
            x = r.get("speedup_vs_none", 1.0)
            fidelity = r.get("fidelity", {})
            y = fidelity.get(metric, float("nan"))
            if y == float("inf") or (y is None and metric == "psnr_db" and metric in fidelity):
                y = PSNR_CEILING  # identical images: plot at a ceiling rather than off the chart
            elif y is None:
                y = float("nan")
            ax_speed.scatter([x], [y])
            ax_speed.annotate(r["config"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax_speed.set_xlabel("speedup vs none (×)")
        ax_speed.set_ylabel("PSNR vs none (dB)" if section["task"] == "t2i" else "token agreement vs none")
        ax_speed.set_title(f"{task}: speed vs fidelity")
        profiled = [r for r in rows if "components_s" in r]
        if profiled:
            bottom = [0.0] * len(profiled)
            labels = [r["config"] for r in profiled]
            for comp in (*COMPONENTS, "other"):
                values = [r["components_s"][comp] for r in profiled]
                ax_comp.bar(labels, values, bottom=bottom, label=comp)
                bottom = [b + v for b, v in zip(bottom, values)]
            ax_comp.set_ylabel("seconds (instrumented run)")
            ax_comp.set_title(f"{task}: time per component")
            ax_comp.legend(fontsize=8)
            ax_comp.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    from ..io.files import save_figure

    save_figure(fig, path, dpi=110)
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
