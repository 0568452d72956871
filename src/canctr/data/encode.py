"""The encode + write step shared by every format: train-fitted vocabularies, the ragged store under the
`behaviour_spec` preset, the Cartesian pair keys, the vocabulary files and schema.json.

`encode_and_save` takes the samples of `samples.py` (`RawSplit`s in raw codes) and the id strings behind the
codes (`Names`):

1. vocabularies fitted on train only (`vocab.Vocab`: descending frequency, ties by first appearance,
   row-major over [target, history...] per sample), index 0 = pad/unknown; test ids unseen in train encode
   to 0 and are counted per field (schema.counts["oov"]);
2. each split written to the ragged store (`store.py`): user, item, cate (+ user side fields) per sample,
   hist_item / hist_cate (+ item_cates) as values + offsets;
3. vocab/<table>.json (raw id of every index), vocab/item_cates.npy when asked, and the sorted keys of the
   (target, history) pairs seen in train under vocab/pairs/ (`store.save_pair_keys`; models derive
   Cartesian ids from them); schema.json last, so its presence marks a complete directory.

`prepare_events` is the shared tail of the event-log formats (amazon, sequences, movielens, taobao all):
item categories, `samples.event_samples`, then `encode_and_save`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from canctr.data.samples import (
    PAD,
    Interactions,
    PrepareOptions,
    RawSplit,
    event_samples,
    item_categories,
    item_category_lists,
    with_target,
)
from canctr.data.schema import SPLITS, Schema, save_vocab
from canctr.data.spec import behaviour_spec
from canctr.data.store import Columns, save_pair_keys, write_split
from canctr.data.vocab import PAD_NAME, Vocab, distinct_sorted, n_distinct


@dataclass
class Names:
    """Raw id strings by code, for writing vocabularies."""

    user: list[str]
    item: list[str]
    cate: list[str]


@dataclass
class SideInfo:
    """Optional attributes that `encode_and_save` looks up per sample (by user / item code) and encodes.

    user_features: field name (e.g. "user_gender") -> ([n_user_codes] attribute code, -1 = unknown; the
        attribute names by code). Each becomes a user-side categorical field with its own train-fitted
        vocabulary vocab/<name>.json.
    item_cates: [n_item_codes, G] every category code of each item (column 0 = its `cate`), -1 padded;
        written per sample as the `item_cates` sequence group (reading the cate table) and per item as
        vocab/item_cates.npy [n_item, G] in cate indices.
    """

    user_features: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    item_cates: np.ndarray | None = None


def cartesian_keys(target: np.ndarray, hist: np.ndarray, hist_len: np.ndarray, n: int) -> np.ndarray:
    """[N] targets, ragged [H] history -> [H] int64 keys target * n + hist (-1 where either is unknown)."""
    tgt = np.repeat(target, hist_len)
    return np.where((tgt >= 0) & (hist >= 0), tgt * n + hist, PAD)


def exclude_test_pairs(train: RawSplit, test: RawSplit, n_item: int) -> tuple[RawSplit, int]:
    """The paper's generalisation test (arXiv v1; WSDM 2022 keeps only its claim, section 3.2): every
    (target item, history item) combination that occurs in the test set is removed from training, so the
    test scores combinations no model has seen together. Here the training history positions holding such
    a combination are dropped (with their categories); samples stay, so the training set keeps its size
    and label balance. Returns the new train split and the number of positions removed."""
    test_keys = distinct_sorted(_valid(cartesian_keys(test.item, test.hist_item, test.hist_len, n_item)))
    keys = cartesian_keys(train.item, train.hist_item, train.hist_len, n_item)
    if test_keys.size:
        drop = (keys >= 0) & (test_keys[np.searchsorted(test_keys, keys).clip(max=test_keys.size - 1)] == keys)
    else:
        drop = np.zeros(keys.size, bool)
    owner = np.repeat(np.arange(train.label.size), train.hist_len)
    keep = ~drop
    out = dataclasses.replace(
        train,
        hist_len=np.bincount(owner[keep], minlength=train.label.size).astype(train.hist_len.dtype),
        hist_item=train.hist_item[keep],
        hist_cate=train.hist_cate[keep],
    )
    return out, int(drop.sum())


def _valid(keys: np.ndarray) -> np.ndarray:
    return keys[keys >= 0]


def encode_and_save(
    out: str | os.PathLike,
    splits: dict[str, RawSplit],
    names: Names,
    *,
    dataset: str,
    protocol: str,
    opts: PrepareOptions,
    sources: list[dict[str, Any]],
    counts: dict[str, Any],
    options: dict[str, Any],
    side: SideInfo | None = None,
) -> Schema:
    """Steps 1-3 of the module docstring for `splits` ("train" and "test") -> the schema written to `out`.

    dataset, protocol, sources, counts and options are recorded in schema.json as given (counts gains the
    sample, positive-rate, split-user, oov, pair and longest-history counts); `side`: optional user fields
    and every category of each item.
    """
    for split in SPLITS:
        if splits[split].label.size == 0:
            hint = "; raise --test-fraction or use more users" if split == "test" else ""
            raise ValueError(f"no {split} samples were produced (users: {counts.get('users')}){hint}")
    side = side or SideInfo()
    if opts.exclude_test_pairs:
        splits = dict(splits)
        splits["train"], removed = exclude_test_pairs(splits["train"], splits["test"], len(names.item))
        counts = {**counts, "excluded_test_pair_positions": removed}
    tr = splits["train"]
    cate_seen = with_target(tr.cate, tr.hist_cate, tr.hist_len)
    if side.item_cates is not None:  # every category of the train targets counts too (after the first)
        cate_seen = np.concatenate([cate_seen, side.item_cates[tr.item].ravel()])
    vocab = {
        "user": Vocab.fit(tr.user),
        "item": Vocab.fit(with_target(tr.item, tr.hist_item, tr.hist_len)),
        "cate": Vocab.fit(cate_seen),
    }
    sizes = {"user": len(names.user), "item": len(names.item), "cate": len(names.cate)}
    for name, (codes, feature_names) in side.user_features.items():
        vocab[name], sizes[name] = Vocab.fit(codes[tr.user]), len(feature_names)
    tables = {k: vocab[k].table(n) for k, n in sizes.items()}
    bags = {}
    if side.item_cates is not None:
        bags["item_cates"] = ("cate", int(side.item_cates.shape[1]))
    spec = behaviour_spec(
        max_len=max(opts.max_len, opts.test_max_len or 0),
        user_fields=tuple(side.user_features),
        item_bags=bags,
    )
    oov: dict[str, dict[str, int]] = {}
    pair_keys: dict[str, np.ndarray] = {}
    out = Path(out)
    # file writes (GIL released) overlap the next split's encoding; leaving the block waits for them
    with ThreadPoolExecutor(max_workers=1) as writer:
        writes = []
        for split in SPLITS:
            s = splits[split]
            scalar = {
                "user": ("user", s.user),
                "item": ("item", s.item),
                "cate": ("cate", s.cate),
                **{name: (name, codes[s.user]) for name, (codes, _) in side.user_features.items()},
            }
            seq = {"hist_item": ("item", s.hist_item), "hist_cate": ("cate", s.hist_cate)}
            lengths = {"hist": s.hist_len}
            if side.item_cates is not None:  # the target's categories, -1 padded -> ragged valid entries
                per = side.item_cates[s.item]  # [N, G]
                seq["item_cates"] = ("cate", per[per >= 0])
                lengths["item_cates"] = np.count_nonzero(per >= 0, axis=1)
            oov[split] = {}
            encoded = {}
            for name, (voc, codes) in {**scalar, **seq}.items():
                enc = tables[voc][codes]  # dense id codes: a table lookup (code -1 reads the last entry, 0)
                oov[split][name] = int(np.count_nonzero((codes >= 0) & (enc == 0)))
                encoded[name] = enc
            if split == "train":
                n_item, n_cate = len(vocab["item"]), len(vocab["cate"])
                for pair, target, hist, n in (("item>hist_item", "item", "hist_item", n_item),
                                              ("cate>hist_cate", "cate", "hist_cate", n_cate)):
                    keys = cartesian_keys(encoded[target], encoded[hist], s.hist_len, n)
                    pair_keys[pair] = distinct_sorted(keys[(keys >= 0) & (keys % n > 0) & (keys // n > 0)])
            cols = Columns.from_lengths(
                spec,
                label=s.label.astype(np.float32),
                group=s.group.astype(np.int64),
                ids={k: encoded[k] for k in scalar},
                lengths=lengths,
                flat={k: encoded[k] for k in seq},
                extras=dict(s.values),
            )
            writes.append(writer.submit(write_split, out, split, spec, cols))
        for w in writes:
            w.result()  # re-raises a failed write here
    named = {"user": names.user, "item": names.item, "cate": names.cate}
    named |= {name: feature_names for name, (_, feature_names) in side.user_features.items()}
    for field_name, field_names in named.items():
        save_vocab(
            out,
            field_name,
            [PAD_NAME, *np.asarray(field_names, dtype=object)[vocab[field_name].codes].tolist()],
        )
    if side.item_cates is not None:  # [n_item, G] cate indices of every item index, row 0 = padding
        per_item = tables["cate"][side.item_cates[vocab["item"].codes]]
        save_npy(out / "vocab" / "item_cates.npy", np.concatenate([np.zeros_like(per_item[:1]), per_item]))
    for pair, keys in pair_keys.items():
        save_pair_keys(out, pair, keys)

    counts = {
        **counts,
        "samples": {k: int(v.label.size) for k, v in splits.items()},
        "positive_rate": {k: round(float(v.label.mean()), 6) for k, v in splits.items()},
        "split_users": {k: n_distinct(v.group) for k, v in splits.items()},
        "oov": oov,
        "pairs": {k: int(v.size) for k, v in pair_keys.items()},
        "max_hist_len": {k: int(v.hist_len.max(initial=0)) for k, v in splits.items()},
    }
    schema = Schema(
        dataset=dataset,
        protocol=protocol,
        seed=opts.seed,
        spec=spec,
        vocab={k: len(v) for k, v in vocab.items()},
        pairs={k: int(v.size) + 1 for k, v in pair_keys.items()},
        splits={k: int(v.label.size) for k, v in splits.items()},
        sources=sources,
        counts=counts,
        options=options,
    )
    schema.save(out / "schema.json")  # written last: its presence marks a complete directory
    return schema


def save_npy(path: Path, arr: np.ndarray) -> None:
    """np.save through a temporary file + os.replace (readers never see a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def describe_source(path: str | os.PathLike) -> dict[str, Any]:
    """{path, sha256, bytes} of an input file."""
    with open(path, "rb") as f:
        if hasattr(hashlib, "file_digest"):  # Python >= 3.11: a C loop, GIL released
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        else:
            h = hashlib.sha256()
            while chunk := f.read(1 << 20):
                h.update(chunk)
            digest = h.hexdigest()
    return {"path": str(path), "sha256": digest, "bytes": os.path.getsize(path)}


def dataset_name(kind: str, path: str | os.PathLike) -> str:
    """"<kind>:<file name without .gz/.json/.txt/.csv>", e.g. "sequences:Beauty"."""
    name = Path(path).name
    for suffix in (".gz", ".json", ".txt", ".csv"):
        name = name.removesuffix(suffix)
    return f"{kind}:{name}"


def prepare_events(
    out: str | os.PathLike,
    log: Interactions,
    cate_of: dict[int, str],
    opts: PrepareOptions,
    *,
    kind: str,
    paths: list[str | os.PathLike],
    skipped_rows: dict[str, int],
    options: dict[str, Any],
    sources: list[dict[str, Any]] | None = None,
    dataset: str | None = None,
    protocol: str | None = None,
    sampling: dict[str, Any] | None = None,
    all_cates: dict[int, list[str]] | None = None,
    side: SideInfo | None = None,
    counts: dict[str, Any] | None = None,
) -> Schema:
    """Shared tail of the event-log pipelines: categories, samples, encoding, files.

    dataset defaults to "<kind>:<name of paths[0]>", protocol to opts.protocol; `sampling` holds
    keyword arguments of `event_samples`; `all_cates` (item code -> every category, the first being
    `cate_of`'s) adds `item_cates`; `side` user features; `counts` extra schema counts.
    """
    item_cate, cates, no_cate = item_categories(log.items, cate_of)
    splits, event_stats = event_samples(log, item_cate, opts, **(sampling or {}))
    event_stats |= {"items_without_category": no_cate, "skipped_rows": skipped_rows, **(counts or {})}
    if all_cates is not None:
        multi = item_category_lists(item_cate, cates, all_cates)
        side = dataclasses.replace(side or SideInfo(), item_cates=multi)
    return encode_and_save(
        out,
        splits,
        Names(log.users.names, log.items.names, cates.names),
        dataset=dataset or dataset_name(kind, paths[0]),
        protocol=protocol or opts.protocol,
        opts=opts,
        sources=sources or [describe_source(p) for p in paths],
        counts=event_stats,
        options=options,
        side=side,
    )


__all__ = ["Names", "SideInfo", "dataset_name", "describe_source", "encode_and_save", "cartesian_keys",
           "prepare_events", "save_npy"]
