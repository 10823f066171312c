"""The benchmark harness: report schema, interleaving, overrides, fidelity wiring (tiny preset)."""

import json

import pytest

import flashu
from flashu.observe.bench import SCHEMA, SCHEMA_VERSION, TaskInputs, markdown, parse_config, plot, run_benchmark
from flashu.errors import ConfigError


@pytest.fixture(scope="module")
def report(tiny_bundle):
    inputs = TaskInputs(prompts=["a red circle"], steps=4, max_new_tokens=3,
                        questions=["what color?"])
    return run_benchmark(tiny_bundle, ["t2i", "mmu"], ["none", "exact", "paper"], repeats=2, inputs=inputs,
                         calibration_samples=2, progress=False)


def test_schema(report):
    assert report["schema"] == SCHEMA and report["version"] == SCHEMA_VERSION
    json.loads(json.dumps(report))  # serialisable
    for task in ("t2i", "mmu"):
        section = report["tasks"][task]
        names = [r["config"] for r in section["rows"]]
        assert names == ["none", "exact", "paper"]
        for row in section["rows"]:
            assert len(row["runs_s"]) == 2 and row["min_s"] <= row["median_s"] <= row["max_s"]
            assert row["peak_memory_bytes"] > 0 and row["flops"] > 0
            assert set(row["components_s"]) >= {"llm", "vae", "siglip"}
            assert "speedup_vs_none" in row and "speedup_vs_exact" in row
    t2i = {r["config"]: r for r in report["tasks"]["t2i"]["rows"]}
    assert t2i["none"]["fidelity"]["latent_rel_l2"] == 0
    assert t2i["exact"]["fidelity"]["latent_rel_l2"] < 1e-4
    assert t2i["paper"]["evaluations"] == 2 and t2i["none"]["evaluations"] == 3
    assert t2i["paper"]["flop_ratio_vs_none"] > 1
    mmu = {r["config"]: r for r in report["tasks"]["mmu"]["rows"]}
    assert mmu["none"]["fidelity"]["exact_match"] == 1.0
    assert sum(mmu["paper"]["kept_tokens"]) < sum(mmu["none"]["kept_tokens"])


def test_runs_are_interleaved(report):
    assert report["tasks"]["t2i"]["run_order"] == ["none", "exact", "paper"] * 2


def test_markdown_and_plot(report, tmp_path):
    text = markdown(report)
    assert "| paper |" in text and "text-to-image" in text and "understanding" in text
    path = tmp_path / "bench.png"
    plot(report, str(path))
    assert path.stat().st_size > 1000


def test_bench_leaves_the_model_unaccelerated(tiny_bundle, report):
    assert tiny_bundle.acceleration is None


def test_config_overrides():
    cfg = parse_config("paper:understanding.token_scorer=random,understanding.token_prune_ratio=0.25", "mmu")
    assert cfg.understanding.token_scorer == "random" and cfg.understanding.token_prune_ratio == 0.25
    assert cfg.generation is None
    assert parse_config("plus:generation.lazy_backbone=false", "t2i").generation.lazy_backbone is False
    with pytest.raises(ConfigError, match="bad override"):
        parse_config("paper:nosuch.field=1", "t2i")
    with pytest.raises(ConfigError, match="expected float"):
        parse_config("paper:generation.prune_ratio=abc", "t2i")
    with pytest.raises(ConfigError, match="prune_ratio"):
        parse_config("paper:generation.prune_ratio=1.5", "t2i")
    assert parse_config("none", "t2i") == "none"
