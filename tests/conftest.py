import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread: tiny matmuls run faster than on two contended threads, and torchrun workers get one."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_bundle():
    from flashu import load_model

    return load_model("tiny", device="cpu")


@pytest.fixture(scope="module")
def bundle():
    """A tiny model private to one test module: its tests may accelerate or modify it (restored afterwards), so the
    session-wide ``tiny_bundle`` stays untouched."""
    from flashu import load_model, restore

    b = load_model("tiny", device="cpu")
    yield b
    restore(b)


@pytest.fixture(scope="session")
def sample_image(tmp_path_factory):
    from PIL import Image, ImageDraw

    path = tmp_path_factory.mktemp("img") / "shapes.png"
    img = Image.new("RGB", (48, 40), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((4, 4, 20, 20), fill="red")
    draw.rectangle((26, 14, 44, 34), fill="blue")
    img.save(path)
    return path


def load_benchmark_script(name: str):
    """Import ``benchmarks/<name>.py`` (not a package) as a module, registered under ``name``."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
