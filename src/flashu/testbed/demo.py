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
             out: str | Path = "flashu-demo.png", calibration_samples: int = 10, progress: bool = True) -> dict:
    from .evaluate import evaluate_many, format_reports, load_testbed, resolve_accel

    if n_gen <= 0 or n_mmu < 0:
        raise FlashuError("the demo needs at least one image (n_gen > 0) and n_mmu >= 0")
    for name in configs:
        resolve_accel(name)
    bundle = load_testbed(model)
    reports = evaluate_many(bundle, list(configs), n_gen=n_gen, n_mmu=n_mmu, keep_images=True,
                            calibration_samples=calibration_samples, progress=progress)
    from . import world

    captions = world.prompts("test", n_gen)
    path = save_grid(reports, captions, out)
    return {"table": format_reports(reports), "grid": str(path), "reports": reports}


def save_grid(reports: list[dict], captions: list[str], out: str | Path) -> Path:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise FlashuError("the demo grid needs matplotlib: pip install 'flashu[plot]'") from None
    rows, cols = len(captions), len(reports)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False)
    for c, report in enumerate(reports):
        correct = report.get("generation", {}).get("correct", [])
        for r, caption in enumerate(captions):
            ax = axes[r][c]
            ax.imshow(report["images"][r], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            mark = "✓" if r < len(correct) and correct[r] else "✗"
            title = f"{report['accel']} {mark}" if r == 0 else mark
            ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(caption, fontsize=7, rotation=0, ha="right", va="center", wrap=True)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
