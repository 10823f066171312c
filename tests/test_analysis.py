"""The specialization analysis: overlap math on a hand-made example, the leave-one-out identity against brute-force
ablation, consistency with calibration's Wanda scores, and the JSON/PNG outputs (tiny preset)."""

from __future__ import annotations

import json

import pytest
import torch

import flashu
from flashu.accel.importance import ActivationNormProbe
from flashu.accel.calibration import calibrate, calibration_items, default_prompts
from flashu.observe.analysis import (
    loo_scores, markdown, overlap, plot_specialization, specialization, task_forwards,
)
from flashu.errors import FlashuError
from flashu.model import Probe

STEPS = 2  # one denoising evaluation per prompt: an ablation cannot change the trajectory it is measured on


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def result(bundle):
    return specialization(bundle, samples=2, steps=3, progress=False, include_scores=True)


# ---------------------------------------------------------------------------------------------- overlap math
def test_overlap_hand_made_example():
    # 2 layers × 8 neurons, top 50 % = 4 neurons per task and layer.
    gen = torch.tensor([[8., 7, 6, 5, 4, 3, 2, 1],  # top {0, 1, 2, 3}
                        [8., 7, 6, 5, 4, 3, 2, 1]])  # top {0, 1, 2, 3}
    und = torch.tensor([[1., 2, 3, 4, 5, 6, 7, 8],  # top {4, 5, 6, 7}: disjoint
                        [1., 2, 8, 7, 6, 5, 0, 0]])  # top {2, 3, 4, 5}: shares {2, 3}
    o = overlap(gen, und, 0.5)
    assert o["top_count"] == 4
    assert o["generation_only"] == [50.0, 25.0]
    assert o["both"] == [0.0, 25.0]
    assert o["understanding_only"] == [50.0, 25.0]
    assert o["iou"] == [0.0, pytest.approx(2 / 6)]
    assert o["mean"]["iou"] == pytest.approx(1 / 6)
    assert o["mean"]["both"] == pytest.approx(12.5)
    assert o["spearman"][0] == pytest.approx(-1.0)
    assert o["independent"] == {"both": pytest.approx(25.0), "iou": pytest.approx(1 / 3)}
    # each layer's three shares cover the union of the two top sets
    for layer in range(2):
        assert sum(o[s][layer] for s in ("generation_only", "both", "understanding_only")) <= 100.0

    quarter = overlap(gen, und, 0.25)  # top 2: gen {0, 1}; und layer 0 {6, 7}, layer 1 {2, 3}
    assert quarter["top_count"] == 2
    assert quarter["both"] == [0.0, 0.0]
    assert quarter["generation_only"] == [25.0, 25.0]

    same = overlap(gen, gen, 0.5)
    assert same["iou"] == [1.0, 1.0] and same["both"] == [50.0, 50.0] and same["spearman"] == [1.0, 1.0]


def test_overlap_rejects_bad_input():
    with pytest.raises(FlashuError, match="top_fraction"):
        overlap(torch.ones(2, 4), torch.ones(2, 4), 0.0)
    with pytest.raises(FlashuError, match="layers, neurons"):
        overlap(torch.ones(2, 4), torch.ones(2, 5))


# ---------------------------------------------------------------------------------------------- LOO identity
class LayerOutput(Probe):
    """Records one decoder layer's output at every forward."""

    def __init__(self, layer: int):
        self.layer, self.outputs = layer, []

    def layer_io(self, layer, hidden_in, hidden_out):
        if layer == self.layer:
            self.outputs.append(hidden_out.detach().double().clone())


def brute_force_loo(bundle, task, items, layer, neuron) -> float:
    """‖Y − Y(a_k := 0)‖² summed over tokens and forwards, per sample: the real ablation, by zeroing row k of
    gate_proj (silu(0) = 0, so a_k = 0 exactly). Layers before ``layer`` are untouched, so its input is the
    recorded, unablated H_ℓ."""
    base = LayerOutput(layer)
    task_forwards(bundle, task, items, base, steps=STEPS)
    gate = bundle.model.layers[layer].mlp.gate_proj.weight
    saved = gate[neuron].clone()
    with torch.no_grad():
        gate[neuron].zero_()
    try:
        ablated = LayerOutput(layer)
        task_forwards(bundle, task, items, ablated, steps=STEPS)
    finally:
        with torch.no_grad():
            gate[neuron].copy_(saved)
    assert len(base.outputs) == len(ablated.outputs) == len(items)
    return sum(float((y - y_k).pow(2).sum()) for y, y_k in zip(base.outputs, ablated.outputs)) / len(items)


@pytest.mark.parametrize("task", ["t2i", "mmu"])
def test_loo_identity_matches_brute_force_ablation(bundle, task):
    items = calibration_items(bundle, task, 2)[1]
    probe = ActivationNormProbe(bundle.config.llm.num_layers)
    task_forwards(bundle, task, items, probe, steps=STEPS)
    fast = loo_scores(bundle.model, probe, len(items))
    assert fast.shape == (bundle.config.llm.num_layers, bundle.config.llm.intermediate_size)
    for layer in range(bundle.config.llm.num_layers):
        for neuron in (0, 37, 255):
            exact = brute_force_loo(bundle, task, items, layer, neuron)
            assert exact > 0
            assert float(fast[layer, neuron]) == pytest.approx(exact, rel=1e-4)


# ---------------------------------------------------------------------------------------------- the result
def test_wanda_scores_are_calibrations(bundle, result):
    """Same forwards, same probe arithmetic: the analysis' Wanda scores are what flashu calibrate computes."""
    for task, kwargs in (("t2i", {"prompts": default_prompts()[:2], "steps": 3}), ("mmu", {})):
        scores = calibrate(bundle, task, samples=2, progress=False, **kwargs)
        torch.testing.assert_close(torch.tensor(result["scores"]["wanda"][task]), scores.ffn.float())


def test_result_fields(bundle, result):
    layers, ffn = bundle.config.llm.num_layers, bundle.config.llm.intermediate_size
    assert result["schema"] == "flashu-specialization" and result["version"] == 1
    assert result["samples"] == {"t2i": 2, "mmu": 2} and result["methods"] == ["wanda", "loo"]
    for method in ("wanda", "loo"):
        o = result["overlap"][method]
        assert o["top_count"] == ffn // 2
        for key in ("iou", "generation_only", "both", "understanding_only", "spearman"):
            assert len(o[key]) == layers
        for layer in range(layers):
            # both top sets have ffn/2 neurons: gen-only = und-only, and gen-only + both = 50 %
            assert o["generation_only"][layer] == pytest.approx(o["understanding_only"][layer])
            assert o["generation_only"][layer] + o["both"][layer] == pytest.approx(50.0)
            assert 0.0 <= o["iou"][layer] <= 1.0
        for task in ("t2i", "mmu"):
            assert torch.tensor(result["scores"][method][task]).shape == (layers, ffn)
            assert all(0.5 <= s <= 1.0 for s in result["top_share"][method][task])
    for task in ("t2i", "mmu"):
        assert len(result["similarity"][task]) == layers
        assert all(-1.0 <= s <= 1.0 for s in result["similarity"][task])


def test_json_markdown_and_png(result, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(result))
    assert json.loads(path.read_text())["overlap"]["loo"]["iou"] == result["overlap"]["loo"]["iou"]
    table = markdown(result)
    assert "wanda IoU" in table and "loo IoU" in table and table.count("\n| ") >= 4
    png = tmp_path / "spec.png"
    plot_specialization(result, str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_wanda_only_and_refuses_accelerated_model(bundle):
    r = specialization(bundle, samples=1, steps=STEPS, loo=False, progress=False)
    assert r["methods"] == ["wanda"] and "loo" not in r["overlap"] and "scores" not in r
    flashu.accelerate(bundle, "paper", progress=False, calibration_samples=1)
    try:
        with pytest.raises(FlashuError, match="unaccelerated"):
            specialization(bundle, samples=1, progress=False)
    finally:
        flashu.restore(bundle)
