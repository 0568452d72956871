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

import contextlib
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


_DTYPES = {"label": np.dtype(np.float32), "group": np.dtype(np.int64), "id": np.dtype(np.int32),
           "off": np.dtype(np.int64), "seq": np.dtype(np.int32)}


def _column_files(d: Path, spec: FeatureSpec) -> dict[str, Path]:
    """Column key ("label", "group", "dense", "id:<field>", "off:<group>", "seq:<field>") -> its file in split
    directory `d`."""
    files = {"label": d / "label.npy", "group": d / "group.npy"}
    if spec.dense:
        files["dense"] = d / "dense.npy"
    files.update({f"id:{f.name}": d / f"{f.name}.npy" for f in spec.categorical})
    files.update({f"off:{g.name}": d / f"{g.name}.offsets.npy" for g in spec.sequences})
    files.update({f"seq:{f.name}": d / f"{f.name}.npy" for f in spec.sequential})
    return files


class SplitWriter:
    """Write one split chunk by chunk: `with SplitWriter(dir, "train", spec) as w: w.append(columns)`.

    Each chunk is a `Columns` whose offsets start at 0; they are rebased as they are appended. Files
    appear (atomically renamed) only when the block exits without an error. `dense_dtype` float64 stages
    raw dense values for a `SplitRewriter` to normalise (a finished split's dense.npy is float32).
    """

    def __init__(self, data_dir: str | os.PathLike, split: str, spec: FeatureSpec,
                 extras: dict[str, np.dtype] | None = None, *, dense_dtype: np.dtype = np.float32) -> None:
        self.dir = Path(data_dir) / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.spec = spec
        n_dense = len(spec.dense)
        a: dict[str, _Appender] = {}
        for key, path in _column_files(self.dir, spec).items():
            dtype = np.dtype(dense_dtype) if key == "dense" else _DTYPES[key.split(":")[0]]
            a[key] = _Appender(path, dtype, (n_dense,) if key == "dense" else ())
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


class _InPlace:
    """One .npy file opened for reading and rewriting rows in place (positional reads and writes: no mapping,
    so resident memory stays at the chunks in hand)."""

    def __init__(self, path: Path, dtype: np.dtype, row_shape: tuple[int, ...] = ()) -> None:
        self.path = path
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else (
                    np.lib.format.read_array_header_2_0)
                shape, fortran, found = read_header(fh)
                self.start = fh.tell()
        except (OSError, ValueError) as e:
            raise StoreError(f"{path}: cannot open for rewriting ({e})") from None
        if found != np.dtype(dtype) or fortran or tuple(shape[1:]) != tuple(row_shape):
            raise StoreError(f"{path}: expected {np.dtype(dtype)} rows of shape {row_shape}, got {found} {shape}")
        self.dtype, self.rows = found, int(shape[0])
        self.row_bytes = found.itemsize * int(np.prod(row_shape, dtype=np.int64))
        self.row_shape = tuple(row_shape)
        self.fd = os.open(path, os.O_RDWR)

    def read(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.row_shape), self.dtype)
        if out.nbytes and os.preadv(self.fd, [memoryview(out).cast("B")], self.start + start * self.row_bytes) \
                != out.nbytes:
            raise StoreError(f"{self.path}: short read at row {start}")
        return out

    def write(self, start: int, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        if arr.nbytes and os.pwrite(self.fd, memoryview(arr).cast("B"), self.start + start * self.row_bytes) \
                != arr.nbytes:
            raise StoreError(f"{self.path}: short write at row {start}")

    def close(self) -> None:
        os.close(self.fd)


class SplitRewriter:
    """Rewrite a written split in place, row range by row range: `read(r0, r1)` gives the chunk's `Columns`
    (offsets are the split's own, so a sequence chunk's values start at `offsets[g][0]`), and `write(r0, cols)`
    puts back its ids, sequence values, groups and dense rows; labels and offsets stay. Chunks are disjoint,
    so several threads may rewrite at once. A split staged with `SplitWriter(dense_dtype=np.float64)` has its
    raw dense values read as float64 and written to a new float32 dense.npy, which replaces the staged one on
    `close()`. `prepare table` writes its provisional codes this way once and maps them to vocabulary indices
    here, instead of spilling them and writing every column a second time."""

    def __init__(self, data_dir: str | os.PathLike, split: str, spec: FeatureSpec, *,
                 dense_dtype: np.dtype = np.float32) -> None:
        self.dir = Path(data_dir) / split
        self.spec = spec
        self.files: dict[str, _InPlace] = {}
        self._dense_out: Path | None = None
        try:
            for key, path in _column_files(self.dir, spec).items():
                dtype = np.dtype(dense_dtype) if key == "dense" else _DTYPES[key.split(":")[0]]
                self.files[key] = _InPlace(path, dtype, (len(spec.dense),) if key == "dense" else ())
            self.n = self.files["label"].rows
            if "dense" in self.files and self.files["dense"].dtype != np.float32:
                self._dense_out = self.dir / f".dense.npy.tmp-{os.getpid()}"
                with open(self._dense_out, "wb") as fh:
                    fh.write(_npy_header(np.dtype(np.float32), (self.n, len(spec.dense))))
                    fh.truncate(HEADER_BYTES + self.n * len(spec.dense) * 4)
                self.dense_out = _InPlace(self._dense_out, np.float32, (len(spec.dense),))
        except BaseException:
            self.abort()
            raise

    def read(self, start: int, stop: int) -> Columns:
        f, spec = self.files, self.spec
        offsets, values = {}, {}
        for g in spec.sequences:
            offsets[g.name] = off = f[f"off:{g.name}"].read(start, stop + 1)
            for field_ in spec.group_fields(g.name):
                values[field_.name] = f[f"seq:{field_.name}"].read(int(off[0]), int(off[-1]))
        return Columns(label=f["label"].read(start, stop), group=f["group"].read(start, stop),
                       ids={x.name: f[f"id:{x.name}"].read(start, stop) for x in spec.categorical},
                       offsets=offsets, values=values,
                       dense=f["dense"].read(start, stop) if "dense" in f else None)

    def write(self, start: int, cols: Columns) -> None:
        f, spec = self.files, self.spec
        f["group"].write(start, cols.group)
        for x in spec.categorical:
            f[f"id:{x.name}"].write(start, cols.ids[x.name])
        for g in spec.sequences:
            first = int(cols.offsets[g.name][0])
            for field_ in spec.group_fields(g.name):
                f[f"seq:{field_.name}"].write(first, cols.values[field_.name])
        if cols.dense is not None:
            (self.dense_out if self._dense_out else f["dense"]).write(start, cols.dense)

    def close(self) -> None:
        for x in self.files.values():
            x.close()
        if self._dense_out is not None:
            self.dense_out.close()
            os.replace(self._dense_out, self.dir / "dense.npy")
            self._dense_out = None

    def abort(self) -> None:
        for x in self.files.values():
            with contextlib.suppress(OSError):
                x.close()
        if self._dense_out is not None:
            with contextlib.suppress(OSError):
                self.dense_out.close()
            self._dense_out.unlink(missing_ok=True)
            self._dense_out = None


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


def _decreases(off: np.ndarray, path: Path, chunk: int = 1 << 22) -> bool:
    """Whether offsets ever decrease, checked chunk by chunk. A mapped split's offsets are read from the file
    by plain reads, not through the mapping: a 150 M-sample split's offsets are 1.2 GB, and touching them all
    through the map would keep them in this process's resident set."""
    if not isinstance(off, np.memmap):
        return any(bool(np.any(np.diff(off[i : i + chunk + 1]) < 0)) for i in range(0, max(off.size - 1, 1), chunk))
    with open(path, "rb") as fh:
        fh.seek(off.offset)
        last = None
        while (a := np.fromfile(fh, np.int64, chunk)).size:
            if (last is not None and a[0] < last) or np.any(np.diff(a) < 0):
                return True
            last = a[-1]
    return False


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
        if n and (off[0] != 0 or _decreases(off, path)):
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


__all__ = ["Columns", "SplitRewriter", "SplitWriter", "StoreError", "load_pair_keys", "pair_keys", "pair_keys_path",
           "read_split", "save_pair_keys", "write_split"]
