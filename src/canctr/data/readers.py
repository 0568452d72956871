"""Streaming parsers for the raw formats that `canctr prepare` reads.

Every reader walks its file line by line (gzip is detected from the magic bytes, CRLF is tolerated), turns
raw id strings into dense integer codes with an `Interner`, and accumulates compact `array`s. Only ints
and the distinct id strings outlive a line. A malformed line raises `DataFormatError` naming the file,
the 1-based line and the problem. With `skip_bad_rows=True` the line is skipped instead and counted in
`skipped_rows[path]`.

Formats (see /work/shared/data/README.md and can-paper.md §3.2):
    amazon reviews   one JSON object per line: reviewerID, asin, overall, unixReviewTime
    amazon meta      one Python-literal dict per line (McAuley 2014; strict JSON also accepted)
    sequences        `uid item_1 ... item_n` (time order); optional `uid items<TAB>gaps` times file
    item attributes  JSON {item: [attr ids]}
    DIEN samples     `label<TAB>uid<TAB>mid<TAB>cat<TAB>mid_hist<TAB>cat_hist`, history joined by \\x02
    MovieLens-1M     ratings.dat `UserID::MovieID::Rating::Timestamp`, movies.dat `MovieID::Title::Genres`
                     (Latin-1, genres joined by |), users.dat `UserID::Gender::Age::Occupation::Zip-code`
    Taobao           UserBehavior.csv `user,item,category,behavior,timestamp`, no header
    DIEN reviews-info / item-info, and DIEN's Python-2 `*_voc.pkl` dicts (read without any globals)
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
import pickle
import re
import zlib
from array import array
from collections.abc import Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from itertools import accumulate, zip_longest
from pathlib import Path

import numpy as np

from canctr.data import chunks

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

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_CATE = "default_cat"  # DIEN's category for items without metadata


class DataFormatError(ValueError):
    """A raw input file does not have the expected format."""

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None) -> None:
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")


class _RowError(Exception):
    """Raised by a line parser; the reader turns it into DataFormatError or a skip."""


class Interner:
    """Maps raw id strings to dense codes 0..n-1 in order of first appearance."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []

    def __call__(self, name: str) -> int:
        code = self.index.get(name)
        if code is None:
            code = self.index[name] = len(self.names)
            self.names.append(name)
        return code

    def merge(self, names: list[str]) -> np.ndarray:
        """Intern distinct `names` (a block's, in its first-appearance order) in bulk -> [n] their codes."""
        get = self.index.get
        codes = np.array([get(name, -1) for name in names], np.int64)
        new = np.flatnonzero(codes < 0)  # distinct names, so the new ones are distinct too
        if new.size:
            start = len(self.names)
            added = [names[k] for k in new.tolist()]
            self.index.update(zip(added, range(start, start + len(added))))
            self.names.extend(added)
            codes[new] = np.arange(start, start + len(added))
        return codes

    def __len__(self) -> int:
        return len(self.names)


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


# ----------------------------------------------------------------------------------------------- lines


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not a regular file")


def _is_gzip(path: Path) -> bool:
    _check_file(path)
    with open(path, "rb") as f:
        gz = f.read(2) == GZIP_MAGIC
    if path.suffix == ".gz" and not gz:
        raise DataFormatError(path, "named .gz but is not gzip data")
    return gz


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield (1-based line number, line without its \\n or \\r\\n) for every line, blank ones included."""
    path = Path(path)
    opener = gzip.open if _is_gzip(path) else open
    lineno = 0
    try:
        with opener(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line.rstrip(b"\r\n")
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataFormatError(path, f"corrupt or unreadable data after line {lineno} ({e})") from e


def read_bytes(path: str | os.PathLike) -> bytes:
    """The whole (decompressed) file."""
    path = Path(path)
    try:
        if _is_gzip(path):
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DataFormatError(path, f"corrupt gzip data ({e})") from e


class _Rows:
    """Iterates a file's non-blank decoded lines and applies the bad-row policy to `_RowError`s."""

    def __init__(
        self, path: str | os.PathLike, skip_bad_rows: bool, skipped: dict[str, int], encoding: str = "utf-8"
    ) -> None:
        self.path, self.skip, self.skipped = Path(path), skip_bad_rows, skipped
        self.encoding = encoding
        self.good = 0

    def bad(self, lineno: int, problem: str) -> None:
        if not self.skip:
            raise DataFormatError(self.path, problem, lineno)
        self.skipped[str(self.path)] = self.skipped.get(str(self.path), 0) + 1

    def lines(self) -> Iterator[tuple[int, str]]:
        for lineno, raw in iter_lines(self.path):
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError as e:
                self.bad(lineno, f"not {self.encoding.upper()} text ({e.reason} at byte {e.start})")
                continue
            if text.strip():
                yield lineno, text

    def finish(self) -> None:
        """Call after the loop: a file that gave no valid row is an error even when skipping."""
        if self.good == 0:
            n_skipped = self.skipped.get(str(self.path), 0)
            problem = (
                f"no valid rows ({n_skipped} malformed rows skipped)" if n_skipped else "empty file (no rows)"
            )
            raise DataFormatError(self.path, problem)


def _codes(values: array) -> np.ndarray:
    return np.frombuffer(values, dtype=np.int64).copy() if len(values) else np.zeros(0, np.int64)


def _int_token(tok: str, what: str) -> int:
    # str.isdigit alone would accept non-ASCII digits, and int() would accept "1_000" or "+1"
    if not (tok.isascii() and tok.isdigit()):
        raise _RowError(f"{what} {tok!r} is not a non-negative integer")
    return int(tok)


# ------------------------------------------------------------------------------------ amazon (McAuley)


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
        raise _RowError(f"not valid JSON ({e.msg} at column {e.colno}){hint}") from None
    if not isinstance(obj, dict):
        raise _RowError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("reviewerID", "asin", "unixReviewTime"):
        if key not in obj:
            hint = "; this looks like item metadata (meta_*.json)" if "categories" in obj else ""
            raise _RowError(f"missing field {key!r}{hint}")
    user, asin, t = obj["reviewerID"], obj["asin"], obj["unixReviewTime"]
    for key, v in (("reviewerID", user), ("asin", asin)):
        if not isinstance(v, str) or not v:
            raise _RowError(f"field {key!r} must be a non-empty string, got {v!r}")
    if isinstance(t, bool) or not isinstance(t, int):
        raise _RowError(f"field 'unixReviewTime' must be an integer, got {t!r}")
    if not -(2**63) <= t < 2**63:
        raise _RowError(f"field 'unixReviewTime' {t} is out of the 64-bit range")
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
            except _RowError as e:
                errors.append((k, str(e)))
                if not skip:
                    break
                continue
        u.append(users.setdefault(user, len(users)))
        i.append(items.setdefault(asin, len(items)))
        t.append(ts)
    return _ReviewBlock(list(users), list(items), _codes(u), _codes(i), _codes(t), len(lines), errors)


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
    gz = _is_gzip(path)
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
        problem = f"no valid rows ({n_bad} malformed rows skipped)" if n_bad else "empty file (no rows)"
        raise DataFormatError(path, problem)
    u, i, t = (np.concatenate([p[k] for p in parts]) for k in range(3))
    return Interactions(u, i, t, users, items, skipped)


_ASIN_RE = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")
# the usual meta line: {'asin': 'X', ... 'categories': [['A', 'B', ...], ...], ...}; the fast path reads asin
# and the first category list without evaluating the rest (titles, descriptions, related-item lists)
_META_HEAD_RE = re.compile(r"""\{\s*(['"])asin\1\s*:\s*(['"])([^'"\\]+)\2\s*[,}]""")
_META_CATS_RE = re.compile(r"""['"]categories['"]\s*:\s*\[\s*\[([^\[\]]*)\]""")
_QUOTED_LIST_RE = re.compile(r"""\s*(?:'([^'\\]*)'|"([^"\\]*)")\s*(?:,|$)""")


def _fast_meta(text: str) -> tuple[str, str | None] | None:
    """(asin, category) of a plainly formed meta line, or None to let `_parse_meta` decide."""
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


def _parse_meta(text: str) -> tuple[str, str | None]:
    """(asin, category or None). The category is the last element of categories[0] (DIEN)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(text)  # the 2014 meta files are Python literals; never eval()
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise _RowError(f"neither JSON nor a Python literal dict ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise _RowError(f"expected a dict, got {type(obj).__name__}")
    if "reviewerID" in obj:
        raise _RowError("this is a review line (it has 'reviewerID'): were --reviews and --meta swapped?")
    asin = obj.get("asin")
    if not isinstance(asin, str) or not asin:
        raise _RowError(f"missing or invalid field 'asin' ({asin!r})")
    cats = obj.get("categories")
    if cats is None or cats == [] or cats == [[]]:
        return asin, None
    if not (
        isinstance(cats, list) and isinstance(cats[0], list) and all(isinstance(c, str) for c in cats[0])
    ):
        raise _RowError(f"field 'categories' must be a list of lists of strings, got {cats!r:.80}")
    return asin, cats[0][-1] if cats[0] else None


def read_amazon_meta(
    path: str | os.PathLike, wanted: Mapping[str, int], *, skip_bad_rows: bool = False
) -> tuple[dict[int, str], dict[str, int]]:
    """McAuley `meta_<Cat>.json[.gz]` -> ({item code: category} for the asins in `wanted`, skipped rows).

    Lines whose asin is visibly not wanted are skipped unparsed: literal_eval is slow and the meta file
    covers far more items than a 5-core review file. A line of the usual shape (`{'asin': ...` first, a
    `'categories': [[...]]` list of plain quoted strings, closing `}`) is read by pattern (`_fast_meta`),
    which checks those parts but not the rest of the line; every other line is fully parsed.
    """
    skipped: dict[str, int] = {}
    cate: dict[int, str] = {}
    rows = _Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        fast = _fast_meta(text)
        if fast is None:
            m = _ASIN_RE.search(text)
            if m is not None and m.group(1) not in wanted:
                rows.good += 1
                continue
        try:
            asin, category = fast or _parse_meta(text)
        except _RowError as e:
            rows.bad(lineno, str(e))
            continue
        rows.good += 1
        code = wanted.get(asin)
        if code is not None and category is not None and code not in cate:
            cate[code] = category
    rows.finish()
    return cate, skipped


# ---------------------------------------------------------------------------------- S3-Rec sequences


def _parse_sequence(text: str) -> tuple[int, list[int]]:
    toks = text.split()
    uid = _int_token(toks[0], "user id")
    return uid, [_int_token(tok, "item id") for tok in toks[1:]]


def _parse_times(text: str) -> tuple[list[int], list[int]]:
    """`uid items<TAB>gaps` -> (uid + items as ints, gaps)."""
    parts = text.split("\t")
    if len(parts) != 2:
        raise _RowError(f"expected 'uid items<TAB>gaps' (2 tab-separated parts), got {len(parts)}")
    ids = [_int_token(tok, "id") for tok in parts[0].split()]
    gaps = []
    for tok in parts[1].split():
        if not re.fullmatch(r"-?\d+", tok):
            raise _RowError(f"time gap {tok!r} is not an integer")
        gaps.append(int(tok))
    if any(g < 0 for g in gaps):
        raise _RowError("negative time gap: the items are not sorted by time")
    return ids, gaps


def read_sequences(
    path: str | os.PathLike, times_path: str | os.PathLike | None = None, *, skip_bad_rows: bool = False
) -> Interactions:
    """S3-Rec `<Name>.txt[.gz]` (+ optional TimeWeaver times file). Without times, time = position."""
    users, items = Interner(), Interner()
    u, i, t = array("q"), array("q"), array("q")
    skipped: dict[str, int] = {}
    rows = _Rows(path, skip_bad_rows, skipped)
    if times_path is None:
        paired: Iterator[tuple[int, str, int | None, str | None]] = (
            (n, s, None, None) for n, s in rows.lines()
        )
        trows = None
    else:
        trows = _Rows(times_path, skip_bad_rows, skipped)
        paired = _lockstep(rows, trows)
    for lineno, text, tlineno, ttext in paired:
        try:
            uid, seq = _parse_sequence(text)
        except _RowError as e:
            rows.bad(lineno, str(e))
            continue
        if trows is None:
            times = list(range(len(seq)))
        else:
            try:
                ids, gaps = _parse_times(ttext)
            except _RowError as e:
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
    return Interactions(_codes(u), _codes(i), _codes(t), users, items, skipped)


def _lockstep(rows: _Rows, trows: _Rows) -> Iterator[tuple[int, str, int, str]]:
    """Pair the non-blank lines of the sequences file and the times file; their counts must agree."""
    missing = object()
    for a, b in zip_longest(rows.lines(), trows.lines(), fillvalue=missing):
        if a is missing or b is missing:
            longer, shorter = (rows, trows) if b is missing else (trows, rows)
            raise DataFormatError(trows.path, f"{longer.path} has more lines than {shorter.path}")
        yield a[0], a[1], b[0], b[1]


def read_item_attributes(path: str | os.PathLike) -> dict[int, list[int]]:
    """S3-Rec `<Name>_item2attributes.json[.gz]`: {item: [attribute ids]} (brand first, then categories)."""
    try:
        obj = json.loads(read_bytes(path))
    except json.JSONDecodeError as e:
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


# ----------------------------------------------------------------------------------------------- DIEN


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
    rows = _Rows(path, skip_bad_rows, skipped)
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
    np.cumsum(_codes(lens), out=offsets[1:])
    return DienSamples(
        np.frombuffer(label, np.int8).copy(), _codes(u), _codes(i), _codes(c), offsets, _codes(hi), _codes(hc)
    )


def read_dien_reviews_info(
    path: str | os.PathLike, items: Interner, *, skip_bad_rows: bool = False, skipped: dict[str, int]
) -> np.ndarray:
    """DIEN `reviews-info` (uid, asin, rating, time) -> [R] item codes, one per review (popularity pool)."""
    pool = array("q")
    rows = _Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        f = text.split("\t")
        if len(f) != 4 or not f[1]:
            rows.bad(lineno, f"expected 4 tab-separated fields (uid asin rating time), got {len(f)}")
            continue
        pool.append(items(f[1]))
        rows.good += 1
    rows.finish()
    return _codes(pool)


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
    rows = _Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        f = text.split("\t")
        if len(f) != 2 or not f[0] or not f[1]:
            rows.bad(lineno, f"expected 2 non-empty tab-separated fields (asin cat), got {len(f)}")
            continue
        it.append(items(f[0]))
        ct.append(cates(f[1]))
        rows.good += 1
    rows.finish()
    return _codes(it), _codes(ct)


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


# ------------------------------------------------------------------------------------------ MovieLens

# what a line with this many '::' fields probably is, for the error hint
_ML_FILES = {
    3: "movies.dat (MovieID::Title::Genres)",
    4: "ratings.dat (UserID::MovieID::Rating::Timestamp)",
    5: "users.dat (UserID::Gender::Age::Occupation::Zip-code)",
}


def _ml_fields(text: str, n: int) -> list[str]:
    f = text.split("::")
    if len(f) != n:
        looks = _ML_FILES.get(len(f))
        hint = f"; this looks like {looks}: are the files swapped?" if looks else ""
        if len(f) == 1 and ("\t" in text or "," in text):
            hint = "; MovieLens-1M .dat files are '::'-separated (this is another release's format?)"
        raise _RowError(f"expected {n} '::'-separated fields, got {len(f)}{hint}")
    return f


def read_movielens_ratings(path: str | os.PathLike, *, skip_bad_rows: bool = False) -> Interactions:
    """MovieLens-1M `ratings.dat[.gz]`: one event per rating, with the rating in `Interactions.rating`."""
    users, items = Interner(), Interner()
    u, i, t, r = array("q"), array("q"), array("q"), array("b")
    skipped: dict[str, int] = {}
    rows = _Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        try:
            f = _ml_fields(text, 4)
            uid, mid = _int_token(f[0], "UserID"), _int_token(f[1], "MovieID")
            rating, ts = _int_token(f[2], "Rating"), _int_token(f[3], "Timestamp")
            if not 1 <= rating <= 5:
                raise _RowError(f"Rating {rating} is outside 1..5")
        except _RowError as e:
            rows.bad(lineno, str(e))
            continue
        u.append(users(str(uid)))
        i.append(items(str(mid)))
        t.append(ts)
        r.append(rating)
        rows.good += 1
    rows.finish()
    rating_arr = np.frombuffer(r, np.int8).copy() if len(r) else np.zeros(0, np.int8)
    return Interactions(_codes(u), _codes(i), _codes(t), users, items, skipped, rating=rating_arr)


def read_movielens_movies(
    path: str | os.PathLike, *, skip_bad_rows: bool = False, skipped: dict[str, int]
) -> dict[str, list[str]]:
    """MovieLens-1M `movies.dat` (Latin-1: titles have accents) -> {MovieID: [genres in file order]}."""
    out: dict[str, list[str]] = {}
    rows = _Rows(path, skip_bad_rows, skipped, encoding="latin-1")
    for lineno, text in rows.lines():
        try:
            f = _ml_fields(text, 3)
            mid = str(_int_token(f[0], "MovieID"))
            genres = f[2].split("|")
            if not all(g.strip() for g in genres):
                raise _RowError(f"Genres {f[2]!r} has an empty genre")
            if mid in out:
                raise _RowError(f"MovieID {mid} appears twice")
        except _RowError as e:
            rows.bad(lineno, str(e))
            continue
        out[mid] = genres
        rows.good += 1
    rows.finish()
    return out


def read_movielens_users(
    path: str | os.PathLike, *, skip_bad_rows: bool = False, skipped: dict[str, int]
) -> dict[str, tuple[str, str, str]]:
    """MovieLens-1M `users.dat` -> {UserID: (gender, age bucket, occupation)} as raw strings."""
    out: dict[str, tuple[str, str, str]] = {}
    rows = _Rows(path, skip_bad_rows, skipped, encoding="latin-1")
    for lineno, text in rows.lines():
        try:
            f = _ml_fields(text, 5)
            uid = str(_int_token(f[0], "UserID"))
            if f[1] not in ("M", "F"):
                raise _RowError(f"Gender must be M or F, got {f[1]!r}")
            age, occupation = _int_token(f[2], "Age"), _int_token(f[3], "Occupation")
            if uid in out:
                raise _RowError(f"UserID {uid} appears twice")
        except _RowError as e:
            rows.bad(lineno, str(e))
            continue
        out[uid] = (f[1], str(age), str(occupation))
        rows.good += 1
    rows.finish()
    return out


# --------------------------------------------------------------------------------- Taobao UserBehavior

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
    rows = _Rows(path, skip_bad_rows, skipped)
    for lineno, text in rows.lines():
        f = text.split(",")
        try:
            if len(f) != 5:
                raise _RowError(
                    f"expected 5 comma-separated fields (user,item,category,behavior,timestamp), got {len(f)}"
                )
            if lineno == 1 and not f[0].isdigit():
                raise _RowError(
                    f"user id {f[0]!r} is not an integer (a header line? UserBehavior.csv has none)"
                )
            for tok, what in zip(f[:3], ("user id", "item id", "category id"), strict=True):
                _int_token(tok, what)
            code = behavior_code.get(f[3])
            if code is None:
                raise _RowError(f"behavior {f[3]!r} is not one of {', '.join(TAOBAO_BEHAVIORS)}")
            ts = _int_token(f[4], "timestamp")
        except _RowError as e:
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
        _codes(u), _codes(i), _codes(t), users, items, skipped, behavior=np.frombuffer(b, np.int8).copy()
    )
    return TaobaoLog(log, cate_of, conflicts, outside, None if lo is None else (lo, hi))

