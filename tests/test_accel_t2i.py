"""FlashU for text-to-image on the tiny preset: every technique's schedule, exactness claims, the API."""

import dataclasses
import json

import pytest
import torch

import flashu
import flashu.pipelines.sampling
from flashu import FlashuError
from flashu.accel.calibration import calibrate
from flashu.accel.config import FlashUConfig, GenerationAccelConfig, accel_preset
from flashu.accel.generation import FlashUGenerationSession
from flashu.accel.layer_skip import GenerationLayerSkip
from flashu.accel.layer_skip import least_important_layers
from flashu.accel.importance import ImportanceScores
from flashu.accel.pruning import kept_count, two_task_order
from flashu.errors import ConfigError
from flashu.pipelines.t2i import build_generation_inputs

STEPS = 50  # → 34 evaluations under the paper's 0.7 step fraction


@pytest.fixture(scope="module")
def t2i_scores(bundle):
    return calibrate(bundle, "t2i", samples=3, steps=4, progress=False)


def _gen_only(name="paper", **changes):
    """``name``'s generation side on tiny (4 layers: the paper's r_LS 0.2 would skip none, so 0.25 skips 1)."""
    cfg = accel_preset(name).for_task("t2i")
    if cfg.generation.layer_skip_ratio == 0.2:
        changes.setdefault("layer_skip_ratio", 0.25)
    cfg.generation = dataclasses.replace(cfg.generation, **changes)
    return cfg


def _session(bundle, **changes):
    gcfg = GenerationAccelConfig(**{"layer_skip_ratio": 0.25, **changes})
    inputs = build_generation_inputs(bundle, ["a red circle"], bundle.config.image_size, with_uncond=True)
    return FlashUGenerationSession(gcfg, bundle.config.llm.num_layers, None, None, inputs, STEPS, 8.0)


class PlanRecorder:
    """A pipeline step observer recording every evaluation's plan."""

    def __init__(self):
        self.plans = []

    def plan(self, step, plan):
        return plan

    def observe(self, step, plan, output):
        self.plans.append(plan)


def test_paper_schedule_counts_evaluations(bundle):
    session = _session(bundle)
    assert session.schedule.num_evaluations == 34 and len(session.schedule.grid) == 35
    assert session.schedule.guidance == [6.0] * 24 + [8.0] * 10  # 0.75·s0 for the first 70 %
    assert [k for k in range(34) if session.in_full_phase(k)] == list(range(24, 34))  # τ = 0.3 → last 10


def test_head_cache_store_and_reuse_pattern(bundle):
    """The real session through a real generation: which evaluations reuse the cached head features."""
    recorder = PlanRecorder()
    with flashu.accelerated(bundle, _gen_only("only-head-cache", full_ffn_fraction=0.3)):
        flashu.generate(bundle, "a red circle", steps=35, seed=0, progress=False, decode=False, observer=recorder)
    pattern = "".join("R" if p.head_features is not None else "C" for p in recorder.plans)
    # the reference's rule (1-based step s = k + 1): computed at s = 1–5, 10, 15, 20, full phase s = 25–34
    assert pattern == "CCCCC" + "RRRRC" * 3 + "RRRR" + "C" * 10
    assert pattern.count("R") == 16


def test_layer_skip_ranks_every_interval_and_never_in_full_phase(bundle):
    session = _session(bundle, layer_skip_ratio=0.5)
    skip = session.technique(GenerationLayerSkip)
    assert session.plan(0).similarity == "image" and session.plan(5).similarity is None
    ranks = [k for k in range(34) if skip.ranks(session.step(k))]
    assert ranks == [0, 10, 20]
    assert skip.skip_count == 2
    skip.skipped = [1, 2]
    assert session.plan(5).layers == [0, 3, 4]
    assert session.plan(10).layers is None  # ranking evaluation: full depth
    assert session.plan(30).layers is None and session.plan(30).ffn_ranges is None  # full phase


def test_least_important_layers():
    sims = {0: 0.99, 1: 0.5, 2: 0.97, 3: 0.98}
    assert least_important_layers(sims, 2, 4, protect_first_last=False) == [0, 3]
    assert least_important_layers(sims, 2, 4, protect_first_last=True) == [1, 2]


@pytest.mark.parametrize("total, ratio, align, expected", [
    (8960, 0.2, 64, 7168), (256, 0.2, 64, 192), (256, 0.0, 64, 256), (100, 0.9, 64, 64), (40, 0.5, 64, 40),
    (256, 0.99, 64, 64), (1120, 0.2, 64, 896),
])
def test_kept_count_alignment(total, ratio, align, expected):
    assert kept_count(total, ratio, align) == expected


def test_two_task_order_makes_both_sets_contiguous():
    order, g, u = two_task_order(8, {0, 3, 5}, {3, 5, 6, 7})
    assert order.tolist() == [0, 3, 5, 6, 7, 1, 2, 4]
    assert set(order[g[0]:g[1]].tolist()) == {0, 3, 5}
    assert set(order[u[0]:u[1]].tolist()) == {3, 5, 6, 7}


def test_accelerate_is_function_preserving_and_restore_bit_exact(bundle, t2i_scores):
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    base = flashu.generate(bundle, "a red circle", steps=6, seed=0, progress=False, decode=False)
    cfg = _gen_only()
    with flashu.accelerated(bundle, cfg, scores={"t2i": t2i_scores}) as acc:
        assert not torch.equal(bundle.model.layers[0].mlp.gate_proj.weight, before["showo.model.layers.0.mlp.gate_proj.weight"])
        same = flashu.generate(bundle, "a red circle", steps=6, seed=0, progress=False, decode=False,
                               policy=flashu.pipelines.t2i.BaselinePolicy())
        assert torch.allclose(same.latents, base.latents, atol=1e-5)  # permuted model = same function
        assert not torch.equal(same.latents, flashu.generate(bundle, "a red circle", steps=6, seed=0,
                                                             progress=False, decode=False).latents)
        kept = acc.layout.kept_neurons("t2i")
        assert kept == [192] * bundle.config.llm.num_layers
    after = bundle.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    again = flashu.generate(bundle, "a red circle", steps=6, seed=0, progress=False, decode=False)
    assert torch.equal(again.latents, base.latents)


def test_zero_copy_weight_memory(bundle, t2i_scores):
    def storage(model):
        return sum(p.numel() * p.element_size() for p in model.parameters()), \
            [p.data_ptr() for p in model.parameters()]
    size, ptrs = storage(bundle.model)
    with flashu.accelerated(bundle, _gen_only(), scores={"t2i": t2i_scores}):
        size2, ptrs2 = storage(bundle.model)
    assert size2 == size and ptrs2 == ptrs


def test_lazy_backbone_is_bit_identical_to_paper_semantics(bundle, t2i_scores):
    cfg = _gen_only(layer_skip_ratio=0.5)
    with flashu.accelerated(bundle, cfg, scores={"t2i": t2i_scores}):
        paper = flashu.generate(bundle, "two blue squares", steps=STEPS, seed=1, progress=False, decode=False)
    cfg_lazy = _gen_only(layer_skip_ratio=0.5, lazy_backbone=True)
    with flashu.accelerated(bundle, cfg_lazy, scores={"t2i": t2i_scores}):
        lazy = flashu.generate(bundle, "two blue squares", steps=STEPS, seed=1, progress=False, decode=False)
    assert torch.equal(paper.latents, lazy.latents)
    assert paper.stats["backbone_runs"] == 34
    # reused evaluations skip the backbone, except ranking evaluations (k = 10, 20 are reuse steps)
    assert lazy.stats["backbone_runs"] == 34 - 16 + 2
    assert lazy.stats["head_reused"] == 16 and lazy.stats["layer_rankings"] == 3


def test_exact_trims_match_paper_semantics(bundle, t2i_scores):
    with flashu.accelerated(bundle, _gen_only(), scores={"t2i": t2i_scores}):
        paper = flashu.generate(bundle, "a yellow circle", steps=20, seed=2, progress=False, decode=False)
    with flashu.accelerated(bundle, _gen_only(exact_trims=True), scores={"t2i": t2i_scores}):
        trimmed = flashu.generate(bundle, "a yellow circle", steps=20, seed=2, progress=False, decode=False)
    assert torch.allclose(paper.latents, trimmed.latents, atol=1e-4)


def test_interleaved_generations_keep_separate_state(bundle, t2i_scores):
    from flashu.pipelines.t2i import generate

    with flashu.accelerated(bundle, _gen_only(layer_skip_ratio=0.5), scores={"t2i": t2i_scores}) as acc:
        solo_a = generate(bundle, "a red circle", steps=20, seed=0, progress=False, decode=False)
        solo_b = generate(bundle, ["a blue square", "a green triangle"], steps=20, seed=5, progress=False,
                          decode=False)
        # two sessions advanced alternately must not see each other's caches or skip sets
        policy = acc.generation_policy()
        model = bundle.model
        runs = []
        for prompts, seed in ((["a red circle"], 0), (["a blue square", "a green triangle"], 5)):
            inputs = build_generation_inputs(bundle, prompts, bundle.config.image_size, True)
            session = policy.start(bundle, inputs, 20, bundle.config.default_guidance)
            x = flashu.pipelines.t2i.initial_noise(bundle, len(prompts), bundle.config.image_size, seed)
            runs.append([inputs, session, x, len(prompts)])
        grid = runs[0][1].schedule.grid.tolist()
        with torch.no_grad():
            for k in range(runs[0][1].schedule.num_evaluations):
                for run in runs:
                    inputs, session, x, n = run
                    out = model.forward_generation(torch.cat([x, x]), torch.full((2 * n,), grid[k]), inputs,
                                                   session.plan(k))
                    session.observe(k, out)
                    v = flashu.pipelines.sampling.guided(out.velocity, session.schedule.guidance[k], n)
                    run[2] = flashu.pipelines.sampling.euler_update(x, v, grid[k], grid[k + 1])
    assert torch.allclose(runs[0][2], solo_a.latents, atol=1e-5)
    assert torch.allclose(runs[1][2], solo_b.latents, atol=1e-5)


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="generation.prune_ratio"):
        FlashUConfig.from_dict({"generation": {"prune_ratio": 1.0}})
    with pytest.raises(ConfigError, match="layer_skip_interval"):
        FlashUConfig.from_dict({"generation": {"layer_skip_interval": 0}})
    with pytest.raises(ConfigError, match="step_fraction"):
        FlashUConfig.from_dict({"generation": {"step_fraction": 0}})
    with pytest.raises(ConfigError, match="head_cache_interval"):
        FlashUConfig.from_dict({"generation": {"head_cache_interval": -1}})
    with pytest.raises(ConfigError, match="unknown FlashU config field generation.bogus"):
        FlashUConfig.from_dict({"generation": {"bogus": 1}})
    with pytest.raises(ConfigError, match="generation.prune_ratio must be a finite number"):
        FlashUConfig.from_dict({"generation": {"prune_ratio": "0.2"}})
    with pytest.raises(ConfigError, match="guidance_low_factor must be a finite number"):
        FlashUConfig.from_dict({"generation": {"guidance_low_factor": float("nan")}})
    with pytest.raises(ConfigError, match="lazy_backbone must be a bool"):
        FlashUConfig.from_dict({"generation": {"lazy_backbone": 1}})
    with pytest.raises(ConfigError, match="version"):
        FlashUConfig.from_dict({"schema": "flashu-accel", "version": 99})
    with pytest.raises(ConfigError, match="unknown acceleration preset"):
        accel_preset("fast")
    cfg = accel_preset("plus")
    data = json.loads(cfg.to_json())
    assert data["schema"] == "flashu-accel" and data["version"] == 2
    assert FlashUConfig.from_dict(data) == cfg
    version_1 = {k: v for k, v in data.items() if k != "quantization"} | {"version": 1}  # before quantization
    assert FlashUConfig.from_dict(version_1) == cfg
    with pytest.raises(ConfigError, match="quantization.mode must be one of"):
        FlashUConfig.from_dict({"quantization": {"mode": "int4"}})
    with pytest.raises(ConfigError, match="backend fbgemm runs int8-dynamic only"):
        FlashUConfig.from_dict({"quantization": {"mode": "fp8", "backend": "fbgemm"}})
    assert cfg.generation.lazy_backbone and cfg.generation.exact_trims


def test_scores_round_trip_and_other_model_refused(bundle, t2i_scores, tmp_path):
    path = t2i_scores.save(tmp_path / "scores.safetensors")
    loaded = ImportanceScores.load(path)
    assert torch.equal(loaded.ffn, t2i_scores.ffn) and loaded.samples == 3
    other = flashu.load_model("tiny", seed=1)
    before = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(FlashuError, match="another model"):
        flashu.accelerate(other, _gen_only(), scores={"t2i": path})
    assert other.acceleration is None
    assert all(torch.equal(before[k], v) for k, v in other.model.state_dict().items())  # untouched
    with pytest.raises(FlashuError, match="task|for t2i"):
        flashu.accelerate(bundle, _gen_only(), scores={"mmu": path})
    assert bundle.acceleration is None


def test_accelerate_twice_refused(bundle, t2i_scores):
    with flashu.accelerated(bundle, _gen_only(), scores={"t2i": t2i_scores}):
        with pytest.raises(FlashuError, match="already accelerated"):
            flashu.accelerate(bundle, _gen_only(), scores={"t2i": t2i_scores})


def test_attention_group_pruning_runs(bundle, t2i_scores):
    cfg = _gen_only(attention_group_prune_ratio=0.5)
    base = flashu.generate(bundle, "a red circle", steps=6, seed=0, progress=False, decode=False,
                           policy=flashu.pipelines.t2i.BaselinePolicy())
    with flashu.accelerated(bundle, cfg, scores={"t2i": t2i_scores}) as acc:
        assert all(b - a == 1 for a, b in acc.layout.group_ranges["t2i"])  # 2 KV groups → 1 kept
        pruned = flashu.generate(bundle, "a red circle", steps=6, seed=0, progress=False, decode=False)
        same = flashu.generate(bundle, "a red circle", steps=6, seed=0, progress=False, decode=False,
                               policy=flashu.pipelines.t2i.BaselinePolicy())
    assert torch.allclose(same.latents, base.latents, atol=1e-5)
    assert torch.isfinite(pruned.latents).all() and not torch.allclose(pruned.latents, base.latents)
