"""The sweep's fixtures (a tiny checkpoint, images, score files, an understanding set, a finished evaluation) and
the mutations that cases apply to copies of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable
from .model import _env


def build_fixtures(fx: Path) -> None:
    """Run in a subprocess (imports torch): everything the cases copy and mutate."""
    import torch
    from PIL import Image
    from safetensors import safe_open
    from safetensors.torch import save_file

    import flashu
    from flashu.accel.calibration import calibrate
    from flashu.io.checkpoint import write_official_bin
    from flashu.observe.evaluation import eval_mmu
    from flashu.testbed import world

    fx.mkdir(parents=True, exist_ok=True)
    bundle = flashu.load_model("tiny", progress=False)
    flashu.save_pretrained(bundle, fx / "ckpt")
    shutil.copytree(fx / "ckpt", fx / "ckpt_bin")
    (fx / "ckpt_bin" / "model.safetensors").unlink()
    write_official_bin(bundle.model, fx / "ckpt_bin")

    img = fx / "img"
    img.mkdir(exist_ok=True)
    picture = world.sample("test", 0).image.convert("RGB")
    picture.save(img / "ok.png")
    picture.save(img / "ok.jpg", quality=90)

    set_dir = fx / "set"
    jsonl = world.write_understanding_set(set_dir, 1, "test")
    lines = jsonl.read_text().splitlines()[:2]
    jsonl.write_text("\n".join(lines) + "\n")
    eval_mmu(bundle, jsonl, "none", fx / "eval_done", max_new_tokens=2, progress=False)

    scores = fx / "scores"
    calibrate(bundle, "t2i", prompts=["a red circle"], samples=1, steps=2, progress=False).save(scores / "t2i.safetensors")
    calibrate(bundle, "mmu", pairs=[(str(img / "ok.png"), "what colour is the shape?")], samples=1,
              progress=False).save(scores / "mmu.safetensors")
    other = flashu.load_model("tiny", seed=1, progress=False)
    calibrate(other, "t2i", prompts=["a red circle"], samples=1, steps=2, progress=False).save(
        scores / "other-model-t2i.safetensors")
    with safe_open(str(scores / "t2i.safetensors"), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    save_file({**tensors, "ffn": tensors["ffn"] * float("nan")}, str(scores / "nan-t2i.safetensors"), metadata=meta)
    save_file(tensors, str(scores / "no-task-t2i.safetensors"), metadata={k: v for k, v in meta.items() if k != "task"})
    save_file({**tensors, "ffn": tensors["ffn"][:2]}, str(scores / "short-t2i.safetensors"), metadata=meta)
    (fx / "info.json").write_text(json.dumps({"cuda": torch.cuda.is_available(), "torch": torch.__version__}))
    del Image


# ---------------------------------------------------------------------------------------------------- mutations
def copy_ckpt(src: str = "ckpt", dst: str = "m") -> Callable[[Path, Path], Path]:
    def do(d: Path, fx: Path) -> Path:
        shutil.copytree(fx / src, d / dst)
        return d / dst
    return do


def with_ckpt(mutate: Callable[[Path], None] | None = None, src: str = "ckpt") -> Callable[[Path, Path], None]:
    def setup(d: Path, fx: Path) -> None:
        m = copy_ckpt(src)(d, fx)
        if mutate:
            mutate(m)
    return setup


def config_change(**changes) -> Callable[[Path], None]:
    """Change fields of the ``flashu`` block (``llm__hidden_size=…``) or, with a leading ``top__``, of config.json
    itself; the value ``DROP`` removes the field."""
    def mutate(m: Path) -> None:
        data = json.loads((m / "config.json").read_text())
        for dotted, value in changes.items():
            parts = dotted.split("__")
            target = data if parts[0] == "top" else data["flashu"]
            parts = parts[1:] if parts[0] == "top" else parts
            for p in parts[:-1]:
                target = target[p]
            if value is DROP:
                target.pop(parts[-1], None)
            else:
                target[parts[-1]] = value
        (m / "config.json").write_text(json.dumps(data))  # NaN/Infinity written as JS literals, as json allows
    return mutate


DROP = object()


def write_file(name: str, content: bytes | str) -> Callable[[Path], None]:
    def mutate(m: Path) -> None:
        (m / name).parent.mkdir(parents=True, exist_ok=True)
        (m / name).write_bytes(content.encode() if isinstance(content, str) else content)
    return mutate


def truncate(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def mutate(m: Path) -> None:
        data = (m / name).read_bytes()
        (m / name).write_bytes(data[: int(len(data) * keep)])
    return mutate


def official_config(**fields) -> Callable[[Path], None]:
    """Replace config.json by an official one (no flashu block) with ``fields``."""
    def mutate(m: Path) -> None:
        data = {"_class_name": "Showo2Qwen2_5", "hidden_size": 1536, "image_latent_dim": 16,
                "image_latent_height": 27, "image_latent_width": 27, "llm_model_path": "Qwen/Qwen2.5-1.5B-Instruct",
                "llm_vocab_size": 151665, "num_diffusion_layers": 10, "patch_size": 2}
        data.update(fields)
        (m / "config.json").write_text(json.dumps(data))
    return mutate


def state_change(fn_source: str) -> Callable[[Path], None]:
    """Rewrite model.safetensors with ``fn_source`` applied to its dict ``state`` (run in a subprocess: torch)."""
    def mutate(m: Path) -> None:
        code = ("import sys, torch\nfrom safetensors.torch import load_file, save_file\n"
                "p = sys.argv[1]\nstate = load_file(p)\n" + fn_source + "\nsave_file(state, p)\n")
        subprocess.run([sys.executable, "-c", code, str(m / "model.safetensors")], check=True, env=_env())
    return mutate


def torch_save(code: str, name: str = "pytorch_model.bin") -> Callable[[Path], None]:
    """Write ``name`` with ``torch.save(obj, path)`` where ``code`` defines ``obj`` (run in a subprocess)."""
    def mutate(m: Path) -> None:
        (m / "model.safetensors").unlink(missing_ok=True)
        (m / "pytorch_model.bin").unlink(missing_ok=True)
        full = "import os, sys, torch, pathlib\n" + code + "\ntorch.save(obj, sys.argv[1])\n"
        subprocess.run([sys.executable, "-c", full, str(m / name)], check=True, env=_env())
    return mutate


def index_to(weight_map_value: Callable[[Path], object], rename_to: str | None = None,
             text: str | None = None) -> Callable[[Path], None]:
    """Replace model.safetensors by an index whose every key maps to ``weight_map_value(m)`` (or by ``text``)."""
    def mutate(m: Path) -> None:
        if text is not None:
            (m / "model.safetensors").unlink()
            (m / "model.safetensors.index.json").write_text(text)
            return
        from safetensors import safe_open

        with safe_open(str(m / "model.safetensors"), "np") as f:
            keys = list(f.keys())
        if rename_to:
            target = m / rename_to
            target.parent.mkdir(parents=True, exist_ok=True)
            (m / "model.safetensors").rename(target)
        else:
            (m / "model.safetensors").unlink()
        value = weight_map_value(m)
        (m / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {k: value for k in keys}}))
    return mutate


# ---------------------------------------------------------------------------------------------------- images
def pil_image(name: str, build: str) -> Callable[[Path, Path], None]:
    """Write ``{d}/name`` by running ``build`` (defines ``img`` from PIL's ``Image``; may save it itself)."""
    def setup(d: Path, fx: Path) -> None:
        from PIL import Image  # noqa: F401 - used by the snippet

        scope = {"Image": Image, "path": d / name, "fx": fx}
        exec(build, scope)
        if "img" in scope:
            kwargs = scope.get("kwargs", {})
            scope["img"].save(d / name, **kwargs)
    return setup


def raw_file(name: str, content: bytes | Callable[[Path], bytes]) -> Callable[[Path, Path], None]:
    def setup(d: Path, fx: Path) -> None:
        data = content(fx) if callable(content) else content
        (d / name).write_bytes(data)
    return setup


def _half(path: Path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


def bomb_png(width: int, height: int) -> bytes:
    """A PNG header claiming ``width``×``height`` pixels with almost no data (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


