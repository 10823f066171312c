"""Image I/O: read any image as RGB, Show-o2's understanding preprocessing, and tensors back to PIL.

``preprocess_image`` reproduces the official ``image_transform`` (torchvision ``Resize(size, BICUBIC)`` +
``CenterCrop`` + ``ToTensor`` + ``Normalize(0.5, 0.5)``) with Pillow alone, so torchvision is not needed.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, FlashuError

_WHITE = (255, 255, 255, 255)


def load_image(path: str | Path) -> Image.Image:
    """Read ``path`` as an RGB image; transparency is composited on white, 16-bit grey is scaled to 8 bits.

    Pillow's decompression-bomb limit stays in force (about 179 megapixels raises), so a photo of 8000×6000
    loads while a crafted file cannot exhaust memory.
    """
    if isinstance(path, (str, Path)) and Path(path).exists() and not Path(path).is_dir() \
            and not stat.S_ISREG(os.stat(path).st_mode):
        raise FlashuError(f"cannot read image {path}: not a regular file (a pipe or device would block)")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        reason = "no such file"
    except IsADirectoryError:
        reason = "it is a directory"
    except Image.UnidentifiedImageError:
        reason = "not an image in a format Pillow can read"
    except Image.DecompressionBombError as exc:
        reason = str(exc)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow's ways of saying "truncated/corrupt"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    raise FlashuError(f"cannot read image {path}: {reason}")


def to_rgb(img: Image.Image) -> Image.Image:
    """A new RGB copy of ``img`` whatever its mode."""
    if img.mode.startswith("I;16"):
        # Pillow's own I;16 → RGB conversion clips at 255 (almost everything turns white); scale instead.
        grey = (np.asarray(img).astype(np.uint32) // 257).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        canvas = Image.new("RGBA", img.size, _WHITE)
        canvas.alpha_composite(img.convert("RGBA"))
        return canvas.convert("RGB")
    return img.convert("RGB")


def preprocess_image(img: Image.Image, size: int) -> torch.Tensor:
    """[3,size,size] float32 in [-1, 1]: shorter side resized to ``size`` (bicubic), then center-cropped."""
    if size <= 0:
        raise ConfigError(f"image size must be positive, got {size}")
    img = img if img.mode == "RGB" else to_rgb(img)
    width, height = img.size
    if not width or not height:
        raise FlashuError(f"the image has no pixels ({width}x{height})")
    # torchvision Resize(int): the shorter side becomes `size`, the longer one is truncated, not rounded.
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    img = img.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).float().div(255)
    return pixels.sub(0.5).div(0.5)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B,3,H,W] in [-1, 1] → PIL images via ``uint8(clamp((x+1)/2, 0, 1)·255)``, truncating like upstream."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"to_pil expects [B,3,H,W] images, got shape {tuple(images.shape)}")
    scaled = ((images.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0
    arrays = scaled.permute(0, 2, 3, 1).numpy().astype(np.uint8)
    return [Image.fromarray(a) for a in arrays]
