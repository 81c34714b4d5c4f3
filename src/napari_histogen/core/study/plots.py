"""PNG plots of a reader study report (matplotlib, Agg canvas: no GUI backend involved)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .layout import CRITERIA, SCORE_MAX, SCORE_MIN

__all__ = ["write_plots"]

_COLORS = {"real": "#4c72b0", "synthetic": "#dd8452"}


def _figure(width, height):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _violins(ax, df, by, labels, title):
    """Violin + box of realism per label of ``by``, real and synthetic side by side."""
    rng = np.random.default_rng(0)
    ticks = []
    for i, label in enumerate(labels):
        part = df if label is None else df[df[by] == label]
        for j, truth in enumerate(("real", "synthetic")):
            vals = part.loc[part.truth == truth, "realism"].to_numpy(float)
            pos = i * 3 + j
            if vals.size == 0:
                continue
            if np.unique(vals).size > 1:
                body = ax.violinplot([vals], positions=[pos], widths=0.9, showextrema=False)
                for pc in body["bodies"]:
                    pc.set_facecolor(_COLORS[truth])
                    pc.set_alpha(0.35)
            ax.boxplot([vals], positions=[pos], widths=0.3, patch_artist=True, showfliers=False,
                       boxprops={"facecolor": _COLORS[truth], "alpha": 0.8}, medianprops={"color": "black"})
            ax.scatter(pos + rng.uniform(-0.12, 0.12, vals.size), vals + rng.uniform(-0.15, 0.15, vals.size),
                       s=6, color="black", alpha=0.4, zorder=3)
        ticks.append((i * 3 + 0.5, "overall" if label is None else str(label)))
    ax.set_xticks([t for t, _ in ticks], [n for _, n in ticks], rotation=30 if len(ticks) > 4 else 0)
    ax.set_ylim(SCORE_MIN - 0.5, SCORE_MAX + 0.5)
    ax.set_yticks(range(SCORE_MIN, SCORE_MAX + 1))
    ax.set_ylabel("realism (1 = synthetic, 10 = real)")
    ax.set_title(title)
    for truth, color in _COLORS.items():
        ax.bar([0], [0], width=0, color=color, label=truth)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def write_plots(report, out) -> dict:
    """Write the report's plots to ``out``; returns role -> path."""
    out = Path(out)
    df = report.answers.copy()
    df["group"] = df["group"].fillna("all").astype(str)
    files = {}

    groups = sorted(df.group.unique())
    labels = (groups if len(groups) > 1 else []) + [None]
    fig = _figure(max(4.5, 1.6 * len(labels) + 1.5), 4.2)
    _violins(fig.add_subplot(1, 1, 1), df, "group", labels, "Realism by group")
    fig.tight_layout()
    files["realism_by_group_png"] = out / "realism_by_group.png"
    fig.savefig(files["realism_by_group_png"])

    readers = sorted(df.reader.unique())
    fig = _figure(max(4.5, 1.6 * len(readers) + 1.5), 4.2)
    _violins(fig.add_subplot(1, 1, 1), df, "reader", readers, "Realism by reader")
    fig.tight_layout()
    files["realism_by_reader_png"] = out / "realism_by_reader.png"
    fig.savefig(files["realism_by_reader_png"])

    fig = _figure(4.8, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance (AUC 0.50)")
    for name, (fpr, tpr, auc) in report.roc.items():
        if name == "overall":
            continue
        ax.plot(fpr, tpr, linewidth=1, alpha=0.6, marker=".", label=f"{name} (AUC {auc:.2f})")
    fpr, tpr, auc = report.roc["overall"]
    ax.plot(fpr, tpr, color="black", linewidth=2, marker="o", markersize=3, label=f"all readers (AUC {auc:.2f})")
    ax.set_xlabel("synthetic called real (false positive rate)")
    ax.set_ylabel("real called real (true positive rate)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_title("ROC: telling real from synthetic")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    files["roc_png"] = out / "roc.png"
    fig.savefig(files["roc_png"])

    if not report.criteria.empty:
        crit = report.criteria[report.criteria.group == "overall"]
        keys = [c[:-4] for c in crit.columns if c.endswith("_pct")]
        texts = dict(CRITERIA)
        fig = _figure(7.0, 3.8)
        ax = fig.add_subplot(1, 1, 1)
        x = np.arange(len(keys))
        for j, truth in enumerate(("real", "synthetic")):
            row = crit[crit.truth == truth]
            vals = [float(row[f"{k}_pct"].iloc[0]) if len(row) else 0.0 for k in keys]
            ax.bar(x + (j - 0.5) * 0.38, vals, width=0.38, color=_COLORS[truth], label=truth)
        ax.set_xticks(x, [texts.get(k, k).replace(" ", "\n", 2) for k in keys], fontsize=7)
        ax.set_ylabel("% of answers")
        ax.set_ylim(0, 100)
        ax.set_title("Mask consistency")
        ax.legend(fontsize=8)
        fig.tight_layout()
        files["criteria_png"] = out / "criteria.png"
        fig.savefig(files["criteria_png"])
    return files
