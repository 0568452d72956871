"""Tianchi UserBehavior (`canctr prepare taobao`): reader and pipeline, by one of two protocols.

    UserBehavior.csv[.gz]  `user,item,category,behavior,timestamp`, no header; behavior in pv, buy, cart, fav

`mimn` (default): CAN's Taobao setting (Bian et al., WSDM 2022, which follows MIMN's data), as inferred
from MIMN's `taobao_prepare.py`:
    * one sample per user; target = the user's last behaviour (any type). With probability 0.5 it is
      replaced by an item drawn uniformly from the catalogue (never the last item itself), label 0;
      otherwise label 1;
    * history = all earlier behaviours of every type (pv, cart, fav, buy), the most recent `max_len`
      (default 200, MIMN's maxlen);
    * split by time, not at random: users sorted by their last-touch time (ties: first appearance in
      the file); the earliest `1 - test_fraction` (70 %) train, the rest test. `truncate` cuts each split
      to a multiple of 256 as MIMN does (that is how Table 1's 691,456 / 296,192 arise); off by default,
      since on a subset it throws away a large share of the users;
    * the target-in-history quirk: MIMN appends the (possibly replaced) target to the history list, so the
      last history position *is* the target and a model can read the label off "is the last history item
      equal to the target". We do NOT append it by default (the history is the earlier behaviours only);
      `target_in_history=True` reproduces MIMN (earlier behaviours capped at max_len - 1, then the target);
    * auxiliary negatives (DIEN's loss) are drawn by the loader (`batch.BatchLoader(negatives=...)`) from
      the split's history positions (by popularity), as for every format; MIMN draws them uniformly from
      the catalogue and avoids the user's own history items.
`all`: DIN-style, so that a small subset still gives enough samples: every pv (click) with at least one
    earlier history behaviour is a positive, paired with one popularity-drawn negative item (DIEN's
    sampling, as `prepare amazon --targets all`); history = the earlier behaviours (`history="all"`,
    default, every type; `"pv"` clicks only); users split at random (`test_fraction`, default 0.1).

Timestamps: the dataset covers 2017-11-25 .. 2017-12-03 (China time), but the published file has dirty
rows (the minimum is 1505117799 = 2017-09-11; the time-sorted course slice has junk such as 15). With
`time_window=True` (default) rows outside [2017-11-25 00:00, 2017-12-04 00:00) UTC+8 are dropped before
anything else; either way their number and range are reported in schema.counts["outside_time_window"].
"""

from __future__ import annotations

import dataclasses
import os
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from canctr.data.encode import Names, dataset_name, describe_source, encode_and_save, prepare_events
from canctr.data.lines import DataFormatError, RowError, Rows, int64_codes, int_token
from canctr.data.samples import (
    HistoryIndex,
    Interactions,
    PrepareOptions,
    RawSplit,
    Timeline,
    event_counts,
    item_categories,
    rngs,
    sample_excluding,
    with_target,
)
from canctr.data.schema import Schema
from canctr.data.vocab import Interner

TAOBAO_BEHAVIORS = ("pv", "buy", "cart", "fav")  # behavior codes 0..3; pv = click (Tianchi's description)
# [2017-11-25 00:00, 2017-12-04 00:00) China Standard Time (UTC+8): the dataset's documented 9 days
TAOBAO_WINDOW = (1_511_539_200, 1_512_316_800)


@dataclass
class TaobaoLog:
    """UserBehavior rows kept by `read_taobao`: the events (with behaviour codes) and item categories."""

    log: Interactions
    cate_of: dict[int, str]  # item code -> category id of its first row
    category_conflicts: int  # rows whose category differs from their item's first one
    outside_window: int  # rows outside the time window (dropped, or kept when no window was given)
    outside_range: tuple[int, int] | None  # (min, max) timestamp of those rows


def read_taobao(
    path: str | os.PathLike, *, time_window: tuple[int, int] | None, skip_bad_rows: bool = False
) -> TaobaoLog:
    """Tianchi `UserBehavior.csv[.gz]`. Rows with a timestamp outside [start, end) of `time_window` are
    dropped before interning and counted (never silently); with `time_window=None` they are kept and
    still counted against the official window `TAOBAO_WINDOW`."""
    window = time_window or TAOBAO_WINDOW
    users, items = Interner(), Interner()
    u, i, t, b = array("q"), array("q"), array("q"), array("b")
    cate_of: dict[int, str] = {}
    conflicts, outside, lo, hi = 0, 0, None, None
    behavior_code = {name: k for k, name in enumerate(TAOBAO_BEHAVIORS)}
    skipped: dict[str, int] = {}
    rows = Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        f = text.split(",")
        try:
            if len(f) != 5:
                raise RowError(
                    f"expected 5 comma-separated fields (user,item,category,behavior,timestamp), got {len(f)}"
                )
            if lineno == 1 and not f[0].isdigit():
                raise RowError(
                    f"user id {f[0]!r} is not an integer (a header line? UserBehavior.csv has none)"
                )
            for tok, what in zip(f[:3], ("user id", "item id", "category id"), strict=True):
                int_token(tok, what)
            code = behavior_code.get(f[3])
            if code is None:
                raise RowError(f"behavior {f[3]!r} is not one of {', '.join(TAOBAO_BEHAVIORS)}")
            ts = int_token(f[4], "timestamp")
        except RowError as e:
            rows.bad(lineno, str(e))
            continue
        rows.good += 1
        if not window[0] <= ts < window[1]:
            outside += 1
            lo, hi = min(ts, lo if lo is not None else ts), max(ts, hi if hi is not None else ts)
            if time_window is not None:
                continue
        item = items(f[1])
        known = cate_of.setdefault(item, f[2])
        conflicts += known != f[2]
        u.append(users(f[0]))
        i.append(item)
        t.append(ts)
        b.append(code)
    rows.finish()
    if not len(u):
        raise DataFormatError(path, f"no rows inside the time window {window} ({outside} outside)")
    log = Interactions(
        int64_codes(u), int64_codes(i), int64_codes(t), users, items, skipped, behavior=np.frombuffer(b, np.int8).copy()
    )
    return TaobaoLog(log, cate_of, conflicts, outside, None if lo is None else (lo, hi))


PROTOCOL_DEFAULTS = {
    "mimn": {"max_len": 200, "test_fraction": 0.3},
    "all": {"max_len": 100, "test_fraction": 0.1},
}
MIMN_BATCH = 256  # MIMN truncates each split to a multiple of its batch size


def prepare_taobao(
    behaviors: str | os.PathLike,
    out: str | os.PathLike,
    opts: PrepareOptions,
    *,
    protocol: str = "mimn",
    history: str = "all",
    time_window: bool = True,
    target_in_history: bool = False,
    truncate: bool = False,
) -> Schema:
    """`UserBehavior.csv[.gz]` -> prepared directory `out` (opts.protocol is ignored; see the module doc).

    `history` applies to protocol "all"; `target_in_history` and `truncate` to "mimn".
    """
    if protocol not in PROTOCOL_DEFAULTS:
        raise ValueError(f"protocol must be 'mimn' or 'all', got {protocol!r}")
    if history not in ("all", "pv"):
        raise ValueError(f"history must be 'all' or 'pv', got {history!r}")
    tb = read_taobao(
        behaviors, time_window=TAOBAO_WINDOW if time_window else None, skip_bad_rows=opts.skip_bad_rows
    )
    log = tb.log
    counts: dict[str, Any] = {
        "outside_time_window": {
            "rows": tb.outside_window,
            "action": "dropped" if time_window else "kept",
            "window": list(TAOBAO_WINDOW),
            "range": list(tb.outside_range) if tb.outside_range else None,
        },
        "item_category_conflicts": tb.category_conflicts,
        "behaviors": dict(
            zip(TAOBAO_BEHAVIORS, np.bincount(log.behavior, minlength=4).tolist(), strict=True)
        ),
    }
    options = {
        **{k: v for k, v in dataclasses.asdict(opts).items() if k != "protocol"},
        "protocol": protocol,
        "time_window": time_window,
    }
    if protocol == "all":
        pv = log.behavior == TAOBAO_BEHAVIORS.index("pv")
        return prepare_events(
            out,
            log,
            tb.cate_of,
            dataclasses.replace(opts, protocol="all"),
            kind="taobao",
            paths=[behaviors],
            skipped_rows=log.skipped_rows,
            options=options | {"history": history},
            sampling={"target_events": pv, "history_events": None if history == "all" else pv},
            counts=counts,
        )

    item_cate, cates, no_cate = item_categories(log.items, tb.cate_of)
    splits, stats = mimn_samples(log, item_cate, opts, target_in_history=target_in_history, truncate=truncate)
    return encode_and_save(
        out,
        splits,
        Names(log.users.names, log.items.names, cates.names),
        dataset=dataset_name("taobao", behaviors),
        protocol="mimn",
        opts=opts,
        sources=[describe_source(behaviors)],
        counts={**stats, **counts, "items_without_category": no_cate, "skipped_rows": log.skipped_rows},
        options=options | {"target_in_history": target_in_history, "truncate": truncate},
    )


def mimn_samples(
    log: Interactions, item_cate: np.ndarray, opts: PrepareOptions, *, target_in_history: bool, truncate: bool
) -> tuple[dict[str, RawSplit], dict[str, Any]]:
    """MIMN's one-sample-per-user recipe (module docstring). U users; arrays in last-touch order."""
    _, rng_neg, _ = rngs(opts.seed)
    tl = Timeline.of(log)
    last = tl.last()  # [U] sorted position of each user's last behaviour, in user-code order
    negative = rng_neg.random(last.size) < 0.5
    item = tl.item[last]
    item[negative] = sample_excluding(np.arange(len(log.items)), item[negative], rng_neg)
    label = (~negative).astype(np.int8)
    by_time = np.lexsort((tl.user[last], tl.time[last]))  # [U] users by last-touch time
    n_train = int((1.0 - opts.test_fraction) * last.size)
    hist = HistoryIndex(tl)
    splits, dropped = {}, {}
    for split, sel in (("train", by_time[:n_train]), ("test", by_time[n_train:])):
        if truncate:
            dropped[split] = int(sel.size % MIMN_BATCH)
            sel = sel[: sel.size - dropped[split]]  # the latest users of the split
        rows, target = last[sel], item[sel]
        if target_in_history:  # MIMN: hist[-maxlen:] of (earlier behaviours + target)
            n_hist, flat = hist.take(rows, opts.width(split) - 1)
            hist_item = with_target(target, tl.item[flat], n_hist, at_end=True)
            hist_len = n_hist + 1
        else:
            hist_len, flat = hist.take(rows, opts.width(split))
            hist_item = tl.item[flat]
        splits[split] = RawSplit(
            label=label[sel],
            group=tl.user[rows],
            user=tl.user[rows],
            item=target,
            cate=item_cate[target],
            hist_len=hist_len,
            hist_item=hist_item,
            hist_cate=item_cate[hist_item],
        )
    stats = event_counts(log, item_cate, tl)
    stats["split_time"] = int(tl.time[last[by_time[n_train]]]) if n_train < last.size else None
    if truncate:
        stats["truncated_users"] = dropped
    return splits, stats


__all__ = ["PROTOCOL_DEFAULTS", "TAOBAO_BEHAVIORS", "TAOBAO_WINDOW", "TaobaoLog", "mimn_samples", "prepare_taobao",
           "read_taobao"]
