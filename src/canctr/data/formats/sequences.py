"""S3-Rec style sequence files (`canctr prepare sequences`): reader and pipeline.

    sequences    `<Name>.txt[.gz]`: `uid item_1 ... item_n` per line, items in time order
    attributes   `<Name>_item2attributes.json[.gz]`: one JSON object {item: [attribute ids]} (brand first,
                 then the category path); category = the last attribute id (or the first, `category_rule`)
    times        optional `<Name>_with_time_intervals.txt[.gz]`: `uid items<TAB>gaps`, the gaps in seconds
                 between consecutive items (the same users and items, line by line); without it, time =
                 position in the line

The recipe is the shared event one (`samples.event_samples`, `--targets last|all`). Files passed in each
other's place are recognised as such: the error says which file it looks like.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from array import array
from collections.abc import Iterator
from itertools import accumulate, zip_longest

from canctr.data.encode import prepare_events
from canctr.data.lines import DataFormatError, RowError, Rows, int64_codes, int_token, no_rows_problem, read_bytes
from canctr.data.samples import Interactions, PrepareOptions
from canctr.data.schema import Schema
from canctr.data.vocab import Interner

# what each input of `prepare sequences` looks like, and its option: to say which files were swapped
_KINDS = {
    "sequences": ("a sequences file ('uid item_1 ... item_n')", "--sequences"),
    "times": ("a time-intervals file ('uid items<TAB>gaps')", "--times"),
    "attributes": ("an item2attributes file (JSON {item: [attribute ids]})", "--attributes"),
}


def _looks_like(text: str) -> str | None:
    """Which of the three inputs a (first, non-blank) line looks like: a key of _KINDS, or None."""
    s = text.strip()
    if s.startswith("{"):
        return "attributes"
    parts = s.split("\t")
    if len(parts) == 2:
        ids, gaps = parts[0].split(), parts[1].split()
        if (ids and all(t.isascii() and t.isdigit() for t in ids) and len(gaps) == len(ids) - 1
                and all(re.fullmatch(r"-?\d+", g) for g in gaps)):
            return "times"
    toks = s.split()
    if len(parts) == 1 and toks and all(t.isascii() and t.isdigit() for t in toks):
        return "sequences"
    return None


def _swapped(found: str, expected: str) -> str:
    (what, option), (wanted, wanted_option) = _KINDS[found], _KINDS[expected]
    return f"this looks like {what}, not {wanted}: were {wanted_option} and {option} swapped?"


def _check_first_line(path: str | os.PathLike, lineno: int, text: str, expected: str) -> None:
    """A file whose first line has the shape of another input is an error, even with skip_bad_rows."""
    found = _looks_like(text)
    if found is not None and found != expected:
        raise DataFormatError(path, _swapped(found, expected), lineno)


def _parse_sequence(text: str) -> tuple[int, list[int]]:
    toks = text.split()
    uid = int_token(toks[0], "user id")
    return uid, [int_token(tok, "item id") for tok in toks[1:]]


def _parse_times(text: str) -> tuple[list[int], list[int]]:
    """`uid items<TAB>gaps` -> (uid + items as ints, gaps)."""
    parts = text.split("\t")
    if len(parts) != 2:
        raise RowError(f"expected 'uid items<TAB>gaps' (2 tab-separated parts), got {len(parts)}")
    ids = [int_token(tok, "id") for tok in parts[0].split()]
    gaps = []
    for tok in parts[1].split():
        if not re.fullmatch(r"-?\d+", tok):
            raise RowError(f"time gap {tok!r} is not an integer")
        gaps.append(int(tok))
    if any(g < 0 for g in gaps):
        raise RowError("negative time gap: the items are not sorted by time")
    return ids, gaps


def read_sequences(
    path: str | os.PathLike, times_path: str | os.PathLike | None = None, *, skip_bad_rows: bool = False
) -> Interactions:
    """S3-Rec `<Name>.txt[.gz]` (+ optional TimeWeaver times file). Without times, time = position."""
    users, items = Interner(), Interner()
    u, i, t = array("q"), array("q"), array("q")
    skipped: dict[str, int] = {}
    rows = Rows(path, skip_bad_rows, skipped)
    if times_path is None:
        paired: Iterator[tuple[int, str, int | None, str | None]] = (
            (n, s, None, None) for n, s in rows.lines()
        )
        trows = None
    else:
        trows = Rows(times_path, skip_bad_rows, skipped)
        paired = _lockstep(rows, trows)
    first = True
    for lineno, text, tlineno, ttext in paired:
        if first:  # the wrong file in this place: say so instead of failing on its first field
            first = False
            _check_first_line(path, lineno, text, "sequences")
            if trows is not None:
                _check_first_line(times_path, tlineno, ttext, "times")
        try:
            uid, seq = _parse_sequence(text)
        except RowError as e:
            rows.bad(lineno, str(e))
            continue
        if trows is None:
            times = list(range(len(seq)))
        else:
            try:
                ids, gaps = _parse_times(ttext)
            except RowError as e:
                trows.bad(tlineno, str(e))
                continue
            if ids != [uid, *seq]:  # the files disagree: no skipping can repair that
                raise DataFormatError(times_path, f"user/items differ from {path} line {lineno}", tlineno)
            if len(gaps) != len(seq):
                trows.bad(tlineno, f"{len(gaps)} time gaps for {len(seq)} items")
                continue
            times = list(accumulate(gaps))
            trows.good += 1
        code = users(str(uid))
        u.extend([code] * len(seq))
        i.extend(items(str(x)) for x in seq)
        t.extend(times)
        rows.good += 1
    rows.finish()
    if trows is not None:
        trows.finish()
    return Interactions(int64_codes(u), int64_codes(i), int64_codes(t), users, items, skipped)


def _lockstep(rows: Rows, trows: Rows) -> Iterator[tuple[int, str, int, str]]:
    """Pair the non-blank lines of the sequences file and the times file; their counts must agree."""
    missing = object()
    for k, (a, b) in enumerate(zip_longest(rows.lines(), trows.lines(), fillvalue=missing)):
        if a is missing or b is missing:
            longer, shorter = (rows, trows) if b is missing else (trows, rows)
            if k == 0:
                raise DataFormatError(shorter.path, no_rows_problem(0))
            raise DataFormatError(trows.path, f"{longer.path} has more lines than {shorter.path}")
        yield a[0], a[1], b[0], b[1]


def read_item_attributes(path: str | os.PathLike) -> dict[int, list[int]]:
    """S3-Rec `<Name>_item2attributes.json[.gz]`: {item: [attribute ids]} (brand first, then categories)."""
    data = read_bytes(path)
    if not data.strip():
        raise DataFormatError(path, "empty file (expected a JSON object {item: [attribute ids]})")
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as e:
        lineno, first = next((n, line) for n, line in enumerate(e.doc.splitlines(), 1) if line.strip())
        found = _looks_like(first)
        if found in ("sequences", "times"):
            raise DataFormatError(path, f"not valid JSON; {_swapped(found, 'attributes')}", lineno) from None
        raise DataFormatError(path, f"not valid JSON ({e.msg} at column {e.colno})", e.lineno) from None
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not UTF-8 text ({e.reason})") from None
    if not isinstance(obj, dict):
        raise DataFormatError(
            path, f"expected a JSON object {{item: [attribute ids]}}, got {type(obj).__name__}"
        )
    out: dict[int, list[int]] = {}
    for key, attrs in obj.items():
        ok = isinstance(attrs, list) and all(isinstance(a, int) and not isinstance(a, bool) for a in attrs)
        if not (key.isascii() and key.isdigit()) or not ok:
            raise DataFormatError(path, f"item {key!r}: expected an integer key and a list of integer ids")
        out[int(key)] = attrs
    if not out:
        raise DataFormatError(path, "no items")
    return out


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
    log = read_sequences(sequences, times, skip_bad_rows=opts.skip_bad_rows)
    attrs = read_item_attributes(attributes)
    pick = -1 if category_rule == "last" else 0
    cate_of = {code: str(a[pick]) for code, name in enumerate(log.items.names) if (a := attrs.get(int(name)))}
    return prepare_events(
        out, log, cate_of, opts, kind="sequences",
        paths=[sequences, attributes] + ([times] if times is not None else []), skipped_rows=log.skipped_rows,
        options={**dataclasses.asdict(opts), "category_rule": category_rule, "times": times is not None},
    )


__all__ = ["prepare_sequences", "read_item_attributes", "read_sequences"]
