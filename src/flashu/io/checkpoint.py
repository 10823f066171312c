"""Finding, reading, checking and writing Show-o2 weights.

Official checkpoints are pickled PyTorch state dicts (``pytorch_model.bin``, or ``pytorch_model-*-of-*.bin``
shards with diffusers' ``diffusion_pytorch_model.bin.index.json``) whose keys are the module names of
:class:`flashu.model.showo2.Showo2` (``showo.*``, ``und_trans.*``, ...). We also read and write safetensors.

Safety: ``.bin`` files are opened with ``torch.load(weights_only=True)``, so a checkpoint can hold tensors and
plain containers but can never run code while loading.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from .files import torch_save, write_json
from .hub import CHECKPOINT_PATTERNS, checkpoint_dir

LM_HEAD_KEY = "showo.lm_head.weight"
EMBED_KEY = "showo.model.embed_tokens.weight"

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
DIFFUSERS_BIN_INDEX_NAME = "diffusion_pytorch_model.bin.index.json"

# Everything read_state_dict (and the config/tokenizer/VAE loaders) may read; nothing else is downloaded.
HUB_ALLOW_PATTERNS = CHECKPOINT_PATTERNS
# Reading shows a progress bar (per file, in bytes) for several files or at least this many bytes.
PROGRESS_MIN_BYTES = 2**30

ACCEPTED_WEIGHTS = (
    "model.safetensors, diffusion_pytorch_model.safetensors, *.safetensors.index.json, pytorch_model.bin, "
    "diffusion_pytorch_model.bin, *.bin.index.json, or pytorch_model-*.bin shards"
)

_MAX_LISTED = 10


# ---------------------------------------------------------------------------------------------------- locating
def resolve_checkpoint_dir(name_or_path: str, *, config_only: bool = False, progress: bool = True) -> Path:
    """A local model directory, or the snapshot of hub id ``owner/name`` in the Hugging Face cache (downloaded when
    missing; with ``HF_HUB_OFFLINE=1`` only the cache is looked at). ``config_only``: fetch just ``config.json``.

    Only the Show-o2 repository itself: :func:`flashu.io.hub.resolve_model` also finds the tokenizer and the VAE.
    """
    return checkpoint_dir(name_or_path, config_only=config_only, progress=progress)


# ---------------------------------------------------------------------------------------------------- reading
def read_state_dict(directory: str | Path, *, progress: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in ``directory``, with the dtypes stored in the files, on the CPU.

    Looked for in this order: ``model.safetensors``, ``diffusion_pytorch_model.safetensors``,
    ``*.safetensors.index.json``, ``pytorch_model.bin``, ``diffusion_pytorch_model.bin``, ``*.bin.index.json``
    (e.g. diffusers' ``diffusion_pytorch_model.bin.index.json``), then all ``pytorch_model-*.bin`` shards.

    ``progress``: a bar per file read (in bytes) when there are several files or at least 1 GiB.
    """
    files = weight_files(directory)
    sizes = [f.stat().st_size for f in files]
    show = progress and (len(files) > 1 or sum(sizes) >= PROGRESS_MIN_BYTES)
    from tqdm.auto import tqdm

    merged: dict[str, torch.Tensor] = {}
    with tqdm(total=sum(sizes), unit="B", unit_scale=True, unit_divisor=1024, desc="reading weights",
              disable=not show, dynamic_ncols=True) as bar:
        for path, size in zip(files, sizes):
            bar.set_postfix_str(path.name, refresh=False)
            merged.update(_read_file(path))
            bar.update(size)
    return merged


def weight_files(directory: str | Path) -> list[Path]:
    """The weight files :func:`read_state_dict` reads from ``directory``, in order (see there)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"no such model directory: {directory}")
    for name in ("model.safetensors", "diffusion_pytorch_model.safetensors"):
        if (directory / name).is_file():
            return [directory / name]
    indexes = [directory / SAFETENSORS_INDEX_NAME] + sorted(directory.glob("*.safetensors.index.json"))
    for index in indexes:
        if index.is_file():
            return _index_files(index)
    for name in (BIN_NAME, "diffusion_pytorch_model.bin"):
        if (directory / name).is_file():
            return [directory / name]
    for index in sorted(directory.glob("*.bin.index.json")):
        return _index_files(index)
    shards = sorted(directory.glob("pytorch_model-*.bin"))
    if shards:
        return shards
    raise CheckpointError(f"no weights found in {directory}: expected {ACCEPTED_WEIGHTS}")


def _index_files(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shard_names = list(dict.fromkeys(weight_map.values()))  # unique, in order
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise CheckpointError(f"{index} is corrupt or truncated (re-download it): no readable weight_map") from None
    for name in shard_names:  # judged by name (hub caches link every file to a blob elsewhere)
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{index.name} names shard {name!r} outside {index.parent}; an index may only name "
                                  "files in its own directory")
    shards = [index.parent / name for name in shard_names]
    for shard in shards:
        if not shard.is_file():
            raise CheckpointError(f"{index.name} names shard {shard.name}, which is missing from {index.parent} "
                                  "(incomplete download?)")
    return shards


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as exc:
            raise _corrupt(path, exc) from None
    try:
        # mmap avoids holding a second full copy of a multi-GB file; only the zip format supports it.
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # a damaged pickle stream, not a disallowed object
            raise _corrupt(path, exc) from None
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects, not just tensors, and unpickling them could run "
            "code; only plain state dicts of tensors are accepted"
        ) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    except Exception as exc:  # torch.load fails with many exception types on damaged files
        raise _corrupt(path, exc) from None
    return _as_state_dict(data, path)


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
    return CheckpointError(f"{path} is corrupt or truncated (re-download it): {reason}")


def _as_state_dict(data: object, path: Path) -> dict[str, torch.Tensor]:
    # Training scripts sometimes save {"state_dict": sd} or {"module": sd} (DeepSpeed); unwrap that one level.
    if isinstance(data, dict) and len(data) == 1 and next(iter(data)) in ("state_dict", "module"):
        data = next(iter(data.values()))
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in data.items()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return data


# ---------------------------------------------------------------------------------------------------- loading
def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, tied_lm_head: bool) -> None:
    """Load ``state_dict`` into ``model`` after a strict check of names and shapes.

    The check runs before anything is changed, so on a mismatch the model is untouched. Tensors are *assigned*
    (``load_state_dict(assign=True)``): a model built on the meta device gets the checkpoint's tensors without
    a second allocation, and parameters keep the dtype stored in the file (the caller casts). On a model that
    already has real parameters, each tensor first moves to its parameter's device.

    With ``tied_lm_head`` the checkpoint may omit ``showo.lm_head.weight``; either way the head ends up as the
    same Parameter as ``showo.model.embed_tokens.weight`` (a stored head that differs from the embeddings is
    ignored with a warning). Non-persistent buffers (rotary tables) are recomputed on the parameters' device.
    """
    state_dict = dict(state_dict)
    expected = model.state_dict()  # on a meta model these are meta tensors: shapes only, nothing allocated
    problem = _mismatch_message(expected, state_dict, optional={LM_HEAD_KEY} if tied_lm_head else set())
    if problem:
        raise CheckpointError(problem)
    wrong = [k for k, t in state_dict.items() if expected[k].is_floating_point() and not t.is_floating_point()]
    if wrong:
        raise CheckpointError(f"checkpoint tensor {wrong[0]} has dtype {str(state_dict[wrong[0]].dtype).removeprefix('torch.')}"
                              f" where the model has floating-point weights ({len(wrong)} such tensor(s)): not a "
                              "Show-o2 weight file")
    if tied_lm_head:
        embed, head = state_dict[EMBED_KEY], state_dict.get(LM_HEAD_KEY)
        if head is not None and not (head.dtype == embed.dtype and torch.equal(head, embed)):
            warnings.warn(f"{LM_HEAD_KEY} in the checkpoint differs from {EMBED_KEY}; the head is tied to the "
                          "embeddings, so the stored head is ignored", stacklevel=2)
        state_dict[LM_HEAD_KEY] = embed
    for key, target in expected.items():
        if not target.is_meta:
            state_dict[key] = state_dict[key].to(target.device)
    model.load_state_dict(state_dict, strict=True, assign=True)
    if tied_lm_head:
        model.get_submodule("showo.lm_head").weight = model.get_parameter(EMBED_KEY)
    _rebuild_buffers(model, model.get_parameter(EMBED_KEY).device)


def _mismatch_message(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor],
                      optional: set[str]) -> str | None:
    missing = [k for k in expected if k not in got and k not in optional]
    unexpected = [k for k in got if k not in expected]
    shapes = [f"{k}: checkpoint {list(got[k].shape)} vs model {list(expected[k].shape)}"
              for k in expected if k in got and got[k].shape != expected[k].shape]
    parts = [_listing(len(missing), "missing key", missing), _listing(len(unexpected), "unexpected key", unexpected),
             _listing(len(shapes), "shape mismatch", shapes, plural="shape mismatches")]
    parts = [p for p in parts if p]
    return "checkpoint does not match the model: " + ", ".join(parts) if parts else None


def _listing(count: int, noun: str, items: list[str], plural: str | None = None) -> str:
    if not count:
        return ""
    shown = ", ".join(items[:_MAX_LISTED]) + (", ..." if count > _MAX_LISTED else "")
    return f"{count} {noun if count == 1 else plural or noun + 's'} ({shown})"


def _rebuild_buffers(model: nn.Module, device: torch.device) -> None:
    """Give every buffer left on the meta device (non-persistent ones are not in checkpoints) real values."""
    for module in model.modules():
        meta = [name for name, b in module._buffers.items() if b is not None and b.is_meta]
        for name in meta:  # placeholders on the right device; the values come just below
            module._buffers[name] = torch.empty_like(module._buffers[name], device=device)
        # transformers' rotary modules (showo.model.rotary_emb: unused by our forward pass, but .to() would fail on
        # a meta tensor): recompute their tables the way their __init__ does.
        if "inv_freq" in meta and getattr(module, "rope_type", None) == "default":
            inv_freq, _ = module.compute_default_rope_parameters(module.config)
            module.inv_freq = inv_freq.to(device)
            if "original_inv_freq" in meta:
                module.original_inv_freq = inv_freq.clone().to(device)
    if hasattr(model, "reset_buffers"):
        model.reset_buffers()  # Showo2's own rotary tables (llm_inv_freq, head_inv_freq)


# ---------------------------------------------------------------------------------------------------- writing
def write_safetensors(model: nn.Module, directory: str | Path, max_shard_bytes: int = 5 * 2**30) -> list[Path]:
    """Write ``model`` as safetensors in the official key layout; returns the files written.

    A tied ``showo.lm_head.weight`` is left out (safetensors refuses shared tensors; loading re-ties it). Above
    ``max_shard_bytes`` the tensors are split into ``model-0000i-of-0000N.safetensors`` with a
    ``model.safetensors.index.json``. Earlier safetensors weights in ``directory`` are removed first, since a stale
    ``model.safetensors`` would take precedence over a new index when reading.
    """
    from .files import save_safetensors as save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for old in [directory / SAFETENSORS_NAME, directory / SAFETENSORS_INDEX_NAME,
                *directory.glob("model-*-of-*.safetensors")]:
        old.unlink(missing_ok=True)
    state = _state_to_write(model, drop_tied_head=True)
    shards = _shard(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], directory / SAFETENSORS_NAME, metadata={"format": "pt"})
        return [directory / SAFETENSORS_NAME]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        save_file(shard, directory / name, metadata={"format": "pt"})
    index = directory / SAFETENSORS_INDEX_NAME
    _write_index(index, shards, names)
    return [directory / n for n in names] + [index]


def write_official_bin(model: nn.Module, directory: str | Path) -> Path:
    """The official upstream layout: one ``pytorch_model.bin`` with every key, tied ``showo.lm_head.weight`` too."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch_save(_state_to_write(model, drop_tied_head=False), directory / BIN_NAME)
    return directory / BIN_NAME


def write_official_sharded_bin(model: nn.Module, directory: str | Path, shard_bytes: int) -> list[Path]:
    """Upstream's sharded layout: ``pytorch_model-0000i-of-0000N.bin`` + ``diffusion_pytorch_model.bin.index.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards = _shard(_state_to_write(model, drop_tied_head=False), shard_bytes)
    names = [f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin" for i in range(len(shards))]
    for name, shard in zip(names, shards):
        torch_save(shard, directory / name)
    index = directory / DIFFUSERS_BIN_INDEX_NAME
    _write_index(index, shards, names)
    return [directory / n for n in names] + [index]


def _state_to_write(model: nn.Module, *, drop_tied_head: bool) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if drop_tied_head and LM_HEAD_KEY in state and _head_is_tied(model):
        del state[LM_HEAD_KEY]
    return state


def _head_is_tied(model: nn.Module) -> bool:
    return model.get_parameter(LM_HEAD_KEY) is model.get_parameter(EMBED_KEY)


def _shard(state: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    """Greedy split in key order; a tensor larger than ``max_bytes`` gets a shard of its own."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    return shards


def _write_index(index: Path, shards: list[dict[str, torch.Tensor]], names: list[str]) -> None:
    total = sum(t.numel() * t.element_size() for shard in shards for t in shard.values())
    weight_map = {key: name for name, shard in zip(names, shards) for key in shard}
    write_json(index, {"metadata": {"total_size": total}, "weight_map": weight_map})
