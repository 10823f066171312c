import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_bundle():
    from flashu import load_model

    return load_model("tiny", device="cpu")


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
