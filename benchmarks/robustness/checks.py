"""Verifications of a successful case (files, images, answers, warnings, JSON) and of what an error left behind."""

from __future__ import annotations

import json
from pathlib import Path

from .model import Check, Result


def _img(path: Path, size: int | None = 32) -> str | None:
    from PIL import Image

    if not path.is_file():
        return f"{path.name} was not written"
    try:
        with Image.open(path) as img:
            img.load()
            if size is not None and img.size != (size, size):
                return f"{path.name} is {img.size}, expected {size}x{size}"
            lo, hi = zip(*img.convert("RGB").getextrema())
            if lo == hi:
                return f"{path.name} is one flat colour {lo} (non-finite latents?)"
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return f"{path.name} is not a readable image: {exc}"
    return None


def image(name: str = "o.png", size: int | None = 32) -> Check:
    return lambda r: _img(r.d / name, size)


def images(names: list[str], size: int | None = 32) -> Check:
    def check(r: Result):
        for name in names:
            problem = _img(r.d / name, size)
            if problem:
                return problem
        return None
    return check


def warns(*needles: str) -> Check:
    def check(r: Result):
        lines = [line.lower() for line in r.stderr.splitlines() if line.startswith("warning: ")]
        for needle in needles:
            if not any(needle.lower() in line for line in lines):
                return f"no 'warning: …{needle}…' line on stderr"
        return None
    return check


def stdout_has(needle: str) -> Check:
    return lambda r: None if needle.lower() in r.stdout.lower() else f"stdout lacks {needle!r}"


def answered(r: Result) -> str | None:
    """``ask`` finished: the timing line is on stderr (the answer itself may be empty for random weights)."""
    return None if "decode:" in r.stderr and "prefill:" in r.stderr else "no answer timing line: the answer did not finish"


def answered_text(r: Result) -> str | None:
    return answered(r) or (None if r.stdout.strip() else "empty answer")


def strict_json(path: str) -> Check:
    def check(r: Result):
        p = r.d / path
        if not p.is_file():
            return f"{path} was not written"
        try:
            json.loads(p.read_text(), parse_constant=_reject_constant)
        except ValueError as exc:
            return f"{path} is not strict JSON: {exc}"
        return None
    return check


def _reject_constant(name: str):
    raise ValueError(f"non-standard constant {name}")


def file_exists(path: str) -> Check:
    return lambda r: None if (r.d / path).is_file() else f"{path} was not written"


def all_of(*checks: Check) -> Check:
    def check(r: Result):
        for c in checks:
            problem = c(r)
            if problem:
                return problem
        return None
    return check


def eval_complete(out: str = "out", n: int = 2, config: str = "none") -> Check:
    """``eval mmu`` finished: the report says complete with every item answered once, predictions.jsonl holds each
    index exactly once, every record valid."""
    def check(r: Result):
        try:
            report = json.loads(r.stdout, parse_constant=_reject_constant)
            entry = report["configs"][config]
        except (ValueError, KeyError, TypeError) as exc:
            return f"no parsable report on stdout ({exc})"
        if not entry.get("complete") or entry.get("answered") != n:
            return f"report: complete={entry.get('complete')} answered={entry.get('answered')} (expected {n})"
        path = r.d / out / config / "predictions.jsonl"
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines()]
        except (OSError, ValueError) as exc:
            return f"predictions.jsonl unreadable: {exc}"
        indexes = sorted(row.get("index") for row in rows)
        if indexes != list(range(n)):
            return f"predictions.jsonl indexes {indexes}, expected each of 0..{n - 1} once"
        bad = [row for row in rows if not (isinstance(row.get("prediction"), str) and isinstance(row.get("correct"), bool))]
        return f"invalid records kept: {bad[:1]}" if bad else None
    return check


