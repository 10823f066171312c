"""``load_model`` / ``save_pretrained``: presets, local directories in the official layout, hub ids.

A hub id (``showlab/show-o2-1.5B``) or a directory is resolved by :func:`flashu.io.hub.resolve_model` into its three
parts: the Show-o2 weights, the tokenizer (``llm_model_path``) and the Wan2.1 VAE.
"""

from __future__ import annotations

import json
import warnings
from importlib import resources
from pathlib import Path

import torch

from .bundle import Showo2Bundle
from .io.checkpoint import PROGRESS_MIN_BYTES, load_into, read_state_dict, write_safetensors
from .config import MODEL_PRESET_NAMES, Showo2Config, preset
from .errors import CheckpointError, FlashuError, RandomWeightsWarning
from .limits import check_model_fits
from .model import Showo2
from .io.tokenizer import SpecialTokens, build_local_tokenizer, load_tokenizer, save_tokenizer
from .io.vae import LatentCodec, build_vae, load_vae, save_vae, seed_random_vae

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise FlashuError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda", "mps"):
        raise FlashuError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FlashuError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FlashuError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise FlashuError(f"device {device!r} requested but MPS is not available here; use --device cpu")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise FlashuError(f"device {device!r}: the CPU has no device index; use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    key = str(dtype).lower()
    if key not in DTYPES:
        raise FlashuError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16 or auto")
    return DTYPES[key]


def load_model(name_or_path: str, *, dtype: str | torch.dtype | None = None, device: str | torch.device | None = None,
               seed: int = 0, tokenizer: str | Path | None = None, vae: str | Path | None = None,
               progress: bool = True) -> Showo2Bundle:
    """Load Show-o2: a preset name (random weights, seeded), a local directory, or a hub id.

    Directories may hold the official layout (``config.json`` + ``pytorch_model.bin``, sharded ``.bin`` with an
    index, or safetensors) or ours (``save_pretrained``). The Qwen2.5 tokenizer files and the VAE
    (``Wan2.1_VAE.pth``, a diffusers ``vae/`` folder or ``vae.safetensors``) are read from the same directory when
    they are there; otherwise the tokenizer comes from the hub repository ``config.json`` names in
    ``llm_model_path`` (e.g. ``Qwen/Qwen2.5-1.5B-Instruct``, tokenizer files only) and the VAE is
    ``Wan2.1_VAE.pth`` from ``Wan-AI/Wan2.1-T2V-14B``. A hub id (``showlab/show-o2-1.5B``, ``-1.5B-HQ``, ``-7B``)
    downloads all three into the Hugging Face cache (``flashu.download`` does it ahead of time; with
    ``HF_HUB_OFFLINE=1`` only the cache is used).

    ``"testbed"`` is the trained shapes-world model shipped inside the package (:func:`testbed_dir`), not random
    weights; ``preset("testbed")`` alone is its architecture.

    ``tokenizer``/``vae``: a directory or a hub id to read the tokenizer files / the VAE weights from instead;
    ``vae="none"`` loads no VAE (generation then returns latents only, understanding takes latents).
    ``progress``: progress bars for downloads and for reading a multi-file or multi-GB checkpoint.
    """
    if not isinstance(name_or_path, (str, Path)):
        raise FlashuError(f"a model is a preset name, a directory or a hub id, not {type(name_or_path).__name__}")
    name_or_path = str(name_or_path)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FlashuError(f"seed must be an integer, got {seed!r}")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if name_or_path.lower() in (*MODEL_PRESET_NAMES, TESTBED) and Path(name_or_path).is_dir():
        raise FlashuError(f"{name_or_path!r} is both a flashu model name and a directory here; write "
                          f"./{name_or_path} for the directory")
    if name_or_path.lower() == TESTBED:
        directory = testbed_dir()
        if not (directory / "config.json").is_file():
            raise CheckpointError(
                f"the packaged testbed checkpoint is missing from {directory}; reinstall flashu, or train it with "
                "'python -m flashu.testbed.train' (see flashu/testbed/train.py)"
            )
        bundle = load_model(str(directory), dtype=dt, device=dev, seed=seed, progress=progress)
        bundle.source = TESTBED
        return bundle
    if name_or_path.lower() in MODEL_PRESET_NAMES:
        return _random_preset(name_or_path.lower(), dt, dev, seed)
    from .io.hub import resolve_model

    parts = resolve_model(name_or_path, tokenizer=tokenizer, vae=vae, progress=progress)  # downloads, if any, first
    config = parts.config
    check_model_fits(config, dt, dev)
    tok = load_tokenizer(config, parts.tokenizer)
    special = SpecialTokens.from_tokenizer(tok)
    codec = None if parts.vae is None else LatentCodec(load_vae(parts.vae, config.vae))
    state = _cast_floating(read_state_dict(parts.checkpoint, progress=progress), dt, progress)
    with torch.device("meta"):
        model = Showo2(config)
    load_into(model, state, tied_lm_head=config.llm.tie_word_embeddings)
    del state
    model = model.to(device=dev, dtype=dt).eval()
    if codec is not None:
        codec.vae.to(dev)
    return Showo2Bundle(model=model, tokenizer=tok, codec=codec, special=special, source=str(name_or_path))


def _cast_floating(state: dict[str, torch.Tensor], dtype: torch.dtype, progress: bool) -> dict[str, torch.Tensor]:
    """Floating tensors cast to ``dtype`` on the CPU (what ``model.to(dtype)`` would do after loading), with a
    progress bar in bytes for a multi-GB checkpoint: with memory-mapped files this is where the bytes are read.
    Tensors that share storage are cast once."""
    # every floating tensor is copied, also when already in ``dtype``: a memory-mapped .bin must not stay tied to
    # its file (rewriting the file would change the loaded model)
    todo = [k for k, t in state.items() if t.is_floating_point()]
    if not todo:
        return state
    total = sum(state[k].numel() * state[k].element_size() for k in todo)
    from tqdm.auto import tqdm

    done: dict[tuple, torch.Tensor] = {}
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, dynamic_ncols=True,
              desc=f"converting to {str(dtype).removeprefix('torch.')}",
              disable=not (progress and total >= PROGRESS_MIN_BYTES)) as bar:
        for key in todo:
            tensor = state[key]
            ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
                     tuple(tensor.stride()))
            if ident not in done:
                done[ident] = tensor.to(dtype=dtype, copy=True)
            state[key] = done[ident]
            bar.update(tensor.numel() * tensor.element_size())
    return state


TESTBED = "testbed"


def testbed_dir() -> Path:
    """Directory of the trained testbed checkpoint shipped in the package (``flashu/data/testbed``)."""
    return Path(str(resources.files("flashu").joinpath("data", TESTBED)))


def _random_preset(name: str, dtype: torch.dtype, device: torch.device, seed: int) -> Showo2Bundle:
    config = preset(name)
    check_model_fits(config, dtype, device)
    warnings.warn(f"the '{name}' preset has random weights: its images and answers are noise (for speed "
                  "measurements and tests; use 'testbed' or a real checkpoint for meaningful outputs)",
                  RandomWeightsWarning, stacklevel=3)
    model = Showo2(config)
    model.init_random_weights(seed)
    model = model.to(device=device, dtype=dtype).eval()
    # Random presets use the offline byte-level tokenizer (same special-token roles as Qwen2.5's).
    tokenizer = build_local_tokenizer()
    vae = build_vae(config.vae)
    seed_random_vae(vae, seed)
    return Showo2Bundle(model=model, tokenizer=tokenizer, codec=LatentCodec(vae.to(device).eval()),
                        special=SpecialTokens.from_tokenizer(tokenizer), source=name)


def save_pretrained(bundle: Showo2Bundle, directory: str | Path) -> Path:
    """Write config.json (official fields + a full ``flashu`` block), safetensors weights in the official key
    layout, the tokenizer and the VAE. ``load_model(directory)`` reads it back exactly."""
    if not isinstance(bundle, Showo2Bundle):
        raise FlashuError(f"save_pretrained takes a bundle from flashu.load_model, not {type(bundle).__name__}")
    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlashuError(f"cannot create the checkpoint directory {out}: {exc.strerror or exc}") from None
    config: Showo2Config = bundle.config
    if bundle.source in ("tiny", "small", "1.5b", "7b") and config.tokenizer == "qwen2.5":
        config = Showo2Config.from_dict({**config.to_dict(), "tokenizer": "local-bytes"})
    from .io.files import write_text

    write_text(out / "config.json", json.dumps(config.to_official_dict(), indent=2))
    write_safetensors(bundle.model, out)
    save_tokenizer(bundle.tokenizer, out)
    save_vae(bundle.codec.vae, out)
    return out
