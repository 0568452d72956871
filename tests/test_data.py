"""`canctr prepare`: readers and pipelines on the real shared data (DIEN fixture, Amazon Beauty) and on
small McAuley / S3-Rec / DIEN format files written into tmp_path; every malformed-input path has a test.
Prepared directories are read back through the store (`store.read_split`), as training reads them."""

from __future__ import annotations

import argparse
import gzip
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from canctr.cli.data import register
from canctr.data import BatchLoader, Schema
from canctr.data.formats.amazon import prepare_amazon
from canctr.data.formats.dien import prepare_dien, read_vocab_pickle
from canctr.data.formats.sequences import prepare_sequences
from canctr.data.formats.synthetic import WorldConfig, prepare_synthetic
from canctr.data.lines import DataFormatError
from canctr.data.samples import PrepareOptions
from canctr.data.store import Columns, load_pair_keys, read_split
from canctr.data.summary import format_summary

N_SLICE_USERS = 2000
SPLITS = ("train", "test")


def vocab(out: Path, name: str) -> dict[str, int]:
    """Raw id -> index of a written vocabulary."""
    ids = json.loads((out / "vocab" / f"{name}.json").read_text())
    assert ids[0] == "<pad/unk>"
    return {raw: i for i, raw in enumerate(ids)}


def files_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def load(out: Path, split: str) -> Columns:
    """One prepared split, read fully into memory."""
    return read_split(out, split, Schema.load(out).spec, mmap=False)


def seqs(cols: Columns, field: str) -> list[list[int]]:
    """Per-sample values of a sequence field (its group: "hist" for hist_*, else the field's own)."""
    off = cols.offsets["hist" if field.startswith("hist_") else field]
    values = cols.values[field].tolist()
    return [values[a:b] for a, b in zip(off[:-1].tolist(), off[1:].tolist(), strict=True)]


def positions(cols: Columns, target: str, feed: str) -> tuple[np.ndarray, np.ndarray]:
    """(target id repeated per history position, history id) over every stored position of `feed`."""
    return np.repeat(cols.ids[target], cols.lengths("hist")), cols.values[feed]


def check_invariants(out: Path, schema: Schema) -> dict[str, Columns]:
    """Properties every prepared directory must have; returns the loaded splits."""
    assert Schema.load(out) == schema
    spec = schema.spec
    splits = {s: load(out, s) for s in SPLITS}
    for name, a in splits.items():
        assert a.n == schema.splits[name] > 0
        assert set(np.unique(a.label).tolist()) <= {0.0, 1.0}
        for f in spec.categorical:
            assert a.ids[f.name].min() >= 0 and a.ids[f.name].max() < schema.vocab[f.table], f.name
        for g in spec.sequences:
            lengths = a.lengths(g.name)
            assert lengths.min() >= 0 and lengths.max() <= g.max_len, g.name
            for f in spec.group_fields(g.name):
                v = a.values[f.name]
                assert v.size == int(a.offsets[g.name][-1])
                if v.size:
                    assert v.min() >= 0 and v.max() < schema.vocab[f.table], f.name
                    if name == "train":  # train ids are never unknown: vocabularies are fitted on train
                        assert v.min() > 0, f.name
        assert schema.counts["max_hist_len"][name] == int(a.lengths("hist").max(initial=0))
    assert not set(splits["train"].group.tolist()) & set(splits["test"].group.tolist()), "a user in both splits"
    # Cartesian pair keys: sorted, distinct, exactly the (target, history) index pairs of train
    tr = splits["train"]
    for p in spec.cartesian:
        keys = load_pair_keys(out, p.name)
        assert keys.dtype == np.int64 and (np.diff(keys) > 0).all()
        n = schema.vocab[spec.field(p.feed).table]
        t, h = positions(tr, p.induction, p.feed)
        seen = (t > 0) & (h > 0)
        assert keys.tolist() == np.unique(t[seen].astype(np.int64) * n + h[seen]).tolist()
        assert ((keys // n) > 0).all() and ((keys % n) > 0).all()
        assert schema.pairs[p.name] == keys.size + 1 and schema.counts["pairs"][p.name] == keys.size
    return splits


def raw_pairs(cols: Columns, out: Path, target: str, feed: str, table: str) -> set[tuple[str, str]]:
    """Distinct (target, history) raw-id pairs of a split: the old pair vocabulary, built on raw codes."""
    rev = {i: raw for raw, i in vocab(out, table).items()}
    t, h = positions(cols, target, feed)
    return {(rev[a], rev[b]) for a, b in zip(t.tolist(), h.tolist(), strict=True) if a and b}


# ----------------------------------------------------------------------------------------------- DIEN


def read_dien_lines(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_bytes().decode().splitlines() if line]


def test_dien_fixture_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "amazon_books_dien_fixture" / "hsux_head1000"
    cat_pickle = shared_data / "amazon_books_dien_fixture" / "dien_books_cat_voc.pkl"
    assert b"\r\n" in (src / "local_test").read_bytes()  # the fixture really is CRLF
    out = tmp_path / "dien"
    schema = prepare_dien(src, out, PrepareOptions(test_fraction=0.3), vocab_pickles=[cat_pickle])
    splits = check_invariants(out, schema)

    lines = read_dien_lines(src / "local_test")  # 38 lines, 19 users, one (neg, pos) pair each
    assert schema.dataset == "dien:hsux_head1000"
    assert schema.counts["users"] == 19 and sum(schema.splits.values()) == 38
    assert schema.counts["dien_samples"] == "local_test split by user"
    assert schema.counts["negative_pool"] == "reviews-info (1000 rows)"
    assert schema.counts["vocab_pickles"][str(cat_pickle)] == {
        "keys": 1601,
        "field": "cate",
        "train_vocab_coverage": 1.0,
    }
    for split in SPLITS:
        assert schema.counts["positive_rate"][split] == 0.5
    items, cates, users = vocab(out, "item"), vocab(out, "cate"), vocab(out, "user")
    assert not any("\r" in k or "\x02" in k for k in [*items, *cates, *users])
    assert set(cates) == {"<pad/unk>", "Books", "default_cat"}

    # rebuild every row from the raw lines: group = order of first appearance of the uid
    uid_code = {uid: i for i, uid in enumerate(dict.fromkeys(f[1] for f in lines))}
    test_groups = set(splits["test"].group.tolist())
    for split, a in splits.items():
        rows = [f for f in lines if (uid_code[f[1]] in test_groups) == (split == "test")]
        assert len(rows) == a.n
        assert a.label.tolist() == [float(f[0]) for f in rows]
        assert a.group.tolist() == [uid_code[f[1]] for f in rows]
        assert a.ids["item"].tolist() == [items.get(f[2], 0) for f in rows]
        assert seqs(a, "hist_item") == [[items.get(m, 0) for m in f[4].split("\x02")] for f in rows]
        assert seqs(a, "hist_cate") == [[cates.get(c, 0) for c in f[5].split("\x02")] for f in rows]
        if split == "train":
            assert a.ids["user"].tolist() == [users[f[1]] for f in rows]
        else:
            assert (a.ids["user"] == 0).all()  # users are split, so test users are unseen by construction
    assert schema.counts["oov"]["test"]["user"] == schema.splits["test"]

    loader = BatchLoader(splits["train"], schema.spec, batch_size=8, shuffle=True, seed=1)
    batches = list(loader)
    assert sum(b.size for b in batches) == schema.splits["train"]
    assert batches[0]["hist_item"].shape[1] <= 2 and batches[0].mask("hist").dtype == torch.bool


def test_dien_split_files_and_empty_history(shared_data: Path, tmp_path: Path) -> None:
    """With local_{train,test}_splitByUser the files are the split; empty histories are allowed."""
    src = shared_data / "amazon_books_dien_fixture" / "hsux_head1000"
    raw = (src / "local_test").read_bytes().decode().splitlines(keepends=True)
    d = tmp_path / "dien"
    d.mkdir()
    (d / "local_train_splitByUser").write_text(
        "".join(raw[:30]) + "0\tUX\tI1\tC1\t\t\r\n1\tUX\tI2\tC1\t\t\r\n"
    )
    (d / "local_test_splitByUser").write_text("".join(raw[30:]))
    schema = prepare_dien(d, tmp_path / "out", PrepareOptions())
    splits = check_invariants(tmp_path / "out", schema)
    assert schema.splits == {"train": 32, "test": 8}
    assert schema.counts["dien_samples"] == "splitByUser files"
    assert schema.counts["negative_pool"].startswith("train targets + histories")
    assert splits["train"].lengths("hist")[-2:].tolist() == [0, 0]


DIEN_GOOD = "0\tU1\tI1\tC\tI2\tC\n1\tU1\tI3\tC\tI2\tC\n0\tU2\tI3\tC\tI1\tC\n1\tU2\tI2\tC\tI1\tC\n"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("1\tU\tI\tC\tH", "expected 6 tab-separated fields"),
        ("2\tU\tI\tC\tH\tC", "label must be 0 or 1"),
        ("1\tU\tI\tC\tH1\x02H2\tC", "must pair up"),
    ],
)
def test_dien_bad_rows(tmp_path: Path, line: str, problem: str) -> None:
    d = tmp_path / "dien"
    d.mkdir()
    (d / "local_train_splitByUser").write_text(DIEN_GOOD + line + "\n")
    (d / "local_test_splitByUser").write_text(DIEN_GOOD.replace("U", "T"))
    with pytest.raises(DataFormatError, match=rf"local_train_splitByUser, line 5: .*{problem}"):
        prepare_dien(d, tmp_path / "out", PrepareOptions())
    schema = prepare_dien(d, tmp_path / "out", PrepareOptions(skip_bad_rows=True))
    assert schema.counts["skipped_rows"] == {str(d / "local_train_splitByUser"): 1}
    assert "skipped malformed rows" in format_summary(schema)


def test_dien_history_truncated_to_the_most_recent(tmp_path: Path) -> None:
    """--max-len / --test-max-len keep the last positions of DIEN's history lists (no shared data needed)."""
    d = tmp_path / "dien"
    d.mkdir()
    hist = "\x02".join(f"H{k}" for k in range(7))
    cats = "\x02".join("C" for _ in range(7))
    rows = "".join(f"{y}\tU{u}\tI{y}\tC\t{hist}\t{cats}\n" for u in range(3) for y in (0, 1))
    (d / "local_train_splitByUser").write_text(rows)
    (d / "local_test_splitByUser").write_text(rows.replace("\tU", "\tT"))
    out = tmp_path / "out"
    schema = prepare_dien(d, out, PrepareOptions(max_len=3, test_max_len=5))
    check_invariants(out, schema)
    items = vocab(out, "item")
    assert seqs(load(out, "train"), "hist_item") == [[items[f"H{k}"] for k in (4, 5, 6)]] * 6
    assert seqs(load(out, "test"), "hist_item") == [[items.get(f"H{k}", 0) for k in range(2, 7)]] * 6
    assert schema.max_len("hist") == 5  # the spec's group width covers the longer (test) histories


def test_dien_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="local_test"):
        prepare_dien(tmp_path, tmp_path / "out", PrepareOptions())
    with pytest.raises(FileNotFoundError, match="nope"):
        prepare_dien(tmp_path / "nope", tmp_path / "out", PrepareOptions())


def test_vocab_pickles_are_read_without_globals(shared_data: Path, tmp_path: Path) -> None:
    fixture = shared_data / "amazon_books_dien_fixture"
    cat = read_vocab_pickle(fixture / "dien_books_cat_voc.pkl")
    assert len(cat) == 1601 and cat["default_cat"] == 0 and cat["Books"] == 1
    assert len(read_vocab_pickle(fixture / "kisdan_books_subset" / "mid_voc.pickle.gz")) == 24916
    evil = tmp_path / "evil_voc.pkl"
    evil.write_bytes(b"cos\nsystem\n(S'touch " + str(tmp_path / "pwned").encode() + b"'\ntR.")
    with pytest.raises(DataFormatError, match="refusing to load global os.system"):
        read_vocab_pickle(evil)
    assert not (tmp_path / "pwned").exists()
    notdict = tmp_path / "list_voc.pkl"
    notdict.write_bytes(pickle.dumps([1, 2], protocol=0))
    with pytest.raises(DataFormatError, match="dict of str -> int"):
        read_vocab_pickle(notdict)


# ------------------------------------------------------------------------------ real Amazon Beauty


@pytest.fixture(scope="session")
def beauty(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The first N_SLICE_USERS users of the real Beauty sequences and time-gap files, in a tmp folder."""
    src = shared_data / "amazon_beauty"
    d = tmp_path_factory.mktemp("beauty")
    for name in ("Beauty.txt.gz", "Beauty_with_time_intervals.txt.gz"):
        with gzip.open(src / name, "rt") as f:
            head = [next(f) for _ in range(N_SLICE_USERS)]
        (d / name.removesuffix(".gz")).write_text("".join(head))
    return {
        "sequences": d / "Beauty.txt",
        "times": d / "Beauty_with_time_intervals.txt",
        "attributes": src / "Beauty_item2attributes.json.gz",
    }


@pytest.fixture(scope="session")
def beauty_lines(beauty: dict[str, Path]) -> list[list[str]]:
    return [line.split() for line in beauty["sequences"].read_text().splitlines()]


@pytest.fixture(scope="session")
def beauty_last(beauty: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Schema]:
    out = tmp_path_factory.mktemp("beauty_last")
    return out, prepare_sequences(beauty["sequences"], beauty["attributes"], out, PrepareOptions(max_len=20))


def test_beauty_last_protocol(beauty_last: tuple[Path, Schema], beauty_lines: list[list[str]]) -> None:
    out, schema = beauty_last
    splits = check_invariants(out, schema)
    assert schema.dataset == "sequences:Beauty" and schema.protocol == "last"
    assert schema.max_len("hist") == 20 and schema.spec.names == [
        "user", "item", "cate", "hist_item", "hist_cate"
    ]
    assert schema.counts["users"] == N_SLICE_USERS and schema.counts["timestamp_ties"] == 0
    assert schema.counts["events"] == sum(len(t) - 1 for t in beauty_lines)
    assert sum(schema.splits.values()) == 2 * N_SLICE_USERS  # 5-core: every user has >= 2 events
    assert schema.counts["users_lt2_events"] == 0
    items = vocab(out, "item")
    for split, a in splits.items():
        # labels alternate (negative, positive) per target: balanced 1:1
        assert a.label.tolist() == [0.0, 1.0] * (a.n // 2)
        assert schema.counts["positive_rate"][split] == 0.5
        neg, pos = a.ids["item"][0::2], a.ids["item"][1::2]
        assert ((neg != pos) | (pos == 0)).all()
        hist = seqs(a, "hist_item")
        assert (a.group[0::2] == a.group[1::2]).all() and hist[0::2] == hist[1::2]
        # every positive's history is the user's previous items (most recent 20), checked against the file
        for row in np.flatnonzero(a.label == 1):
            seq = beauty_lines[a.group[row]][1:]
            assert hist[row] == [items.get(x, 0) for x in seq[:-1][-20:]]
            assert a.ids["item"][row] == items.get(seq[-1], 0)


def test_beauty_vocab_fitted_on_train_only(
    beauty_last: tuple[Path, Schema], beauty_lines: list[list[str]]
) -> None:
    out, schema = beauty_last
    splits = {s: load(out, s) for s in SPLITS}
    items = vocab(out, "item")
    rev = {i: raw for raw, i in items.items()}
    train_users = set(splits["train"].group.tolist())
    train_raw = {x for g in train_users for x in beauty_lines[g][1:][-21:]}  # target + max_len=20 history
    train_negatives = {rev[i] for i in splits["train"].ids["item"][0::2].tolist()}  # drawn from all events
    assert set(items) - {"<pad/unk>"} == train_raw | train_negatives
    test_only = {x for g, t in enumerate(beauty_lines) if g not in train_users for x in t[1:]} - set(items)
    assert test_only, "the slice should have items seen only by test users"
    # the vocab is exactly the train targets (incl. negatives) and histories, most frequent first
    tr = splits["train"]
    counts = np.bincount(np.concatenate([tr.ids["item"], tr.values["hist_item"]]), minlength=schema.vocab["item"])
    assert counts[0] == 0 and (counts[1:] > 0).all() and (np.diff(counts[1:]) <= 0).all()
    # OOV counts: each test history item unseen in train, twice (negative and positive share a history)
    te = splits["test"]
    expect = sum(2 * sum(x not in items for x in beauty_lines[g][1:-1][-20:]) for g in te.group[1::2])
    assert expect > 0 and schema.counts["oov"]["test"]["hist_item"] == expect
    assert schema.counts["oov"]["train"]["hist_item"] == 0
    assert (te.values["hist_item"] == 0).sum() == expect  # unseen ids are stored as 0, never dropped


def test_beauty_cartesian_pair_keys(beauty_last: tuple[Path, Schema]) -> None:
    """The pair vocabulary is stored as keys (vocab/pairs/*.npy), and models derive pair ids from them: the
    keys are the train (target, history) pairs, as many as the old pair vocabulary had ids."""
    out, schema = beauty_last
    splits = {s: load(out, s) for s in SPLITS}
    assert sorted(p.name for p in (out / "vocab" / "pairs").iterdir()) == ["cate.hist_cate.npy", "item.hist_item.npy"]
    for target, feed, table in (("item", "hist_item", "item"), ("cate", "hist_cate", "cate")):
        keys = load_pair_keys(out, f"{target}>{feed}")
        n = schema.vocab[table]
        rev = {i: raw for raw, i in vocab(out, table).items()}
        old_vocab = raw_pairs(splits["train"], out, target, feed, table)  # raw-code pairs of train
        assert keys.size == len(old_vocab) == schema.pairs[f"{target}>{feed}"] - 1
        assert {(rev[int(k // n)], rev[int(k % n)]) for k in keys} == old_vocab
        if target == "item":  # some test pairs of known ids were never seen in train: they get no key (id 0)
            t, h = positions(splits["test"], target, feed)
            unseen = ~np.isin(t.astype(np.int64) * n + h, keys) & (t > 0) & (h > 0)
            assert unseen.any()


def test_beauty_loader_negatives(beauty_last: tuple[Path, Schema]) -> None:
    """DIEN's auxiliary negatives are drawn by the loader: from the split's own history positions (an item
    with its category), 0 at padding, almost never the positive, and a function of (seed, epoch, step)."""
    out, schema = beauty_last
    spec = schema.spec
    cols = load(out, "train")
    pool = set(zip(cols.values["hist_item"].tolist(), cols.values["hist_cate"].tolist(), strict=True))

    def batches(epoch: int, seed: int = 5) -> list:
        loader = BatchLoader(cols, spec, batch_size=256, shuffle=True, seed=seed, negatives=("hist",))
        return list(loader.iter_epoch(epoch))

    first = batches(0)
    same, differ = 0, 0
    for b in first:
        neg_item, neg_cate = b.negatives["hist_item"], b.negatives["hist_cate"]
        mask = b.mask("hist")
        assert neg_item.shape == b["hist_item"].shape and neg_cate.shape == b["hist_cate"].shape
        assert (neg_item[~mask] == 0).all() and (neg_cate[~mask] == 0).all()
        assert set(zip(neg_item[mask].tolist(), neg_cate[mask].tolist(), strict=True)) <= pool
        same += int((neg_item == b["hist_item"])[mask].sum())
        differ += int((neg_item != b["hist_item"])[mask].sum())
    assert differ > 0 and same / (same + differ) < 0.01
    again = batches(0)
    assert all(torch.equal(a.negatives["hist_item"], b.negatives["hist_item"]) for a, b in zip(first, again))
    later = batches(1)
    assert not all(
        a.negatives["hist_item"].shape == b.negatives["hist_item"].shape
        and torch.equal(a.negatives["hist_item"], b.negatives["hist_item"])
        for a, b in zip(first, later)
    )
    # the same (seed, epoch, step) gives the same draw whatever came before it: a resumed epoch agrees
    loader = BatchLoader(cols, spec, batch_size=256, shuffle=True, seed=5, negatives=("hist",))
    resumed = next(loader.iter_epoch(0, start_step=3))
    assert torch.equal(resumed.negatives["hist_item"], first[3].negatives["hist_item"])
    with pytest.raises(ValueError, match="not a sequence group"):
        BatchLoader(cols, spec, batch_size=8, shuffle=False, negatives=("hist_item",))


def test_beauty_all_protocol_and_times(
    beauty: dict[str, Path], beauty_lines: list[list[str]], tmp_path: Path
) -> None:
    opts = PrepareOptions(protocol="all", max_len=10)
    schema = prepare_sequences(
        beauty["sequences"], beauty["attributes"], tmp_path / "a", opts, times=beauty["times"]
    )
    splits = check_invariants(tmp_path / "a", schema)
    assert sum(schema.splits.values()) == 2 * sum(len(t) - 2 for t in beauty_lines if len(t) >= 3)
    assert schema.counts["timestamp_ties"] > 0  # day-resolution review times
    assert schema.options["times"] is True
    # same users go to test as under `last` with the same seed; stable ties keep the file's order
    last = prepare_sequences(beauty["sequences"], beauty["attributes"], tmp_path / "b", PrepareOptions())
    assert set(splits["test"].group.tolist()) == set(load(tmp_path / "b", "test").group.tolist())
    items = vocab(tmp_path / "a", "item")
    a = splits["train"]
    g = a.group[1]
    seq = [items[x] for x in beauty_lines[g][1:]]
    rows = np.flatnonzero((a.group == g) & (a.label == 1))
    assert a.ids["item"][rows].tolist() == seq[1:]
    hist = seqs(a, "hist_item")
    assert [hist[r] for r in rows] == [seq[:k][-10:] for k in range(1, len(seq))]
    assert last.counts["items"] == schema.counts["items"]


def test_beauty_deterministic(beauty: dict[str, Path], tmp_path: Path) -> None:
    opts = PrepareOptions(max_len=15, seed=7)
    for name in ("a", "b"):
        prepare_sequences(
            beauty["sequences"], beauty["attributes"], tmp_path / name, opts, times=beauty["times"]
        )
    a, b = files_bytes(tmp_path / "a"), files_bytes(tmp_path / "b")
    assert a == b and {"train/hist_item.npy", "train/hist.offsets.npy", "vocab/pairs/item.hist_item.npy"} <= set(a)
    prepare_sequences(
        beauty["sequences"], beauty["attributes"], tmp_path / "c", PrepareOptions(max_len=15, seed=8)
    )
    assert files_bytes(tmp_path / "c")["train/item.npy"] != a["train/item.npy"]


def test_beauty_full_counts(shared_data: Path, tmp_path: Path) -> None:
    """The whole real file (about 1 s): the official 5-core statistics, DIEN's 2 samples per user."""
    src = shared_data / "amazon_beauty"
    schema = prepare_sequences(
        src / "Beauty.txt.gz", src / "Beauty_item2attributes.json.gz", tmp_path / "o", PrepareOptions()
    )
    c = schema.counts
    assert (c["users"], c["items"], c["events"]) == (22_363, 12_101, 198_502)
    assert sum(schema.splits.values()) == 2 * 22_363 and c["items_without_category"] == 0
    assert abs(schema.splits["test"] / (2 * 22_363) - 0.1) < 0.01


def test_beauty_category_rule(beauty: dict[str, Path], tmp_path: Path) -> None:
    attrs = json.loads(gzip.decompress(beauty["attributes"].read_bytes()))
    first = prepare_sequences(
        beauty["sequences"], beauty["attributes"], tmp_path / "f", PrepareOptions(), category_rule="first"
    )
    item_ids, cate_ids = vocab(tmp_path / "f", "item"), vocab(tmp_path / "f", "cate")
    a = load(tmp_path / "f", "train")
    rev = {i: raw for raw, i in item_ids.items()}
    for item, cate in list(zip(a.ids["item"].tolist(), a.ids["cate"].tolist(), strict=True))[:50]:
        assert cate == cate_ids[str(attrs[rev[item]][0])]
    assert first.options["category_rule"] == "first"


def test_sequences_bad_input(beauty: dict[str, Path], tmp_path: Path) -> None:
    lines = beauty["sequences"].read_text().splitlines(keepends=True)[:200]
    bad = tmp_path / "Bad.txt"
    bad.write_text("".join(lines[:9]) + "10 3 x7 5\n" + "".join(lines[10:]))
    with pytest.raises(
        DataFormatError, match=r"Bad.txt, line 10: item id 'x7' is not a non-negative integer"
    ):
        prepare_sequences(bad, beauty["attributes"], tmp_path / "o", PrepareOptions())
    schema = prepare_sequences(bad, beauty["attributes"], tmp_path / "o", PrepareOptions(skip_bad_rows=True))
    assert schema.counts["skipped_rows"] == {str(bad): 1} and schema.counts["users"] == 199

    seqs_file = tmp_path / "Seq.txt"
    seqs_file.write_text("".join(lines))
    times = beauty["times"].read_text().splitlines(keepends=True)[:200]
    for name, content, problem in [
        (
            "swapped",
            times[:4] + [times[5], times[4]] + times[6:],
            r"line 5: user/items differ from .*Seq.txt line 5",
        ),
        (
            "negative",
            times[:2] + [times[2].replace("\t0 ", "\t0 -86400 ", 1).rsplit(" ", 1)[0] + "\n"] + times[3:],
            r"line 3: negative time gap",
        ),
        ("short", times[:100], r"has more lines than"),
        (
            "notab",
            times[:7] + [times[7].replace("\t", " ")] + times[8:],
            r"line 8: expected 'uid items<TAB>gaps'",
        ),
    ]:
        path = tmp_path / f"{name}.txt"
        path.write_text("".join(content))
        with pytest.raises(DataFormatError, match=problem):
            prepare_sequences(seqs_file, beauty["attributes"], tmp_path / "o", PrepareOptions(), times=path)


# --------------------------------------------------------------------- S3-Rec files written here


def write_sequences(d: Path, n_users: int = 30, seed: int = 0) -> dict[str, Path]:
    """Small `<Name>.txt`, `<Name>_with_time_intervals.txt` and `<Name>_item2attributes.json`."""
    rng = random.Random(seed)
    seq_lines, time_lines, attrs = [], [], {}
    for u in range(1, n_users + 1):
        items = [rng.randint(1, 40) for _ in range(rng.randint(2, 9))]
        gaps = [0] + [rng.choice([0, 86400, 3 * 86400]) for _ in items[1:]]
        seq_lines.append(" ".join(map(str, [u, *items])))
        time_lines.append(" ".join(map(str, [u, *items])) + "\t" + " ".join(map(str, gaps)))
    for i in range(1, 41):
        attrs[str(i)] = [100 + i % 3, 200 + i % 5]
    paths = {"sequences": d / "Toy.txt", "times": d / "Toy_with_time_intervals.txt",
             "attributes": d / "Toy_item2attributes.json"}
    paths["sequences"].write_text("\n".join(seq_lines) + "\n")
    paths["times"].write_text("\n".join(time_lines) + "\n")
    paths["attributes"].write_text(json.dumps(attrs))
    return paths


def test_sequences_files_written_here(tmp_path: Path) -> None:
    p = write_sequences(tmp_path)
    out = tmp_path / "o"
    schema = prepare_sequences(p["sequences"], p["attributes"], out, PrepareOptions(protocol="all", max_len=3,
                                                                                    test_fraction=0.3))
    splits = check_invariants(out, schema)
    lines = [line.split() for line in p["sequences"].read_text().splitlines()]
    items = vocab(out, "item")
    a = splits["train"]
    hist = seqs(a, "hist_item")
    for g in np.unique(a.group)[:10]:  # histories truncated to the most recent 3 earlier items
        seq = lines[g][1:]
        rows = np.flatnonzero((a.group == g) & (a.label == 1))
        assert [hist[r] for r in rows] == [[items[x] for x in seq[:k][-3:]] for k in range(1, len(seq))]


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        ({"sequences": "attributes"}, r"Toy_item2attributes.json, line 1: this looks like an item2attributes file"
                                      r" .*were --sequences and --attributes swapped\?"),
        ({"attributes": "sequences"}, r"Toy.txt, line 1: not valid JSON; this looks like a sequences file"
                                      r" .*were --attributes and --sequences swapped\?"),
        ({"sequences": "attributes", "attributes": "sequences"}, r"Toy_item2attributes.json, line 1: .*swapped"),
        ({"sequences": "times"}, r"Toy_with_time_intervals.txt, line 1: this looks like a time-intervals file"
                                 r" .*were --sequences and --times swapped\?"),
        ({"sequences": "times", "times": "sequences"}, r"Toy_with_time_intervals.txt, line 1: .*--times swapped"),
        ({"times": "sequences"}, r"Toy.txt, line 1: this looks like a sequences file .*--times and --sequences"),
        ({"times": "attributes"}, r"Toy_item2attributes.json, line 1: this looks like an item2attributes file"),
        ({"attributes": "times"}, r"Toy_with_time_intervals.txt, line 1: not valid JSON; this looks like a time"),
    ],
)
@pytest.mark.parametrize("skip", [False, True])
def test_sequences_swapped_files_are_named(tmp_path: Path, given: dict[str, str], problem: str, skip: bool) -> None:
    """The README's promise: a file given in another's place is recognised, even with --skip-bad-rows."""
    p = write_sequences(tmp_path)
    args = {k: p[given.get(k, k)] for k in ("sequences", "attributes", "times")}
    with pytest.raises(DataFormatError, match=problem):
        prepare_sequences(args["sequences"], args["attributes"], tmp_path / "o",
                          PrepareOptions(skip_bad_rows=skip), times=args["times"])


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_sequences_empty_files(tmp_path: Path, content: bytes) -> None:
    p = write_sequences(tmp_path)
    for path in (tmp_path / "empty.json", tmp_path / "empty.json.gz"):  # was "line 1: not valid JSON"
        path.write_bytes(gzip.compress(content, mtime=0) if path.suffix == ".gz" else content)
        with pytest.raises(DataFormatError, match=rf"{path.name}: empty file"):
            prepare_sequences(p["sequences"], path, tmp_path / "o", PrepareOptions())
    empty = tmp_path / "empty.txt"
    empty.write_bytes(content)
    for seq, times in ((empty, None), (empty, p["times"]), (p["sequences"], empty)):
        with pytest.raises(DataFormatError, match="empty.txt: empty file"):
            prepare_sequences(seq, p["attributes"], tmp_path / "o", PrepareOptions(), times=times)


# ------------------------------------------------------------------------ McAuley 2014 Amazon format


def write_amazon(d: Path, gz: bool, n_users: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """Small reviews_Toys_5.json + meta_Toys.json in the exact 2014 formats (meta: Python literals)."""
    rng = random.Random(seed)
    asins = [f"B00{i:07d}" for i in range(30)]
    reviews = []
    for u in range(n_users):
        for _ in range(rng.randint(1, 8)):  # some users get a single review (< 2 events)
            reviews.append(
                {
                    "reviewerID": f"A{u:05d}XYZ",
                    "asin": rng.choice(asins),
                    "reviewerName": "J. O'Brien",
                    "helpful": [0, 0],
                    "reviewText": 'Great "toy", my kid\'s favourite.',
                    "overall": 5.0,
                    "summary": "nice",
                    "unixReviewTime": 1_300_000_000 + 86400 * rng.randint(0, 20),
                    "reviewTime": "03 13, 2011",
                }
            )
    rng.shuffle(reviews)  # not sorted by time: the pipeline sorts
    meta = []
    for i, asin in enumerate(asins[:-3]):  # the last 3 items have no metadata -> default_cat
        cats = [["Toys & Games", "Puzzles", f"Jigsaw {i % 4}"], ["Toys & Games", "Other"]] if i % 5 else [[]]
        row = {
            "asin": asin,
            "title": f"Kid's puzzle {i}",
            "price": 9.99,
            "related": {"also_bought": asins[:3]},
            "salesRank": {"Toys & Games": 1000 + i},
            "categories": cats,
        }
        meta.append(json.dumps(row) if i == 1 else repr(row))  # a strict JSON line is accepted too
    rpath, mpath = d / ("reviews_Toys_5.json" + ".gz" * gz), d / ("meta_Toys.json" + ".gz" * gz)
    for path, lines in ((rpath, [json.dumps(r) for r in reviews]), (mpath, meta)):
        data = ("\n".join(lines) + "\n").encode()
        path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return rpath, mpath


@pytest.mark.parametrize("gz", [False, True])
def test_amazon_format(tmp_path: Path, gz: bool) -> None:
    reviews, meta = write_amazon(tmp_path, gz)
    out = tmp_path / "out"
    schema = prepare_amazon(reviews, meta, out, PrepareOptions(test_fraction=0.25))
    splits = check_invariants(out, schema)
    assert schema.dataset == "amazon:reviews_Toys_5"
    raw = [
        json.loads(x)
        for x in (gzip.decompress(reviews.read_bytes()) if gz else reviews.read_bytes()).splitlines()
    ]
    per_user: dict[str, list[tuple[int, int, str]]] = {}
    for i, r in enumerate(raw):
        per_user.setdefault(r["reviewerID"], []).append((r["unixReviewTime"], i, r["asin"]))
    n_ties = sum(len(v) - len({t for t, _, _ in v}) for v in per_user.values())
    assert schema.counts["users"] == len(per_user) and schema.counts["events"] == len(raw)
    assert schema.counts["timestamp_ties"] == n_ties > 0
    assert schema.counts["users_lt2_events"] == sum(len(v) < 2 for v in per_user.values()) > 0
    assert sum(schema.splits.values()) == 2 * sum(len(v) >= 2 for v in per_user.values())
    no_cate = {f"B00{i:07d}" for i in (0, 5, 10, 15, 20, 25, 27, 28, 29)}  # empty categories or no meta line
    assert schema.counts["items_without_category"] == len({r["asin"] for r in raw} & no_cate)
    cates = vocab(out, "cate")
    assert {"Jigsaw 1", "Jigsaw 2", "default_cat"} <= set(cates) and "Other" not in cates
    # a positive's history = that user's earlier reviews, time-sorted with ties in file order
    items = vocab(out, "item")
    user_of = {code: uid for code, uid in enumerate(dict.fromkeys(r["reviewerID"] for r in raw))}
    a = splits["train"]
    hist = seqs(a, "hist_item")
    for row in np.flatnonzero(a.label == 1)[:10]:
        events = [asin for _, _, asin in sorted(per_user[user_of[a.group[row]]])]
        assert a.ids["item"][row] == items[events[-1]]
        assert hist[row] == [items[x] for x in events[:-1]]


def test_amazon_all_protocol_counts(tmp_path: Path) -> None:
    reviews, meta = write_amazon(tmp_path, gz=False, n_users=60, seed=1)
    raw = [json.loads(x) for x in reviews.read_text().splitlines()]
    n_events: dict[str, int] = {}
    for r in raw:
        n_events[r["reviewerID"]] = n_events.get(r["reviewerID"], 0) + 1
    schema = prepare_amazon(reviews, meta, tmp_path / "o", PrepareOptions(protocol="all", test_fraction=0.3))
    check_invariants(tmp_path / "o", schema)
    assert sum(schema.splits.values()) == 2 * sum(n - 1 for n in n_events.values() if n >= 2)


def test_amazon_bad_rows(tmp_path: Path) -> None:
    reviews, meta = write_amazon(tmp_path, gz=False)
    good = reviews.read_text().splitlines(keepends=True)
    cases = [
        ('{"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1\n', "not valid JSON"),
        ('{"asin": "B1", "overall": 5.0, "unixReviewTime": 1}\n', "missing field 'reviewerID'"),
        ('{"reviewerID": "A1", "overall": 5.0, "unixReviewTime": 1}\n', "missing field 'asin'"),
        ('{"reviewerID": "A1", "asin": "B1", "overall": 5.0}\n', "missing field 'unixReviewTime'"),
        (
            '{"reviewerID": "A1", "asin": "B1", "unixReviewTime": "1300000000"}\n',
            "field 'unixReviewTime' must be an integer",
        ),
        ("[1, 2]\n", "expected a JSON object"),
    ]
    for bad_line, problem in cases:
        path = tmp_path / "reviews_bad.json"
        path.write_text("".join(good[:6]) + bad_line + "".join(good[6:]))
        with pytest.raises(DataFormatError, match=rf"reviews_bad.json, line 7: {problem}"):
            prepare_amazon(path, meta, tmp_path / "o", PrepareOptions())
    schema = prepare_amazon(path, meta, tmp_path / "o", PrepareOptions(test_fraction=0.3, skip_bad_rows=True))
    assert schema.counts["skipped_rows"] == {str(path): 1}
    assert schema.counts["events"] == len(good)


def test_amazon_wrong_files(tmp_path: Path) -> None:
    reviews, meta = write_amazon(tmp_path, gz=False)
    with pytest.raises(DataFormatError, match=r"meta_Toys.json, line 1: not valid JSON .*swapped"):
        prepare_amazon(meta, reviews, tmp_path / "o", PrepareOptions())
    with pytest.raises(DataFormatError, match=r"reviews_Toys_5.json, line 1: this is a review line"):
        prepare_amazon(reviews, reviews, tmp_path / "o", PrepareOptions())
    evil_meta = tmp_path / "meta_evil.json"  # literal_eval refuses calls; eval() would run this
    evil_meta.write_text("{'asin': __import__('os').system('touch pwned'), 'categories': [['x']]}\n")
    with pytest.raises(DataFormatError, match=r"meta_evil.json, line 1: neither JSON nor a Python literal"):
        prepare_amazon(reviews, evil_meta, tmp_path / "o", PrepareOptions())
    assert not Path("pwned").exists()
    with pytest.raises(FileNotFoundError, match="reviews_Nope.json"):
        prepare_amazon(tmp_path / "reviews_Nope.json", meta, tmp_path / "o", PrepareOptions())
    empty = tmp_path / "empty.json"
    empty.write_text("\n\n")
    with pytest.raises(DataFormatError, match="empty.json: empty file"):
        prepare_amazon(empty, meta, tmp_path / "o", PrepareOptions())


def test_corrupt_gzip(tmp_path: Path) -> None:
    reviews, meta = write_amazon(tmp_path, gz=True)
    truncated = tmp_path / "reviews_trunc.json.gz"
    truncated.write_bytes(reviews.read_bytes()[:-40])
    with pytest.raises(DataFormatError, match="reviews_trunc.json.gz: corrupt"):
        prepare_amazon(truncated, meta, tmp_path / "o", PrepareOptions())
    fake = tmp_path / "reviews_fake.json.gz"
    fake.write_text('{"reviewerID": "A"}\n')
    with pytest.raises(DataFormatError, match="reviews_fake.json.gz: named .gz but is not gzip"):
        prepare_amazon(fake, meta, tmp_path / "o", PrepareOptions())
    flipped = bytearray(meta.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    bad_meta = tmp_path / "meta_flip.json.gz"
    bad_meta.write_bytes(bytes(flipped))
    with pytest.raises(DataFormatError, match="meta_flip.json.gz"):
        prepare_amazon(reviews, bad_meta, tmp_path / "o", PrepareOptions())


def test_no_samples(tmp_path: Path) -> None:
    reviews = tmp_path / "reviews_one.json"
    reviews.write_text(
        "".join(
            json.dumps({"reviewerID": f"U{i}", "asin": f"I{i}", "unixReviewTime": i}) + "\n"
            for i in range(20)
        )
    )
    meta = tmp_path / "meta_one.json"
    meta.write_text("{'asin': 'I1', 'categories': [['A', 'B']]}\n")
    with pytest.raises(ValueError, match="no train samples"):
        prepare_amazon(reviews, meta, tmp_path / "o", PrepareOptions())


def test_options_validated() -> None:
    with pytest.raises(ValueError, match="protocol"):
        PrepareOptions(protocol="first")
    with pytest.raises(ValueError, match="test_fraction"):
        PrepareOptions(test_fraction=1.0)


# ---------------------------------------------------------------------- determinism (no shared data)


def _prepare_small(fmt: str, src: Path, out: Path, seed: int) -> Schema:
    opts = PrepareOptions(test_fraction=0.3, max_len=5, seed=seed)
    if fmt == "amazon":
        reviews, meta = write_amazon(src, gz=True, n_users=80, seed=2)
        return prepare_amazon(reviews, meta, out, opts, workers=1)
    if fmt == "sequences":
        p = write_sequences(src)
        return prepare_sequences(p["sequences"], p["attributes"], out, opts, times=p["times"])
    if fmt == "dien":
        d = src / "dien"
        d.mkdir(exist_ok=True)
        rows = "".join(f"{y}\tU{u}\tI{(u * 7 + y) % 13}\tC{u % 3}\tI{u % 5}\x02I{u % 11}\tC1\x02C2\n"
                       for u in range(40) for y in (0, 1))
        (d / "local_test").write_text(rows)
        return prepare_dien(d, out, opts)
    world = WorldConfig(users=200, items=30, cates=4, seed=1, hist_max=5)
    return prepare_synthetic(out, world, opts)


@pytest.mark.parametrize("fmt", ["amazon", "sequences", "dien", "synthetic"])
def test_prepare_is_deterministic(tmp_path: Path, fmt: str) -> None:
    """Same inputs + same seed = the same files, byte for byte (arrays, vocabularies, pair keys, schema)."""
    (tmp_path / "src").mkdir()
    a = _prepare_small(fmt, tmp_path / "src", tmp_path / "a", seed=4)
    _prepare_small(fmt, tmp_path / "src", tmp_path / "b", seed=4)
    check_invariants(tmp_path / "a", a)
    files = files_bytes(tmp_path / "a")
    assert files == files_bytes(tmp_path / "b") and "vocab/pairs/item.hist_item.npy" in files
    _prepare_small(fmt, tmp_path / "src", tmp_path / "c", seed=5)
    assert files_bytes(tmp_path / "c") != files


# ----------------------------------------------------------------------------------------------- CLI


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="canctr")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli(
    beauty: dict[str, Path], shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = [
        "prepare", "sequences", "--sequences", str(beauty["sequences"]), "--attributes", str(beauty["attributes"]),
        "--times", str(beauty["times"]), "--out", str(tmp_path / "s"), "--targets", "all", "--max-len", "5",
        "--seed", "11",
    ]
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    assert "sequences:Beauty  protocol=all  seed=11" in printed and "positive rate 0.500" in printed
    schema = Schema.load(tmp_path / "s")
    assert schema.options["protocol"] == "all" and schema.max_len("hist") == 5 and len(schema.sources) == 3

    dien_dir = shared_data / "amazon_books_dien_fixture" / "hsux_head1000"
    argv = ["prepare", "dien", "--dir", str(dien_dir), "--out", str(tmp_path / "d"), "--test-fraction", "0.3",
            "--test-max-len", "1"]
    assert run_cli(argv) == 0
    assert load(tmp_path / "d", "test").lengths("hist").max() == 1
    argv = ["prepare", "amazon", "--reviews", str(tmp_path / "none.json"), "--meta", "m", "--out", str(tmp_path / "a")]
    assert run_cli(argv) == 2
    assert "none.json: no such file" in capsys.readouterr().err
    argv = ["prepare", "sequences", "--sequences", str(beauty["attributes"]), "--attributes", str(beauty["sequences"]),
            "--out", str(tmp_path / "x")]
    assert run_cli(argv) == 2
    assert "were --sequences and --attributes swapped?" in capsys.readouterr().err
