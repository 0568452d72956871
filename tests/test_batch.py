"""batch.py, the keyed Batch and the BatchLoader over the ragged store: per-group padding to the batch's longest
row, `max_len` keeping the most recent positions, length bucketing, rank sharding, exact resume and the
auxiliary negatives drawn per (seed, epoch, step). Small hand-built splits whose values name their position."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from canctr.data.batch import BatchLoader, lengths_to_mask, load_split
from canctr.data.random_data import random_columns
from canctr.data.spec import Attention, FeatureSpec, Field, SequenceGroup
from canctr.data.store import Columns, write_split

SPEC = FeatureSpec(
    fields=[
        Field("user", side="user"),
        Field("item", side="item"),
        Field("hist_item", kind="sequence", side="user", table="item", group="hist"),
        Field("hist_cate", kind="sequence", side="user", table="cate", group="hist"),
        Field("tags", kind="sequence", side="item", table="tag", group="tags"),
    ],
    sequences=[SequenceGroup("hist", 6), SequenceGroup("tags", 4)],
    attention=Attention(("item",), ("hist_item",)),
)
HIST_LEN = [0, 3, 6, 1, 2, 5, 4, 0, 6, 2]
TAGS_LEN = [1, 0, 2, 4, 3, 0, 1, 2, 2, 1]


def hist_item(i: int, k: int) -> int:
    return 100 * i + k + 1  # sample i, position k (oldest first): every value distinct and non-zero


def cate_of(item: int | np.ndarray) -> int | np.ndarray:
    return item % 7 + 1


def tag(i: int, k: int) -> int:
    return 10 * i + k + 1


@pytest.fixture(scope="module")
def cols(tmp_path_factory: pytest.TempPathFactory) -> Columns:
    """Ten samples written to and read back from the store (memory-mapped, as training reads them)."""
    n = len(HIST_LEN)
    hist = np.array([hist_item(i, k) for i in range(n) for k in range(HIST_LEN[i])], np.int32)
    data = Columns.from_lengths(
        SPEC,
        label=np.arange(n, dtype=np.float32) % 2,
        group=np.arange(n, dtype=np.int64) // 2,
        ids={"user": np.arange(n, dtype=np.int32) + 1, "item": np.arange(n, dtype=np.int32) + 50},
        lengths={"hist": np.array(HIST_LEN), "tags": np.array(TAGS_LEN)},
        flat={"hist_item": hist, "hist_cate": cate_of(hist).astype(np.int32),
              "tags": np.array([tag(i, k) for i in range(n) for k in range(TAGS_LEN[i])], np.int32)},
    )
    out = tmp_path_factory.mktemp("batch")
    write_split(out, "train", SPEC, data)
    return load_split(out, "train", SPEC)


def padded(rows: list[list[int]], width: int) -> list[list[int]]:
    return [r + [0] * (width - len(r)) for r in rows]


def test_each_group_is_padded_to_the_batch_longest(cols: Columns) -> None:
    loader = BatchLoader(cols, SPEC, batch_size=4, shuffle=False)
    idx = [0, 1, 3]
    b = loader.batch(torch.tensor(idx))
    assert b.size == 3 and b["user"].tolist() == [1, 2, 4] and b["item"].dtype == torch.int64
    # two groups, two widths: hist 3 (lengths 0, 3, 1), tags 4 (lengths 1, 0, 4)
    assert b["hist_item"].shape == b["hist_cate"].shape == (3, 3) and b["tags"].shape == (3, 4)
    assert b["hist_item"].tolist() == padded([[hist_item(i, k) for k in range(HIST_LEN[i])] for i in idx], 3)
    assert b["tags"].tolist() == padded([[tag(i, k) for k in range(TAGS_LEN[i])] for i in idx], 4)
    valid = b.mask("hist")
    assert (b["hist_cate"][valid] == cate_of(b["hist_item"][valid])).all()  # aligned fields stay aligned
    assert b.lengths["hist"].tolist() == [0, 3, 1] and b.lengths["tags"].tolist() == [1, 0, 4]
    assert torch.equal(valid, lengths_to_mask(b.lengths["hist"], 3)) and (b["hist_item"][~valid] == 0).all()
    values, lengths = b.jagged("tags", "tags")
    assert values.tolist() == [tag(0, 0), *[tag(3, k) for k in range(4)]] and lengths.tolist() == [1, 0, 4]
    # a batch whose sequences are all empty still has one (padding) column
    empty = loader.batch(torch.tensor([0, 7]))
    assert empty["hist_item"].shape == (2, 1) and not empty.mask("hist").any()
    moved = b.to("cpu")
    assert set(moved.sparse) == set(SPEC.names) and torch.equal(moved["tags"], b["tags"])
    assert b.replace(label=b.label + 1).label.tolist() == (b.label + 1).tolist()


def test_max_len_keeps_the_most_recent_positions(cols: Columns) -> None:
    loader = BatchLoader(cols, SPEC, batch_size=10, shuffle=False, max_len=2)
    b = next(iter(loader))
    assert b["hist_item"].shape == (10, 2) and b["tags"].shape == (10, 2)
    expect = [[hist_item(i, k) for k in range(HIST_LEN[i])][-2:] for i in range(10)]
    assert b["hist_item"].tolist() == padded(expect, 2)
    assert b["tags"].tolist() == padded([[tag(i, k) for k in range(TAGS_LEN[i])][-2:] for i in range(10)], 2)
    assert b.lengths["hist"].tolist() == [min(n, 2) for n in HIST_LEN]
    with pytest.raises(ValueError, match="max_len"):
        BatchLoader(cols, SPEC, batch_size=2, shuffle=False, max_len=0)


def test_plain_order_sizes_and_resume(cols: Columns) -> None:
    loader = BatchLoader(cols, SPEC, batch_size=4, shuffle=False)
    assert len(loader) == 3 and [b.size for b in loader] == [4, 4, 2]
    assert torch.cat([b["user"] for b in loader]).tolist() == list(range(1, 11))
    assert len(BatchLoader(cols, SPEC, batch_size=4, shuffle=False, drop_last=True)) == 2
    shuffled = BatchLoader(cols, SPEC, batch_size=3, shuffle=True, seed=4)
    full = list(shuffled.iter_epoch(2))
    resumed = list(shuffled.iter_epoch(2, start_step=2))  # mid-epoch resume: the same remaining batches
    assert [b["user"].tolist() for b in resumed] == [b["user"].tolist() for b in full[2:]]
    assert sorted(torch.cat([b["user"] for b in full]).tolist()) == list(range(1, 11))


def test_rank_sharding_is_disjoint_and_equal(cols: Columns) -> None:
    full = BatchLoader(cols, SPEC, batch_size=2, shuffle=True, seed=9).order(3)
    shards = [BatchLoader(cols, SPEC, batch_size=2, shuffle=True, seed=9, rank=r, world_size=3) for r in range(3)]
    orders = [s.order(3).tolist() for s in shards]
    assert [len(o) for o in orders] == [3, 3, 3] and [len(s) for s in shards] == [2, 2, 2]
    assert sorted(sum(orders, [])) == sorted(full[:9].tolist())  # 10 // 3 * 3 usable samples, each once
    assert orders[1] == full[1:9:3].tolist()
    users = [torch.cat([b["user"] for b in s.iter_epoch(3)]).tolist() for s in shards]
    assert not set(users[0]) & set(users[1]) and not set(users[1]) & set(users[2])


def test_bucketing_sorts_windows_by_length() -> None:
    spec = FeatureSpec(
        fields=[Field("item"), Field("hist_item", kind="sequence", table="item", group="hist")],
        sequences=[SequenceGroup("hist", 40)],
    )
    cols = random_columns(spec, {"item": 30}, 203, np.random.default_rng(0))
    lens = np.diff(cols.offsets["hist"])
    bucketed = BatchLoader(cols, spec, batch_size=8, shuffle=True, seed=2, bucket=5)
    plain = BatchLoader(cols, spec, batch_size=8, shuffle=True, seed=2)
    order = bucketed.order(0)
    assert sorted(order.tolist()) == list(range(203))  # a permutation: nothing lost, nothing repeated
    for start in range(0, 200, 8):  # every full batch comes from one window, longest first
        block = lens[order[start : start + 8].numpy()]
        assert (np.diff(block) <= 0).all()
    width = {name: sum(b["hist_item"].shape[1] for b in loader) for name, loader in
             (("bucketed", bucketed), ("plain", plain))}
    assert width["bucketed"] < 0.8 * width["plain"]  # less padding
    assert torch.equal(order, BatchLoader(cols, spec, batch_size=8, shuffle=True, seed=2, bucket=5).order(0))
    assert not torch.equal(order, bucketed.order(1))


def test_shuffle_windows_bound_the_order() -> None:
    """A split larger than `shuffle_window` is dealt into windows by index modulo K: each epoch is still a
    permutation of the split, a function of (seed, epoch), resumable mid-epoch, shardable across ranks and
    bucketed within each window."""
    spec = FeatureSpec(
        fields=[Field("item"), Field("hist_item", kind="sequence", table="item", group="hist")],
        sequences=[SequenceGroup("hist", 40)],
    )
    n = 1003
    cols = random_columns(spec, {"item": 30}, n, np.random.default_rng(1))

    def loader(**kw) -> BatchLoader:  # noqa: ANN003
        return BatchLoader(cols, spec, **{"batch_size": 16, "shuffle": True, "seed": 5, "shuffle_window": 100,
                                          **kw})

    windowed = loader()
    pieces = list(windowed._windows(0))
    assert len(pieces) == 11 and max(p.numel() for p in pieces) <= 100  # ceil(1003 / 100) windows, each bounded
    for piece in pieces:  # one residue class modulo 11 per window: each spans the whole split
        assert len(set((piece % 11).tolist())) == 1 and int(piece.max()) - int(piece.min()) > 900
    order = windowed.order(0)
    assert sorted(order.tolist()) == list(range(n))
    assert torch.equal(order, loader().order(0)) and not torch.equal(order, windowed.order(1))
    assert not torch.equal(order, loader(shuffle_window=n).order(0))  # one window: the plain permutation
    batches = list(windowed.iter_epoch(0))
    assert len(batches) == len(windowed) == 63 and [b.size for b in batches[-2:]] == [16, 11]
    assert sorted(torch.cat([b["item"] for b in batches]).tolist()) == sorted(cols.ids["item"].tolist())
    resumed = list(windowed.iter_epoch(0, start_step=20))  # skips whole windows, then part of one
    assert [b["item"].tolist() for b in resumed] == [b["item"].tolist() for b in batches[20:]]
    shards = [loader(rank=r, world_size=2, drop_last=True) for r in range(2)]
    parts = [s.order(0).tolist() for s in shards]
    assert len(parts[0]) == len(parts[1]) == n // 2 and not set(parts[0]) & set(parts[1])
    assert parts[0] == order[: n // 2 * 2 : 2].tolist()  # position p of the epoch's order goes to rank p % 2
    lens = np.diff(cols.offsets["hist"])
    bucketed = loader(bucket=3).order(0).numpy()
    for piece in loader(bucket=3)._windows(0):  # bucketed within each window: every batch longest first
        for start in range(0, piece.numel() - 15, 16):
            assert (np.diff(lens[piece[start : start + 16].numpy()]) <= 0).all()
    assert sorted(bucketed.tolist()) == list(range(n))
    with pytest.raises(ValueError, match="shuffle_window must be >= 1"):
        loader(shuffle_window=0)


def test_block_shuffled_windows_read_contiguous_runs() -> None:
    """shuffle_blocks > 0: each window is that many contiguous blocks (runs of consecutive samples, so data
    beyond the page cache is read nearly sequentially); the epoch is still a permutation of the split and a
    function of (seed, epoch), resumable and shardable like the strided windows."""
    spec = FeatureSpec(
        fields=[Field("item"), Field("hist_item", kind="sequence", table="item", group="hist")],
        sequences=[SequenceGroup("hist", 40)],
    )
    n = 1003
    cols = random_columns(spec, {"item": 30}, n, np.random.default_rng(2))

    def loader(**kw) -> BatchLoader:  # noqa: ANN003
        return BatchLoader(cols, spec, **{"batch_size": 16, "shuffle": True, "seed": 5, "shuffle_window": 100,
                                          "shuffle_blocks": 4, **kw})

    blocked = loader()
    pieces = list(blocked._windows(0))
    assert sum(p.numel() for p in pieces) == n and max(p.numel() for p in pieces) <= 100
    for piece in pieces:  # whole blocks of 25 consecutive samples, at most 4 of them
        blocks = sorted(set((piece // 25).tolist()))
        assert len(blocks) <= 4
        assert sorted(piece.tolist()) == [i for b in blocks for i in range(b * 25, min(n, b * 25 + 25))]
    order = blocked.order(0)
    assert sorted(order.tolist()) == list(range(n))
    assert torch.equal(order, loader().order(0)) and not torch.equal(order, blocked.order(1))
    assert not torch.equal(order, loader(shuffle_blocks=0).order(0))
    batches = list(blocked.iter_epoch(0))
    resumed = list(blocked.iter_epoch(0, start_step=20))
    assert [b["item"].tolist() for b in resumed] == [b["item"].tolist() for b in batches[20:]]
    parts = [loader(rank=r, world_size=2, drop_last=True).order(0).tolist() for r in range(2)]
    assert parts[0] == order[: n // 2 * 2 : 2].tolist() and not set(parts[0]) & set(parts[1])
    with pytest.raises(ValueError, match="shuffle_blocks must be in 0..shuffle_window"):
        loader(shuffle_blocks=101)


def test_negatives_drawn_from_the_group_per_seed_epoch_step(cols: Columns) -> None:
    def loader(seed: int = 1) -> BatchLoader:
        return BatchLoader(cols, SPEC, batch_size=4, shuffle=True, seed=seed, negatives=("hist",))

    batches = list(loader().iter_epoch(0))
    stored = set(cols.values["hist_item"].tolist())
    for b in batches:
        assert set(b.negatives) == {"hist_item", "hist_cate"}  # every field of the group, none of "tags"
        neg, valid = b.negatives["hist_item"], b.mask("hist")
        assert neg.shape == b["hist_item"].shape and (neg[~valid] == 0).all()
        assert set(neg[valid].tolist()) <= stored
        assert (b.negatives["hist_cate"][valid] == cate_of(neg[valid])).all()  # an item comes with its category
        assert (neg != b["hist_item"])[valid].all()  # never the positive when the values allow
    again = list(loader().iter_epoch(0))
    assert all(torch.equal(a.negatives["hist_item"], b.negatives["hist_item"]) for a, b in zip(batches, again))
    other = loader().batch(torch.arange(10), epoch=1, step=0)
    first = loader().batch(torch.arange(10), epoch=0, step=0)
    assert not torch.equal(other.negatives["hist_item"], first.negatives["hist_item"])
    assert not BatchLoader(cols, SPEC, batch_size=4, shuffle=False).batch(torch.arange(3)).negatives
