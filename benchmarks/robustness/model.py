"""A sweep case and its result: what runs (CLI arguments or an API snippet), what it must produce."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = ("checkpoints", "images", "text", "numbers", "devices", "accel", "outputs", "eval", "api", "disk")
OUTCOMES = ("ok-error", "ok-success", "traceback", "hang", "silently-wrong", "wrong-error")
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
FAST = 8.0  # seconds: an error that must come before any work (e.g. a bad output path) comes within this




def _env(extra: dict | None = None, work: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "FLASHU_"))}
    env.update({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT / "src") + os.pathsep
                + env.get("PYTHONPATH", ""), "PYTHONUNBUFFERED": "1"})
    if work is not None:
        env.update({"HF_HOME": str(work / "hf_home"), "FLASHU_CACHE_DIR": str(work / "cache")})
    env.update(extra or {})
    return env


@dataclass
class Result:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    d: Path  # the case's own directory (the command's working directory)
    fx: Path  # the fixtures


Check = Callable[[Result], "str | None"]  # None: verified; else what is wrong


@dataclass
class Case:
    category: str
    description: str
    argv: list | None = None  # flashu CLI arguments (str with {d}/{fx} placeholders, or bytes)
    api: str | None = None  # Python snippet (``b``: a tiny bundle when ``bundle=True``)
    expect: str = "error"  # error | success | either
    needle: str | tuple | None = None  # the error line must contain it (any of a tuple), case-insensitive
    check: Check | None = None  # verification of a success
    on_error: Check | None = None  # verification of an error (e.g. that nothing ran)
    setup: Callable[[Path, Path], None] | None = None
    env: dict = field(default_factory=dict)
    timeout: float = 120.0
    fast: bool = False  # an error must come within FAST seconds (before any work)
    slow: bool = False  # skipped by --quick
    skip: str | None = None  # reason to skip here
    bundle: bool = False  # API: load the tiny model as ``b`` first
    terminate_after: float | None = None  # send SIGTERM after this many seconds; exit 143 + one line is ok
    id: str = ""

    @property
    def needs_fixtures(self) -> bool:
        text = " ".join(a for a in (self.argv or []) if isinstance(a, str)) + (self.api or "")
        return "{fx}" in text or self.setup is not None or self.bundle

    def command(self, d: Path, fx: Path) -> list:
        if self.argv is not None:
            args = [a.replace("{d}", str(d)).replace("{fx}", str(fx)) if isinstance(a, str) else a
                    for a in self.argv]
            return [sys.executable, "-m", "flashu.cli", *args]
        snippet = self.api.replace("{d}", str(d)).replace("{fx}", str(fx))
        return [sys.executable, "-c", API_HARNESS.replace("@BUNDLE@", "True" if self.bundle else "False"), snippet]

    def shown(self) -> str:
        if self.argv is not None:
            parts = []
            for a in self.argv:
                text = a if isinstance(a, str) else repr(a)
                if len(text) > 80:
                    text = f"{text[:30]}…<{len(text)} chars>"
                plain = text and text.isprintable() and " " not in text and "'" not in text
                parts.append(text if plain else repr(text))
            prefix = " ".join(f"{k}={v}" for k, v in self.env.items())
            return (prefix + " " if prefix else "") + "flashu " + " ".join(parts)
        return "python -c: " + self.api.strip().replace("\n", "; ")


def Slow(*args, **kwargs) -> Case:  # noqa: N802 - reads like the Case it builds
    """A case ``--quick`` skips: it loads a model and a case it keeps covers the same ground."""
    return Case(*args, slow=True, **kwargs)


API_HARNESS = r'''
import sys, warnings
def _show(message, category, filename, lineno, file=None, line=None):
    text = str(message).strip()
    sys.stderr.write("warning: %s\n" % (text.splitlines()[0] if text else category.__name__))
warnings.showwarning = _show
import flashu
try:
    if @BUNDLE@:
        b = flashu.load_model("tiny", progress=False)
    exec(compile(sys.argv[1], "<case>", "exec"))
except flashu.FlashuError as exc:
    sys.stderr.write("error: %s\n" % exc)
    sys.exit(2)
'''


