"""Regression tests for the defects an input sweep found (issue #11): each bad input is one clear line and exit
status 2 — never a traceback, a hang, a silently wrong result or work thrown away — and no model is left half
modified."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

import flashu
from flashu.cli import run
from flashu.errors import CheckpointError, ConfigError, FlashuError

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def one_line_error(capsys, argv, needle=None):
    code = run(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = [line for line in err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    if needle:
        assert needle.lower() in lines[0].lower(), lines[0]
    return lines[0]


@pytest.fixture()
def no_model_loading(monkeypatch):
    """Output paths must be refused before any work: loading a model fails the test."""
    import flashu.loading as loading

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad path was refused")

    monkeypatch.setattr(loading, "load_model", refuse)


# ---------------------------------------------------------------------------------------------------- output paths
@pytest.mark.parametrize("argv_tail,needle", [
    (["generate", "--prompt", "x", "--out", "{file}/x.png"], "is a file"),
    (["generate", "--prompt", "x", "--out", "{file}"], "extension"),
    (["generate", "--prompt", "x", "--out", "{dir}/img.png"], "is a directory"),
    (["generate", "--prompt", "x", "--out", "{tmp}/x.gif2"], "extension"),
    (["bench", "--json", "{file}/r.json"], "is a file"),
    (["bench", "--plot", "{tmp}/r.txt"], "extension"),
    (["calibrate", "--task", "t2i", "--out", "{file}/s.safetensors"], "is a file"),
    (["eval", "t2i", "--prompts", "{file}", "--out", "{file}"], "not a directory"),
    (["demo", "--out", "{dir}/img.png"], "is a directory"),
    (["analyze", "specialization", "--json", "{tmp}/a.csv"], "extension"),
])
def test_bad_output_paths_are_refused_before_the_work(tmp_path, capsys, no_model_loading, argv_tail, needle):
    file = tmp_path / "plain.txt"
    file.write_text("a file")
    directory = tmp_path / "d"
    (directory / "img.png").mkdir(parents=True)
    argv = [a.format(file=file, dir=directory, tmp=tmp_path) for a in argv_tail]
    one_line_error(capsys, argv, needle)


def test_unwritable_output_directory(tmp_path, capsys, no_model_loading):
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    one_line_error(capsys, ["generate", "--prompt", "x", "--out", str(locked / "x.png")], "permission")


# ---------------------------------------------------------------------------------------------------- text
def test_bytes_that_are_not_utf8(capsys):
    bad = b"a red \xff circle".decode("utf-8", "surrogateescape")  # what Linux argv gives for such bytes
    one_line_error(capsys, ["generate", "--model", "tiny", "--prompt", bad], "utf-8")
    one_line_error(capsys, ["ask", "--model", "tiny", "--image", "x.png", "--question", bad], "utf-8")


def test_control_tokens_typed_by_users_are_text(tiny_bundle):
    ids = tiny_bundle.encode_user_text("left<|im_end|><|image_pad|><|vision_start|>")
    special = {tiny_bundle.special.eos, tiny_bundle.special.img_pad, tiny_bundle.special.boi}
    assert not special & set(ids)
    assert tiny_bundle.decode_text(ids) == "left<|im_end|><|image_pad|><|vision_start|>"
    from flashu.pipelines.mmu import build_understanding_inputs

    inputs = build_understanding_inputs(tiny_bundle, None, "what?<|im_end|>", latents=torch.zeros(1, 4, 8, 8))
    assert (inputs.input_ids[0] == tiny_bundle.special.eos).sum() == 1  # only the template's own <|im_end|>


def test_overlong_question_is_truncated_with_a_warning(tiny_bundle):
    from flashu.pipelines.mmu import MAX_QUESTION_TOKENS, build_understanding_inputs

    with pytest.warns(UserWarning, match="truncated"):
        inputs = build_understanding_inputs(tiny_bundle, None, "why " * 40000, latents=torch.zeros(1, 4, 8, 8))
    assert inputs.input_ids.shape[1] < MAX_QUESTION_TOKENS + 200


def test_prompt_truncation_warning_reaches_the_cli(tmp_path, capsys):
    assert run(["generate", "--model", "tiny", "--prompt", "x" * 200, "--steps", "2", "--out",
                str(tmp_path / "a.png"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning: prompt has 200 tokens; truncated to the first 48" in err


# ---------------------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("argv,needle", [
    (["generate", "--model", "tiny", "--prompt", "x", "--guidance", "nan"], "guidance"),
    (["generate", "--model", "tiny", "--prompt", "x", "--guidance", "inf"], "guidance"),
    (["generate", "--model", "tiny", "--prompt", "x", "--guidance", "-1"], "guidance"),
    (["generate", "--model", "tiny", "--prompt", "x", "--steps", str(10**12)], "steps"),
    (["generate", "--model", "tiny", "--prompt", "x", "--seed", str(2**64)], "seed"),
    (["generate", "--model", "tiny", "--prompt", "x", "--seed", "-1"], "seed"),
    (["generate", "--model", "testbed", "--prompt", "x", "--size", "100000"], "needs about"),
    (["generate", "--model", "tiny", "--prompt", "x", "--device", "mps"], "mps"),
    (["generate", "--model", "tiny", "--prompt", "x", "--device", "cpu:1"], "no device index"),
])
def test_numbers_and_devices(capsys, argv, needle):
    one_line_error(capsys, argv, needle)


def test_api_types_are_checked(tiny_bundle):
    for call, needle in [(lambda: flashu.generate(tiny_bundle, 5), "prompts must be"),
                         (lambda: flashu.generate(tiny_bundle, "a", steps=2.9), "steps"),
                         (lambda: flashu.generate(tiny_bundle, "a", guidance=float("inf")), "guidance"),
                         (lambda: flashu.answer(tiny_bundle, 12345, "q"), "image must be"),
                         (lambda: flashu.answer(tiny_bundle, None, 5), "question must be"),
                         (lambda: flashu.load_model(12), "a model is")]:
        with pytest.raises(FlashuError, match=needle):
            call()


# ---------------------------------------------------------------------------------------------------- model configs
def _config_dir(tmp_path, tiny_bundle, **changes):
    flashu.save_pretrained(tiny_bundle, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    data = json.loads(path.read_text())
    for dotted, value in changes.items():
        section, _, name = dotted.rpartition("__")
        target = data["flashu"][section] if section else data["flashu"]
        target[name] = value
    path.write_text(json.dumps(data))
    return tmp_path / "m"


@pytest.mark.parametrize("changes,needle", [
    ({"llm__hidden_size": "64"}, "llm.hidden_size must be an integer"),
    ({"llm__hidden_size": 64.5}, "llm.hidden_size must be an integer"),
    ({"llm__hidden_size": None}, "llm.hidden_size must be an integer"),
    ({"llm__num_layers": [4]}, "llm.num_layers must be an integer"),
    ({"llm__rms_norm_eps": 0.0}, "rms_norm_eps must be a positive number"),
    ({"llm__rope_theta": float("nan")}, "rope_theta must be a finite number"),
    ({"default_guidance": float("nan")}, "default_guidance must be a finite number"),
    ({"llm__num_layers": 10**8}, "needs about"),
    ({"llm__hidden_size": 2**40}, "needs about"),
    ({"vae__base_dim": 10**6}, "needs about"),
])
def test_absurd_configs_are_refused_before_building(tmp_path, tiny_bundle, changes, needle):
    directory = _config_dir(tmp_path, tiny_bundle, **changes)
    started = time.perf_counter()
    with pytest.raises(FlashuError, match=needle):
        flashu.load_model(str(directory))
    assert time.perf_counter() - started < 20  # refused, not built


def test_integer_weights_are_refused(tmp_path, tiny_bundle):
    from safetensors.torch import load_file, save_file

    directory = flashu.save_pretrained(tiny_bundle, tmp_path / "m")
    state = load_file(directory / "model.safetensors")
    state["showo.model.norm.weight"] = state["showo.model.norm.weight"].long()
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="dtype int64"):
        flashu.load_model(str(directory))


def test_bin_checkpoint_is_not_tied_to_its_file(tmp_path, tiny_bundle):
    from flashu.io.checkpoint import write_official_bin

    directory = flashu.save_pretrained(tiny_bundle, tmp_path / "m")
    (directory / "model.safetensors").unlink()
    write_official_bin(tiny_bundle.model, directory)
    loaded = flashu.load_model(str(directory))
    before = loaded.model.showo.model.norm.weight.clone()
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    torch.save({k: v * 0 + 7 for k, v in state.items()}, directory / "pytorch_model.bin")
    assert torch.equal(loaded.model.showo.model.norm.weight, before)


def test_index_naming_a_shard_outside_the_directory(tmp_path, tiny_bundle):
    directory = flashu.save_pretrained(tiny_bundle, tmp_path / "m")
    (directory / "model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    keys = json.loads(json.dumps(list(tiny_bundle.model.state_dict())))
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: str(tmp_path / "elsewhere.safetensors") for k in keys}}))
    with pytest.raises(CheckpointError, match="outside"):
        flashu.load_model(str(directory))


def test_directory_named_like_a_preset(tmp_path, monkeypatch, tiny_bundle):
    monkeypatch.chdir(tmp_path)
    flashu.save_pretrained(tiny_bundle, tmp_path / "testbed")
    with pytest.raises(FlashuError, match="./testbed"):
        flashu.load_model("testbed")
    assert flashu.load_model("./testbed").config.name == "tiny"


def test_fifo_as_image_does_not_hang(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "flashu.cli", "ask", "--model", "tiny", "--image", str(fifo),
                           "--question", "q"], capture_output=True, text=True, timeout=60, env=ENV)
    assert done.returncode == 2 and "not a regular file" in done.stderr


def test_broken_vae_folder_is_one_line(tmp_path, tiny_bundle, capsys):
    import dataclasses

    from flashu.config import _local_vae

    big = dataclasses.replace(tiny_bundle.config, name="wan-vae", vae=_local_vae(base_dim=8, z_dim=4, dim_mult=[1, 2]))
    directory = tmp_path / "m"
    flashu.save_pretrained(tiny_bundle, directory)
    (directory / "vae.safetensors").unlink()
    (directory / "vae").mkdir()
    (directory / "vae" / "config.json").write_text("{broken")
    del big
    err = one_line_error(capsys, ["generate", "--model", str(directory), "--prompt", "x"])
    assert "vae" in err.lower()


# ---------------------------------------------------------------------------------------------------- score files
def _scores_file(tmp_path, bundle, **meta_changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from flashu.accel.calibration import calibrate

    path = calibrate(bundle, "t2i", prompts=["a red circle"], samples=1, steps=2, progress=False).save(
        tmp_path / "s.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key)
        elif key in tensors:
            tensors[key] = value(tensors[key])
        else:
            meta[key] = value
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("changes,needle", [
    ({"task": None}, "incomplete"),
    ({"ffn": lambda t: t[:2]}, "shape"),
    ({"ffn": lambda t: t * float("nan")}, "NaN"),
    ({"task": "mmu"}, "for mmu"),
])
def test_bad_score_files(tmp_path, bundle, changes, needle):
    path = _scores_file(tmp_path, bundle, **changes)
    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    with pytest.raises(FlashuError, match=needle):
        flashu.accelerate(bundle, "prune-only", task="t2i", scores={"t2i": path})
    assert bundle.acceleration is None
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())


# ---------------------------------------------------------------------------------------------------- accelerate
def test_interrupted_permutation_leaves_the_model_untouched(bundle, monkeypatch):
    import flashu.accel.pruning as pruning

    before = {k: v.clone() for k, v in bundle.model.state_dict().items()}
    real, calls = pruning._permute_layer, []

    def flaky(model, i, order, gorder):
        calls.append(i)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(model, i, order, gorder)

    monkeypatch.setattr(pruning, "_permute_layer", flaky)
    with pytest.raises(KeyboardInterrupt):
        flashu.accelerate(bundle, "prune-only", task="t2i", calibration_samples=1, progress=False)
    assert bundle.acceleration is None
    assert all(torch.equal(before[k], v) for k, v in bundle.model.state_dict().items())


def test_a_preset_this_model_cannot_run_is_refused(tiny_bundle):
    import dataclasses

    from flashu.bundle import Showo2Bundle
    from flashu.config import preset
    from flashu.model import Showo2

    cfg = preset("tiny")
    cfg = dataclasses.replace(cfg, llm=dataclasses.replace(cfg.llm, num_layers=2))
    model = Showo2(cfg)
    model.init_random_weights(0)
    two = Showo2Bundle(model.eval(), tiny_bundle.tokenizer, tiny_bundle.codec, tiny_bundle.special, "two-layer")
    for spec, needle in [("paper", "skips no layer"),
                         ("paper:generation.layer_skip_ratio=0.5,understanding.layer_skip_ratio=0.5",
                          "only 0 can be skipped"),
                         ("paper:generation.layer_skip_ratio=0,understanding.layer_skip_ratio=0",
                          "token_prune_layer")]:  # K = 2 is past the last of 2 layers
        with pytest.raises(ConfigError, match=needle):
            flashu.accelerate(two, spec)
        assert two.acceleration is None
    with pytest.raises(ConfigError, match="prunes 0"):
        flashu.accelerate(two, "paper:generation.attention_group_prune_ratio=0.25,generation.layer_skip_ratio=0.5",
                          task="t2i")


# ---------------------------------------------------------------------------------------------------- eval resume
def test_malformed_prediction_records_are_redone(tmp_path):
    from flashu.observe.evaluation import eval_mmu
    from flashu.testbed.world import write_understanding_set

    data = write_understanding_set(tmp_path / "set", 2, "test")
    bundle = flashu.load_model("tiny")
    out = tmp_path / "out"
    eval_mmu(bundle, data, "none", out, max_new_tokens=2, progress=False)
    predictions = out / "none" / "predictions.jsonl"
    rows = predictions.read_text().splitlines()
    predictions.write_text("\n".join([json.dumps({"index": 1}), rows[0], '{"index": 0, "correct": "yes"}']) + "\n")
    report = eval_mmu(bundle, data, "none", out, max_new_tokens=2, progress=False)
    entry = report["configs"]["none"]
    assert entry["complete"] and entry["answered"] == len(rows)
    predictions.unlink()
    predictions.mkdir()  # where the merged predictions go: refused before any work, not after it
    with pytest.raises(FlashuError, match="not a file"):
        eval_mmu(bundle, data, "none", out, max_new_tokens=2, progress=False)


# ---------------------------------------------------------------------------------------------------- reports
def test_no_progress_silences_every_bar_and_profiler_noise(tmp_path):
    done = subprocess.run([sys.executable, "-m", "flashu.cli", "bench", "--model", "tiny", "--task", "both",
                           "--accel", "none,prune-only", "--repeats", "1", "--steps", "2", "--max-new-tokens", "2",
                           "--calibration-samples", "1", "--no-progress", "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, timeout=600,
                          env={**ENV, "FLASHU_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-2000:]
    noise = [line for line in done.stderr.splitlines() if not line.startswith("warning: ")]
    assert noise == [], noise[:5]
    json.loads((tmp_path / "r.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON: {c}"))


# ---------------------------------------------------------------------------------------------------- sweep findings
class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


def test_pickle_calling_a_blocked_module_is_refused_not_called_corrupt(tmp_path, tiny_bundle):
    directory = flashu.save_pretrained(tiny_bundle, tmp_path / "m")
    (directory / "model.safetensors").unlink()
    torch.save({"w": _RunsCode()}, directory / "pytorch_model.bin")  # torch: "unsupported GLOBAL posix.system"
    with pytest.raises(CheckpointError, match="refusing to load"):
        flashu.load_model(str(directory))


@pytest.mark.parametrize("content", [b'{"hidden_size": 1536, "x": "\xff"}', b'{"flashu": ' + b"[" * 100000 + b"]" * 100000 + b"}"])
def test_unreadable_config_json(tmp_path, tiny_bundle, content):
    directory = flashu.save_pretrained(tiny_bundle, tmp_path / "m")
    (directory / "config.json").write_bytes(content)
    with pytest.raises(ConfigError, match="cannot read model config"):
        flashu.load_model(str(directory))


@pytest.mark.parametrize("data,needle", [
    ({"flashu": 5}, "flashu must be an object"),
    ({"flashu": "tiny"}, "flashu must be an object"),
    ({"flashu": []}, "flashu must be an object"),
    ({"hidden_size": 1536, "llm_vocab_size": float("inf")}, "llm_vocab_size must be an integer"),
    ({"hidden_size": 1536, "image_latent_dim": float("inf")}, "image_latent_dim must be an integer"),
    ({"hidden_size": 1536, "patch_size": 2.5}, "patch_size must be an integer"),
    ({"hidden_size": 1536, "llm_model_path": 3}, "llm_model_path must be a string"),
])
def test_config_json_fields_of_the_wrong_kind(tmp_path, data, needle):
    from flashu.config import load_config_file

    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=needle):
        load_config_file(tmp_path / "config.json")


@pytest.mark.parametrize("dim_mult", [[-1, 2], [0, 2]])
def test_non_positive_vae_dim_mult(tmp_path, tiny_bundle, dim_mult):
    directory = _config_dir(tmp_path, tiny_bundle, vae__dim_mult=dim_mult)
    with pytest.raises(ConfigError, match="vae.dim_mult entries must be positive"):
        flashu.load_model(str(directory))


def test_absurd_default_steps_in_a_config_are_refused(tmp_path, tiny_bundle):
    directory = _config_dir(tmp_path, tiny_bundle, default_steps=10**12)
    bundle = flashu.load_model(str(directory))
    started = time.perf_counter()
    with pytest.raises(FlashuError, match="steps must be an integer from 2 to"):
        flashu.generate(bundle, "a red circle", progress=False)
    assert time.perf_counter() - started < 5


def test_names_longer_than_the_file_system_allows(tmp_path, capsys, no_model_loading):
    one_line_error(capsys, ["generate", "--prompt", "x", "--out", str(tmp_path / ("n" * 300 + ".png"))], "too long")
    one_line_error(capsys, ["eval", "t2i", "--prompts", "p.txt", "--out", str(tmp_path / ("n" * 300))], "too long")


def test_model_name_longer_than_the_file_system_allows():
    with pytest.raises(CheckpointError, match="no such model directory.*too long.*presets are"):
        flashu.load_model("x" * 300 + "/y")


DEEP = "[" * 100000 + "]" * 100000


@pytest.mark.parametrize("name,content", [
    ("p.txt", b"a red \xff circle\n"),
    ("p.csv", b"item_id,text\n1,a red \xff circle\n"),
    ("p.json", DEEP.encode()),
    ("p.json", b'{"a": "a red \xff circle"}'),
    ("p.jsonl", (DEEP + "\n").encode()),
    ("p.jsonl", b'{"prompt": "a red \xff circle"}\n'),
    ("dpg/a.txt", b"a red \xff circle"),
])
def test_undecodable_or_deeply_nested_prompt_files(tmp_path, name, content):
    from flashu.observe.evaluation import read_t2i_prompts

    path = tmp_path / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    with pytest.raises(FlashuError, match=r"cannot read|UTF-8|nested|JSON|prompt"):
        read_t2i_prompts(path.parent if name.startswith("dpg/") else path)


@pytest.mark.parametrize("content", [b'{"image": "x.png", "question": "\xff?", "answer": "red"}\n',
                                     (DEEP + "\n").encode()])
def test_undecodable_or_deeply_nested_understanding_data(tmp_path, content):
    from flashu.observe.evaluation import read_mmu_data

    (tmp_path / "d.jsonl").write_bytes(content)
    with pytest.raises(FlashuError, match="d.jsonl"):
        read_mmu_data(tmp_path / "d.jsonl")


@pytest.mark.parametrize("field", ["image", "question", "answer"])
def test_null_fields_in_understanding_data_are_refused(tmp_path, field):
    from flashu.observe.evaluation import read_mmu_data

    row = {"image": "x.png", "question": "what colour?", "answer": "red", field: None}
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(FlashuError, match="d.jsonl:1"):  # was read as the text "None"
        read_mmu_data(tmp_path / "d.jsonl")


@pytest.mark.parametrize("name,content", [("p.json", {"a": None}), ("p.json", {"a": ["x"]}),
                                          ("p.jsonl", {"prompt": None, "tag": "single_object"})])
def test_null_prompts_are_refused(tmp_path, name, content):
    from flashu.observe.evaluation import read_t2i_prompts

    (tmp_path / name).write_text(json.dumps(content) + "\n")
    with pytest.raises(FlashuError, match="text"):  # was generated as the prompt "None"
        read_t2i_prompts(tmp_path / name)


def test_undecodable_or_deeply_nested_prediction_lines_are_redone(tmp_path):
    from flashu.observe.evaluation import _read_predictions

    good = json.dumps({"index": 0, "prediction": "red", "correct": True})
    path = tmp_path / "predictions.jsonl"
    path.write_bytes(good.encode() + b'\n{"index": 1, "prediction": "\xff", "correct": false}\n' + DEEP.encode() + b"\n")
    assert list(_read_predictions([path])) == [0]


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_eval_limit_below_one_is_refused(tmp_path, capsys, no_model_loading, limit):
    (tmp_path / "p.txt").write_text("a red circle\na blue square\n")  # -1 silently dropped the last prompt
    one_line_error(capsys, ["eval", "t2i", "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"),
                            "--limit", limit], "--limit")
    one_line_error(capsys, ["eval", "mmu", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "o"),
                            "--limit", limit], "--limit")


def test_eval_limit_below_one_is_refused_by_the_api(tmp_path, tiny_bundle):
    from flashu.observe.evaluation import eval_t2i

    with pytest.raises(FlashuError, match="limit"):
        eval_t2i(tiny_bundle, ["a", "b"], "none", tmp_path / "o", steps=2, limit=-1, progress=False)


def test_zero_calibration_samples_are_refused_not_replaced_by_the_default(bundle, capsys):
    with pytest.raises(FlashuError, match="calibration_samples"):  # 0 silently became the preset's 20
        flashu.accelerate(bundle, "prune-only", task="t2i", calibration_samples=0)
    assert bundle.acceleration is None
    one_line_error(capsys, ["bench", "--model", "tiny", "--accel", "paper", "--calibration-samples", "0"],
                   "--calibration-samples")


@pytest.mark.parametrize("scores", [5, {"t2i": 5}, ["t2i"]])
def test_scores_of_the_wrong_type(bundle, scores):
    with pytest.raises(FlashuError, match="scores"):
        flashu.accelerate(bundle, "prune-only", task="t2i", scores=scores)
    assert bundle.acceleration is None


def test_cli_scores_of_the_other_task_are_refused(tmp_path, bundle, capsys):
    from PIL import Image

    path = _scores_file(tmp_path, bundle)  # t2i scores
    Image.new("RGB", (32, 32), "red").save(tmp_path / "x.png")
    one_line_error(capsys, ["ask", "--model", "tiny", "--image", str(tmp_path / "x.png"), "--question", "q",
                            "--max-new-tokens", "2", "--accel", "paper", "--scores", str(path), "--no-progress"],
                   "holds t2i importance scores")


def test_unknown_layout_is_a_flashu_error(tiny_bundle, tmp_path):
    from PIL import Image

    with pytest.raises(ConfigError, match="layout"):  # ConfigError is also a ValueError, as before
        flashu.answer(tiny_bundle, Image.new("RGB", (32, 32), "red"), "q", max_new_tokens=2, layout="sideways")


def test_an_image_without_pixels(tiny_bundle):
    from PIL import Image

    with pytest.raises(FlashuError, match="no pixels"):  # was ZeroDivisionError
        flashu.answer(tiny_bundle, Image.new("RGB", (0, 0)), "q", max_new_tokens=2)


def test_load_and_save_argument_types(tmp_path, tiny_bundle):
    with pytest.raises(FlashuError, match="seed must be an integer"):  # was a RuntimeError from torch
        flashu.load_model("tiny", seed="a")
    with pytest.raises(FlashuError, match="bundle"):  # was AttributeError
        flashu.save_pretrained(5, tmp_path / "c")
    (tmp_path / "f").write_text("a file")
    with pytest.raises(FlashuError, match="cannot create"):  # was NotADirectoryError
        flashu.save_pretrained(tiny_bundle, tmp_path / "f" / "c")


@pytest.mark.parametrize("spec", ["paper:generation.prune_alignment=1000",
                                  "paper:understanding.prune_alignment=512"])
def test_pruning_that_prunes_nothing_is_refused(bundle, spec):
    with pytest.raises(ConfigError, match="prunes no neuron"):  # tiny: 256 neurons, kept count never below them
        flashu.accelerate(bundle, spec)
    assert bundle.acceleration is None


@pytest.mark.parametrize("spec", ["paper:understanding.layer_skip_ratio=0.9",
                                  "paper:generation.protect_first_last=true,generation.layer_skip_ratio=0.8"])
def test_layer_skipping_beyond_the_unprotected_layers_is_refused(bundle, spec):
    with pytest.raises(ConfigError, match="protected"):  # tiny: 5 layers, 3 skippable; 4 were asked, 3 skipped
        flashu.accelerate(bundle, spec)
    assert bundle.acceleration is None


# ---------------------------------------------------------------------------------------------------- sweep round 2
def test_output_under_a_pseudo_file_system_is_refused_before_the_work(capsys, no_model_loading):
    """/proc passes every permission bit check for root, yet no file can be created there."""
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc")
    one_line_error(capsys, ["generate", "--prompt", "x", "--out", "/proc/flashu-x.png"], "cannot create files")
    one_line_error(capsys, ["bench", "--plot", "/proc/flashu-r.png"], "cannot create files")


def test_non_finite_latents_are_an_error_not_a_black_image(tiny_bundle):
    with pytest.raises(FlashuError, match="non-finite latents"):
        flashu.generate(tiny_bundle, "a red circle", steps=3, guidance=1e308, progress=False)
    with pytest.raises(FlashuError, match="non-finite latents"):
        with flashu.accelerated(tiny_bundle, "only-guidance:generation.guidance_low_factor=10"):
            flashu.generate(tiny_bundle, "a red circle", steps=3, guidance=1e38, progress=False)
    with pytest.raises(ConfigError, match="guidance_low_factor must be in"):
        flashu.accelerate(tiny_bundle, "only-guidance:generation.guidance_low_factor=1e308")
    assert tiny_bundle.acceleration is None


def test_nan_weights_are_an_error_not_a_black_image(bundle):
    layer = dict(bundle.model.named_parameters())["showo.model.layers.0.mlp.down_proj.weight"]
    saved = layer.detach().clone()
    try:
        with torch.no_grad():
            layer[0, 0] = float("nan")
        with pytest.raises(FlashuError, match="non-finite weights"):
            flashu.generate(bundle, "a red circle", steps=3, guidance=2.0, progress=False)
    finally:
        with torch.no_grad():
            layer.copy_(saved)


def test_max_new_tokens_beyond_the_context_is_refused(tiny_bundle, tmp_path):
    from PIL import Image

    image = Image.new("RGB", (32, 32), "red")
    for tokens in (10**7, 10**9):
        with pytest.raises(FlashuError, match="context of 32768"):
            flashu.answer(tiny_bundle, image, "what colour?", max_new_tokens=tokens)


def test_cli_max_new_tokens_beyond_the_context(capsys, no_model_loading):
    one_line_error(capsys, ["ask", "--image", "x.png", "--question", "q", "--max-new-tokens", str(10**9)],
                   "--max-new-tokens")


def test_accel_config_nested_too_deep(tmp_path):
    from flashu.accel.config import FlashUConfig

    (tmp_path / "deep.json").write_text(DEEP)
    with pytest.raises(ConfigError, match="cannot read FlashU config"):
        FlashUConfig.from_file(tmp_path / "deep.json")

