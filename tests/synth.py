"""A tiny synthetic prepared dataset (encoded format) for trainer tests: no real data needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from canctr.data.schema import Schema, save_split


def make_prepared(out: Path, *, n_train: int = 512, n_test: int = 256, n_item: int = 60, n_cate: int = 8,
                  width: int = 12, seed: int = 0) -> Path:
    """Clicks depend on whether the target's category appears in the history (a learnable co-action)."""
    rng = np.random.default_rng(seed)
    item_cate = rng.integers(1, n_cate, size=n_item)
    item_cate[0] = 0
    n_pair = 200

    def split(n: int, user_offset: int) -> dict[str, np.ndarray]:
        hist_len = rng.integers(0, width + 1, size=n)
        hist_item = rng.integers(1, n_item, size=(n, width))
        hist_item[np.arange(width)[None, :] >= hist_len[:, None]] = 0
        item = rng.integers(1, n_item, size=n)
        hit = (item_cate[hist_item] == item_cate[item][:, None]) & (hist_item > 0)
        p = np.where(hit.any(1), 0.8, 0.2)
        label = (rng.random(n) < p).astype(np.float32)
        neg = rng.integers(1, n_item, size=(n, width)) * (hist_item > 0)
        pair = rng.integers(1, n_pair, size=(n, width)) * (hist_item > 0)
        groups = user_offset + rng.integers(0, n // 4, size=n)
        return {
            "label": label, "group": groups, "user": np.where(user_offset == 0, groups % 50 + 1, 0),
            "item": item, "cate": item_cate[item], "hist_item": hist_item, "hist_cate": item_cate[hist_item],
            "hist_len": hist_len, "neg_hist_item": neg, "neg_hist_cate": item_cate[neg],
            "hist_item_pair": pair, "hist_cate_pair": pair % 40,
        }

    save_split(out, "train", split(n_train, 0))
    save_split(out, "test", split(n_test, 10_000))
    Schema(dataset="synthetic:test", protocol="last", seed=seed, max_len=width, n_user=51, n_item=n_item,
           n_cate=n_cate, n_item_pair=n_pair, n_cate_pair=40, splits={"train": n_train, "test": n_test}).save(
        out / "schema.json")
    return out
