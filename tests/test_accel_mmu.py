"""FlashU for understanding on the ``tiny`` preset: V-norm token pruning, last-token layer skipping, the
understanding FFN, and coexistence with the generation network in one accelerated model."""

from __future__ import annotations

import math

import pytest
import torch

import flashu
from flashu.accel.calibration import calibrate
from flashu.accel.config import FlashUConfig, GenerationAccelConfig, UnderstandingAccelConfig
from flashu.accel.pruning import top_set
from flashu.accel.token_pruning import AttentionSelector, ValueNormSelector
from flashu.accel.token_pruning import TokenPruning
from flashu.accel.understanding import FlashUUnderstandingPolicy
from flashu.errors import ConfigError
from flashu.model import BASELINE, ExecutionPlan, KVCache, Probe, omni_attention_mask
from flashu.pipelines.mmu import BaselineUnderstanding, answer, build_understanding_inputs

QUESTION = "what is left of the square?"
NONE = dict(prune_ratio=0.0, layer_skip_ratio=0.0, token_prune_ratio=0.0)


@pytest.fixture(scope="module")
def image(sample_image):
    return str(sample_image)


def understanding(**changes) -> UnderstandingAccelConfig:
    return UnderstandingAccelConfig(**{**NONE, **changes})


class Recorder(Probe):
    """Records each executed layer's output residual stream."""

    def __init__(self):
        self.out = {}

    def layer_io(self, layer, hidden_in, hidden_out):
        self.out[layer] = hidden_out


def new_cache(bundle, capacity):
    return KVCache.for_model(bundle.model, 1, capacity)


def cached(cache, layer):
    """The keys/values ``layer`` holds (its filled slots)."""
    n = cache.length(layer)
    return cache.keys[layer][:, :, :n], cache.values[layer][:, :, :n]


@torch.no_grad()
def run_manual(bundle, policy, image, question=QUESTION, tokens=6):
    """The ``answer()`` loop, exposing plans, logits, the KV cache and the session."""
    inputs = build_understanding_inputs(bundle, image, question)
    session = policy.start(bundle, inputs)
    model = bundle.model
    embeds = model.understanding_embeddings(inputs)
    L = embeds.shape[1]
    start, length = inputs.attention_block
    mask = omni_attention_mask(L, torch.tensor([start]), length, bundle.dtype)
    cache = new_cache(bundle, L + tokens)
    plan = session.prefill_plan()
    out = model.forward_understanding(inputs, plan, cache, embeds=embeds)
    session.observe(-1, out)
    rec = dict(inputs=inputs, session=session, cache=cache, embeds=embeds, mask=mask, prefill=out,
               plans=[plan], logits=[out.logits[0, -1]], kept=out.positions[0],
               lengths=[[cache.length(i) for i in range(bundle.config.llm.num_layers)]])
    token = int(out.logits[0, -1].argmax())
    ids = [token]
    for index in range(1, tokens):
        plan = session.decode_plan(index)
        out = model.decode_step(torch.tensor([[token]]), torch.tensor([[L + index - 1]]), plan, cache)
        session.observe(index, out)
        token = int(out.logits[0, -1].argmax())
        ids.append(token)
        rec["plans"].append(plan)
        rec["logits"].append(out.logits[0, -1])
        rec["lengths"].append([cache.length(i) for i in range(bundle.config.llm.num_layers)])
    rec["tokens"] = ids
    return rec


def manual_value_norms(bundle, rec, layer):
    """‖v‖ of every position at ``layer``, recomputed from the baseline residual stream entering that layer."""
    probe = Recorder()
    L = rec["embeds"].shape[1]
    bundle.model.run_backbone(rec["embeds"], torch.arange(L)[None], rec["mask"], BASELINE.with_(probe=probe))
    x = probe.out[layer - 1] if layer > 0 else rec["embeds"]
    block = bundle.model.layers[layer]
    h = block.input_layernorm(x)
    v = block.self_attn.v_proj(h)[0]  # [L, kv_heads·head_dim]: the concatenation of all KV heads
    return v.float().norm(dim=-1)


# ------------------------------------------------------------------------------------------------ token pruning
@pytest.mark.parametrize("ratio,layer", [(0.5, 2), (0.25, 1)])
def test_vnorm_keeps_text_and_time_token_and_drops_largest_norms(bundle, image, ratio, layer):
    policy = FlashUUnderstandingPolicy(understanding(token_prune_ratio=ratio, token_prune_layer=layer), None)
    rec = run_manual(bundle, policy, image, tokens=1)
    inputs = rec["inputs"]
    L = inputs.input_ids.shape[1]
    start, n = inputs.image_start, inputs.image_count
    drop = int(ratio * n)
    kept = rec["kept"].tolist()
    assert len(kept) == L - drop == rec["prefill"].hidden.shape[1]
    assert kept == sorted(kept)
    assert rec["prefill"].positions[0].tolist() == kept  # original positions survive (RoPE)
    text_and_time = [p for p in range(L) if not start <= p < start + n]
    assert set(text_and_time) <= set(kept)  # every text token and the time token (block_offset) kept
    assert inputs.time_offset in kept
    with torch.no_grad():
        norms = manual_value_norms(bundle, rec, layer)[start:start + n]
    expected_dropped = set((torch.argsort(norms, descending=True, stable=True)[:drop] + start).tolist())
    assert set(range(start, start + n)) - set(kept) == expected_dropped
    # the dropped ones really are the largest: min dropped norm >= max kept image norm
    dropped_idx = torch.tensor(sorted(expected_dropped)) - start
    kept_idx = torch.tensor([p - start for p in kept if start <= p < start + n])
    assert norms[dropped_idx].min() >= norms[kept_idx].max()
    assert rec["session"].stats()["image_tokens_kept"] == n - drop


def test_answer_reports_kept_tokens(bundle, image):
    cfg = understanding(token_prune_ratio=0.5)
    a = answer(bundle, image, QUESTION, max_new_tokens=4, policy=FlashUUnderstandingPolicy(cfg, None))
    n = a.stats["image_tokens"]
    assert a.kept_tokens == a.prompt_tokens - n // 2
    assert a.stats["prefill_tokens_kept"] == a.kept_tokens
    assert a.stats["image_tokens_kept"] == n - n // 2


def test_mask_after_pruning_is_the_original_restricted(bundle, image, monkeypatch):
    import flashu.model.showo2 as showo2

    masks = []
    real = showo2.attention

    def spy(q, k, v, mask):
        masks.append(None if mask is None else mask.clone())
        return real(q, k, v, mask)

    monkeypatch.setattr(showo2, "attention", spy)
    K = 2
    policy = FlashUUnderstandingPolicy(understanding(token_prune_ratio=0.5, token_prune_layer=K), None)
    rec = run_manual(bundle, policy, image, tokens=1)
    keep = rec["kept"]
    full = rec["mask"]
    for layer, mask in enumerate(masks[: bundle.config.llm.num_layers]):
        if layer < K:
            assert torch.equal(mask, full)
        else:
            assert torch.equal(mask, full[:, :, keep][:, :, :, keep])


def test_pruned_prefill_equals_manual_reference(bundle, image):
    """Layers < K on every token, then layers ≥ K on the kept rows with the restricted mask and original positions."""
    K = 2
    policy = FlashUUnderstandingPolicy(understanding(token_prune_ratio=0.5, token_prune_layer=K), None)
    rec = run_manual(bundle, policy, image, tokens=1)
    keep = rec["kept"]
    L = rec["embeds"].shape[1]
    probe = Recorder()
    nl = bundle.config.llm.num_layers
    with torch.no_grad():
        bundle.model.run_backbone(rec["embeds"], torch.arange(L)[None], rec["mask"],
                                  ExecutionPlan(layers=list(range(K)), probe=probe))
        x = probe.out[K - 1][:, keep]
        ref_cache = new_cache(bundle, L)
        ref = bundle.model.run_backbone(x, keep[None], rec["mask"][:, :, keep][:, :, :, keep],
                                        ExecutionPlan(layers=list(range(K, nl)), logits="last"), ref_cache)
    torch.testing.assert_close(rec["prefill"].hidden, ref.hidden, rtol=0, atol=1e-6)
    for i in range(K, nl):
        torch.testing.assert_close(cached(rec["cache"], i)[0], cached(ref_cache, i)[0], rtol=0, atol=1e-6)


def test_decoding_after_pruning_keeps_positions_right(bundle, image):
    """Decode step 1 (KV cache of kept tokens, position L) equals a pruned prefill of the prompt + answer token 0."""
    policy = FlashUUnderstandingPolicy(understanding(token_prune_ratio=0.5, token_prune_layer=2), None)
    rec = run_manual(bundle, policy, image, tokens=2)
    token0 = rec["tokens"][0]
    with torch.no_grad():
        e = torch.cat([rec["embeds"], bundle.model.showo.model.embed_tokens(torch.tensor([[token0]]))], dim=1)
        L = e.shape[1]
        mask = omni_attention_mask(L, torch.tensor([rec["inputs"].attention_block[0]]), rec["inputs"].attention_block[1],
                                   bundle.dtype)
        session = policy.start(bundle, rec["inputs"])
        out = bundle.model.run_backbone(e, torch.arange(L)[None], mask, session.prefill_plan())
    assert torch.equal(out.positions[0][:-1], rec["kept"])  # same tokens kept
    torch.testing.assert_close(out.logits[0, -1], rec["logits"][1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("fill", [True, False])
def test_kv_cache_lengths_after_prefill_and_skipped_decoding(bundle, image, fill):
    K, T = 2, 3
    cfg = understanding(token_prune_ratio=0.5, token_prune_layer=K, layer_skip_ratio=0.5, layer_skip_interval=T,
                        protect_first_last=False, fill_skipped_kv=fill)
    rec = run_manual(bundle, FlashUUnderstandingPolicy(cfg, None), image, tokens=8)
    L, kept = rec["inputs"].input_ids.shape[1], rec["prefill"].hidden.shape[1]
    nl = bundle.config.llm.num_layers
    assert rec["lengths"][0] == [L if i < K else kept for i in range(nl)]
    expected = [L if i < K else kept for i in range(nl)]
    for index, plan in enumerate(rec["plans"][1:], start=1):
        ran = range(nl) if plan.layers is None or fill else plan.layers  # filled: every layer sees every token
        for i in ran:
            expected[i] += 1
        assert rec["lengths"][index] == expected
    assert any(plan.layers is not None for plan in rec["plans"][1:])  # some steps did skip


def test_a_skipped_layer_fills_exactly_the_keys_values_it_would_have_made(bundle, image):
    """``fill_skipped_kv``: K/V of a skipped layer come from its input, i.e. they equal those of running it."""
    model, nl = bundle.model, bundle.config.llm.num_layers
    inputs = build_understanding_inputs(bundle, image, QUESTION)
    with torch.no_grad():
        embeds = bundle.model.understanding_embeddings(inputs)
        L = embeds.shape[1]
        mask = omni_attention_mask(L, torch.tensor([inputs.attention_block[0]]), inputs.attention_block[1], bundle.dtype)
        skipped = 1
        full_cache, filled_cache, plain_cache = new_cache(bundle, L), new_cache(bundle, L), new_cache(bundle, L)
        rec = Recorder()
        layers = [i for i in range(nl) if i != skipped]
        model.run_backbone(embeds, torch.arange(L)[None], mask, BASELINE, full_cache)
        model.run_backbone(embeds, torch.arange(L)[None], mask,
                           ExecutionPlan(layers=layers, fill_skipped_kv=True, probe=rec), filled_cache)
        model.run_backbone(embeds, torch.arange(L)[None], mask, ExecutionPlan(layers=layers), plain_cache)
        # layer `skipped` reads layer skipped-1's output; running it (as in full_cache) on that input gives the same K/V
        assert torch.equal(cached(filled_cache, skipped - 1)[0], cached(full_cache, skipped - 1)[0])
        assert torch.equal(cached(filled_cache, skipped)[0], cached(full_cache, skipped)[0])
        assert torch.equal(cached(filled_cache, skipped)[1], cached(full_cache, skipped)[1])
        assert plain_cache.length(skipped) == 0 and filled_cache.length(skipped) == L
        for i in range(skipped + 1, nl):  # later layers see the skip (the layer's output is not applied)
            assert not torch.equal(cached(filled_cache, i)[0], cached(full_cache, i)[0])
            assert torch.equal(cached(filled_cache, i)[0], cached(plain_cache, i)[0])


# ------------------------------------------------------------------------------------------------ exactness
def test_rho_zero_no_skip_no_prune_equals_baseline_exactly(bundle, image):
    base = run_manual(bundle, BaselineUnderstanding(), image, tokens=8)
    acc = run_manual(bundle, FlashUUnderstandingPolicy(understanding(), None), image, tokens=8)
    assert acc["tokens"] == base["tokens"]
    for a, b in zip(acc["logits"], base["logits"]):
        assert torch.equal(a, b)
    assert answer(bundle, image, QUESTION, max_new_tokens=8, policy=FlashUUnderstandingPolicy(understanding(), None)
                  ).token_ids == answer(bundle, image, QUESTION, max_new_tokens=8).token_ids
    assert acc["session"].technique(TokenPruning).selector is None


# ------------------------------------------------------------------------------------------------ layer skipping
def test_layer_skip_policy_per_decoded_token(bundle, image):
    T, nl = 3, bundle.config.llm.num_layers
    cfg = understanding(layer_skip_ratio=0.5, layer_skip_interval=T, protect_first_last=False)
    rec = run_manual(bundle, FlashUUnderstandingPolicy(cfg, None), image, tokens=10)
    session, s = rec["session"], math.floor(0.5 * nl)
    stats = session.stats()
    assert stats["ranking_steps"] == [-1, 3, 6, 9]
    assert stats["layers_skipped_per_step"] == [s, s, 0, s, s, 0, s, s, 0]
    assert stats["full_depth_decode_steps"] == 3
    # prefill: full depth measuring the last token; the skip set is the s layers of highest last-token cos
    assert rec["plans"][0].layers is None and rec["plans"][0].similarity == "last"
    probe = Recorder()
    L = rec["embeds"].shape[1]
    cos = {}

    class Cos(Probe):
        def layer_io(self, layer, hidden_in, hidden_out):
            cos[layer] = float(torch.nn.functional.cosine_similarity(hidden_in[0, -1].float(),
                                                                     hidden_out[0, -1].float(), dim=0))

    with torch.no_grad():
        bundle.model.run_backbone(rec["embeds"], torch.arange(L)[None], rec["mask"], BASELINE.with_(probe=Cos()))
    expected = sorted(sorted(range(nl), key=lambda i: (1 - cos[i], i))[:s])
    sets = dict((step, layers) for step, layers in stats["skip_sets"])
    assert sets[-1] == expected
    for index, plan in enumerate(rec["plans"][1:], start=1):
        if index % T == 0:
            assert plan.layers is None and plan.similarity == "last"
        else:
            ranked_at = max(k for k in sets if k < index)
            assert list(plan.layers) == [i for i in range(nl) if i not in sets[ranked_at]]
            assert plan.similarity is None


def test_protect_first_last_and_interval_zero(bundle, image):
    nl = bundle.config.llm.num_layers
    cfg = understanding(layer_skip_ratio=0.5, layer_skip_interval=0, protect_first_last=True)
    rec = run_manual(bundle, FlashUUnderstandingPolicy(cfg, None), image, tokens=6)
    stats = rec["session"].stats()
    assert stats["ranking_steps"] == [-1]  # T_LS = 0: ranked once, at prefill
    s = math.floor(0.5 * nl)
    assert len(stats["skip_sets"][0][1]) == s and set(stats["skip_sets"][0][1]) <= set(range(1, nl - 1))
    assert all(len(plan.layers) == nl - s for plan in rec["plans"][1:])


def test_skip_in_prefill_without_a_calibrated_prior_is_refused(bundle, image):
    cfg = understanding(layer_skip_ratio=0.5, layer_skip_interval=4, protect_first_last=False, skip_in_prefill=True)
    with pytest.raises(ConfigError, match="calibration"):
        run_manual(bundle, FlashUUnderstandingPolicy(cfg, None), image, tokens=2)


def test_skip_in_prefill_uses_the_calibrated_prior(bundle, image):
    nl = bundle.config.llm.num_layers
    prior = [0.1, 0.9, 0.8] + [0.0] * (nl - 3)  # layers 1 and 2 look the most skippable (0.5 · 5 → 2 skipped)
    cfg = understanding(layer_skip_ratio=0.5, layer_skip_interval=4, protect_first_last=False, skip_in_prefill=True)
    rec = run_manual(bundle, FlashUUnderstandingPolicy(cfg, None, calibrated_similarity=prior), image, tokens=3)
    stats = rec["session"].stats()
    assert stats["ranking_steps"][0] == -2 and stats["prefill_layers_skipped"] == 2
    assert stats["skip_sets"][0][1] == [1, 2] and list(rec["plans"][0].layers) == [0] + list(range(3, nl))
    assert rec["plans"][0].fill_skipped_kv
    L = rec["inputs"].input_ids.shape[1]
    for i in (1, 2):  # a layer skipped in prefill still holds the prompt's keys/values (for when it runs again)
        assert rec["lengths"][0][i] == L


# ------------------------------------------------------------------------------------------------ scorers, config
def manual_priorities(bundle, rec, layer, scorer):
    """Each image token's drop priority at ``layer``, recomputed independently from the baseline residual stream."""
    inputs = rec["inputs"]
    start, n = inputs.image_start, inputs.image_count
    probe = Recorder()
    L = rec["embeds"].shape[1]
    bundle.model.run_backbone(rec["embeds"], torch.arange(L)[None], rec["mask"], BASELINE.with_(probe=probe))
    x = probe.out[layer - 1] if layer > 0 else rec["embeds"]
    attn = bundle.model.layers[layer].self_attn
    h = bundle.model.layers[layer].input_layernorm(x)[0]
    if scorer == "vnorm":
        return attn.v_proj(h)[start:start + n].float().norm(dim=-1)
    if scorer == "knorm":  # RoPE is a rotation: the key norm is the same before and after it
        return attn.k_proj(h)[start:start + n].float().norm(dim=-1)
    if scorer == "random":
        return torch.rand(n, generator=torch.Generator().manual_seed(0))
    cfg = bundle.config.llm
    from flashu.model.layers import apply_rope, rope_tables

    cos, sin = rope_tables(bundle.model.llm_inv_freq, torch.arange(L)[None], torch.float32)
    q = apply_rope(attn.q_proj(h).view(1, L, -1, cfg.head_dim).transpose(1, 2), cos, sin)
    k = apply_rope(attn.k_proj(h).view(1, L, -1, cfg.head_dim).transpose(1, 2), cos, sin)
    if scorer == "dart":
        keys = k[0, :, start:start + n].permute(1, 0, 2).reshape(n, -1)  # [N, kv_heads·d]
        pivots = keys.norm(dim=-1).topk(8).indices
        unit = torch.nn.functional.normalize(keys, dim=-1)
        priority = (unit @ unit[pivots].T).max(dim=-1).values
        priority[pivots] = float("-inf")
        return priority
    k = k.repeat_interleave(cfg.num_heads // cfg.num_kv_heads, dim=1)
    if scorer == "query":
        probs = ((q[:, :, -1:] @ k.transpose(-1, -2)) / math.sqrt(cfg.head_dim)).softmax(-1)
        return -probs[0, :, 0, start:start + n].mean(dim=0)
    probs = ((q @ k.transpose(-1, -2)) / math.sqrt(cfg.head_dim) + rec["mask"]).softmax(-1)
    return -probs[0, :, start + n:, start:start + n].mean(dim=(0, 1))  # least attended dropped first


@pytest.mark.parametrize("scorer", ["vnorm", "random", "knorm", "attention", "query", "dart"])
def test_each_scorer_drops_what_its_rule_says(bundle, image, scorer):
    layer = 2
    cfg = understanding(token_prune_ratio=0.5, token_scorer=scorer, token_prune_layer=layer)
    rec = run_manual(bundle, FlashUUnderstandingPolicy(cfg, None), image, tokens=1)
    inputs = rec["inputs"]
    start, n = inputs.image_start, inputs.image_count
    with torch.no_grad():
        priority = manual_priorities(bundle, rec, layer, scorer)
    dropped = set(range(start, start + n)) - set(rec["kept"].tolist())
    assert len(dropped) == n // 2 and rec["session"].stats()["token_scorer"] == scorer
    expected = set((torch.argsort(priority, descending=True, stable=True)[: n // 2] + start).tolist())
    assert dropped == expected


def test_attention_scorer_matches_explicit_attention():
    torch.manual_seed(0)
    B, Hq, Hkv, L, d = 1, 4, 2, 12, 8
    start, n = 3, 5  # image tokens 3..7, time token at 2, text after 8
    q, k, v = torch.randn(B, Hq, L, d), torch.randn(B, Hkv, L, d), torch.randn(B, Hkv, L, d)
    sel = AttentionSelector(layer=0, image_start=start, image_count=n, keep=2)
    keep = sel.select(v, k, torch.zeros(B, L, 16), q)
    mask = omni_attention_mask(L, torch.tensor([start - 1]), n + 1, torch.float32)
    k_rep = k.repeat_interleave(Hq // Hkv, dim=1)
    probs = ((q @ k_rep.transpose(-1, -2)) / math.sqrt(d) + mask).softmax(-1)  # full explicit map
    received = probs[:, :, start + n:, start:start + n].mean(dim=(1, 2))[0]
    kept_image = sorted((torch.argsort(received, descending=True)[:2] + start).tolist())
    assert keep[0].tolist() == list(range(start)) + kept_image + list(range(start + n, L))
    # V-norm on the same tensors: the largest concatenated-head norms are the dropped ones
    vsel = ValueNormSelector(layer=0, image_start=start, image_count=n, keep=2)
    vkeep = vsel.select(v, k, None, None)
    norms = v[0, :, start:start + n].permute(1, 0, 2).reshape(n, -1).norm(dim=-1)
    assert sorted(set(range(start, start + n)) - set(vkeep[0].tolist())) == \
        sorted((torch.argsort(norms, descending=True)[:3] + start).tolist())


def test_rho_keeping_no_image_token_is_rejected(bundle, image):
    with pytest.raises(ConfigError):
        UnderstandingAccelConfig(token_prune_ratio=1.0)
    assert UnderstandingAccelConfig(token_prune_ratio=0.99).kept_image_tokens(64) == 1  # never zero
    with pytest.raises(ConfigError):
        UnderstandingAccelConfig(token_scorer="fastv")
    too_deep = FlashUConfig(name="deep", generation=None, understanding=understanding(
        token_prune_ratio=0.5, token_prune_layer=bundle.config.llm.num_layers))
    with pytest.raises(ConfigError, match="token_prune_layer"):
        flashu.accelerate(bundle, too_deep)
    assert bundle.acceleration is None


# ------------------------------------------------------------------------------------------------ both tasks
@pytest.fixture(scope="module")
def scores(bundle, image):
    mmu = calibrate(bundle, "mmu", pairs=[(image, QUESTION), (image, "what colour is the circle?")], samples=2,
                    progress=False)
    t2i = calibrate(bundle, "t2i", prompts=["a red circle", "a blue square left of a green triangle"], samples=2,
                    steps=3, progress=False)
    return {"mmu": mmu, "t2i": t2i}


def both_tasks_config(gen_ratio=0.5, und_ratio=0.5) -> FlashUConfig:
    gen = GenerationAccelConfig(prune_ratio=gen_ratio, prune_alignment=16, layer_skip_ratio=0.0,
                                full_ffn_fraction=0.0, head_cache_interval=0, step_fraction=1.0,
                                guidance_low_factor=1.0, guidance_low_fraction=0.0)
    und = understanding(prune_ratio=und_ratio, prune_alignment=16)
    return FlashUConfig(name="both", generation=gen, understanding=und)


def zeroed_reference(keep_sets):
    """A fresh tiny model whose FFN neurons outside ``keep_sets[layer]`` are switched off (down columns zeroed)."""
    ref = flashu.load_model("tiny", device="cpu")
    with torch.no_grad():
        for layer, keep in zip(ref.model.layers, keep_sets):
            off = torch.tensor(sorted(set(range(layer.mlp.down_proj.weight.shape[1])) - keep), dtype=torch.long)
            if len(off):
                layer.mlp.down_proj.weight[:, off] = 0
    return ref


def test_both_neuron_sets_coexist_with_zero_extra_memory(bundle, scores):
    params = {n: (p.data_ptr(), p.numel()) for n, p in bundle.model.named_parameters()}
    before = sum(p.numel() * p.element_size() for p in bundle.model.parameters())
    with flashu.accelerated(bundle, both_tasks_config(), scores=scores, progress=False) as acc:
        assert {n: (p.data_ptr(), p.numel()) for n, p in bundle.model.named_parameters()} == params
        assert sum(p.numel() * p.element_size() for p in bundle.model.parameters()) == before
        d_ff = bundle.config.llm.intermediate_size
        layout = acc.layout
        for i in range(bundle.config.llm.num_layers):
            (g0, g1), (u0, u1) = layout.ffn_ranges["t2i"][i], layout.ffn_ranges["mmu"][i]
            assert 0 <= g0 < g1 <= d_ff and 0 <= u0 < u1 <= d_ff
            order = layout.ffn_order[i]
            assert set(order[g0:g1].tolist()) == top_set(scores["t2i"].ffn[i], g1 - g0)
            assert set(order[u0:u1].tolist()) == top_set(scores["mmu"].ffn[i], u1 - u0)
        gate = bundle.model.layers[0].mlp.gate_proj.weight
        u0, u1 = layout.ffn_ranges["mmu"][0]
        assert gate[u0:u1].untyped_storage().data_ptr() == gate.untyped_storage().data_ptr()  # a view
        assert acc.understanding_policy().ffn_ranges == layout.ffn_ranges["mmu"]
        assert acc.generation_policy().ffn_ranges == layout.ffn_ranges["t2i"]
        # understanding calibration also measured the prefill's layer-skip prior
        prior = scores["mmu"].layer_similarity
        assert prior.shape == (bundle.config.llm.num_layers,) and bool(((prior > -1) & (prior <= 1)).all())
        assert scores["t2i"].layer_similarity is None
        assert acc.understanding_policy().calibrated_similarity == pytest.approx(prior.tolist())


def test_mmu_scores_round_trip_with_the_layer_prior(scores, tmp_path):
    from flashu.accel.importance import ImportanceScores

    loaded = ImportanceScores.load(scores["mmu"].save(tmp_path / "mmu.safetensors"))
    assert torch.equal(loaded.layer_similarity, scores["mmu"].layer_similarity)
    assert torch.equal(loaded.ffn, scores["mmu"].ffn)


def test_model_accelerated_for_both_tasks_serves_both(bundle, image, scores):
    with torch.no_grad():
        gen_sets = [top_set(s, 128) for s in scores["t2i"].ffn]
        und_sets = [top_set(s, 128) for s in scores["mmu"].ffn]
    gen_ref, und_ref = zeroed_reference(gen_sets), zeroed_reference(und_sets)
    base_gen = flashu.generate(bundle, "a red circle", steps=4, guidance=2.0, decode=False, progress=False)
    base_und = run_manual(bundle, BaselineUnderstanding(), image, tokens=4)
    with flashu.accelerated(bundle, both_tasks_config(), scores=scores, progress=False):
        assert bundle.acceleration.layout.kept_neurons("mmu") == [128] * bundle.config.llm.num_layers
        got = answer(bundle, image, QUESTION, max_new_tokens=6)  # the model's own mmu plan
        assert got.stats["policy"] == "both" and got.stats["ffn_pruned"]
        ref = answer(und_ref, image, QUESTION, max_new_tokens=6)
        assert got.token_ids == ref.token_ids
        acc_rec = run_manual(bundle, bundle.acceleration.understanding_policy(), image, tokens=4)
        ref_rec = run_manual(und_ref, BaselineUnderstanding(), image, tokens=4)
        for a, b in zip(acc_rec["logits"], ref_rec["logits"]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        gen = flashu.generate(bundle, "a red circle", steps=4, guidance=2.0, decode=False, progress=False)
        gref = flashu.generate(gen_ref, "a red circle", steps=4, guidance=2.0, decode=False, progress=False)
        torch.testing.assert_close(gen.latents, gref.latents, rtol=1e-4, atol=1e-5)
    # generation with pruning 0 and every technique off on a model permuted for understanding = the baseline
    with flashu.accelerated(bundle, both_tasks_config(gen_ratio=0.0), scores=scores, progress=False):
        assert bundle.acceleration.layout.ffn_ranges["t2i"] is None
        same = flashu.generate(bundle, "a red circle", steps=4, guidance=2.0, decode=False, progress=False)
        torch.testing.assert_close(same.latents, base_gen.latents, rtol=1e-5, atol=1e-6)
        # and the full network (the baseline policy) is still the baseline on the permuted weights
        plain = run_manual(bundle, BaselineUnderstanding(), image, tokens=4)
    for a, b in zip(plain["logits"], base_und["logits"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_restore_is_bit_exact(bundle, image, scores):
    params = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    before = run_manual(bundle, BaselineUnderstanding(), image, tokens=5)
    cfg = both_tasks_config()
    cfg.understanding = UnderstandingAccelConfig(prune_ratio=0.5, prune_alignment=16, layer_skip_ratio=0.5,
                                                 token_prune_ratio=0.5)
    flashu.accelerate(bundle, cfg, scores=scores, progress=False)
    try:
        accelerated = answer(bundle, image, QUESTION, max_new_tokens=5)
        assert accelerated.stats["image_tokens_kept"] < accelerated.stats["image_tokens"]
    finally:
        flashu.restore(bundle)
    for n, p in bundle.model.named_parameters():
        assert torch.equal(p, params[n]), n
    after = run_manual(bundle, BaselineUnderstanding(), image, tokens=5)
    assert after["tokens"] == before["tokens"]
    for a, b in zip(after["logits"], before["logits"]):
        assert torch.equal(a, b)


def test_accelerated_answer_uses_the_model_policy(bundle, image, scores):
    with flashu.accelerated(bundle, "paper:understanding.layer_skip_ratio=0.25", task="mmu", scores=scores,
                            progress=False):
        a = answer(bundle, image, QUESTION, max_new_tokens=4)
    assert a.stats["policy"] == "paper:understanding.layer_skip_ratio=0.25"
    assert a.stats["token_scorer"] == "vnorm" and a.stats["token_prune_layer"] == 2
    assert a.stats["ffn_pruned"]


def test_ignore_eos_decodes_exactly_max_new_tokens(bundle, image, monkeypatch):
    import dataclasses

    first = answer(bundle, image, QUESTION, max_new_tokens=1).token_ids[0]
    monkeypatch.setattr(bundle, "special", dataclasses.replace(bundle.special, eos=first))  # token 0 is "eos"
    a = answer(bundle, image, QUESTION, max_new_tokens=5)
    assert len(a.token_ids) == 1 and a.text == ""
    b = answer(bundle, image, QUESTION, max_new_tokens=5, ignore_eos=True)
    assert len(b.token_ids) == 5 and b.text == ""
    assert set(b.timings) >= {"encode", "prefill", "prefill_vision", "prefill_backbone", "decode"}
