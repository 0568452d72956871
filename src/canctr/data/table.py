"""`canctr prepare table`: a user's Parquet / CSV / JSON-lines table + a feature spec -> the ragged store.

    canctr prepare table --spec clicks.toml --input 'data/part-*.parquet' --out data/clicks
    prepare_table(FeatureSpec.load("clicks.toml"), ["data/part-*.parquet"], "data/clicks")

Every input is read through pyarrow in record batches (Parquet: only the spec's columns, a row group at a
time; CSV / TSV: the streaming `pyarrow.csv.open_csv`, every column as text; JSON lines: the streaming
`pyarrow.json.open_json`, or line-aligned blocks through `read_json` before pyarrow 20; a `.gz` / `.bz2`
suffix is decompressed on the fly), so resident memory is about two decoded row groups / blocks plus a few
batches plus what grows with the number of distinct ids (vocabularies and their counts), never with the
number of rows. The spec (`canctr.data.spec`) says which column feeds which field.

Passes:

  0. (split.by = "time" only) the time column alone, 2-4 times: its count and range, then histograms of
     2^20 bins that narrow down the exact cutoff (the value below which 1 - test_fraction of the rows
     lie) in constant memory.
  1. every needed column, once: rows are checked (label 0/1, numbers, aligned sequence lengths, ...),
     assigned to train or test, and their ids interned into provisional codes (integer ids inside a 2^24
     window by a lookup table, other integers by a sorted array, strings by a dict over each batch's
     distinct values; never per row in Python). The training rows' occurrences are counted per
     embedding table (with the position of each id's first appearance) and the dense fields' moments
     are accumulated. Each split is appended to a `store.SplitWriter` in its final layout, holding the
     provisional codes and the raw (float64) dense values, so the input is read once and every byte of
     the output is written once. Three threads: pyarrow decodes, one thread checks and codes, another
     splits, counts and hands the chunks to the writer thread (numpy and pyarrow release the GIL in
     their array work).
  2. the vocabularies are fitted (train count descending, ties by first appearance in the training
     rows: row order, then the spec's field order, then sequence position oldest first; count <
     min_count -> 0) while the inputs' sha256 is computed, then each split is rewritten in place by a
     `store.SplitRewriter`, row chunk by row chunk on two threads: codes through one lookup table per
     embedding table, group codes to the group index, dense values normalised (float32), Cartesian pair
     keys collected from the training rows. vocab/<table>.json, vocab/pairs/*.npy and schema.json (last)
     follow.

Ids are normalised per embedding table: when every column of a table holds integers (int / list<int>)
they are compared as integers, otherwise every column is cast to text (an integer 7 becomes "7"), so
fields that share a table (hist_item reading "item") always share one vocabulary. Floats are refused as
ids. Index 0 of every table is padding and unknown; a null id or null sequence element encodes to 0 and
is counted (counts["nulls"]); an id unseen in training (or below min_count) encodes to 0 and is counted
(counts["oov"]). Sequences keep their most recent (last) max_len elements; a sequence column is a list
column, or text split by --list-sep ("|"); an empty or null sequence has length 0.

Hashing (hash_buckets > 0, and split.by = "user") uses `stable_hash`, canctr's own 64-bit hash of an
id's UTF-8 text, computed with numpy on the Arrow string buffers (no per-value Python):

    h = sum(b[i] * P**(n - 1 - i) for the n bytes b of the text) mod 2**64,  P = 0x100000001B3
    hash = splitmix64(h ^ splitmix64(seed) ^ (n * 0x9E3779B97F4A7C15 mod 2**64))

A hashed field's index is 1 + hash(seed 0) % hash_buckets; a user is in test when
(hash(split.seed) >> 11) / 2**53 < test_fraction. Integer ids hash as their decimal text, so a table
hashes alike from CSV and from Parquet.

Rows: label must be 0/1 (numbers, booleans or their text); dense values numbers or their text, missing
(null / NaN / empty) per the field's `nan`; the time column numbers or ISO-8601 text or timestamps. A
row that breaks a rule (or a CSV line with the wrong number of fields) is an error naming the file, row
(1-based data row) and column, or with skip_bad_rows is skipped and counted by reason; rows read =
rows written + rows skipped always holds (counts["rows"]). In JSON the reader fixes each column's type
from its first block (8 MiB), so a value of another JSON type later is an error even with skip_bad_rows.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import itertools
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from canctr.data.encode import describe_source
from canctr.data.schema import SPLITS, Schema, atomic_write_text, save_vocab
from canctr.data.spec import FeatureSpec, Field, SpecError
from canctr.data.store import Columns, SplitRewriter, SplitWriter, pair_keys, save_pair_keys
from canctr.memory import kept_heap, small_pages

PAD_NAME = "<pad/unk>"
BATCH_ROWS = 1 << 18  # rows per Parquet record batch (CSV and JSON batches are blocks of CSV_BLOCK / JSON_BLOCK bytes)
CSV_BLOCK = 4 << 20
JSON_BLOCK = 8 << 20
PARQUET_GROUP_BYTES = 512 << 20  # Parquet row groups up to this (uncompressed) size are decoded whole
DIRECT_IDS = 1 << 24  # integer ids within this window of the first batch's minimum are coded by lookup table
PAIR_BITMAP = 1 << 26  # Cartesian key spaces up to this size are collected in a bitmap, else sorted
TIME_BINS = 1 << 20
TIME_COLLECT = 1 << 22
REWRITE_ROWS = 1 << 18  # rows per chunk of pass 2's in-place rewrite
_INF = np.iinfo(np.int64).max
_FORMATS = {
    ".parquet": "parquet", ".pq": "parquet", ".parq": "parquet", ".csv": "csv", ".tsv": "tsv",
    ".jsonl": "json", ".ndjson": "json", ".json": "json",
}
_COMPRESSION = (".gz", ".bz2", ".zst", ".lz4")
_NUMBER = r"^[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|inf|infinity|nan)$"
_JSON_TYPE_CHANGE = re.compile(r"Column\((/[^)]*)\) changed from (\w+) to (\w+) in row (\d+)")


class TableError(ValueError):
    """An input table does not fit the spec or has a malformed row; the message names the file (and row)."""

    def __init__(self, path: str | os.PathLike, problem: str, row: int | None = None) -> None:
        self.path, self.problem, self.row = str(path), problem, row
        where = f"{path}, row {row}" if row is not None else str(path)
        super().__init__(f"{where}: {problem}")


# -------------------------------------------------------------------------------------------- hashing

_P = np.uint64(0x100000001B3)
_TEXT_SEED = 0x7E47  # the seed of the hashes that intern text ids (any fixed value)
_GOLDEN = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stable_hash(strings: pa.Array, seed: int = 0) -> np.ndarray:
    """[n] uint64 hashes of the UTF-8 text of each value (see the module docstring); callers pass no nulls
    (a null hashes whatever bytes its slot spans, normally none: as "")."""
    arr = strings.cast(pa.large_string()) if strings.type != pa.large_string() else strings
    n = len(arr)
    if n == 0:
        return np.zeros(0, np.uint64)
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, np.int64, n + 1, arr.offset * 8)
    lo, hi = int(offsets[0]), int(offsets[-1])
    lens = np.diff(offsets)
    if hi > lo:
        data = np.frombuffer(data_buf, np.uint8, hi - lo, lo).astype(np.uint64)
        powers = np.ones(int(lens.max()), np.uint64)
        powers[1:] = _P
        powers = np.cumprod(powers, dtype=np.uint64)  # P**k mod 2**64
        ends = np.repeat(offsets[1:], lens)
        weighted = data * powers[ends - 1 - np.arange(lo, hi)]
        sums = np.concatenate([np.zeros(1, np.uint64), np.cumsum(weighted, dtype=np.uint64)])
        h = sums[offsets[1:] - lo] - sums[offsets[:-1] - lo]
    else:
        h = np.zeros(n, np.uint64)
    salt = _splitmix64(np.array([seed & _M64], np.uint64))[0]
    return _splitmix64(h ^ salt ^ (lens.astype(np.uint64) * np.uint64(_GOLDEN)))


# -------------------------------------------------------------------------------------------- inputs


INPUT_FORMATS = ("parquet", "csv", "tsv", "json")


def input_format(path: str | os.PathLike, override: str | None = None) -> str:
    """parquet | csv | tsv | json, from the file name (a compression suffix is looked through), unless
    `override` names it (files whose names say nothing, e.g. Avazu's CSV as `train` or `*.txt`)."""
    if override is not None:
        if override not in INPUT_FORMATS:
            raise TableError(path, f"--format {override!r} is not one of {', '.join(INPUT_FORMATS)}")
        return override
    name = Path(path).name.lower()
    compressed = name.endswith(_COMPRESSION)
    if compressed:
        name = name.rsplit(".", 1)[0]
    fmt = _FORMATS.get(Path(name).suffix)
    if fmt is None or (fmt == "parquet" and compressed):
        raise TableError(path, "unknown input format; expected .parquet, .csv, .tsv or .jsonl / .ndjson / .json "
                               "(text formats optionally .gz / .bz2), or name it with --format")
    return fmt


def expand_inputs(patterns: Sequence[str | os.PathLike]) -> list[Path]:
    """Paths and globs -> existing files in order (each glob sorted), duplicates dropped."""
    out: list[Path] = []
    for pattern in patterns:
        pattern = str(pattern)
        if glob.has_magic(pattern):
            files = [Path(p) for p in sorted(glob.glob(pattern, recursive=True)) if os.path.isfile(p)]
            if not files:
                raise TableError(pattern, "no input file matches this pattern")
        elif os.path.isdir(pattern):
            raise TableError(pattern, "is a directory; pass its files or a glob such as DIR/*.parquet")
        elif not os.path.exists(pattern):
            raise TableError(pattern, "input file not found")
        else:
            files = [Path(pattern)]
        out += [f for f in files if f not in out]
    if not out:
        raise TableError("--input", "no input files given")
    return out


def _kind(t: pa.DataType) -> str:
    """A coarse type: int, float, bool, str, null, time, list<...> or other:<type>."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "float"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or getattr(pa.types, "is_string_view", lambda _: False)(t):
        return "str"
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "time"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"list<{_kind(t.value_type)}>"
    return f"other:{t}"


class TableSource:
    """One input file: its column types and its record batches (pyarrow errors become TableError)."""

    def __init__(self, path: Path, *, skip_bad_rows: bool, batch_rows: int, fmt: str | None = None) -> None:
        self.path, self.format = path, input_format(path, fmt)
        self.skip_bad_rows, self.batch_rows = skip_bad_rows, batch_rows
        self.unparsed = 0  # CSV lines pyarrow could not split into the header's fields (skipped)
        self._types: dict[str, pa.DataType] | None = None

    def types(self) -> dict[str, pa.DataType]:
        """column -> Arrow type (CSV: text; JSON: as inferred from the first block)."""
        if self._types is None:
            try:
                if self.format == "parquet":
                    schema = pq.read_schema(self.path)
                elif self.format == "json":
                    first = next(iter(_json_batches(self.path, pajson.ParseOptions())), None)
                    if first is None:
                        raise TableError(self.path, "empty file (no rows)")
                    schema = first.schema
                else:
                    schema = self._csv(None, block=1 << 16).schema
                    schema = pa.schema([(name, pa.string()) for name in schema.names])
            except (pa.ArrowException, OSError, EOFError) as e:
                raise self._error(e, 0) from None
            self._types = {f.name: f.type for f in schema}
        return self._types

    def _csv(self, columns: list[str] | None, block: int | None = None) -> pacsv.CSVStreamingReader:
        def invalid(row: Any) -> str:
            self.unparsed += 1
            return "skip"

        convert = pacsv.ConvertOptions(strings_can_be_null=True, null_values=[""])
        if columns is not None:
            convert = pacsv.ConvertOptions(
                include_columns=columns, column_types={c: pa.string() for c in columns},
                strings_can_be_null=True, null_values=[""],
            )
        parse = pacsv.ParseOptions(delimiter="\t" if self.format == "tsv" else ",",
                                   invalid_row_handler=invalid if self.skip_bad_rows else None)
        return pacsv.open_csv(self.path, read_options=pacsv.ReadOptions(block_size=block or CSV_BLOCK),
                              parse_options=parse,
                              convert_options=convert)

    def _parquet(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Row group by row group (decoding a whole group is ~1.5x faster than iter_batches), sliced into
        batches; a row group too big to hold decoded (PARQUET_GROUP_BYTES) is streamed by iter_batches."""
        f = pq.ParquetFile(self.path)
        meta = f.metadata
        for i in range(meta.num_row_groups):
            if meta.row_group(i).total_byte_size > PARQUET_GROUP_BYTES:
                yield from f.iter_batches(batch_size=self.batch_rows, row_groups=[i], columns=columns)
                continue
            yield from f.read_row_group(i, columns=columns).to_batches(max_chunksize=self.batch_rows)

    def batches(self, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Record batches of `columns` (in that order)."""
        rows = 0
        try:
            if self.format == "parquet":
                reader: Any = self._parquet(columns)
            elif self.format == "json":
                # the types of the first block, given explicitly: later blocks must match them, and pyarrow's
                # inference drops a list's leading null element (apache/arrow#51305), explicit types do not
                types = self.types()
                known = [(c, types[c]) for c in columns if _kind(types[c]) not in ("null", "list<null>")]
                parse = pajson.ParseOptions(
                    explicit_schema=pa.schema(known),
                    unexpected_field_behavior="ignore" if len(known) == len(columns) else "infer",
                )
                reader = _json_batches(self.path, parse)
            else:
                reader = self._csv(columns)
            for batch in reader:
                if self.format == "json":
                    missing = [c for c in columns if c not in batch.schema.names]
                    if missing:
                        raise TableError(self.path, f"column(s) {missing} vanish after row {rows} (JSON block)")
                    batch = batch.select(columns)
                for name, arr in zip(batch.schema.names, batch.columns):
                    if isinstance(arr, (pa.ListArray, pa.LargeListArray)) and len(arr) and (
                            arr.offsets[-1].as_py() > len(arr.values)):  # never trust a reader's list blindly
                        raise TableError(self.path, f"column {name!r}: pyarrow returned an invalid list array after "
                                                    f"row {rows} (list offsets beyond the values)")
                rows += batch.num_rows
                yield batch
        except (pa.ArrowException, OSError, EOFError) as e:
            raise self._error(e, rows) from None

    def _error(self, e: Exception, rows: int) -> TableError:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        m = _JSON_TYPE_CHANGE.search(msg)
        if m:
            column, was, now, row = m.group(1).lstrip("/"), m.group(2), m.group(3), int(m.group(4))
            return TableError(
                self.path,
                f"column {column!r} changes type from {was} to {now}; pyarrow's JSON reader fixes each column's "
                f"type from its first block, so every value of a column needs one JSON type",
                row=rows + row + 1,
            )
        if msg.startswith(("Empty CSV file", "Empty JSON")):
            return TableError(self.path, "empty file (no header / no rows)")
        if "Expected" in msg and "columns, got" in msg:
            return TableError(self.path, f"after row {rows}: malformed CSV line ({msg}); use --skip-bad-rows "
                                         "to skip such lines")
        return TableError(self.path, f"cannot read as {self.format} after row {rows} ({msg})")


def _json_batches(path: Path, parse: pajson.ParseOptions) -> Iterator[pa.RecordBatch]:
    """JSON lines in record batches of about JSON_BLOCK bytes of text: pyarrow's streaming reader (pyarrow >=
    20), else (older pyarrow) line-aligned blocks, each parsed by pyarrow.json.read_json."""
    read = pajson.ReadOptions(block_size=JSON_BLOCK)
    if hasattr(pajson, "open_json"):
        yield from pajson.open_json(path, read_options=read, parse_options=parse)
        return
    seen = False
    with pa.input_stream(str(path)) as stream:  # decompresses by the file name's suffix
        rest = b""
        while True:
            data = stream.read(JSON_BLOCK)
            last = not data
            data = rest + data
            cut = len(data) if last else data.rfind(b"\n") + 1
            rest = data[cut:]
            if data[:cut].strip():
                seen = True
                options = pajson.ReadOptions(block_size=max(cut + 1, JSON_BLOCK))
                yield from pajson.read_json(pa.BufferReader(data[:cut]), read_options=options,
                                            parse_options=parse).to_batches()
            if last:
                break
    if not seen:
        raise pa.ArrowInvalid("Empty JSON file")


def _prefetch(it: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Iterate `it` in a background thread (pyarrow decodes while numpy encodes the previous batch)."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in it:
                if not put(x):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            put(_Raised(e))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        while True:
            x = q.get()
            if x is done:
                return
            if isinstance(x, _Raised):
                raise x.exc
            yield x
    finally:
        stop.set()
        thread.join()


@dataclass
class _Raised:
    exc: BaseException


# -------------------------------------------------------------------------------------------- column values


def _plain(arr: pa.Array) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    return arr


def _to_float(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Numbers (or their text) -> ([n] float64 with NaN where missing, [n] bool: text that is no number)."""
    arr = _plain(arr)
    n = len(arr)
    kind = _kind(arr.type)
    invalid = np.zeros(n, bool)
    if kind == "null":
        return np.full(n, np.nan), invalid
    if kind == "str":
        try:
            f = pc.cast(arr, pa.float64())
        except pa.ArrowInvalid:
            s = pc.utf8_trim_whitespace(arr)
            s = pc.if_else(pc.equal(s, ""), pa.scalar(None, s.type), s)
            ok = pc.match_substring_regex(s, _NUMBER, ignore_case=True)
            invalid = np.asarray(pc.fill_null(pc.invert(ok), False).to_numpy(zero_copy_only=False), bool)
            f = pc.cast(pc.if_else(ok, s, pa.scalar(None, s.type)), pa.float64())
    elif kind in ("int", "float", "bool"):
        f = pc.cast(arr, pa.float64())
    else:
        raise ValueError(f"not numbers: {arr.type}")
    return np.asarray(f.to_numpy(zero_copy_only=False), np.float64), invalid


def _to_time(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Time values -> ([n] float64, NaN where missing; [n] bool invalid). Timestamps become ns since epoch."""
    arr = _plain(arr)
    kind = _kind(arr.type)
    if kind == "time":
        ns = pc.cast(pc.cast(arr, pa.timestamp("ns")), pa.int64())
        return np.asarray(pc.cast(ns, pa.float64()).to_numpy(zero_copy_only=False)), np.zeros(len(arr), bool)
    if kind == "str":
        with contextlib.suppress(pa.ArrowInvalid):
            pc.cast(arr, pa.float64())
            return _to_float(arr)
        with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return _to_time(pc.cast(pc.utf8_trim_whitespace(arr), pa.timestamp("ns")))
    return _to_float(arr)


def _int_values(arr: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer Arrow values -> ([n] int64, [n] bool null mask or None)."""
    arr = _plain(arr)
    if pa.types.is_null(arr.type):
        return np.zeros(len(arr), np.int64), np.ones(len(arr), bool)
    if arr.type != pa.int64():
        arr = pc.cast(arr, pa.int64())
    if arr.null_count:
        null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
        return pc.fill_null(arr, 0).to_numpy(), null
    return arr.to_numpy(), None


def _text(arr: pa.Array) -> pa.Array:
    arr = _plain(arr)
    return arr if arr.type == pa.string() else pc.cast(arr, pa.string())


def _lists(arr: pa.Array, sep: str) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """A list column (or text split by `sep`) -> ([n] start, [n] length into values, flat values)."""
    arr = _plain(arr)
    kind = _kind(arr.type)
    n = len(arr)
    if kind == "null":
        return np.zeros(n, np.int64), np.zeros(n, np.int64), pa.array([], pa.string())
    empty = None
    if kind == "str":
        arr = _text(arr)
        empty = np.asarray(pc.fill_null(pc.equal(arr, ""), False).to_numpy(zero_copy_only=False), bool)
        arr = pc.split_pattern(arr, sep)
    elif pa.types.is_fixed_size_list(arr.type):
        arr = pc.cast(arr, pa.list_(arr.type.value_type))
    offsets = arr.offsets.to_numpy().astype(np.int64, copy=False)
    starts, lengths = offsets[:-1], np.diff(offsets)
    if arr.null_count or (empty is not None and empty.any()):
        lengths = lengths.copy()
        if arr.null_count:
            lengths[np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)] = 0
        if empty is not None:
            lengths[empty] = 0
    return starts, lengths, arr.values


def _gather(lut: pa.Array, codes: np.ndarray) -> np.ndarray:
    """lut[codes] (read-only) by Arrow's take, which reads int32 indices as they are (numpy's fancy indexing first
    copies them to int64): ~1.5x faster on the spilled codes."""
    return pc.take(lut, pa.array(codes)).to_numpy()


def _ragged_take(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat positions starts[i] .. starts[i] + lengths[i] - 1 of every row, row after row."""
    total = int(lengths.sum())
    first = np.cumsum(lengths) - lengths
    return np.arange(total, dtype=np.int64) + np.repeat(starts - first, lengths)


def _offsets(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


# -------------------------------------------------------------------------------------------- id coding


class _IntKeys:
    """Integer ids -> provisional codes 1..n in order of first sight (0 = null).

    Ids within DIRECT_IDS of the first batch's minimum (or of 0) go through a lookup table indexed by the id;
    others through a sorted array. Both are vectorised; neither is per value in Python.
    """

    def __init__(self) -> None:
        self.base: int | None = None
        self.window = np.zeros(0, np.int32)  # code of id base + i (0: not seen)
        self.sorted_keys = np.zeros(0, np.int64)  # ids outside the window, sorted, and their codes
        self.sorted_codes = np.zeros(0, np.int32)
        self.keys = np.zeros(1024, np.int64)  # id of code c
        self.n = 0

    def encode(self, arr: pa.Array) -> np.ndarray:
        vals, null = _int_values(arr)
        if null is None:
            return self._encode(vals)
        codes = np.zeros(vals.size, np.int32)
        codes[~null] = self._encode(vals[~null])
        return codes

    def _encode(self, v: np.ndarray) -> np.ndarray:
        if v.size == 0:
            return np.zeros(0, np.int32)
        lo, hi = int(v.min()), int(v.max())
        if self.base is None:
            self.base = min(lo, 0)
        base = self.base
        if lo >= base and hi - base < DIRECT_IDS:
            return self._window(v if base == 0 else v - base, hi - base)
        inside = (v >= base) & (v < base + DIRECT_IDS)
        out = np.empty(v.size, np.int32)
        if inside.any():
            rel = v[inside] - base
            out[inside] = self._window(rel, int(rel.max()))
        out[~inside] = self._sparse(v[~inside])
        return out

    def _window(self, rel: np.ndarray, top: int) -> np.ndarray:
        if top >= self.window.size:
            grown = np.zeros(min(DIRECT_IDS, max(top + 1, 2 * self.window.size)), np.int32)
            grown[: self.window.size] = self.window
            self.window = grown
        codes = self.window[rel]
        if codes.size and codes.min() == 0:  # mark the unseen ids, then number them in id order (the order of
            # first appearance is tracked apart, by _Firsts)
            new = codes == 0
            r = rel[new]
            self.window[r] = -1
            lo = int(r.min())
            fresh = np.flatnonzero(self.window[lo : int(r.max()) + 1] == -1) + lo
            self.window[fresh] = self._new(fresh + self.base)
            codes[new] = self.window[r]
        return codes

    def _sparse(self, v: np.ndarray) -> np.ndarray:
        d = pa.array(v).dictionary_encode()
        uniq, idx = d.dictionary.to_numpy(), d.indices.to_numpy()
        pos = np.searchsorted(self.sorted_keys, uniq)
        found = np.zeros(uniq.size, bool)
        if self.sorted_keys.size:
            found = self.sorted_keys[np.minimum(pos, self.sorted_keys.size - 1)] == uniq
        codes = np.zeros(uniq.size, np.int32)
        codes[found] = self.sorted_codes[pos[found]]
        if not found.all():
            new = uniq[~found]
            codes[~found] = fresh = self._new(new)
            keys = np.concatenate([self.sorted_keys, new])
            order = np.argsort(keys, kind="stable")
            self.sorted_keys, self.sorted_codes = keys[order], np.concatenate([self.sorted_codes, fresh])[order]
        return codes[idx]

    def _new(self, keys: np.ndarray) -> np.ndarray:
        codes = np.arange(self.n + 1, self.n + 1 + keys.size, dtype=np.int32)
        if self.n + 1 + keys.size > self.keys.size:
            grown = np.zeros(max(2 * self.keys.size, self.n + 1 + keys.size), np.int64)
            grown[: self.keys.size] = self.keys
            self.keys = grown
        self.keys[codes] = keys
        self.n += keys.size
        return codes

    def text(self, codes: np.ndarray) -> pa.Array:
        """The normalised text (decimal) of each code's id."""
        return pc.cast(pa.array(self.keys[codes]), pa.string())


class _StrKeys:
    """Text ids -> provisional codes 1..n in order of first sight (0 = null), vectorised: the distinct values
    of a batch (pyarrow's dictionary_encode) are hashed (stable_hash), found by binary search among the
    hashes seen so far and checked against their text; a text whose 64-bit hash another text took first
    (a collision, ~V^2 / 2^65 likely) is looked up by its text in a small dict."""

    def __init__(self) -> None:
        self.hashes = np.zeros(0, np.uint64)  # sorted hashes of the texts seen, and their codes
        self.codes = np.zeros(0, np.int32)
        self.texts: list[pa.Array] = []  # the texts in code order (code c is position c - 1)
        self.n = 0
        self.collided: dict[str, int] = {}

    def encode(self, arr: pa.Array) -> np.ndarray:
        d = _text(arr).dictionary_encode()
        values = d.dictionary
        u = len(values)
        table = np.zeros(u + 1, np.int32)  # the last entry is a null's
        if u:
            h = stable_hash(values, _TEXT_SEED)
            pos = np.searchsorted(self.hashes, h)
            hit = pos < self.hashes.size
            hit[hit] = self.hashes[pos[hit]] == h[hit]
            codes = np.zeros(u, np.int32)
            codes[hit] = self.codes[pos[hit]]
            odd: list[int] = []  # values whose hash belongs to another text
            if hit.any():
                j = np.flatnonzero(hit)
                same = pc.equal(self.text(codes[j]), values.take(pa.array(j)))
                odd += j[~np.asarray(same.to_numpy(zero_copy_only=False), bool)].tolist()
            new = np.flatnonzero(~hit)
            if new.size:
                order = new[np.argsort(h[new], kind="stable")]
                hs = h[order]
                lead = np.ones(order.size, bool)
                lead[1:] = hs[1:] != hs[:-1]
                reps = order[lead]  # one value per new hash; the others collide with it
                codes[reps] = fresh = self._append(values.take(pa.array(reps)))
                at = np.searchsorted(self.hashes, hs[lead])
                self.hashes = np.insert(self.hashes, at, hs[lead])
                self.codes = np.insert(self.codes, at, fresh)
                odd += order[~lead].tolist()
            for j in odd:  # collisions: by the text, one value at a time
                text = values[j].as_py()
                code = self.collided.get(text)
                if code is None:
                    code = self.collided[text] = int(self._append(pa.array([text], pa.string()))[0])
                codes[j] = code
            table[:u] = codes
        idx = d.indices
        if idx.null_count:
            idx = pc.fill_null(idx, u)
        return table[idx.to_numpy()]

    def _append(self, texts: pa.Array) -> np.ndarray:
        codes = np.arange(self.n + 1, self.n + 1 + len(texts), dtype=np.int32)
        self.texts.append(texts)
        if len(self.texts) > 64:
            self.texts = [pa.concat_arrays(self.texts)]
        self.n += len(texts)
        return codes

    def text(self, codes: np.ndarray) -> pa.Array:
        """The text of each code."""
        if len(self.texts) > 1:
            self.texts = [pa.concat_arrays(self.texts)]
        if not self.texts:
            return pa.array([], pa.string())
        return self.texts[0].take(pa.array(np.asarray(codes, np.int64) - 1))


class _Hashed:
    """hash_buckets > 0: index 1 + stable_hash(text) % buckets, 0 = null; the code is the final index."""

    def __init__(self, buckets: int) -> None:
        self.buckets = buckets
        self.n = buckets

    def encode(self, arr: pa.Array) -> np.ndarray:
        arr = _plain(arr)
        if pa.types.is_null(arr.type):
            return np.zeros(len(arr), np.int32)
        d = arr.dictionary_encode()
        table = np.empty(len(d.dictionary) + 1, np.int32)
        table[-1] = 0
        table[:-1] = 1 + (stable_hash(_text(d.dictionary)) % np.uint64(self.buckets)).astype(np.int64)
        idx = d.indices
        if idx.null_count:
            idx = pc.fill_null(idx, len(d.dictionary))
        return table[idx.to_numpy()]


class _Firsts:
    """Per code: training count and the order key of its first appearance (train rows only)."""

    def __init__(self) -> None:
        self.count = np.zeros(1024, np.int64)
        self.first = np.full(1024, _INF, np.int64)

    def grow(self, n: int) -> None:
        if n > self.count.size:
            size = max(n, 2 * self.count.size)
            self.count = np.concatenate([self.count, np.zeros(size - self.count.size, np.int64)])
            self.first = np.concatenate([self.first, np.full(size - self.first.size, _INF, np.int64)])

    def add(self, codes: np.ndarray, order_of: Callable[[np.ndarray], np.ndarray], floor: int,
            count: bool = True) -> None:
        """codes: occurrences (0 = null, ignored); order_of(positions) -> their order keys, increasing with the
        position, all >= floor, while every earlier batch's keys are < floor."""
        if codes.size == 0:
            return
        codes = codes.astype(np.intp, copy=False)  # once: bincount and the gather below would each cast int32
        bins = np.bincount(codes)
        self.grow(bins.size)
        if count:
            self.count[: bins.size] += bins
        fresh = (bins > 0) & (self.first[: bins.size] >= floor)  # codes not seen in an earlier batch
        fresh[0] = False
        if not fresh.any():
            return
        pos = np.flatnonzero(fresh[codes])
        earliest = np.full(bins.size, _INF, np.int64)
        np.minimum.at(earliest, codes[pos], pos)  # positions increase with the order key
        won = np.flatnonzero(earliest < _INF)
        self.first[won] = np.minimum(self.first[won], order_of(earliest[won]))


class _Moments:
    """Streaming count / mean / M2 (Chan et al.'s merge) / min / max of one dense field on train."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = np.inf, -np.inf

    def add(self, x: np.ndarray) -> None:
        x = x[~np.isnan(x)]
        if x.size == 0:
            return
        n, mean = x.size, float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))


def _distinct(sorted_keys: np.ndarray) -> np.ndarray:
    """The distinct values of a sorted array (np.unique's hash path is slow on wide int64 keys)."""
    if sorted_keys.size == 0:
        return sorted_keys
    keep = np.empty(sorted_keys.size, bool)
    keep[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=keep[1:])
    return sorted_keys[keep]


class _KeySet:
    """Distinct int64 keys in bounded memory: a bitmap for small key spaces, else sorted runs merged."""

    def __init__(self, space: int) -> None:
        self.bitmap = np.zeros(space, bool) if space <= PAIR_BITMAP else None
        self.runs: list[np.ndarray] = []
        self.merged = np.zeros(0, np.int64)
        self.pending = 0

    def add(self, keys: np.ndarray) -> None:
        if keys.size == 0:
            return
        if self.bitmap is not None:
            self.bitmap[keys] = True
            return
        run = _distinct(np.sort(keys))
        self.runs.append(run)
        self.pending += run.size
        if self.pending > max(1 << 22, 2 * self.merged.size):
            self._merge()

    def _merge(self) -> None:
        self.merged = _distinct(np.sort(np.concatenate([self.merged, *self.runs]), kind="stable"))  # merges runs
        self.runs, self.pending = [], 0

    def sorted(self) -> np.ndarray:
        if self.bitmap is not None:
            return np.flatnonzero(self.bitmap).astype(np.int64)
        self._merge()
        return self.merged


# -------------------------------------------------------------------------------------------- writing


class _Writer:
    """Runs file writes in one background thread, in order, at most `depth` pending (so memory stays bounded):
    the write system calls release the GIL, so they overlap the next batch's encoding."""

    def __init__(self, depth: int = 2) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Any] = []
        self.depth = depth

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > self.depth:
            self.pending.pop(0).result()

    def drain(self) -> None:
        """Wait for every pending write; re-raise the first failure."""
        error = None
        while self.pending:
            try:
                self.pending.pop(0).result()
            except BaseException as e:  # noqa: BLE001 - the first one is re-raised below
                error = error or e
        if error is not None:
            raise error

    def close(self) -> None:
        with contextlib.suppress(BaseException):
            self.drain()
        self.pool.shutdown(wait=True)


# -------------------------------------------------------------------------------------------- the prepare


@dataclass
class _Checked:
    n: int
    label: np.ndarray  # [n] float32
    test: np.ndarray | None  # [n] bool, None until the split is known (user split: from the group codes)
    dense: np.ndarray | None  # [n, D] float64 raw values, NaN = missing
    lengths: dict[str, np.ndarray]  # sequence field -> [n] lengths before truncation
    lists: dict[str, tuple[np.ndarray, np.ndarray, pa.Array]]


@dataclass
class _Encoded:
    """One batch's kept rows, checked and encoded (pass 1, handed from _encode1 to _fit1)."""
    n: int
    rows: np.ndarray  # [n] int64 global row numbers (order of appearance, counting skipped rows too)
    label: np.ndarray  # [n] float32
    test: np.ndarray | None  # [n] bool (None: no split column / time cutoff known; every row is train)
    dense: np.ndarray | None  # [n, D] float64 raw values, NaN = missing
    group: np.ndarray  # [n] group codes (provisional; the row index when the spec has no group)
    kept: dict[str, np.ndarray]  # sequence group -> [n] lengths after truncation to max_len
    codes: dict[str, np.ndarray]  # sparse field -> provisional codes: [n] categorical, [sum(kept)] sequence


class _Bad:
    """Row checks of one batch: (reason, mask, message of row i) in rule order."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.rules: list[tuple[str, np.ndarray, Callable[[int], str]]] = []

    def add(self, reason: str, mask: np.ndarray, message: Callable[[int], str]) -> None:
        if mask.any():
            self.rules.append((reason, mask, message))

    def any(self) -> np.ndarray | None:
        if not self.rules:
            return None
        out = np.zeros(self.n, bool)
        for _, mask, _ in self.rules:
            out |= mask
        return out

    def first(self) -> tuple[int, str]:
        row = min(int(np.argmax(mask)) for _, mask, _ in self.rules)
        message = next(msg for _, mask, msg in self.rules if mask[row])
        return row, message(row)

    def reasons(self) -> dict[str, int]:
        taken = np.zeros(self.n, bool)
        out: dict[str, int] = {}
        for reason, mask, _ in self.rules:
            k = int(np.count_nonzero(mask & ~taken))
            if k:
                out[reason] = out.get(reason, 0) + k
            taken |= mask
        return out


def _value(batch: pa.RecordBatch, column: str, row: int) -> Any:
    value = batch.column(batch.schema.get_field_index(column))[row].as_py()
    return value if not isinstance(value, str) or len(value) < 60 else value[:57] + "..."


class _TablePrepare:
    def __init__(self, spec: FeatureSpec, paths: list[Path], out: Path, *, list_sep: str, skip_bad_rows: bool,
                 batch_rows: int, fmt: str | None = None) -> None:
        if not list_sep:
            raise SpecError("--list-sep: must not be empty")
        if spec.split.by == "user" and not spec.group:
            raise SpecError("split.by = 'user' needs the top-level `group` column (whose values are the users)")
        self.spec, self.out = spec, out
        self.list_sep, self.skip = list_sep, skip_bad_rows
        self.sources = [TableSource(p, skip_bad_rows=skip_bad_rows, batch_rows=batch_rows, fmt=fmt) for p in paths]
        self.dense = spec.dense
        self.rows_read = 0
        self.rows_by_file: dict[str, int] = {}
        self.skipped: dict[str, int] = {}
        self.nulls = {s: {f.name: 0 for f in spec.sparse} for s in SPLITS}
        self.cutoff: float | None = None
        self._check_schemas()

    # ------------------------------------------------------------------------------------ schema checks

    def _roles(self) -> list[tuple[str, str, str]]:
        """(spec key, column, role) of every column the spec reads."""
        spec = self.spec
        roles = [("label", spec.label, "label")]
        if spec.group:
            roles.append(("group", spec.group, "group"))
        if spec.split.by == "time":
            roles.append(("time", spec.time, "time"))
        if spec.split.by == "column":
            roles.append(("split.column", spec.split.column, "split"))
        for i, f in enumerate(spec.fields):
            roles.append((f"fields[{i}] ({f.name!r}).column", f.column, f.kind))
        return roles

    def _check_schemas(self) -> None:
        first = self.sources[0]
        seen: dict[str, str] = {}
        roles = self._roles()
        for src in self.sources:
            types = src.types()
            for key, column, role in roles:
                if column not in types:
                    if src is first:
                        raise SpecError(f"{key}: {column!r} is not a column of {src.path} "
                                        f"(columns: {sorted(types)[:30]})")
                    raise TableError(src.path, f"column {column!r} is missing here but present in {first.path}; "
                                               "all inputs must share one schema")
                kind = _kind(types[column])
                if column in seen and not _compatible(seen[column], kind, role):
                    raise TableError(src.path, f"column {column!r} is {kind} here but {seen[column]} in "
                                               f"{first.path}; all inputs must share one schema")
                if column not in seen or seen[column] in ("null", "list<null>"):
                    seen[column] = kind
                problem = _role_problem(role, kind)
                if problem:
                    raise TableError(src.path, f"column {column!r} ({key}) is a {kind} column, {problem}")
        self.columns = list(dict.fromkeys(column for _, column, _ in roles))
        # one key space per embedding table: integers when every column of the table holds integers
        # (uint64 ids beyond int64 are read as text)
        wide = {c for src in self.sources for c, t in src.types().items() if _is_uint64(t)}
        self.modes: dict[str, str] = {}
        for table, fields in self.spec.tables().items():
            kinds = {_element(seen[f.column]) for f in fields}
            ints = kinds <= {"int", "null"} and "int" in kinds and not wide & {f.column for f in fields}
            self.modes[table] = "int" if ints else "str"
        if self.spec.group:
            self.group_mode = "int" if seen[self.spec.group] == "int" and self.spec.group not in wide else "str"

    # ------------------------------------------------------------------------------------ passes

    def run(self) -> Schema:
        spec, out = self.spec, self.out
        _clear_previous(out)
        self.writer = _Writer()
        with ThreadPoolExecutor(max_workers=1) as pool:
            digests: list[Any] = []
            try:
                if spec.split.by == "time":
                    self.cutoff = self._time_cutoff()
                # pass 1 writes each split in its final layout, with provisional codes and raw dense values;
                # pass 2 rewrites those columns in place (store.SplitRewriter)
                with contextlib.ExitStack() as stack:
                    self.stores = {s: stack.enter_context(SplitWriter(out, s, spec, dense_dtype=np.float64))
                                   for s in SPLITS}
                    try:
                        self._pass1()
                    finally:
                        self.writer.drain()  # every append is done before the writers close (or abort)
                pa.default_memory_pool().release_unused()  # pass 2 reads no input: return pass 1's decode buffers
                # the inputs' sha256 runs now, beside the vocabulary fit (one thread), not against pass 1's
                # decoding for the two cores
                digests = [pool.submit(describe_source, s.path) for s in self.sources]
                schema = self._pass2(digests)
            finally:
                self.writer.close()
        return schema

    def _batches(self) -> Iterator[tuple[TableSource, int, pa.RecordBatch]]:
        """(source, rows of that file before the batch, batch) over every input, prefetched."""

        def gen() -> Iterator[tuple[TableSource, int, pa.RecordBatch]]:
            for src in self.sources:
                before = 0
                for batch in src.batches(self.columns):
                    yield src, before, batch
                    before += batch.num_rows

        return _prefetch(gen(), depth=1)

    def _pass1(self) -> None:
        spec = self.spec
        self.coders: dict[str, Any] = {}
        for table, fields in spec.tables().items():
            f0 = fields[0]
            if f0.hash_buckets:
                self.coders[table] = _Hashed(f0.hash_buckets)
            else:
                self.coders[table] = _IntKeys() if self.modes[table] == "int" else _StrKeys()
        self.firsts = {t: _Firsts() for t, c in self.coders.items() if not isinstance(c, _Hashed)}
        # order key of a position: row * slots(table) + slot(field) + position in the sequence
        self.slots: dict[str, int] = {}
        self.table_slots: dict[str, int] = {}
        for table, fields in spec.tables().items():
            s = 0
            for f in fields:
                self.slots[f.name] = s
                s += 1 if f.kind == "categorical" else spec.sequence_group(f.group).max_len
            self.table_slots[table] = s
        self.moments = [_Moments() for _ in self.dense]
        self.group_coder: Any = None
        if spec.group:
            self.group_coder = _IntKeys() if self.group_mode == "int" else _StrKeys()
            self.group_first = _Firsts()
            self.test_flag = np.full(1024, -1, np.int8)
        self.null_seen: set[str] = set()  # sparse fields with a null id somewhere
        self.row = 0  # global number of rows read (order of appearance)
        self.kept = 0  # rows kept (the group index when the spec has no group)
        for src in self.sources:
            src.unparsed = 0  # count this pass's skipped CSV lines only (not the header peek's, nor pass 0's)
        # three stages on three threads, each batch handed on through a bounded queue: pyarrow decodes
        # (_batches), _encode1 checks the rows and interns every id into provisional codes (the coders are
        # touched by that thread alone), and this thread splits train / test, counts, tracks first
        # appearances and moments (_fit1) and hands the spill to the writer thread. The heavy numpy and
        # pyarrow calls release the GIL, so the stages overlap on two cores.
        def encoded() -> Iterator[_Encoded]:
            for src, before, batch in self._batches():
                try:
                    enc = self._encode1(src, before, batch)
                except (pa.ArrowException, OverflowError) as e:  # a value pyarrow cannot convert: name the file
                    raise TableError(src.path, f"cannot encode the rows after row {before} ({e})") from None
                if enc is not None:
                    yield enc

        for enc in _prefetch(encoded(), depth=1):
            self._fit1(enc)
        for src in self.sources:
            self.rows_by_file[str(src.path)] = self.rows_by_file.get(str(src.path), 0) + src.unparsed
            if src.unparsed:
                self.skipped["unparsable line"] = self.skipped.get("unparsable line", 0) + src.unparsed
        self.rows_read += sum(src.unparsed for src in self.sources)
        if self.rows_read == 0:
            raise TableError(self.sources[0].path if len(self.sources) == 1 else "--input",
                             "no rows in the input" + ("s" if len(self.sources) > 1 else ""))

    def _encode1(self, src: TableSource, before: int, batch: pa.RecordBatch) -> _Encoded | None:
        """Stage 2 of pass 1 (its own thread): check one batch's rows (raise, or drop and count the bad ones)
        and encode its ids; None when no row is left."""
        n = batch.num_rows
        self.rows_read += n
        self.rows_by_file[str(src.path)] = self.rows_by_file.get(str(src.path), 0) + n
        row0 = self.row
        self.row += n
        if n == 0:
            return None
        checked, bad = self._check(batch)
        rows = None
        if bad is not None:
            if not self.skip:
                i, message = bad.first()
                raise TableError(src.path, message + " (--skip-bad-rows skips such rows)", row=before + i + 1)
            for reason, k in bad.reasons().items():
                self.skipped[reason] = self.skipped.get(reason, 0) + k
            keep = ~bad.any()
            rows = row0 + np.flatnonzero(keep)
            batch = batch.filter(pa.array(keep))
            if batch.num_rows == 0:
                return None
            checked, bad = self._check(batch)
            if bad is not None:  # pragma: no cover - the rows left passed every rule
                raise RuntimeError(f"{src.path}: rows still bad after skipping the bad ones")
        n = batch.num_rows
        if rows is None:
            rows = np.arange(row0, row0 + n, dtype=np.int64)
        spec = self.spec
        col = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
        # the group column: GAUC codes and the user split
        if spec.group:
            gcodes = self.group_coder.encode(col[spec.group])
            if spec.split.by == "user":
                checked.test = self._user_test(gcodes)
        else:
            gcodes = np.arange(self.kept, self.kept + n, dtype=np.int64)
        self.kept += n
        codes = {}
        for f in spec.categorical:
            if col[f.column].null_count:
                self.null_seen.add(f.name)
            codes[f.name] = self._encode(f, col[f.column])
        kept = {}  # sequence group -> [n] lengths after truncation (the last max_len elements are kept)
        for g in spec.sequences:
            kept[g.name] = keep = np.minimum(checked.lengths[spec.group_fields(g.name)[0].name], g.max_len)
            for f in spec.group_fields(g.name):
                starts, lengths, values = checked.lists[f.name]
                starts = starts + (lengths - keep)
                if np.array_equal(starts[1:], starts[:-1] + keep[:-1]):
                    flat = values.slice(int(starts[0]), int(keep.sum()))
                else:
                    flat = values.take(pa.array(_ragged_take(starts, keep)))
                if flat.null_count:
                    self.null_seen.add(f.name)
                codes[f.name] = self._encode(f, flat)
        return _Encoded(n=n, rows=rows, label=checked.label, test=checked.test, dense=checked.dense, group=gcodes,
                        kept=kept, codes=codes)

    def _fit1(self, enc: _Encoded) -> None:
        """Stage 3 of pass 1: split one encoded batch into train / test, count the training occurrences and
        first appearances, accumulate the dense moments and spill both splits."""
        spec, rows = self.spec, enc.rows
        if spec.group:  # first appearance of each group over every kept row
            self.group_first.add(enc.group, lambda pos: rows[pos], int(rows[0]), count=False)
        # the rows of each split, and of each split's sequence positions (None: every one)
        test = enc.test
        if test is None or not test.any():
            masks: dict[str, np.ndarray | None] = {"train": None}
        elif test.all():
            masks = {"test": None}
        else:
            masks = {"train": ~test, "test": test}
        elems: dict[str, dict[str, np.ndarray | None]] = {s: {} for s in masks}
        for g, k in enc.kept.items():  # each sequence position's split: the test mask repeated, train its negation
            e = None if test is None or len(masks) == 1 else np.repeat(test, k)
            for s in masks:
                elems[s][g] = None if e is None else (e if s == "test" else ~e)
        out: dict[str, dict[str, np.ndarray]] = {s: {} for s in masks}
        fit = "train" in masks
        if fit:
            m = masks["train"]
            at = rows if m is None else rows[m]  # the global row number of each training row
            floor = int(at[0])
        for f in spec.categorical:
            codes = enc.codes[f.name]
            for s, m in masks.items():
                out[s][f"id.{f.name}"] = codes if m is None else codes[m]
            if fit and f.table in self.firsts:
                S, slot = self.table_slots[f.table], self.slots[f.name]
                self.firsts[f.table].add(out["train"][f"id.{f.name}"],
                                         lambda pos, S=S, slot=slot: at[pos] * S + slot, floor * S)
        for g in spec.sequences:
            keep = enc.kept[g.name]
            for s, m in masks.items():
                out[s][f"len.{g.name}"] = keep if m is None else keep[m]
            if fit:
                off = _offsets(out["train"][f"len.{g.name}"])
            for f in spec.group_fields(g.name):
                codes = enc.codes[f.name]
                for s in masks:
                    e = elems[s][g.name]
                    out[s][f"seq.{f.name}"] = codes if e is None else codes[e]
                if fit and f.table in self.firsts:
                    S, slot = self.table_slots[f.table], self.slots[f.name]

                    def order(pos: np.ndarray, off: np.ndarray = off, S: int = S, slot: int = slot) -> np.ndarray:
                        r = np.searchsorted(off, pos, side="right") - 1
                        return at[r] * S + slot + (pos - off[r])

                    self.firsts[f.table].add(out["train"][f"seq.{f.name}"], order, floor * S)
        for s, m in masks.items():
            dense = None
            if self.dense:
                dense = enc.dense if m is None else enc.dense[m]
                if s == "train":
                    for j, f in enumerate(self.dense):
                        self.moments[j].add(np.log1p(dense[:, j]) if f.norm == "log1p" else dense[:, j])
            cols = Columns(label=enc.label if m is None else enc.label[m],
                           group=enc.group if m is None else enc.group[m],
                           ids={f.name: out[s][f"id.{f.name}"] for f in spec.categorical},
                           offsets={g.name: _offsets(out[s][f"len.{g.name}"]) for g in spec.sequences},
                           values={f.name: out[s][f"seq.{f.name}"] for f in spec.sequential}, dense=dense)
            self.writer.submit(self.stores[s].append, cols)

    def _encode(self, f: Field, arr: pa.Array) -> np.ndarray:
        coder = self.coders[f.table]
        if isinstance(coder, _IntKeys):
            return coder.encode(arr)
        return coder.encode(arr if _kind(arr.type) in ("str", "null") else _text(arr))

    def _user_test(self, gcodes: np.ndarray) -> np.ndarray:
        coder = self.group_coder
        if coder.n + 1 > self.test_flag.size:
            self.test_flag = np.concatenate([self.test_flag, np.full(coder.n + 1, -1, np.int8)])
        need = self.test_flag[gcodes] < 0
        if need.any():
            fresh = np.flatnonzero(np.bincount(gcodes[need]))
            h = stable_hash(coder.text(fresh), self.spec.split.seed)
            threshold = np.uint64(int(self.spec.split.test_fraction * (1 << 53)))
            self.test_flag[fresh] = (h >> np.uint64(11)) < threshold
        return self.test_flag[gcodes] == 1

    def _check(self, batch: pa.RecordBatch) -> tuple[_Checked, _Bad | None]:
        """Parse what can make a row bad; a _Bad when some row is."""
        spec = self.spec
        n = batch.num_rows
        col = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
        bad = _Bad(n)
        # label
        x, invalid = _to_float(col[spec.label])
        missing = np.isnan(x) & ~invalid
        wrong = invalid | (~np.isnan(x) & (x != 0) & (x != 1))
        bad.add("null label", missing, lambda i: f"column {spec.label!r} (label) is missing")
        bad.add("label not 0/1", wrong,
                lambda i: f"column {spec.label!r} (label) must be 0 or 1, got {_value(batch, spec.label, i)!r}")
        label = np.where(missing | wrong, 0, x).astype(np.float32)
        # group
        if spec.group and col[spec.group].null_count:
            null = np.asarray(col[spec.group].is_null().to_numpy(zero_copy_only=False), bool)
            bad.add("null group", null, lambda i: f"column {spec.group!r} (group) is missing")
        # split
        test = None
        if spec.split.by == "time":
            t, invalid = _to_time(col[spec.time])
            missing = np.isnan(t) & ~invalid
            bad.add("null time", missing, lambda i: f"column {spec.time!r} (time) is missing")
            bad.add("bad time", invalid,
                    lambda i: f"column {spec.time!r} (time) is neither a number nor an ISO-8601 time: "
                              f"{_value(batch, spec.time, i)!r}")
            if self.cutoff is not None:
                test = _time_key(np.where(np.isnan(t), 0.0, t)) > np.uint64(self.cutoff)
        elif spec.split.by == "column":
            test, invalid = _split_flags(col[spec.split.column])
            c = spec.split.column
            bad.add("bad split value", invalid,
                    lambda i, c=c: f"column {c!r} (split.column) must be 0/1, true/false or train/test, got "
                              f"{_value(batch, c, i)!r}")
        # dense
        dense = None
        if self.dense:
            dense = np.empty((n, len(self.dense)), np.float64)
            for j, f in enumerate(self.dense):
                x, invalid = _to_float(col[f.column])
                c = f.column
                bad.add(f"bad number in {c}", invalid,
                        lambda i, c=c, name=f.name: f"column {c!r} (dense field {name!r}) is not a number: "
                                                    f"{_value(batch, c, i)!r}")
                with np.errstate(invalid="ignore"):
                    bad.add(f"infinite {c}", np.isinf(x), lambda i, c=c: f"column {c!r} is infinite")
                    if f.norm == "log1p":
                        bad.add(f"{c} <= -1 (log1p)", x <= -1,
                                lambda i, c=c: f"column {c!r} is {_value(batch, c, i)!r}; norm = 'log1p' needs "
                                               "values > -1")
                if f.nan == "error":
                    bad.add(f"missing {c}", np.isnan(x) & ~invalid,
                            lambda i, c=c, name=f.name: f"column {c!r} (field {name!r}, nan = 'error') is missing")
                dense[:, j] = x
        # sequences
        lengths: dict[str, np.ndarray] = {}
        lists: dict[str, tuple[np.ndarray, np.ndarray, pa.Array]] = {}
        for g in spec.sequences:
            fields = spec.group_fields(g.name)
            for f in fields:
                lists[f.name] = _lists(col[f.column], self.list_sep)
                lengths[f.name] = lists[f.name][1]
            a = fields[0]
            for b in fields[1:]:
                diff = lengths[a.name] != lengths[b.name]
                bad.add(f"sequence lengths differ ({g.name})", diff,
                        lambda i, a=a, b=b, g=g: f"fields {a.name!r} (column {a.column!r}, length "
                        f"{lengths[a.name][i]}) and {b.name!r} (column {b.column!r}, length {lengths[b.name][i]}) "
                        f"of sequence group {g.name!r} must have equal lengths")
        checked = _Checked(n=n, label=label, test=test, dense=dense, lengths=lengths, lists=lists)
        return checked, (bad if bad.rules else None)

    # ------------------------------------------------------------------------------------ time cutoff

    def _time_keys(self) -> Iterator[np.ndarray]:
        """Sortable uint64 keys of every valid time value (pass 0 reads only the time column)."""
        column = self.spec.time

        def gen() -> Iterator[np.ndarray]:
            for src in self.sources:
                before = 0
                for batch in src.batches([column]):
                    t, invalid = _to_time(batch.column(0))
                    bad = np.isnan(t) | invalid
                    if bad.any():
                        if not self.skip:
                            i = int(np.argmax(bad))
                            what = "is missing" if not invalid[i] else (
                                f"is neither a number nor an ISO-8601 time: {_value(batch, column, i)!r}")
                            raise TableError(src.path, f"column {column!r} (time) {what} (--skip-bad-rows skips "
                                                       "such rows)", row=before + i + 1)
                        t = t[~bad]
                    before += batch.num_rows
                    yield _time_key(t)

        return _prefetch(gen())

    def _time_cutoff(self) -> int:
        """The sortable key of the time value at rank round(N * (1 - test_fraction)) - 1 (0-based) among
        the N valid times: rows with a later time are test (ties with the cutoff stay in train)."""
        n, lo, hi = 0, None, None
        for keys in self._time_keys():
            if keys.size:
                n += keys.size
                lo = int(keys.min()) if lo is None else min(lo, int(keys.min()))
                hi = int(keys.max()) if hi is None else max(hi, int(keys.max()))
        if n == 0:
            raise TableError(self.sources[0].path, f"no valid value in the time column {self.spec.time!r}")
        k = n - int(round(n * self.spec.split.test_fraction)) - 1  # rank of the cutoff
        k = min(max(k, 0), n - 1)
        while True:
            span = hi - lo
            shift = max(0, span.bit_length() - (TIME_BINS - 1).bit_length())
            counts = np.zeros(TIME_BINS, np.int64)
            ulo, uhi = np.uint64(lo), np.uint64(hi)
            for keys in self._time_keys():
                keys = keys[(keys >= ulo) & (keys <= uhi)]
                counts += np.bincount(((keys - ulo) >> np.uint64(shift)).astype(np.int64), minlength=TIME_BINS)
            cum = np.cumsum(counts)
            b = int(np.searchsorted(cum, k, side="right"))
            k -= int(cum[b - 1]) if b else 0
            lo = lo + (b << shift)
            hi = min(hi, lo + (1 << shift) - 1)
            if shift == 0:
                return lo
            if counts[b] <= TIME_COLLECT:
                ulo, uhi = np.uint64(lo), np.uint64(hi)
                inside = [keys[(keys >= ulo) & (keys <= uhi)] for keys in self._time_keys()]
                return int(np.partition(np.concatenate(inside), k)[k])

    # ------------------------------------------------------------------------------------ pass 2

    def _fit(self) -> tuple[dict[str, np.ndarray], dict[str, pa.Array], dict[str, int]]:
        """-> (table -> [codes + 1] int32 lookup table code -> index, table -> raw ids of index 1.., sizes)."""
        luts, raw, sizes = {}, {}, {}
        for table, fields in self.spec.tables().items():
            coder = self.coders[table]
            if isinstance(coder, _Hashed):
                luts[table] = np.arange(coder.buckets + 1, dtype=np.int32)
                raw[table] = pa.array([f"<hash bucket {i}>" for i in range(1, coder.buckets + 1)], pa.string())
                sizes[table] = coder.buckets + 1
                continue
            st = self.firsts[table]
            st.grow(coder.n + 1)
            count, first = st.count[: coder.n + 1], st.first[: coder.n + 1]
            eligible = np.flatnonzero((count >= fields[0].min_count) & (np.arange(count.size) > 0))
            order = eligible[_by_count_then_first(count[eligible], first[eligible])]
            lut = np.zeros(coder.n + 1, np.int32)
            lut[order] = np.arange(1, order.size + 1, dtype=np.int32)
            luts[table] = lut
            raw[table] = coder.text(order)
            sizes[table] = order.size + 1
        return luts, raw, sizes

    def _pass2(self, digests: list[Any]) -> Schema:
        """Fit the vocabularies, rewrite both splits in place and write the vocabularies and schema.json;
        `digests`: futures of the inputs' descriptions (sha256), awaited at the end."""
        spec, out = self.spec, self.out
        luts, raw, sizes = self._fit()
        lut_arrays = {table: pa.array(lut) for table, lut in luts.items()}  # gathered from by _remap
        group_lut = None
        if spec.group:
            first = self.group_first.first[: self.group_coder.n + 1].copy()
            first[0] = _INF
            seen = np.flatnonzero(first < _INF)
            order = seen[np.argsort(first[seen])]  # first appearances are distinct: no stable sort needed
            group_lut = np.full(self.group_coder.n + 1, -1, np.int64)
            group_lut[order] = np.arange(order.size, dtype=np.int64)
        norms = {}
        for f, m in zip(self.dense, self.moments):
            norms[f.name] = _norm(f, m)
        pair_sets = {}
        for p in spec.cartesian:
            rows_ind = sizes[spec.field(p.induction).table]
            rows_feed = sizes[spec.field(p.feed).table]
            pair_sets[p.name] = (_KeySet(rows_ind * rows_feed), rows_feed)
        oov = {s: {f.name: 0 for f in spec.sparse} for s in SPLITS}
        samples, positives, max_len = {}, {}, {s: {g.name: 0 for g in spec.sequences} for s in SPLITS}
        group_seen = {}
        for split in SPLITS:
            n_rows = self.stores[split].n
            if n_rows == 0:
                raise TableError(self.sources[0].path if len(self.sources) == 1 else "--input", _empty_split(
                    split, self.spec, self.rows_read))
            samples[split], positives[split] = n_rows, 0
            seen_groups = np.zeros(self.group_coder.n + 1 if spec.group else 0, bool)
            rewriter = SplitRewriter(out, split, spec, dense_dtype=np.float64)
            try:
                with ThreadPoolExecutor(max_workers=2) as pool:
                    # row chunks are rewritten in place on two threads (numpy, pyarrow and the positional reads
                    # and writes release the GIL), a few in flight; their tallies are merged here, in order
                    pending: collections.deque = collections.deque()
                    try:
                        starts = range(0, n_rows, REWRITE_ROWS)
                        for r0 in itertools.chain(starts, [None]):  # None: the end, drain what is left
                            if r0 is not None:
                                pending.append(pool.submit(self._remap, rewriter, r0, min(r0 + REWRITE_ROWS, n_rows),
                                                           split, lut_arrays, group_lut, norms, pair_sets))
                            while len(pending) > (2 if r0 is not None else 0):
                                tally, keys, groups, pos = pending.popleft().result()
                                for name, k in tally["nulls"].items():
                                    self.nulls[split][name] += k
                                for name, k in tally["oov"].items():
                                    oov[split][name] += k
                                for name, k in tally["max_len"].items():
                                    max_len[split][name] = max(max_len[split][name], k)
                                for name, k in keys.items():
                                    pair_sets[name][0].add(k)
                                if spec.group:
                                    seen_groups[groups] = True
                                positives[split] += pos
                    finally:
                        for f in pending:
                            f.cancel()
            except BaseException:
                rewriter.abort()
                raise
            rewriter.close()
            group_seen[split] = int(np.count_nonzero(seen_groups)) if spec.group else samples[split]
        distinct_keys = {name: ks.sorted() for name, (ks, _) in pair_sets.items()}
        for table, ids in raw.items():
            _save_vocab(out, table, ids)
        for name, keys in distinct_keys.items():
            save_pair_keys(out, name, keys)
        written = sum(samples.values())
        skipped = sum(self.skipped.values())
        if written + skipped != self.rows_read:  # pragma: no cover - an internal accounting error
            raise RuntimeError(f"rows read {self.rows_read} != written {written} + skipped {skipped}")
        counts: dict[str, Any] = {
            "rows": {"read": self.rows_read, "written": samples, "skipped": skipped,
                     "skipped_by_reason": dict(sorted(self.skipped.items())), "by_file": self.rows_by_file},
            "samples": samples,
            "positive_rate": {s: round(positives[s] / samples[s], 6) for s in SPLITS},
            "split_users": group_seen,
            "oov": oov,
            "nulls": self.nulls,
            "pairs": {name: int(k.size) for name, k in distinct_keys.items()},
            "max_seq_len": max_len,
            "split": {"by": spec.split.by, "test_fraction": spec.split.test_fraction, "seed": spec.split.seed},
        }
        if self.cutoff is not None:
            counts["split"]["time_cutoff"] = _time_value(self.cutoff)
        schema = Schema(
            dataset=f"table:{_stem(self.sources[0].path)}",
            protocol="table",
            seed=spec.split.seed,
            spec=spec,
            vocab=sizes,
            splits=samples,
            pairs={name: int(k.size) + 1 for name, k in distinct_keys.items()},
            dense=norms,
            sources=[d.result() for d in digests],
            counts=counts,
            options={"list_sep": self.list_sep, "skip_bad_rows": self.skip,
                     "key_types": dict(sorted(self.modes.items())), "hash": "canctr stable_hash v1"},
        )
        schema.save(out / "schema.json")  # last: its presence marks a complete directory
        return schema

    def _count(self, f: Field, split: str, codes: np.ndarray, idx: np.ndarray,
               tally: dict[str, dict[str, int]]) -> None:
        """Nulls (code 0) and OOV ids (a code whose index is 0) of one field; skipped where they must be 0:
        no null was read, or training rows of a vocabulary with min_count 1, or a hashed table."""
        nulls = int(np.count_nonzero(codes == 0)) if f.name in self.null_seen else 0
        tally["nulls"][f.name] = nulls
        hashed = isinstance(self.coders[f.table], _Hashed)
        if not hashed and (split != "train" or f.min_count > 1):
            tally["oov"][f.name] = int(np.count_nonzero(idx == 0)) - nulls

    def _remap(self, rewriter: SplitRewriter, r0: int, r1: int, split: str, luts: dict[str, pa.Array],
               group_lut: np.ndarray | None, norms: dict[str, dict[str, float]],
               pair_sets: dict[str, tuple[_KeySet, int]]) -> tuple[dict[str, dict[str, int]], dict[str, np.ndarray],
                                                                  np.ndarray, int]:
        """Rows r0:r1 of a split rewritten in place: provisional codes -> fitted indices, group codes -> group
        index, raw dense -> normalised. Returns ({nulls, oov, max_len: name -> count} of the chunk, its Cartesian
        pair keys (training rows only), its group indices, its positives). Touches no shared state but its own
        rows: chunks are rewritten on several threads."""
        spec = self.spec
        chunk = rewriter.read(r0, r1)
        tally: dict[str, dict[str, int]] = {"nulls": {}, "oov": {}, "max_len": {}}
        for f in spec.categorical:
            codes = chunk.ids[f.name]
            chunk.ids[f.name] = idx = _gather(luts[f.table], codes)
            self._count(f, split, codes, idx, tally)
        for g in spec.sequences:
            lens = chunk.lengths(g.name)
            if lens.size:
                tally["max_len"][g.name] = int(lens.max())
            for f in spec.group_fields(g.name):
                codes = chunk.values[f.name]
                chunk.values[f.name] = idx = _gather(luts[f.table], codes)
                self._count(f, split, codes, idx, tally)
        if group_lut is not None:
            chunk.group = group_lut[chunk.group]
        if self.dense:
            raw = chunk.dense
            dense = np.empty(raw.shape, np.float32)
            for j, f in enumerate(self.dense):
                x = raw[:, j]
                if f.norm == "log1p":
                    x = np.log1p(x)
                norm = norms[f.name]
                x = np.where(np.isnan(x), norm["fill"], x)
                dense[:, j] = (x - norm["shift"]) / norm["scale"]
            chunk.dense = dense
        rewriter.write(r0, chunk)
        keys = {}
        if split == "train":
            for p in spec.cartesian:
                keys[p.name] = pair_keys(spec, chunk, p.induction, p.feed, pair_sets[p.name][1])
        return tally, keys, chunk.group, int(np.count_nonzero(chunk.label))


# -------------------------------------------------------------------------------------------- helpers


def _is_uint64(t: pa.DataType) -> bool:
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or (
            pa.types.is_dictionary(t)):
        t = t.value_type
    return t == pa.uint64()


def _element(kind: str) -> str:
    if kind.startswith("list<"):
        return kind[5:-1]
    return kind


_ROLE_KINDS = {
    "label": {"int", "float", "bool", "str", "null"},
    "group": {"int", "str", "bool", "null"},
    "time": {"int", "float", "str", "time", "null"},
    "split": {"int", "float", "bool", "str", "null"},
    "categorical": {"int", "str", "bool", "null"},
    "dense": {"int", "float", "bool", "str", "null"},
    "sequence": {"str", "null", "list<int>", "list<str>", "list<bool>", "list<null>"},
}


def _role_problem(role: str, kind: str) -> str | None:
    if kind in _ROLE_KINDS[role]:
        return None
    if role == "sequence":
        return "but a sequence field needs a list column of ids (or text split by --list-sep)"
    if kind.startswith("list<"):
        return f"but a {role} column holds one value per row (a list column only fits a sequence field)"
    if role in ("categorical", "group") and kind == "float":
        return "but ids must be integers or text (write the column as integers or strings)"
    return f"which a {role} column cannot be"


def _compatible(a: str, b: str, role: str) -> bool:
    if a == b or "null" in (a, b) or "list<null>" in (a, b):
        return True
    numeric = {"int", "float", "bool"}
    return role in ("label", "dense", "time", "split") and a in numeric and b in numeric


def _split_flags(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A split column -> ([n] test, [n] invalid): 1/true/"test" is test, 0/false/"train" train."""
    arr = _plain(arr)
    kind = _kind(arr.type)
    n = len(arr)
    if kind == "str":
        s = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
        is_test = pc.is_in(s, value_set=pa.array(["1", "true", "test", "1.0"]))
        is_train = pc.is_in(s, value_set=pa.array(["0", "false", "train", "0.0"]))
        test = np.asarray(pc.fill_null(is_test, False).to_numpy(zero_copy_only=False), bool)
        train = np.asarray(pc.fill_null(is_train, False).to_numpy(zero_copy_only=False), bool)
        return test, ~(test | train)
    if kind == "null":
        return np.zeros(n, bool), np.ones(n, bool)
    x, _ = _to_float(arr)
    return x == 1, ~((x == 0) | (x == 1))


def _by_count_then_first(count: np.ndarray, first: np.ndarray) -> np.ndarray:
    """The order of descending count, ties by ascending first appearance (np.lexsort((first, -count))), by one
    unstable sort of a combined key: first appearances are distinct positions, so their ranks break every
    tie, and numpy's SIMD sort of distinct int64 keys is several times faster than a stable two-key sort."""
    n = count.size
    if n == 0 or int(count.max()) >= (1 << 62) // n:  # the combined key would overflow
        return np.lexsort((first, -count))
    rank = np.empty(n, np.int64)
    rank[np.argsort(first)] = np.arange(n)
    return np.argsort((int(count.max()) - count) * n + rank)


def _time_key(t: np.ndarray) -> np.ndarray:
    """float64 -> uint64 with the same order (NaN excluded); -0.0 is 0.0."""
    bits = (np.asarray(t, np.float64) + 0.0).view(np.uint64)
    flip = np.where(bits >> np.uint64(63), np.uint64(_M64), np.uint64(1 << 63))
    return bits ^ flip


def _time_value(key: int) -> float:
    k = np.array([key], np.uint64)
    flip = np.where(k >> np.uint64(63), np.uint64(1 << 63), np.uint64(_M64))
    return float((k ^ flip).view(np.float64)[0])


def _norm(f: Field, m: _Moments) -> dict[str, float]:
    """{"shift", "scale", "fill", "log1p"}: x' = (t(x) - shift) / scale, t = log1p when log1p = 1, a missing
    x becomes `fill` (already in t's space)."""
    mean = m.mean if m.n else 0.0
    std = float(np.sqrt(m.m2 / m.n)) if m.n else 1.0
    if f.norm in ("standard", "log1p"):
        shift, scale = mean, std
    elif f.norm == "minmax":
        shift, scale = (m.lo, m.hi - m.lo) if m.n else (0.0, 1.0)
    else:
        shift, scale = 0.0, 1.0
    if not scale or not np.isfinite(scale):
        scale = 1.0
    fill = mean if f.nan == "mean" else 0.0
    return {"shift": float(shift), "scale": float(scale), "fill": float(fill),
            "log1p": 1.0 if f.norm == "log1p" else 0.0}


_JSON_PLAIN = r'^[\x20-\x21\x23-\x5b\x5d-\x7e]*$'  # printable ASCII but " and \\: json.dumps keeps it as is


def _save_vocab(out: Path, table: str, ids: pa.Array) -> None:
    """vocab/<table>.json as `schema.save_vocab` writes it ([PAD_NAME, raw id of index 1, ...]); ids that
    JSON needs no escape for are joined by pyarrow instead of going through Python strings."""
    if len(ids) and pc.all(pc.match_substring_regex(ids, _JSON_PLAIN)).as_py():
        joined = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(ids)], pa.int32()), ids), '", "')
        atomic_write_text(out / "vocab" / f"{table}.json", f'["{PAD_NAME}", "{joined[0].as_py()}"]\n')
    else:
        save_vocab(out, table, [PAD_NAME, *ids.to_pylist()])


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (*_COMPRESSION, *_FORMATS):
        name = name.removesuffix(suffix)
    return name


def _empty_split(split: str, spec: FeatureSpec, rows: int) -> str:
    hint = {"user": "raise split.test_fraction or add users", "time": "raise split.test_fraction (ties with the "
            "cutoff time stay in train)", "column": f"check the values of column {spec.split.column!r}"}[spec.split.by]
    return f"no {split} rows among {rows} rows read (split.by = {spec.split.by!r}); {hint}"


def _clear_previous(out: Path) -> None:
    """Remove what an earlier prepare wrote to `out` (schema.json first: the directory is incomplete now)."""
    (out / "schema.json").unlink(missing_ok=True)
    for sub in SPLITS:
        for p in (out / sub).glob("*.npy"):
            p.unlink()
    for p in (out / "vocab").glob("*.json"):
        p.unlink()
    for p in (out / "vocab" / "pairs").glob("*.npy"):
        p.unlink()


# -------------------------------------------------------------------------------------------- entry points


def prepare_table(
    spec: FeatureSpec | str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    list_sep: str = "|",
    skip_bad_rows: bool = False,
    batch_rows: int = BATCH_ROWS,
    input_format: str | None = None,
) -> Schema:
    """Encode the rows of `inputs` (paths or globs of Parquet / CSV / TSV / JSON-lines files) under `spec`
    into `out` (train/, test/, vocab/, schema.json). `input_format` (parquet | csv | tsv | json) overrides
    the format read from the file names. Raises SpecError or TableError naming the spec key or the file,
    row and column."""
    if not isinstance(spec, FeatureSpec):
        spec = FeatureSpec.load(spec)
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be >= 1, got {batch_rows}")
    paths = expand_inputs(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with small_pages(), kept_heap():  # the batches' large arrays reuse their pages (canctr/memory.py)
        return _TablePrepare(spec, paths, out, list_sep=list_sep, skip_bad_rows=skip_bad_rows,
                             batch_rows=batch_rows, fmt=input_format).run()


def format_table_summary(schema: Schema, seconds: float | None = None) -> str:
    """A few lines for humans: rows read / written / skipped, vocabulary sizes, OOV and nulls, time."""
    c = schema.counts
    rows = c["rows"]
    lines = [f"{schema.dataset}  protocol={schema.protocol}  split={c['split']['by']}  seed={schema.seed}"]
    written = rows["written"]
    lines.append(
        f"  rows read {rows['read']:,}: train {written['train']:,} + test {written['test']:,} written, "
        f"{rows['skipped']:,} skipped"
        + ("" if not rows["skipped"] else " (" + ", ".join(
            f"{k} {v:,}" for k, v in rows["skipped_by_reason"].items()) + ")")
    )
    lines.append("  positive rate: " + ", ".join(f"{s} {c['positive_rate'][s]:.4f}" for s in SPLITS)
                 + "; groups: " + ", ".join(f"{s} {c['split_users'][s]:,}" for s in SPLITS))
    if "time_cutoff" in c["split"]:
        lines.append(f"  time cutoff {c['split']['time_cutoff']!r} (later rows are test)")
    lines.append("  vocab (incl. index 0): " + ", ".join(f"{k} {v:,}" for k, v in schema.vocab.items())
                 + "".join(f", pairs {k} {v:,}" for k, v in schema.pairs.items()))
    for key, title in (("oov", "ids unseen in train (-> 0)"), ("nulls", "null ids (-> 0)")):
        for split in SPLITS:
            items = {k: v for k, v in c[key][split].items() if v}
            if items:
                lines.append(f"  {split} {title}: " + ", ".join(f"{k} {v:,}" for k, v in items.items()))
    if seconds is not None:
        lines.append(f"  {rows['read'] / max(seconds, 1e-9):,.0f} rows/s ({seconds:.2f}s)")
    return "\n".join(lines)


__all__ = ["BATCH_ROWS", "TableError", "TableSource", "as_floats", "as_lists", "expand_inputs", "format_table_summary",
           "input_format", "prepare_table", "stable_hash"]


# ---------------------------------------------------------------------------------- for scoring new rows


def as_lists(arr: pa.Array, sep: str = "|") -> pa.LargeListArray:
    """A sequence column as prepare reads it: a list column as it is, text split by `sep`; a null or empty
    value is an empty list. Used by batch scoring (`canctr predict`) to read inputs exactly as prepare did."""
    starts, lengths, values = _lists(arr, sep)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return pa.LargeListArray.from_arrays(pa.array(offsets), values.take(pa.array(_ragged_take(starts, lengths))))


def as_floats(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A dense column as prepare reads it: ([n] float64, NaN where missing; [n] bool, text that is no number)."""
    return _to_float(arr)
