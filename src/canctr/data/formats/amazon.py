"""McAuley's 2014 Amazon review data (`canctr prepare amazon`): reader and pipeline.

    reviews   `reviews_<Cat>[_5].json[.gz]`, one JSON object per line: reviewerID, asin, unixReviewTime
              (overall and the text fields are ignored: every review is a positive event)
    meta      `meta_<Cat>.json[.gz]`, one Python-literal dict per line (strict JSON also accepted):
              asin and categories; an item's category is the last element of its first category path,
              as DIEN does; items without one get `samples.DEFAULT_CATE`

Reviews are parsed in blocks of lines (`chunks.py`), on several processes when there are several cores;
the result does not depend on the number of workers. The recipe is the shared event one
(`samples.event_samples`, `--targets last|all`).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
from array import array
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from canctr.data import chunks
from canctr.data.encode import describe_source, prepare_events
from canctr.data.lines import DataFormatError, RowError, Rows, int64_codes, is_gzip, no_rows_problem
from canctr.data.samples import Interactions, PrepareOptions
from canctr.data.schema import Schema
from canctr.data.vocab import Interner

try:  # optional accelerator (a canctr dependency where wheels exist); json is the reference parser
    import orjson as _orjson
except ImportError:  # pragma: no cover
    _orjson = None

try:  # optional: decodes a whole block of review lines in one C call, materialising only three fields
    from typing import Annotated

    import msgspec as _msgspec

    class _Review(_msgspec.Struct):
        reviewerID: Annotated[str, _msgspec.Meta(min_length=1)]
        asin: Annotated[str, _msgspec.Meta(min_length=1)]
        unixReviewTime: int  # strict: a bool or a float is refused, as by _parse_review

    _REVIEW_LINES = _msgspec.json.Decoder(_Review)
except ImportError:  # pragma: no cover
    _msgspec = _REVIEW_LINES = None


def _fast_json(text: str):
    """orjson when installed (4x json's speed on review lines); json decides, with its messages, otherwise."""
    if _orjson is not None:
        try:
            return _orjson.loads(text)
        except _orjson.JSONDecodeError:
            pass  # json may still accept it (NaN, ...) or will name the problem
    return json.loads(text)


def _parse_review(text: str) -> tuple[str, str, int]:
    try:
        obj = _fast_json(text)
    except json.JSONDecodeError as e:
        hint = ""
        if text.lstrip().startswith("{'"):
            hint = "; this is a Python-literal line, as in meta_*.json: were --reviews and --meta swapped?"
        raise RowError(f"not valid JSON ({e.msg} at column {e.colno}){hint}") from None
    if not isinstance(obj, dict):
        raise RowError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("reviewerID", "asin", "unixReviewTime"):
        if key not in obj:
            hint = "; this looks like item metadata (meta_*.json)" if "categories" in obj else ""
            raise RowError(f"missing field {key!r}{hint}")
    user, asin, t = obj["reviewerID"], obj["asin"], obj["unixReviewTime"]
    for key, v in (("reviewerID", user), ("asin", asin)):
        if not isinstance(v, str) or not v:
            raise RowError(f"field {key!r} must be a non-empty string, got {v!r}")
    if isinstance(t, bool) or not isinstance(t, int):
        raise RowError(f"field 'unixReviewTime' must be an integer, got {t!r}")
    if not -(2**63) <= t < 2**63:
        raise RowError(f"field 'unixReviewTime' {t} is out of the 64-bit range")
    return user, asin, t


@dataclass
class _ReviewBlock:
    """One block's reviews with block-local codes (see data/chunks.py for the merge)."""

    users: list[str]
    items: list[str]
    user: np.ndarray  # [n] local user codes
    item: np.ndarray
    time: np.ndarray
    n_lines: int  # lines in the block, blank ones included
    errors: list[tuple[int, str]]  # (1-based line within the block, problem); stops at the first unless skipping


def _parse_review_block(block_and_skip: tuple[chunks.Block, bool]) -> _ReviewBlock:
    """Parse one block. Fast path: one msgspec call for the whole block. A doubtful block goes line by line:
    orjson for well-formed reviews, `_parse_review` (the reference parser, which accepts the same rows and
    words the errors) for anything else."""
    block, skip = block_and_skip
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    if _REVIEW_LINES is not None:  # the whole block in one call; any doubt -> line by line below
        with block.view() as data:  # zero-copy where the block is a range of a plain file
            try:
                reviews = _REVIEW_LINES.decode_lines(data)
            except (_msgspec.DecodeError, _msgspec.ValidationError, UnicodeDecodeError):
                reviews = None
            n_lines = chunks.count_lines(data)
        # one object per line (no blank lines, no two objects on a line) and times that fit int64
        if reviews is not None and len(reviews) == n_lines:
            try:
                times = np.array([r.unixReviewTime for r in reviews], np.int64)
            except OverflowError:
                times = None
            if times is not None:
                u_codes = [users.setdefault(r.reviewerID, len(users)) for r in reviews]
                i_codes = [items.setdefault(r.asin, len(items)) for r in reviews]
                return _ReviewBlock(list(users), list(items), np.array(u_codes, np.int64),
                                    np.array(i_codes, np.int64), times, n_lines, [])
        users.clear()  # a doubtful block: start over line by line
        items.clear()
    lines = chunks.split_lines(block.read())
    u, i, t = array("q"), array("q"), array("q")
    errors: list[tuple[int, str]] = []
    loads = _orjson.loads if _orjson is not None else json.loads
    for k, raw in enumerate(lines, 1):
        try:
            obj = loads(raw)
            user, asin, ts = obj["reviewerID"], obj["asin"], obj["unixReviewTime"]
            ok = type(user) is str and type(asin) is str and type(ts) is int and user and asin
        except Exception:  # noqa: BLE001 - any failure goes to the reference parser below
            ok = False
        if not ok:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                errors.append((k, f"not UTF-8 text ({e.reason} at byte {e.start})"))
                if not skip:
                    break
                continue
            if not text.strip():
                continue
            try:
                user, asin, ts = _parse_review(text.rstrip("\r"))
            except RowError as e:
                errors.append((k, str(e)))
                if not skip:
                    break
                continue
        u.append(users.setdefault(user, len(users)))
        i.append(items.setdefault(asin, len(items)))
        t.append(ts)
    return _ReviewBlock(list(users), list(items), int64_codes(u), int64_codes(i), int64_codes(t), len(lines),
                        errors)


def read_amazon_reviews(
    path: str | os.PathLike,
    *,
    skip_bad_rows: bool = False,
    pool: Executor | None = None,
    block_bytes: int = chunks.BLOCK_BYTES,
    in_flight: int = 4,
) -> Interactions:
    """McAuley `reviews_<Cat>[_5].json[.gz]`: one event per review (every review is a positive).

    Parsed in blocks of lines, on `pool`'s processes when given (`in_flight` blocks queued ahead: about twice
    the workers); the result does not depend on any of these.
    """
    path = Path(path)
    gz = is_gzip(path)
    users, items = Interner(), Interner()
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    skipped: dict[str, int] = {}
    line0 = 0  # lines before the current block
    n_bad = 0

    def corrupt(lines_read: int, e: Exception) -> DataFormatError:
        return DataFormatError(path, f"corrupt or unreadable data after line {lines_read} ({e})")

    blocks = ((b, skip_bad_rows) for b in chunks.iter_blocks(path, gz, block_bytes, corrupt))
    for res in chunks.ordered_map(_parse_review_block, blocks, pool, in_flight):
        if res.errors and not skip_bad_rows:
            lineno, problem = res.errors[0]
            raise DataFormatError(path, problem, line0 + lineno)
        n_bad += len(res.errors)
        parts.append((users.merge(res.users)[res.user], items.merge(res.items)[res.item], res.time))
        line0 += res.n_lines
    if n_bad:
        skipped[str(path)] = n_bad
    if not any(p[0].size for p in parts):
        raise DataFormatError(path, no_rows_problem(n_bad))
    u, i, t = (np.concatenate([p[k] for p in parts]) for k in range(3))
    return Interactions(u, i, t, users, items, skipped)


_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")
# the usual meta line: {'asin': 'X', ... 'categories': [['A', 'B', ...], ...], ...}; the fast path reads asin
# and the first category list without evaluating the rest (titles, descriptions, related-item lists)
_META_HEAD_RE = re.compile(r"""\{\s*(['"])asin\1\s*:\s*(['"])([^'"\\]+)\2\s*[,}]""")
_META_CATS_RE = re.compile(r"""['"]categories['"]\s*:\s*\[\s*\[([^\[\]]*)\]""")
_QUOTED_LIST_RE = re.compile(r"""\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*(?:,|$)""")


def fast_meta(text: str) -> tuple[str, str | None] | None:
    """(asin, category) of a plainly formed meta line, or None to let `parse_meta` decide."""
    if not text.endswith("}"):
        return None
    head = _META_HEAD_RE.match(text)
    cats = _META_CATS_RE.search(text, head.end()) if head else None
    if cats is None or "reviewerID" in text:  # a review line: the full parse names the mix-up
        return None
    body, last, pos = cats.group(1), None, 0
    while pos < len(body):  # 'A', 'B', "C's" with no escapes; anything else -> None
        m = _QUOTED_LIST_RE.match(body, pos)
        if m is None or m.end() == pos:
            return None
        last, pos = (m.group(1) if m.group(1) is not None else m.group(2)), m.end()
    return head.group(3), last


def parse_meta(text: str) -> tuple[str, str | None]:
    """(asin, category or None). The category is the last element of categories[0] (DIEN)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(text)  # the 2014 meta files are Python literals; never eval()
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise RowError(f"neither JSON nor a Python literal dict ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise RowError(f"expected a dict, got {type(obj).__name__}")
    if "reviewerID" in obj:
        raise RowError("this is a review line (it has 'reviewerID'): were --reviews and --meta swapped?")
    asin = obj.get("asin")
    if not isinstance(asin, str) or not asin:
        raise RowError(f"missing or invalid field 'asin' ({asin!r})")
    cats = obj.get("categories")
    if cats is None or cats == [] or cats == [[]]:
        return asin, None
    if not (
        isinstance(cats, list) and isinstance(cats[0], list) and all(isinstance(c, str) for c in cats[0])
    ):
        raise RowError(f"field 'categories' must be a list of lists of strings, got {cats!r:.80}")
    return asin, cats[0][-1] if cats[0] else None


def read_amazon_meta(
    path: str | os.PathLike, wanted: Mapping[str, int], *, skip_bad_rows: bool = False
) -> tuple[dict[int, str], dict[str, int]]:
    """McAuley `meta_<Cat>.json[.gz]` -> ({item code: category} for the asins in `wanted`, skipped rows).

    Lines whose asin is visibly not wanted are skipped unparsed: literal_eval is slow and the meta file
    covers far more items than a 5-core review file. A line of the usual shape (`{'asin': ...` first, a
    `'categories': [[...]]` list of plain quoted strings, closing `}`) is read by pattern (`fast_meta`),
    which checks those parts but not the rest of the line; every other line is fully parsed.
    """
    skipped: dict[str, int] = {}
    cate: dict[int, str] = {}
    rows = Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        fast = fast_meta(text)
        if fast is None:
            m = _ASIN_RE.search(text)
            if m is not None and m.group(1) not in wanted:
                rows.good += 1
                continue
        try:
            asin, category = fast or parse_meta(text)
        except RowError as e:
            rows.bad(lineno, str(e))
            continue
        rows.good += 1
        code = wanted.get(asin)
        if code is not None and category is not None and code not in cate:
            cate[code] = category
    rows.finish()
    return cate, skipped


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
        log = read_amazon_reviews(reviews, skip_bad_rows=opts.skip_bad_rows, pool=pool, in_flight=2 * workers)
        cate_of, skipped_meta = read_amazon_meta(meta, log.items.index, skip_bad_rows=opts.skip_bad_rows)
        described = [get() for get in sources]
    return prepare_events(
        out, log, cate_of, opts, kind="amazon", paths=[reviews, meta], sources=described,
        skipped_rows={**log.skipped_rows, **skipped_meta}, options=dataclasses.asdict(opts),
    )


__all__ = ["fast_meta", "parse_meta", "prepare_amazon", "read_amazon_meta", "read_amazon_reviews"]
