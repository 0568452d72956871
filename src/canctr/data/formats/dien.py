"""DIEN's processed Amazon files (`canctr prepare dien`): readers and pipeline.

    local_{train,test}_splitByUser, local_test
                  `label<TAB>uid<TAB>mid<TAB>cat<TAB>mid_hist<TAB>cat_hist`, the history joined by \\x02;
                  each row is one sample (DIEN writes a negative and a positive per target)
    reviews-info  `uid<TAB>asin<TAB>rating<TAB>time`: DIEN's popularity pool (only reported here: the loader
                  draws the auxiliary negatives from the prepared histories)
    item-info     `asin<TAB>cat`: item categories (the first line of an asin wins, as in DIEN)
    *_voc.pkl     DIEN's Python-2 vocabulary pickles {raw id: index}: read without any globals and only
                  reported (coverage of our train vocabulary); vocabularies are always refitted on train
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from canctr.data.encode import Names, describe_source, encode_and_save
from canctr.data.lines import DataFormatError, Rows, int64_codes, read_bytes
from canctr.data.samples import PAD, PrepareOptions, RawSplit, ragged_arange, rngs
from canctr.data.schema import Schema
from canctr.data.vocab import Interner

VOCAB_PICKLE_FIELDS = {"uid": "user", "mid": "item", "cat": "cate"}  # DIEN pickle name prefix -> field


@dataclass
class DienSamples:
    """Rows of a DIEN sample file. Histories are ragged: sample i owns hist_*[offsets[i]:offsets[i+1]]."""

    label: np.ndarray  # [N] int8
    user: np.ndarray  # [N] int64 codes
    item: np.ndarray  # [N]
    cate: np.ndarray  # [N]
    offsets: np.ndarray  # [N + 1] int64
    hist_item: np.ndarray  # [H] int64
    hist_cate: np.ndarray  # [H]


def read_dien_samples(
    path: str | os.PathLike,
    users: Interner,
    items: Interner,
    cates: Interner,
    *,
    skip_bad_rows: bool = False,
    skipped: dict[str, int],
) -> DienSamples:
    """DIEN `local_*` sample file. Interners are shared across files so codes agree between splits."""
    label, u, i, c, lens = array("b"), array("q"), array("q"), array("q"), array("q")
    hi, hc = array("q"), array("q")
    rows = Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        f = text.split("\t")
        if len(f) != 6:
            rows.bad(
                lineno, f"expected 6 tab-separated fields (label uid mid cat mid_hist cat_hist), got {len(f)}"
            )
            continue
        if f[0] not in ("0", "1"):
            rows.bad(lineno, f"label must be 0 or 1, got {f[0]!r}")
            continue
        if not (f[1] and f[2] and f[3]):
            rows.bad(lineno, "empty uid, mid or cat")
            continue
        mids = f[4].split("\x02") if f[4] else []
        cats = f[5].split("\x02") if f[5] else []
        if len(mids) != len(cats) or not all(mids) or not all(cats):
            rows.bad(
                lineno, f"mid_hist ({len(mids)} items) and cat_hist ({len(cats)}) must pair up, no empties"
            )
            continue
        label.append(int(f[0]))
        u.append(users(f[1]))
        i.append(items(f[2]))
        c.append(cates(f[3]))
        lens.append(len(mids))
        hi.extend(items(m) for m in mids)
        hc.extend(cates(x) for x in cats)
        rows.good += 1
    rows.finish()
    offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(int64_codes(lens), out=offsets[1:])
    return DienSamples(
        np.frombuffer(label, np.int8).copy(), int64_codes(u), int64_codes(i), int64_codes(c), offsets,
        int64_codes(hi), int64_codes(hc),
    )


def read_dien_reviews_info(
    path: str | os.PathLike, items: Interner, *, skip_bad_rows: bool = False, skipped: dict[str, int]
) -> np.ndarray:
    """DIEN `reviews-info` (uid, asin, rating, time) -> [R] item codes, one per review (popularity pool)."""
    pool = array("q")
    rows = Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        f = text.split("\t")
        if len(f) != 4 or not f[1]:
            rows.bad(lineno, f"expected 4 tab-separated fields (uid asin rating time), got {len(f)}")
            continue
        pool.append(items(f[1]))
        rows.good += 1
    rows.finish()
    return int64_codes(pool)


def read_dien_item_info(
    path: str | os.PathLike,
    items: Interner,
    cates: Interner,
    *,
    skip_bad_rows: bool = False,
    skipped: dict[str, int],
) -> tuple[np.ndarray, np.ndarray]:
    """DIEN `item-info` (asin, cat) -> ([M] item codes, [M] cate codes) in file order."""
    it, ct = array("q"), array("q")
    rows = Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        f = text.split("\t")
        if len(f) != 2 or not f[0] or not f[1]:
            rows.bad(lineno, f"expected 2 non-empty tab-separated fields (asin cat), got {len(f)}")
            continue
        it.append(items(f[0]))
        ct.append(cates(f[1]))
        rows.good += 1
    rows.finish()
    return int64_codes(it), int64_codes(ct)


class _NoGlobalsUnpickler(pickle.Unpickler):
    """A dict of str -> int needs no globals; refusing every one makes loading untrusted pickles safe."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - signature fixed by pickle
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")


def read_vocab_pickle(path: str | os.PathLike) -> dict[str, int]:
    """DIEN `*_voc.pkl` (Python-2 pickle, optionally gzipped): {raw id: index}."""
    data = read_bytes(path)
    try:
        obj = _NoGlobalsUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001 - any failure of a refused/corrupt pickle is a format error
        raise DataFormatError(path, f"not a plain vocabulary pickle ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in obj.items()
    ):
        raise DataFormatError(path, "expected a pickled dict of str -> int")
    return obj


def dien_split(s: DienSamples, width: int, keep: np.ndarray | None = None) -> RawSplit:
    """DIEN sample rows (optionally only rows `keep`) -> RawSplit with the most recent `width` history."""
    rows = np.arange(s.label.size) if keep is None else np.flatnonzero(keep)
    length = np.diff(s.offsets)[rows]
    hist_len = np.minimum(length, width)
    start = s.offsets[rows] + length - hist_len
    flat = ragged_arange(start, hist_len)
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
    (DIEN's popularity pool) is checked and reported in schema.counts (`negative_pool`,
    `pool_items_without_category`; default: every target and history item of train), while the loader
    draws the auxiliary negatives itself; optional `item-info` gives item categories (default: as seen in
    the samples). `*voc*.pkl` files in the folder, plus `vocab_pickles`, are only reported: vocabularies
    are always refitted on train.
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
        samples = [read_dien_samples(p, users, items, cates, **kw) for p in used]
        train_s, test_s = samples
        splits = {
            "train": dien_split(train_s, opts.width("train")),
            "test": dien_split(test_s, opts.width("test")),
        }
        extra: dict[str, Any] = {"dien_samples": "splitByUser files"}
    elif (d / "local_test").exists():
        used = [d / "local_test"]
        samples = [s := read_dien_samples(d / "local_test", users, items, cates, **kw)]
        rng_split, _, _ = rngs(opts.seed)
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
        info_item, info_cate = read_dien_item_info(d / "item-info", items, cates, **kw)
        extra["item_info_rows"] = int(info_item.size)
    else:
        info_item = info_cate = np.zeros(0, np.int64)
    if (d / "reviews-info").exists():
        used.append(d / "reviews-info")
        pool = read_dien_reviews_info(d / "reviews-info", items, **kw)
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
        voc = read_vocab_pickle(p)
        entry: dict[str, Any] = {"keys": len(voc)}
        field = next((f for prefix, f in VOCAB_PICKLE_FIELDS.items() if prefix in p.name), None)
        if field is not None:
            codes = np.unique(train_codes[field])
            ours = np.asarray(getattr(names, field), dtype=object)[codes]
            covered = sum(k in voc for k in ours.tolist())
            entry |= {"field": field, "train_vocab_coverage": round(covered / max(len(ours), 1), 6)}
        report[str(p)] = entry
    return report


__all__ = ["DienSamples", "dien_split", "prepare_dien", "read_dien_item_info", "read_dien_reviews_info",
           "read_dien_samples", "read_vocab_pickle"]
