"""`canctr prepare table`: Parquet / CSV / JSON-lines under a feature spec, checked against a plain-Python
reference of the same rules (vocabulary order, OOV, truncation, normalisation, splits, pairs) and for
every error it names."""

from __future__ import annotations

import csv
import gzip
import json
import math
import random
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import canctr.data.table as table
from canctr.data.schema import Schema
from canctr.data.spec import FeatureSpec, SpecError
from canctr.data.store import load_pair_keys, read_split
from canctr.data.table import TableError, prepare_table, stable_hash

# -------------------------------------------------------------------------------------------- data


def make_rows(n: int = 240, seed: int = 0) -> list[dict]:
    """Rows with every column kind: int user ids, text item ids, nullable int categories, dense values with
    gaps, two sequence groups (aligned item/cate history; tags) of lengths beyond max_len, time ties."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        length = rng.randint(0, 7)
        rows.append({
            "click": rng.randint(0, 1),
            "uid": rng.randint(1, 30),
            "item": f"i{rng.randint(1, 25)}" if i % 50 else ['i"q', "ü,5", "i\\x"][i // 50 % 3],  # JSON escapes
            "cate": rng.randint(1, 6) if rng.random() > 0.1 else None,
            "price": round(rng.random() * 100, 3) if rng.random() > 0.15 else None,
            "age": rng.randint(15, 70),
            "hist_item": [f"i{rng.randint(1, 25)}" for _ in range(length)],
            "hist_cate": [rng.randint(1, 6) for _ in range(length)],
            "tags": [f"t{rng.randint(0, 5)}" for _ in range(rng.randint(0, 4))],
            "ts": 1000 + i // 3,  # ties
            "is_test": int(rng.random() < 0.25),
        })
    return rows


def spec_dict(**split) -> dict:
    return {
        "label": "click",
        "group": "uid",
        "time": "ts",
        "split": {"by": "column", "column": "is_test", "test_fraction": 0.25, "seed": 7, **split},
        "fields": [
            {"name": "user", "column": "uid", "side": "user"},
            {"name": "item", "side": "item"},
            {"name": "cate", "side": "item"},
            {"name": "price", "kind": "dense", "norm": "log1p", "nan": "mean"},
            {"name": "age", "kind": "dense", "norm": "standard"},
            {"name": "hist_item", "kind": "sequence", "side": "user", "table": "item", "group": "hist"},
            {"name": "hist_cate", "kind": "sequence", "side": "user", "table": "cate", "group": "hist"},
            {"name": "tags", "kind": "sequence", "side": "item"},
        ],
        "sequences": [{"name": "hist", "max_len": 4}, {"name": "tags", "max_len": 2}],
        "coaction": [{"induction": "item", "feed": "hist_item"}],
        "cartesian": [{"induction": "item", "feed": "hist_item"}, {"induction": "cate", "feed": "user"}],
    }


def write(rows: list[dict], path: Path) -> Path:
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif ".jsonl" in name:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "wt") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    else:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "wt", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(rows[0]))
            for r in rows:
                w.writerow([_csv_cell(v) for v in r.values()])
    return path


def _csv_cell(v: object) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return "|".join("" if x is None else str(x) for x in v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


# -------------------------------------------------------------------------------------------- reference

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def py_hash(text: str, seed: int = 0) -> int:
    """The documented hash, byte by byte."""
    def mix(z: int) -> int:
        z = (z + GOLDEN) & M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)

    data = text.encode("utf-8")
    h = 0
    for b in data:
        h = (h * 0x100000001B3 + b) & M64
    return mix(h ^ mix(seed & M64) ^ ((len(data) * GOLDEN) & M64))


def split_flags(rows: list[dict], spec: FeatureSpec) -> list[bool]:
    s = spec.split
    if s.by == "column":
        return [bool(int(r[s.column])) for r in rows]
    if s.by == "user":
        return [(py_hash(str(r[spec.group]), s.seed) >> 11) < int(s.test_fraction * (1 << 53)) for r in rows]
    times = sorted(float(r[spec.time]) for r in rows)
    k = len(times) - int(round(len(times) * s.test_fraction)) - 1
    return [float(r[spec.time]) > times[k] for r in rows]


def reference(rows: list[dict], spec: FeatureSpec) -> dict:
    """Every output of prepare table, computed row by row."""
    test = split_flags(rows, spec)
    train_rows = [r for r, t in zip(rows, test) if not t]

    def kept(r: dict, f) -> list:
        return (r[f.column] or [])[-spec.sequence_group(f.group).max_len:]

    vocab, raw = {}, {}
    for tbl, fields in spec.tables().items():
        if fields[0].hash_buckets:
            continue
        count, first = {}, {}
        for r in train_rows:
            for f in fields:
                for v in ([r[f.column]] if f.kind == "categorical" else kept(r, f)):
                    if v is None:
                        continue
                    key = str(v)
                    count[key] = count.get(key, 0) + 1
                    first.setdefault(key, len(first))
        keys = sorted((k for k in count if count[k] >= fields[0].min_count), key=lambda k: (-count[k], first[k]))
        vocab[tbl] = {k: i + 1 for i, k in enumerate(keys)}
        raw[tbl] = ["<pad/unk>", *keys]

    def index(f, v) -> int:
        if v is None:
            return 0
        if f.hash_buckets:
            return 1 + py_hash(str(v)) % f.hash_buckets
        return vocab[f.table].get(str(v), 0)

    norms = {}
    for f in spec.dense:
        vals = [r[f.column] for r in train_rows if r[f.column] is not None]
        t = [math.log1p(v) if f.norm == "log1p" else float(v) for v in vals]
        mean = sum(t) / len(t)
        std = math.sqrt(sum((x - mean) ** 2 for x in t) / len(t))
        shift, scale = {"standard": (mean, std), "log1p": (mean, std), "minmax": (min(t), max(t) - min(t)),
                        "none": (0.0, 1.0)}[f.norm]
        norms[f.name] = (shift, scale or 1.0, mean if f.nan == "mean" else 0.0, f.norm == "log1p")

    groups: dict = {}
    for i, r in enumerate(rows):
        groups.setdefault(r[spec.group] if spec.group else i, len(groups))
    out = {"vocab": raw, "flags": test}
    for split, want in (("train", False), ("test", True)):
        part = [(i, r) for i, (r, t) in enumerate(zip(rows, test)) if t == want]
        cols = {
            "label": [float(r[spec.label]) for _, r in part],
            "group": [groups[r[spec.group]] if spec.group else i for i, r in part],
            "ids": {f.name: [index(f, r[f.column]) for _, r in part] for f in spec.categorical},
            "lengths": {g.name: [len(kept(r, spec.group_fields(g.name)[0])) for _, r in part] for g in spec.sequences},
            "values": {f.name: [index(f, v) for _, r in part for v in kept(r, f)] for f in spec.sequential},
            "dense": [],
        }
        for _, r in part:
            row = []
            for f in spec.dense:
                shift, scale, fill, log = norms[f.name]
                v = r[f.column]
                x = fill if v is None else (math.log1p(v) if log else float(v))
                row.append((x - shift) / scale)
            cols["dense"].append(row)
        out[split] = cols
    pairs = {}
    for p in spec.cartesian:
        fa, fb = spec.field(p.induction), spec.field(p.feed)
        rows_feed = len(raw[fb.table]) if not fb.hash_buckets else fb.hash_buckets + 1
        keys = set()
        for r in train_rows:
            a = [index(fa, r[fa.column])] if fa.kind == "categorical" else [index(fa, v) for v in kept(r, fa)]
            b = [index(fb, r[fb.column])] if fb.kind == "categorical" else [index(fb, v) for v in kept(r, fb)]
            if len(a) == 1 and fb.kind == "sequence":
                a = a * len(b)
            if len(b) == 1 and fa.kind == "sequence":
                b = b * len(a)
            keys |= {x * rows_feed + y for x, y in zip(a, b) if x > 0 and y > 0}
        pairs[p.name] = sorted(keys)
    out["pairs"] = pairs
    return out


def assert_matches(out: Path, spec: FeatureSpec, ref: dict) -> Schema:
    schema = Schema.load(out)
    for tbl, ids in ref["vocab"].items():
        assert (out / "vocab" / f"{tbl}.json").read_text() == json.dumps(ids) + "\n", tbl
        assert schema.vocab[tbl] == len(ids)
    for split in ("train", "test"):
        cols = read_split(out, split, spec, mmap=False)
        want = ref[split]
        assert cols.label.tolist() == want["label"]
        assert cols.group.tolist() == want["group"]
        for name, ids in want["ids"].items():
            assert cols.ids[name].tolist() == ids, (split, name)
        for name, lengths in want["lengths"].items():
            assert cols.lengths(name).tolist() == lengths, (split, name)
        for name, values in want["values"].items():
            assert cols.values[name].tolist() == values, (split, name)
        if spec.dense:
            np.testing.assert_allclose(cols.dense, np.array(want["dense"], np.float32), rtol=1e-5, atol=1e-5)
        assert schema.splits[split] == len(want["label"])
    for name, keys in ref["pairs"].items():
        assert load_pair_keys(out, name).tolist() == keys
        assert schema.pairs[name] == len(keys) + 1
    return schema


# -------------------------------------------------------------------------------------------- encoding


FORMATS = ["t.parquet", "t.csv", "t.csv.gz", "t.jsonl", "t.jsonl.gz"]


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_matches_the_reference(tmp_path: Path, name: str) -> None:
    rows = make_rows()
    spec = FeatureSpec.from_dict(spec_dict())
    path = write(rows, tmp_path / name)
    schema = prepare_table(spec, [path], tmp_path / "out", batch_rows=50)  # several batches
    ref = reference(rows, spec)
    assert_matches(tmp_path / "out", spec, ref)
    assert schema.protocol == "table" and schema.dataset == "table:t"
    assert schema.sources[0]["sha256"] and schema.sources[0]["bytes"] == path.stat().st_size
    rows_count = schema.counts["rows"]
    assert rows_count["read"] == len(rows) and rows_count["skipped"] == 0
    assert rows_count["written"] == {"train": len(ref["train"]["label"]), "test": len(ref["test"]["label"])}
    # nulls and OOV, per split and field
    test_rows = [r for r, t in zip(rows, ref["flags"]) if t]
    assert schema.counts["nulls"]["test"]["cate"] == sum(r["cate"] is None for r in test_rows)
    vocab_item = set(ref["vocab"]["item"][1:])
    assert schema.counts["oov"]["test"]["item"] == sum(r["item"] not in vocab_item for r in test_rows)
    assert schema.counts["oov"]["test"]["hist_item"] == sum(
        v not in vocab_item for r in test_rows for v in r["hist_item"][-4:])
    assert not [p.name for p in (tmp_path / "out").rglob(".*")]  # no staging or temporary file is left


def test_formats_agree_and_runs_are_deterministic(tmp_path: Path) -> None:
    rows = make_rows(150, seed=3)
    spec = FeatureSpec.from_dict(spec_dict(by="user"))
    outs = []
    for name in ("t.parquet", "t.csv", "t.jsonl.gz", "t.parquet"):
        out = tmp_path / f"out{len(outs)}"
        prepare_table(spec, [write(rows, tmp_path / name)], out, batch_rows=32)
        outs.append(out)
    files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*") if p.is_file() and p.name != "schema.json")
    assert files
    for other in outs[1:]:
        for rel in files:
            assert (other / rel).read_bytes() == (outs[0] / rel).read_bytes(), rel
    a, b = (json.loads((o / "schema.json").read_text()) for o in (outs[0], outs[3]))
    assert a == b


def test_memory_settings_are_restored_and_change_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prepare turns transparent huge pages off and keeps glibc's freed memory in the heap (canctr.memory's
    small_pages, kept_heap); afterwards, also after an error, the process is as before, and the outputs are the same
    without the tuning (CANCTR_MALLOC_TUNING=0)."""
    import ctypes
    import sys

    rows = make_rows(120, seed=5)
    spec = FeatureSpec.from_dict(spec_dict(by="user"))
    path = write(rows, tmp_path / "t.parquet")
    prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None
    thp = prctl(42, 0, 0, 0, 0) if prctl is not None else None  # PR_GET_THP_DISABLE
    inside = []
    run = table._TablePrepare.run

    def spy(self):  # noqa: ANN001, ANN202
        inside.append(prctl(42, 0, 0, 0, 0) if prctl is not None else None)
        return run(self)

    monkeypatch.setattr(table._TablePrepare, "run", spy)
    prepare_table(spec, [path], tmp_path / "a", batch_rows=16)
    if prctl is not None:
        assert inside == [1] and prctl(42, 0, 0, 0, 0) == thp == 0
    bad = [dict(r) for r in rows]
    bad[70]["click"] = 2
    with pytest.raises(TableError, match="must be 0 or 1"):
        prepare_table(spec, [write(bad, tmp_path / "bad.parquet")], tmp_path / "e", batch_rows=16)
    assert prctl is None or prctl(42, 0, 0, 0, 0) == thp
    monkeypatch.setenv("CANCTR_MALLOC_TUNING", "0")
    prepare_table(spec, [path], tmp_path / "b", batch_rows=16)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files
    for rel in files:
        assert (tmp_path / "b" / rel).read_bytes() == (tmp_path / "a" / rel).read_bytes(), rel


@pytest.mark.parametrize("by", ["column", "user", "time"])
def test_split_methods(tmp_path: Path, by: str) -> None:
    rows = make_rows(300, seed=1)
    spec = FeatureSpec.from_dict(spec_dict(by=by))
    prepare_table(spec, [write(rows, tmp_path / "t.parquet")], tmp_path / "out", batch_rows=64)
    ref = reference(rows, spec)
    schema = assert_matches(tmp_path / "out", spec, ref)
    test = ref["flags"]
    if by == "user":  # a user's rows all go to one split
        users = {}
        for r, t in zip(rows, test):
            assert users.setdefault(r["uid"], t) == t
        assert 0 < sum(users.values()) < len(users)
    if by == "time":
        cut = schema.counts["split"]["time_cutoff"]
        assert all((r["ts"] > cut) == t for r, t in zip(rows, test))
        assert abs(sum(test) - 0.25 * len(rows)) <= 3  # ties at the cutoff stay in train


def test_time_cutoff_refines_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny histograms force every refinement step; the cutoff equals the sorted reference."""
    rng = random.Random(5)
    rows = make_rows(400, seed=2)
    for r in rows:
        r["ts"] = rng.choice([-3.5, 0.0, 1e9 + rng.random(), 17.25, 1e-3 * rng.randint(0, 50)])
    spec = FeatureSpec.from_dict(spec_dict(by="time", test_fraction=0.3))
    monkeypatch.setattr(table, "TIME_BINS", 4)
    monkeypatch.setattr(table, "TIME_COLLECT", 1)
    prepare_table(spec, [write(rows, tmp_path / "t.parquet")], tmp_path / "out")
    assert_matches(tmp_path / "out", spec, reference(rows, spec))


def test_truncation_keeps_the_most_recent(tmp_path: Path) -> None:
    rows = make_rows(40)
    rows[0]["hist_item"] = ["i1", "i2", "i3", "i4", "i5", "i6"]
    rows[0]["hist_cate"] = [1, 2, 3, 4, 5, 6]
    rows[0]["is_test"] = 0
    spec = FeatureSpec.from_dict(spec_dict())
    prepare_table(spec, [write(rows, tmp_path / "t.jsonl")], tmp_path / "out")
    cols = read_split(tmp_path / "out", "train", spec, mmap=False)
    vocab = json.loads((tmp_path / "out" / "vocab" / "item.json").read_text())
    first = cols.values["hist_item"][: cols.offsets["hist"][1]]
    assert [vocab[i] for i in first] == ["i3", "i4", "i5", "i6"]


def test_vocab_options_min_count_hash_and_int_windows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """min_count, hash buckets, shared tables; integer ids beyond the lookup window take the sorted path."""
    rows = make_rows(200, seed=4)
    for r in rows:
        r["uid"] = r["uid"] * 10**12 if r["uid"] % 2 else r["uid"]  # ids far outside any window
    d = spec_dict()
    d["fields"][1]["min_count"] = 25  # item (shared by hist_item)
    d["fields"][5]["min_count"] = 25
    d["fields"][7]["hash_buckets"] = 5  # tags
    d["fields"].append({"name": "cate_h", "column": "cate", "hash_buckets": 3})
    d["fields"][3]["norm"], d["fields"][3]["nan"] = "minmax", "zero"
    d["fields"][4]["norm"] = "none"
    spec = FeatureSpec.from_dict(d)
    monkeypatch.setattr(table, "DIRECT_IDS", 8)
    schema = prepare_table(spec, [write(rows, tmp_path / "t.parquet")], tmp_path / "out", batch_rows=37)
    ref = reference(rows, spec)
    assert_matches(tmp_path / "out", spec, ref)
    assert schema.vocab["tags"] == 6 and schema.vocab["cate_h"] == 4
    train_rows = [r for r, t in zip(rows, ref["flags"]) if not t]
    kept = set(ref["vocab"]["item"][1:])
    assert schema.counts["oov"]["train"]["item"] == sum(r["item"] not in kept for r in train_rows) > 0
    assert schema.dense["price"]["fill"] == 0.0 and schema.dense["price"]["log1p"] == 0.0


@pytest.mark.parametrize("name", ["t.parquet", "t.csv"])
def test_text_ids_survive_hash_collisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Text ids are interned by their 64-bit hash and checked by text; with a hash of 3 values nearly every
    id collides, and the output is still the reference's."""
    weak = table.stable_hash
    monkeypatch.setattr(table, "stable_hash", lambda values, seed=0: weak(values, seed) % np.uint64(3))
    monkeypatch.setattr(table, "CSV_BLOCK", 2000)  # many batches in CSV too
    rows = make_rows(150, seed=8)
    d = spec_dict()
    del d["fields"][7]  # no hashed field (its buckets would change too)
    d["sequences"].pop()
    spec = FeatureSpec.from_dict(d)
    prepare_table(spec, [write(rows, tmp_path / name)], tmp_path / "out", batch_rows=40)
    assert_matches(tmp_path / "out", spec, reference(rows, spec))


def test_no_group_uses_row_numbers_and_two_files(tmp_path: Path) -> None:
    rows = make_rows(120, seed=6)
    d = spec_dict()
    del d["group"]
    spec = FeatureSpec.from_dict(d)
    a = write(rows[:70], tmp_path / "a.parquet")
    write(rows[70:], tmp_path / "b.parquet")
    schema = prepare_table(spec, [str(tmp_path / "*.parquet")], tmp_path / "out")
    assert_matches(tmp_path / "out", spec, reference(rows, spec))
    assert [s["path"] for s in schema.sources] == [str(a), str(tmp_path / "b.parquet")]
    assert schema.dataset == "table:a"


def test_stable_hash_matches_the_documented_formula() -> None:
    texts = ["", "a", "user_17", "ü-ñ", "12345678901234567890", None, "x" * 70]
    arr = pa.array(texts, pa.string()).slice(0)
    for seed in (0, 3, 2**40):
        got = stable_hash(arr, seed).tolist()
        assert got == [py_hash(t or "", seed) for t in texts]
    assert stable_hash(pa.array(["a", "b", "c"]).slice(1), 0).tolist() == [py_hash("b"), py_hash("c")]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=12), max_size=20), st.integers(0, 2**63 - 1))
def test_stable_hash_property(texts: list[str], seed: int) -> None:
    assert stable_hash(pa.array(texts, pa.string()), seed).tolist() == [py_hash(t, seed) for t in texts]


# -------------------------------------------------------------------------------------------- bad rows


def test_skip_bad_rows_counts_and_keeps_the_rest(tmp_path: Path) -> None:
    rows = make_rows(60)
    rows[3]["click"] = None
    rows[5]["hist_cate"] = rows[5]["hist_cate"] + [1]
    rows[8]["price"] = "abc"
    rows[9]["click"] = 3
    path = tmp_path / "t.csv"
    write(rows, path)
    with open(path, "a") as f:
        f.write("1,2,3\n")  # a line with too few fields
    spec = FeatureSpec.from_dict(spec_dict())
    schema = prepare_table(spec, [path], tmp_path / "out", skip_bad_rows=True)
    c = schema.counts["rows"]
    assert c["read"] == 61 and c["skipped"] == 5
    assert c["read"] == c["written"]["train"] + c["written"]["test"] + c["skipped"]
    assert c["skipped_by_reason"] == {"null label": 1, "label not 0/1": 1, "bad number in price": 1,
                                      "sequence lengths differ (hist)": 1, "unparsable line": 1}
    good = [r for i, r in enumerate(rows) if i not in (3, 5, 8, 9)]
    assert_matches(tmp_path / "out", spec, reference(good, spec))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r[3].update(click=None), r"t\.{ext}, row 4: column 'click' \(label\) is missing"),
        (lambda r: r[2].update(click=7), r"row 3: column 'click' \(label\) must be 0 or 1, got '?7'?"),
        (lambda r: r[1].update(hist_cate=[1, 2, 3, 4, 5, 6, 7, 8, 9]),
         r"row 2: fields 'hist_item' \(column 'hist_item', length \d\) and 'hist_cate' \(column 'hist_cate', "
         r"length 9\) of sequence group 'hist' must have equal lengths"),
        (lambda r: r[4].update(price=-2.0), r"row 5: column 'price' is '?-2.0'?; norm = 'log1p' needs values > -1"),
        (lambda r: r[6].update(is_test="maybe"),
         r"row 7: column 'is_test' \(split.column\) must be 0/1, true/false or train/test, got 'maybe'"),
    ],
)
@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_bad_rows_are_errors_naming_file_row_and_column(tmp_path: Path, change, message: str, ext: str) -> None:
    rows = make_rows(30)
    change(rows)
    if ext != "csv" and isinstance(rows[6]["is_test"], str):  # one type per column (JSON: see below)
        for r in rows:
            r["is_test"] = str(r["is_test"])
    spec = FeatureSpec.from_dict(spec_dict())
    with pytest.raises(TableError, match=message.format(ext=ext)):
        prepare_table(spec, [write(rows, tmp_path / f"t.{ext}")], tmp_path / "out")
    assert not (tmp_path / "out" / "schema.json").exists()


@pytest.mark.parametrize("name", ["t.csv", "t.jsonl", "t.parquet"])
def test_row_numbers_count_across_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(table, "CSV_BLOCK", 600)
    monkeypatch.setattr(table, "JSON_BLOCK", 900)
    rows = make_rows(90)
    rows[77]["click"] = None
    with pytest.raises(TableError, match=r"row 78: column 'click' \(label\) is missing"):
        prepare_table(FeatureSpec.from_dict(spec_dict()), [write(rows, tmp_path / name)], tmp_path / "out",
                      batch_rows=16)


def test_text_in_a_dense_column(tmp_path: Path) -> None:
    rows = make_rows(20)
    rows[2]["age"] = "old"
    spec = FeatureSpec.from_dict(spec_dict())
    with pytest.raises(TableError, match=r"t\.csv, row 3: column 'age' \(dense field 'age'\) is not a number: 'old'"):
        prepare_table(spec, [write(rows, tmp_path / "t.csv")], tmp_path / "out")


def test_missing_dense_with_nan_error(tmp_path: Path) -> None:
    rows = make_rows(20)
    rows[0]["price"] = None
    d = spec_dict()
    d["fields"][3]["nan"] = "error"
    with pytest.raises(TableError, match=r"row 1: column 'price' \(field 'price', nan = 'error'\) is missing"):
        prepare_table(FeatureSpec.from_dict(d), [write(rows, tmp_path / "t.parquet")], tmp_path / "out")


# -------------------------------------------------------------------------------------------- spec and file errors


def test_spec_naming_a_missing_column(tmp_path: Path) -> None:
    d = spec_dict()
    d["fields"][2]["column"] = "category"
    with pytest.raises(SpecError, match=r"fields\[2\] \('cate'\)\.column: 'category' is not a column of .*t\.csv"):
        prepare_table(FeatureSpec.from_dict(d), [write(make_rows(10), tmp_path / "t.csv")], tmp_path / "out")
    d = spec_dict(by="user")
    del d["group"]
    with pytest.raises(SpecError, match=r"split.by = 'user' needs the top-level `group` column"):
        prepare_table(FeatureSpec.from_dict(d), [write(make_rows(10), tmp_path / "t.csv")], tmp_path / "out")


def test_wrong_column_types(tmp_path: Path) -> None:
    path = write(make_rows(10), tmp_path / "t.parquet")
    d = spec_dict()
    d["fields"][1]["column"] = "hist_item"  # a list column for a categorical field
    with pytest.raises(TableError, match=r"column 'hist_item' \(fields\[1\] \('item'\)\.column\) is a list<str> "
                                         r"column, but a categorical column holds one value per row"):
        prepare_table(FeatureSpec.from_dict(d), [path], tmp_path / "out")
    d = spec_dict()
    d["fields"][5]["column"] = "age"  # a scalar column for a sequence field
    with pytest.raises(TableError, match=r"column 'age' .* is a int column, but a sequence field needs a list"):
        prepare_table(FeatureSpec.from_dict(d), [path], tmp_path / "out")
    d = spec_dict()
    d["fields"][2]["column"] = "price"  # floats as ids
    with pytest.raises(TableError, match=r"column 'price' .* is a float column, but ids must be integers or text"):
        prepare_table(FeatureSpec.from_dict(d), [path], tmp_path / "out")


def test_pair_over_an_undefined_field_is_a_spec_error(tmp_path: Path) -> None:
    d = spec_dict()
    d["cartesian"].append({"induction": "item", "feed": "nope"})
    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(d))
    with pytest.raises(SpecError, match=r"cartesian\[2\]\.feed: 'nope' is not a field"):
        FeatureSpec.load(spec_file)


def test_empty_inputs(tmp_path: Path) -> None:
    spec = FeatureSpec.from_dict(spec_dict())
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(TableError, match=r"e\.csv: empty file"):
        prepare_table(spec, [tmp_path / "e.csv"], tmp_path / "out")
    (tmp_path / "h.csv").write_text(",".join(make_rows(1)[0]) + "\n")
    with pytest.raises(TableError, match=r"h\.csv: no rows in the input"):
        prepare_table(spec, [tmp_path / "h.csv"], tmp_path / "out")
    pq.write_table(pa.Table.from_pylist(make_rows(10)).slice(0, 0), tmp_path / "z.parquet")
    with pytest.raises(TableError, match=r"z\.parquet: no rows in the input"):
        prepare_table(spec, [tmp_path / "z.parquet"], tmp_path / "out")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(TableError, match=r"e\.jsonl: empty file"):
        prepare_table(spec, [tmp_path / "e.jsonl"], tmp_path / "out")
    rows = make_rows(10)
    for r in rows:
        r["is_test"] = 0
    with pytest.raises(TableError, match=r"no test rows among 10 rows read \(split.by = 'column'\)"):
        prepare_table(spec, [write(rows, tmp_path / "t.parquet")], tmp_path / "out")


def test_mixed_schemas_across_files(tmp_path: Path) -> None:
    spec = FeatureSpec.from_dict(spec_dict())
    a = write(make_rows(10), tmp_path / "a.parquet")
    rows = make_rows(10)
    for r in rows:
        del r["price"]
    b = write(rows, tmp_path / "b.parquet")
    with pytest.raises(TableError, match=r"b\.parquet: column 'price' is missing here but present in .*a\.parquet"):
        prepare_table(spec, [a, b], tmp_path / "out")
    rows = make_rows(10)
    for r in rows:
        r["cate"] = f"c{r['cate']}"
    c = write(rows, tmp_path / "c.parquet")
    with pytest.raises(TableError, match=r"c\.parquet: column 'cate' is str here but int in .*a\.parquet; all inputs "
                                         r"must share one schema"):
        prepare_table(spec, [a, c], tmp_path / "out")


def test_json_type_change_is_an_error_naming_the_row(tmp_path: Path) -> None:
    rows = make_rows(30)
    rows[12]["uid"] = "u12"
    with pytest.raises(TableError, match=r"t\.jsonl, row 13: column 'uid' changes type from number to string"):
        prepare_table(FeatureSpec.from_dict(spec_dict()), [write(rows, tmp_path / "t.jsonl")], tmp_path / "out")


def test_json_list_with_a_leading_null(tmp_path: Path) -> None:
    """pyarrow's JSON type inference drops a list's leading null element (apache/arrow#51305); the reader
    passes the first block's types explicitly, which reads it right."""
    rows = make_rows(20)
    for r in rows:
        r["hist_cate"] = [None, *r["hist_cate"][1:]] if r["hist_cate"] else r["hist_cate"]
    rows[0]["hist_item"], rows[0]["hist_cate"] = ["i1", "i2"], [None, 3]
    spec = FeatureSpec.from_dict(spec_dict())
    schema = prepare_table(spec, [write(rows, tmp_path / "t.jsonl")], tmp_path / "out")
    assert_matches(tmp_path / "out", spec, reference(rows, spec))
    assert schema.counts["nulls"]["train"]["hist_cate"] > 0


@pytest.mark.parametrize("name", ["t.jsonl", "t.jsonl.gz"])
def test_json_without_the_streaming_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """pyarrow < 20 has no pyarrow.json.open_json: line-aligned blocks through read_json give the same."""
    import pyarrow.json as pajson

    monkeypatch.delattr(pajson, "open_json", raising=False)
    monkeypatch.setattr(table, "JSON_BLOCK", 1000)  # many blocks
    rows = make_rows(120)
    spec = FeatureSpec.from_dict(spec_dict())
    prepare_table(spec, [write(rows, tmp_path / name)], tmp_path / "out")
    assert_matches(tmp_path / "out", spec, reference(rows, spec))
    rows[70]["cate"] = "x"
    with pytest.raises(TableError, match=r"row 71: column 'cate' changes type from number to string"):
        prepare_table(spec, [write(rows, tmp_path / name)], tmp_path / "out")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(TableError, match=r"e\.jsonl: empty file"):
        prepare_table(spec, [tmp_path / "e.jsonl"], tmp_path / "out")


def test_inputs_that_match_nothing(tmp_path: Path) -> None:
    spec = FeatureSpec.from_dict(spec_dict())
    with pytest.raises(TableError, match=r"\*\.parquet: no input file matches this pattern"):
        prepare_table(spec, [str(tmp_path / "*.parquet")], tmp_path / "out")
    with pytest.raises(TableError, match=r"nope\.csv: input file not found"):
        prepare_table(spec, [tmp_path / "nope.csv"], tmp_path / "out")
    (tmp_path / "t.xlsx").write_text("x")
    with pytest.raises(TableError, match=r"t\.xlsx: unknown input format"):
        prepare_table(spec, [tmp_path / "t.xlsx"], tmp_path / "out")


# -------------------------------------------------------------------------------------------- the CLI


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from canctr.cli import main

    spec_file = tmp_path / "s.json"
    spec_file.write_text(json.dumps(spec_dict(by="time")))
    rows = make_rows(80)
    for r in rows:
        r["hist_item"] = ";".join(r["hist_item"])
        r["hist_cate"] = ";".join(map(str, r["hist_cate"]))
        r["tags"] = ";".join(r["tags"])
    write(rows, tmp_path / "t.csv")
    args = ["prepare", "table", "--spec", str(spec_file), "--input", str(tmp_path / "t.csv"), "--out",
            str(tmp_path / "out"), "--list-sep", ";"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "rows read 80: train" in text and "vocab (incl. index 0): user" in text and "rows/s" in text
    assert Schema.load(tmp_path / "out").options["list_sep"] == ";"
    rows[4]["click"] = None
    write(rows, tmp_path / "t.csv")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "canctr prepare table: error:" in err and "t.csv, row 5: column 'click' (label) is missing" in err
    assert main([*args, "--skip-bad-rows"]) == 0
    assert "1 skipped (null label 1)" in capsys.readouterr().out


def test_example_spec_loads() -> None:
    spec = FeatureSpec.load(Path(__file__).resolve().parents[1] / "examples" / "specs" / "clicks.toml")
    assert spec.split.by == "user" and spec.sequential and spec.dense and spec.cartesian


# -------------------------------------------------------------------------------------------- property test

ID_CELLS = {
    "int": st.one_of(st.integers(-3, 6), st.none()),
    "str": st.one_of(st.sampled_from(["a", "b", "", "1", " c"]), st.none()),
}
LABEL_CELLS = {
    "int": st.one_of(st.sampled_from([0, 1, 1, 0, 2]), st.none()),
    "float": st.sampled_from([0.0, 1.0, 0.5, float("nan"), None]),
    "str": st.sampled_from(["0", "1", "x", "", None, "1.0"]),
}
DENSE_CELLS = {
    "float": st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.none()),
    "str": st.sampled_from(["1.5", "abc", "", None, "-2", "inf", "1e3"]),
}


@st.composite
def tables(draw: st.DrawFn) -> list[dict]:
    n = draw(st.integers(0, 14))
    kinds = {k: draw(st.sampled_from(sorted(v))) for k, v in
             (("label", LABEL_CELLS), ("cat", ID_CELLS), ("dense", DENSE_CELLS))}
    seq_elem = ID_CELLS[draw(st.sampled_from(["int", "str"]))]
    rows = []
    for i in range(n):
        a = draw(st.one_of(st.none(), st.lists(seq_elem, max_size=4)))
        b = a if draw(st.booleans()) or a is None else draw(st.lists(seq_elem, max_size=4))
        rows.append({
            "label": draw(LABEL_CELLS[kinds["label"]]),
            "cat": draw(ID_CELLS[kinds["cat"]]),
            "x": draw(DENSE_CELLS[kinds["dense"]]),
            "sa": a,
            "sb": b,
            "is_test": i % 2,
        })
    return rows


PROPERTY_SPEC = {
    "label": "label",
    "split": {"by": "column", "column": "is_test"},
    "fields": [
        {"name": "cat"},
        {"name": "x", "kind": "dense", "nan": "mean"},
        {"name": "sa", "kind": "sequence", "table": "cat", "group": "s"},
        {"name": "sb", "kind": "sequence", "group": "s"},
    ],
    "sequences": [{"name": "s", "max_len": 3}],
    "cartesian": [{"induction": "cat", "feed": "sa"}],
}


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=tables(), skip=st.booleans())
def test_property_only_own_errors_and_rows_add_up(tmp_path: Path, ext: str, rows: list[dict], skip: bool) -> None:
    case = Path(tempfile.mkdtemp(dir=tmp_path))  # one folder per example (hypothesis reuses tmp_path)
    path = case / f"t.{ext}"
    if ext == "parquet":
        try:
            pq.write_table(pa.Table.from_pylist(rows) if rows else pa.table({"label": pa.array([], pa.int64())}), path)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return  # not representable in Parquet
    elif ext == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif rows:
        write(rows, path)
    else:
        path.write_text("label,cat,x,sa,sb,is_test\n")
    try:
        schema = prepare_table(FeatureSpec.from_dict(PROPERTY_SPEC), [path], case / "out", skip_bad_rows=skip,
                               batch_rows=4)
    except (TableError, SpecError):
        return
    c = schema.counts["rows"]
    assert c["read"] == len(rows)
    assert c["read"] == c["written"]["train"] + c["written"]["test"] + c["skipped"]
    for split in ("train", "test"):
        cols = read_split(case / "out", split, schema.spec, mmap=False)
        assert cols.n == c["written"][split]
        assert set(np.unique(cols.label).tolist()) <= {0.0, 1.0}
        assert np.isfinite(cols.dense).all()
        assert (cols.values["sa"] >= 0).all() and (cols.values["sa"] < schema.vocab["cat"]).all()
        assert (cols.lengths("s") <= 3).all()


AVAZU = Path(__file__).resolve().parents[2] / "shared" / "data" / "avazu_samples" / "deepctr_avazu_sample.txt"


@pytest.mark.skipif(not AVAZU.exists(), reason="needs ../shared/data/avazu_samples (the Kaggle train.csv format)")
def test_avazu_spec_non_sequential_can_trains(tmp_path: Path) -> None:
    """The paper's Table 4 setting: 9 categorical fields, 16 categorical x categorical co-action pairs; the
    Kaggle file has no .csv suffix here, so --format names it."""
    from canctr.models import create_model
    from canctr.train.loop import TrainConfig, fit

    root = Path(__file__).resolve().parents[1]
    with pytest.raises(TableError, match="--format"):
        prepare_table(root / "examples" / "specs" / "avazu.toml", [AVAZU], tmp_path / "x")
    schema = prepare_table(root / "examples" / "specs" / "avazu.toml", [AVAZU], tmp_path / "avazu",
                           input_format="csv")
    assert len(schema.spec.fields) == 9 and len(schema.spec.coaction) == 16
    model = create_model("can-dnn", schema)
    assert len(model.blocks[0].pair_names) == 16 and model.blocks[0].out_dim == 16 * 36
    m = fit(TrainConfig(data=str(tmp_path / "avazu"), model="can-dnn", out=str(tmp_path / "run"), epochs=2,
                        batch_size=16, progress=False))
    assert 0.0 <= m["auc"] <= 1.0 and m["train_samples"] == 2 * schema.splits["train"]
