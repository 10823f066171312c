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
    import flashu

    assert run(["ask", "--model", "testbed", "--image", str(sample_image), "--question", "what color is the circle?",
                "--max-new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    assert "prefill" in captured.err and "tok/s" in captured.err
    want = flashu.answer(flashu.load_model("testbed"), str(sample_image), "what color is the circle?",
                         max_new_tokens=8)
    assert captured.out.strip() == want.text.strip() and want.text.strip()


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
    line = _one_line_error(capsys, ["ask", "--model", "tiny", "--image", str(bad), "--question", "q"])
    assert "bad.jpg" in line


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


# ------------------------------------------------------------------------------------------------ one grammar


def test_accel_presets_table_and_one_loadable_preset(capsys, tmp_path):
    from flashu.accel.config import ACCEL_PRESET_NAMES
    from flashu.accel.spec import resolve_accel

    assert run(["accel-presets"]) == 0
    table = capsys.readouterr().out
    assert all(any(line.startswith(name + " ") for line in table.splitlines()) for name in ACCEL_PRESET_NAMES)
    assert "speculative_decoding=True" in table and "{" not in table  # a table, not JSON dumps
    assert run(["accel-presets", "plus"]) == 0
    path = tmp_path / "plus.json"
    path.write_text(capsys.readouterr().out)
    assert resolve_accel(str(path)).to_dict() == resolve_accel("plus").to_dict()
    assert run(["accel-presets", "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == set(ACCEL_PRESET_NAMES)
    assert "unknown acceleration preset 'nope'" in _one_line_error(capsys, ["accel-presets", "nope"])


def test_configuration_lists_take_commas_and_repetition(capsys, tmp_path):
    from flashu.cli import _specs

    assert _specs(("none,paper", "plus"), (), "none") == ["none", "paper", "plus"]
    assert _specs((), ("none,exact",), "none") == ["none", "exact"]  # --configs: the old spelling still works
    assert _specs((), (), "none,paper") == ["none", "paper"]
    assert _specs(("paper:understanding.token_prune_ratio=0.75,understanding.token_scorer=query",), (), "x") == \
        ["paper:understanding.token_prune_ratio=0.75,understanding.token_scorer=query"]
    line = _one_line_error(capsys, ["eval", "testbed", "--accel", "none,nope", "--n-gen", "0", "--n-mmu", "1"])
    assert "nope" in line
    assert run(["eval", "testbed", "--accel", "none,exact", "--n-gen", "0", "--n-mmu", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "\nnone " in out and "\nexact " in out


@pytest.mark.parametrize("command", [["demo"], ["eval", "testbed"], ["bench"], ["eval", "mmu"], ["eval", "t2i"],
                                     ["generate"], ["ask"], ["calibrate"], ["analyze", "specialization"]])
def test_model_loading_commands_share_the_common_flags(command):
    from click.testing import CliRunner

    from flashu.cli import main

    help_text = CliRunner().invoke(main, [*command, "--help"]).output
    for flag in ("--model", "--device", "--dtype", "--progress", "--accel" if command[0] not in ("calibrate",
                                                                                                 "analyze") else ""):
        assert flag in help_text, (command, flag)


def test_bench_plot_through_the_cli(tmp_path, capsys):
    """`exact` is bit-identical on t2i: its PSNR is infinite, None in the strict JSON the CLI plots from."""
    png, report = tmp_path / "b.png", tmp_path / "b.json"
    assert run(["bench", "--model", "tiny", "--task", "t2i", "--accel", "none,exact", "--repeats", "1", "--steps",
                "3", "--no-instrument", "--plot", str(png), "--json", str(report), "--no-progress"]) == 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(report.read_text())["tasks"]["t2i"]["rows"]
    assert any(r["config"] == "exact" and r["fidelity"]["psnr_db"] is None for r in rows)


def test_missing_matplotlib_is_said_before_the_benchmark(monkeypatch, capsys, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr("flashu.observe.bench.run_benchmark", lambda *a, **k: pytest.fail("benchmark ran"))
    line = _one_line_error(capsys, ["bench", "--model", "tiny", "--task", "t2i", "--plot", str(tmp_path / "b.png")])
    assert "pip install 'flashu[plot]'" in line


def test_compile_timings_exclude_the_warm_up(monkeypatch, capsys, sample_image):
    calls = []
    monkeypatch.setattr("flashu.compiled.compile", lambda bundle, **kw: calls.append("compile") or bundle)
    from flashu.pipelines import mmu

    real = mmu.answer
    monkeypatch.setattr(mmu, "answer", lambda *a, **k: calls.append("answer") or real(*a, **k))
    assert run(["ask", "--model", "tiny", "--image", str(sample_image), "--question", "what?", "--max-new-tokens", "2",
                "--compile", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert calls == ["compile", "answer", "answer"]  # compiled, warmed up untimed, then the timed answer
    assert "compiling (first call only; the timings below exclude it)" in err and "compiled and warmed up in" in err
    assert err.index("compiled and warmed up") < err.index("prefill:")


def test_short_reprs(tiny_bundle):
    import flashu
    from PIL import Image

    result = flashu.generate(tiny_bundle, ["a"], steps=3, progress=False)
    reply = flashu.answer(tiny_bundle, Image.new("RGB", (32, 32)), "what?", max_new_tokens=2)
    for text in (repr(result), repr(reply)):
        assert "\n" not in text and "tensor(" not in text and len(text) < 300
    acc = flashu.accelerate(tiny_bundle, "paper", progress=False, calibration_samples=2)
    try:
        text = repr(acc)
        assert text.startswith("Acceleration('paper'") and "tensor(" not in text and len(text) < 300
        assert str(acc) == text
    finally:
        flashu.restore(tiny_bundle)
