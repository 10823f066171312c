"""The benchmark harness: report schema, interleaving, overrides, fidelity wiring (tiny preset)."""

import json

import pytest

import flashu
from flashu.observe.bench import SCHEMA, SCHEMA_VERSION, TaskInputs, markdown, plot, run_benchmark, strict_json

PAPER = "paper:generation.layer_skip_ratio=0.25,understanding.layer_skip_ratio=0.25"  # tiny: 4 layers


@pytest.fixture(scope="module")
def report(tiny_bundle):
    inputs = TaskInputs(prompts=["a red circle"], steps=4, max_new_tokens=3,
                        questions=["what color?"])
    return run_benchmark(tiny_bundle, ["t2i", "mmu"], ["none", "exact", PAPER], repeats=2, inputs=inputs,
                         calibration_samples=2, progress=False)


def test_schema(report):
    assert report["schema"] == SCHEMA and report["version"] == SCHEMA_VERSION
    json.loads(json.dumps(report))  # serialisable
    for task in ("t2i", "mmu"):
        section = report["tasks"][task]
        names = [r["config"] for r in section["rows"]]
        assert names == ["none", "exact", PAPER]
        for row in section["rows"]:
            assert len(row["runs_s"]) == 2 and row["min_s"] <= row["median_s"] <= row["max_s"]
            assert row["peak_memory_bytes"] > 0 and row["flops"] > 0
            assert set(row["components_s"]) >= {"llm", "vae", "visual"}
            assert "speedup_vs_none" in row and "speedup_vs_exact" in row
    t2i = {r["config"]: r for r in report["tasks"]["t2i"]["rows"]}
    assert t2i["none"]["fidelity"]["latent_rel_l2"] == 0
    assert t2i["exact"]["fidelity"]["latent_rel_l2"] < 1e-4
    assert t2i[PAPER]["evaluations"] == 2 and t2i["none"]["evaluations"] == 3
    assert t2i[PAPER]["flop_ratio_vs_none"] > 1
    mmu = {r["config"]: r for r in report["tasks"]["mmu"]["rows"]}
    assert mmu["none"]["fidelity"]["exact_match"] == 1.0
    assert sum(mmu[PAPER]["kept_tokens"]) < sum(mmu["none"]["kept_tokens"])


def test_runs_are_interleaved(report):
    assert report["tasks"]["t2i"]["run_order"] == ["none", "exact", PAPER] * 2


def test_markdown_and_plot(report, tmp_path):
    text = markdown(report)
    assert f"| {PAPER} |" in text and "text-to-image" in text and "understanding" in text
    path = tmp_path / "bench.png"
    plot(report, str(path))
    assert path.stat().st_size > 1000


def test_bench_leaves_the_model_unaccelerated(tiny_bundle, report):
    assert tiny_bundle.acceleration is None


def test_report_is_strict_json():
    assert strict_json({"a": float("inf"), "b": [float("nan"), 1.0], "c": "x"}) == {"a": None, "b": [None, 1.0],
                                                                                    "c": "x"}
