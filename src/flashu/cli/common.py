"""Shared pieces of the command line: the ``main`` group, the common options, input checks and helpers."""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path

import click

from ..errors import FlashuError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM), as a shell reports a job its scheduler stopped
DEFAULT_MODEL = "testbed"
MODEL_HELP = ("testbed (the trained model shipped with flashu), tiny/small/small-7b/medium/1.5b/7b (random weights, "
              "for speed), a local checkpoint directory or a hub id (owner/name).")
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
    from ..accel.spec import SPEC_HELP  # light module: no torch

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
    from ..accel.spec import resolve_accel, split_specs

    texts = [*alias, *accels] or [default]
    specs = [spec for text in texts for spec in split_specs(text)]
    if not specs:
        raise FlashuError("--accel names no configuration")
    for spec in specs:
        resolve_accel(spec)
    return specs


def _run_options(func):
    """The options every command that runs the model once shares (generate, ask), in their help order."""
    for option in (dtype_option, device_option, vae_option, tokenizer_option, compile_option, _accel_options,
                   progress_option):
        func = option(func)
    return func


def _positive(value: int, name: str) -> None:
    if value <= 0:
        raise FlashuError(f"{name} must be positive, got {value}")


def _accel_options(func):
    from ..accel.spec import SPEC_HELP  # light module: no torch

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
    from ..loading import load_model

    return load_model(model, dtype=dtype, device=device, tokenizer=tokenizer, vae=vae, progress=progress)


def _scores(files, task: str) -> dict:
    from ..accel.importance import ImportanceScores

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

    from ..compiled import compile as compile_bundle

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

