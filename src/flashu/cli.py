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
    from .loading import load_model
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
    from .images import load_image
    from .loading import load_model
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
    from .loading import load_model

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
    from .flops import model_report, render_report

    if model.lower() in PRESET_NAMES:
        cfg = preset(model)
    else:
        from .checkpoint import resolve_checkpoint_dir

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
