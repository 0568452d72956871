"""store.py, the ragged on-disk layout: chunked writes equal one write, reads give back what was written, and
every damaged file (truncated, missing, inconsistent offsets, wrong dtype) is an error naming that file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from canctr.data.random_data import random_columns
from canctr.data.spec import FeatureSpec, Field, Pair, SequenceGroup
from canctr.data.store import (
    Columns,
    SplitRewriter,
    SplitWriter,
    StoreError,
    load_pair_keys,
    read_split,
    save_pair_keys,
    write_split,
)

SPEC = FeatureSpec(
    fields=[
        Field("user", side="user"),
        Field("item", side="item"),
        Field("price", kind="dense", side="item"),
        Field("hist_item", kind="sequence", side="user", table="item", group="hist"),
        Field("hist_cate", kind="sequence", side="user", table="cate", group="hist"),
        Field("tags", kind="sequence", side="item", table="tag", group="tags"),
    ],
    sequences=[SequenceGroup("hist", 9), SequenceGroup("tags", 3)],
    coaction=[Pair("item", "hist_item")],
    cartesian=[Pair("item", "hist_item")],
)
VOCAB = {"user": 50, "item": 40, "cate": 6, "tag": 9}
EXTRAS = {"true_prob": np.dtype(np.float32)}


def chunk(n: int, rng: np.random.Generator) -> Columns:
    cols = random_columns(SPEC, VOCAB, n, rng)
    cols.extras = {"true_prob": rng.random(n).astype(np.float32)}
    return cols


def concat(chunks: list[Columns]) -> Columns:
    """The chunks as one split: rows stacked, each group's offsets rebased onto the previous chunks'."""
    offsets = {}
    for g in chunks[0].offsets:
        base, parts = 0, [np.zeros(1, np.int64)]
        for c in chunks:
            parts.append(np.asarray(c.offsets[g][1:], np.int64) + base)
            base += int(c.offsets[g][-1])
        offsets[g] = np.concatenate(parts)

    def cat(get) -> np.ndarray:  # noqa: ANN001
        return np.concatenate([get(c) for c in chunks])

    return Columns(
        label=cat(lambda c: c.label), group=cat(lambda c: c.group),
        ids={k: cat(lambda c, k=k: c.ids[k]) for k in chunks[0].ids}, offsets=offsets,
        values={k: cat(lambda c, k=k: c.values[k]) for k in chunks[0].values},
        dense=cat(lambda c: c.dense), extras={k: cat(lambda c, k=k: c.extras[k]) for k in chunks[0].extras},
    )


def assert_same(a: Columns, b: Columns) -> None:
    for name in ("label", "group", "dense"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for attr in ("ids", "offsets", "values", "extras"):
        x, y = getattr(a, attr), getattr(b, attr)
        assert x.keys() == y.keys(), attr
        for k in x:
            assert np.array_equal(x[k], y[k]), f"{attr}[{k}]"


def files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, Columns]:
    cols = concat([chunk(n, np.random.default_rng(n)) for n in (7, 12)])
    write_split(tmp_path / "d", "train", SPEC, cols)
    return tmp_path / "d", cols


# ------------------------------------------------------------------------------------------ round trip


def test_chunked_writes_equal_one_write_and_read_back(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    chunks = [chunk(n, rng) for n in (5, 0, 17, 1, 9)]  # an empty chunk included
    with SplitWriter(tmp_path / "a", "train", SPEC, extras=EXTRAS) as w:
        for c in chunks:
            w.append(c)
    assert w.n == 32
    whole = concat(chunks)
    write_split(tmp_path / "b", "train", SPEC, whole)
    a = files(tmp_path / "a")
    assert a == files(tmp_path / "b")  # byte for byte
    expected = {"train/label.npy", "train/group.npy", "train/dense.npy", "train/user.npy", "train/item.npy",
                "train/hist.offsets.npy", "train/hist_item.npy", "train/hist_cate.npy", "train/tags.offsets.npy",
                "train/tags.npy", "train/extra.true_prob.npy"}
    assert set(a) == expected
    for mmap in (True, False):
        back = read_split(tmp_path / "a", "train", SPEC, mmap=mmap)
        assert_same(back, whole)
        assert isinstance(back.values["hist_item"], np.memmap) == mmap
        assert back.n == 32 and back.lengths("hist").tolist() == np.diff(whole.offsets["hist"]).tolist()
    # the files are plain .npy: numpy reads them without canctr
    assert np.array_equal(np.load(tmp_path / "a" / "train" / "hist_item.npy"), whole.values["hist_item"])
    assert np.load(tmp_path / "a" / "train" / "hist_item.npy").dtype == np.int32


def test_rewriter_rewrites_chunks_in_place_and_stages_dense(tmp_path: Path) -> None:
    """SplitRewriter (prepare table's pass 2): rows read back in any chunking are the written rows (offsets the
    split's own); what is written back replaces ids, sequence values, groups and dense rows in place, labels and
    offsets stay; a float64-staged dense.npy becomes float32 on close, and abort leaves the staged file."""
    rng = np.random.default_rng(3)
    whole = concat([chunk(n, rng) for n in (7, 12, 4)])
    raw = rng.normal(size=(whole.n, 1))  # float64 staged dense values
    staged = Columns(label=whole.label, group=whole.group, ids=whole.ids, offsets=whole.offsets,
                     values=whole.values, dense=raw)
    for d in ("a", "b"):
        with SplitWriter(tmp_path / d, "train", SPEC, dense_dtype=np.float64) as w:
            w.append(staged)
    with pytest.raises(StoreError, match="float32"):
        SplitRewriter(tmp_path / "a", "train", SPEC)  # the staged dense file is float64
    rw = SplitRewriter(tmp_path / "a", "train", SPEC, dense_dtype=np.float64)
    assert rw.n == whole.n
    for r0, r1 in ((0, 10), (10, 11), (11, 23)):
        part = rw.read(r0, r1)
        assert part.offsets["hist"].tolist() == whole.offsets["hist"][r0:r1 + 1].tolist()
        lo, hi = int(whole.offsets["hist"][r0]), int(whole.offsets["hist"][r1])
        assert part.values["hist_item"].tolist() == whole.values["hist_item"][lo:hi].tolist()
        assert np.array_equal(part.dense, raw[r0:r1]) and part.dense.dtype == np.float64
        part.ids = {k: v + 100 for k, v in part.ids.items()}
        part.values = {k: v * 2 for k, v in part.values.items()}
        part.group = part.group + 1000
        part.dense = (part.dense * 10).astype(np.float32)
        rw.write(r0, part)
    rw.close()
    back = read_split(tmp_path / "a", "train", SPEC)
    assert np.array_equal(back.label, whole.label)
    assert np.array_equal(back.offsets["tags"], whole.offsets["tags"])
    assert np.array_equal(back.ids["item"], whole.ids["item"] + 100)
    assert np.array_equal(back.values["hist_cate"], whole.values["hist_cate"] * 2)
    assert np.array_equal(back.group, whole.group + 1000)
    assert back.dense.dtype == np.float32 and np.allclose(back.dense, raw * 10)
    assert not [p.name for p in (tmp_path / "a").rglob(".*")]
    rw = SplitRewriter(tmp_path / "b", "train", SPEC, dense_dtype=np.float64)
    rw.abort()
    assert np.load(tmp_path / "b" / "train" / "dense.npy").dtype == np.float64
    assert not [p.name for p in (tmp_path / "b").rglob(".*")]


def test_empty_split_and_split_without_sequences(tmp_path: Path) -> None:
    write_split(tmp_path, "test", SPEC, concat([chunk(0, np.random.default_rng(1))]))
    back = read_split(tmp_path, "test", SPEC)
    assert back.n == 0 and back.offsets["hist"].tolist() == [0] and back.values["tags"].size == 0
    flat = FeatureSpec(fields=[Field("user"), Field("ad")])
    cols = Columns(label=np.array([1, 0], np.float32), group=np.array([3, 4]),
                   ids={"user": np.array([1, 2], np.int32), "ad": np.array([5, 6], np.int32)}, offsets={}, values={})
    write_split(tmp_path, "train", flat, cols)
    assert_same(read_split(tmp_path, "train", flat), cols)


def test_pair_keys_round_trip(tmp_path: Path) -> None:
    keys = np.array([3, 41, 42, 1000], np.int64)
    save_pair_keys(tmp_path, "item>hist_item", keys)
    assert (tmp_path / "vocab" / "pairs" / "item.hist_item.npy").is_file()
    assert load_pair_keys(tmp_path, "item>hist_item").tolist() == keys.tolist()
    with pytest.raises(StoreError, match=r"cate.hist_cate.npy: missing"):
        load_pair_keys(tmp_path, "cate>hist_cate")


# ------------------------------------------------------------------------------------------ writing


def test_a_failed_write_leaves_no_files(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), SplitWriter(tmp_path, "train", SPEC, extras=EXTRAS) as w:
        w.append(chunk(4, np.random.default_rng(2)))
        raise RuntimeError("encoding failed")
    assert list((tmp_path / "train").iterdir()) == []  # neither the files nor their temporaries


def test_bad_chunks_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    cases = []
    c = chunk(4, rng)
    del c.ids["item"]
    cases.append((c, "chunk lacks 'item'"))
    c = chunk(4, rng)
    c.offsets["hist"] = c.offsets["hist"] + 1
    cases.append((c, "offsets of group 'hist' must be \\[5\\] starting at 0"))
    c = chunk(4, rng)
    c.values["hist_cate"] = c.values["hist_cate"][:-1]
    cases.append((c, "hist_cate has .* values, its group"))
    c = chunk(4, rng)
    c.dense = None
    cases.append((c, "dense chunk must be \\[4, 1\\]"))
    c = chunk(4, rng)
    c.ids["user"] = c.ids["user"][:3]
    cases.append((c, "user has 3 rows, expected 4"))
    c = chunk(4, rng)
    c.extras = {}
    cases.append((c, "chunk lacks 'true_prob'"))
    for k, (c, problem) in enumerate(cases):
        with pytest.raises(StoreError, match=problem), SplitWriter(tmp_path / str(k), "train", SPEC, EXTRAS) as w:
            w.append(c)
        assert list((tmp_path / str(k) / "train").iterdir()) == []


# ------------------------------------------------------------------------------------------ damaged files


@pytest.mark.parametrize("cut", [4, 100])  # into the data, into the header
@pytest.mark.parametrize("name", ["hist_item.npy", "label.npy", "hist.offsets.npy", "extra.true_prob.npy"])
def test_truncated_file_is_named(written: tuple[Path, Columns], name: str, cut: int) -> None:
    d, _ = written
    path = d / "train" / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut] if cut < len(data) else data[:10])
    for mmap in (True, False):
        with pytest.raises(StoreError, match=re.escape(str(path)) + r": corrupt or truncated \.npy file"):
            read_split(d, "train", SPEC, mmap=mmap)


@pytest.mark.parametrize("name", ["label.npy", "item.npy", "dense.npy", "hist.offsets.npy", "hist_cate.npy",
                                  "tags.npy"])
def test_missing_file_is_named(written: tuple[Path, Columns], name: str) -> None:
    d, _ = written
    (d / "train" / name).unlink()
    with pytest.raises(StoreError, match=re.escape(str(d / "train" / name)) + ": missing"):
        read_split(d, "train", SPEC)


def test_missing_split_is_named(written: tuple[Path, Columns]) -> None:
    d, _ = written
    with pytest.raises(StoreError, match=re.escape(str(d / "test")) + ": split directory missing"):
        read_split(d, "test", SPEC)


def test_offsets_inconsistent_with_values_are_named(written: tuple[Path, Columns]) -> None:
    d, cols = written
    off_path = d / "train" / "hist.offsets.npy"
    total = int(cols.offsets["hist"][-1])
    bad = cols.offsets["hist"].copy()
    bad[-1] += 3  # claims 3 values more than hist_item.npy holds
    np.save(off_path, bad)
    with pytest.raises(StoreError, match=re.escape(str(d / "train" / "hist_item.npy"))
                       + rf": {total} values, but hist.offsets.npy ends at {total + 3}"):
        read_split(d, "train", SPEC)
    bad = cols.offsets["hist"].copy()
    bad[2], bad[3] = bad[3] + 1, bad[2]  # a decreasing step
    np.save(off_path, bad)
    with pytest.raises(StoreError, match=re.escape(str(off_path)) + ": offsets must start at 0 and never decrease"):
        read_split(d, "train", SPEC)
    np.save(off_path, cols.offsets["hist"] + 1)  # not starting at 0
    with pytest.raises(StoreError, match=re.escape(str(off_path)) + ": offsets must start at 0"):
        read_split(d, "train", SPEC)
    np.save(off_path, cols.offsets["hist"][:-1])  # one sample short
    with pytest.raises(StoreError, match=re.escape(str(off_path)) + rf": {cols.n} rows, expected {cols.n + 1}"):
        read_split(d, "train", SPEC)


def test_wrong_dtype_or_rows_are_named(written: tuple[Path, Columns]) -> None:
    d, cols = written
    path = d / "train" / "item.npy"
    np.save(path, cols.ids["item"].astype(np.int64))
    with pytest.raises(StoreError, match=re.escape(str(path)) + ": expected int32 with 1 dims, got int64"):
        read_split(d, "train", SPEC)
    np.save(path, cols.ids["item"][:-2])
    with pytest.raises(StoreError, match=re.escape(str(path)) + rf": {cols.n - 2} rows, expected {cols.n}"):
        read_split(d, "train", SPEC)
    np.save(path, cols.ids["item"])
    extra = d / "train" / "extra.true_prob.npy"
    np.save(extra, cols.extras["true_prob"][:1])
    with pytest.raises(StoreError, match=re.escape(str(extra)) + rf": 1 rows, expected {cols.n}"):
        read_split(d, "train", SPEC)
