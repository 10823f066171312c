"""Commands that measure: ``bench``, ``eval testbed|t2i|mmu``, ``demo``, ``analyze specialization``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import FlashuError
from .common import (
    _accel_list,
    _check_limit,
    _check_steps_seed,
    _finite,
    _load,
    _positive,
    _specs,
    device_option,
    dtype_option,
    main,
    model_option,
    progress_option,
)


# ---------------------------------------------------------------------------------------------------- bench
@main.command()
@model_option
@click.option("--task", type=click.Choice(["t2i", "mmu", "both"]), default="both", show_default=True,
              help="Which task to benchmark.")
@_accel_list("none,exact,paper,plus")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed interleaved rounds.")
@click.option("--steps", type=int, default=None, help="t2i grid points (default: the model's).")
@click.option("--guidance", type=float, default=None, help="t2i CFG scale (default: the model's).")
@click.option("--prompt", "prompts", multiple=True, help="t2i prompt (repeatable; default: two built-in prompts).")
@click.option("--image", "images", multiple=True, help="mmu image (repeatable, with --question).")
@click.option("--question", "questions", multiple=True, help="mmu question (repeatable).")
@click.option("--max-new-tokens", type=int, default=32, show_default=True,
              help="Length of the long-answer mmu workload (eos ignored).")
@click.option("--mmu-workloads", default="short,long", show_default=True,
              help="Understanding workloads: short (<= 2 tokens, eos honoured: the paper's latency protocol) and/or "
                   "long (--max-new-tokens forced tokens).")
@click.option("--official-loop/--no-official-loop", default=True, show_default=True,
              help="Also time upstream's cache-less decoding loop (the paper's understanding baseline).")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile the model first (every configuration compiled: never mixed with eager).")
@click.option("--calibration-samples", type=int, default=20, show_default=True, help="Calibration items per task.")
@click.option("--instrument/--no-instrument", default=True, show_default=True,
              help="Extra runs per config for time per component and executed FLOPs.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the report (JSON).")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), default=None, help="Write a PNG figure.")
@progress_option
@device_option
@dtype_option
def bench(model, task, accels, configs_alias, repeats, steps, guidance, prompts, images, questions, max_new_tokens,
          mmu_workloads, official_loop, compile_model, calibration_samples, instrument, json_out, plot_out, progress,
          device, dtype):
    """Speed, FLOPs, memory and fidelity of configurations side by side (interleaved, median of repeats)."""
    from ..accel.spec import resolve_accel
    from ..io.paths import check_text, writable_file

    tasks = ["t2i", "mmu"] if task == "both" else [task]
    specs = _specs(accels, configs_alias, "none,exact,paper,plus")
    for t in tasks:
        for spec in specs:
            resolve_accel(spec, t)  # fail on a bad spec before loading anything
    if repeats < 1:
        raise FlashuError(f"--repeats must be at least 1, got {repeats}")
    if calibration_samples < 1:
        raise FlashuError(f"--calibration-samples must be at least 1, got {calibration_samples}")
    if images and len(images) != len(questions):
        raise FlashuError("give one --question per --image")
    chosen = tuple(w.strip() for w in mmu_workloads.split(",") if w.strip())
    if not chosen or set(chosen) - {"short", "long"}:
        raise FlashuError(f"--mmu-workloads takes short and/or long, got {mmu_workloads!r}")
    if max_new_tokens < 1:
        raise FlashuError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    for text in (*prompts, *questions):
        check_text(text, "prompt/question")
    _check_steps_seed(steps, 0)
    _finite(guidance, "--guidance")
    if json_out:
        writable_file(json_out, "--json", (".json",))
    if plot_out:
        writable_file(plot_out, "--plot", (".png",))
    from ..io.images import load_image
    from ..observe.bench import TaskInputs, markdown, plot, pyplot, run_benchmark, strict_json

    if plot_out:
        pyplot()  # a missing matplotlib is said before the benchmark, not after it

    inputs = TaskInputs(steps=steps, guidance=guidance, max_new_tokens=max_new_tokens)
    if prompts:
        inputs.prompts = list(prompts)
    if images:
        inputs.images = [load_image(i) for i in images]
        inputs.questions = list(questions)
    elif questions:
        inputs.questions = list(questions)
    bundle = _load(model, device, dtype)
    if compile_model:
        from ..compiled import compile as compile_bundle

        compile_bundle(bundle)
    report = run_benchmark(bundle, task, specs, repeats=repeats, inputs=inputs, mmu_workloads=chosen,
                           official_loop=official_loop, calibration_samples=calibration_samples,
                           instrument=instrument, progress=progress)
    _write_report(markdown(report), strict_json(report), json_out, plot_out, plot)


def _write_report(text: str, data: dict, json_out: Path | None, plot_out: Path | None, plot_fn) -> None:
    """Print a command's markdown report; then write its JSON and its figure (paths checked before the work)."""
    click.echo(text)
    from ..io.files import write_json

    if json_out:
        write_json(json_out, data, allow_nan=False)
        click.echo(f"wrote {json_out}")
    if plot_out:
        plot_fn(data, str(plot_out))
        click.echo(f"wrote {plot_out}")


# ---------------------------------------------------------------------------------------------------- eval / demo
@main.group("eval")
def eval_group():
    """Quality evaluation (accuracy and speed)."""


@eval_group.command("testbed")
@click.option("--model", "-m", default="testbed", show_default=True,
              help="The shipped testbed, a save_pretrained directory, or a training run directory.")
@_accel_list("none")
@click.option("--n-gen", type=int, default=100, show_default=True, help="Test captions to generate.")
@click.option("--n-mmu", type=int, default=200, show_default=True, help="Test questions to answer.")
@click.option("--split", type=click.Choice(["test", "test_heldout", "validation"]), default="test",
              show_default=True, help="Which split of the world to evaluate on.")
@click.option("--steps", type=int, default=None, help="Grid points (default: the model's).")
@click.option("--guidance", type=float, default=None, help="CFG scale (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first batch's noise.")
@click.option("--batch-size", type=int, default=10, show_default=True, help="Prompts per generate call.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the reports here.")
@progress_option
@device_option
@dtype_option
def eval_testbed(model, accels, configs_alias, n_gen, n_mmu, split, steps, guidance, seed, batch_size, json_out,
                 progress, device, dtype):
    """Generation and understanding accuracy on the testbed's worlds, per acceleration config, with speed."""
    from ..io.paths import writable_file

    accels = _specs(accels, configs_alias, "none")  # fail on an unknown preset before loading anything
    _check_steps_seed(steps, seed)
    _finite(guidance, "--guidance")
    if json_out:
        writable_file(json_out, "--json", (".json",))
    from ..testbed.evaluate import evaluate_many, format_reports, load_testbed, write_json

    bundle = load_testbed(model, device=device, dtype=dtype)
    reports = evaluate_many(bundle, list(accels), n_gen=n_gen, n_mmu=n_mmu, split=split, steps=steps,
                            guidance=guidance, seed=seed, batch_size=batch_size, progress=progress)
    click.echo(format_reports(reports))
    if json_out:
        click.echo(f"wrote {write_json(reports, json_out)}")


@main.command()
@click.option("--model", "-m", default="testbed", show_default=True,
              help="The shipped testbed (default), a save_pretrained directory or a training run.")
@_accel_list("none,paper,plus")
@click.option("--images", "n_gen", type=int, default=8, show_default=True, help="Test captions to generate.")
@click.option("--questions", "n_mmu", type=int, default=24, show_default=True, help="Test questions to answer.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("flashu-demo.png"), show_default=True,
              help="Image grid: one column per configuration.")
@progress_option
@device_option
@dtype_option
def demo(model, accels, configs_alias, n_gen, n_mmu, out, progress, device, dtype):
    """Baseline vs FlashU on the trained testbed, offline: accuracy, speed and an image grid."""
    from ..io.paths import writable_file

    specs = _specs(accels, configs_alias, "none,paper,plus")
    writable_file(out, "--out", (".png",))
    from ..testbed.demo import run_demo

    result = run_demo(model, specs, n_gen=n_gen, n_mmu=n_mmu, out=out, progress=progress, echo=click.echo,
                      device=device, dtype=dtype)
    click.echo(f"wrote {result['grid']}")


@eval_group.command("t2i")
@model_option
@click.option("--prompts", "prompts_source", required=True, type=click.Path(path_type=Path),
              help="Plain text (one prompt per line), DPG-Bench prompts (folder of .txt, JSON or CSV) or "
                   "GenEval metadata JSONL.")
@_accel_list("none,paper")
@click.option("--out", "-o", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output directory (one folder per configuration).")
@click.option("--steps", type=int, default=None, help="Grid points (default: the model's).")
@click.option("--guidance", type=float, default=None, help="CFG scale (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True, help="Item i is generated with seed SEED + i.")
@click.option("--samples-per-prompt", type=int, default=None, help="Default: 1 (text), 4 (DPG-Bench, GenEval).")
@click.option("--limit", type=int, default=None, help="Only the first N prompts.")
@progress_option
@device_option
@dtype_option
def eval_t2i_command(model, prompts_source, accels, configs_alias, out_dir, steps, guidance, seed, samples_per_prompt, limit,
                     progress, device, dtype):
    """Write images per configuration in the layout external scorers expect (resumable; torchrun-shardable)."""
    from ..io.paths import writable_dir

    _check_steps_seed(steps, seed)
    _finite(guidance, "--guidance")
    _check_limit(limit)
    configs = _specs(accels, configs_alias, "none,paper")
    writable_dir(out_dir, "--out")
    from ..loading import load_model
    from ..observe import distributed
    from ..observe.evaluation import eval_t2i, read_t2i_prompts

    read_t2i_prompts(prompts_source)  # fail on a bad prompt file before loading anything
    shard = distributed.init()
    try:
        bundle = load_model(model, dtype=dtype, device=device if device != "auto" else shard.device())
        report = eval_t2i(bundle, prompts_source, configs, out_dir, steps=steps, guidance=guidance, seed=seed,
                          samples_per_prompt=samples_per_prompt, limit=limit, shard=shard,
                          progress=progress and shard.is_main)
    finally:
        distributed.shutdown()
    if shard.is_main:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "items"}, indent=2, default=str))


@eval_group.command("mmu")
@model_option
@click.option("--data", "data_jsonl", required=True, type=click.Path(path_type=Path),
              help='JSONL of {"image": path, "question": text, "answer": text}.')
@_accel_list("none,paper")
@click.option("--out", "-o", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output directory (one folder per configuration).")
@click.option("--max-new-tokens", type=int, default=32, show_default=True, help="Most answer tokens to decode.")
@click.option("--limit", type=int, default=None, help="Only the first N items.")
@progress_option
@device_option
@dtype_option
def eval_mmu_command(model, data_jsonl, accels, configs_alias, out_dir, max_new_tokens, limit, progress, device,
                     dtype):
    """Answer accuracy per configuration (resumable; torchrun-shardable)."""
    from ..io.paths import writable_dir

    _check_limit(limit)
    configs = _specs(accels, configs_alias, "none,paper")
    writable_dir(out_dir, "--out")
    from ..loading import load_model
    from ..observe import distributed
    from ..observe.evaluation import eval_mmu, read_mmu_data

    read_mmu_data(data_jsonl)
    shard = distributed.init()
    try:
        bundle = load_model(model, dtype=dtype, device=device if device != "auto" else shard.device())
        report = eval_mmu(bundle, data_jsonl, configs, out_dir, max_new_tokens=max_new_tokens, limit=limit,
                          shard=shard, progress=progress and shard.is_main)
    finally:
        distributed.shutdown()
    if shard.is_main:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "items"}, indent=2, default=str))


@main.group("analyze")
def analyze_group():
    """Analyses of a unified model."""


@analyze_group.command("specialization")
@model_option
@click.option("--samples", type=int, default=20, show_default=True, help="Prompts and image/question pairs.")
@click.option("--top-fraction", type=float, default=0.5, show_default=True,
              help="Share of each layer's neurons counted as a task's top set.")
@click.option("--no-loo", is_flag=True, help="Skip the leave-one-out squared-error importance.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the result (JSON).")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), default=None, help="Write a PNG figure.")
@progress_option
@device_option
@dtype_option
def analyze_specialization(model, samples, top_fraction, no_loo, json_out, plot_out, progress, device, dtype):
    """Per-layer FFN neuron importance per task, top-k overlap (paper Figure 1), cos-similarity profiles."""
    from ..io.paths import writable_file

    _positive(samples, "--samples")
    if not 0 < top_fraction <= 1:
        raise FlashuError(f"--top-fraction must be in (0, 1], got {top_fraction}")
    if json_out:
        writable_file(json_out, "--json", (".json",))
    if plot_out:
        writable_file(plot_out, "--plot", (".png",))
        from ..observe.bench import pyplot

        pyplot()  # before the work
    from ..observe.analysis import markdown, plot_specialization, specialization

    bundle = _load(model, device, dtype)
    result = specialization(bundle, samples=samples, top_fraction=top_fraction, loo=not no_loo, progress=progress)
    _write_report(markdown(result), result, json_out, plot_out, plot_specialization)
