"""Raw ids -> vocabulary indices, and already-mapped arrays -> a `Batch`, for scoring new data.

`RawIdMapper` turns the raw ids of each spec field (strings or integers, as the input tables had them)
into the indices the model was trained with, exactly as prepare encoded them:

* a vocabulary table (vocab/<table>.json: the raw id of each index, index 0 = padding / unknown): ids are
  compared as text (an integer 7 is "7"; in a table prepared with integer keys, key_type "int", a text id
  is read as an integer first, so "007" is 7); an id not in the vocabulary maps to 0 and is counted;
* a hashed table (hash_buckets > 0): 1 + stable_hash(text) % buckets (`canctr.data.table.stable_hash`,
  seed 0), never unknown;
* a null id maps to 0 (counted as unknown).

Lookups are vectorised: each vocabulary is hashed once (64-bit stable_hash) into a sorted array; a query
hashes its ids with numpy on the Arrow buffers, finds them by binary search and confirms the text, so no
Python runs per id (a vocabulary of decimal integers, as every preset writes, also keeps the integers
sorted: integer queries take one np.searchsorted). A request's text ids are first probed in a dict built
once per vocabulary (`_Table.lookup_known`, microseconds where pyarrow's calls cost tens of them); a field
with any id the dict does not hold goes the way above. Sequences come as lists per row (or a pyarrow list
array) and keep their most recent `max_len` positions, as prepare did; `make_batch` pads each group to its
longest row; `map_candidates` builds one user's K-candidate request, mapping the user side once.

It needs only the export directory (manifest.json + vocab/), or a run plus its prepared data, never the
training code: `RawIdMapper.from_export(DIR)`, `RawIdMapper.from_run(RUN_DIR)`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from canctr.data.batch import Batch, lengths_to_mask, user_side
from canctr.data.spec import FeatureSpec
from canctr.data.table import stable_hash

_LOOKUP_SEED = 0x5E7E  # seed of the lookup hashes (any fixed value; hashed fields use seed 0 as prepare does)
_SMALL = 1 << 20  # ids of one lookup up to which a vocabulary's dict is probed first (`_Table.lookup_known`;
# about 35 ns an id against pyarrow's ~25 us + ~110 ns an id for canonical integer text, measured to 4,096 ids)
_MAX_DICT = 1 << 21  # vocabularies up to this many ids keep that dict (a larger one only the sorted arrays)


def _as_text(values: Any, key_type: str) -> pa.Array:
    """Any array-like of ids -> a pyarrow string array (nulls kept). Integers become decimal text; in an
    integer-keyed table text ids are parsed as integers first (unparseable text -> null)."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values
    else:
        values = values.tolist() if isinstance(values, np.ndarray) and values.dtype == object else values
        try:
            arr = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # a list mixing integers and text (JSON): all as text
            if not all(v is None or isinstance(v, str) or type(v) is int for v in values):  # noqa: E721
                raise ValueError("ids must be integers or strings") from None
            arr = pa.array([v if v is None or isinstance(v, str) else str(v) for v in values], pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_null(arr.type):
        return pa.nulls(len(arr), pa.string())
    if pa.types.is_floating(arr.type):
        raise ValueError("ids must be integers or strings, got floating-point values")
    if key_type == "int" and (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        stripped = pc.utf8_trim_whitespace(arr)
        ok = pc.match_substring_regex(stripped, r"^[+-]?\d{1,18}$")
        arr = pc.if_else(ok, stripped, pa.scalar(None, pa.string()))
        arr = pc.cast(arr, pa.int64())
    if not (pa.types.is_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return arr


def _int_array(values: Any) -> np.ndarray | None:
    """[n] int64 when `values` are integers without nulls (a numpy / pyarrow integer array, or a list of Python
    ints), else None."""
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False) if values.dtype.kind in "iu" and values.dtype != np.uint64 else None
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        if pa.types.is_integer(values.type) and values.type != pa.uint64() and not values.null_count:
            return np.asarray(values.to_numpy(), np.int64) if isinstance(values, pa.Array) else \
                np.asarray(values.combine_chunks().to_numpy(), np.int64)
        return None
    if isinstance(values, (list, tuple)) and all(type(v) is int for v in values):  # noqa: E721 - bool is no id
        try:
            return np.asarray(values, np.int64)
        except OverflowError:
            return None
    return None


def _canonical_ints(text: pa.Array) -> np.ndarray | None:
    """[n] int64 when every id of the text array is the canonical decimal text of an int64 ("7", never "07",
    "+7" or " 7") and none is null, else None: such ids find their index by integer search, as the same
    ids sent as numbers do, without hashing the text."""
    if text.null_count:
        return None
    try:
        ints = pc.cast(text, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if not pc.all(pc.equal(pc.cast(ints, pa.string()), text)).as_py():
        return None
    return np.asarray(ints.to_numpy(), np.int64)


class _Table:
    """One embedding table's raw-id -> index map."""

    def __init__(self, name: str, *, ids: list[str] | None = None, hash_buckets: int = 0, key_type: str = "str"):
        self.name, self.buckets, self.key_type = name, hash_buckets, key_type
        self.int_sorted = self.int_index = self.keys = None
        if hash_buckets:
            return
        if ids is None:
            raise ValueError(f"table {name!r}: neither a vocabulary nor hash_buckets")
        self.size = len(ids)
        texts = pa.array(ids[1:], pa.string())  # index 0 is padding / unknown: never matched
        h = stable_hash(texts, _LOOKUP_SEED)
        order = np.argsort(h, kind="stable")
        self.sorted_hashes, self.index = h[order], order.astype(np.int64) + 1
        self.texts = texts
        self.exact = None  # a 64-bit collision between two vocabulary ids (practically never): exact lookup
        if np.any(self.sorted_hashes[1:] == self.sorted_hashes[:-1]):
            self.exact = texts
        # every id the canonical decimal text of an int64 (the presets' vocabularies): integer queries are
        # found by one binary search on the integers, no text at all
        if len(texts) and pc.all(pc.match_substring_regex(texts, r"^(0|-?[1-9]\d{0,17})$")).as_py():
            ints = np.asarray(pc.cast(texts, pa.int64()).to_numpy(), np.int64)
            order = np.argsort(ints, kind="stable")
            self.int_sorted, self.int_index = ints[order], order.astype(np.int64) + 1
        # text id -> index for small requests (`lookup_known`); an integer-keyed table only when every id is
        # canonical decimal text, so that a text hit is also what the integer reading finds. First index wins
        # on a repeated id, as the sorted searches do.
        if len(ids) - 1 <= _MAX_DICT and (key_type != "int" or self.int_sorted is not None):
            self.keys = dict(zip(reversed(ids[1:]), range(len(ids) - 1, 0, -1)))
            self.keys.pop(None, None)  # a null in the vocabulary is never matched (a null id is unknown)

    def lookup_known(self, values: Any) -> np.ndarray | None:
        """[n] ids -> [n] int64 indices when `values` is a list of at most _SMALL ids that are all text ids of
        the vocabulary, else None (then `lookup` gives the answer). One C-level dict probe per id: a request of
        a few hundred ids costs microseconds, where the Arrow path below has a fixed cost of tens of them. A list
        of integers is left to the integer search."""
        if self.keys is None or type(values) is not list or len(values) > _SMALL:  # noqa: E721
            return None
        if values and type(values[0]) is not str:  # noqa: E721 - integer ids: the integer search
            return None
        try:
            idx = np.fromiter(map(self.keys.get, values, repeat(0)), np.int64, len(values))
        except TypeError:  # an unhashable id (a list): the Arrow path says what is wrong
            return None
        # a miss is an unknown id, or one the rules below still find (an integer, "007" in an int-keyed table)
        return idx if idx.all() else None

    def lookup(self, values: Any) -> tuple[np.ndarray, int]:
        """[n] ids -> ([n] int64 indices, number of unknown or null ids)."""
        idx = self.lookup_known(values)
        return (idx, 0) if idx is not None else self.lookup_arrow(values)

    def lookup_arrow(self, values: Any) -> tuple[np.ndarray, int]:
        """`lookup` with pyarrow compute and numpy searches: any ids, any number (the reference of
        `lookup_known`)."""
        if self.int_sorted is not None and not self.buckets:
            ints = _int_array(values)
            if ints is not None:
                pos = np.searchsorted(self.int_sorted, ints).clip(max=self.int_sorted.size - 1)
                idx = np.where(self.int_sorted[pos] == ints, self.int_index[pos], 0)
                return idx, int(np.count_nonzero(idx == 0))
        text = _as_text(values, self.key_type)
        if self.int_sorted is not None and not self.buckets and len(text) and pa.types.is_string(text.type):
            ints = _canonical_ints(text)  # the presets' numeric ids sent as text (JSON strings, CSV columns)
            if ints is not None:
                pos = np.searchsorted(self.int_sorted, ints).clip(max=self.int_sorted.size - 1)
                idx = np.where(self.int_sorted[pos] == ints, self.int_index[pos], 0)
                return idx, int(np.count_nonzero(idx == 0))
        valid = np.asarray(pc.is_valid(text).to_numpy(zero_copy_only=False), bool)
        if self.buckets:
            idx = np.zeros(len(text), np.int64)
            if valid.any():
                # nulls hash as "" here and are zeroed below; prepare's _Hashed also maps a null to 0
                idx = 1 + (stable_hash(pc.fill_null(text, "")) % np.uint64(self.buckets)).astype(np.int64)
            idx[~valid] = 0
            return idx, int(np.count_nonzero(~valid))
        if self.exact is not None:
            pos = pc.fill_null(pc.index_in(text, value_set=self.exact), -1).to_numpy(zero_copy_only=False)
            idx = np.asarray(pos, np.int64) + 1
        else:
            h = stable_hash(pc.fill_null(text, ""), _LOOKUP_SEED)
            pos = np.searchsorted(self.sorted_hashes, h).clip(max=max(self.sorted_hashes.size - 1, 0))
            idx = np.zeros(len(text), np.int64)
            if self.sorted_hashes.size:
                hit = (self.sorted_hashes[pos] == h) & valid
                j = np.flatnonzero(hit)
                if j.size:  # confirm the text: a hash match of an id outside the vocabulary is unknown
                    cand = self.index[pos[j]]
                    same = pc.equal(self.texts.take(pa.array(cand - 1)), text.take(pa.array(j)))
                    ok = np.asarray(same.to_numpy(zero_copy_only=False), bool)
                    idx[j[ok]] = cand[ok]
        idx[~valid] = 0
        return idx, int(np.count_nonzero(idx == 0))


class RawIdMapper:
    """Maps raw ids of every sparse field of `spec` to indices; counts unknown ids per field (`unknown`).

    tables: table -> {"ids": [raw id of each index]} or {"hash_buckets": n}, optionally "key_type" ("int" |
    "str"). dense: field -> {"shift", "scale", "fill", "log1p"} (the fitted normalisation in schema.json).
    """

    def __init__(self, spec: FeatureSpec, tables: Mapping[str, Mapping[str, Any]],
                 dense: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self.spec = spec
        self.tables: dict[str, _Table] = {}
        for table in spec.tables():
            if table not in tables:
                raise ValueError(f"no vocabulary for table {table!r}")
            t = tables[table]
            self.tables[table] = _Table(table, ids=t.get("ids"), hash_buckets=int(t.get("hash_buckets") or 0),
                                        key_type=t.get("key_type", "str"))
        self.dense_norm = dict(dense or {})
        self.unknown: dict[str, int] = {f.name: 0 for f in spec.sparse}

    # ------------------------------------------------------------------------------------ constructors

    @classmethod
    def from_export(cls, export_dir: str | os.PathLike) -> RawIdMapper:
        """From an export directory: manifest.json and its vocab/ files only."""
        root = Path(export_dir)
        manifest = json.loads((root / "manifest.json").read_text())
        spec = FeatureSpec.from_dict(manifest["spec"])
        tables = {}
        for table, entry in manifest["vocab"].items():
            t = {"key_type": entry.get("key_type", "str"), "hash_buckets": entry.get("hash_buckets", 0)}
            if "file" in entry:
                t["ids"] = json.loads((root / entry["file"]).read_text())
            tables[table] = t
        return cls(spec, tables, manifest.get("dense"))

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike, data: str | os.PathLike | None = None) -> RawIdMapper:
        """From a training run (its checkpoint's schema) and its prepared data directory's vocabularies
        (default: the one in RUN_DIR/config.json)."""
        from canctr.data.schema import Schema
        from canctr.serve.export import _checkpoint_dir, _data_dir

        run_dir = Path(run_dir)
        schema = Schema.load(_checkpoint_dir(run_dir) / "schema.json")
        return cls.from_data(_data_dir(run_dir, data), schema)

    @classmethod
    def from_data(cls, data_dir: str | os.PathLike | None, schema: Any = None) -> RawIdMapper:
        """From a prepared data directory (its schema.json, or `schema`, and vocab/)."""
        from canctr.data.schema import Schema
        from canctr.serve.export import vocab_sources

        data_dir = None if data_dir is None else Path(data_dir)
        if schema is None:
            schema = Schema.load(data_dir)
        key_types = schema.options.get("key_types", {})
        tables = {}
        for table, src in vocab_sources(schema, data_dir).items():
            t: dict[str, Any] = {"key_type": key_types.get(table, "str")}
            t |= src if "hash_buckets" in src else {"ids": json.loads(Path(src["file"]).read_text())}
            tables[table] = t
        return cls(schema.spec, tables, schema.dense)

    # ------------------------------------------------------------------------------------ mapping

    def map_field(self, name: str, values: Any) -> np.ndarray:
        """A categorical field's raw ids [n] -> int64 indices [n]; unknown ids -> 0 (counted)."""
        f = self.spec.field(name)
        if f.kind != "categorical":
            raise ValueError(f"field {name!r} is {f.kind}; map_field takes categorical fields")
        try:
            idx, unknown = self.tables[f.table].lookup(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
            raise ValueError(f"field {name!r}: {str(e).splitlines()[0]}") from None
        self.unknown[name] += unknown
        return idx

    def map_sequence(self, name: str, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        """A sequence field's rows (a list of lists of raw ids, oldest first, or a pyarrow list array) ->
        (flat int64 indices of the kept positions, int64 lengths [n]); each row keeps its last max_len ids,
        a null row is empty. Unknown ids map to 0 (counted)."""
        f = self.spec.field(name)
        if f.kind != "sequence":
            raise ValueError(f"field {name!r} is {f.kind}; map_sequence takes sequence fields")
        known = self._known_sequence(f, rows)
        if known is not None:
            return known
        try:
            return self._map_sequence(f, rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as e:
            raise ValueError(f"field {name!r}: {str(e).splitlines()[0]}") from None

    def known_sequence(self, name: str, rows: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """`map_sequence` of a few rows whose ids are all known text ids, without pyarrow (a request's history):
        rows a list of lists -> (flat indices, lengths), or None when that does not hold (then `map_sequence`
        gives the answer, and counts the unknown ids)."""
        return self._known_sequence(self.spec.field(name), rows)

    def _known_sequence(self, f: Any, rows: Any) -> tuple[np.ndarray, np.ndarray] | None:
        table = self.tables.get(f.table)
        m = self.spec.sequence_group(f.group).max_len if f.kind == "sequence" else 0
        if table is None or table.keys is None or m <= 0 or type(rows) is not list or len(rows) > _SMALL:  # noqa: E721
            return None
        if not all(type(r) is list for r in rows):  # noqa: E721 - one check per row (per user), not per id
            return None
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        if lengths.max(initial=0) > m:  # each row keeps its last m ids
            rows = [r[-m:] if len(r) > m else r for r in rows]
        idx = table.lookup_known(list(chain.from_iterable(rows)))
        return None if idx is None else (idx, np.minimum(lengths, m))

    def _map_sequence(self, f: Any, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        name = f.name
        arr = rows if isinstance(rows, (pa.Array, pa.ChunkedArray)) else pa.array(rows)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        if pa.types.is_null(arr.type):
            arr = pa.array([[]] * len(arr), pa.list_(pa.string()))
        if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
            raise ValueError(f"a sequence is a list of ids per row, got {arr.type}")
        arr = pc.fill_null(arr, pa.scalar([], arr.type)) if arr.null_count else arr
        offsets = np.asarray(arr.offsets.to_numpy(), np.int64)
        offsets = offsets - offsets[0]
        lengths = np.diff(offsets)
        keep = np.minimum(lengths, self.spec.sequence_group(f.group).max_len)
        # positions kept: the last `keep` of each row
        starts = offsets[1:] - keep
        take = np.repeat(starts - np.r_[0, np.cumsum(keep)[:-1]], keep) + np.arange(int(keep.sum()))
        values = arr.flatten()
        idx, unknown = self.tables[f.table].lookup(values.take(pa.array(take)) if take.size != len(values) else values)
        self.unknown[name] += unknown
        return idx, keep

    def map_dense(self, values: Mapping[str, Any]) -> np.ndarray:
        """Raw dense values {field: [n] numbers, NaN / None = missing} -> [n, D] float32, normalised as prepare."""
        cols = []
        for f in self.spec.dense:
            if f.name not in values:
                raise ValueError(f"dense field {f.name!r} is missing")
            x = np.asarray(pa.array(values[f.name], pa.float64()).to_numpy(zero_copy_only=False), np.float64)
            norm = self.dense_norm.get(f.name) or {}
            if norm.get("log1p"):
                x = np.log1p(x)
            x = np.where(np.isnan(x), norm.get("fill", 0.0), x)
            cols.append((x - norm.get("shift", 0.0)) / norm.get("scale", 1.0))
        return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((0, 0), np.float32)

    def reset_counts(self) -> dict[str, int]:
        """Return the unknown-id counts so far and start again from zero."""
        out, self.unknown = self.unknown, {f.name: 0 for f in self.spec.sparse}
        return out


def pad_rows(flat: np.ndarray, lengths: np.ndarray, width: int | None = None) -> np.ndarray:
    """Ragged rows (flat values, lengths [B]) -> [B, W] int64, left-aligned, 0-padded; W = width or the
    longest row (at least 1)."""
    lengths = np.asarray(lengths, np.int64)
    B = lengths.size
    W = max(int(lengths.max()) if B else 0, 1) if width is None else width
    out = np.zeros((B, W), np.int64)
    n = int(lengths.sum())
    if n:
        rows = np.repeat(np.arange(B), lengths)
        cols = np.arange(n) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        out[rows, cols] = flat
    return out


def make_batch(spec: FeatureSpec, ids: Mapping[str, np.ndarray],
               sequences: Mapping[str, tuple[np.ndarray, np.ndarray]],
               dense: np.ndarray | None = None, user: np.ndarray | None = None) -> Batch:
    """A `Batch` from already-mapped arrays: ids[field] [B] for every categorical field, sequences[field] =
    (flat indices, lengths [B]) for every sequence field (the fields of one group must have equal lengths),
    dense [B, D] float32 when the spec has dense fields. Each group is padded to its longest row.

    user: [B] the user of each row; then the user-side fields (`canctr.data.batch.user_side`) hold one row per
    user, U = user.max() + 1, and the batch is user-shared (`Batch.user`)."""
    missing = [f.name for f in spec.sparse if f.name not in (ids if f.kind == "categorical" else sequences)]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    sparse = {f.name: torch.from_numpy(np.asarray(ids[f.name], np.int64)) for f in spec.categorical}
    lengths, masks = {}, {}
    B = None
    for g in spec.sequences:
        fields = spec.group_fields(g.name)
        lens = np.asarray(sequences[fields[0].name][1], np.int64)
        for f in fields[1:]:
            if not np.array_equal(np.asarray(sequences[f.name][1], np.int64), lens):
                raise ValueError(f"sequence fields {[x.name for x in fields]} of group {g.name!r} differ in length")
        width = max(int(lens.max()) if lens.size else 0, 1)
        for f in fields:
            sparse[f.name] = torch.from_numpy(pad_rows(sequences[f.name][0], lens, width))
        lengths[g.name] = torch.from_numpy(lens)
        masks[g.name] = lengths_to_mask(lengths[g.name], width)
    user_fields, user_groups = user_side(spec) if user is not None else (frozenset(), frozenset())
    for name, t in sparse.items():
        if name in user_fields:
            continue
        B = t.shape[0] if B is None else B
        if t.shape[0] != B:
            raise ValueError("fields differ in their number of rows")
    if user is not None:
        B = len(user)
        U = int(user.max()) + 1 if B else 0
        if any(sparse[n].shape[0] != U for n in user_fields):
            raise ValueError(f"user-side fields {sorted(user_fields)} must have one row per user ({U})")
    B = B or 0
    dense_t = None
    if spec.dense:
        if dense is None or np.asarray(dense).shape != (B, len(spec.dense)):
            raise ValueError(f"dense must be [{B}, {len(spec.dense)}] float32")
        dense_t = torch.from_numpy(np.ascontiguousarray(dense, np.float32))
    user_t = None if user is None else torch.from_numpy(np.asarray(user, np.int64))
    return Batch(label=torch.zeros(B), group=torch.zeros(B, dtype=torch.long), sparse=sparse, lengths=lengths,
                 masks=masks, dense=dense_t, user=user_t, user_fields=user_fields, user_groups=user_groups)


def map_rows(mapper: RawIdMapper, columns: Mapping[str, Any]) -> Batch:
    """Raw columns {field: [n] ids, or [n] lists of ids for a sequence field, or [n] numbers for a dense
    field} -> a Batch of indices (unknown ids counted in `mapper.unknown`)."""
    spec = mapper.spec
    ids = {f.name: mapper.map_field(f.name, columns[f.name]) for f in spec.categorical}
    seqs = {f.name: mapper.map_sequence(f.name, columns[f.name]) for f in spec.sequential}
    dense = mapper.map_dense({f.name: columns[f.name] for f in spec.dense}) if spec.dense else None
    return make_batch(spec, ids, seqs, dense)


def map_candidates(mapper: RawIdMapper, shared: Mapping[str, Any], candidates: Mapping[str, Any]) -> Batch:
    """One user's request as a Batch of K rows, one per candidate: `shared` holds the fields common to every
    row (the user's profile fields as one id each, the behaviour sequences as one list of ids each, dense
    values as one number), `candidates` the per-candidate fields ([K] ids, [K] lists, [K] numbers). Every
    spec field must be in exactly one of them. The shared fields are mapped once and repeated (no per-
    candidate mapping); unknown ids are counted once per occurrence in the request. When `shared` holds every
    user-side field (`canctr.data.batch.user_side`) the batch is user-shared: those fields keep one row and
    `Batch.user` is K zeros, so a model computes the user side once (`Batch.expanded()` repeats them)."""
    spec = mapper.spec
    both = sorted(set(shared) & set(candidates))
    missing = [f.name for f in spec.fields if f.name not in shared and f.name not in candidates]
    unknown = sorted((set(shared) | set(candidates)) - set(spec.names))
    if both or missing or unknown:
        problem = (f"field(s) {both} given both shared and per candidate" if both else
                   f"missing field(s) {missing}" if missing else f"unknown field(s) {unknown}")
        raise ValueError(problem)
    k = {len(v) for v in candidates.values()}
    if len(k) > 1:
        raise ValueError(f"candidate fields differ in length: {sorted(k)}")
    K = k.pop() if k else 1
    user_fields = user_side(spec)[0]
    by_user = user_fields <= set(shared)  # the user side once, shared by the K rows
    ids, seqs, dense_cols = {}, {}, {}
    for f in spec.fields:
        one = f.name in shared
        repeat = one and not (by_user and f.name in user_fields)
        values = [shared[f.name]] if one else candidates[f.name]
        if f.kind == "categorical":
            idx = mapper.map_field(f.name, values)
            ids[f.name] = np.repeat(idx, K) if repeat else idx
        elif f.kind == "sequence":
            flat, lens = mapper.map_sequence(f.name, values)
            seqs[f.name] = (np.tile(flat, K), np.repeat(lens, K)) if repeat else (flat, lens)
        else:
            dense_cols[f.name] = np.repeat(np.asarray(values, np.float64), K) if one else values
    dense = mapper.map_dense(dense_cols) if spec.dense else None
    return make_batch(spec, ids, seqs, dense, user=np.zeros(K, np.int64) if by_user else None)


__all__ = ["RawIdMapper", "make_batch", "map_candidates", "map_rows", "pad_rows"]
