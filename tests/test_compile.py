"""``flashu.compile``: every compiled piece traces with ``fullgraph=True`` (no graph break) and computes what eager
mode computes; recompilations are counted. Uses dynamo's ``eager`` backend (tracing without code generation) so the
test takes seconds; the inductor backend is measured by the benchmarks."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import flashu
from flashu.compiled import compile_stats
from flashu.model import Showo2

PIECES = Showo2.COMPILABLE


@pytest.fixture()
def compiled():
    bundle = flashu.load_model("tiny")
    eager = {"t2i": flashu.generate(bundle, "a red circle", steps=6, seed=0, progress=False, decode=False).latents}
    flashu.compile(bundle, backend="eager")
    yield bundle, eager
    flashu.compile(bundle, enabled=False)


PICTURE = Image.new("RGB", (40, 40), "white")


def test_generation_compiles_without_graph_breaks(compiled):
    bundle, eager = compiled
    before = compile_stats()["unique_graphs"]
    out = flashu.generate(bundle, "a red circle", steps=6, seed=0, progress=False, decode=False)
    assert torch.equal(out.latents, eager["t2i"])
    first = compile_stats()["unique_graphs"] - before
    assert 1 <= first <= len(PIECES)
    flashu.generate(bundle, "a red circle", steps=6, seed=1, progress=False, decode=False)
    assert compile_stats()["unique_graphs"] - before == first  # same shapes and plan: no recompilation


def test_accelerated_generation_recompiles_a_bounded_number_of_times(compiled):
    bundle, _ = compiled
    before = compile_stats()["unique_graphs"]
    with flashu.accelerated(bundle, "plus", task="t2i"):
        out = flashu.generate(bundle, "a red circle", steps=30, seed=0, progress=False, decode=False)
    graphs = compile_stats()["unique_graphs"] - before
    # one graph per distinct backbone configuration (prefix pass and block pass each) plus the other pieces
    configurations = 1 + out.stats["layer_rankings"] + 1  # ranking, each skip set, full phase
    assert graphs <= 2 * (configurations + 1) + len(PIECES)


def test_understanding_decodes_with_a_static_cache_and_no_graph_break(compiled):
    bundle, _ = compiled
    flashu.compile(bundle, enabled=False)
    eager = flashu.answer(bundle, PICTURE, "what is in the image?", max_new_tokens=8, ignore_eos=True)
    flashu.compile(bundle, backend="eager")
    assert bundle.compiled
    before = compile_stats()["unique_graphs"]
    got = flashu.answer(bundle, PICTURE, "what is in the image?", max_new_tokens=8, ignore_eos=True)
    assert got.token_ids == eager.token_ids
    graphs = compile_stats()["unique_graphs"] - before
    again = flashu.answer(bundle, PICTURE, "what else?", max_new_tokens=8, ignore_eos=True)
    assert compile_stats()["unique_graphs"] - before <= graphs + 2  # a new prompt length: the prefill only
    assert len(again.token_ids) == 8


def test_compile_can_be_undone(compiled):
    bundle, eager = compiled
    flashu.compile(bundle, enabled=False)
    assert not bundle.compiled and all(name not in bundle.model.__dict__ for name in PIECES)
    out = flashu.generate(bundle, "a red circle", steps=6, seed=0, progress=False, decode=False)
    assert torch.equal(out.latents, eager["t2i"])
