"""Hugging Face Hub: a Show-o2 hub id (or a local directory) resolved into its three parts.

A Show-o2 checkpoint needs three things, which upstream keeps in three repositories:

1. the Show-o2 weights and ``config.json`` (``showlab/show-o2-1.5B``, ``-1.5B-HQ``, ``-7B``);
2. the Qwen2.5 tokenizer, from the repository ``config.json`` names in ``llm_model_path``
   (``Qwen/Qwen2.5-1.5B-Instruct`` / ``Qwen/Qwen2.5-7B-Instruct``; only the tokenizer files are fetched);
3. the Wan2.1 VAE, ``Wan2.1_VAE.pth`` from ``Wan-AI/Wan2.1-T2V-14B`` (only that file).

:func:`resolve_model` finds each part: a tokenizer or VAE in the checkpoint directory itself wins, then an explicit
override (a directory or a hub id), then the hub. Everything is downloaded with ``huggingface_hub``
(``snapshot_download`` with ``allow_patterns``) into the standard Hugging Face cache, so ``HF_HOME`` /
``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``, ``HF_TOKEN`` / ``huggingface-cli login`` and ``HF_ENDPOINT`` mirrors all
apply, and nothing is written outside that cache (``huggingface_hub`` downloads to ``.incomplete`` names and
renames). The three locations are handed to the loader as they are: no copies.

Failures are one :class:`~flashu.errors.CheckpointError` line naming the repository and the cause (DNS, no
connection, timeout, proxy, 404, gated, 401/403, offline with nothing cached, incomplete cache). Before downloading,
one metadata request with a short timeout (``HF_HUB_ETAG_TIMEOUT``, 10 s by default) checks that the Hub answers, so
an unreachable Hub fails within seconds instead of hanging; when it does not answer, a complete cached copy is used
(with a warning), as ``huggingface_hub`` itself does.

Light module: no torch import, so ``flashu download`` starts at once.
"""

from __future__ import annotations

import os
import re
import socket
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, FlashuError

WAN_VAE_REPO = "Wan-AI/Wan2.1-T2V-14B"
WAN_VAE_FILE = "Wan2.1_VAE.pth"  # == flashu.io.vae.WAN_PTH (kept here so this module does not import diffusers)
VAE_SAFETENSORS = "vae.safetensors"  # == flashu.io.vae.VAE_SAFETENSORS
VAE_PATTERNS = [WAN_VAE_FILE, "vae/*", VAE_SAFETENSORS]  # the layouts flashu.io.vae.load_vae reads
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"]
TOKENIZER_REQUIRED = ("tokenizer.json", "tokenizer_config.json")
# Everything read_state_dict, the config and the tokenizer/VAE loaders may read from a Show-o2 repository.
CHECKPOINT_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model", WAN_VAE_FILE]
WEIGHT_SUFFIXES = (".bin", ".safetensors")

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", re.ASCII)
_DNS_MARKERS = ("name or service not known", "temporary failure in name resolution", "nodename nor servname",
                "getaddrinfo failed", "no address associated with hostname", "name does not resolve",
                "name resolution")
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_hub_id(name: str) -> bool:
    """``owner/name`` as the Hub spells repository ids (no path tricks)."""
    return _HUB_ID.fullmatch(str(name)) is not None and ".." not in str(name) and "--" not in str(name)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (huggingface_hub reads it once at import; the variable is read again so later changes
    count too)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE


def hub_cache() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _timeout() -> float:
    from huggingface_hub import constants

    return float(getattr(constants, "HF_HUB_ETAG_TIMEOUT", 10) or 10)


# ---------------------------------------------------------------------------------------------------- fetching
def fetch(repo_id: str, patterns: Sequence[str], what: str, *, progress: bool = True,
          for_model: str | None = None) -> Path:
    """The local snapshot directory of ``repo_id`` holding the files that match ``patterns``, downloaded into the
    Hugging Face cache if needed (offline: from the cache only). ``what`` names the part in error messages;
    ``for_model`` is the model id the user asked for (named in the remedy of an offline failure)."""
    import huggingface_hub

    offline = hub_offline()
    if not offline:
        try:  # a short metadata request first: an unreachable Hub fails in seconds, not after minutes
            huggingface_hub.HfApi().repo_info(repo_id, timeout=_timeout())
        except Exception as exc:
            if not _is_hub_failure(exc):
                raise
            cached = _cached_snapshot(repo_id, patterns)
            if cached is None:
                raise hub_error(exc, repo_id, what, for_model=for_model) from None
            warnings.warn(f"{_cause(exc, repo_id)[0]}; using the cached copy of {repo_id}", stacklevel=2)
            return cached
    try:
        local = huggingface_hub.snapshot_download(
            repo_id, allow_patterns=list(patterns), etag_timeout=_timeout(), local_files_only=offline,
            tqdm_class=None if progress else _silent_bar())
    except Exception as exc:
        if not _is_hub_failure(exc):
            raise
        raise hub_error(exc, repo_id, what, offline=offline, for_model=for_model) from None
    return Path(local)


def _cached_snapshot(repo_id: str, patterns: Sequence[str]) -> Path | None:
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=list(patterns), local_files_only=True))
    except Exception as exc:
        if _is_hub_failure(exc):
            return None
        raise


def _silent_bar():
    """A tqdm class that never shows (``--no-progress`` for huggingface_hub's download bars)."""
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


# ---------------------------------------------------------------------------------------------------- errors
def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        item = todo.pop(0)
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [item.__cause__, item.__context__]
    return seen


def _transport_types() -> tuple[type[BaseException], ...]:
    """Transport-level exception classes of the HTTP libraries huggingface_hub may use (httpx2, httpx, requests)."""
    types: list[type[BaseException]] = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "RequestException"), ("urllib3.exceptions", "HTTPError")):
        try:
            mod = __import__(module, fromlist=[name])
            types.append(getattr(mod, name))
        except (ImportError, AttributeError):
            pass
    return tuple(types)


def _is_hub_failure(exc: BaseException) -> bool:
    """An error of the download itself (network, HTTP, cache, invalid id), not a bug to show with a traceback."""
    from huggingface_hub import errors

    hub_types = tuple(t for t in (getattr(errors, "HfHubHTTPError", None), getattr(errors, "HTTPError", None),
                                  getattr(errors, "RevisionResolutionError", None),
                                  getattr(errors, "EntryNotFoundError", None)) if t is not None)
    return isinstance(exc, (OSError, ValueError, TimeoutError) + hub_types + _transport_types())


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def _named(exc: BaseException, *names: str) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def _endpoint_host() -> str:
    from urllib.parse import urlparse

    from huggingface_hub import constants

    return urlparse(str(constants.ENDPOINT)).hostname or str(constants.ENDPOINT)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _cause(exc: BaseException, repo_id: str, offline: bool = False) -> tuple[str, str, str]:
    """(what went wrong, what to do, kind) for a failed download of ``repo_id``: one line each; kind is "network",
    "offline", "access", "missing" or "other"."""
    chain = _chain(exc)
    login = "run 'huggingface-cli login' (or 'hf auth login') or set HF_TOKEN"
    host = _endpoint_host()

    def find(*names: str) -> BaseException | None:
        return next((e for e in chain if _named(e, *names)), None)

    if find("GatedRepoError"):
        return (f"{repo_id} is a gated repository and this account has no access",
                f"accept its terms at https://huggingface.co/{repo_id}, then {login}", "access")
    if find("RevisionNotFoundError"):
        return f"{repo_id} has no such revision (branch, tag or commit)", "check the revision", "missing"
    if find("RepositoryNotFoundError"):
        code = _status(find("RepositoryNotFoundError"))
        return (f"no repository {repo_id} on {host}" + (f" (HTTP {code})" if code else "") + ", or it is private",
                f"check the id; for a private repository, {login}", "missing")
    if find("RemoteEntryNotFoundError"):
        return (f"{repo_id} lacks a file flashu needs (HTTP 404)",
                "check that it is a repository in the official layout", "missing")
    if find("DisabledRepoError"):
        return f"{repo_id} has been disabled on the Hub", "use another copy of the checkpoint", "missing"
    if find("IncompleteSnapshotError"):
        return (f"the cached copy of {repo_id} is incomplete (an interrupted download?)",
                "download it again with network access", "offline")
    http = next((e for e in chain if _status(e) is not None), None)
    if http is not None:
        code = _status(http)
        if code in (401, 403):
            return f"access to {repo_id} was refused (HTTP {code})", f"use a token that can read it: {login}", "access"
        if code == 404:
            return f"{repo_id} or one of its files was not found on {host} (HTTP 404)", "check the id", "missing"
        if code == 429:
            return (f"{host} is rate-limiting requests (HTTP 429)", f"wait a moment; logged-in users get more: {login}",
                    "network")
        if code >= 500:
            return f"{host} answered HTTP {code} (the Hub is down?)", "try again later", "network"
        return f"{host} answered HTTP {code}: {_first_line(http)}", "check the id and your access", "other"
    if offline or find("OfflineModeIsEnabled"):
        return (f"HF_HUB_OFFLINE=1 and {repo_id} is not in the Hugging Face cache ({hub_cache()})",
                "download it once with network access (HF_HUB_OFFLINE unset)", "offline")
    if find("ProxyError"):
        return (f"the proxy refused the connection to {host} ({_first_line(find('ProxyError'))})",
                "check HTTPS_PROXY / HTTP_PROXY", "network")
    dns = next((e for e in chain if isinstance(e, socket.gaierror)
                or any(m in str(e).lower() for m in _DNS_MARKERS)), None)
    if dns is not None:
        return (f"cannot resolve {host} (DNS lookup failed: no network?)",
                "connect to the internet or set HF_ENDPOINT to a reachable mirror", "network")
    timeout = find("TimeoutException", "Timeout", "ConnectTimeout", "ReadTimeout", "TimeoutError")
    if timeout is not None or any(isinstance(e, (TimeoutError, socket.timeout)) for e in chain):
        return (f"{host} did not answer within {_timeout():g} s",
                "check the network or proxy (HF_HUB_ETAG_TIMEOUT raises the limit)", "network")
    connect = find("ConnectError", "NetworkError", "ConnectionError", "TransportError", "RequestError",
                   "NewConnectionError", "MaxRetryError")
    if connect is not None:
        return (f"cannot connect to {host} ({_first_line(connect)})",
                "check the network and proxy (HTTPS_PROXY), or set HF_ENDPOINT to a reachable mirror", "network")
    if find("LocalEntryNotFoundError", "RevisionResolutionError"):
        return (f"the Hub could not be reached and {repo_id} is not in the Hugging Face cache ({hub_cache()})",
                "check the network, or download it where the Hub is reachable", "offline")
    if find("HFValidationError"):
        return (f"{repo_id!r} is not a valid hub id ({_first_line(find('HFValidationError'))})", "use owner/name",
                "missing")
    disk = next((e for e in chain if isinstance(e, OSError) and getattr(e, "errno", None) is not None), None)
    if disk is not None:
        return (f"cannot write to the Hugging Face cache ({hub_cache()}): {_first_line(disk)}",
                "free some space or set HF_HOME to another disk", "other")
    return _first_line(exc), "check the id and the network", "other"


def hub_error(exc: BaseException, repo_id: str, what: str, *, offline: bool = False,
              for_model: str | None = None) -> CheckpointError:
    """One line: which repository, which part, why, and what to do."""
    cause, remedy, kind = _cause(exc, repo_id, offline=offline)
    if kind == "network":  # huggingface_hub (and fetch) fall back to the cache first: there was none
        cause += " and no copy is cached"
    if kind == "offline" and for_model:
        remedy = f"run 'flashu download {for_model}' once with network access (HF_HUB_OFFLINE unset)"
    return CheckpointError(f"cannot get {repo_id} ({what}): {cause}; {remedy}")


# ---------------------------------------------------------------------------------------------------- resolving
@dataclass
class ResolvedModel:
    """Where the three parts of a Show-o2 checkpoint are on this machine.

    ``tokenizer`` is None when the model needs no tokenizer files (the offline byte tokenizer), ``vae`` when no VAE
    is loaded (``vae="none"``). ``sources`` says where each part came from.
    """

    name: str
    checkpoint: Path
    config: Any  # flashu.config.Showo2Config
    tokenizer: Path | None
    vae: Path | None
    sources: dict[str, str] = field(default_factory=dict)

    def files(self) -> dict[str, list[Path]]:
        """The files of each part that the loader reads."""
        weights = sorted(p for p in self.checkpoint.iterdir() if p.is_file()
                         and (p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".index.json"))
                         and p.name != VAE_SAFETENSORS)
        tok = [] if self.tokenizer is None else sorted(self.tokenizer / n for n in TOKENIZER_FILES
                                                        if (self.tokenizer / n).is_file())
        vae: list[Path] = []
        if self.vae is not None:
            vae = [self.vae / n for n in (WAN_VAE_FILE, VAE_SAFETENSORS) if (self.vae / n).is_file()]
            if (self.vae / "vae").is_dir():
                vae += sorted(p for p in (self.vae / "vae").iterdir() if p.is_file())
        return {"weights": [self.checkpoint / "config.json", *weights], "tokenizer": tok, "vae": vae}

    def to_dict(self) -> dict[str, Any]:
        files = self.files()
        config = self.config
        return {
            "model": self.name,
            "weights": {"path": str(self.checkpoint), "source": self.sources.get("weights", ""),
                        "files": [p.name for p in files["weights"]], "bytes": _size(files["weights"])},
            "tokenizer": {"path": None if self.tokenizer is None else str(self.tokenizer),
                          "source": self.sources.get("tokenizer", ""),
                          "files": [p.name for p in files["tokenizer"]], "bytes": _size(files["tokenizer"])},
            "vae": {"path": None if self.vae is None else str(self.vae), "source": self.sources.get("vae", ""),
                    "files": [str(p.relative_to(self.vae)) for p in files["vae"]] if self.vae else [],
                    "bytes": _size(files["vae"])},
            "image_size": config.image_size, "grid": config.grid, "max_text_len": config.max_text_len,
        }

    def describe(self) -> str:
        """What ``flashu download`` prints: per part, where it came from, its files and size, then its directory."""
        data = self.to_dict()
        cfg = self.config
        lines = [f"{self.name}: ready; {cfg.image_size} px by default ({cfg.grid}x{cfg.grid} image tokens, "
                 f"{cfg.max_text_len} text tokens)"]
        for part in ("weights", "tokenizer", "vae"):
            item = data[part]
            names = item["files"]
            files = ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:2])} and {len(names) - 2} more"
            summary = f"{files} ({_human(item['bytes'])})" if names else "no files"
            lines.append(f"  {part:<10}{item['source']}: {summary}")
            if item["path"]:
                lines.append(f"  {'':<10}{item['path']}")
        return "\n".join(lines)


def _size(paths: Iterable[Path]) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def checkpoint_dir(name_or_path: str, *, config_only: bool = False, progress: bool = True) -> Path:
    """A local directory as is, or the snapshot of hub id ``owner/name`` (its config, weights and any tokenizer or
    VAE files it holds; ``config_only``: just ``config.json``). Behind
    :func:`flashu.io.checkpoint.resolve_checkpoint_dir`."""
    path = Path(name_or_path).expanduser()
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as exc:  # e.g. a name longer than the file system allows
        from ..config import MODEL_PRESET_NAMES

        raise CheckpointError(f"no such model directory: {name_or_path!r:.80} ({exc.strerror or exc}; presets are "
                              f"{', '.join(MODEL_PRESET_NAMES)}; hub ids look like owner/name)") from None
    if is_dir:
        return path
    if exists:
        raise CheckpointError(f"{name_or_path} is a file; pass the model directory that holds it")
    if not is_hub_id(name_or_path):
        from ..config import MODEL_PRESET_NAMES

        raise CheckpointError(f"no such model directory: {name_or_path} (presets are {', '.join(MODEL_PRESET_NAMES)}; "
                              "hub ids look like owner/name)")
    patterns = ["config.json"] if config_only else CHECKPOINT_PATTERNS
    return fetch(name_or_path, patterns, "the Show-o2 checkpoint", progress=progress, for_model=name_or_path)


def resolve_model(name_or_path: str, *, tokenizer: str | Path | None = None, vae: str | Path | None = None,
                  progress: bool = True) -> ResolvedModel:
    """Locate (downloading what is missing) the checkpoint, the tokenizer and the VAE of ``name_or_path``.

    ``name_or_path``: a local checkpoint directory or a hub id. ``tokenizer``/``vae``: a directory or a hub id to
    use instead (``vae="none"``: no VAE). Without an override, a tokenizer or VAE in the checkpoint directory is
    used; otherwise the tokenizer comes from ``llm_model_path`` in ``config.json`` and the VAE from
    ``Wan-AI/Wan2.1-T2V-14B``.
    """
    from ..config import load_config_file

    name = str(name_or_path)
    checkpoint = checkpoint_dir(name, progress=progress)
    from_hub = not Path(name).expanduser().is_dir()
    config_file = checkpoint / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{checkpoint} has no config.json; it is not a Show-o2 checkpoint directory")
    config = load_config_file(config_file)
    if from_hub and not any(p.suffix in WEIGHT_SUFFIXES and p.name != VAE_SAFETENSORS
                            for p in checkpoint.iterdir()):
        raise CheckpointError(
            f"{name} has config.json but no weights in {checkpoint} (expected pytorch_model.bin, shards or "
            f"safetensors); if only part of it is cached, run 'flashu download {name}' with network access")
    sources = {"weights": f"{name} (hub)" if from_hub else "local directory"}
    tok_dir = _resolve_tokenizer(config, checkpoint, tokenizer, sources, name, progress)
    vae_dir = _resolve_vae(config, checkpoint, vae, sources, name, progress)
    return ResolvedModel(name=name, checkpoint=checkpoint, config=config, tokenizer=tok_dir, vae=vae_dir,
                         sources=sources)


def download(name_or_path: str, *, tokenizer: str | Path | None = None, vae: str | Path | None = None,
             progress: bool = True) -> ResolvedModel:
    """Fetch everything ``load_model(name_or_path)`` needs into the Hugging Face cache, ahead of time; returns where
    each part is (``.describe()`` / ``.to_dict()``). Later loads work offline (``HF_HUB_OFFLINE=1``)."""
    from ..config import MODEL_PRESET_NAMES

    if str(name_or_path).lower() in (*MODEL_PRESET_NAMES, "testbed"):
        raise FlashuError(f"{name_or_path} is a built-in model: there is nothing to download")
    return resolve_model(name_or_path, tokenizer=tokenizer, vae=vae, progress=progress)


def _has_tokenizer(directory: Path) -> bool:
    return all((directory / n).is_file() for n in TOKENIZER_REQUIRED)


def _has_vae(directory: Path) -> bool:
    return ((directory / WAN_VAE_FILE).is_file() or (directory / "vae" / "config.json").is_file()
            or (directory / VAE_SAFETENSORS).is_file())


def _resolve_tokenizer(config, checkpoint: Path, override, sources: dict, model: str, progress: bool) -> Path | None:
    if override is not None:
        path = Path(override).expanduser()
        if path.is_dir():
            sources["tokenizer"] = "given directory"
            return path
        if not is_hub_id(str(override)):
            raise CheckpointError(f"tokenizer {override}: no such directory, and not a hub id (owner/name)")
        return _fetch_tokenizer(str(override), "the tokenizer given", sources, model, progress)
    if config.tokenizer != "qwen2.5":
        sources["tokenizer"] = f"built in ({config.tokenizer})"
        return None
    if _has_tokenizer(checkpoint):
        sources["tokenizer"] = "checkpoint directory"
        return checkpoint
    source = str(config.llm_model_path or "")
    hint = "pass the Qwen2.5-Instruct tokenizer directory or hub id with --tokenizer (tokenizer=)"
    if source and Path(source).expanduser().is_dir():
        sources["tokenizer"] = f"llm_model_path {source}"
        return Path(source).expanduser()
    if not is_hub_id(source):
        raise CheckpointError(f"{checkpoint} has no tokenizer files (tokenizer.json, tokenizer_config.json) and "
                              f"config.json's llm_model_path {source!r} is neither a directory nor a hub id; {hint}")
    return _fetch_tokenizer(source, "the tokenizer named by llm_model_path", sources, model, progress)


def _fetch_tokenizer(repo_id: str, what: str, sources: dict, model: str, progress: bool) -> Path:
    directory = fetch(repo_id, TOKENIZER_FILES, what, progress=progress, for_model=model)
    missing = [n for n in TOKENIZER_REQUIRED if not (directory / n).is_file()]
    if missing:
        raise CheckpointError(f"{repo_id} ({what}) has no {' or '.join(missing)}; it is not a tokenizer repository "
                              "in the Hugging Face layout" + _offline_hint(model))
    sources["tokenizer"] = f"{repo_id} (hub)"
    return directory


def _resolve_vae(config, checkpoint: Path, override, sources: dict, model: str, progress: bool) -> Path | None:
    if override is not None:
        if str(override).lower() == "none":
            sources["vae"] = "none (latents only)"
            return None
        path = Path(override).expanduser()
        if path.is_file() and path.name in (WAN_VAE_FILE, VAE_SAFETENSORS):
            path = path.parent
        if path.is_dir():
            sources["vae"] = "given directory"
            return path
        if path.exists():
            raise CheckpointError(f"vae {override}: pass the directory holding {WAN_VAE_FILE}, a diffusers vae/ "
                                  f"folder or {VAE_SAFETENSORS}")
        if not is_hub_id(str(override)):
            raise CheckpointError(f"vae {override}: no such directory, and not a hub id (owner/name)")
        directory = fetch(str(override), VAE_PATTERNS, "the VAE given", progress=progress, for_model=model)
        if not _has_vae(directory):
            raise CheckpointError(f"{override} (the VAE given) holds no {WAN_VAE_FILE}, diffusers vae/ folder or "
                                  f"{VAE_SAFETENSORS}" + _offline_hint(model))
        sources["vae"] = f"{override} (hub)"
        return directory
    if config.vae.kind == "identity":
        sources["vae"] = "pixel space (no weights)"
        return checkpoint
    if _has_vae(checkpoint):
        sources["vae"] = "checkpoint directory"
        return checkpoint
    directory = fetch(WAN_VAE_REPO, [WAN_VAE_FILE], "the Wan2.1 VAE", progress=progress, for_model=model)
    if not (directory / WAN_VAE_FILE).is_file():
        raise CheckpointError(f"{WAN_VAE_REPO} (the Wan2.1 VAE) has no {WAN_VAE_FILE}" + _offline_hint(model))
    sources["vae"] = f"{WAN_VAE_REPO} (hub)"
    return directory


def _offline_hint(model: str) -> str:
    if hub_offline():
        return f" in the cache (HF_HUB_OFFLINE=1): run 'flashu download {model}' once with network access"
    return ""


__all__ = ["ResolvedModel", "WAN_VAE_FILE", "WAN_VAE_REPO", "download", "fetch", "hub_error",
           "hub_offline", "is_hub_id", "resolve_model"]
