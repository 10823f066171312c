"""``flashu demo``: the trained shapes-world testbed, offline, baseline vs FlashU side by side.

Generates a few images from held-out test captions and answers a few test questions with each configuration,
checks them exactly (palette segmentation + geometry for images, exact match for answers), prints accuracy and
speed side by side and saves an image grid (one column per configuration, prompts as titles).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import FlashuError

DEFAULT_CONFIGS = ("none", "paper", "plus")


def run_demo(model: str = "testbed", configs=DEFAULT_CONFIGS, *, n_gen: int = 8, n_mmu: int = 24,
             out: str | Path = "flashu-demo.png", calibration_samples: int = 10, progress: bool = True,
             echo=None, device: str = "cpu", dtype: str = "float32") -> dict:
    """Evaluate ``configs`` on a few test items, hand the results table to ``echo`` (first: nothing optional can
    keep a user from seeing them), then save the grid."""
    from ..accel.spec import resolve_accel
    from .evaluate import evaluate_many, format_reports, load_testbed

    if n_gen <= 0 or n_mmu < 0:
        raise FlashuError("the demo needs at least one image (n_gen > 0) and n_mmu >= 0")
    for name in configs:
        resolve_accel(name)
    bundle = load_testbed(model, device=device, dtype=dtype)
    reports = evaluate_many(bundle, list(configs), n_gen=n_gen, n_mmu=n_mmu, keep_images=True,
                            calibration_samples=calibration_samples, progress=progress)
    table = format_reports(reports)
    samples = sample_answers(reports)
    table = table + ("\n\n" + samples if samples else "")
    if echo is not None:
        echo(table)
    from . import world

    captions = world.prompts("test", n_gen)
    path = save_grid(reports, captions, out)
    return {"table": table, "grid": str(path), "reports": reports}


def sample_answers(reports: list[dict], count: int = 3) -> str:
    """The first ``count`` test questions with each configuration's answer, ✓/✗ as scored."""
    first = next((r["understanding"] for r in reports if r.get("understanding")), None)
    if not first or "questions" not in first:
        return ""
    width = max(len(r["accel"]) for r in reports)
    lines = ["sample answers"]
    for i, (question, expected) in enumerate(zip(first["questions"][:count], first["expected"][:count])):
        lines.append(f"  {question.strip()}  (expected: {expected})")
        for r in reports:
            u = r.get("understanding") or {}
            if i < len(u.get("answers", [])):
                mark = "✓" if u["correct"][i] else "✗"
                lines.append(f"    {r['accel']:<{width}} {mark} {u['answers'][i]!r}")
    return "\n".join(lines)


QUESTIONS = 3  # test questions shown under the images, with every configuration's answer
CELL = 96  # pixels per generated image in the grid (nearest-neighbour upscaled)
PAD = 8
_GOOD, _BAD, _INK = (0, 140, 60), (200, 30, 30), (20, 20, 20)


def save_grid(reports: list[dict], captions: list[str], out: str | Path) -> Path:
    """One column per configuration, one row per caption, each image framed green (✓ correct) or red (✗ wrong)
    with its verdict written under it. Drawn with Pillow alone."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    label_w = 260
    rows, cols = len(captions), len(reports)
    width = label_w + cols * (CELL + PAD) + PAD
    first = next((r["understanding"] for r in reports if r.get("understanding")), None) or {}
    questions = list(zip(first.get("questions", [])[:QUESTIONS], first.get("expected", [])[:QUESTIONS]))
    images_h = 28 + rows * (CELL + 22 + PAD)
    height = images_h + (16 + len(questions) * (16 + 14 * cols) if questions else 0)
    grid = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(grid)
    for c, report in enumerate(reports):
        x = label_w + PAD + c * (CELL + PAD)
        draw.text((x, 8), str(report["accel"])[:18], fill=_INK, font=font)
        correct = report.get("generation", {}).get("correct", [])
        for r, image in enumerate(report["images"][:rows]):
            y = 28 + r * (CELL + 22 + PAD)
            ok = r < len(correct) and correct[r]
            draw.rectangle((x - 3, y - 3, x + CELL + 2, y + CELL + 2), outline=_GOOD if ok else _BAD, width=3)
            grid.paste(image.convert("RGB").resize((CELL, CELL), Image.Resampling.NEAREST), (x, y))
            draw.text((x, y + CELL + 5), "correct" if ok else "wrong", fill=_GOOD if ok else _BAD, font=font)
    for r, caption in enumerate(captions):
        y = 28 + r * (CELL + 22 + PAD) + CELL // 2 - 6
        draw.text((PAD, y), _wrap(caption, 40), fill=_INK, font=font)
    y = images_h + 8  # a few test questions with every configuration's answer, ✓/✗ as scored
    for i, (question, expected) in enumerate(questions):
        draw.text((PAD, y), _wrap(f"Q: {question.strip()}  (expected: {expected})", 90), fill=_INK, font=font)
        y += 16
        for report in reports:
            u = report.get("understanding") or {}
            if i < len(u.get("answers", [])):
                ok = bool(u["correct"][i])
                draw.text((PAD + 16, y), f"{report['accel'][:24]}: {u['answers'][i]!r:.60} - "
                          f"{'correct' if ok else 'wrong'}", fill=_GOOD if ok else _BAD, font=font)
            y += 14
    from ..io.files import save_image

    return save_image(grid, Path(out))


def _wrap(text: str, width: int) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])
