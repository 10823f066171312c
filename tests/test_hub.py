"""Hub ids resolve all three parts (Show-o2 weights, the llm_model_path tokenizer, the Wan2.1 VAE) through the real
``huggingface_hub`` code, offline, from a Hugging Face cache this module builds in its on-disk layout
(``models--owner--name/{blobs,refs/main,snapshots/<commit>}``); failed downloads say why in one line, in seconds."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants, errors

try:  # the HTTP library huggingface_hub uses: httpx2 from 2.0, httpx in 1.x
    import httpx2
except ImportError:  # pragma: no cover
    import httpx as httpx2

import flashu
from flashu.cli import run
from flashu.config import Showo2Config, preset
from flashu.errors import CheckpointError
from flashu.io import hub
from flashu.io.checkpoint import CHECKPOINT_PATTERNS, write_official_bin, write_official_sharded_bin
from flashu.io.tokenizer import build_local_tokenizer
from flashu.model import Showo2
from test_tokenizer import write_fake_qwen
from test_vae import WAN_TOPOLOGY, seeded, wan21_state_dict

SHOWO2 = "showlab/show-o2-1.5B"
BUNDLED = "someone/show-o2-tiny-bundled"  # tokenizer and VAE inside the Show-o2 repository itself
QWEN = "Qwen/Qwen2.5-1.5B-Instruct"
OTHER_TOKENIZER = "someone/byte-tokenizer"
OTHER_VAE = "someone/wan-vae"
DIFFUSERS_VAE = "someone/wan-vae-diffusers"
HQ = "showlab/show-o2-1.5B-HQ"


def _commit(repo_id: str) -> str:
    return hashlib.sha1(repo_id.encode()).hexdigest()


def put_repo(cache: Path, repo_id: str, source: Path) -> Path:
    """``source``'s files as ``repo_id`` in the cache layout huggingface_hub writes: content-addressed blobs,
    relative symlinks from ``snapshots/<commit>/`` and ``refs/main`` naming the commit."""
    root = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = root / "snapshots" / _commit(repo_id)
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(_commit(repo_id))
    return snapshot


def snapshot_of(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / _commit(repo_id)


def tiny_config() -> Showo2Config:
    """The tiny preset with a Qwen-style tokenizer named by llm_model_path and a Wan2.1-topology VAE."""
    cfg = preset("tiny").to_dict()
    cfg.update(tokenizer="qwen2.5", llm_model_path=QWEN, name="show-o2-tiny")
    cfg["vae"] = {**WAN_TOPOLOGY.__dict__}
    return Showo2Config.from_dict(cfg)


def official_config(grid: int, hidden: int = 1536) -> dict:
    """An upstream config.json (no flashu block)."""
    return {"_class_name": "Showo2Qwen2_5", "_diffusers_version": "0.31.0", "add_qk_norm": True,
            "add_time_embeds": True, "clip_latent_dim": 1152,
            "clip_pretrained_model_path": "google/siglip-so400m-patch14-384", "hidden_size": hidden,
            "image_latent_dim": 16, "image_latent_height": grid, "image_latent_width": grid,
            "llm_model_path": QWEN if hidden == 1536 else "Qwen/Qwen2.5-7B-Instruct", "llm_vocab_size": 151669,
            "load_from_showo": True, "num_diffusion_layers": 10, "patch_size": 2, "video_latent_height": 27,
            "video_latent_width": 27}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """HF_HOME with a hub cache holding every repository the tests use, plus the reference weights."""
    base = tmp_path_factory.mktemp("hub")
    cache = base / "hf_home" / "hub"
    staging = base / "staging"
    cfg = tiny_config()
    model = Showo2(cfg)
    model.init_random_weights(0)
    model.eval()
    official = cfg.to_official_dict()

    ckpt = staging / "showo2"
    write_official_sharded_bin(model, ckpt, shard_bytes=400_000)  # several shards: a progress bar per shard
    (ckpt / "config.json").write_text(json.dumps(official))
    (ckpt / "README.md").write_text("not downloaded")
    put_repo(cache, SHOWO2, ckpt)

    qwen = staging / "qwen"
    qwen_size = write_fake_qwen(qwen)
    (qwen / "config.json").write_text("{}")  # a model repo has more than the tokenizer
    put_repo(cache, QWEN, qwen)

    wan = staging / "wan"
    wan.mkdir()
    vae = seeded(WAN_TOPOLOGY, 3)
    torch.save(wan21_state_dict(vae, WAN_TOPOLOGY.num_res_blocks), wan / "Wan2.1_VAE.pth")
    put_repo(cache, hub.WAN_VAE_REPO, wan)

    byte_tok = staging / "byte-tok"
    build_local_tokenizer().save_pretrained(str(byte_tok))
    put_repo(cache, OTHER_TOKENIZER, byte_tok)

    other_vae = staging / "other-vae"
    other_vae.mkdir()
    vae2 = seeded(WAN_TOPOLOGY, 7)
    torch.save(wan21_state_dict(vae2, WAN_TOPOLOGY.num_res_blocks), other_vae / "Wan2.1_VAE.pth")
    put_repo(cache, OTHER_VAE, other_vae)

    diffusers_vae = staging / "diffusers-vae"
    vae2.save_pretrained(str(diffusers_vae / "vae"))
    put_repo(cache, DIFFUSERS_VAE, diffusers_vae)

    bundled = staging / "bundled"
    write_official_bin(model, bundled)
    (bundled / "config.json").write_text(json.dumps(official))
    build_local_tokenizer().save_pretrained(str(bundled))
    torch.save(wan21_state_dict(vae2, WAN_TOPOLOGY.num_res_blocks), bundled / "Wan2.1_VAE.pth")
    put_repo(cache, BUNDLED, bundled)

    hq = staging / "hq"
    hq.mkdir()
    (hq / "config.json").write_text(json.dumps(official_config(64)))
    (hq / "pytorch_model.bin").write_bytes(b"weights are not read by download")
    put_repo(cache, HQ, hq)
    sources = {SHOWO2: ckpt, QWEN: qwen, hub.WAN_VAE_REPO: wan}
    return {"cache": cache, "home": cache.parent, "model": model, "vae": vae, "vae2": vae2, "qwen_size": qwen_size,
            "sources": sources}


@pytest.fixture
def offline_hub(world, monkeypatch):
    """HF_HOME/HF_HUB_CACHE pointing at the built cache, HF_HUB_OFFLINE=1, and a record of snapshot_download calls
    (which then run the real function)."""
    monkeypatch.setenv("HF_HOME", str(world["home"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(world["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(world["cache"]))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    calls = []
    real = huggingface_hub.snapshot_download

    def spy(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    return calls


def _equal_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


# ---------------------------------------------------------------------------------------------------- loading
def test_hub_id_loads_all_three_parts_offline(world, offline_hub):
    bundle = flashu.load_model(SHOWO2, device="cpu", dtype="float32")
    assert _equal_state(bundle.model, world["model"])
    assert len(bundle.tokenizer) == world["qwen_size"] + 4  # stock Qwen-style tokenizer + Show-o2's four tokens
    assert bundle.special.eov == world["qwen_size"] + 3
    assert _equal_state(bundle.codec.vae, world["vae"])
    cache = world["cache"]
    assert [(repo, kw["allow_patterns"], kw["local_files_only"]) for repo, kw in offline_hub] == [
        (SHOWO2, CHECKPOINT_PATTERNS, True),
        (QWEN, hub.TOKENIZER_FILES, True),  # only the tokenizer files of llm_model_path
        (hub.WAN_VAE_REPO, ["Wan2.1_VAE.pth"], True),  # only the VAE file
    ]
    parts = hub.resolve_model(SHOWO2)
    assert parts.checkpoint == snapshot_of(cache, SHOWO2)
    assert parts.tokenizer == snapshot_of(cache, QWEN) and parts.vae == snapshot_of(cache, hub.WAN_VAE_REPO)


def test_cli_generate_and_ask_with_hub_id_offline(world, offline_hub, tmp_path, capsys, sample_image):
    out = tmp_path / "img.png"
    argv = ["generate", "--model", SHOWO2, "--prompt", "a red circle", "--steps", "3", "--out", str(out),
            "--device", "cpu"]
    assert run(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert out.is_file() and "evaluations: 2" in captured.out
    assert "reading weights" in captured.err and "pytorch_model-0000" in captured.err  # a bar over the shards
    out.unlink()
    assert run([*argv, "--no-progress"]) == 0
    assert out.is_file() and "reading weights" not in capsys.readouterr().err
    assert run(["ask", "--model", SHOWO2, "--image", str(sample_image), "--question", "what?",
                "--max-new-tokens", "2", "--device", "cpu", "--no-progress"]) == 0
    assert "prefill" in capsys.readouterr().err


def test_download_reports_where_each_part_is(world, offline_hub, capsys):
    cache = world["cache"]
    assert run(["download", SHOWO2]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"{SHOWO2}: ready; 32 px by default (2x2 image tokens, 48 text tokens)\n")
    for repo in (SHOWO2, QWEN, hub.WAN_VAE_REPO):
        assert str(snapshot_of(cache, repo)) in text and f"{repo} (hub)" in text
    assert f"  vae       {hub.WAN_VAE_REPO} (hub): Wan2.1_VAE.pth (" in text
    assert "tokenizer.json, tokenizer_config.json (" in text and "config.json, diffusion_pytorch_model" in text
    assert run(["download", SHOWO2, "--json", "--no-progress"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["weights"]["path"] == str(snapshot_of(cache, SHOWO2))
    assert "config.json" in data["weights"]["files"] and "README.md" not in data["weights"]["files"]
    assert data["tokenizer"]["files"] == sorted(["tokenizer.json", "tokenizer_config.json"])
    assert data["vae"] == {"path": str(snapshot_of(cache, hub.WAN_VAE_REPO)), "source": f"{hub.WAN_VAE_REPO} (hub)",
                           "files": ["Wan2.1_VAE.pth"], "bytes": data["vae"]["bytes"]}
    assert data["vae"]["bytes"] > 0 and data["weights"]["bytes"] > 0
    assert flashu.download(SHOWO2).to_dict() == data


def test_download_console_script_reads_hf_home(world):
    """The real environment variables, read by huggingface_hub at import in a fresh process."""
    env = {"HF_HOME": str(world["home"]), "HF_HUB_OFFLINE": "1", "PATH": os.environ.get("PATH", "")}
    script = ("import sys; from flashu.cli import run; code = run(['download', sys.argv[1], '--json']); "
              "print('torch imported' if 'torch' in sys.modules else ''); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", script, SHOWO2], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report, marker = proc.stdout.rsplit("}", 1)
    assert json.loads(report + "}")["tokenizer"]["path"] == str(snapshot_of(world["cache"], QWEN))
    assert marker.strip() == ""  # download needs no torch: it starts at once


def test_tokenizer_and_vae_overrides_take_hub_ids(world, offline_hub, tmp_path):
    bundle = flashu.load_model(SHOWO2, device="cpu", tokenizer=OTHER_TOKENIZER, vae=OTHER_VAE, progress=False)
    assert len(bundle.tokenizer) == len(build_local_tokenizer())
    assert _equal_state(bundle.codec.vae, world["vae2"])
    repos = [repo for repo, _ in offline_hub]
    assert QWEN not in repos and hub.WAN_VAE_REPO not in repos
    assert offline_hub[-1][1]["allow_patterns"] == hub.VAE_PATTERNS
    diffusers = flashu.load_model(SHOWO2, device="cpu", vae=DIFFUSERS_VAE, progress=False)
    assert _equal_state(diffusers.codec.vae, world["vae2"])
    assert flashu.load_model(SHOWO2, device="cpu", vae="none", progress=False).codec is None
    # directories, and the VAE file itself, still work
    tok_dir = snapshot_of(world["cache"], OTHER_TOKENIZER)
    vae_file = snapshot_of(world["cache"], OTHER_VAE) / "Wan2.1_VAE.pth"
    parts = hub.resolve_model(SHOWO2, tokenizer=tok_dir, vae=vae_file)
    assert parts.tokenizer == tok_dir and parts.vae == vae_file.parent
    assert parts.sources["tokenizer"] == parts.sources["vae"] == "given directory"


def test_cli_overrides(world, offline_hub, capsys):
    assert run(["download", SHOWO2, "--tokenizer", OTHER_TOKENIZER, "--vae", DIFFUSERS_VAE, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["tokenizer"]["source"] == f"{OTHER_TOKENIZER} (hub)"
    assert data["vae"]["source"] == f"{DIFFUSERS_VAE} (hub)"
    assert "vae/config.json" in data["vae"]["files"]
    for flag, value, needle in [("--tokenizer", "no/such-tokenizer", "cannot get no/such-tokenizer (the tokenizer "
                                 "given): HF_HUB_OFFLINE=1"),
                                ("--tokenizer", "not an id", "tokenizer not an id: no such directory"),
                                ("--vae", "no/such-vae", "cannot get no/such-vae (the VAE given)"),
                                ("--vae", OTHER_TOKENIZER, f"{OTHER_TOKENIZER} (the VAE given) holds no")]:
        assert run(["generate", "--model", SHOWO2, "--prompt", "x", flag, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and needle in err, err


def test_parts_in_the_checkpoint_directory_win(world, offline_hub, tmp_path):
    bundled = hub.resolve_model(BUNDLED)
    assert bundled.tokenizer == bundled.vae == bundled.checkpoint == snapshot_of(world["cache"], BUNDLED)
    assert bundled.sources == {"weights": f"{BUNDLED} (hub)", "tokenizer": "checkpoint directory",
                               "vae": "checkpoint directory"}
    assert [repo for repo, _ in offline_hub] == [BUNDLED]
    bundle = flashu.load_model(BUNDLED, device="cpu", progress=False)
    assert _equal_state(bundle.codec.vae, world["vae2"]) and len(bundle.tokenizer) == len(build_local_tokenizer())
    # a local directory without tokenizer or VAE: both come from the hub, as for a hub id
    local = tmp_path / "local"
    write_official_bin(world["model"], local)
    (local / "config.json").write_text(json.dumps(world["model"].config.to_official_dict()))
    offline_hub.clear()
    parts = hub.resolve_model(str(local))
    assert parts.checkpoint == local and parts.sources["weights"] == "local directory"
    assert [repo for repo, _ in offline_hub] == [QWEN, hub.WAN_VAE_REPO]
    assert _equal_state(flashu.load_model(str(local), device="cpu", progress=False).model, world["model"])


# ---------------------------------------------------------------------------------------------------- variants
@pytest.mark.parametrize("grid, size, text, seq_at", [(27, 432, 290, {432: 1024}),
                                                      (32, 512, 251, {512: 1280, 1024: 4352}),
                                                      (64, 1024, 251, {512: 1280, 1024: 4352})])
def test_official_variants_grid_size_and_sequence(grid, size, text, seq_at):
    """config.json's image_latent_height is the token grid (upstream from_pretrained reads config.json only); the
    HQ demo configs (512x512, 1024x1024) keep max_seq_length − tokens − 4 = 251 text tokens at both sizes."""
    cfg = Showo2Config.from_official_dict(official_config(grid))
    assert (cfg.grid, cfg.image_size, cfg.max_text_len) == (grid, size, text)
    assert cfg.mmu_image_size == 432  # upstream's inference_mmu.py understands at 432² whatever the generation grid
    for pixels, seq in seq_at.items():  # the official demo's max_seq_length at that resolution
        assert cfg.max_text_len + cfg.grid_for(pixels) ** 2 + 1 + 4 == seq
    big = Showo2Config.from_official_dict(official_config(grid, hidden=3584))
    assert big.llm.hidden_size == 3584 and big.llm_model_path == "Qwen/Qwen2.5-7B-Instruct"


def test_hq_download_reports_its_default_size(world, offline_hub, capsys):
    assert run(["download", HQ]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{HQ}: ready; 1024 px by default (64x64 image tokens, 251 text tokens)\n")
    assert str(snapshot_of(world["cache"], QWEN)) in out


def test_info_reads_only_the_config(world, offline_hub, capsys):
    assert run(["info", "--model", HQ, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["parameters"]["total"] == pytest.approx(2.83e9, rel=0.01)
    assert [(repo, kw["allow_patterns"]) for repo, kw in offline_hub] == [(HQ, ["config.json"])]


# ---------------------------------------------------------------------------------------------------- failures
def _response(code: int, error_code: str | None = None) -> httpx2.Response:
    headers = {"X-Error-Code": error_code} if error_code else {}
    return httpx2.Response(code, headers=headers,
                           request=httpx2.Request("GET", f"https://huggingface.co/api/models/{SHOWO2}"))


LOGIN = "'huggingface-cli login'"
FAILURES = {
    "dns": (lambda: httpx2.ConnectError("[Errno -2] Name or service not known"),
            "cannot resolve huggingface.co (DNS lookup failed: no network?) and no copy is cached; connect to the "
            "internet or set HF_ENDPOINT to a reachable mirror"),
    "refused": (lambda: httpx2.ConnectError("[Errno 111] Connection refused"),
                "cannot connect to huggingface.co ([Errno 111] Connection refused)"),
    "timeout": (lambda: httpx2.ConnectTimeout("timed out"),
                "huggingface.co did not answer within 10 s and no copy is cached"),
    "proxy": (lambda: httpx2.ProxyError("407 Proxy Authentication Required"), "the proxy refused the connection"),
    "404": (lambda: errors.RepositoryNotFoundError("404 Client Error", response=_response(404, "RepoNotFound")),
            f"no repository {SHOWO2} on huggingface.co (HTTP 404), or it is private"),
    "401": (lambda: errors.RepositoryNotFoundError("401 Client Error", response=_response(401, "RepoNotFound")),
            f"no repository {SHOWO2} on huggingface.co (HTTP 401), or it is private; check the id; for a private "
            f"repository, run {LOGIN} (or 'hf auth login') or set HF_TOKEN"),
    "403": (lambda: errors.HfHubHTTPError("403 Forbidden", response=_response(403)),
            f"access to {SHOWO2} was refused (HTTP 403); use a token that can read it: run {LOGIN} (or 'hf auth "
            "login') or set HF_TOKEN"),
    "gated": (lambda: errors.GatedRepoError("403 gated", response=_response(403, "GatedRepo")),
              f"{SHOWO2} is a gated repository and this account has no access; accept its terms at "
              f"https://huggingface.co/{SHOWO2}, then run {LOGIN}"),
    "500": (lambda: errors.HfHubHTTPError("500 Server Error", response=_response(500)), "answered HTTP 500"),
    "file404": (lambda: errors.RemoteEntryNotFoundError("404 entry", response=_response(404, "EntryNotFound")),
                f"{SHOWO2} lacks a file flashu needs (HTTP 404)"),
    "dropped": (lambda: _chained(errors.LocalEntryNotFoundError("An error happened while trying to locate the "
                                                                "file on the Hub"),
                                 httpx2.ReadError("[Errno 104] Connection reset by peer")),
                "cannot connect to huggingface.co ([Errno 104] Connection reset by peer)"),
    "disk": (lambda: OSError(28, "No space left on device"), "cannot write to the Hugging Face cache"),
}


def _chained(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.fixture
def online_empty(monkeypatch, tmp_path):
    """Online mode (nothing is actually sent: the tests replace the network calls) with an empty cache."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        "https://huggingface.co/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 10)


def _fail_with(monkeypatch, exc_factory, where: str):
    def fail(*args, **kwargs):
        raise exc_factory()

    if where == "metadata":
        monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", fail)
    else:
        monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo_id, **kw: None)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", fail)


@pytest.mark.parametrize("where", ["metadata", "download"])
@pytest.mark.parametrize("case", sorted(FAILURES))
def test_failed_download_says_why(online_empty, monkeypatch, case, where):
    factory, needle = FAILURES[case]
    _fail_with(monkeypatch, factory, where)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        flashu.load_model(SHOWO2, device="cpu")
    assert time.perf_counter() - start < 2
    message = str(info.value)
    assert message.startswith(f"cannot get {SHOWO2} (the Show-o2 checkpoint): ") and "\n" not in message
    assert needle in message, message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_failed_download_is_one_cli_line(online_empty, monkeypatch, capsys):
    _fail_with(monkeypatch, FAILURES["dns"][0], "metadata")
    assert run(["generate", "--model", SHOWO2, "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot get {SHOWO2}") and err.count("\n") == 1 and "DNS" in err
    assert run(["download", SHOWO2]) == 2
    assert "DNS" in capsys.readouterr().err


def test_failure_names_the_part(world, online_empty, monkeypatch):
    """The Show-o2 repo is cached; its tokenizer repo (llm_model_path) is gated."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(world["cache"]))
    real = huggingface_hub.snapshot_download

    def download(repo_id, **kwargs):
        if repo_id == QWEN:
            raise errors.GatedRepoError("403 gated", response=_response(403, "GatedRepo"))
        return real(repo_id, **{**kwargs, "local_files_only": True})

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda self, repo_id, **kw: None)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    with pytest.raises(CheckpointError, match=rf"^cannot get {QWEN} \(the tokenizer named by llm_model_path\): "
                                              rf"{QWEN} is a gated repository"):
        flashu.load_model(SHOWO2, device="cpu")


def test_offline_with_nothing_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        flashu.load_model(SHOWO2)
    assert time.perf_counter() - start < 2
    assert str(info.value) == (f"cannot get {SHOWO2} (the Show-o2 checkpoint): HF_HUB_OFFLINE=1 and {SHOWO2} is "
                               f"not in the Hugging Face cache ({tmp_path}); run 'flashu download {SHOWO2}' once "
                               "with network access (HF_HUB_OFFLINE unset)")


def test_offline_with_partial_cache(world, offline_hub, tmp_path, monkeypatch):
    """Only config.json cached (e.g. after 'flashu info'): the weights are missing, and the message says so."""
    cache = tmp_path / "partial"
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "config.json").write_text(json.dumps(world["model"].config.to_official_dict()))
    put_repo(cache, SHOWO2, only_config)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    with pytest.raises(CheckpointError, match=rf"^{SHOWO2} has config.json but no weights .*flashu download"):
        flashu.load_model(SHOWO2)


def test_unreachable_hub_uses_a_complete_cached_copy(world, online_empty, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(world["cache"]))
    _fail_with(monkeypatch, FAILURES["dns"][0], "metadata")
    with pytest.warns(UserWarning, match=r"DNS lookup failed: no network\?\); using the cached copy of"):
        parts = hub.resolve_model(SHOWO2)
    assert parts.tokenizer == snapshot_of(world["cache"], QWEN)


class _Hub(http.server.BaseHTTPRequestHandler):
    """A local stand-in for the Hub API answering every request with the status its path asks for."""

    def do_GET(self):  # noqa: N802
        code, error_code = {"missing": (404, "RepoNotFound"), "gated": (403, "GatedRepo"),
                            "private": (401, "RepoNotFound"), "down": (503, None)}[self.path.split("/")[4]]
        self.send_response(code)
        if error_code:
            self.send_header("X-Error-Code", error_code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("repo, needle", [("missing", "no repository flashu/missing on 127.0.0.1 (HTTP 404)"),
                                          ("private", "(HTTP 401), or it is private"),
                                          ("gated", "flashu/gated is a gated repository"),
                                          ("down", "127.0.0.1 answered HTTP 503")])
def test_real_http_answers_through_huggingface_hub(online_empty, monkeypatch, repo, needle):
    """No monkeypatched exceptions: huggingface_hub talks HTTP to a local server and raises its own errors."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(CheckpointError) as info:
            hub.fetch(f"flashu/{repo}", ["config.json"], "the Show-o2 checkpoint")
        assert needle in str(info.value), str(info.value)
    finally:
        server.shutdown()
        server.server_close()


class _FakeHub(http.server.BaseHTTPRequestHandler):
    """Just enough of the Hub's HTTP API for huggingface_hub's snapshot_download (repo info, tree, resolve), serving
    the repositories in ``repos`` (repo id -> folder); every request path is recorded in ``requests``."""

    repos: dict[str, Path] = {}
    requests: list[str] = []

    def _files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}

    def _answer(self, body: bytes = b"", content_type: str = "application/json", headers: dict | None = None,
                send_body: bool = True) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _route(self, send_body: bool) -> None:
        path = self.path.split("?")[0]
        self.requests.append(path)
        parts = path.strip("/").split("/")
        if parts[0] == "api":  # /api/models/owner/name[/revision/main | /tree/<sha>]
            repo = "/".join(parts[2:4])
            if repo not in self.repos:
                self.send_response(404)
                self.send_header("X-Error-Code", "RepoNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            files = self._files(repo)
            if len(parts) > 4 and parts[4] == "tree":
                body = [{"type": "file", "path": name, "size": f.stat().st_size,
                         "oid": hashlib.sha1(f.read_bytes()).hexdigest()} for name, f in files.items()]
            else:
                body = {"id": repo, "sha": _commit(repo), "siblings": [{"rfilename": n} for n in files]}
            return self._answer(json.dumps(body).encode(), send_body=send_body)
        repo, rest = "/".join(parts[:2]), parts[4:]  # /owner/name/resolve/<rev>/<file>
        data = self._files(repo)["/".join(rest)].read_bytes()
        self._answer(data, "application/octet-stream", send_body=send_body,
                     headers={"X-Repo-Commit": _commit(repo), "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})

    def do_GET(self):  # noqa: N802
        self._route(send_body=True)

    def do_HEAD(self):  # noqa: N802
        self._route(send_body=False)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("progress", ["--progress", "--no-progress"])
def test_download_online_fetches_only_what_is_needed(world, online_empty, monkeypatch, tmp_path, capsys, progress):
    """``flashu download`` over HTTP (a local stand-in for the Hub) fills an empty cache with the three parts,
    only the files the loader reads; then everything loads offline from that cache."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "fresh-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    handler = type("Hub", (_FakeHub,), {"repos": world["sources"], "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_port}"
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                            endpoint + "/{repo_id}/resolve/{revision}/{filename}")
        assert run(["download", SHOWO2, progress]) == 0, capsys.readouterr().err
    finally:
        server.shutdown()
        server.server_close()
    out = capsys.readouterr().out
    assert out.startswith(f"{SHOWO2}: ready") and str(cache) in out
    fetched = {repo: sorted(p.name for p in snapshot_of(cache, repo).iterdir()) for repo in world["sources"]}
    shards = sorted(p.name for p in world["sources"][SHOWO2].iterdir() if p.name != "README.md")
    assert fetched == {SHOWO2: shards, QWEN: ["tokenizer.json", "tokenizer_config.json"],
                       hub.WAN_VAE_REPO: ["Wan2.1_VAE.pth"]}
    assert not any(p.endswith(("README.md", f"{QWEN}/resolve/{_commit(QWEN)}/config.json"))
                   for p in handler.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    bundle = flashu.load_model(SHOWO2, device="cpu", progress=False)
    assert _equal_state(bundle.model, world["model"]) and _equal_state(bundle.codec.vae, world["vae"])


def test_real_connection_refused_is_fast(online_empty, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"cannot connect to 127\.0\.0\.1 \(.*refused"):
        hub.fetch(SHOWO2, ["config.json"], "the Show-o2 checkpoint")
    assert time.perf_counter() - start < 2


def test_constants_match_the_loaders():
    from flashu.io import vae

    assert hub.WAN_VAE_FILE == vae.WAN_PTH and hub.VAE_SAFETENSORS == vae.VAE_SAFETENSORS
    assert hub.is_hub_id(SHOWO2) and not hub.is_hub_id("a/../b") and not hub.is_hub_id("tiny")
    with pytest.raises(flashu.FlashuError, match="nothing to download"):
        flashu.download("tiny")
