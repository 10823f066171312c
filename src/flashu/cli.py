"""The ``flashu`` command line.

User errors (bad paths, specs, values, images…) print one ``error: …`` line on stderr and exit with status 2; only
bugs show a traceback. Warnings print as ``warning: …`` lines. Heavy libraries (torch, transformers, diffusers) are
imported inside the commands, so ``flashu --help`` starts at once. Output paths are checked before any work.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path

import click

from .errors import FlashuError, Terminated, out_of_memory_message

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM), as a shell reports a job its scheduler stopped
DEFAULT_MODEL = "testbed"
MODEL_HELP = ("testbed (the trained model shipped with flashu), tiny/small/small-7b/1.5b/7b (random weights, for "
              "speed), a local checkpoint directory or a hub id (owner/name).")
MAX_STEPS = 10_000
MAX_SEED = 2**63 - 1


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _err(message: str) -> None:
    click.echo(message, err=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one ``warning: …`` line each (flashu's own and the libraries' user-facing ones)."""
    _err(f"warning: {str(message).strip().splitlines()[0] if str(message).strip() else category.__name__}")


model_option = click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help=MODEL_HELP)
device_option = click.option("--device", default="auto", show_default=True,
                             help="cpu, cuda, cuda:N or auto (CUDA when available).")
dtype_option = click.option("--dtype", default="auto", show_default=True,
                            help="float32, bfloat16, float16 or auto (bf16 on CUDA, fp32 on CPU).")
progress_option = click.option("--progress/--no-progress", default=True, show_default=True,
                               help="Progress bars on stderr.")
tokenizer_option = click.option("--tokenizer", "tokenizer_dir", default=None,
                                help="Directory or hub id (e.g. Qwen/Qwen2.5-1.5B-Instruct) with the tokenizer files, "
                                     "instead of the checkpoint's or its llm_model_path.")
compile_option = click.option("--compile", "compile_model", is_flag=True,
                              help="torch.compile the model's forward pieces (fullgraph) before running.")
vae_option = click.option("--vae", "vae_dir", default=None,
                          help="Directory or hub id with the VAE weights (Wan2.1_VAE.pth, a diffusers vae/ folder or "
                               "vae.safetensors) instead of the checkpoint's or Wan-AI/Wan2.1-T2V-14B; none: no VAE.")


def _accel_list(default: str):
    """``--accel`` for commands that compare configurations: a comma list and/or repeated (``--accel none,paper``
    = ``--accel none --accel paper``); ``--configs`` is a hidden alias kept for older scripts. The command gets
    ``accels``, a list of specs (:func:`_specs`)."""
    from .accel.spec import SPEC_HELP  # light module: no torch

    def decorate(func):
        func = click.option("--configs", "configs_alias", multiple=True, hidden=True,
                            help="Alias of --accel.")(func)
        return click.option("--accel", "accels", multiple=True, default=(), show_default=default,
                            help=f"Configurations to compare: a comma list and/or the option repeated; each "
                                 f"{SPEC_HELP}.")(func)
    decorate.default = default
    return decorate


def _specs(accels, alias, default: str) -> list[str]:
    """The configuration list of ``--accel``/``--configs`` (default when neither is given), each spec validated
    before anything is loaded."""
    from .accel.spec import resolve_accel, split_specs

    texts = [*alias, *accels] or [default]
    specs = [spec for text in texts for spec in split_specs(text)]
    if not specs:
        raise FlashuError("--accel names no configuration")
    for spec in specs:
        resolve_accel(spec)
    return specs


def _accel_options(func):
    from .accel.spec import SPEC_HELP  # light module: no torch

    func = click.option("--scores", "scores_files", multiple=True, type=click.Path(path_type=Path),
                        help="Importance scores for this command's task, from 'flashu calibrate --task t2i' "
                             "(generate) or '--task mmu' (ask); without them FlashU uses its calibration cache or "
                             "calibrates once.")(func)
    return click.option("--accel", default="none", show_default=True,
                        help=f"Acceleration (one configuration; 'flashu bench --accel a,b' compares several): "
                             f"{SPEC_HELP}.")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="flashu", message="flashu %(version)s")
def main() -> None:
    """flashu: task-aware acceleration of native unified multimodal models (Show-o2)."""
    _quiet_libraries()


def _load(model: str, device: str, dtype: str, tokenizer=None, vae=None, progress: bool = True):
    from .io.loading import load_model

    return load_model(model, dtype=dtype, device=device, tokenizer=tokenizer, vae=vae, progress=progress)


def _scores(files, task: str) -> dict:
    from .accel.importance import ImportanceScores

    scores = {}
    for path in files:
        item = ImportanceScores.load(path)
        if item.task != task:  # would be ignored, and the task calibrated anyway
            raise FlashuError(f"--scores {path} holds {item.task} importance scores; this command needs {task} "
                              f"scores ('flashu calibrate --task {task}')")
        if item.task in scores:
            raise FlashuError(f"two --scores files for task {item.task}; give at most one per task")
        scores[item.task] = item
    return scores


def _compile_and_warm_up(bundle, work) -> None:
    """``--compile``: compile, then run ``work`` once untimed so that the reported timings are the compiled
    model's, not the compiler's (the first call of each graph compiles it; a later run with a warm cache is
    faster). Says so on stderr."""
    import time

    from .compiled import compile as compile_bundle

    _err("compiling (first call only; the timings below exclude it) …")
    t0 = time.perf_counter()
    compile_bundle(bundle)
    work()
    _err(f"compiled and warmed up in {time.perf_counter() - t0:.1f} s")


def _finite(value: float | None, name: str, minimum: float | None = 0.0) -> None:
    if value is not None and (not math.isfinite(value) or (minimum is not None and value < minimum)):
        raise FlashuError(f"{name} must be a finite number >= {minimum}, got {value}")


def _check_steps_seed(steps: int | None, seed: int) -> None:
    if steps is not None and not 2 <= steps <= MAX_STEPS:
        raise FlashuError(f"--steps must be between 2 and {MAX_STEPS} (grid points), got {steps}")
    if not 0 <= seed <= MAX_SEED:
        raise FlashuError(f"--seed must be between 0 and 2**63 - 1, got {seed}")


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise FlashuError(f"--limit must be at least 1, got {limit}")


# ---------------------------------------------------------------------------------------------------- generate
@main.command()
@model_option
@click.option("--prompt", "-p", "prompts", multiple=True, required=True, help="Text prompt (repeat for a batch).")
@click.option("--steps", type=int, default=None, help="Grid points N (N - 1 evaluations). Default: the model's.")
@click.option("--guidance", type=float, default=None, help="CFG scale (0 disables CFG). Default: the model's.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial noise.")
@click.option("--size", type=int, default=None, help="Image size in pixels. Default: the model's.")
@click.option("--out", "-o", type=click.Path(path_type=Path), default=Path("flashu.png"), show_default=True,
              help="Output image (several prompts: NAME-i.png, or a directory without an extension).")
@click.option("--noise-dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="bfloat16 rounds the initial noise as the official inference_t2i.py does.")
@progress_option
@_accel_options
@compile_option
@tokenizer_option
@vae_option
@device_option
@dtype_option
def generate(model, prompts, steps, guidance, seed, size, out, noise_dtype, progress, accel, scores_files,
             compile_model, tokenizer_dir, vae_dir, device, dtype):
    """Generate images from text prompts."""
    from .io.paths import IMAGE_SUFFIXES, check_text, writable_dir, writable_file

    for prompt in prompts:
        check_text(prompt, "prompt")
    _check_steps_seed(steps, seed)
    _finite(guidance, "--guidance")
    paths = _output_paths(out, len(prompts))
    for path in paths:
        writable_file(path, "--out", IMAGE_SUFFIXES)
    if len(paths) > 1 and not out.suffix:
        writable_dir(out, "--out")
    from .accel.api import accelerated
    from .pipelines.t2i import generate as run

    bundle = _load(model, device, dtype, tokenizer_dir, vae_dir, progress)
    with accelerated(bundle, accel, task="t2i", scores=_scores(scores_files, "t2i"), progress=progress):
        def work(show: bool = False):
            return run(bundle, list(prompts), steps=steps, guidance=guidance, seed=seed, image_size=size,
                       progress=progress and show, noise_dtype=noise_dtype)

        if compile_model:
            _compile_and_warm_up(bundle, work)
        result = work(show=True)
    from .io.files import save_image

    for image, path in zip(result.images, paths):
        save_image(image, path)
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


# ---------------------------------------------------------------------------------------------------- ask
@main.command()
@model_option
@click.option("--image", "-i", "image", required=True, help="Image file.")
@click.option("--question", "-q", required=True, help="Question about the image.")
@click.option("--max-new-tokens", type=int, default=300, show_default=True, help="Most answer tokens to decode.")
@click.option("--image-size", type=int, default=None, help="Understanding resolution in pixels. Default: the model's.")
@click.option("--layout", type=click.Choice(["official", "training"]), default=None,
              help="Bidirectional block of the prompt: official (inference_mmu.py) or training (mmu_dataset.py). "
                   "Default: the one the model was trained with.")
@progress_option
@_accel_options
@compile_option
@tokenizer_option
@vae_option
@device_option
@dtype_option
def ask(model, image, question, max_new_tokens, image_size, layout, progress, accel, scores_files, compile_model,
        tokenizer_dir, vae_dir, device, dtype):
    """Answer a question about an image."""
    from .io.paths import check_text

    check_text(question, "question")
    if max_new_tokens <= 0:
        raise FlashuError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    from .limits import MAX_POSITIONS

    if max_new_tokens >= MAX_POSITIONS:
        raise FlashuError(f"--max-new-tokens {max_new_tokens} exceeds the LLM's context of {MAX_POSITIONS} positions "
                          "(prompt included); use fewer")
    from .accel.api import accelerated
    from .io.images import load_image
    from .pipelines.mmu import answer

    picture = load_image(image)  # fail on a bad image before loading the model
    bundle = _load(model, device, dtype, tokenizer_dir, vae_dir, progress)
    with accelerated(bundle, accel, task="mmu", scores=_scores(scores_files, "mmu"), progress=progress):
        def work():
            return answer(bundle, picture, question, max_new_tokens=max_new_tokens, image_size=image_size,
                          layout=layout)

        if compile_model:
            _compile_and_warm_up(bundle, work)
        result = work()
    click.echo(result.text)
    t = result.timings
    _err(f"encode: {t['encode'] * 1000:.1f} ms  prefill: {t['prefill'] * 1000:.1f} ms "
         f"({result.prompt_tokens} tokens, {result.kept_tokens} kept)  "
         f"decode: {len(result.token_ids)} tokens, {result.decode_tokens_per_s:.1f} tok/s")
    stats = {k: v for k, v in result.stats.items() if not isinstance(v, (list, dict))}
    if stats:
        _err("acceleration: " + "  ".join(f"{k}={v}" for k, v in stats.items()))


# ---------------------------------------------------------------------------------------------------- download
@main.command("download")
@click.argument("model")
@tokenizer_option
@vae_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@progress_option
def download_command(model, tokenizer_dir, vae_dir, as_json, progress):
    """Fetch a Show-o2 checkpoint with its tokenizer and VAE, ahead of time, and print where each part is.

    MODEL is a hub id (official: showlab/show-o2-1.5B, showlab/show-o2-1.5B-HQ, showlab/show-o2-7B) or a local
    checkpoint directory. The tokenizer comes from the repository config.json names in llm_model_path (tokenizer files
    only), the VAE is Wan2.1_VAE.pth from Wan-AI/Wan2.1-T2V-14B, unless the checkpoint holds them or --tokenizer /
    --vae say otherwise. Everything goes into the Hugging Face cache (HF_HOME); later runs work with HF_HUB_OFFLINE=1.
    """
    from .io.hub import download

    resolved = download(model, tokenizer=tokenizer_dir, vae=vae_dir, progress=progress)
    click.echo(json.dumps(resolved.to_dict(), indent=2) if as_json else resolved.describe())


# ---------------------------------------------------------------------------------------------------- calibrate
@main.command()
@model_option
@click.option("--task", type=click.Choice(["t2i", "mmu"]), required=True,
              help="t2i: generation prompts; mmu: image + question pairs.")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="t2i: text file, one prompt per line (default: the model's calibration data).")
@click.option("--data", "pairs_file", type=click.Path(path_type=Path), default=None,
              help='mmu: JSONL of {"image": path, "question": text} (default: the model\'s calibration data).')
@click.option("--samples", type=int, default=20, show_default=True, help="Calibration items.")
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Output .safetensors file.")
@progress_option
@device_option
@dtype_option
def calibrate(model, task, prompts_file, pairs_file, samples, out, progress, device, dtype):
    """Compute task-specific Wanda importance scores for FlashU pruning."""
    from .io.paths import writable_file

    if samples <= 0:
        raise FlashuError(f"--samples must be positive, got {samples}")
    writable_file(out, "--out", (".safetensors",))
    from .accel.calibration import calibrate as run, read_pairs, read_prompts

    prompts = read_prompts(prompts_file) if prompts_file else None
    pairs = read_pairs(pairs_file) if pairs_file else None
    bundle = _load(model, device, dtype)
    scores = run(bundle, task, samples=samples, prompts=prompts, pairs=pairs, progress=progress)
    path = scores.save(out)
    click.echo(f"wrote {path} ({scores.samples} samples, {scores.tokens} tokens, task {task})")


@main.command("accel-presets")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Every preset as one JSON object (name -> config).")
def accel_presets(name, as_json):
    """List the FlashU presets as a table (what each changes per task), or print preset NAME as a JSON config file
    to start from: 'flashu accel-presets plus > my.json', edit it, then '--accel my.json'."""
    from .accel.config import ACCEL_PRESET_NAMES, accel_preset
    from .accel.spec import changes

    if name is not None:
        click.echo(accel_preset(name).to_json())
        return
    if as_json:
        click.echo(json.dumps({n: accel_preset(n).to_dict() for n in ACCEL_PRESET_NAMES}, indent=2))
        return
    width = max(len(n) for n in ACCEL_PRESET_NAMES) + 2
    click.echo(f"{'preset':<{width}}{'task':<6}changes from the techniques-off config")
    for preset_name in ACCEL_PRESET_NAMES:
        diff = changes(accel_preset(preset_name))
        if not diff:
            click.echo(f"{preset_name:<{width}}{'-':<6}nothing (the baseline)")
        for i, (task, fields) in enumerate(diff.items()):
            text = ", ".join(f"{k}={v}" for k, v in fields.items()) or "(section on, every technique off)"
            click.echo(f"{preset_name if i == 0 else '':<{width}}{task:<6}{text}")
    click.echo("'flashu accel-presets NAME' prints one as a JSON config file (loadable with --accel FILE).")


# ---------------------------------------------------------------------------------------------------- info
@main.command()
@model_option
@click.option("--steps", type=int, default=None, help="Grid points for the per-image totals.")
@click.option("--question-tokens", type=int, default=6, show_default=True, help="Question length for the "
              "per-query figures.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def info(model, steps, question_tokens, as_json):
    """Parameters and FLOPs per component, per denoising step and per understanding query."""
    from .config import MODEL_PRESET_NAMES, load_config_file, preset
    from .observe.flops import model_report, render_report

    if model.lower() in MODEL_PRESET_NAMES:
        cfg = preset(model)
    else:
        from .io.checkpoint import resolve_checkpoint_dir

        directory = resolve_checkpoint_dir(model, config_only=True)
        if not (directory / "config.json").is_file():
            raise FlashuError(f"{directory} has no config.json; it is not a Show-o2 checkpoint directory")
        cfg = load_config_file(directory / "config.json")
    steps = cfg.default_steps if steps is None else steps
    _check_steps_seed(steps, 0)
    if question_tokens < 1:
        raise FlashuError(f"--question-tokens must be positive, got {question_tokens}")
    report = model_report(cfg, steps=steps, question_tokens=question_tokens)
    click.echo(json.dumps(report, indent=2) if as_json else render_report(report))


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
    from .accel.spec import resolve_accel
    from .io.paths import check_text, writable_file

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
    from .io.images import load_image
    from .observe.bench import TaskInputs, markdown, plot, pyplot, run_benchmark, strict_json

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
        from .compiled import compile as compile_bundle

        compile_bundle(bundle)
    report = run_benchmark(bundle, task, specs, repeats=repeats, inputs=inputs, mmu_workloads=chosen,
                           official_loop=official_loop, calibration_samples=calibration_samples,
                           instrument=instrument, progress=progress)
    _write_report(markdown(report), strict_json(report), json_out, plot_out, plot)


def _write_report(text: str, data: dict, json_out: Path | None, plot_out: Path | None, plot_fn) -> None:
    """Print a command's markdown report; then write its JSON and its figure (paths checked before the work)."""
    click.echo(text)
    from .io.files import write_json

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
    from .io.paths import writable_file

    accels = _specs(accels, configs_alias, "none")  # fail on an unknown preset before loading anything
    _check_steps_seed(steps, seed)
    _finite(guidance, "--guidance")
    if json_out:
        writable_file(json_out, "--json", (".json",))
    from .testbed.evaluate import evaluate_many, format_reports, load_testbed, write_json

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
    from .io.paths import writable_file

    specs = _specs(accels, configs_alias, "none,paper,plus")
    writable_file(out, "--out", (".png",))
    from .testbed.demo import run_demo

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
    from .io.paths import writable_dir

    _check_steps_seed(steps, seed)
    _finite(guidance, "--guidance")
    _check_limit(limit)
    configs = _specs(accels, configs_alias, "none,paper")
    writable_dir(out_dir, "--out")
    from .io.loading import load_model
    from .observe import distributed
    from .observe.evaluation import eval_t2i, read_t2i_prompts

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
    from .io.paths import writable_dir

    _check_limit(limit)
    configs = _specs(accels, configs_alias, "none,paper")
    writable_dir(out_dir, "--out")
    from .io.loading import load_model
    from .observe import distributed
    from .observe.evaluation import eval_mmu, read_mmu_data

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
    from .io.paths import writable_file

    if samples <= 0:
        raise FlashuError(f"--samples must be positive, got {samples}")
    if not 0 < top_fraction <= 1:
        raise FlashuError(f"--top-fraction must be in (0, 1], got {top_fraction}")
    if json_out:
        writable_file(json_out, "--json", (".json",))
    if plot_out:
        writable_file(plot_out, "--plot", (".png",))
        from .observe.bench import pyplot

        pyplot()  # before the work
    from .observe.analysis import markdown, plot_specialization, specialization

    bundle = _load(model, device, dtype)
    result = specialization(bundle, samples=samples, top_fraction=top_fraction, loo=not no_loo, progress=progress)
    _write_report(markdown(result), result, json_out, plot_out, plot_specialization)


# ---------------------------------------------------------------------------------------------------- entry
def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _interrupted(exc: BaseException) -> int:
    """One line and the exit status for Ctrl-C (130) or SIGTERM (143); records and models are already safe (the
    interrupt ran every cleanup on its way up)."""
    if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated):
        _err("terminated (SIGTERM): work written so far is kept; rerun the same command to resume where it can")
        return EXIT_TERMINATED
    _err("interrupted")
    return EXIT_INTERRUPTED


def run(argv: list[str] | None = None) -> int:
    """Entry point: click in non-standalone mode so every user error becomes one line and exit status 2; SIGTERM is
    handled like Ctrl-C (exit 143), an allocation failure is one line."""
    import signal
    import threading

    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), "flashu")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("once")
            _quiet_libraries()
            main.main(args=argv, prog_name="flashu", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns a KeyboardInterrupt (and so SIGTERM) into Abort
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return _interrupted(exc.__cause__)
        _err("aborted")
        return EXIT_INTERRUPTED
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        ctx = exc.ctx
        hint = f" (see 'flashu {ctx.command_path.split(' ', 1)[1]} --help')" if ctx and " " in ctx.command_path \
            else " (see 'flashu --help')"
        _err(f"error: {exc.format_message()}{hint}")
        return EXIT_USER_ERROR
    except click.ClickException as exc:
        _err(f"error: {exc.format_message()}")
        return EXIT_USER_ERROR
    except FlashuError as exc:
        _err(f"error: {exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except (MemoryError, RuntimeError) as exc:  # an allocation failure outside the guarded pipelines
        message = out_of_memory_message(exc, f"'flashu {command}'")
        if message is None:
            raise
        _err(f"error: {message}")
        return EXIT_USER_ERROR
    finally:
        warnings.showwarning = previous
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


def entry() -> None:
    sys.exit(run())


if __name__ == "__main__":
    entry()
