"""The flashu command line: main jobs work, every bad input is one line and exit status 2."""

import json
import subprocess
import sys

import pytest

from flashu.cli import run


def _one_line_error(capsys, argv):
    code = run(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]  # e.g. random weights
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def test_generate_writes_png(tmp_path, capsys):
    out = tmp_path / "img.png"
    assert run(["generate", "--model", "tiny", "--prompt", "a red circle", "--steps", "4", "--out", str(out),
                "--no-progress"]) == 0
    assert out.is_file() and out.stat().st_size > 0
    assert "evaluations: 3" in capsys.readouterr().out


def test_ask_prints_answer(sample_image, capsys):
    assert run(["ask", "--model", "tiny", "--image", str(sample_image), "--question", "what color?",
                "--max-new-tokens", "4"]) == 0
    captured = capsys.readouterr()
    assert "prefill" in captured.err and "tok/s" in captured.err


def test_info_json_for_official_size(capsys):
    assert run(["info", "--model", "1.5b", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"]["total"] == pytest.approx(2.83e9, rel=0.01)


@pytest.mark.parametrize("argv, needle", [
    (["generate", "--model", "nosuch", "--prompt", "x"], "no such model"),
    (["generate", "--model", "tiny", "--prompt", " "], "empty prompt"),
    (["generate", "--model", "tiny", "--prompt", "x", "--size", "33"], "multiple"),
    (["generate", "--model", "tiny", "--prompt", "x", "--dtype", "float8"], "dtype"),
    (["generate", "--model", "tiny", "--prompt", "x", "--device", "cuda:0"], "CUDA"),
    (["generate", "--model", "tiny", "--prompt", "x", "--device", "toaster"], "device"),
    (["generate", "--model", "tiny", "--prompt", "x", "--steps", "abc"], "steps"),
    (["generate", "--model", "tiny"], "prompt"),
    (["ask", "--model", "tiny", "--image", "missing.png", "--question", "q"], "cannot read image"),
    (["ask", "--model", "tiny", "--image", "x.png", "--question", " "], "empty question"),
    (["ask", "--model", "tiny", "--image", "x.png", "--question", "q", "--max-new-tokens", "0"], "max-new-tokens"),
    (["info", "--model", "3b"], "presets are"),
    (["nosuchcommand"], "No such command"),
])
def test_bad_input_is_one_line(capsys, argv, needle):
    err = _one_line_error(capsys, argv)
    assert needle.lower() in err.lower()


def test_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    _one_line_error(capsys, ["ask", "--model", "tiny", "--image", str(bad), "--question", "q"])


def test_corrupt_and_truncated_checkpoints(tmp_path, capsys, tiny_bundle):
    from flashu import save_pretrained

    directory = save_pretrained(tiny_bundle, tmp_path / "ckpt")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    err = _one_line_error(capsys, ["generate", "--model", str(directory), "--prompt", "x"])
    assert "model.safetensors" in err
    (directory / "config.json").write_text("{not json")
    _one_line_error(capsys, ["generate", "--model", str(directory), "--prompt", "x"])
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, ["generate", "--model", str(empty), "--prompt", "x"])


def test_console_script_exit_code_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "flashu.cli", "info", "--model", "nosuch/model"],
                          capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
