"""Text-to-image and understanding pipelines on the tiny preset."""

import numpy as np
import pytest
import torch

import flashu

from flashu import FlashuError, generate
from flashu.model import ExecutionPlan
from flashu.pipelines.mmu import answer, answer_without_cache, build_understanding_inputs
from flashu.pipelines.t2i import build_generation_inputs


def test_generation_is_seeded_and_reproducible(tiny_bundle):
    a = generate(tiny_bundle, "a red circle", steps=6, guidance=5.0, seed=3, progress=False)
    b = generate(tiny_bundle, "a red circle", steps=6, guidance=5.0, seed=3, progress=False)
    c = generate(tiny_bundle, "a red circle", steps=6, guidance=5.0, seed=4, progress=False)
    assert a.evaluations == 5
    assert torch.equal(a.latents, b.latents)
    assert not torch.equal(a.latents, c.latents)
    size = tiny_bundle.config.image_size
    assert a.images[0].size == (size, size) and a.images[0].mode == "RGB"
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_batch_of_prompts_matches_single_runs(tiny_bundle):
    prompts = ["a red circle", "two blue squares on the left"]
    batch = generate(tiny_bundle, prompts, steps=4, guidance=3.0, seed=0, progress=False, decode=False)
    first = generate(tiny_bundle, prompts[:1], steps=4, guidance=3.0, seed=0, progress=False, decode=False)
    assert batch.latents.shape[0] == 2
    assert torch.allclose(batch.latents[:1], first.latents, atol=1e-5)


def test_exact_trims_match_baseline(tiny_bundle):
    base = generate(tiny_bundle, "a green triangle", steps=5, seed=1, progress=False, decode=False)
    with flashu.accelerated(tiny_bundle, "exact", task="t2i"):
        exact = generate(tiny_bundle, "a green triangle", steps=5, seed=1, progress=False, decode=False)
    assert exact.stats["evaluations"] == 4
    assert torch.allclose(base.latents, exact.latents, atol=1e-5)


def test_generation_sequence_layout(tiny_bundle):
    cfg, sp = tiny_bundle.config, tiny_bundle.special
    inputs = build_generation_inputs(tiny_bundle, ["abc"], cfg.image_size, with_uncond=True)
    block = cfg.grid ** 2 + 1
    length = cfg.max_text_len + block + 4
    assert inputs.input_ids.shape == (2, length)
    cond, uncond = inputs.input_ids.tolist()
    lp = len(tiny_bundle.encode_text("abc"))
    assert cond[0] == sp.bos and cond[lp + 1] == sp.boi and inputs.block_offsets.tolist() == [lp + 2, 2]
    assert cond[lp + 2: lp + 2 + block] == [sp.img_pad] * block
    assert cond[lp + 2 + block: lp + 4 + block] == [sp.eoi, sp.eos]
    assert uncond[:2] == [sp.bos, sp.boi] and uncond[-1] == sp.pad


def test_long_prompt_is_truncated_with_warning(tiny_bundle):
    with pytest.warns(UserWarning, match="truncated"):
        inputs = build_generation_inputs(tiny_bundle, ["x" * 500], tiny_bundle.config.image_size, with_uncond=False)
    assert inputs.input_ids.shape[1] == tiny_bundle.config.max_text_len + tiny_bundle.config.grid ** 2 + 5


def test_bad_generation_inputs(tiny_bundle):
    with pytest.raises(FlashuError, match="empty prompt"):
        generate(tiny_bundle, "  ", progress=False)
    with pytest.raises(FlashuError, match="multiple"):
        generate(tiny_bundle, "a", image_size=30, progress=False)
    with pytest.raises(FlashuError, match="from 2 to"):
        generate(tiny_bundle, "a", steps=1, progress=False)


def test_understanding_prompt_layout(tiny_bundle, sample_image):
    sp = tiny_bundle.special
    inputs = build_understanding_inputs(tiny_bundle, str(sample_image), "what color?")
    ids = inputs.input_ids[0].tolist()
    off = inputs.time_offset
    assert ids[0] == sp.bos and ids[off - 1] == sp.boi and ids[off + inputs.block_len] == sp.eoi
    assert inputs.attention_block == (off + 1, inputs.block_len)  # official: image tokens + <|vision_end|>
    assert ids[off: off + inputs.block_len] == [sp.img_pad] * inputs.block_len
    assert sp.eos in ids[:off]  # the system turn is closed
    assert ids[-len(tiny_bundle.encode_text("\n<|im_start|>assistant\n")):] == \
        tiny_bundle.encode_text("\n<|im_start|>assistant\n")


def test_kv_cached_decoding_equals_uncached(tiny_bundle, sample_image):
    cached = answer(tiny_bundle, str(sample_image), "what is left of the square?", max_new_tokens=12)
    reference = answer_without_cache(tiny_bundle, str(sample_image), "what is left of the square?",
                                     max_new_tokens=12)
    assert cached.token_ids == reference
    assert len(cached.token_ids) >= 1
    assert cached.kept_tokens == cached.prompt_tokens


def test_bad_understanding_inputs(tiny_bundle, sample_image, tmp_path):
    with pytest.raises(FlashuError, match="empty question"):
        answer(tiny_bundle, str(sample_image), " ")
    with pytest.raises(FlashuError, match="max_new_tokens"):
        answer(tiny_bundle, str(sample_image), "what?", max_new_tokens=0)
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    with pytest.raises(FlashuError, match="cannot read image"):
        answer(tiny_bundle, str(bad), "what?")
