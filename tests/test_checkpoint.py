"""Checkpoint reading, checking and writing (tiny preset, CPU, seconds)."""

from __future__ import annotations

import json
import pathlib
import pickle
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from flashu.io.checkpoint import (
    EMBED_KEY, LM_HEAD_KEY, load_into, read_state_dict, resolve_checkpoint_dir, write_official_bin,
    write_official_sharded_bin, write_safetensors,
)
from flashu.config import preset
from flashu.errors import CheckpointError
from flashu.model.showo2 import GenerationInputs, Showo2, omni_attention_mask


def _build(seed: int | None = None, device: str = "cpu") -> Showo2:
    with torch.device(device):
        model = Showo2(preset("tiny"))
    if seed is not None:
        model.init_random_weights(seed)
    return model.eval()


def _inputs(model: Showo2) -> tuple[torch.Tensor, torch.Tensor, GenerationInputs]:
    cfg = model.config
    gen = torch.Generator().manual_seed(1)
    side = cfg.grid * cfg.patch_size
    latents = torch.randn(2, cfg.latent_channels, side, side, generator=gen)
    block_len = 1 + cfg.grid * cfg.grid
    length = block_len + 12
    ids = torch.randint(0, cfg.llm.vocab_size, (2, length), generator=gen)
    offsets = torch.tensor([5, 8])
    mask = omni_attention_mask(length, offsets, block_len, torch.float32)
    return latents, torch.tensor([0.3, 0.7]), GenerationInputs(ids, offsets, block_len, mask)


@torch.no_grad()
def _velocity(model: Showo2) -> torch.Tensor:
    latents, t, inputs = _inputs(model)
    return model.forward_generation(latents, t, inputs).velocity


@pytest.fixture(scope="module")
def reference() -> tuple[Showo2, torch.Tensor]:
    model = _build(seed=0)
    return model, _velocity(model)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(model: torch.nn.Module, ref: torch.nn.Module) -> None:
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        assert torch.equal(got[key], want[key]), key


WRITERS = {
    "bin": lambda m, d: write_official_bin(m, d),
    "sharded_bin": lambda m, d: write_official_sharded_bin(m, d, shard_bytes=200_000),
    "safetensors": lambda m, d: write_safetensors(m, d),
    "sharded_safetensors": lambda m, d: write_safetensors(m, d, max_shard_bytes=200_000),
}


@pytest.mark.parametrize("layout", WRITERS)
def test_round_trip_is_bit_identical(layout, reference, tmp_path):
    ref, ref_velocity = reference
    WRITERS[layout](ref, tmp_path)
    if layout.startswith("sharded"):
        assert len(list(tmp_path.glob("*-of-*"))) > 1
        assert len(list(tmp_path.glob("*.index.json"))) == 1
    model = _build(seed=1)
    load_into(model, read_state_dict(tmp_path), tied_lm_head=True)
    _assert_same_weights(model, ref)
    assert model.showo.lm_head.weight is model.showo.model.embed_tokens.weight
    assert torch.equal(_velocity(model), ref_velocity)


def test_load_into_meta_model(reference, tmp_path):
    ref, ref_velocity = reference
    write_safetensors(ref, tmp_path)
    model = _build(device="meta")
    load_into(model, read_state_dict(tmp_path), tied_lm_head=True)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    _assert_same_weights(model, ref)
    for (name, got), (_, want) in zip(model.named_buffers(), ref.named_buffers()):
        assert torch.equal(got, want), name  # non-persistent rotary tables recomputed
    assert model.showo.lm_head.weight is model.showo.model.embed_tokens.weight
    assert torch.equal(_velocity(model), ref_velocity)
    model.to(torch.float64)  # would fail on a leftover meta tensor


def test_tied_head_dropped_from_safetensors_kept_in_official_bin(reference, tmp_path):
    ref, _ = reference
    write_safetensors(ref, tmp_path / "st")
    with safe_open(tmp_path / "st" / "model.safetensors", "pt") as f:
        assert LM_HEAD_KEY not in f.keys() and EMBED_KEY in f.keys()
        assert f.metadata() == {"format": "pt"}
    write_official_bin(ref, tmp_path / "bin")
    assert LM_HEAD_KEY in read_state_dict(tmp_path / "bin")


def test_differing_stored_head_warns_and_ties(reference):
    ref, _ = reference
    state = _snapshot(ref)
    state[LM_HEAD_KEY] = state[LM_HEAD_KEY] + 1
    model = _build(seed=1)
    with pytest.warns(UserWarning, match="ignored"):
        load_into(model, state, tied_lm_head=True)
    assert model.showo.lm_head.weight is model.showo.model.embed_tokens.weight
    assert torch.equal(model.showo.lm_head.weight, ref.showo.model.embed_tokens.weight)


def test_mismatched_keys_give_readable_error_and_leave_model_untouched(reference):
    ref, _ = reference
    state = _snapshot(ref)
    del state["showo.model.norm.weight"]
    state["showo.extra.weight"] = torch.zeros(3)
    state[EMBED_KEY] = torch.zeros(151669, 1536, dtype=torch.bfloat16)
    model = _build(seed=1)
    before = _snapshot(model)
    with pytest.raises(CheckpointError) as info:
        load_into(model, state, tied_lm_head=True)
    message = str(info.value)
    assert message.startswith("checkpoint does not match the model: ")
    assert "1 missing key (showo.model.norm.weight)" in message
    assert "1 unexpected key (showo.extra.weight)" in message
    assert f"{EMBED_KEY}: checkpoint [151669, 1536] vs model [320, 64]" in message
    assert "\n" not in message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_many_missing_keys_are_counted_and_capped(reference):
    ref, _ = reference
    state = {k: v for k, v in _snapshot(ref).items() if not k.startswith("und_trans.")}
    with pytest.raises(CheckpointError, match=r"\d+ missing keys \(und_trans\.[^)]*, \.\.\.\)"):
        load_into(_build(seed=1), state, tied_lm_head=True)


def test_untied_head_is_required(reference):
    ref, _ = reference
    state = {k: v for k, v in _snapshot(ref).items() if k != LM_HEAD_KEY}
    with pytest.raises(CheckpointError, match=r"1 missing key \(showo\.lm_head\.weight\)"):
        load_into(_build(seed=1), state, tied_lm_head=False)


@pytest.mark.parametrize("layout", ["bin", "safetensors"])
def test_truncated_file(layout, reference, tmp_path):
    ref, _ = reference
    WRITERS[layout](ref, tmp_path)
    (path,) = [p for p in tmp_path.iterdir() if p.suffix in (".bin", ".safetensors")]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{path.name} is corrupt or truncated \(re-download it\)"):
        read_state_dict(tmp_path)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "executed"
    torch.save({"weight": torch.zeros(2), "payload": _Evil(marker)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refusing to load .*pytorch_model.bin"):
        read_state_dict(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps({"payload": _Evil(marker)}))  # a bare pickle
    with pytest.raises(CheckpointError):
        read_state_dict(tmp_path)
    assert not marker.exists()


def test_nested_state_dict_is_unwrapped(tmp_path):
    torch.save({"state_dict": {"a": torch.ones(2)}}, tmp_path / "pytorch_model.bin")
    assert torch.equal(read_state_dict(tmp_path)["a"], torch.ones(2))


def test_no_weights_and_missing_shard(reference, tmp_path):
    with pytest.raises(CheckpointError, match="no weights found .*model.safetensors.*pytorch_model.bin"):
        read_state_dict(tmp_path)
    files = write_official_sharded_bin(reference[0], tmp_path, shard_bytes=200_000)
    files[1].unlink()
    with pytest.raises(CheckpointError, match=f"names shard {files[1].name}, which is missing"):
        read_state_dict(tmp_path)


def test_missing_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="no such model directory"):
        resolve_checkpoint_dir(str(missing))
    with pytest.raises(CheckpointError, match="no such model directory"):
        read_state_dict(missing)
    assert resolve_checkpoint_dir(str(tmp_path)) == tmp_path


def test_hub_id_while_offline_fails_fast(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint_dir("nobody-flashu/does-not-exist")
    assert time.perf_counter() - start < 5
    assert str(info.value) == (
        "cannot get nobody-flashu/does-not-exist (the Show-o2 checkpoint): HF_HUB_OFFLINE=1 and "
        f"nobody-flashu/does-not-exist is not in the Hugging Face cache ({tmp_path}); run 'flashu download "
        "nobody-flashu/does-not-exist' once with network access (HF_HUB_OFFLINE unset)")
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_hub_unreachable_and_download(monkeypatch, tmp_path):
    import httpx2
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    calls = []

    def unreachable(self, repo_id, **kwargs):
        raise httpx2.ConnectError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", unreachable)
    with pytest.raises(CheckpointError, match=r"^cannot get nobody-flashu/does-not-exist \(the Show-o2 checkpoint\): "
                                              r"cannot connect to huggingface.co \(\[Errno 101\] Network is "
                                              r"unreachable\) and no copy is cached"):
        resolve_checkpoint_dir("nobody-flashu/does-not-exist")

    def download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo_id, **kwargs: calls.append(kwargs))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    assert resolve_checkpoint_dir("showlab/show-o2-1.5B") == tmp_path
    info_kwargs, (repo_id, kwargs) = calls
    assert 0 < info_kwargs["timeout"] <= 10  # the metadata request cannot hang
    assert repo_id == "showlab/show-o2-1.5B" and not kwargs["local_files_only"]
    assert {"*.json", "*.bin", "*.safetensors", "Wan2.1_VAE.pth"} <= set(kwargs["allow_patterns"])
    calls.clear()
    assert resolve_checkpoint_dir("showlab/show-o2-1.5B", config_only=True) == tmp_path
    assert calls[1][1]["allow_patterns"] == ["config.json"]


def test_reading_shows_progress_per_shard(reference, tmp_path, capsys):
    files = write_official_sharded_bin(reference[0], tmp_path, shard_bytes=200_000)
    shards = len(files) - 1
    assert shards > 1
    quiet = read_state_dict(tmp_path)  # progress is off by default
    assert capsys.readouterr().err == ""
    loud = read_state_dict(tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "reading weights" in err and "100%" in err and files[-2].name in err
    assert quiet.keys() == loud.keys()
    single = tmp_path / "single"
    write_official_bin(reference[0], single)
    read_state_dict(single, progress=True)  # one small file: no bar
    assert capsys.readouterr().err == ""


def test_loading_shows_progress_when_asked(tiny_bundle, tmp_path, monkeypatch, capsys):
    """Bars for reading the files and casting to the run's dtype (thresholds lowered: real ones start at 1 GiB)."""
    import flashu
    from flashu import loading
    from flashu.io import checkpoint

    directory = flashu.save_pretrained(tiny_bundle, tmp_path / "ckpt")
    capsys.readouterr()
    monkeypatch.setattr(checkpoint, "PROGRESS_MIN_BYTES", 0)
    monkeypatch.setattr(loading, "PROGRESS_MIN_BYTES", 0)
    quiet = flashu.load_model(str(directory), dtype="bfloat16", device="cpu", progress=False)
    assert capsys.readouterr().err == ""
    loud = flashu.load_model(str(directory), dtype="bfloat16", device="cpu")
    err = capsys.readouterr().err
    assert "reading weights" in err and "model.safetensors" in err and "converting to bfloat16" in err
    expected = {k: v.to(torch.bfloat16) for k, v in tiny_bundle.model.state_dict().items()}
    for bundle in (quiet, loud):
        got = bundle.model.state_dict()
        assert all(got[k].dtype == torch.bfloat16 and torch.equal(got[k], expected[k]) for k in expected)
        assert bundle.model.get_parameter(LM_HEAD_KEY) is bundle.model.get_parameter(EMBED_KEY)


def test_sharded_safetensors_index(reference, tmp_path):
    ref, _ = reference
    write_safetensors(ref, tmp_path, max_shard_bytes=200_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert LM_HEAD_KEY not in index["weight_map"]
    assert set(index["weight_map"].values()) == {p.name for p in tmp_path.glob("model-*-of-*.safetensors")}
    write_safetensors(ref, tmp_path)  # rewriting unsharded removes the old shards and index
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
