"""A tiny synthetic prepared dataset (the Amazon preset, ragged store) for trainer tests: no real data needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from canctr.data.schema import Schema
from canctr.data.spec import behaviour_spec
from canctr.data.store import Columns, save_pair_keys, write_split


def make_prepared(out: Path, *, n_train: int = 512, n_test: int = 256, n_item: int = 60, n_cate: int = 8,
                  width: int = 12, seed: int = 0) -> Path:
    """Clicks depend on whether the target's category appears in the history (a learnable co-action)."""
    rng = np.random.default_rng(seed)
    item_cate = rng.integers(1, n_cate, size=n_item)
    item_cate[0] = 0
    spec = behaviour_spec(max_len=width)
    train_hist: list[np.ndarray] = []

    def split(n: int, user_offset: int) -> Columns:
        hist_len = rng.integers(0, width + 1, size=n)
        hist = rng.integers(1, n_item, size=int(hist_len.sum()))
        item = rng.integers(1, n_item, size=n)
        owner = np.repeat(np.arange(n), hist_len)
        hit = np.zeros(n, bool)
        hit[owner[item_cate[hist] == item_cate[item][owner]]] = True
        label = (rng.random(n) < np.where(hit, 0.8, 0.2)).astype(np.float32)
        groups = user_offset + rng.integers(0, n // 4, size=n)
        if user_offset == 0:
            train_hist.append((item, hist, hist_len))
        return Columns.from_lengths(
            spec, label=label, group=groups.astype(np.int64),
            ids={"user": np.where(user_offset == 0, groups % 50 + 1, 0).astype(np.int32),
                 "item": item.astype(np.int32), "cate": item_cate[item].astype(np.int32)},
            lengths={"hist": hist_len},
            flat={"hist_item": hist.astype(np.int32), "hist_cate": item_cate[hist].astype(np.int32)},
        )

    write_split(out, "train", spec, split(n_train, 0))
    write_split(out, "test", spec, split(n_test, 10_000))
    item, hist, hist_len = train_hist[0]
    pairs = {}
    for name, t, h, n in (("item>hist_item", item, hist, n_item),
                          ("cate>hist_cate", item_cate[item], item_cate[hist], n_cate)):
        keys = np.unique(np.repeat(t, hist_len).astype(np.int64) * n + h)
        save_pair_keys(out, name, keys)
        pairs[name] = int(keys.size) + 1
    Schema(dataset="synthetic:test", protocol="last", seed=seed, spec=spec,
           vocab={"user": 51, "item": n_item, "cate": n_cate}, pairs=pairs,
           splits={"train": n_train, "test": n_test}).save(out / "schema.json")
    return out
