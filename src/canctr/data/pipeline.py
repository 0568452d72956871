"""Raw events / DIEN samples -> the encoded format of `schema.py` (can-paper.md §3.2, the DIEN recipe).

After parsing, every stage is numpy over whole arrays (no per-sample Python):

1. per-user time order: a stable lexsort on (user, time, file position); timestamp ties keep file order
   and are counted;
2. targets: `last` takes each user's last event (DIEN), `all` every event after the first (DIN). Each
   target gives a positive and one negative whose item is drawn uniformly over all event rows
   (popularity-proportional, DIEN's choice) and differs from the positive; history = the user's earlier
   events, the most recent `max_len` in time order;
3. users go to test with a seeded Bernoulli(test_fraction) (DIEN's split_by_user.py), so all of a user's
   samples share one split;
4. one auxiliary negative per history position (DIEN's auxiliary loss), drawn the same way;
5. vocabularies fitted on train only: descending frequency, ties by first appearance (row-major over
   [target, history...] per sample), index 0 = pad/unknown; Cartesian (target, history) pair ids likewise;
6. `save_split` / `save_vocab` / schema.json, plus vocab/{item,cate}_pair.npy ([K+1, 2] vocab indices of
   each pair id, row 0 = padding) so new data can be encoded consistently.

Before encoding, ids are "raw codes" (indices into the parsers' name lists; -1 = none) and histories are
ragged: flat [H] arrays of the valid positions in row-major order plus hist_len [N]; only the final encoded
arrays are padded to [N, W]. N samples, H = sum(hist_len), W history width, E events.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from canctr.data import readers
from canctr.data.readers import DEFAULT_CATE, Interactions, Interner
from canctr.data.schema import SPLITS, Schema, save_split, save_vocab

PAD = -1  # raw-code padding; encodes to index 0
PAD_NAME = "<pad/unk>"
VOCAB_PICKLE_FIELDS = {"uid": "user", "mid": "item", "cat": "cate"}  # DIEN pickle name prefix -> field


@dataclass(frozen=True)
class PrepareOptions:
    """Sampling options shared by the prepare commands (`dien` ignores `protocol`: its files fix it)."""

    protocol: str = "last"  # "last" (DIEN: each user's last event) | "all" (DIN: every event after the first)
    max_len: int = 100  # most recent history positions kept in train
    test_max_len: int | None = None  # same for test; None = max_len (CAN's code keeps test histories whole)
    test_fraction: float = 0.1  # per-user probability of the test split
    seed: int = 3
    skip_bad_rows: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in ("last", "all"):
            raise ValueError(f"protocol must be 'last' or 'all', got {self.protocol!r}")
        if self.max_len < 1 or (self.test_max_len is not None and self.test_max_len < 1):
            raise ValueError("max_len and test_max_len must be >= 1")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")

    def width(self, split: str) -> int:
        return self.max_len if split == "train" or self.test_max_len is None else self.test_max_len


@dataclass
class RawSplit:
    """One split's samples in raw codes, histories ragged (sample i owns the next hist_len[i] entries)."""

    label: np.ndarray  # [N] int8
    group: np.ndarray  # [N] int64 user code (dense over all users)
    user: np.ndarray  # [N] user code
    item: np.ndarray  # [N]
    cate: np.ndarray  # [N]
    hist_len: np.ndarray  # [N]
    hist_item: np.ndarray  # [H] oldest first within each sample
    hist_cate: np.ndarray  # [H]


@dataclass
class Names:
    """Raw id strings by code, for writing vocabularies."""

    user: list[str]
    item: list[str]
    cate: list[str]


# ------------------------------------------------------------------------------------ array helpers


def _rngs(seed: int) -> tuple[np.random.Generator, ...]:
    """Independent streams for (split, target negatives, history negatives): changing one use of randomness
    (e.g. the protocol) does not shift the others."""
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


def _lookup(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """table[codes], keeping PAD where codes is PAD."""
    return np.where(codes >= 0, table[np.maximum(codes, 0)], PAD)


def _ragged_arange(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + l) for s, l in zip(start, length)) without a Python loop: [sum(length)]."""
    excl = np.cumsum(length) - length  # [N] where each row begins in the output
    return np.arange(int(length.sum())) - np.repeat(excl - start, length)


def _with_target(target: np.ndarray, hist: np.ndarray, hist_len: np.ndarray) -> np.ndarray:
    """[N], ragged [H] -> [N + H] row-major [target, hist...] per sample: the order of first appearance."""
    out = np.empty(target.size + hist.size, np.int64)
    heads = np.cumsum(hist_len + 1) - (hist_len + 1)  # [N] position of each sample's target
    is_head = np.zeros(out.size, bool)
    is_head[heads] = True
    out[heads] = target
    out[~is_head] = hist
    return out


def _padding_index(hist_len: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
    """Shape [N, W] (W = max(1, max hist_len)) and, for each ragged entry, its flat index in that matrix."""
    width = max(int(hist_len.max(initial=0)), 1)
    rows = np.repeat(np.arange(hist_len.size), hist_len)
    cols = _ragged_arange(np.zeros_like(hist_len), hist_len)
    return (hist_len.size, width), rows * width + cols


def _padded(flat: np.ndarray, shape: tuple[int, int], index: np.ndarray) -> np.ndarray:
    """Ragged [H] -> [N, W] left-aligned, 0 beyond hist_len (see _padding_index)."""
    out = np.zeros(shape, flat.dtype)
    out.ravel()[index] = flat
    return out


def sample_excluding(pool: np.ndarray, exclude: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each exclude[i], a uniform draw from `pool` (so frequency-proportional) that differs from it.

    Vectorised rejection: redraw only the collisions, round after round.
    """
    if exclude.size and not np.any(pool != pool[0]):
        raise ValueError("cannot draw negatives: the item pool has fewer than 2 distinct items")
    out = pool[rng.integers(0, pool.size, size=exclude.size)]
    bad = np.flatnonzero(out == exclude)
    for _ in range(1000):
        if bad.size == 0:
            return out
        out[bad] = pool[rng.integers(0, pool.size, size=bad.size)]
        bad = bad[out[bad] == exclude[bad]]
    raise ValueError("cannot draw negatives: one item dominates the pool (1000 rejection rounds)")


@dataclass
class Vocab:
    """Raw codes (or pair keys) in index order 1..K; anything else encodes to 0."""

    codes: np.ndarray  # [K] int64

    def __post_init__(self) -> None:
        self._sorter = np.argsort(self.codes)
        self._sorted = self.codes[self._sorter]

    @classmethod
    def fit(cls, in_order: np.ndarray) -> Vocab:
        """Codes >= 0 in order of appearance -> sorted by descending count, ties by first appearance."""
        v = in_order[in_order >= 0]
        uniq, first, count = np.unique(v, return_index=True, return_counts=True)
        return cls(uniq[np.lexsort((first, -count))])

    def __len__(self) -> int:
        return int(self.codes.size) + 1  # + index 0

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Raw codes (any shape) -> int32 indices; unknown or negative -> 0."""
        if self.codes.size == 0:
            return np.zeros(raw.shape, np.int32)
        pos = np.searchsorted(self._sorted, raw).clip(max=self.codes.size - 1)
        hit = (raw >= 0) & (self._sorted[pos] == raw)
        return np.where(hit, self._sorter[pos] + 1, 0).astype(np.int32)

    def table(self, n_codes: int) -> np.ndarray:
        """[n_codes + 1] int32 lookup table for dense codes 0..n_codes-1; its last entry (code -1) is 0."""
        lut = np.zeros(n_codes + 1, np.int32)
        lut[self.codes] = np.arange(1, self.codes.size + 1, dtype=np.int32)
        return lut


def _pair_keys(target: np.ndarray, hist: np.ndarray, hist_len: np.ndarray, n: int) -> np.ndarray:
    """[N] targets, ragged [H] history -> [H] int64 keys target * n + hist (-1 where either is unknown)."""
    tgt = np.repeat(target, hist_len)
    return np.where((tgt >= 0) & (hist >= 0), tgt * n + hist, PAD)


# ------------------------------------------------------------------------------------ sample building


def event_samples(
    log: Interactions, item_cate: np.ndarray, opts: PrepareOptions
) -> tuple[dict[str, RawSplit], dict[str, Any]]:
    """Stages 1-3 of the module docstring. item_cate: [n_items] cate code of every item code."""
    rng_split, rng_neg, _ = _rngs(opts.seed)
    n_events, n_users = log.item.size, len(log.users)
    # 1. per-user time order; np.lexsort's last key is the primary one
    order = np.lexsort((np.arange(n_events), log.time, log.user))
    user, item, time = log.user[order], log.item[order], log.time[order]
    first = np.r_[True, user[1:] != user[:-1]]
    starts = np.flatnonzero(first)
    n_ev = np.diff(np.r_[starts, n_events])  # [U'] events of each user that has any
    pos = np.arange(n_events) - np.repeat(starts, n_ev)  # [E] index of the event within its user
    size = np.repeat(n_ev, n_ev)  # [E] that user's event count
    ties = int(np.count_nonzero(~first[1:] & (time[1:] == time[:-1])))

    # 2. target rows (into the sorted arrays), grouped by user and in time order
    if opts.protocol == "last":
        targets = np.flatnonzero((pos == size - 1) & (size >= 2))
    else:
        targets = np.flatnonzero(pos >= 1)
    # 3. split by user: one draw per user code, so the split does not depend on the protocol
    is_test = rng_split.random(n_users) < opts.test_fraction

    splits = {}
    for split in SPLITS:
        t = targets[is_test[user[targets]] == (split == "test")]
        neg = sample_excluding(log.item, item[t], rng_neg)  # pool: every event row
        # two samples per target, DIEN's order: negative (label 0) then positive (label 1); both get the
        # target's history, the most recent earlier events of the user
        t2 = np.repeat(t, 2)
        hist_len = np.minimum(pos[t2], opts.width(split))
        hist_item = item[_ragged_arange(t2 - hist_len, hist_len)]
        items = np.stack([neg, item[t]], axis=1).ravel()
        splits[split] = RawSplit(
            label=np.tile(np.array([0, 1], np.int8), t.size),
            group=user[t2],
            user=user[t2],
            item=items,
            cate=item_cate[items],
            hist_len=hist_len,
            hist_item=hist_item,
            hist_cate=item_cate[hist_item],
        )
    counts = {
        "users": n_users,
        "items": int(np.unique(log.item).size),
        "categories": int(np.unique(item_cate[np.unique(log.item)]).size),
        "events": int(n_events),
        "users_lt2_events": int(n_users - np.count_nonzero(n_ev >= 2)),
        "timestamp_ties": ties,
    }
    return splits, counts


def dien_split(s: readers.DienSamples, width: int, keep: np.ndarray | None = None) -> RawSplit:
    """DIEN sample rows (optionally only rows `keep`) -> RawSplit with the most recent `width` history."""
    rows = np.arange(s.label.size) if keep is None else np.flatnonzero(keep)
    length = np.diff(s.offsets)[rows]
    hist_len = np.minimum(length, width)
    start = s.offsets[rows] + length - hist_len
    flat = _ragged_arange(start, hist_len)
    return RawSplit(
        label=s.label[rows],
        group=s.user[rows],
        user=s.user[rows],
        item=s.item[rows],
        cate=s.cate[rows],
        hist_len=hist_len,
        hist_item=s.hist_item[flat],
        hist_cate=s.hist_cate[flat],
    )


# ------------------------------------------------------------------------------------ encode + save


def encode_and_save(
    out: str | os.PathLike,
    splits: dict[str, RawSplit],
    names: Names,
    item_cate: np.ndarray,
    pool: np.ndarray,
    *,
    dataset: str,
    protocol: str,
    opts: PrepareOptions,
    sources: list[dict[str, Any]],
    counts: dict[str, Any],
    options: dict[str, Any],
) -> Schema:
    """Stages 4-6: history negatives, train-fitted vocabularies and pair ids, files + schema.json."""
    for split in SPLITS:
        if splits[split].label.size == 0:
            hint = "; raise --test-fraction or use more users" if split == "test" else ""
            raise ValueError(f"no {split} samples were produced (users: {counts.get('users')}){hint}")
    _, _, rng_hist = _rngs(opts.seed)
    n_item, n_cate = len(names.item), len(names.cate)

    tr = splits["train"]
    vocab = {
        "user": Vocab.fit(tr.user),
        "item": Vocab.fit(_with_target(tr.item, tr.hist_item, tr.hist_len)),
        "cate": Vocab.fit(_with_target(tr.cate, tr.hist_cate, tr.hist_len)),
        "item_pair": Vocab.fit(_pair_keys(tr.item, tr.hist_item, tr.hist_len, n_item)),
        "cate_pair": Vocab.fit(_pair_keys(tr.cate, tr.hist_cate, tr.hist_len, n_cate)),
    }

    tables = {
        k: vocab[k].table(n) for k, n in (("user", len(names.user)), ("item", n_item), ("cate", n_cate))
    }
    oov: dict[str, dict[str, int]] = {}
    out = Path(out)
    for split in SPLITS:
        s = splits[split]
        neg_item = sample_excluding(pool, s.hist_item, rng_hist)  # [H] one per history position
        raw = {
            "user": ("user", s.user),
            "item": ("item", s.item),
            "cate": ("cate", s.cate),
            "hist_item": ("item", s.hist_item),
            "hist_cate": ("cate", s.hist_cate),
            "neg_hist_item": ("item", neg_item),
            "neg_hist_cate": ("cate", _lookup(item_cate, neg_item)),
            "hist_item_pair": ("item_pair", _pair_keys(s.item, s.hist_item, s.hist_len, n_item)),
            "hist_cate_pair": ("cate_pair", _pair_keys(s.cate, s.hist_cate, s.hist_len, n_cate)),
        }
        arrays = {"label": s.label.astype(np.float32), "group": s.group, "hist_len": s.hist_len}
        shape, index = _padding_index(s.hist_len)
        oov[split] = {}
        for name, (voc, codes) in raw.items():
            # dense id fields: a table lookup (code -1 reads the table's last entry, 0); pairs: searchsorted
            encoded = tables[voc][codes] if voc in tables else vocab[voc].encode(codes)
            oov[split][name] = int(np.count_nonzero((codes >= 0) & (encoded == 0)))
            arrays[name] = (
                _padded(encoded, shape, index) if name.startswith(("hist_", "neg_hist_")) else encoded
            )
        save_split(out, split, arrays)

    for field, field_names in (("user", names.user), ("item", names.item), ("cate", names.cate)):
        save_vocab(
            out, field, [PAD_NAME, *np.asarray(field_names, dtype=object)[vocab[field].codes].tolist()]
        )
    for field, base, n in (("item_pair", "item", n_item), ("cate_pair", "cate", n_cate)):
        keys = vocab[field].codes
        pairs = np.stack([vocab[base].encode(keys // n), vocab[base].encode(keys % n)], axis=1)
        _save_npy(out / "vocab" / f"{field}.npy", np.concatenate([np.zeros((1, 2), np.int32), pairs]))

    counts = {
        **counts,
        "samples": {k: int(v.label.size) for k, v in splits.items()},
        "positive_rate": {k: round(float(v.label.mean()), 6) for k, v in splits.items()},
        "split_users": {k: int(np.unique(v.group).size) for k, v in splits.items()},
        "oov": oov,
        "pairs": {"item_pair": len(vocab["item_pair"]) - 1, "cate_pair": len(vocab["cate_pair"]) - 1},
    }
    schema = Schema(
        dataset=dataset,
        protocol=protocol,
        seed=opts.seed,
        max_len=max(int(tr.hist_len.max(initial=0)), 1),  # = the train arrays' width
        n_user=len(vocab["user"]),
        n_item=len(vocab["item"]),
        n_cate=len(vocab["cate"]),
        n_item_pair=len(vocab["item_pair"]),
        n_cate_pair=len(vocab["cate_pair"]),
        splits={k: int(v.label.size) for k, v in splits.items()},
        sources=sources,
        counts=counts,
        options=options,
    )
    schema.save(out / "schema.json")  # written last: its presence marks a complete directory
    return schema


def _save_npy(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def describe_source(path: str | os.PathLike) -> dict[str, Any]:
    """{path, sha256, bytes} of an input file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return {"path": str(path), "sha256": h.hexdigest(), "bytes": os.path.getsize(path)}


def _dataset_name(kind: str, path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".gz", ".json", ".txt"):
        name = name.removesuffix(suffix)
    return f"{kind}:{name}"


def _item_categories(items: Interner, cate_of: dict[int, str]) -> tuple[np.ndarray, Interner, int]:
    """[n_items] cate code per item code; items without a category get DEFAULT_CATE (DIEN), counted."""
    cates = Interner()
    default = cates(DEFAULT_CATE) if len(cate_of) < len(items) else None
    table = np.array([cates(cate_of[c]) if c in cate_of else default for c in range(len(items))], np.int64)
    return table, cates, len(items) - len(cate_of)


# ------------------------------------------------------------------------------------ public entry points


def prepare_amazon(
    reviews: str | os.PathLike, meta: str | os.PathLike, out: str | os.PathLike, opts: PrepareOptions
) -> Schema:
    """McAuley 2014 `reviews_<Cat>[_5].json[.gz]` + `meta_<Cat>.json[.gz]` -> prepared directory `out`."""
    log = readers.read_amazon_reviews(reviews, skip_bad_rows=opts.skip_bad_rows)
    cate_of, skipped_meta = readers.read_amazon_meta(meta, log.items.index, skip_bad_rows=opts.skip_bad_rows)
    return _prepare_events(
        out, log, cate_of, opts, kind="amazon", paths=[reviews, meta],
        skipped_rows={**log.skipped_rows, **skipped_meta}, options=dataclasses.asdict(opts),
    )


def prepare_sequences(
    sequences: str | os.PathLike,
    attributes: str | os.PathLike,
    out: str | os.PathLike,
    opts: PrepareOptions,
    *,
    times: str | os.PathLike | None = None,
    category_rule: str = "last",
) -> Schema:
    """S3-Rec `<Name>.txt[.gz]` + `<Name>_item2attributes.json[.gz]` (+ times) -> prepared directory `out`.

    Category = the last attribute id (deepest category of the last path) or, with category_rule="first",
    the first (the brand when present). Without `times`, time = position in the line.
    """
    if category_rule not in ("last", "first"):
        raise ValueError(f"category_rule must be 'last' or 'first', got {category_rule!r}")
    log = readers.read_sequences(sequences, times, skip_bad_rows=opts.skip_bad_rows)
    attrs = readers.read_item_attributes(attributes)
    pick = -1 if category_rule == "last" else 0
    cate_of = {code: str(a[pick]) for code, name in enumerate(log.items.names) if (a := attrs.get(int(name)))}
    return _prepare_events(
        out, log, cate_of, opts, kind="sequences",
        paths=[sequences, attributes] + ([times] if times is not None else []), skipped_rows=log.skipped_rows,
        options={**dataclasses.asdict(opts), "category_rule": category_rule, "times": times is not None},
    )


def _prepare_events(
    out: str | os.PathLike,
    log: Interactions,
    cate_of: dict[int, str],
    opts: PrepareOptions,
    *,
    kind: str,
    paths: list[str | os.PathLike],
    skipped_rows: dict[str, int],
    options: dict[str, Any],
) -> Schema:
    """Shared tail of the event-log pipelines: categories, samples, encoding, files. paths[0] names the dataset."""
    item_cate, cates, no_cate = _item_categories(log.items, cate_of)
    splits, counts = event_samples(log, item_cate, opts)
    counts |= {"items_without_category": no_cate, "skipped_rows": skipped_rows}
    return encode_and_save(
        out,
        splits,
        Names(log.users.names, log.items.names, cates.names),
        item_cate,
        log.item,
        dataset=_dataset_name(kind, paths[0]),
        protocol=opts.protocol,
        opts=opts,
        sources=[describe_source(p) for p in paths],
        counts=counts,
        options=options,
    )


def prepare_dien(
    directory: str | os.PathLike,
    out: str | os.PathLike,
    opts: PrepareOptions,
    *,
    vocab_pickles: list[str | os.PathLike] | tuple = (),
) -> Schema:
    """A folder of DIEN's processed files -> prepared directory `out`.

    Samples: `local_train_splitByUser` + `local_test_splitByUser`, or else `local_test` split by user
    like DIEN's split_by_user.py (seeded Bernoulli(test_fraction) per user, so a user's neg+pos pair stays
    together; DIEN's `local_train` only ever served as history and is not read). Optional `reviews-info`
    is the popularity pool for auxiliary negatives (default: every target and history item of train);
    optional `item-info` gives item categories (default: as seen in the samples). `*voc*.pkl` files in
    the folder, plus `vocab_pickles`, are only reported: vocabularies are always refitted on train.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such directory")
    users, items, cates = Interner(), Interner(), Interner()
    skipped: dict[str, int] = {}
    kw = {"skip_bad_rows": opts.skip_bad_rows, "skipped": skipped}

    train_file, test_file = d / "local_train_splitByUser", d / "local_test_splitByUser"
    if train_file.exists() or test_file.exists():
        used = [train_file, test_file]
        samples = [readers.read_dien_samples(p, users, items, cates, **kw) for p in used]
        train_s, test_s = samples
        splits = {
            "train": dien_split(train_s, opts.width("train")),
            "test": dien_split(test_s, opts.width("test")),
        }
        extra: dict[str, Any] = {"dien_samples": "splitByUser files"}
    elif (d / "local_test").exists():
        used = [d / "local_test"]
        samples = [s := readers.read_dien_samples(d / "local_test", users, items, cates, **kw)]
        rng_split, _, _ = _rngs(opts.seed)
        is_test = (rng_split.random(len(users)) < opts.test_fraction)[s.user]  # [N] one draw per user
        splits = {
            "train": dien_split(s, opts.width("train"), ~is_test),
            "test": dien_split(s, opts.width("test"), is_test),
        }
        extra = {"dien_samples": "local_test split by user"}
    else:
        raise FileNotFoundError(f"{d}: needs local_train_splitByUser + local_test_splitByUser, or local_test")
    if (d / "item-info").exists():
        used.append(d / "item-info")
        info_item, info_cate = readers.read_dien_item_info(d / "item-info", items, cates, **kw)
        extra["item_info_rows"] = int(info_item.size)
    else:
        info_item = info_cate = np.zeros(0, np.int64)
    if (d / "reviews-info").exists():
        used.append(d / "reviews-info")
        pool = readers.read_dien_reviews_info(d / "reviews-info", items, **kw)
        extra["negative_pool"] = f"reviews-info ({pool.size} rows)"
    else:
        tr = splits["train"]
        pool = np.concatenate([tr.item, tr.hist_item])
        extra["negative_pool"] = f"train targets + histories ({pool.size} rows)"

    # category of every item code: item-info (its first line per asin, as DIEN), else first seen in samples
    seen_item = np.concatenate([info_item] + [np.concatenate([s.item, s.hist_item]) for s in samples])
    seen_cate = np.concatenate([info_cate] + [np.concatenate([s.cate, s.hist_cate]) for s in samples])
    item_cate = np.full(len(items), PAD, np.int64)
    uniq, first = np.unique(seen_item, return_index=True)
    item_cate[uniq] = seen_cate[first]

    sample_items = seen_item[info_item.size :]
    counts = {
        "users": int(np.unique(np.concatenate([s.user for s in samples])).size),
        "items": int(np.unique(sample_items).size),
        "categories": int(np.unique(seen_cate[info_item.size :]).size),
        "pool_items_without_category": int(np.count_nonzero(item_cate[np.unique(pool)] < 0)),
        "skipped_rows": skipped,
        **extra,
    }
    names = Names(users.names, items.names, cates.names)
    pickles = sorted(p for p in d.iterdir() if "voc" in p.name and (".pkl" in p.name or ".pickle" in p.name))
    pickles += [Path(p) for p in vocab_pickles]
    if pickles:
        counts["vocab_pickles"] = _pickle_report(pickles, splits["train"], names)
    return encode_and_save(
        out,
        splits,
        names,
        item_cate,
        pool,
        dataset=f"dien:{d.name}",
        protocol="last",
        opts=opts,
        sources=[describe_source(p) for p in used + pickles],
        counts=counts,
        options={k: v for k, v in dataclasses.asdict(opts).items() if k != "protocol"},
    )


def _pickle_report(pickles: list[Path], train: RawSplit, names: Names) -> dict[str, Any]:
    """Keys of each DIEN vocab pickle and, when its field is known from the file name (uid/mid/cat), the
    fraction of our train vocabulary it covers."""
    train_codes = {
        "user": train.user,
        "item": np.concatenate([train.item, train.hist_item]),
        "cate": np.concatenate([train.cate, train.hist_cate]),
    }
    report = {}
    for p in pickles:
        voc = readers.read_vocab_pickle(p)
        entry: dict[str, Any] = {"keys": len(voc)}
        field = next((f for prefix, f in VOCAB_PICKLE_FIELDS.items() if prefix in p.name), None)
        if field is not None:
            codes = np.unique(train_codes[field])
            ours = np.asarray(getattr(names, field), dtype=object)[codes]
            covered = sum(k in voc for k in ours.tolist())
            entry |= {"field": field, "train_vocab_coverage": round(covered / max(len(ours), 1), 6)}
        report[str(p)] = entry
    return report


def format_summary(schema: Schema) -> str:
    """A few lines for humans: sizes, samples, positive rate, OOV and skipped rows."""
    c = schema.counts
    lines = [
        f"{schema.dataset}  protocol={schema.protocol}  seed={schema.seed}  history width={schema.max_len}"
    ]
    parts = [
        f"users {c.get('users', 0):,}",
        f"items {c.get('items', 0):,}",
        f"categories {c.get('categories', 0):,}",
    ]
    if "events" in c:
        parts += [
            f"events {c['events']:,}",
            f"users with <2 events {c['users_lt2_events']:,}",
            f"timestamp ties {c['timestamp_ties']:,}",
        ]
    lines.append("  " + ", ".join(parts))
    for split in SPLITS:
        lines.append(
            f"  {split}: {schema.splits[split]:,} samples from {c['split_users'][split]:,} users, "
            f"positive rate {c['positive_rate'][split]:.3f}"
        )
    lines.append(
        f"  vocab (incl. index 0): user {schema.n_user:,}, item {schema.n_item:,}, cate {schema.n_cate:,}, "
        f"item_pair {schema.n_item_pair:,}, cate_pair {schema.n_cate_pair:,}"
    )
    oov = c["oov"]["test"]
    lines.append("  test ids unseen in train (-> 0): " + ", ".join(f"{k} {v:,}" for k, v in oov.items()))
    if c.get("skipped_rows"):
        lines.append(
            "  skipped malformed rows: " + ", ".join(f"{p}: {n}" for p, n in c["skipped_rows"].items())
        )
    return "\n".join(lines)
