"""Commands about models and configurations: ``download``, ``calibrate``, ``accel-presets``, ``info``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import FlashuError
from .common import (
    _check_steps_seed,
    _load,
    _positive,
    device_option,
    dtype_option,
    main,
    model_option,
    progress_option,
    tokenizer_option,
    vae_option,
)


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
    from ..io.hub import download

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
    from ..io.paths import writable_file

    _positive(samples, "--samples")
    writable_file(out, "--out", (".safetensors",))
    from ..accel.calibration import calibrate as run, read_pairs, read_prompts

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
    from ..accel.config import ACCEL_PRESET_NAMES, accel_preset
    from ..accel.spec import changes

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
            label = "quant" if task == "quantization" else task
            click.echo(f"{preset_name if i == 0 else '':<{width}}{label:<6}{text}")
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
    from ..config import MODEL_PRESET_NAMES, load_config_file, preset
    from ..observe.flops import model_report, render_report

    if model.lower() in MODEL_PRESET_NAMES:
        cfg = preset(model)
    else:
        from ..io.checkpoint import resolve_checkpoint_dir

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
