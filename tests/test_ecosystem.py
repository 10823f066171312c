"""flashu with the ecosystem's tools: accelerate's offload and device maps, PEFT adapters, transformers' own modules."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import flashu
from flashu.model import BASELINE, omni_attention_mask

accelerate = pytest.importorskip("accelerate")


@pytest.fixture()
def fresh():
    return flashu.load_model("tiny")


@pytest.fixture(scope="module")
def picture():
    image = Image.new("RGB", (40, 40), "white")
    image.paste((255, 0, 0), (5, 5, 20, 20))
    return image


def outputs(bundle, picture):
    latents = flashu.generate(bundle, "a red circle", steps=4, seed=0, progress=False, decode=False).latents
    tokens = flashu.answer(bundle, picture, "what is in the image?", max_new_tokens=6, ignore_eos=True).token_ids
    return latents, tokens


def test_cpu_offload_gives_the_same_outputs(fresh, picture):
    before = outputs(fresh, picture)
    accelerate.cpu_offload(fresh.model, execution_device=torch.device("cpu"))
    assert fresh.model.showo.model.embed_tokens.weight.is_meta  # weights really are offloaded between calls
    assert fresh.model.device == torch.device("cpu")
    after = outputs(fresh, picture)
    assert torch.equal(after[0], before[0]) and after[1] == before[1]


def test_device_map_dispatch_with_disk_offload(fresh, picture, tmp_path):
    before = outputs(fresh, picture)
    device_map = {"showo.model.embed_tokens": "cpu", "showo.lm_head": "cpu", "showo.model.norm": "cpu",
                  "showo.model.rotary_emb": "cpu"}
    for i in range(fresh.config.llm.num_layers):
        device_map[f"showo.model.layers.{i}"] = "disk" if i % 2 else "cpu"
    for name, _ in fresh.model.named_children():
        if name != "showo":
            device_map[name] = "disk" if name == "diffusion_head_a" else "cpu"
    accelerate.dispatch_model(fresh.model, device_map=device_map, offload_dir=str(tmp_path), main_device="cpu")
    assert fresh.model.layers[1].mlp.gate_proj.weight.is_meta
    after = outputs(fresh, picture)
    assert torch.equal(after[0], before[0]) and after[1] == before[1]


def test_pruning_an_offloaded_model_is_refused_cleanly(fresh, picture):
    accelerate.cpu_offload(fresh.model, execution_device=torch.device("cpu"))
    with pytest.raises(flashu.FlashuError, match="offload"):
        flashu.accelerate(fresh, "paper", task="t2i")
    assert fresh.acceleration is None
    # techniques that do not touch the weights work on the offloaded model
    with flashu.accelerated(fresh, "only-head-cache", task="t2i"):
        result = flashu.generate(fresh, "a red circle", steps=12, seed=0, progress=False, decode=False)
    assert result.stats["head_reused"] > 0


def test_lora_adapters_apply_or_are_refused(fresh, picture):
    peft = pytest.importorskip("peft")
    base = outputs(fresh, picture)
    lora = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj", "gate_proj"], init_lora_weights=False)
    peft.inject_adapter_in_model(lora, fresh.model.showo)
    adapted = outputs(fresh, picture)
    assert not torch.equal(adapted[0], base[0])  # the adapter is applied on the baseline path, not ignored
    with pytest.raises(flashu.FlashuError, match="merge"):
        flashu.accelerate(fresh, "paper", task="t2i")
    assert fresh.acceleration is None
    with flashu.accelerated(fresh, "only-guidance", task="t2i"):  # no weight slicing: the adapter still applies
        flashu.generate(fresh, "a red circle", steps=4, seed=0, progress=False, decode=False)


@torch.no_grad()
def test_decoder_equals_transformers_qwen2(tiny_bundle):
    model = tiny_bundle.model
    torch.manual_seed(0)
    L = 20
    embeds = torch.randn(2, L, model.config.llm.hidden_size)
    mask = omni_attention_mask(L, torch.tensor([3, 5]), 6, torch.float32)
    positions = torch.arange(L).expand(2, -1)
    ours = model.run_backbone(embeds, positions, mask, BASELINE).hidden
    theirs = model.showo.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


@torch.no_grad()
def test_semantic_branch_equals_transformers_siglip(tiny_bundle):
    model = tiny_bundle.model
    latents = torch.randn(1, model.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    x = model.image_embedder_und(latents) + model.position_table(8 // model.config.patch_size)
    theirs = model.und_trans(inputs_embeds=x).last_hidden_state
    torch.testing.assert_close(model.semantic_tokens(latents), theirs, rtol=0, atol=1e-6)
