"""README's snippets run as they are: every ```bash and ```python block that needs no network and installs nothing,
in a fresh directory, must exit 0. A block is skipped only where README marks it with
``<!-- snippet: skip (reason) -->`` on the line before it (the install commands, which .ci/run proves, and the hub
downloads)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"(?P<marker><!-- snippet: skip \((?P<reason>[^)]*)\) -->\n)?```(?P<lang>bash|python)\n(?P<body>.*?)\n```",
                    re.S)


def snippets() -> list:
    text = README.read_text(encoding="utf-8")
    found = []
    for n, match in enumerate(_BLOCK.finditer(text)):
        line = text.count("\n", 0, match.start("body"))
        marks = [pytest.mark.skip(reason=f"README marks it: {match['reason']}")] if match["marker"] else []
        found.append(pytest.param(match["lang"], match["body"], id=f"{match['lang']}-line{line}", marks=marks))
    return found


def test_readme_has_runnable_snippets():
    params = snippets()
    runnable = [p for p in params if not p.marks]
    assert len(runnable) >= 2 and any(p.values[0] == "python" for p in runnable)
    skipped = [p for p in params if p.marks]
    assert all("skip" in m.name for p in skipped for m in p.marks)


def _flashu_bash(body: str) -> str:
    """A bash block's commands with ``flashu`` bound to this interpreter's CLI (the test may run outside the venv)."""
    cli = f"{shlex.quote(sys.executable)} -c 'import sys; from flashu.cli import entry; sys.argv[0] = \"flashu\"; entry()'"
    return f"flashu() {{ {cli} \"$@\"; }}\nset -e\n{body}\n"


@pytest.mark.parametrize("lang, body", snippets())
def test_readme_snippet_runs(lang, body, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "FLASHU_CACHE_DIR": str(tmp_path / "cache")}
    if lang == "python":
        cmd = [sys.executable, "-c", body]
    else:
        cmd = ["bash", "-c", _flashu_bash(body)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"stdout:\n{done.stdout[-2000:]}\nstderr:\n{done.stderr[-4000:]}"
    assert "Traceback" not in done.stderr
