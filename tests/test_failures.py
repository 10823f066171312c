"""Out of space, out of memory, out of time: one line, nothing partial, nothing lost.

The full-disk cases run on a real, tiny tmpfs that the test mounts and fills (this needs root, as CI and the
development machines have); where mounting is refused they are skipped, except the in-process ones, which then
simulate ENOSPC at the rename of the temporary file.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashu.cli import run
from flashu.errors import OutOfMemory
from flashu.io import files
from flashu.io.files import WriteError, atomic_write, write_text


class Disk:
    """A directory on a small file system that can be filled and freed."""

    def __init__(self, path: Path, simulated: bool):
        self.dir, self.simulated = path, simulated
        self._filler = path / "filler.bin"

    def fill(self) -> "Disk":
        if not self.simulated:
            try:
                with open(self._filler, "ab", buffering=0) as fh:
                    while True:
                        fh.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        return self

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def names(self) -> set[str]:
        return {p.relative_to(self.dir).as_posix() for p in self.dir.rglob("*")} - {"filler.bin"}


@pytest.fixture
def disk(tmp_path, monkeypatch, request):
    """A 2 MiB tmpfs (real ENOSPC), or, where mounting is refused, a simulated one for in-process tests."""
    mount = tmp_path / "fs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                             capture_output=True).returncode == 0
    if not mounted:
        if request.node.get_closest_marker("real_disk"):
            pytest.skip("cannot mount a tmpfs here (needs root)")
        real_replace = os.replace

        def full_replace(src, dst):
            if str(dst).startswith(str(mount)):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_replace(src, dst)

        monkeypatch.setattr(files.os, "replace", full_replace)
    yield Disk(mount, simulated=not mounted)
    if mounted:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _one_line(capsys, code_expected=2) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning: ")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------------ the helper


def test_atomic_write_leaves_nothing_on_full_disk(disk):
    disk.fill()
    target = disk.dir / "report.json"
    with pytest.raises(WriteError, match=r"cannot write .*report\.json: no space left on the device"):
        write_text(target, "x" * 100_000)
    assert disk.names() == set()  # neither the final name nor a temporary file


def test_atomic_write_keeps_the_old_file_when_a_new_one_fails(disk):
    target = disk.dir / "out.txt"
    write_text(target, "old")
    disk.fill()
    with pytest.raises(WriteError):
        write_text(target, "new" * 100_000)
    assert target.read_text() == "old" and disk.names() == {"out.txt"}


def test_atomic_write_removes_the_temporary_on_any_error(tmp_path):
    with pytest.raises(ValueError, match="boom"):
        with atomic_write(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_write_cause_reads_library_messages():
    assert files.write_cause(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))[0] \
        == errno.ENOSPC
    assert files.write_cause(OSError(errno.EDQUOT, "Disk quota exceeded"))[1] == "disk quota exceeded"
    assert files.write_cause(ValueError("unrelated")) is None


# ------------------------------------------------------------------------------------------------ commands


def test_generate_on_full_disk_is_one_line_and_leaves_no_file(disk, capsys):
    disk.fill()
    code = run(["generate", "--model", "tiny", "-p", "a red circle", "-p", "a blue square", "--steps", "3",
                "--out", str(disk.dir / "img.png"), "--no-progress"])
    assert code == 2
    line = _one_line(capsys)
    assert "img-0.png" in line and "no space left" in line
    assert disk.names() == set()  # no zero-byte img-0.png / img-1.png


def test_calibrate_on_full_disk(disk, capsys):
    disk.fill()
    code = run(["calibrate", "--model", "tiny", "--task", "mmu", "--samples", "2", "--out",
                str(disk.dir / "s.safetensors"), "--no-progress"])
    assert code == 2 and "no space left" in _one_line(capsys)
    assert disk.names() == set()


def test_ask_with_cache_on_full_disk_warns_and_answers(disk, capsys, monkeypatch, sample_image):
    monkeypatch.setenv("FLASHU_CACHE_DIR", str(disk.dir / "cache"))
    (disk.dir / "cache").mkdir()
    disk.fill()
    code = run(["ask", "--model", "tiny", "--image", str(sample_image), "--question", "what?", "--accel", "paper",
                "--max-new-tokens", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "could not cache importance scores" in captured.err and "Traceback" not in captured.err
    assert captured.out.strip() != "" or "decode:" in captured.err
    assert not list((disk.dir / "cache").rglob("*.safetensors"))


def test_save_pretrained_on_full_disk(disk, tiny_bundle):
    import flashu

    disk.fill()
    with pytest.raises(WriteError, match="no space left"):
        flashu.save_pretrained(tiny_bundle, disk.dir / "ckpt")
    partial = [p for p in (disk.dir / "ckpt").rglob("*") if p.is_file() and p.stat().st_size == 0]
    assert partial == []


def test_bench_json_on_full_disk(disk, capsys):
    disk.fill()
    code = run(["bench", "--model", "tiny", "--task", "t2i", "--accel", "none", "--repeats", "1", "--steps", "3",
                "--no-instrument", "--json", str(disk.dir / "b.json"), "--no-progress"])
    assert code == 2 and "no space left" in _one_line(capsys)
    assert disk.names() == set()


def _mmu_data(tmp_path, sample_image, n: int) -> Path:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"image": str(sample_image), "question": f"question {i}?",
                                        "answer": "red"}) + "\n" for i in range(n)))
    return data


@pytest.mark.real_disk
def test_eval_mmu_out_of_space_keeps_records_and_resumes(disk, capsys, tmp_path, sample_image, monkeypatch):
    data = _mmu_data(tmp_path, sample_image, 6)
    out = disk.dir / "run"
    common = ["eval", "mmu", "--model", "tiny", "--data", str(data), "--accel", "none", "--out", str(out),
              "--max-new-tokens", "2", "--no-progress"]
    from flashu.pipelines import mmu as evaluation  # eval_mmu imports answer from here at call time

    real_answer, calls = evaluation.answer, []

    def answer_then_fill(*args, **kwargs):  # the disk fills up while the fourth answer is computed
        calls.append(1)
        if len(calls) == 4:
            disk.fill()
        return real_answer(*args, **kwargs)

    monkeypatch.setattr(evaluation, "answer", answer_then_fill)
    assert run(common) == 2
    line = _one_line(capsys)
    assert "no space left" in line and str(out) in line
    part = out / ".flashu" / "mmu" / "none" / "predictions-rank0.jsonl"
    kept = [json.loads(text) for text in part.read_text().splitlines() if text.endswith("}")]
    assert [r["index"] for r in kept[:3]] == [0, 1, 2]  # every record written before the disk filled is kept
    disk.free()
    monkeypatch.setattr(evaluation, "answer", real_answer)
    assert run(common) == 0
    report = json.loads(capsys.readouterr().out)["configs"]["none"]
    assert report["complete"] and report["answered"] == 6
    assert report["resumed"] == len(kept) >= 3 and report["generated"] == 6 - len(kept)


def test_demo_on_full_disk(disk, capsys):
    disk.fill()
    code = run(["demo", "--images", "1", "--questions", "2", "--accel", "none", "--out",
                str(disk.dir / "grid.png"), "--no-progress"])
    assert code == 2 and "no space left" in _one_line(capsys)
    assert disk.names() == set()


# ------------------------------------------------------------------------------------------------ SIGTERM


def test_sigterm_during_eval_exits_143_with_records_intact(tmp_path, sample_image):
    data = _mmu_data(tmp_path, sample_image, 400)
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", "import sys; from flashu.cli import entry; sys.argv[0] = 'flashu'; entry()",
           "eval", "mmu", "--model", "tiny", "--data", str(data), "--accel", "none", "--out", str(out),
           "--max-new-tokens", "2", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    part = out / ".flashu" / "mmu" / "none" / "predictions-rank0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (part.is_file() and part.read_text().count("\n") >= 3):
        time.sleep(0.05)
    assert part.is_file(), proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    rows = [json.loads(line) for line in part.read_text().splitlines()]  # every line whole
    assert len(rows) >= 3 and len({r["index"] for r in rows}) == len(rows)


# ------------------------------------------------------------------------------------------------ out of memory


def _failing_allocation(*args, **kwargs):
    import torch

    return torch.empty(1 << 50, dtype=torch.uint8)  # a real allocation the CPU allocator refuses (1 PiB)


def test_out_of_memory_in_generate_is_one_error_and_the_model_stays_usable(bundle, monkeypatch):
    import flashu

    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    with monkeypatch.context() as m:
        m.setattr(bundle.model, "forward_generation", _failing_allocation)
        with pytest.raises(OutOfMemory, match=r"out of memory during generation \(1048576\.00 GiB requested\); "
                                              r"try fewer prompts"):
            with flashu.accelerated(bundle, "paper:generation.prune_ratio=0.2", task="t2i", progress=False):
                flashu.generate(bundle, ["a red circle"], steps=3, progress=False)
    assert getattr(bundle, "acceleration", None) is None  # restored on the way out
    after = bundle.model.state_dict()
    assert all(after[k].equal(v) for k, v in before.items())
    assert flashu.generate(bundle, ["a red circle"], steps=3, progress=False).images  # usable again


def test_out_of_memory_in_answer_through_the_cli(monkeypatch, capsys, sample_image):
    from flashu.model.showo2 import Showo2

    monkeypatch.setattr(Showo2, "forward_understanding", _failing_allocation)
    code = run(["ask", "--model", "tiny", "--image", str(sample_image), "--question", "what?", "--max-new-tokens",
                "2", "--no-progress"])
    assert code == 2
    line = _one_line(capsys)
    assert line.startswith("error: out of memory during answering (1048576.00 GiB requested)") and "--dtype" in line
