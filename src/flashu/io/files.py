"""Every file flashu writes goes through :func:`atomic_write`: written under a temporary name in the same directory
and renamed into place, so a full disk, a quota, a read-only mount, an I/O error or an interruption never leaves a
partial or empty file under the final name.

A write that fails for one of those reasons raises :class:`WriteError` (a :class:`~flashu.errors.FlashuError`: one
line naming the path and the cause); callers whose file is optional (the calibration cache) catch it and warn.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import FlashuError

# Causes a user can act on, worded for the one-line error.
CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EIO: "input/output error",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system",
}
# Libraries that format the OS error into their own exception's text (safetensors' SafetensorError).
_CAUSE_TEXT = {"No space left on device": errno.ENOSPC, "os error 28": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
               "Read-only file system": errno.EROFS, "os error 30": errno.EROFS, "os error 122": errno.EDQUOT,
               "Input/output error": errno.EIO, "os error 5)": errno.EIO}


class WriteError(FlashuError, OSError):
    """A file could not be written (disk full, quota, read-only, I/O error); nothing was left under its name."""

    def __init__(self, path: Path, cause: str, code: int | None = None):
        super().__init__(f"cannot write {path}: {cause}; free some space or choose another location")
        self.path, self.cause, self.code = path, cause, code

    def __str__(self) -> str:  # OSError's own __str__ would show the errno tuple
        return self.args[0]


def write_cause(exc: BaseException) -> tuple[int, str] | None:
    """(errno, words) when ``exc`` is a write failure a user can act on, else None."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, OSError) and code in CAUSES:
        return code, CAUSES[code]
    text = str(exc)
    for needle, found in _CAUSE_TEXT.items():
        if needle in text:
            return found, CAUSES[found]
    return None


@functools.cache
def _mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give (mkstemp makes 0600 files). Read once: reading the umask
    means setting it, which would race with other threads' file creation on every write."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (hidden, ending in ``.tmp``: no scorer or glob picks it up, so
    writers must be told the format); when the block ends normally it replaces ``path``; otherwise it is removed
    and ``path`` is left as it was.
    Write failures with a user-actionable cause become :class:`WriteError`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _as_write_error(path, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _mode())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if write_cause(exc) is not None and not isinstance(exc, WriteError):
            raise _as_write_error(path, exc) from None
        raise


def _as_write_error(path: Path, exc: BaseException) -> BaseException:
    found = write_cause(exc)
    if found is None:
        return exc
    return WriteError(path, found[1], found[0])


def write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, data, **kwargs) -> Path:
    kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(data, **kwargs) + "\n")


def save_image(image, path: str | Path, **kwargs) -> Path:
    """``image.save`` through :func:`atomic_write` (format from the final name's suffix unless given)."""
    path = Path(path)
    if "format" not in kwargs:
        from PIL import Image

        Image.init()
        kwargs["format"] = Image.EXTENSION.get(path.suffix.lower(), "PNG")
    with atomic_write(path) as tmp:
        image.save(tmp, **kwargs)
    return path


def save_safetensors(tensors: dict, path: str | Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def save_figure(fig, path: str | Path, **kwargs) -> Path:
    """A matplotlib figure, format from the final name's suffix."""
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", **kwargs)
    return path


def torch_save(obj, path: str | Path) -> Path:
    import torch

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)
