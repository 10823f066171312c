"""The ``flashu`` command line.

User errors (bad paths, presets, values, images…) print one ``error: …`` line on stderr and exit with status 2;
only bugs show a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path

import click

from .errors import FlashuError

EXIT_USER_ERROR = 2


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


def _err(message: str) -> None:
    click.echo(f"{message}", err=True)


model_option = click.option("--model", "-m", default="tiny", show_default=True,
                            help="Preset (tiny, small, 1.5b, 7b), local checkpoint directory or hub id.")
device_option = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto.")
dtype_option = click.option("--dtype", default="auto", show_default=True,
                            help="float32, bfloat16, float16 or auto (bf16 on CUDA, fp32 on CPU).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flashu")
def main() -> None:
    """flashu: task-aware acceleration of native unified multimodal models (Show-o2)."""
    _quiet_libraries()


accel_option = click.option(
    "--accel", default="none", show_default=True,
    help="none | exact (lossless trims) | paper | plus | an ablation preset (see 'flashu accel-presets').")
accel_config_option = click.option("--accel-config", type=click.Path(path_type=Path), default=None,
                                   help="FlashU config JSON (overrides --accel presets).")
scores_option = click.option("--scores", "scores_files", multiple=True, type=click.Path(path_type=Path),
                             help="Importance scores from 'flashu calibrate' (repeat for t2i and mmu). "
                                  "Without them, FlashU calibrates on the fly.")


def _apply_acceleration(bundle, accel: str, accel_config: Path | None, scores_files, task: str):
    """Accelerate ``bundle`` for ``task`` as asked; returns the explicit policy for 'none'/'exact' or None."""
    from .accel.api import accelerate
    from .accel.config import FlashUConfig, accel_preset
    from .accel.importance import ImportanceScores

    if accel_config is None and accel in ("none", "exact"):
        if task == "t2i":
            from .pipelines.t2i import BaselinePolicy

            return BaselinePolicy(exact=accel == "exact")
        from .pipelines.mmu import BaselineUnderstanding

        return BaselineUnderstanding()
    cfg = FlashUConfig.from_file(accel_config) if accel_config else accel_preset(accel)
    # Only the requested task's techniques: no calibration for the other one.
    if task == "t2i":
        cfg.understanding = None
    else:
        cfg.generation = None
    scores = {}
    for path in scores_files:
        item = ImportanceScores.load(path)
        scores[item.task] = item
    accelerate(bundle, cfg, scores=scores)
    return None


@main.command()
@model_option
@click.option("--prompt", "-p", "prompts", multiple=True, required=True, help="Text prompt (repeat for a batch).")
@click.option("--steps", type=int, default=None, help="Grid points N (N - 1 evaluations). Default: the model's.")
@click.option("--guidance", type=float, default=None, help="CFG scale (0 disables CFG). Default: the model's.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=int, default=None, help="Image size in pixels. Default: the model's.")
@click.option("--out", "-o", type=click.Path(dir_okay=True, path_type=Path), default=Path("flashu.png"),
              show_default=True, help="Output PNG (with several prompts: a directory, or NAME-i.png).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@accel_option
@accel_config_option
@scores_option
@device_option
@dtype_option
def generate(model, prompts, steps, guidance, seed, size, out, progress, accel, accel_config, scores_files,
             device, dtype):
    """Generate images from text prompts."""
    from .io.loading import load_model
    from .pipelines.t2i import generate as run, validate_prompts

    validate_prompts(list(prompts))
    bundle = load_model(model, dtype=dtype, device=device)
    policy = _apply_acceleration(bundle, accel, accel_config, scores_files, "t2i")
    result = run(bundle, list(prompts), steps=steps, guidance=guidance, seed=seed, image_size=size,
                 progress=progress, policy=policy)
    paths = _output_paths(out, len(result.images))
    for image, path in zip(result.images, paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    denoise = result.timings["denoise"]
    click.echo(f"wrote {', '.join(str(p) for p in paths)}")
    click.echo(f"evaluations: {result.evaluations}  denoise: {denoise:.2f}s "
               f"({1000 * denoise / max(result.evaluations, 1):.1f} ms/eval)  "
               f"decode: {result.timings.get('decode', 0.0):.2f}s")
    stats = {k: v for k, v in result.stats.items() if k not in ("guidance", "skip_sets")}
    if stats:
        click.echo("acceleration: " + "  ".join(f"{k}={v}" for k, v in stats.items()))


def _write_report(text: str, data: dict, json_out: Path | None, plot_out: Path | None, plot_fn) -> None:
    """Print a command's markdown report; optionally write its JSON and its figure."""
    click.echo(text)
    if json_out:
        json_out.write_text(json.dumps(data, indent=2))
        click.echo(f"wrote {json_out}")
    if plot_out:
        plot_fn(data, str(plot_out))
        click.echo(f"wrote {plot_out}")


def _output_paths(out: Path, count: int) -> list[Path]:
    if count == 1 and out.suffix:
        return [out]
    if out.suffix:
        return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(count)]
    return [out / f"image-{i}.png" for i in range(count)]


@main.command()
@model_option
@click.option("--image", "-i", "image", required=True, help="Image file.")
@click.option("--question", "-q", required=True, help="Question about the image.")
@click.option("--max-new-tokens", type=int, default=300, show_default=True)
@accel_option
@accel_config_option
@scores_option
@device_option
@dtype_option
def ask(model, image, question, max_new_tokens, accel, accel_config, scores_files, device, dtype):
    """Answer a question about an image."""
    from .io.images import load_image
    from .io.loading import load_model
    from .pipelines.mmu import answer

    if not question.strip():
        raise FlashuError("empty question: ask something about the image")
    if max_new_tokens <= 0:
        raise FlashuError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    picture = load_image(image)  # fail on a bad image before loading the model
    bundle = load_model(model, dtype=dtype, device=device)
    policy = _apply_acceleration(bundle, accel, accel_config, scores_files, "mmu")
    result = answer(bundle, picture, question, max_new_tokens=max_new_tokens, policy=policy)
    click.echo(result.text)
    t = result.timings
    _err(f"encode: {t['encode'] * 1000:.1f} ms  prefill: {t['prefill'] * 1000:.1f} ms "
         f"({result.prompt_tokens} tokens, {result.kept_tokens} kept)  "
         f"decode: {len(result.token_ids)} tokens, {result.decode_tokens_per_s:.1f} tok/s")
    stats = {k: v for k, v in result.stats.items() if not isinstance(v, (list, dict))}
    if stats:
        _err("acceleration: " + "  ".join(f"{k}={v}" for k, v in stats.items()))


@main.command()
@model_option
@click.option("--task", type=click.Choice(["t2i", "mmu"]), required=True,
              help="t2i: generation prompts; mmu: image + question pairs.")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="t2i: text file, one prompt per line (default: flashu's calibration prompts).")
@click.option("--data", "pairs_file", type=click.Path(path_type=Path), default=None,
              help='mmu: JSONL of {"image": path, "question": text} (default: generated shapes-world pairs).')
@click.option("--samples", type=int, default=20, show_default=True)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Output .safetensors file.")
@device_option
@dtype_option
def calibrate(model, task, prompts_file, pairs_file, samples, out, device, dtype):
    """Compute task-specific Wanda importance scores for FlashU pruning."""
    from .accel.calibration import calibrate as run, read_pairs, read_prompts
    from .io.loading import load_model

    if samples <= 0:
        raise FlashuError(f"--samples must be positive, got {samples}")
    prompts = read_prompts(prompts_file) if prompts_file else None
    pairs = read_pairs(pairs_file) if pairs_file else None
    bundle = load_model(model, dtype=dtype, device=device)
    scores = run(bundle, task, samples=samples, prompts=prompts, pairs=pairs)
    path = scores.save(out)
    click.echo(f"wrote {path} ({scores.samples} samples, {scores.tokens} tokens, task {task})")


@main.command("accel-presets")
def accel_presets():
    """List the FlashU presets and print their JSON (a starting point for --accel-config)."""
    from .accel.config import PRESET_NAMES, accel_preset

    for name in PRESET_NAMES:
        click.echo(f"--- {name}")
        click.echo(accel_preset(name).to_json())


@main.command()
@model_option
@click.option("--steps", type=int, default=None, help="Grid points for the per-image totals.")
@click.option("--question-tokens", type=int, default=6, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def info(model, steps, question_tokens, as_json):
    """Parameters and FLOPs per component, per denoising step and per understanding query."""
    from .config import PRESET_NAMES, load_config_file, preset
    from .observe.flops import model_report, render_report

    if model.lower() in PRESET_NAMES:
        cfg = preset(model)
    else:
        from .io.checkpoint import resolve_checkpoint_dir

        directory = resolve_checkpoint_dir(model)
        if not (directory / "config.json").is_file():
            raise FlashuError(f"{directory} has no config.json; it is not a Show-o2 checkpoint directory")
        cfg = load_config_file(directory / "config.json")
    steps = cfg.default_steps if steps is None else steps
    if steps < 2:
        raise FlashuError(f"--steps must be at least 2, got {steps}")
    report = model_report(cfg, steps=steps, question_tokens=question_tokens)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render_report(report))


@main.command()
@model_option
@click.option("--task", type=click.Choice(["t2i", "mmu", "both"]), default="both", show_default=True)
@click.option("--configs", default="none,exact,paper,plus", show_default=True,
              help="Comma-separated: none, exact, FlashU presets, PRESET:SECTION.FIELD=VALUE overrides.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Timed interleaved rounds.")
@click.option("--steps", type=int, default=None, help="t2i grid points (default: the model's).")
@click.option("--guidance", type=float, default=None, help="t2i CFG scale (default: the model's).")
@click.option("--prompt", "prompts", multiple=True, help="t2i prompt (repeatable; default: two built-in prompts).")
@click.option("--image", "images", multiple=True, help="mmu image (repeatable, with --question).")
@click.option("--question", "questions", multiple=True, help="mmu question (repeatable).")
@click.option("--max-new-tokens", type=int, default=32, show_default=True, help="mmu tokens decoded (eos ignored).")
@click.option("--calibration-samples", type=int, default=20, show_default=True)
@click.option("--instrument/--no-instrument", default=True, show_default=True,
              help="Extra run per config for time per component and executed FLOPs.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the report (JSON).")
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), default=None, help="Write a PNG figure.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@device_option
@dtype_option
def bench(model, task, configs, repeats, steps, guidance, prompts, images, questions, max_new_tokens,
          calibration_samples, instrument, json_out, plot_out, progress, device, dtype):
    """Speed, FLOPs, memory and fidelity of configurations side by side (interleaved, median of repeats)."""
    from .observe.bench import TaskInputs, markdown, parse_config, plot, run_benchmark, split_configs
    from .io.images import load_image
    from .io.loading import load_model

    tasks = ["t2i", "mmu"] if task == "both" else [task]
    specs = split_configs(configs)
    for t in tasks:
        for spec in specs:
            parse_config(spec, t)  # fail on a bad name before loading anything
    if repeats < 1:
        raise FlashuError(f"--repeats must be at least 1, got {repeats}")
    if len(images) != len(questions) and images:
        raise FlashuError("give one --question per --image")
    inputs = TaskInputs(steps=steps, guidance=guidance, max_new_tokens=max_new_tokens)
    if prompts:
        inputs.prompts = list(prompts)
    if images:
        inputs.images = [load_image(i) for i in images]
        inputs.questions = list(questions)
    elif questions:
        inputs.questions = list(questions)
    bundle = load_model(model, dtype=dtype, device=device)
    report = run_benchmark(bundle, tasks, specs, repeats=repeats, inputs=inputs,
                           calibration_samples=calibration_samples, instrument=instrument, progress=progress)
    _write_report(markdown(report), report, json_out, plot_out, plot)


# ---------------------------------------------------------------------------- flashu eval testbed (issue 6)
@main.group("eval")
def eval_group():
    """Quality evaluation (accuracy and speed)."""


@eval_group.command("testbed")
@click.option("--model", "-m", default="testbed", show_default=True,
              help="The shipped testbed, a save_pretrained directory, or a training run directory.")
@click.option("--accel", "accels", multiple=True, default=("none",), show_default=True,
              help="none | exact | a FlashU preset | a FlashU config JSON (repeat to compare).")
@click.option("--n-gen", type=int, default=100, show_default=True, help="Test captions to generate.")
@click.option("--n-mmu", type=int, default=200, show_default=True, help="Test questions to answer.")
@click.option("--split", type=click.Choice(["test", "test_heldout", "validation"]), default="test",
              show_default=True)
@click.option("--steps", type=int, default=None, help="Grid points (default: the model's).")
@click.option("--guidance", type=float, default=None, help="CFG scale (default: the model's).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=10, show_default=True, help="Prompts per generate call.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None, help="Write the reports here.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def eval_testbed(model, accels, n_gen, n_mmu, split, steps, guidance, seed, batch_size, json_out, progress):
    """Generation and understanding accuracy on the shapes world, per acceleration config, with speed."""
    from .testbed.evaluate import evaluate_many, format_reports, load_testbed, resolve_accel, write_json

    for accel in accels:
        resolve_accel(accel)  # fail on an unknown preset before loading anything
    bundle = load_testbed(model)
    reports = evaluate_many(bundle, list(accels), n_gen=n_gen, n_mmu=n_mmu, split=split, steps=steps,
                            guidance=guidance, seed=seed, batch_size=batch_size, progress=progress)
    click.echo(format_reports(reports))
    if json_out:
        click.echo(f"wrote {write_json(reports, json_out)}")


@main.command()
@click.option("--model", "-m", default="testbed", show_default=True,
              help="The shipped testbed (default), a save_pretrained directory or a training run.")
@click.option("--configs", default="none,paper,plus", show_default=True)
@click.option("--images", "n_gen", type=int, default=8, show_default=True, help="Test captions to generate.")
@click.option("--questions", "n_mmu", type=int, default=24, show_default=True, help="Test questions to answer.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("flashu-demo.png"), show_default=True,
              help="Image grid: one column per configuration.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def demo(model, configs, n_gen, n_mmu, out, progress):
    """Baseline vs FlashU on the trained shapes-world testbed, offline: accuracy, speed and an image grid."""
    from .observe.bench import split_configs
    from .testbed.demo import run_demo

    result = run_demo(model, split_configs(configs), n_gen=n_gen, n_mmu=n_mmu, out=out, progress=progress)
    click.echo(result["table"])
    click.echo(f"wrote {result['grid']}")


# ---------------------------------------------------------------------------- flashu eval t2i / mmu, analyze
@eval_group.command("t2i")
@model_option
@click.option("--prompts", "prompts_source", required=True, type=click.Path(path_type=Path),
              help="Plain text (one prompt per line), DPG-Bench prompts (folder of .txt, JSON or CSV) or "
                   "GenEval metadata JSONL.")
@click.option("--configs", default="none,paper", show_default=True)
@click.option("--out", "-o", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--steps", type=int, default=None)
@click.option("--guidance", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--samples-per-prompt", type=int, default=None, help="Default: 1 (text), 4 (DPG-Bench, GenEval).")
@click.option("--limit", type=int, default=None, help="Only the first N prompts.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@device_option
@dtype_option
def eval_t2i_command(model, prompts_source, configs, out_dir, steps, guidance, seed, samples_per_prompt, limit,
                     progress, device, dtype):
    """Write images per configuration in the layout external scorers expect (resumable; torchrun-shardable)."""
    from .observe import distributed
    from .observe.evaluation import eval_t2i, read_t2i_prompts
    from .io.loading import load_model

    read_t2i_prompts(prompts_source)  # fail on a bad prompt file before loading anything
    shard = distributed.init()
    try:
        bundle = load_model(model, dtype=dtype, device=device or shard.device())
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
@click.option("--configs", default="none,paper", show_default=True)
@click.option("--out", "-o", "out_dir", type=click.Path(path_type=Path), required=True)
@click.option("--max-new-tokens", type=int, default=32, show_default=True)
@click.option("--limit", type=int, default=None)
@click.option("--progress/--no-progress", default=True, show_default=True)
@device_option
@dtype_option
def eval_mmu_command(model, data_jsonl, configs, out_dir, max_new_tokens, limit, progress, device, dtype):
    """Answer accuracy per configuration (resumable; torchrun-shardable)."""
    from .observe import distributed
    from .observe.evaluation import eval_mmu, read_mmu_data
    from .io.loading import load_model

    read_mmu_data(data_jsonl)
    shard = distributed.init()
    try:
        bundle = load_model(model, dtype=dtype, device=device or shard.device())
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
@click.option("--top-fraction", type=float, default=0.5, show_default=True)
@click.option("--no-loo", is_flag=True, help="Skip the leave-one-out squared-error importance.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None)
@click.option("--plot", "plot_out", type=click.Path(path_type=Path), default=None)
@click.option("--progress/--no-progress", default=True, show_default=True)
@device_option
@dtype_option
def analyze_specialization(model, samples, top_fraction, no_loo, json_out, plot_out, progress, device, dtype):
    """Per-layer FFN neuron importance per task, top-k overlap (paper Figure 1), cos-similarity profiles."""
    from .observe.analysis import markdown, plot_specialization, specialization
    from .io.loading import load_model

    if samples <= 0:
        raise FlashuError(f"--samples must be positive, got {samples}")
    if not 0 < top_fraction <= 1:
        raise FlashuError(f"--top-fraction must be in (0, 1], got {top_fraction}")
    bundle = load_model(model, dtype=dtype, device=device)
    result = specialization(bundle, samples=samples, top_fraction=top_fraction, loo=not no_loo, progress=progress)
    _write_report(markdown(result), result, json_out, plot_out, plot_specialization)


def run(argv: list[str] | None = None) -> int:
    """Entry point: click in non-standalone mode so every user error becomes one line and exit status 2."""
    try:
        main.main(args=argv, prog_name="flashu", standalone_mode=False)
    except click.exceptions.Abort:
        _err("aborted")
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        hint = f" (see 'flashu {exc.ctx.command.name} --help')" if exc.ctx and exc.ctx.command.name != "main" else \
            " (see 'flashu --help')"
        _err(f"error: {exc.format_message()}{hint}")
        return EXIT_USER_ERROR
    except click.ClickException as exc:
        _err(f"error: {exc.format_message()}")
        return EXIT_USER_ERROR
    except FlashuError as exc:
        _err(f"error: {exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    return 0


def entry() -> None:
    sys.exit(run())


if __name__ == "__main__":
    entry()
