"""``flashu generate`` and ``flashu ask``: run the model once (optionally accelerated, optionally compiled)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import FlashuError
from .common import (
    _check_steps_seed,
    _compile_and_warm_up,
    _err,
    _finite,
    _load,
    _run_options,
    _scores,
    main,
    model_option,
)


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
@_run_options
def generate(model, prompts, steps, guidance, seed, size, out, noise_dtype, progress, accel, scores_files,
             compile_model, tokenizer_dir, vae_dir, device, dtype):
    """Generate images from text prompts."""
    from ..io.paths import IMAGE_SUFFIXES, check_text, writable_dir, writable_file

    for prompt in prompts:
        check_text(prompt, "prompt")
    _check_steps_seed(steps, seed)
    _finite(guidance, "--guidance")
    paths = _output_paths(out, len(prompts))
    for path in paths:
        writable_file(path, "--out", IMAGE_SUFFIXES)
    if len(paths) > 1 and not out.suffix:
        writable_dir(out, "--out")
    from ..accel.api import accelerated
    from ..pipelines.t2i import generate as run

    bundle = _load(model, device, dtype, tokenizer_dir, vae_dir, progress)
    with accelerated(bundle, accel, task="t2i", scores=_scores(scores_files, "t2i"), progress=progress):
        def work(show: bool = False):
            return run(bundle, list(prompts), steps=steps, guidance=guidance, seed=seed, image_size=size,
                       progress=progress and show, noise_dtype=noise_dtype)

        if compile_model:
            _compile_and_warm_up(bundle, work)
        result = work(show=True)
    from ..io.files import save_image

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
@_run_options
def ask(model, image, question, max_new_tokens, image_size, layout, progress, accel, scores_files, compile_model,
        tokenizer_dir, vae_dir, device, dtype):
    """Answer a question about an image."""
    from ..io.paths import check_text

    check_text(question, "question")
    if max_new_tokens <= 0:
        raise FlashuError(f"--max-new-tokens must be positive, got {max_new_tokens}")
    from ..limits import MAX_POSITIONS

    if max_new_tokens >= MAX_POSITIONS:
        raise FlashuError(f"--max-new-tokens {max_new_tokens} exceeds the LLM's context of {MAX_POSITIONS} positions "
                          "(prompt included); use fewer")
    from ..accel.api import accelerated
    from ..io.images import load_image
    from ..pipelines.mmu import answer

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
