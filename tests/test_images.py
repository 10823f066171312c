"""Images: reading any mode as RGB, user-facing read errors, Show-o2 preprocessing, tensor → PIL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flashu.errors import FlashuError
from flashu.io.images import load_image, preprocess_image, to_pil


def saved(tmp_path, img: Image.Image, name: str = "img.png", **kwargs):
    path = tmp_path / name
    img.save(path, **kwargs)
    return path


def rgb_at(img: Image.Image, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.asarray(img)[y, x])


def test_rgba_is_composited_on_white(tmp_path):
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 0), (255, 0, 0, 255), (0, 0, 0, 128)])
    out = load_image(saved(tmp_path, img))
    assert out.mode == "RGB" and out.size == (3, 1)
    assert rgb_at(out, 0, 0) == (255, 255, 255)
    assert rgb_at(out, 1, 0) == (255, 0, 0)
    assert all(126 <= v <= 128 for v in rgb_at(out, 2, 0))  # half-transparent black over white → mid grey


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1))
    img.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    img.putdata([0, 1])
    out = load_image(saved(tmp_path, img, transparency=0))
    assert rgb_at(out, 0, 0) == (255, 255, 255) and rgb_at(out, 1, 0) == (0, 255, 0)


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (1, 1))
    img.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    assert rgb_at(load_image(saved(tmp_path, img)), 0, 0) == (10, 20, 30)


@pytest.mark.parametrize("mode,value,expected", [
    ("L", 77, (77, 77, 77)),
    ("LA", (77, 255), (77, 77, 77)),
    ("1", 1, (255, 255, 255)),
    ("CMYK", (0, 255, 0, 0), (255, 0, 255)),
])
def test_other_modes(tmp_path, mode, value, expected):
    name = "img.jpg" if mode == "CMYK" else "img.png"  # PNG cannot hold CMYK
    kwargs = {"quality": 100} if mode == "CMYK" else {}
    out = load_image(saved(tmp_path, Image.new(mode, (4, 4), value), name, **kwargs))
    assert out.mode == "RGB"
    assert all(abs(a - b) <= 2 for a, b in zip(rgb_at(out, 1, 1), expected))  # JPEG is lossy


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    data = np.array([[0, 257 * 128, 65535]], dtype=np.uint16)
    path = saved(tmp_path, Image.fromarray(data))
    assert Image.open(path).mode == "I;16"
    out = load_image(path)
    assert [rgb_at(out, x, 0)[0] for x in range(3)] == [0, 128, 255]


def test_large_photo_loads(tmp_path):
    path = saved(tmp_path, Image.new("L", (8000, 6000), 200), "big.jpg")
    assert load_image(path).size == (8000, 6000)


def test_decompression_bomb_is_a_flashu_error(tmp_path, monkeypatch):
    path = saved(tmp_path, Image.new("RGB", (64, 64)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(FlashuError, match="decompression bomb"):
        load_image(path)


@pytest.mark.parametrize("case,reason", [
    ("missing", "no such file"),
    ("text", "not an image"),
    ("directory", "directory"),
    ("truncated", "truncated"),
])
def test_unreadable_files(tmp_path, case, reason):
    if case == "missing":
        path = tmp_path / "nope.png"
    elif case == "text":
        path = tmp_path / "notes.png"
        path.write_text("just some text")
    elif case == "directory":
        path = tmp_path
    else:
        path = saved(tmp_path, Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FlashuError, match=f"cannot read image {path}: .*{reason}") as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_preprocess_shape_range_and_center_crop():
    # Left third red, middle green, right third blue: the center crop of a 30×10 image at size 10 is all green.
    strip = np.zeros((10, 30, 3), np.uint8)
    strip[:, :10, 0] = strip[:, 10:20, 1] = strip[:, 20:, 2] = 255
    out = preprocess_image(Image.fromarray(strip), 10)
    assert out.shape == (3, 10, 10) and out.dtype == torch.float32
    assert torch.equal(out, torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1).expand(3, 10, 10))
    portrait = preprocess_image(Image.fromarray(strip.transpose(1, 0, 2).copy()), 10)  # top/middle/bottom
    assert torch.equal(portrait, out)


def test_preprocess_resizes_shorter_side_and_maps_to_unit_range():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (37, 53, 3), np.uint8))
    out = preprocess_image(img, 24)
    assert out.shape == (3, 24, 24)
    assert out.min() >= -1.0 and out.max() <= 1.0
    grey = preprocess_image(Image.new("L", (50, 40), 51), 16)  # any mode, exact (51/255 − 0.5)/0.5
    assert torch.allclose(grey, torch.full((3, 16, 16), (51 / 255 - 0.5) / 0.5))


def test_to_pil_truncates():
    x = torch.tensor([-3.0, -1.0, 0.0, 2 * 100.9 / 255 - 1, 1.0, 5.0]).view(1, 1, 1, 6).expand(2, 3, 1, 6)
    images = to_pil(x)
    assert len(images) == 2 and images[0].mode == "RGB" and images[0].size == (6, 1)
    assert np.asarray(images[1])[0, :, 0].tolist() == [0, 0, 127, 100, 255, 255]  # 127.5 → 127, 100.9 → 100


def test_to_pil_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        to_pil(torch.zeros(3, 4, 4))
