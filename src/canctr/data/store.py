"""Ragged columnar storage of prepared splits: the only module that knows the disk layout.

    DIR/<split>/label.npy              [N] float32 in {0, 1}
    DIR/<split>/group.npy              [N] int64 (GAUC groups; a dense index over all users)
    DIR/<split>/dense.npy              [N, D] float32, the spec's dense fields in order (only if D > 0)
    DIR/<split>/<field>.npy            [N] int32, one per categorical field
    DIR/<split>/<group>.offsets.npy    [N + 1] int64, one per sequence group: sample i owns
                                       positions offsets[i] : offsets[i + 1] of every field of the group
    DIR/<split>/<field>.npy            [T_group] int32, one per sequence field, oldest first per sample
    DIR/<split>/extra.<name>.npy       [N] anything that is never a model input (e.g. true_prob)
    DIR/vocab/pairs/<induction>.<feed>.npy   [K] int64 sorted keys of the Cartesian pairs seen in training
                                       (induction index * rows of the feed table + feed index); id = rank + 1

Nothing is padded on disk (a Beauty history of median length 6 no longer costs a row of 100); the
loader pads each batch to its own longest sequence. Arrays are memory-mapped for reading, so resident
memory does not grow with the number of samples. Files are written through `SplitWriter`, which appends
chunks (prepare streams its input) and fixes each .npy header when the split is closed.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from canctr.data.spec import FeatureSpec

HEADER_BYTES = 128  # fixed .npy (v1) header size, so headers can be rewritten after appending


class StoreError(ValueError):
    """A stored split is missing, truncated or inconsistent; the message names the file."""


@dataclass
class Columns:
    """One split's arrays (in memory or memory-mapped). N samples, T_g positions of sequence group g."""

    label: np.ndarray  # [N] float32
    group: np.ndarray  # [N] int64
    ids: dict[str, np.ndarray]  # categorical field -> [N] int32
    offsets: dict[str, np.ndarray]  # sequence group -> [N + 1] int64
    values: dict[str, np.ndarray]  # sequence field -> [T_g] int32
    dense: np.ndarray | None = None  # [N, D] float32
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # [N] never model inputs

    @property
    def n(self) -> int:
        return int(self.label.shape[0])

    def lengths(self, group: str) -> np.ndarray:
        """[N] stored sequence length of every sample in `group`."""
        return np.diff(self.offsets[group])

    @classmethod
    def from_lengths(
        cls, spec: FeatureSpec, label: np.ndarray, group: np.ndarray, ids: dict[str, np.ndarray],
        lengths: dict[str, np.ndarray], flat: dict[str, np.ndarray], **rest,
    ) -> Columns:
        """Build from per-group lengths [N] and flat (row-major, valid positions only) sequence values."""
        offsets = {g: np.concatenate([[0], np.cumsum(lengths[g], dtype=np.int64)]) for g in lengths}
        return cls(label=label, group=group, ids=ids, offsets=offsets, values=flat, **rest)


# -------------------------------------------------------------------------------------------- writing


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A v1 .npy header padded to exactly HEADER_BYTES (numpy reads any such padding)."""
    d = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    body = repr(d).encode("latin1")
    room = HEADER_BYTES - 10  # magic (6) + version (2) + header length (2)
    if len(body) + 1 > room:
        raise StoreError(f"shape {shape} too long for a {HEADER_BYTES}-byte header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", room) + body + b" " * (room - len(body) - 1) + b"\n"


class _Appender:
    """An .npy file written by appending row chunks; the header (shape) is fixed in `close`."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...] = ()) -> None:
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), tuple(row_shape)
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed in close()/abort()
        self.file.write(b"\0" * HEADER_BYTES)
        self.rows = 0

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if arr.shape[1:] != self.row_shape:
            raise StoreError(f"{self.path.name}: rows of shape {arr.shape[1:]}, expected {self.row_shape}")
        self.file.write(arr.data)
        self.rows += arr.shape[0]

    def close(self) -> None:
        self.file.seek(0)
        self.file.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class SplitWriter:
    """Write one split chunk by chunk: `with SplitWriter(dir, "train", spec) as w: w.append(columns)`.

    Each chunk is a `Columns` whose offsets start at 0; they are rebased as they are appended. Files
    appear (atomically renamed) only when the block exits without an error.
    """

    def __init__(self, data_dir: str | os.PathLike, split: str, spec: FeatureSpec,
                 extras: dict[str, np.dtype] | None = None) -> None:
        self.dir = Path(data_dir) / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        n_dense = len(spec.dense)
        a: dict[str, _Appender] = {
            "label": _Appender(self.dir / "label.npy", np.float32),
            "group": _Appender(self.dir / "group.npy", np.int64),
        }
        if n_dense:
            a["dense"] = _Appender(self.dir / "dense.npy", np.float32, (n_dense,))
        for f in spec.categorical:
            a[f"id:{f.name}"] = _Appender(self.dir / f"{f.name}.npy", np.int32)
        for g in spec.sequences:
            a[f"off:{g.name}"] = _Appender(self.dir / f"{g.name}.offsets.npy", np.int64)
        for f in spec.sequential:
            a[f"seq:{f.name}"] = _Appender(self.dir / f"{f.name}.npy", np.int32)
        for name, dtype in (extras or {}).items():
            a[f"extra:{name}"] = _Appender(self.dir / f"extra.{name}.npy", dtype)
        self._a = a
        self._base = {g.name: 0 for g in spec.sequences}
        for g in spec.sequences:
            a[f"off:{g.name}"].append(np.zeros(1, np.int64))
        self.n = 0

    def append(self, cols: Columns) -> None:
        n = cols.n
        a = self._a
        a["label"].append(cols.label)
        a["group"].append(cols.group)
        if "dense" in a:
            if cols.dense is None or cols.dense.shape != (n, len(self.spec.dense)):
                raise StoreError(f"{self.dir}: dense chunk must be [{n}, {len(self.spec.dense)}]")
            a["dense"].append(cols.dense)
        for f in self.spec.categorical:
            a[f"id:{f.name}"].append(_rows(cols.ids, f.name, n, self.dir))
        for g in self.spec.sequences:
            off = np.asarray(cols.offsets[g.name], np.int64)
            if off.shape != (n + 1,) or off[0] != 0:
                raise StoreError(f"{self.dir}: offsets of group {g.name!r} must be [{n + 1}] starting at 0")
            for f in self.spec.group_fields(g.name):
                vals = cols.values[f.name]
                if vals.shape != (int(off[-1]),):
                    raise StoreError(f"{self.dir}: {f.name} has {vals.shape[0]} values, its group {int(off[-1])}")
                a[f"seq:{f.name}"].append(vals)
            a[f"off:{g.name}"].append(off[1:] + self._base[g.name])
            self._base[g.name] += int(off[-1])
        for key, app in a.items():
            if key.startswith("extra:"):
                app.append(_rows(cols.extras, key[6:], n, self.dir))
        self.n += n

    def __enter__(self) -> SplitWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for app in self._a.values():
            app.close() if exc_type is None else app.abort()


def _rows(arrays: dict[str, np.ndarray], name: str, n: int, where: Path) -> np.ndarray:
    if name not in arrays:
        raise StoreError(f"{where}: chunk lacks {name!r}")
    arr = arrays[name]
    if arr.shape[0] != n:
        raise StoreError(f"{where}: {name} has {arr.shape[0]} rows, expected {n}")
    return arr


def write_split(data_dir: str | os.PathLike, split: str, spec: FeatureSpec, cols: Columns) -> None:
    """Write a whole split at once."""
    extras = {k: v.dtype for k, v in cols.extras.items()}
    with SplitWriter(data_dir, split, spec, extras) as w:
        w.append(cols)


def pair_keys(spec: FeatureSpec, cols: Columns, induction: str, feed: str, rows_feed: int) -> np.ndarray:
    """Cartesian keys induction index * rows_feed + feed index of every valid position of a chunk (both
    indices > 0; a categorical side is repeated along the other side's sequence), unsorted, with repeats."""
    fa, fb = spec.field(induction), spec.field(feed)
    a = cols.ids[induction] if fa.kind == "categorical" else cols.values[induction]
    b = cols.ids[feed] if fb.kind == "categorical" else cols.values[feed]
    if fa.kind != fb.kind:
        lens = cols.lengths((fa if fa.kind == "sequence" else fb).group)
        if fa.kind == "categorical":
            a = np.repeat(a, lens)
        else:
            b = np.repeat(b, lens)
    keys = a.astype(np.int64) * rows_feed + b
    return keys[(a > 0) & (b > 0)]


def pair_keys_path(data_dir: str | os.PathLike, pair: str) -> Path:
    """Where the keys of Cartesian pair "induction>feed" live in a prepared directory."""
    induction, feed = pair.split(">")
    return Path(data_dir) / "vocab" / "pairs" / f"{induction}.{feed}.npy"


def save_pair_keys(data_dir: str | os.PathLike, pair: str, keys: np.ndarray) -> None:
    """Sorted distinct int64 keys of one Cartesian pair's training combinations."""
    path = pair_keys_path(data_dir, pair)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(keys, dtype=np.int64))
    os.replace(tmp, path)


def load_pair_keys(data_dir: str | os.PathLike, pair: str) -> np.ndarray:
    return _load(pair_keys_path(data_dir, pair), np.int64, 1, mmap=False)


# -------------------------------------------------------------------------------------------- reading


def _load(path: Path, dtype: np.dtype | None, ndim: int | None, *, mmap: bool, rows: int | None = None
          ) -> np.ndarray:
    """One .npy file, checked (dtype / ndim / rows where given); any problem is a StoreError naming it."""
    if not path.exists():
        raise StoreError(f"{path}: missing; was `canctr prepare` run to completion?")
    try:
        # "c" (copy-on-write) maps the file without reading it and gives torch a writable view
        arr = np.load(path, mmap_mode="c" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        size = path.stat().st_size
        raise StoreError(f"{path}: corrupt or truncated .npy file ({size} bytes; {e})") from None
    if (dtype is not None and arr.dtype != np.dtype(dtype)) or (ndim is not None and arr.ndim != ndim):
        raise StoreError(f"{path}: expected {np.dtype(dtype)} with {ndim} dims, got {arr.dtype} {arr.shape}")
    if rows is not None and (arr.ndim == 0 or arr.shape[0] != rows):
        raise StoreError(f"{path}: {arr.shape[0] if arr.ndim else 'no'} rows, expected {rows}")
    return arr


def read_split(data_dir: str | os.PathLike, split: str, spec: FeatureSpec, *, mmap: bool = True) -> Columns:
    """Open one split (memory-mapped by default), checking every file against `spec`."""
    d = Path(data_dir) / split
    if not d.is_dir():
        raise StoreError(f"{d}: split directory missing; was `canctr prepare` run with --out {data_dir}?")
    label = _load(d / "label.npy", np.float32, 1, mmap=mmap)
    n = label.shape[0]
    group = _load(d / "group.npy", np.int64, 1, mmap=mmap, rows=n)
    dense = _load(d / "dense.npy", np.float32, 2, mmap=mmap, rows=n) if spec.dense else None
    if dense is not None and dense.shape[1] != len(spec.dense):
        raise StoreError(f"{d / 'dense.npy'}: {dense.shape[1]} columns, the spec has {len(spec.dense)} dense fields")
    ids = {f.name: _load(d / f"{f.name}.npy", np.int32, 1, mmap=mmap, rows=n) for f in spec.categorical}
    offsets, values = {}, {}
    for g in spec.sequences:
        path = d / f"{g.name}.offsets.npy"
        off = _load(path, np.int64, 1, mmap=mmap, rows=n + 1)
        if n and (off[0] != 0 or np.any(np.diff(off) < 0)):
            raise StoreError(f"{path}: offsets must start at 0 and never decrease")
        offsets[g.name] = off
        total = int(off[-1]) if off.size else 0
        for f in spec.group_fields(g.name):
            vpath = d / f"{f.name}.npy"
            values[f.name] = _load(vpath, np.int32, 1, mmap=mmap)
            if values[f.name].shape[0] != total:
                raise StoreError(f"{vpath}: {values[f.name].shape[0]} values, but {path.name} ends at {total} "
                                 "(offsets and values disagree)")
    extras = {}
    for path in sorted(d.glob("extra.*.npy")):
        extras[path.name[len("extra."):-len(".npy")]] = _load(path, None, None, mmap=mmap, rows=n)
    return Columns(label=label, group=group, ids=ids, offsets=offsets, values=values, dense=dense, extras=extras)


__all__ = ["Columns", "SplitWriter", "StoreError", "load_pair_keys", "pair_keys", "pair_keys_path", "read_split",
           "save_pair_keys", "write_split"]
