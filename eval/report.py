"""Reports: results JSON, a markdown table and PNG plots (precision-recall, F1 against IoU)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

# Columns shown first in the markdown table when present; other keys follow in their order.
LEADING_KEYS = ("f1@0.5", "f1@0.95", "f1@mean", "coco/AP", "coco/AP50", "coco/AP75", "lvis/APr", "lvis/APc",
                "lvis/APf", "point/f1", "ref/acc@0.5", "kp/mean_oks", "vp/count_mae", "vp/duplicate_ratio",
                "language/AP", "d3/full", "ood/auroc")
COUNT_KEYS = ("samples", "skipped_images", "samples_without_prediction", "coco/unknown_labels",
              "vp/duplicate_pairs")


def markdown_table(results: Mapping[str, Mapping[str, float]], title: str | None = None) -> str:
    """One row per data set, one column per metric; rates in percent with one decimal."""
    keys = [k for k in LEADING_KEYS if any(k in m for m in results.values())]
    keys += [k for m in results.values() for k in m if k not in keys and k not in COUNT_KEYS]
    keys = list(dict.fromkeys(keys)) + [k for k in COUNT_KEYS if any(k in m for m in results.values())]
    lines = [f"# {title}", ""] if title else []
    lines.append("| dataset | " + " | ".join(keys) + " |")
    lines.append("|---|" + "---|" * len(keys))
    for name, metrics in results.items():
        lines.append(f"| {name} | " + " | ".join(_cell(k, metrics.get(k)) for k in keys) + " |")
    lines.append("")
    lines.append("Rates in percent; `vp/count_mae` in boxes; -1 where COCOeval has nothing to score.")
    return "\n".join(lines) + "\n"


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    if key in COUNT_KEYS or key == "vp/count_mae":
        return f"{value:g}" if key in COUNT_KEYS else f"{value:.2f}"
    if isinstance(value, float) and (math.isnan(value) or value < 0):
        return f"{value:g}"
    return f"{100 * value:.1f}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "dataset"


def plot_curves(curves: Mapping[str, Mapping], out_dir: str | os.PathLike) -> list[str]:
    """PNG files: per data set, precision-recall curves and F1/precision/recall against IoU threshold."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, c in curves.items():
        if c.get("pr"):
            fig, ax = plt.subplots(figsize=(5, 4))
            for t, curve in c["pr"].items():
                ax.plot(curve["recall"], curve["precision"], label=f"IoU {t}")
            ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=f"{name}: precision-recall")
            ax.legend()
            written.append(_save(fig, out_dir / f"{_slug(name)}_pr.png"))
        if c.get("f1_vs_iou"):
            curve = c["f1_vs_iou"]
            fig, ax = plt.subplots(figsize=(5, 4))
            for key in ("f1", "precision", "recall"):
                ax.plot(curve["thresholds"], curve[key], marker="o", label=key)
            ax.set(xlabel="IoU threshold", ylabel="value", ylim=(0, 1.02), title=f"{name}: F1 against IoU")
            ax.legend()
            written.append(_save(fig, out_dir / f"{_slug(name)}_f1_vs_iou.png"))
    return written


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def write_reports(results: Mapping[str, Mapping[str, float]], curves: Mapping[str, Mapping],
                  out_dir: str | os.PathLike, title: str | None = None) -> dict[str, str]:
    """``results.json`` (flat metrics per data set, plus curves), ``results.md`` and ``plots/``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"results": results, "curves": curves}, f, indent=1)
    md_path.write_text(markdown_table(results, title), encoding="utf-8")
    plots = plot_curves(curves, out_dir / "plots")
    return {"json": str(json_path), "markdown": str(md_path), "plots": ",".join(plots)}
