"""PNG plots of a model x seed grid (matplotlib, Agg backend: no display needed).

    auc_by_model.png     test AUC per model, error bars = std over seeds
    auc_vs_params.png    test AUC against parameter count, log x (the CAN paper's Figure 5 view)
    curves.png           training loss and held-out AUC against the global training step, mean over seeds

Curves come from metrics.json "curves": entries with "loss" (every log_every steps) and entries with
"eval_auc" (every eval_every steps and at each epoch end); "step" counts within an epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files only
import matplotlib.pyplot as plt
import numpy as np

from canctr.report.summary import RunRecord

DPI = 110


def model_colors(models: Sequence[str]) -> dict[str, Any]:
    """A stable colour per model, shared by every plot."""
    cmap = plt.get_cmap("tab10" if len(models) <= 10 else "tab20")
    return {m: cmap(i % cmap.N) for i, m in enumerate(models)}


def global_steps(curves: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(global step, value) of the curve entries holding `key`. Steps per epoch = epoch 0's last step."""
    per_epoch = max((c["step"] for c in curves if c["epoch"] == 0), default=0)
    pts = [(c["epoch"] * per_epoch + c["step"], c[key]) for c in curves if key in c]
    if not pts:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    steps, values = zip(*pts)
    return np.asarray(steps), np.asarray(values, dtype=np.float64)


def mean_curve(records: Sequence[RunRecord], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over runs at the steps every run logged (the seeds of one config log the same steps)."""
    series = [dict(zip(*global_steps(r.curves, key))) for r in records]
    common = sorted(set.intersection(*(set(s) for s in series))) if series else []
    vals = np.array([[s[k] for k in common] for s in series]).reshape(len(series), len(common))
    std = vals.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(len(common))
    return np.asarray(common), vals.mean(axis=0), std


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_auc_by_model(summary: Sequence[dict[str, Any]], colors: dict[str, Any], path: Path) -> Path:
    """Horizontal dot plot: AUC mean with a ±std bar per model, top to bottom in grid order."""
    fig, ax = plt.subplots(figsize=(7.5, max(4.6, 0.4 * len(summary) + 1.6)))  # 4.6: as tall as its neighbour
    y = np.arange(len(summary))[::-1]
    for yi, s in zip(y, summary):
        std = 0.0 if math.isnan(s["auc_std"]) else s["auc_std"]
        ax.errorbar(s["auc"], yi, xerr=std, fmt="o", color=colors[s["model"]], capsize=4, markersize=7)
        ax.annotate(f"{s['auc']:.4f}", (s["auc"] + std, yi), xytext=(6, 0), textcoords="offset points",
                    va="center", fontsize=9)
    ax.set_yticks(y, [s["model"] for s in summary])
    lo = min(s["auc"] - (0 if math.isnan(s["auc_std"]) else s["auc_std"]) for s in summary)
    hi = max(s["auc"] + (0 if math.isnan(s["auc_std"]) else s["auc_std"]) for s in summary)
    pad = max(hi - lo, 0.004)
    ax.set_xlim(lo - 0.15 * pad, hi + 0.35 * pad)  # room on the right for the value labels
    ax.set_ylim(-0.6, len(summary) - 0.4)
    ax.set_xlabel("test AUC (mean ± std over seeds)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("AUC per model")
    return _save(fig, path)


def _label_offsets(ax: plt.Axes, points: Sequence[tuple[float, float]], labels: Sequence[str],
                   font_pt: float = 9.0) -> list[float]:
    """Vertical offsets (points) for labels right of `points` so that no two overlap: greedy, top down,
    a clashing label moves one line down. Widths are estimated from the label length."""
    xy = ax.transData.transform(points) * (72.0 / ax.figure.dpi)  # [N, 2] display points
    placed: list[tuple[float, float, float]] = []  # (x0, x1, y) of the labels placed so far
    offsets = [0.0] * len(points)
    for i in np.argsort(-xy[:, 1], kind="stable"):
        x0, x1, dy = xy[i, 0] + 7, xy[i, 0] + 7 + 0.6 * font_pt * len(labels[i]), 3.0
        while any(x0 < px1 and px0 < x1 and abs(xy[i, 1] + dy - py) < font_pt * 1.2 for px0, px1, py in placed):
            dy -= font_pt * 1.2
        placed.append((x0, x1, xy[i, 1] + dy))
        offsets[i] = dy
    return offsets


def plot_auc_vs_params(summary: Sequence[dict[str, Any]], colors: dict[str, Any], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    for s in summary:
        std = 0.0 if math.isnan(s["auc_std"]) else s["auc_std"]
        ax.errorbar(s["n_params"], s["auc"], yerr=std, fmt="o", color=colors[s["model"]], capsize=4, markersize=8)
    ax.set_xscale("log")
    params = [s["n_params"] for s in summary]
    ax.set_xlim(min(params) / 1.6, max(params) * 2.2)  # room for the labels right of the last point
    ax.set_xlabel("parameters (log scale)")
    ax.set_ylabel("test AUC")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("AUC vs model size")
    fig.tight_layout()  # final axes geometry first: label offsets are computed in display space
    points = [(s["n_params"], s["auc"]) for s in summary]
    labels = [s["model"] for s in summary]
    for (x, y), label, dy in zip(points, labels, _label_offsets(ax, points, labels)):
        moved = dy < 0
        ax.annotate(label, (x, y), xytext=(7, dy), textcoords="offset points", fontsize=9, va="center",
                    arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if moved else None)
    return _save(fig, path)


def plot_curves(groups: dict[str, list[RunRecord]], colors: dict[str, Any], path: Path) -> Path:
    """Left: training loss; right: held-out AUC; one line per model (mean over seeds, band = ±std)."""
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(13, 4.8))
    for model, recs in groups.items():
        # the CTR loss alone: DIEN's total also holds its auxiliary loss, which would put it on another scale
        loss_key = "ctr_loss" if all(any("ctr_loss" in c for c in r.curves) for r in recs) else "loss"
        for ax, key, marker in ((ax_loss, loss_key, None), (ax_auc, "eval_auc", "o")):
            steps, mean, std = mean_curve(recs, key)
            if steps.size == 0:
                continue
            ax.plot(steps, mean, color=colors[model], marker=marker, markersize=4, linewidth=1.4, label=model)
            if len(recs) > 1:
                ax.fill_between(steps, mean - std, mean + std, color=colors[model], alpha=0.15, linewidth=0)
    ax_loss.set_title("training CTR loss (mean of each logging interval)")
    ax_loss.set_ylabel("loss")
    ax_auc.set_title("held-out AUC during training")
    ax_auc.set_ylabel("AUC")
    for ax in (ax_loss, ax_auc):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()
    if handles:
        ax_auc.legend(handles, labels, loc="lower right", fontsize=9)
    return _save(fig, path)


def make_plots(summary: Sequence[dict[str, Any]], groups: dict[str, list[RunRecord]], out_dir: Path) -> list[Path]:
    """Write the three PNGs into `out_dir`; returns their paths (none when nothing finished)."""
    if not summary:
        return []
    colors = model_colors([s["model"] for s in summary])
    return [
        plot_auc_by_model(summary, colors, out_dir / "auc_by_model.png"),
        plot_auc_vs_params(summary, colors, out_dir / "auc_vs_params.png"),
        plot_curves(groups, colors, out_dir / "curves.png"),
    ]
