"""The GPU benchmark script runs end to end on the CPU with the tiny preset (``--dry-run``)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu.py"


def test_gpu_script_dry_run(tmp_path):
    pytest.importorskip("torchao")  # the quantization parts' dry run runs torchao's kernels on the CPU
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--calibration-samples",
                           "2"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for part in ("t2i-eager", "t2i-compiled", "mmu-short", "t2i-quant", "mmu-quant"):
        report = json.loads((tmp_path / f"gpu-{part}.json").read_text())
        assert report["schema"] == "flashu-bench" and report["part"] == part
        rows = next(iter(report["tasks"].values()))["rows"]
        if part.endswith("quant"):
            assert [r["config"] for r in rows][:3] == ["plus", "plus-int8", "plus:quantization.backend=torchao"]
            continue
        assert [r["config"] for r in rows][:3] == (["none", "exact", "paper"] if part.startswith("t2i")
                                                    else ["none", "paper", "plus"])
    assert (json.loads((tmp_path / "gpu-t2i-compiled.json").read_text()))["compiled"] is True
    assert "## mmu-short" in (tmp_path / "gpu.md").read_text()


def test_gpu_script_refuses_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the script would run, not refuse")
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "no CUDA device" in done.stderr
