"""CTR metrics on numpy arrays, fully vectorised (no per-user Python loop); numpy only, so that data
preparation (the synthetic world's Bayes AUC) and training share them without importing each other.

AUC uses the rank-sum (Mann-Whitney) form with average ranks for ties. GAUC is DIN's impression-weighted
mean of per-user AUCs over users that have both a positive and a negative (others are skipped, as DIN does).
"""

from __future__ import annotations

import numpy as np


def _average_ranks(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by (keys, values) and give each element its 1-based rank *within its key*, ties averaged.

    Returns (order, ranks) where ranks[i] is the rank of element order[i].
    """
    order = np.lexsort((values, keys))
    k, v = keys[order], values[order]
    n = len(order)
    # start of each key block and of each run of equal (key, value)
    new_key = np.empty(n, dtype=bool)
    new_key[0] = True
    new_key[1:] = k[1:] != k[:-1]
    new_run = new_key.copy()
    new_run[1:] |= v[1:] != v[:-1]
    pos = np.arange(n)
    key_start = np.maximum.accumulate(np.where(new_key, pos, 0))
    run_id = np.cumsum(new_run) - 1
    run_start = pos[new_run]
    run_len = np.diff(np.append(run_start, n))
    # average of 1-based positions within the key block over the tie run
    first = run_start - key_start[run_start] + 1
    avg = first + (run_len - 1) / 2.0
    return order, avg[run_id]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Global ROC AUC; NaN when only one class is present."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order, ranks = _average_ranks(np.zeros(labels.size, dtype=np.int8), scores)
    pos_rank_sum = ranks[labels[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[float, int]:
    """Impression-weighted per-group AUC (DIN). Returns (gauc, number of groups used)."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    groups = np.asarray(groups).ravel()
    if labels.size == 0:
        return float("nan"), 0
    order, ranks = _average_ranks(groups, scores)
    _, g = np.unique(groups[order], return_inverse=True)
    lab = labels[order]
    n = np.bincount(g).astype(np.float64)
    n_pos = np.bincount(g, weights=lab).astype(np.float64)
    n_neg = n - n_pos
    pos_rank = np.bincount(g, weights=np.where(lab, ranks, 0.0))
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return float("nan"), 0
    per = (pos_rank[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    w = n[ok]
    return float((per * w).sum() / w.sum()), int(ok.sum())


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)).mean())


def ctr_metrics(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    g, n_groups = gauc(labels, probs, groups)
    return {
        "auc": auc(labels, probs),
        "gauc": g,
        "gauc_users": n_groups,
        "logloss": logloss(labels, probs),
        "n_samples": int(np.asarray(labels).size),
        "positive_rate": (
            float(np.asarray(labels, dtype=np.float64).mean()) if np.asarray(labels).size else float("nan")
        ),
    }


__all__ = ["auc", "ctr_metrics", "gauc", "logloss"]
