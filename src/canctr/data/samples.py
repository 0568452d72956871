"""Sample building, shared by every format: per-user timelines, targets, histories, the user split and
sampled negative targets: the recipe of DIEN's public code (Zhou et al., AAAI 2019), which CAN's experiments
follow (Bian et al., WSDM 2022).

After parsing, every stage is numpy over whole arrays (no per-sample Python):

1. per-user time order (`Timeline`): a stable lexsort on (user, time, file position); timestamp ties keep
   file order and are counted;
2. targets (`event_samples`): `last` takes each user's last event (DIEN), `all` every event after the first
   (DIN). Each target gives a positive and one negative whose item is drawn uniformly over all event rows
   (popularity-proportional, DIEN's choice) and differs from the positive (`sample_excluding`); history =
   the user's earlier events, the most recent `max_len` in time order (`HistoryIndex`). Formats narrow
   which events may be targets or enter histories (Taobao: pv targets) or bring their own labels
   (MovieLens ratings);
3. users go to test with a seeded Bernoulli(test_fraction) (DIEN's split_by_user.py), so all of a user's
   samples share one split.

Ids are "raw codes" here (indices into the readers' `Interner`s; PAD = -1 = none) and histories are ragged:
flat [H] arrays of the valid positions, oldest first per sample, plus hist_len [N]. `encode.py` turns a
`RawSplit` into vocabulary indices and the ragged store. N samples, H = sum(hist_len), E events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from canctr.data.schema import SPLITS
from canctr.data.vocab import Interner

PAD = -1  # raw-code padding / none; encodes to index 0
DEFAULT_CATE = "default_cat"  # DIEN's category for items without metadata


@dataclass(frozen=True)
class PrepareOptions:
    """Sampling options shared by the prepare commands (`dien` ignores `protocol`: its files fix it)."""

    protocol: str = "last"  # "last" (DIEN: each user's last event) | "all" (DIN: every event after the first)
    max_len: int = 100  # most recent history positions kept in train
    test_max_len: int | None = None  # same for test; None = max_len (CAN's code keeps test histories whole)
    test_fraction: float = 0.1  # per-user probability of the test split
    seed: int = 3
    skip_bad_rows: bool = False
    # the generalisation test of the paper's arXiv v1: drop from the training histories every position whose
    # (target item, history item) combination occurs in the test set (see encode.exclude_test_pairs)
    exclude_test_pairs: bool = False

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
class Interactions:
    """Parsed events, one row per interaction in file order. Codes index `users.names` / `items.names`."""

    user: np.ndarray  # [E] int64
    item: np.ndarray  # [E] int64
    time: np.ndarray  # [E] int64 (unix seconds, cumulative gaps, or position in the line)
    users: Interner
    items: Interner
    skipped_rows: dict[str, int] = field(default_factory=dict)
    rating: np.ndarray | None = None  # [E] int8 MovieLens rating (1..5)
    behavior: np.ndarray | None = None  # [E] int8 Taobao behaviour, an index into TAOBAO_BEHAVIORS


# ------------------------------------------------------------------------------------ array helpers


def rngs(seed: int) -> tuple[np.random.Generator, ...]:
    """Independent streams (split, target negatives, spare): changing one use of randomness (e.g. the
    protocol) does not shift the others. The third once drew DIEN's history negatives (the loader draws
    them now); its place is kept so that the first two stay what they were."""
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))


def ragged_arange(start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + l) for s, l in zip(start, length)) without a Python loop: [sum(length)]."""
    excl = np.cumsum(length) - length  # [N] where each row begins in the output
    return np.arange(int(length.sum())) - np.repeat(excl - start, length)


def with_target(
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
        return hist_len, self.events[ragged_arange(self.before[rows] - hist_len, hist_len)]


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
    rng_split, rng_neg, _ = rngs(opts.seed)
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


# ------------------------------------------------------------------------------------ item categories


def item_categories(items: Interner, cate_of: dict[int, str]) -> tuple[np.ndarray, Interner, int]:
    """[n_items] cate code per item code; items without a category get DEFAULT_CATE (DIEN), counted."""
    cates = Interner()
    default = cates(DEFAULT_CATE) if len(cate_of) < len(items) else None
    table = np.array([cates(cate_of[c]) if c in cate_of else default for c in range(len(items))], np.int64)
    return table, cates, len(items) - len(cate_of)


def item_category_lists(
    item_cate: np.ndarray, cates: Interner, all_cates: dict[int, list[str]]
) -> np.ndarray:
    """[n_items, G] every cate code of each item (its `item_cate` first), -1 padded. G = most categories."""
    width = max(map(len, all_cates.values()), default=1)
    table = np.full((item_cate.size, width), PAD, np.int64)
    table[:, 0] = item_cate
    for code, names in all_cates.items():
        table[code, : len(names)] = [cates(n) for n in names]
    return table


__all__ = [
    "DEFAULT_CATE", "HistoryIndex", "Interactions", "PAD", "PrepareOptions", "RawSplit", "Timeline",
    "event_counts", "event_samples", "item_categories", "item_category_lists", "ragged_arange", "rngs",
    "sample_excluding", "with_target",
]
