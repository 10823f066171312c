"""The trained testbed: pixel-space codec, the shipped checkpoint (packaged, loads, reproduces its recorded outputs), the
training objective's sequence layouts (exactly the official ones), train.py end to end with an exact resume, and
evaluate() on a couple of items."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import pytest
import torch

import flashu
from flashu.config import LOCAL_VOCAB_SIZE, FlowHeadConfig, LLMConfig, Showo2Config, VisionConfig, preset
from flashu.errors import CheckpointError, ConfigError
from flashu import loading
from flashu.model import omni_attention_mask
from flashu.pipelines.mmu import build_understanding_inputs
from flashu.pipelines.t2i import build_generation_inputs
from flashu.testbed import data as D
from flashu.testbed import train as T
from flashu.testbed import world
from flashu.testbed.evaluate import evaluate, format_reports
from flashu.io.vae import IdentityVAE, LatentCodec, build_vae, load_vae, save_vae


def tiny_pixel_config(base: str = "testbed", name: str = "tiny-pixel") -> Showo2Config:
    """The testbed's pixel-space layout (``base``: v1's 32 px or v2's 64 px understanding images, patch 4, local
    bytes) with toy widths: milliseconds per step."""
    data = preset(base).to_dict()
    data.update(
        name=name,
        llm=vars(LLMConfig(hidden_size=32, num_layers=5, num_heads=2, num_kv_heads=1, head_dim=16,
                           intermediate_size=128, vocab_size=LOCAL_VOCAB_SIZE)),
        vision=vars(VisionConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, position_grid=8)),
        head=vars(FlowHeadConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                                 intermediate_size=64, time_frequency_dim=16)),
    )
    return Showo2Config.from_dict(data)



@pytest.fixture(scope="module")
def tiny_pixel():
    bundle = T.build_bundle(tiny_pixel_config(), 0)
    bundle.model.init_random_weights(1)  # no zero-initialised output layers: every path matters in comparisons
    bundle.model.eval()
    return bundle


@pytest.fixture(scope="module")
def testbed():
    return flashu.load_model("testbed", device="cpu")


# ----------------------------------------------------------------------------------------------- config / codec


def test_testbed_preset_is_pixel_space_and_deep_enough():
    cfg = preset("testbed")
    assert cfg.vae.kind == "identity" and cfg.vae.spatial_factor == 4 and cfg.latent_channels == 48
    assert cfg.patch_size == 1 and cfg.patch_dim == 48  # token k reads and writes the same latent pixel
    assert cfg.image_size == world.DEFAULT_SIZE and cfg.grid ** 2 == 64
    assert cfg.tokenizer == "local-bytes"
    assert cfg.llm.num_layers >= 8 and int(0.2 * cfg.llm.num_layers) >= 1  # r_LS 0.2 skips at least one layer
    assert cfg.llm.intermediate_size * 4 // 5 % 64 == 0  # r_p 0.2 keeps a multiple of the 64-neuron alignment
    assert cfg.vision.num_layers == 2 and cfg.head.num_layers == 2
    vae = cfg.to_dict()["vae"]
    with pytest.raises(ConfigError, match="identity"):
        Showo2Config.from_dict({**cfg.to_dict(), "vae": {**vae, "z_dim": 3, "latents_mean": [0.0] * 3,
                                                          "latents_std": [1.0] * 3}})
    with pytest.raises(ConfigError, match="identity"):
        Showo2Config.from_dict({**cfg.to_dict(), "vae": {**vae, "latents_std": [2.0] * 48}})
    with pytest.raises(ConfigError, match="vae.kind"):
        Showo2Config.from_dict({**cfg.to_dict(), "vae": {**vae, "kind": "vqgan"}})
    # older config files have no "kind": they stay Wan VAEs
    old = preset("tiny").to_dict()
    del old["vae"]["kind"], old["vae"]["space_to_depth"]
    assert Showo2Config.from_dict(old).vae.kind == "wan"


@pytest.mark.parametrize("space_to_depth", [1, 4])
def test_identity_codec(tmp_path, space_to_depth):
    from flashu.config import identity_vae

    vae_cfg = identity_vae(space_to_depth)
    vae = build_vae(vae_cfg)
    assert isinstance(vae, IdentityVAE) and not list(vae.parameters())
    codec = LatentCodec(vae)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = codec.encode(images.half())
    s = space_to_depth
    assert latents.dtype == torch.float32 and latents.shape == (2, 3 * s * s, 32 // s, 32 // s)
    # space-to-depth: latent pixel (i, j) holds the s×s block of image pixels at (s·i, s·j), channel-major
    assert torch.equal(latents[0, :s * s, 1, 2].view(s, s), images.half().float()[0, 0, s:2 * s, 2 * s:3 * s])
    assert torch.equal(codec.decode(latents), images.half().float())
    assert torch.equal(codec.decode(latents * 3), (images.half().float() * 3).clamp(-1, 1))
    assert save_vae(vae, tmp_path) is None and not list(tmp_path.iterdir())
    assert isinstance(load_vae(tmp_path, vae_cfg), IdentityVAE)  # nothing to read


def test_pixel_space_save_and_load_round_trip(tiny_pixel, tmp_path):
    flashu.save_pretrained(tiny_pixel, tmp_path)
    assert not (tmp_path / "vae.safetensors").exists()
    loaded = flashu.load_model(str(tmp_path), device="cpu")
    assert loaded.config == tiny_pixel.config
    a = flashu.generate(tiny_pixel, "a red circle", steps=3, progress=False).latents
    b = flashu.generate(loaded, "a red circle", steps=3, progress=False).latents
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------ shipped checkpoint


def test_shipped_checkpoint_is_packaged_and_small():
    directory = loading.testbed_dir()
    weights = directory / "model.safetensors"
    assert (directory / "config.json").is_file() and weights.is_file()
    assert weights.stat().st_size <= 25 * 2**20
    assert sum(f.stat().st_size for f in directory.iterdir()) <= 26 * 2**20
    info = json.loads((directory / T.TRAINING_JSON).read_text())
    assert [stage["command"] for stage in info["stages"]] == list(T.SHIPPED_COMMANDS)
    assert info["command"] == " && ".join(T.SHIPPED_COMMANDS)


def test_shipped_checkpoint_reproduces_recorded_outputs(testbed):
    assert testbed.source == "testbed" and testbed.dtype == torch.float32
    assert testbed.config == preset("testbed")
    ref = T.record_reference(testbed)
    recorded = json.loads((loading.testbed_dir() / "reference.json").read_text())
    g, r = ref["generation"], recorded["generation"]
    assert g["prompt"] == r["prompt"] and g["steps"] == r["steps"]
    # CPU kernels (thread count, ISA) may round differently: allow float noise, nothing more
    assert g["latent_sum"] == pytest.approx(r["latent_sum"], rel=1e-3, abs=0.05)
    assert g["latent_abs_sum"] == pytest.approx(r["latent_abs_sum"], rel=1e-3)
    assert g["latent_first"] == pytest.approx(r["latent_first"], abs=1e-3)
    assert ref["understanding"]["answer"] == recorded["understanding"]["answer"]
    assert ref["understanding"]["token_ids"] == recorded["understanding"]["token_ids"]


def test_shipped_checkpoint_answers_and_draws_correctly(testbed):
    """A trained model, not a random one: it gets a known scene right in both tasks."""
    example = world.sample("test", 0)
    reply = flashu.answer(testbed, example.image, "how many shapes are there?", max_new_tokens=8)
    assert reply.text == world.number_word(len(example.scene.shapes))
    report = evaluate(testbed, "none", n_gen=2, n_mmu=4, progress=False)
    assert report["understanding"]["accuracy"] >= 0.5
    assert report["generation"]["n"] == 2


def test_load_model_testbed_error_when_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(loading, "testbed_dir", lambda: tmp_path / "absent")
    with pytest.raises(CheckpointError, match="testbed checkpoint is missing"):
        flashu.load_model("testbed")


# -------------------------------------------------------------------------------------- training objective


def test_generation_rows_are_the_official_layout_truncated(tiny_pixel):
    cfg = T.TrainConfig(gen_batch=6, uncond_prob=0.5, seed=3)
    batch = T.generation_batch(tiny_pixel, cfg, step=0)
    rng = D.step_rng(cfg.seed, 0, "gen")
    captions = [world.sample("train", rng.randrange(D.TRAIN_INDEX_SPACE)).caption for _ in range(6)]
    drops = [rng.random() < cfg.uncond_prob for _ in range(6)]
    assert any(drops) and not all(drops)
    cond = [c for c, d in zip(captions, drops) if not d]
    official = build_generation_inputs(tiny_pixel, cond, 32, with_uncond=True)  # cond rows, then uncond rows
    rows = {tuple(r.tolist()) for r in official.input_ids}
    L = batch.inputs.input_ids.shape[1]
    for row, dropped in zip(batch.inputs.input_ids, drops):
        matches = [r for r in rows if r[:L] == tuple(row.tolist())]
        assert matches, "training row is not a prefix of an official row"
    # Truncating after the last image block leaves every velocity unchanged.
    full = build_generation_inputs(tiny_pixel, ["" if d else c for c, d in zip(captions, drops)], 32, False)
    assert torch.equal(full.input_ids[:, :L], batch.inputs.input_ids) and L == full.used_length
    with torch.no_grad():
        xt = batch.x0
        a = tiny_pixel.model.forward_generation(xt, batch.t, full).velocity
        b = tiny_pixel.model.forward_generation(xt, batch.t, batch.inputs).velocity
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert batch.x1.min() >= -1 and batch.x1.max() <= 1 and ((batch.t > 0) & (batch.t < 1)).all()


def test_packed_understanding_rows_match_official_sequences(tiny_pixel):
    """Each packed question/answer segment gets exactly the logits of its own official sequence."""
    scenes = [world.sample("train", i) for i in (5, 8)]
    packed = D.pack_understanding(tiny_pixel, [(ex.image, [(q.question, q.answer) for q in ex.qas])
                                               for ex in scenes])
    with torch.no_grad():
        logits = T.understanding_logits(tiny_pixel, packed)
        model = tiny_pixel.model
        for row, ex in enumerate(scenes):
            labelled = (packed.targets[row] != -100).nonzero().flatten().tolist()
            segments: list[list[int]] = []
            for i in labelled:
                (segments[-1].append(i) if segments and segments[-1][-1] == i - 1 else segments.append([i]))
            assert len(segments) == len(ex.qas)
            for qa, seg in zip(ex.qas, segments):
                inputs = build_understanding_inputs(tiny_pixel, ex.image, qa.question)
                answer = tiny_pixel.encode_text(qa.answer) + [tiny_pixel.special.eos]
                assert packed.targets[row, seg].tolist() == answer
                ids = torch.cat([inputs.input_ids, torch.tensor([answer])], 1)
                L = ids.shape[1]
                embeds = model.understanding_embeddings(dataclasses.replace(inputs, input_ids=ids))
                start, length = inputs.attention_block
                out = model.run_backbone(embeds, torch.arange(L)[None],
                                         omni_attention_mask(L, torch.tensor([start]), length, torch.float32))
                ref = model.showo.lm_head(out.hidden)[0, L - len(answer) - 1:L - 1]
                torch.testing.assert_close(logits[row, seg], ref, rtol=1e-4, atol=1e-4)


def test_train_runs_and_resumes_exactly(tmp_path):
    cfg = T.TrainConfig(steps=2, gen_batch=2, mmu_batch=1, warmup=1, log_every=1, checkpoint_every=1, seed=1)
    model_cfg = tiny_pixel_config()
    straight = T.train(cfg, tmp_path / "a", progress=False, model_config=model_cfg)
    rows = T.read_losses(tmp_path / "a" / T.LOSSES_CSV)
    assert [r["step"] for r in rows] == [1, 2] and all(r["flow"] > 0 and r["ce"] > 0 for r in rows)
    # stop after one step, then resume: bit-identical to the uninterrupted run
    T.train(T.TrainConfig(**{**vars(cfg), "steps": 1}), tmp_path / "b", progress=False, model_config=model_cfg)
    resumed = T.train(cfg, tmp_path / "b", resume=True, progress=False, model_config=model_cfg)
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["step"] for r in T.read_losses(tmp_path / "b" / T.LOSSES_CSV)] == [1, 2]



def test_train_init_starts_a_second_stage_from_another_runs_weights(tmp_path):
    """``init``: the first stage's weights, a fresh optimizer and schedule (step 1 again), its own loss log."""
    model_cfg = tiny_pixel_config()
    cfg = T.TrainConfig(steps=1, gen_batch=2, mmu_batch=1, warmup=1, log_every=1, checkpoint_every=1, seed=1)
    first = T.train(cfg, tmp_path / "first", progress=False, model_config=model_cfg)
    fresh = T.train(T.TrainConfig(**{**vars(cfg), "lr": 0.0}), tmp_path / "zero", progress=False,
                    model_config=model_cfg, init=tmp_path / "first")
    for (name, a), b in zip(first.model.state_dict().items(), fresh.model.state_dict().values()):
        assert torch.equal(a, b), name  # lr 0: the stage starts from (and here keeps) the first stage's weights
    assert [r["step"] for r in T.read_losses(tmp_path / "zero" / T.LOSSES_CSV)] == [1]
    second = T.train(T.TrainConfig(**{**vars(cfg), "seed": 2}), tmp_path / "second", progress=False,
                     model_config=model_cfg, init=tmp_path / "first" / T.CHECKPOINT)
    assert any(not torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                     second.model.state_dict().values()))
    with pytest.raises(SystemExit, match="neither a training run"):
        T.train(cfg, tmp_path / "third", progress=False, model_config=model_cfg, init=tmp_path / "absent")


def test_train_cli_end_to_end(tmp_path):
    out = tmp_path / "run"
    code = T.main(["--out", str(out), "--model", "tiny", "--steps", "2", "--gen-batch", "2", "--mmu-batch", "1",
                   "--checkpoint-every", "1", "--log-every", "1", "--no-progress", "--threads", "1",
                   "--export", str(tmp_path / "export"), "--export-dtype", "float32"])
    assert code == 0 and (out / T.CHECKPOINT).is_file() and (out / T.LOSSES_CSV).is_file()
    assert json.loads((tmp_path / "export" / "reference.json").read_text())["generation"]["steps"] == 8
    loaded = flashu.load_model(str(tmp_path / "export"), device="cpu")
    assert loaded.config.name == "tiny"
    # a second stage records both, in its run directory and in its export
    second = ["--out", str(tmp_path / "stage2"), "--init", str(out), "--model", "tiny", "--steps", "1", "--gen-batch",
              "2", "--mmu-batch", "1", "--no-progress", "--threads", "1", "--export", str(tmp_path / "export2")]
    assert T.main(second) == 0
    record = json.loads((tmp_path / "export2" / T.TRAINING_JSON).read_text())
    assert record == json.loads((tmp_path / "stage2" / T.TRAINING_JSON).read_text())
    first = json.loads((out / T.TRAINING_JSON).read_text())
    assert [stage["train"]["steps"] for stage in record["stages"]] == [2, 1]
    assert record["command"] == first["command"] + " && python -m flashu.testbed.train " + " ".join(second)
    assert record["train_seconds"] == pytest.approx(sum(stage["train_seconds"] for stage in record["stages"]), abs=0.01)


# -------------------------------------------------------------------------------------------------- evaluate


def test_evaluate_runs_on_two_items(tiny_pixel):
    base = evaluate(tiny_pixel, "none", n_gen=2, n_mmu=2, steps=3, batch_size=2, progress=False)
    assert base["generation"]["n"] == 2 and set(base["generation"]["attributes"]) == {
        "count", "colours", "shapes", "binding", "positions"}
    assert 0 <= base["generation"]["accuracy"] <= 1 and base["generation"]["seconds_per_image"] > 0
    assert base["understanding"]["n"] == 2 and len(base["understanding"]["answers"]) == 2
    paper = evaluate(tiny_pixel, "paper", n_gen=2, n_mmu=2, steps=4, batch_size=2, calibration_samples=2,
                     progress=False)
    assert paper["accel"] == "paper" and tiny_pixel.acceleration is None  # restored afterwards
    table = format_reports([base, paper])
    assert "paper" in table and "none" in table


def test_cli_eval_testbed(capsys):
    from flashu.cli import run

    assert run(["eval", "testbed", "--n-gen", "1", "--n-mmu", "2", "--steps", "3", "--no-progress"]) == 0
    assert "none" in capsys.readouterr().out
    assert run(["eval", "testbed", "--accel", "warp-speed", "--n-gen", "1"]) == 2


def test_wilson_interval_and_demo_samples():
    from flashu.testbed.demo import sample_answers
    from flashu.testbed.evaluate import format_reports, summary, wilson_interval

    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(90, 100)
    assert lo == pytest.approx(0.8256, abs=1e-3) and hi == pytest.approx(0.9448, abs=1e-3)
    assert wilson_interval(100, 100)[1] == pytest.approx(1.0) and wilson_interval(0, 10)[0] == pytest.approx(0.0)
    u = {"accuracy": 0.5, "ci95": [0.1, 0.9], "kinds": {"position": summary([True, False])},
         "seconds_per_answer": 0.1, "answers": ["left", "up"], "correct": [True, False],
         "questions": ["where?", "which?"], "expected": ["left", "down"]}
    reports = [{"accel": "none", "understanding": u}, {"accel": "paper:understanding.token_prune_ratio=0.75",
                                                      "understanding": u}]
    table = format_reports(reports)
    assert "position" in table and "paper:understanding.token_prune_ratio=0.75" in table and "[10,90]" in table
    samples = sample_answers(reports)
    assert "where?  (expected: left)" in samples and "✓ 'left'" in samples and "✗ 'up'" in samples


def test_demo_grid_shows_questions_with_every_configs_answer(tmp_path):
    from PIL import Image

    from flashu.testbed.demo import save_grid

    image = Image.new("RGB", (32, 32), "white")
    gen = {"correct": [True]}
    u = {"answers": ["left"], "correct": [True], "questions": ["where?"], "expected": ["left"]}
    plain = save_grid([{"accel": "none", "images": [image], "generation": gen}], ["a red circle"], tmp_path / "a.png")
    with_q = save_grid([{"accel": "none", "images": [image], "generation": gen, "understanding": u},
                        {"accel": "plus", "images": [image], "generation": gen, "understanding": u}],
                       ["a red circle"], tmp_path / "b.png")
    assert Image.open(with_q).height > Image.open(plain).height  # the question panel under the images
