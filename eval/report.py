"""Reports: results JSON, a markdown table and PNG plots (precision-recall, F1 against IoU), and the
tables a benchmark spec declares, each with a bar plot (``tables:``, see :func:`table_markdown`)."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path

# Columns shown first in the markdown table when present; other keys follow in their order.
LEADING_KEYS = ("f1@0.5", "f1@0.95", "f1@mean", "agnostic/f1@0.5", "agnostic/f1@mean", "detect_all/phrases_not_in_gt",
                "coco/AP", "coco/AP50", "coco/AP75", "lvis/APr", "lvis/APc", "lvis/APf", "point/f1", "ref/acc@0.5",
                "kp/mean_oks", "vp/count_mae", "vp/duplicate_ratio", "language/AP", "d3/full", "ood/auroc")
COUNT_KEYS = ("samples", "skipped_images", "samples_without_prediction", "coco/unknown_labels",
              "vp/duplicate_pairs", "distractors/count", "ood/id_boxes", "ood/ood_boxes")


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
    lines.append("Rates in percent; `vp/count_mae` in boxes; -1 where COCOeval has nothing to score, nan where a rate "
                 "has nothing to count (OOD metrics without boxes).")
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


def table_markdown(results: Mapping[str, Mapping[str, float]], table: Mapping) -> str:
    """One declared table: ``{title, datasets: [names], metrics: [keys]}``, a row per data set (those
    that ran), a column per metric, cells as in :func:`markdown_table`."""
    rows = [d for d in table["datasets"] if d in results]
    lines = [f"## {table['title']}", "", "| dataset | " + " | ".join(table["metrics"]) + " |",
             "|---|" + "---|" * len(table["metrics"])]
    lines += [f"| {d} | " + " | ".join(_cell(k, results[d].get(k)) for k in table["metrics"]) + " |" for d in rows]
    return "\n".join(lines) + "\n"


def plot_table(results: Mapping[str, Mapping[str, float]], table: Mapping, out_dir: str | os.PathLike) -> str | None:
    """A grouped bar plot of one declared table: a group per metric, a bar per data set (rates as
    percent; counts are left out). None when no data set of the table ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [d for d in table["datasets"] if d in results]
    keys = [k for k in table["metrics"] if k not in COUNT_KEYS]
    if not rows or not keys:
        return None
    fig, ax = plt.subplots(figsize=(min(12.0, 2.0 + 0.35 * len(keys) * len(rows)), 4))
    width = 0.8 / len(rows)
    for i, dataset in enumerate(rows):
        values = [100 * results[dataset].get(k, float("nan")) for k in keys]
        ax.bar([j + (i - (len(rows) - 1) / 2) * width for j in range(len(keys))], values, width, label=dataset)
    ax.set_xticks(range(len(keys)), keys, rotation=20, ha="right")
    ax.set(ylabel="percent", ylim=(0, 102), title=table["title"])
    ax.legend(fontsize="small")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return _save(fig, Path(out_dir) / f"table_{_slug(table['title'])}.png")


def write_reports(results: Mapping[str, Mapping[str, float]], curves: Mapping[str, Mapping],
                  out_dir: str | os.PathLike, title: str | None = None,
                  tables: list[Mapping] | None = None) -> dict[str, str]:
    """``results.json`` (flat metrics per data set, plus curves), ``results.md`` (with the declared
    ``tables`` after the full table) and ``plots/`` (a bar plot per declared table)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({"results": results, "curves": curves}, f, indent=1)
    sections = [markdown_table(results, title)]
    plots = plot_curves(curves, out_dir / "plots")
    for table in tables or []:
        plot = plot_table(results, table, out_dir / "plots")
        sections.append(table_markdown(results, table) + (f"\n![{table['title']}](plots/{Path(plot).name})\n"
                                                          if plot else ""))
        plots += [plot] if plot else []
    md_path.write_text("\n".join(sections), encoding="utf-8")
    return {"json": str(json_path), "markdown": str(md_path), "plots": ",".join(plots)}
