"""An evaluation as a Markdown page with PNG plots: the PR curve and the score histograms, threshold marked.

matplotlib runs headless (Agg) and is imported only here, so training never needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from trainer.evaluate import Metrics, choose_threshold, pr_curve


def write_report(
    out_dir: Path,
    scores: ArrayLike,
    labels: ArrayLike,
    metrics: Metrics,
    *,
    title: str,
    threshold: float | None = None,
    target_precision: float = 0.95,
) -> Path:
    """Write ``report.md``, ``pr_curve.png`` and ``scores.png`` into ``out_dir``; return the page's path.

    ``threshold`` is the model's decision threshold if known; the threshold that meets
    ``target_precision`` on these pairs is marked as well.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels).astype(int)
    precision, recall, thresholds = pr_curve(s, y)
    chosen = choose_threshold(s, y, target_precision)
    marks = {f"P≥{target_precision:g} here ({chosen.threshold:.3f})": chosen.threshold}
    if threshold is not None:
        marks[f"model threshold ({threshold:.3f})"] = threshold

    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.plot(recall, precision, lw=1.5)
    for (label, value), colour in zip(marks.items(), ("tab:red", "tab:green"), strict=False):
        k = int(np.argmin(np.abs(thresholds - value)))
        ax.scatter([recall[k]], [precision[k]], color=colour, zorder=3, label=label)
    ax.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1.01),
        ylim=(0, 1.01),
        title=f"{title}: AP {metrics.average_precision:.3f}",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(out_dir / "pr_curve.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    bins = np.linspace(min(s.min(), 0.0), 1.0, 61).tolist()
    ax.hist(s[y == 0], bins=bins, alpha=0.6, label="not duplicate", density=True)
    ax.hist(s[y == 1], bins=bins, alpha=0.6, label="duplicate", density=True)
    for (label, value), colour in zip(marks.items(), ("tab:red", "tab:green"), strict=False):
        ax.axvline(value, color=colour, ls="--", label=label)
    ax.set(xlabel="cosine similarity", ylabel="density", title=f"{title}: scores")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "scores.png", dpi=110)
    plt.close(fig)

    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in metrics.as_dict().items())
    page = out_dir / "report.md"
    page.write_text(
        f"# {title}\n\n"
        f"{metrics.pairs} pairs, {metrics.duplicates} duplicates. Primary metric: average precision.\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n\n"
        f"At precision ≥ {target_precision:g} on these pairs: threshold {chosen.threshold:.4f}, "
        f"precision {chosen.precision:.4f}, recall {chosen.recall:.4f}"
        f"{'' if chosen.met else ' (target not reached: the most precise threshold)'}.\n\n"
        "![precision-recall curve](pr_curve.png)\n\n![score histograms](scores.png)\n",
        encoding="utf-8",
    )
    return page
