"""The benchmark harness: report schema, interleaving, overrides, fidelity wiring (tiny preset)."""

import json

import pytest

import flashu
from flashu.observe.bench import (
    OFFICIAL_LOOP, SCHEMA, SCHEMA_VERSION, TaskInputs, markdown, plot, run_benchmark, strict_json,
)

PAPER = "paper:generation.layer_skip_ratio=0.25,understanding.layer_skip_ratio=0.25"  # tiny: 4 layers


@pytest.fixture(scope="module")
def report(tiny_bundle):
    inputs = TaskInputs(prompts=["a red circle"], steps=4, max_new_tokens=3,
                        questions=["what color?"])
    return run_benchmark(tiny_bundle, "both", ["none", "exact", PAPER], repeats=2, inputs=inputs,
                         calibration_samples=2, progress=False)


def test_schema(report):
    assert report["schema"] == SCHEMA and report["version"] == SCHEMA_VERSION
    json.loads(json.dumps(strict_json(report), allow_nan=False))  # strict JSON
    assert list(report["tasks"]) == ["t2i", "mmu-short", "mmu-long"]
    for name, section in report["tasks"].items():
        names = [r["config"] for r in section["rows"]]
        expected = ["none", "exact", PAPER] + ([OFFICIAL_LOOP] if name != "t2i" else [])
        assert names == expected
        for row in section["rows"]:
            assert len(row["runs_s"]) == 2 and row["min_s"] <= row["median_s"] <= row["max_s"]
            assert row["peak_memory_bytes"] > 0 and "speedup_vs_none" in row and "speedup_vs_exact" in row
            if row["config"] != OFFICIAL_LOOP:
                assert row["flops"] > 0 and set(row["components_s"]) >= {"llm", "vae", "visual", "total"}
                comp = row["components_s"]
                assert sum(comp[c] for c in comp if c != "total") == pytest.approx(comp["total"], rel=1e-6)
    t2i = {r["config"]: r for r in report["tasks"]["t2i"]["rows"]}
    assert t2i["none"]["fidelity"]["latent_rel_l2"] == 0
    assert t2i["exact"]["fidelity"]["latent_rel_l2"] < 1e-4
    assert t2i[PAPER]["evaluations"] == 2 and t2i["none"]["evaluations"] == 3
    assert t2i[PAPER]["flop_ratio_vs_none"] > 1
    for name in ("mmu-short", "mmu-long"):
        mmu = {r["config"]: r for r in report["tasks"][name]["rows"]}
        assert mmu["none"]["fidelity"]["exact_match"] == 1.0
        assert mmu[OFFICIAL_LOOP]["fidelity"]["exact_match"] == 1.0  # the cache-less loop: same tokens
        assert mmu["none"]["speedup_vs_official_loop"] > 0
        assert sum(mmu[PAPER]["kept_tokens"]) < sum(mmu["none"]["kept_tokens"])
    assert report["tasks"]["mmu-long"]["rows"][0]["answer_tokens"] == 3
    assert report["tasks"]["mmu-short"]["rows"][0]["answer_tokens"] <= 2


def test_runs_are_interleaved(report):
    assert report["tasks"]["t2i"]["run_order"] == ["none", "exact", PAPER] * 2


def test_markdown_and_plot(report, tmp_path):
    text = markdown(report)
    assert f"| {PAPER} |" in text and "text-to-image" in text and "short answers" in text and "long answers" in text
    for line in text.splitlines():  # valid Markdown: a table line starts and ends with a pipe, nothing else mixes
        assert not line.startswith("|") or line.rstrip().endswith("|"), line
    path = tmp_path / "bench.png"
    plot(report, str(path))
    assert path.stat().st_size > 1000


def test_bench_leaves_the_model_unaccelerated(tiny_bundle, report):
    assert tiny_bundle.acceleration is None


def test_report_is_strict_json():
    assert strict_json({"a": float("inf"), "b": [float("nan"), 1.0], "c": "x"}) == {"a": None, "b": [None, 1.0],
                                                                                    "c": "x"}
