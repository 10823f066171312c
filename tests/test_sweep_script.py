"""benchmarks/robustness_sweep.py: its classification, and a handful of its cases run for real (those that fail
before any model is loaded, so this stays fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import load_benchmark_script


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark_script("robustness_sweep")


def _result(sweep, rc, stderr="", stdout="", seconds=1.0, d=Path(".")):
    return sweep.Result(rc, stdout, stderr, seconds, d, d)


def test_classification(sweep, tmp_path):
    error = sweep.Case("numbers", "x", argv=[], needle="steps", fast=True)
    assert sweep.classify(error, _result(sweep, 2, "error: --steps must be between 2 and 10000\n"))[0] == "ok-error"
    assert sweep.classify(error, _result(sweep, 2, "warning: w\nerror: --steps bad\n"))[0] == "ok-error"
    assert sweep.classify(error, _result(sweep, 2, "error: something else\n"))[0] == "wrong-error"
    bars = "calibrating mmu:   0%|          | 0/20 [00:00<?, ?pair/s]\rcalibrating mmu: 100%|██████████| 20/20\n"
    assert sweep.classify(error, _result(sweep, 2, bars + "error: --steps bad\n"))[0] == "ok-error"
    assert sweep.classify(error, _result(sweep, 2, "error: --steps\nmore\n"))[0] == "wrong-error"
    assert sweep.classify(error, _result(sweep, 2, "error: --steps", seconds=60))[0] == "wrong-error"
    assert sweep.classify(error, _result(sweep, 1, "Traceback (most recent call last):\n  boom\n"))[0] == "traceback"
    assert sweep.classify(error, _result(sweep, -9))[0] == "traceback"
    assert sweep.classify(error, _result(sweep, None))[0] == "hang"
    assert sweep.classify(error, _result(sweep, 0))[0] == "silently-wrong"

    from PIL import Image

    Image.new("RGB", (32, 32), "black").save(tmp_path / "flat.png")
    Image.effect_noise((32, 32), 64).convert("RGB").save(tmp_path / "o.png")
    success = sweep.Case("outputs", "x", argv=[], expect="success", check=sweep.image())
    assert sweep.classify(success, _result(sweep, 0, d=tmp_path))[0] == "ok-success"
    assert sweep.classify(success, _result(sweep, 2, "error: no\n", d=tmp_path))[0] == "wrong-error"
    flat = sweep.Case("outputs", "x", argv=[], expect="success", check=sweep.image("flat.png"))
    assert sweep.classify(flat, _result(sweep, 0, d=tmp_path)) == ("silently-wrong", "flat.png is one flat colour "
                                                                   "(0, 0, 0) (non-finite latents?)")
    warned = sweep.Case("text", "x", argv=[], expect="success", check=sweep.warns("truncated"))
    assert sweep.classify(warned, _result(sweep, 0, "warning: prompt truncated\n"))[0] == "ok-success"
    assert sweep.classify(warned, _result(sweep, 0, ""))[0] == "silently-wrong"


def test_enough_cases_in_every_category(sweep):
    cases = sweep.all_cases({})
    assert len([c for c in cases if not c.slow]) >= 200
    for category in sweep.CATEGORIES:
        assert len([c for c in cases if c.category == category]) >= 15, category
    assert len({c.id for c in cases}) == len(cases)


def test_a_few_cases_run(sweep, tmp_path):
    chosen = ["--steps 0", "--guidance nan", "prompt with bytes that are not UTF-8", "--out with an unknown extension",
              "unknown preset", "override NaN"]
    by_description = {c.description: c for c in sweep.all_cases({})}
    ids = [by_description[d].id for d in chosen]
    assert all(not by_description[d].needs_fixtures for d in chosen)
    report = tmp_path / "sweep.json"
    sweep.main([*(a for i in ids for a in ("--only", i)), "--work", str(tmp_path / "work"), "--json", str(report)])
    data = json.loads(report.read_text())
    assert data["counts"]["total"]["cases"] == len(ids)
    assert {r["id"]: r["outcome"] for r in data["cases"]} == {i: "ok-error" for i in ids}
