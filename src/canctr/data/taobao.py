"""`canctr prepare taobao`: Tianchi UserBehavior (`user,item,category,behavior,timestamp`) -> the encoded
format of `schema.py`, by one of two protocols.

`mimn` (default): can-paper.md §3.3, CAN's Taobao setting as inferred from MIMN's `taobao_prepare.py`:
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
    * auxiliary negatives (DIEN's loss) are uniform random catalogue items (with their categories), each
      different from its history position's item (MIMN also avoids the user's other history items; we do
      not, which matters only for the rare collisions).
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
from typing import Any

import numpy as np

from canctr.data import readers
from canctr.data.pipeline import (
    HistoryIndex,
    Names,
    PrepareOptions,
    RawSplit,
    Timeline,
    _dataset_name,
    _item_categories,
    _prepare_events,
    _rngs,
    _with_target,
    describe_source,
    encode_and_save,
    event_counts,
    sample_excluding,
)
from canctr.data.readers import TAOBAO_BEHAVIORS, TAOBAO_WINDOW, Interactions
from canctr.data.schema import Schema

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
    tb = readers.read_taobao(
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
        return _prepare_events(
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

    item_cate, cates, no_cate = _item_categories(log.items, tb.cate_of)
    splits, stats = mimn_samples(log, item_cate, opts, target_in_history=target_in_history, truncate=truncate)
    return encode_and_save(
        out,
        splits,
        Names(log.users.names, log.items.names, cates.names),
        item_cate,
        np.arange(len(log.items)),  # uniform auxiliary negatives
        dataset=_dataset_name("taobao", behaviors),
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
    _, rng_neg, _ = _rngs(opts.seed)
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
            hist_item = _with_target(target, tl.item[flat], n_hist, at_end=True)
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
