"""Evaluation inputs: text-to-image prompt sources (plain text, DPG-Bench, GenEval) and understanding data (JSONL)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...errors import FlashuError

T2I_FORMATS = ("text", "dpg", "geneval")
DEFAULT_SAMPLES = {"text": 1, "dpg": 4, "geneval": 4}


@dataclass
class PromptItem:
    index: int  # position in the source (GenEval's folder number)
    id: str  # DPG-Bench item id (file stem); the 5-digit index otherwise
    prompt: str
    metadata: dict | None = None  # GenEval: the metadata line, written back verbatim


@dataclass
class MMUItem:
    index: int
    id: str
    image: str
    question: str
    answer: str


def detect_format(source: str | Path) -> str:
    path = Path(source)
    if path.is_dir():
        return "dpg"
    suffix = path.suffix.lower()
    return {".jsonl": "geneval", ".json": "dpg", ".csv": "dpg"}.get(suffix, "text")


def read_t2i_prompts(source: str | Path | Sequence[str], fmt: str = "auto") -> tuple[str, list[PromptItem]]:
    """``(format, items)`` from a prompt source (see the module docstring)."""
    from ...accel.calibration import read_prompts

    if not isinstance(source, (str, Path)):
        prompts = [str(p).strip() for p in source]
        if not prompts or not all(prompts):
            raise FlashuError("give at least one non-empty prompt")
        return "text", [PromptItem(i, f"{i:05d}", p) for i, p in enumerate(prompts)]
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt not in T2I_FORMATS:
        raise FlashuError(f"unknown prompt format {fmt!r}; use one of auto, {', '.join(T2I_FORMATS)}")
    path = Path(source)
    if not path.exists():
        raise FlashuError(f"prompt source {path} does not exist")
    if fmt == "text":
        return fmt, [PromptItem(i, f"{i:05d}", p) for i, p in enumerate(read_prompts(path))]
    if fmt == "geneval":
        items = []
        for n, line in enumerate(_read_lines(path), 1):
            if not line.strip():
                continue
            try:
                meta = json.loads(line)
                prompt = str(_text_field(meta["prompt"])).strip()
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
                raise FlashuError(f"{path}:{n}: expected a GenEval metadata object with a text 'prompt'") from None
            items.append(PromptItem(len(items), f"{len(items):05d}", prompt, meta))
        return fmt, _nonempty(items, path)
    # DPG-Bench
    if path.is_dir():
        pairs = [(f.stem, _read_text(f).strip()) for f in sorted(path.glob("*.txt"))]
    elif path.suffix.lower() == ".csv":
        pairs, seen = [], set()
        text = _read_text(path, "utf-8-sig")  # DPG-Bench's CSV may start with a BOM
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or not {"item_id", "text"} <= set(reader.fieldnames):
            raise FlashuError(f"{path}: a DPG-Bench CSV needs the columns item_id and text")
        for row in reader:
            if row["item_id"] not in seen:
                seen.add(row["item_id"])
                pairs.append((row["item_id"], row["text"].strip()))
    else:
        try:
            data = json.loads(_read_text(path))
        except json.JSONDecodeError as exc:
            raise FlashuError(f"{path}: not valid JSON ({exc.msg})") from None
        except RecursionError:
            raise FlashuError(f"{path}: not valid JSON (nested too deeply)") from None
        if not isinstance(data, dict):
            raise FlashuError(f"{path}: expected a JSON object {{item_id: prompt}}")
        if any(not _is_text(v) for v in data.values()):
            raise FlashuError(f"{path}: every prompt must be text (null, lists and objects are not prompts)")
        pairs = [(str(k), str(v).strip()) for k, v in data.items()]
    for item_id, prompt in pairs:
        if not item_id or item_id.startswith(".") or "/" in item_id or "\\" in item_id:
            raise FlashuError(f"{path}: item id {item_id!r} cannot be a file name")
        if not prompt:
            raise FlashuError(f"{path}: item {item_id!r} has an empty prompt")
    if len({i for i, _ in pairs}) != len(pairs):
        raise FlashuError(f"{path}: duplicate item ids")
    return fmt, _nonempty([PromptItem(i, item_id, p) for i, (item_id, p) in enumerate(pairs)], path)


def read_mmu_data(path: str | Path) -> list[MMUItem]:
    """``{"image", "question", "answer"}`` per line (optional ``"id"``); image paths relative to the file."""
    path = Path(path)
    items = []
    for n, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, question, answer = (str(_text_field(row[k])) for k in ("image", "question", "answer"))
        except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
            raise FlashuError(f"{path}:{n}: expected a JSON object with text 'image', 'question' and 'answer'") from None
        image_path = Path(image) if Path(image).is_absolute() else path.parent / image
        items.append(MMUItem(len(items), str(row.get("id", len(items))), str(image_path), question, answer))
    return _nonempty(items, path)


def _is_text(value) -> bool:
    """A JSON value that reads as text: a string or a number, never null, a list or an object."""
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def _text_field(value):
    if not _is_text(value):
        raise TypeError(f"not text: {value!r}")  # the readers turn this into their one-line error
    return value


def limited(items: list, limit: int | None) -> list:
    """The first ``limit`` items (``None``: all); 0 or a negative limit (which slicing would read as "all but the
    last") is refused."""
    if limit is None:
        return items
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise FlashuError(f"limit must be a positive integer, got {limit!r}")
    return items[:limit]


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    try:
        return path.read_text(encoding=encoding)
    except OSError as exc:
        raise FlashuError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise FlashuError(f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _read_lines(path: Path) -> list[str]:
    return _read_text(path).splitlines()


def _nonempty(items: list, path: Path) -> list:
    if not items:
        raise FlashuError(f"{path} has no items")
    return items
