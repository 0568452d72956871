"""Raw events / DIEN samples -> the encoded format of `schema.py` (can-paper.md §3.2, the DIEN recipe).

After parsing, every stage is numpy over whole arrays (no per-sample Python):

1. per-user time order (`Timeline`): a stable lexsort on (user, time, file position); timestamp ties keep
   file order and are counted;
2. targets: `last` takes each user's last event (DIEN), `all` every event after the first (DIN). Each
   target gives a positive and one negative whose item is drawn uniformly over all event rows
   (popularity-proportional, DIEN's choice) and differs from the positive; history = the user's earlier
   events, the most recent `max_len` in time order (`HistoryIndex`). Other formats narrow which events
   may be targets or enter histories (Taobao: pv targets) or bring their own labels (MovieLens ratings);
3. users go to test with a seeded Bernoulli(test_fraction) (DIEN's split_by_user.py), so all of a user's
   samples share one split;
4. one auxiliary negative per history position (DIEN's auxiliary loss), drawn the same way;
5. vocabularies fitted on train only: descending frequency, ties by first appearance (row-major over
   [target, history...] per sample), index 0 = pad/unknown; Cartesian (target, history) pair ids likewise;
6. `save_split` / `save_vocab` / schema.json, plus vocab/{item,cate}_pair.npy ([K+1, 2] vocab indices of
   each pair id, row 0 = padding) so new data can be encoded consistently. Optional side information
   (`SideInfo`: per-user attributes, every category of an item) is looked up per sample and encoded with
   train-fitted vocabularies the same way.

Before encoding, ids are "raw codes" (indices into the parsers' name lists; -1 = none) and histories are
ragged: flat [H] arrays of the valid positions in row-major order plus hist_len [N]; only the final encoded
arrays are padded to [N, W]. N samples, H = sum(hist_len), W history width, E events.
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

from canctr.data import chunks, readers
from canctr.data.readers import DEFAULT_CATE, Interactions, Interner
from canctr.data.schema import SPLITS, Schema, save_vocab
from canctr.data.spec import behaviour_spec
from canctr.data.store import Columns, save_pair_keys, write_split

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
    values: dict[str, np.ndarray] = field(default_factory=dict)  # optional [N] arrays saved as they are


@dataclass
class Names:
    """Raw id strings by code, for writing vocabularies."""

    user: list[str]
    item: list[str]
    cate: list[str]


@dataclass
class SideInfo:
    """Optional attributes that `encode_and_save` looks up per sample (by user / item code) and encodes.

    user_features: ARRAY_SPECS name (e.g. "user_gender") -> ([n_user_codes] attribute code, -1 = unknown;
        the attribute names by code). Each gets its own train-fitted vocabulary vocab/<name>.json.
    item_cates: [n_item_codes, G] every category code of each item (column 0 = its `cate`), -1 padded;
        written per sample as `item_cates` [N, G] and per item as vocab/item_cates.npy, in cate indices.
    """

    user_features: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    item_cates: np.ndarray | None = None


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


def _with_target(
    target: np.ndarray, hist: np.ndarray, hist_len: np.ndarray, *, at_end: bool = False
) -> np.ndarray:
    """[N], ragged [H] -> [N + H] row-major [target, hist...] per sample (the order of first appearance),
    or [hist..., target] with `at_end`."""
    out = np.empty(target.size + hist.size, np.int64)
    heads = np.cumsum(hist_len + 1) - (1 if at_end else hist_len + 1)  # [N] position of each sample's target
    is_head = np.zeros(out.size, bool)
    is_head[heads] = True
    out[heads] = target
    out[~is_head] = hist
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


DENSE_MAX_KEYS = 1 << 25  # key spaces up to this size are counted / looked up in O(n), not sorted


def _unique_first_inverse_counts(v: np.ndarray) -> tuple[np.ndarray, ...]:
    """np.unique(v, return_index, return_inverse, return_counts) for keys >= 0. When key * len(v) fits in
    int64, one in-place value sort of key * len + position replaces np.unique's stable argsort (~2x)."""
    n = v.size
    if n == 0 or int(v.max()) >= (1 << 62) // max(n, 1):
        return np.unique(v, return_index=True, return_inverse=True, return_counts=True)
    key = v * n + np.arange(n)
    key.sort()
    vals = key // n
    pos = key - vals * n  # where each sorted key came from
    start = np.r_[True, vals[1:] != vals[:-1]]
    group = np.cumsum(start) - 1
    inverse = np.empty(n, np.int64)
    inverse[pos] = group
    return vals[start], pos[start], inverse, np.diff(np.r_[np.flatnonzero(start), n])


def distinct_sorted(v: np.ndarray) -> np.ndarray:
    """np.unique(v) for keys >= 0, by counting when the key space is small (MovieLens' 40 M pair keys)."""
    if v.size and int(v.max()) <= max(DENSE_MAX_KEYS, 4 * v.size):
        return np.flatnonzero(np.bincount(v)).astype(np.int64)
    return np.unique(v).astype(np.int64)


def _n_distinct(v: np.ndarray) -> int:
    """np.unique(v).size; by counting when v holds small non-negative codes (a hash pass otherwise)."""
    if v.size and v.dtype.kind in "iu" and int(v.min()) >= 0 and int(v.max()) <= max(DENSE_MAX_KEYS, 4 * v.size):
        return int(np.count_nonzero(np.bincount(v)))
    return int(np.unique(v).size)


class Vocab:
    """Raw codes (or pair keys) in index order 1..K; anything else encodes to 0.

    `fit` keeps what its counting already computed: the sorted keys (so `encode` needs no new sort) and
    the encoding of the very array it was fitted on (the train split's pair keys, the biggest field,
    are then never searched).
    """

    def __init__(self, codes: np.ndarray, *, sorted_codes: np.ndarray | None = None,
                 sorter: np.ndarray | None = None) -> None:
        self.codes = codes  # [K] int64, index i + 1 -> codes[i]
        if sorted_codes is None:
            sorter = np.argsort(codes)
            sorted_codes = codes[sorter]
        self._sorted, self._sorter = sorted_codes, sorter
        self._fitted: tuple[np.ndarray, np.ndarray] | None = None  # (the fit's input, its encoding)

    @classmethod
    def fit(cls, in_order: np.ndarray) -> Vocab:
        """Codes >= 0 in order of appearance -> sorted by descending count, ties by first appearance."""
        valid = in_order >= 0
        v = in_order[valid]
        n_keys = int(v.max()) + 1 if v.size else 0
        inverse = None
        if n_keys > DENSE_MAX_KEYS:  # sparse keys (pairs of a large catalogue): sort
            uniq, first, inverse, count = _unique_first_inverse_counts(v)
        else:  # the same three arrays by counting (MovieLens' 40 M pair keys: ~8x faster)
            count_all = np.bincount(v, minlength=n_keys)
            first_all = np.full(n_keys, v.size, np.int64)
            np.minimum.at(first_all, v, np.arange(v.size))
            uniq = np.flatnonzero(count_all)
            first, count = first_all[uniq], count_all[uniq]
        # one value sort on a combined key: count descending, then first appearance (first < v.size + 1).
        # First appearances are distinct, so the sorted keys give back the order without an argsort.
        key = (int(count.max(initial=0)) - count) * (v.size + 1) + first
        key.sort()
        slot = np.empty(v.size + 1, np.int32 if uniq.size < 2**31 else np.int64)  # first appearance -> uniq position
        slot[first] = np.arange(uniq.size)
        order = slot[key % (v.size + 1)]
        rank = np.empty(uniq.size, np.int64)  # [K] position of each sorted key in index order
        rank[order] = np.arange(uniq.size)
        vocab = cls(uniq[order], sorted_codes=uniq, sorter=rank)
        if inverse is not None:
            encoded = np.zeros(in_order.shape, np.int32)
            encoded[valid] = rank[inverse.ravel()] + 1
            vocab._fitted = (in_order, encoded)
        return vocab

    def __len__(self) -> int:
        return int(self.codes.size) + 1  # + index 0

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """Raw codes (any shape) -> int32 indices; unknown or negative -> 0."""
        if self._fitted is not None and raw is self._fitted[0]:
            return self._fitted[1]
        if self.codes.size == 0:
            return np.zeros(raw.shape, np.int32)
        top = int(self._sorted[-1])
        if top < DENSE_MAX_KEYS:  # a lookup table; negative keys and keys above `top` read its last entry, 0
            return self.table(top + 1)[np.where((raw > top) | (raw < 0), -1, raw)]
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


@dataclass
class Timeline:
    """Stage 1: every event sorted per user by time, ties in file order. Arrays are [E] in sorted order."""

    order: np.ndarray  # file row of each sorted event
    user: np.ndarray  # user code
    item: np.ndarray  # item code
    time: np.ndarray
    pos: np.ndarray  # index of the event within its user's timeline
    size: np.ndarray  # that user's event count
    ties: int  # events with the same (user, time) as their predecessor

    @classmethod
    def of(cls, log: Interactions) -> Timeline:
        n_events = log.item.size
        order = np.lexsort((np.arange(n_events), log.time, log.user))  # last key is the primary one
        user, time = log.user[order], log.time[order]
        first = np.r_[True, user[1:] != user[:-1]]
        starts = np.flatnonzero(first)
        n_ev = np.diff(np.r_[starts, n_events])  # [U'] events of each user that has any
        return cls(
            order=order,
            user=user,
            item=log.item[order],
            time=time,
            pos=np.arange(n_events) - np.repeat(starts, n_ev),
            size=np.repeat(n_ev, n_ev),
            ties=int(np.count_nonzero(~first[1:] & (time[1:] == time[:-1]))),
        )

    def last(self, eligible: np.ndarray | None = None) -> np.ndarray:
        """Sorted positions of each user's last (eligible) event, in user-code order."""
        idx = np.flatnonzero(self.pos == self.size - 1) if eligible is None else np.flatnonzero(eligible)
        return idx[np.r_[self.user[idx][1:] != self.user[idx][:-1], True]]


class HistoryIndex:
    """Histories drawn from the events that may enter them (`eligible` [E] in Timeline order; None = all).

    `count[e]` = eligible events of e's user strictly before e; `take` returns the most recent ones.
    """

    def __init__(self, tl: Timeline, eligible: np.ndarray | None = None) -> None:
        e = np.ones(tl.item.size, np.int64) if eligible is None else eligible.astype(np.int64)
        self.before = np.cumsum(e) - e  # [E] eligible events before e, over all users
        self.count = self.before - self.before[np.arange(e.size) - tl.pos]  # [E] ... of e's own user
        self.events = np.flatnonzero(e)  # [K] sorted positions of the eligible events

    def take(self, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        """rows [N] sorted positions -> (hist_len [N], ragged [H] sorted positions, oldest first)."""
        hist_len = np.minimum(self.count[rows], width)
        return hist_len, self.events[_ragged_arange(self.before[rows] - hist_len, hist_len)]


def event_samples(
    log: Interactions,
    item_cate: np.ndarray,
    opts: PrepareOptions,
    *,
    labels: np.ndarray | None = None,
    target_events: np.ndarray | None = None,
    history_events: np.ndarray | None = None,
    min_history: int = 1,
) -> tuple[dict[str, RawSplit], dict[str, Any]]:
    """Stages 1-3 of the module docstring. item_cate: [n_items] cate code of every item code.

    Optional [E] arrays in file order: `labels` (0/1) makes every target one sample with that label
    (no sampled negative); `target_events` / `history_events` (bool) restrict which events may be
    targets / enter histories. A target needs `min_history` earlier history events (`last`: the user's
    last eligible target, if it has them).
    """
    rng_split, rng_neg, _ = _rngs(opts.seed)
    n_users = len(log.users)
    tl = Timeline.of(log)
    hist = HistoryIndex(tl, None if history_events is None else history_events[tl.order])
    ok = None if target_events is None else target_events[tl.order]

    # 2. target rows (into the sorted arrays), grouped by user and in time order
    if opts.protocol == "last":
        targets = tl.last(ok)
        targets = targets[hist.count[targets] >= min_history]
    else:
        targets = np.flatnonzero((hist.count >= min_history) & (True if ok is None else ok))
    # 3. split by user: one draw per user code, so the split does not depend on the protocol
    is_test = rng_split.random(n_users) < opts.test_fraction

    splits = {}
    for split in SPLITS:
        t = targets[is_test[tl.user[targets]] == (split == "test")]
        if labels is None:
            neg = sample_excluding(log.item, tl.item[t], rng_neg)  # pool: every event row
            # two samples per target, DIEN's order: negative (label 0) then positive (label 1); both get
            # the target's history
            rows = np.repeat(t, 2)
            items = np.stack([neg, tl.item[t]], axis=1).ravel()
            label = np.tile(np.array([0, 1], np.int8), t.size)
        else:
            rows, items, label = t, tl.item[t], labels[tl.order[t]].astype(np.int8)
        hist_len, flat = hist.take(rows, opts.width(split))
        splits[split] = RawSplit(
            label=label,
            group=tl.user[rows],
            user=tl.user[rows],
            item=items,
            cate=item_cate[items],
            hist_len=hist_len,
            hist_item=tl.item[flat],
            hist_cate=item_cate[tl.item[flat]],
        )
    return splits, event_counts(log, item_cate, tl)


def event_counts(log: Interactions, item_cate: np.ndarray, tl: Timeline) -> dict[str, Any]:
    """Sizes of an event log for schema.counts."""
    items = np.unique(log.item)
    return {
        "users": len(log.users),
        "items": int(items.size),
        "categories": int(np.unique(item_cate[items]).size),
        "events": int(log.item.size),
        "users_lt2_events": int(len(log.users) - np.count_nonzero(tl.pos == 1)),
        "timestamp_ties": tl.ties,
    }


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
    pool: np.ndarray | None = None,
    *,
    dataset: str,
    protocol: str,
    opts: PrepareOptions,
    sources: list[dict[str, Any]],
    counts: dict[str, Any],
    options: dict[str, Any],
    side: SideInfo | None = None,
) -> Schema:
    """Stages 5-6: train-fitted vocabularies, the ragged store under the `behaviour_spec` preset, the
    Cartesian pair keys and schema.json.

    pool: unused (DIEN's auxiliary negatives are drawn by the loader now); kept so callers need not change.
    """
    del pool
    for split in SPLITS:
        if splits[split].label.size == 0:
            hint = "; raise --test-fraction or use more users" if split == "test" else ""
            raise ValueError(f"no {split} samples were produced (users: {counts.get('users')}){hint}")
    side = side or SideInfo()
    tr = splits["train"]
    cate_seen = _with_target(tr.cate, tr.hist_cate, tr.hist_len)
    if side.item_cates is not None:  # every category of the train targets counts too (after the first)
        cate_seen = np.concatenate([cate_seen, side.item_cates[tr.item].ravel()])
    vocab = {
        "user": Vocab.fit(tr.user),
        "item": Vocab.fit(_with_target(tr.item, tr.hist_item, tr.hist_len)),
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
                    keys = _pair_keys(encoded[target], encoded[hist], s.hist_len, n)
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
        _save_npy(out / "vocab" / "item_cates.npy", np.concatenate([np.zeros_like(per_item[:1]), per_item]))
    for pair, keys in pair_keys.items():
        save_pair_keys(out, pair, keys)

    counts = {
        **counts,
        "samples": {k: int(v.label.size) for k, v in splits.items()},
        "positive_rate": {k: round(float(v.label.mean()), 6) for k, v in splits.items()},
        "split_users": {k: _n_distinct(v.group) for k, v in splits.items()},
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


def _save_npy(path: Path, arr: np.ndarray) -> None:
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


def _dataset_name(kind: str, path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".gz", ".json", ".txt", ".csv"):
        name = name.removesuffix(suffix)
    return f"{kind}:{name}"


def _item_categories(items: Interner, cate_of: dict[int, str]) -> tuple[np.ndarray, Interner, int]:
    """[n_items] cate code per item code; items without a category get DEFAULT_CATE (DIEN), counted."""
    cates = Interner()
    default = cates(DEFAULT_CATE) if len(cate_of) < len(items) else None
    table = np.array([cates(cate_of[c]) if c in cate_of else default for c in range(len(items))], np.int64)
    return table, cates, len(items) - len(cate_of)


def _item_category_lists(
    item_cate: np.ndarray, cates: Interner, all_cates: dict[int, list[str]]
) -> np.ndarray:
    """[n_items, G] every cate code of each item (its `item_cate` first), -1 padded. G = most categories."""
    width = max(map(len, all_cates.values()), default=1)
    table = np.full((item_cate.size, width), PAD, np.int64)
    table[:, 0] = item_cate
    for code, names in all_cates.items():
        table[code, : len(names)] = [cates(n) for n in names]
    return table


# ------------------------------------------------------------------------------------ public entry points


def prepare_amazon(
    reviews: str | os.PathLike,
    meta: str | os.PathLike,
    out: str | os.PathLike,
    opts: PrepareOptions,
    *,
    workers: int = 0,
) -> Schema:
    """McAuley 2014 `reviews_<Cat>[_5].json[.gz]` + `meta_<Cat>.json[.gz]` -> prepared directory `out`.

    workers: processes that parse review blocks and checksum the inputs meanwhile (0: one per core,
    1: all in this process). The output does not depend on it.
    """
    workers = workers or chunks.default_workers()
    with chunks.worker_pool(workers) as pool:
        sources = [chunks.submit_or_run(pool, describe_source, p) for p in (reviews, meta)]
        log = readers.read_amazon_reviews(reviews, skip_bad_rows=opts.skip_bad_rows, pool=pool,
                                          in_flight=2 * workers)
        cate_of, skipped_meta = readers.read_amazon_meta(meta, log.items.index, skip_bad_rows=opts.skip_bad_rows)
        described = [get() for get in sources]
    return _prepare_events(
        out, log, cate_of, opts, kind="amazon", paths=[reviews, meta], sources=described,
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
    item_cate, cates, no_cate = _item_categories(log.items, cate_of)
    splits, event_stats = event_samples(log, item_cate, opts, **(sampling or {}))
    event_stats |= {"items_without_category": no_cate, "skipped_rows": skipped_rows, **(counts or {})}
    if all_cates is not None:
        multi = _item_category_lists(item_cate, cates, all_cates)
        side = dataclasses.replace(side or SideInfo(), item_cates=multi)
    return encode_and_save(
        out,
        splits,
        Names(log.users.names, log.items.names, cates.names),
        item_cate,
        log.item,
        dataset=dataset or _dataset_name(kind, paths[0]),
        protocol=protocol or opts.protocol,
        opts=opts,
        sources=sources or [describe_source(p) for p in paths],
        counts=event_stats,
        options=options,
        side=side,
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


# optional schema.counts entries that format_summary shows when a pipeline records them
SUMMARY_NOTES = (
    "positive_threshold", "users_without_profile", "item_category_conflicts", "split_time", "bayes_auc"
)


def format_summary(schema: Schema) -> str:
    """A few lines for humans: sizes, samples, positive rate, OOV and skipped rows."""
    c = schema.counts
    lines = [
        f"{schema.dataset}  protocol={schema.protocol}  seed={schema.seed}  "
        f"longest train history {c.get('max_hist_len', {}).get('train', 0)}"
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
        "  vocab (incl. index 0): " + ", ".join(f"{k} {v:,}" for k, v in schema.vocab.items())
        + "".join(f", pairs {k} {v:,}" for k, v in schema.pairs.items())
    )
    window = c.get("outside_time_window")
    if window and window["rows"]:
        lines.append(
            f"  rows outside the time window [{window['window'][0]}, {window['window'][1]}): "
            f"{window['rows']:,} {window['action']} (timestamps {window['range'][0]}..{window['range'][1]})"
        )
    notes = [f"{k.replace('_', ' ')} {c[k]}" for k in SUMMARY_NOTES if c.get(k) is not None]
    if notes:
        lines.append("  " + ", ".join(notes))
    oov = c["oov"]["test"]
    lines.append("  test ids unseen in train (-> 0): " + ", ".join(f"{k} {v:,}" for k, v in oov.items()))
    if c.get("skipped_rows"):
        lines.append(
            "  skipped malformed rows: " + ", ".join(f"{p}: {n}" for p, n in c["skipped_rows"].items())
        )
    return "\n".join(lines)
