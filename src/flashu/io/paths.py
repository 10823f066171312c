"""Checks on user-supplied output paths and text, done before any work starts.

An output path that cannot be written must fail in one line *before* a benchmark or generation runs, never after.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import FlashuError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _nearest_existing(path: Path) -> Path:
    for parent in (path, *path.parents):
        if parent.exists():
            return parent
    return Path(".")


def writable_file(path: str | Path, what: str, suffixes: tuple[str, ...] | None = None) -> Path:
    """``path`` can be created or overwritten as a file (its missing parent directories can be created); with
    ``suffixes``, it ends with one of them. Nothing is written."""
    path = Path(path).expanduser()
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise FlashuError(f"{what} {path}: unsupported extension {path.suffix or '(none)'}; use one of "
                          f"{', '.join(suffixes)}")
    is_dir, exists = _probe(path, what)
    if is_dir:
        raise FlashuError(f"{what} {path} is a directory; give a file name")
    _check_parent(path, what)
    if exists and not os.access(path, os.W_OK):
        raise FlashuError(f"{what} {path} exists and is not writable")
    return path


def writable_dir(path: str | Path, what: str) -> Path:
    """``path`` is, or can be created as, a writable directory. Nothing is created."""
    path = Path(path).expanduser()
    is_dir, exists = _probe(path, what)
    if exists and not is_dir:
        raise FlashuError(f"{what} {path} exists and is not a directory")
    if is_dir:
        if not os.access(path, os.W_OK | os.X_OK):
            raise FlashuError(f"{what} {path} is not writable ({_why_not_writable(path)})")
        _try_create(path, what, path)
        return path
    _check_parent(path, what)
    return path


def _probe(path: Path, what: str) -> tuple[bool, bool]:
    """(is a directory, exists), or one line for a path the OS refuses to look at (e.g. a name too long)."""
    try:
        return path.is_dir(), path.exists()
    except OSError as exc:
        raise FlashuError(f"{what} {path}: {exc.strerror or exc}") from None


def _check_parent(path: Path, what: str) -> None:
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise FlashuError(f"{what} {path}: {base} is a file, not a directory")
    if not os.access(base, os.W_OK | os.X_OK):
        raise FlashuError(f"{what} {path}: cannot create files in {base} ({_why_not_writable(base)})")
    _try_create(base, what, path)


def _why_not_writable(directory: Path) -> str:
    """"read-only file system" when the mount is read-only, else "permission denied"."""
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except (OSError, AttributeError):
        pass
    return "permission denied"


def _try_create(base: Path, what: str, path: Path) -> None:
    """Create and remove a file in ``base``: permission bits do not tell about read-only mounts, /proc or /sys."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".flashu-probe-", dir=base)
    except OSError as exc:
        raise FlashuError(f"{what} {path}: cannot create files in {base} ({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)


def check_text(text: str, what: str) -> str:
    """Non-empty text that is valid Unicode (arguments with bytes that are not UTF-8 arrive as lone surrogates)."""
    if not isinstance(text, str):
        raise FlashuError(f"{what} must be text, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FlashuError(f"{what} contains bytes that are not valid UTF-8; pass UTF-8 text") from None
    if not text.strip():
        raise FlashuError(f"empty {what}: give some text")
    return text
