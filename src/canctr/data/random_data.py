"""Random data of any feature spec, written to the ragged store in bounded memory.

For benchmarks and scale tests (many samples, any field layout), not for model quality: ids are drawn
Zipf-like per table, sequence lengths uniformly up to each group's max_len, dense values normal, and the
label from a small known rule, so a model has something to learn: the click probability rises with how
many positions of the first sequence group share the id of the first co-action pair's induction field
(the paper's "co-action" signal), or with the first categorical field's id parity when there is none.

    write_random_dataset(spec, out, n_train=1_000_000, n_test=100_000, vocab={"item": 100_000, ...})
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from canctr.data.schema import Schema
from canctr.data.spec import FeatureSpec
from canctr.data.store import Columns, SplitWriter, pair_keys, save_pair_keys

DEFAULT_VOCAB = 1000


def _zipf_ids(rng: np.random.Generator, n_rows: int, size: int, a: float = 1.1) -> np.ndarray:
    """[size] ids in 1..n_rows-1, small ids most frequent."""
    x = rng.zipf(a, size) % max(n_rows - 1, 1)
    return (x + 1).astype(np.int32)


def random_columns(spec: FeatureSpec, vocab: dict[str, int], n: int, rng: np.random.Generator) -> Columns:
    """One chunk of n random samples of `spec`."""
    ids = {f.name: _zipf_ids(rng, vocab[f.table], n) for f in spec.categorical}
    offsets, values, lengths = {}, {}, {}
    for g in spec.sequences:
        lengths[g.name] = rng.integers(0, g.max_len + 1, n)
        offsets[g.name] = np.concatenate([[0], np.cumsum(lengths[g.name])]).astype(np.int64)
        total = int(offsets[g.name][-1])
        for f in spec.group_fields(g.name):
            values[f.name] = _zipf_ids(rng, vocab[f.table], total)
    logit = np.full(n, -0.5)
    pair = next((p for p in spec.coaction if spec.field(p.feed).kind == "sequence"), None)
    if pair is not None:
        g = spec.field(pair.feed).group
        owner = np.repeat(np.arange(n), lengths[g])
        same = (values[pair.feed] % 16) == (ids[pair.induction][owner] % 16)
        logit += 0.5 * np.bincount(owner[same], minlength=n) - 0.05 * lengths[g]
    elif spec.categorical:
        logit += np.where(ids[spec.categorical[0].name] % 2 == 0, 1.0, -1.0)
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    dense = rng.standard_normal((n, len(spec.dense))).astype(np.float32) if spec.dense else None
    group = rng.integers(0, max(n // 8, 1), n).astype(np.int64)
    return Columns(label=label, group=group, ids=ids, offsets=offsets, values=values, dense=dense)


def write_random_dataset(
    spec: FeatureSpec,
    out: str | os.PathLike,
    *,
    n_train: int,
    n_test: int,
    vocab: dict[str, int] | None = None,
    seed: int = 0,
    chunk: int = 200_000,
    progress: bool = False,
) -> Schema:
    """Write train/test splits of random samples, `chunk` rows at a time (memory does not grow with n)."""
    out = Path(out)
    sizes = {t: (vocab or {}).get(t, DEFAULT_VOCAB) for t in spec.tables()}
    rng = np.random.default_rng(seed)
    keys = {p.name: np.zeros(0, np.int64) for p in spec.cartesian}  # distinct keys so far
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_train + n_test, unit="sample", desc="generate")
    for split, n in (("train", n_train), ("test", n_test)):
        with SplitWriter(out, split, spec) as w:
            for start in range(0, n, chunk):
                cols = random_columns(spec, sizes, min(chunk, n - start), rng)
                w.append(cols)
                if split == "train":
                    for p in spec.cartesian:
                        rows_feed = sizes[spec.field(p.feed).table]
                        keys[p.name] = np.union1d(keys[p.name], pair_keys(spec, cols, p.induction, p.feed, rows_feed))
                if bar is not None:
                    bar.update(cols.n)
    if bar is not None:
        bar.close()
    pairs = {}
    for name, distinct in keys.items():
        save_pair_keys(out, name, distinct)
        pairs[name] = int(distinct.size) + 1
    schema = Schema(dataset=f"random:{n_train}", protocol="random", seed=seed, spec=spec, vocab=sizes, pairs=pairs,
                    splits={"train": n_train, "test": n_test}, options={"chunk": chunk})
    schema.save(out / "schema.json")
    return schema
