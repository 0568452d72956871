"""`canctr prepare movielens / taobao / synthetic` and `canctr demo`: the pipelines on real slices of the
shared files (written to tmp_path, never into the repo), checked row by row against the raw lines; every
malformed-input path; the synthetic world's Bayes AUC; CAN beating DNN on it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import check_invariants, files_bytes, load, run_cli, seqs, vocab

from canctr.cli import main
from canctr.data import BatchLoader, Schema
from canctr.data.formats.movielens import USER_FEATURES, prepare_movielens
from canctr.data.formats.synthetic import WorldConfig, generate, prepare_synthetic
from canctr.data.formats.taobao import TAOBAO_WINDOW, prepare_taobao
from canctr.data.lines import DataFormatError
from canctr.data.samples import PrepareOptions
from canctr.data.schema import SchemaError
from canctr.data.summary import format_summary
from canctr.demo import run_demo
from canctr.metrics import auc
from canctr.models import create_model

N_ML_USERS = 200
N_TB_USERS = 200
ML_WIDTH = 20

# ----------------------------------------------------------------------------------------- MovieLens


@pytest.fixture(scope="session")
def ml(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The ratings of the first N_ML_USERS users of the real ratings.dat (grouped by user) in tmp; the
    real movies.dat / users.dat read in place."""
    src = shared_data / "movielens_1m"
    lines = []
    with gzip.open(src / "ratings.dat.gz", "rt") as f:
        for line in f:
            if int(line.split("::", 1)[0]) > N_ML_USERS:
                break
            lines.append(line)
    d = tmp_path_factory.mktemp("ml")
    (d / "ratings.dat").write_text("".join(lines))
    return {"ratings": d / "ratings.dat", "movies": src / "movies.dat", "users": src / "users.dat"}


@pytest.fixture(scope="session")
def ml_events(ml: dict[str, Path]) -> dict[str, list[tuple[int, int, str, int]]]:
    """user id (in order of first appearance = user code) -> [(time, line, movie, rating)], time-sorted
    with ties in file order."""
    out: dict[str, list[tuple[int, int, str, int]]] = {}
    for n, line in enumerate(ml["ratings"].read_text().splitlines()):
        u, m, r, t = line.split("::")
        out.setdefault(u, []).append((int(t), n, m, int(r)))
    return {u: sorted(v) for u, v in out.items()}


@pytest.fixture(scope="session")
def ml_multi(ml: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("ml_multi")
    opts = PrepareOptions(max_len=ML_WIDTH, test_fraction=0.2)
    return out, prepare_movielens(ml["ratings"], ml["movies"], out, opts, users=ml["users"], genres="multi")


def movies_genres(path: Path) -> dict[str, list[str]]:
    rows = [line.split("::") for line in path.read_bytes().decode("latin-1").splitlines()]
    return {r[0]: r[2].split("|") for r in rows}


def test_movielens_samples_match_raw_rows(ml_multi, ml_events, ml) -> None:
    out, schema = ml_multi
    splits = check_invariants(out, schema)
    n_events = sum(map(len, ml_events.values()))
    c = schema.counts
    assert schema.dataset.startswith("movielens:")
    assert schema.protocol == "ratings" and c["users"] == N_ML_USERS and c["events"] == n_events
    assert sum(schema.splits.values()) == n_events  # every rating is a sample, none sampled
    ties = sum(len(v) - len({t for t, *_ in v}) for v in ml_events.values())
    assert c["timestamp_ties"] == ties > 0
    items, cates = vocab(out, "item"), vocab(out, "cate")
    genders, occupations = vocab(out, "user_gender"), vocab(out, "user_occupation")
    profile = {r[0]: r[1:4] for r in (x.split("::") for x in ml["users"].read_text().splitlines())}
    genres = movies_genres(ml["movies"])
    user_ids = list(ml_events)  # group = order of first appearance
    spec = schema.spec  # the side fields are categorical user fields, genres the item_cates sequence group
    assert [f.name for f in spec.categorical] == ["user", "item", "cate", *USER_FEATURES]
    assert all(spec.field(name).side == "user" and spec.field(name).table == name for name in USER_FEATURES)
    bag = spec.field("item_cates")
    assert (bag.kind, bag.side, bag.table, bag.group) == ("sequence", "item", "cate", "item_cates")
    assert schema.max_len("item_cates") == max(len(g) for g in movies_genres(ml["movies"]).values())
    for a in splits.values():
        hist, bags = seqs(a, "hist_item"), seqs(a, "item_cates")
        for g in np.unique(a.group):
            rows = np.flatnonzero(a.group == g)
            uid = user_ids[g]
            ev = ml_events[uid]
            assert len(rows) == len(ev)  # all of the user's ratings, in time order (ties: file order)
            assert a.label[rows].tolist() == [float(r >= 4) for *_, r in ev]
            assert a.ids["item"][rows].tolist() == [items.get(m, 0) for _, _, m, _ in ev]
            # history = every earlier rated movie, the most recent ML_WIDTH; the first rating has none
            assert [hist[r] for r in rows] == [
                [items.get(m, 0) for _, _, m, _ in ev[:k][-ML_WIDTH:]] for k in range(len(ev))
            ]
            assert (a.ids["user_gender"][rows] == genders[profile[uid][0]]).all()
            assert (a.ids["user_occupation"][rows] == occupations[profile[uid][2]]).all()
            for r, (_, _, m, _) in zip(rows[:5], ev[:5], strict=True):  # every genre, first = cate
                assert bags[r] == [cates.get(x, 0) for x in genres[m]]
                assert a.ids["cate"][r] == cates.get(genres[m][0], 0)
    train_users = {user_ids[g] for g in np.unique(splits["train"].group)}  # vocabularies: train only
    assert {name: schema.vocab[name] for name in USER_FEATURES} == {
        name: 1 + len({profile[u][k] for u in train_users}) for k, name in enumerate(USER_FEATURES)
    }
    per_item = np.load(out / "vocab" / "item_cates.npy")
    assert per_item.shape[0] == schema.vocab["item"] and (per_item[0] == 0).all()
    tr = splits["train"]
    assert [[x for x in per_item[i].tolist() if x] for i in tr.ids["item"].tolist()] == seqs(tr, "item_cates")
    assert set(genders) == {"<pad/unk>", "M", "F"} and c["users_without_profile"] == 0


def test_movielens_vocab_train_only_and_oov(ml_multi, ml_events) -> None:
    out, schema = ml_multi
    splits = {s: load(out, s) for s in ("train", "test")}
    user_ids = list(ml_events)
    train_users = {user_ids[g] for g in np.unique(splits["train"].group)}
    train_movies = {m for u in train_users for _, _, m, _ in ml_events[u]}
    items = vocab(out, "item")
    assert set(items) - {"<pad/unk>"} == train_movies  # train targets; histories are earlier targets
    test_rows = [m for u, ev in ml_events.items() if u not in train_users for _, _, m, _ in ev]
    expect = sum(m not in train_movies for m in test_rows)
    assert expect > 0 and schema.counts["oov"]["test"]["item"] == expect
    assert schema.counts["oov"]["train"]["item"] == 0 and schema.counts["oov"]["test"]["user"] == len(
        test_rows
    )


def test_movielens_positive_history_and_threshold(ml, ml_events, tmp_path: Path) -> None:
    opts = PrepareOptions(max_len=10, test_fraction=0.2)
    schema = prepare_movielens(
        ml["ratings"], ml["movies"], tmp_path / "p", opts, history="positive", positive_threshold=5
    )
    assert schema.options["history"] == "positive" and "users_without_profile" not in schema.counts
    items = vocab(tmp_path / "p", "item")
    a = load(tmp_path / "p", "train")
    written = {p.name for p in (tmp_path / "p").rglob("*")}
    assert schema.spec.names == ["user", "item", "cate", "hist_item", "hist_cate"]  # nothing asked, nothing written
    assert not any(n.startswith("user_") or n.startswith("item_cates") for n in written)
    user_ids = list(ml_events)
    g = a.group[0]
    ev = ml_events[user_ids[g]]
    rows = np.flatnonzero(a.group == g)
    assert a.label[rows].tolist() == [float(r == 5) for *_, r in ev]
    liked = [[items.get(m, 0) for _, _, m, r in ev[:k] if r == 5][-10:] for k in range(len(ev))]
    assert seqs(a, "hist_item")[rows[0] : rows[-1] + 1] == liked


def test_movielens_bad_input(ml, tmp_path: Path) -> None:
    good = ml["ratings"].read_text().splitlines(keepends=True)[:300]
    for bad_line, problem in [
        ("1::1193::5\n", r"expected 4 '::'-separated fields, got 3; this looks like movies.dat"),
        ("1::1193::five::978300760\n", "Rating 'five' is not a non-negative integer"),
        ("1::1193::7::978300760\n", "Rating 7 is outside 1..5"),
        ("1\t1193\t5\t978300760\n", "'::'-separated"),
    ]:
        path = tmp_path / "ratings_bad.dat"
        path.write_text("".join(good[:9]) + bad_line + "".join(good[9:]))
        with pytest.raises(DataFormatError, match=rf"ratings_bad.dat, line 10: .*{problem}"):
            prepare_movielens(path, ml["movies"], tmp_path / "o", PrepareOptions())
    schema = prepare_movielens(
        path, ml["movies"], tmp_path / "o", PrepareOptions(test_fraction=0.3, skip_bad_rows=True)
    )
    assert schema.counts["skipped_rows"] == {str(path): 1} and schema.counts["events"] == 300
    assert "skipped malformed rows" in format_summary(schema)

    swapped = (
        r"line 1: expected {} '::'-separated fields, got {}; this looks like {} \(.*\): are the files swapped"
    )
    with pytest.raises(DataFormatError, match="movies.dat, " + swapped.format(4, 3, "movies.dat")):
        prepare_movielens(ml["movies"], ml["ratings"], tmp_path / "o", PrepareOptions())
    with pytest.raises(DataFormatError, match="ratings.dat, " + swapped.format(3, 4, "ratings.dat")):
        prepare_movielens(ml["ratings"], ml["ratings"], tmp_path / "o", PrepareOptions())
    movies = tmp_path / "movies.dat"
    real = ml["movies"].read_bytes().splitlines(keepends=True)
    movies.write_bytes(b"".join(real[:4] + [b"5::Father of the Bride Part II (1995)::Comedy||\n"] + real[5:]))
    with pytest.raises(DataFormatError, match=r"movies.dat, line 5: Genres 'Comedy\|\|' has an empty genre"):
        prepare_movielens(ml["ratings"], movies, tmp_path / "o", PrepareOptions())
    users = tmp_path / "users.dat"
    users.write_text("1::F::1::10::48067\n2::X::56::16::70072\n")  # users 3.. have no profile
    with pytest.raises(DataFormatError, match=r"users.dat, line 2: Gender must be M or F, got 'X'"):
        prepare_movielens(ml["ratings"], ml["movies"], tmp_path / "o", PrepareOptions(), users=users)
    schema = prepare_movielens(
        ml["ratings"], ml["movies"], tmp_path / "o", PrepareOptions(skip_bad_rows=True), users=users
    )
    assert schema.counts["users_without_profile"] == N_ML_USERS - 1
    assert schema.counts["skipped_rows"] == {str(users): 1}
    with pytest.raises(ValueError, match="history must be"):
        prepare_movielens(ml["ratings"], ml["movies"], tmp_path / "o", PrepareOptions(), history="liked")


def test_movielens_optional_fields_reach_batches_and_models_ignore_them(ml_multi) -> None:
    out, schema = ml_multi
    cols = load(out, "train")
    loader = BatchLoader(cols, schema.spec, batch_size=16, shuffle=False)
    batch = next(iter(loader))
    assert batch["user_gender"].shape == (16,) and batch["user_gender"].dtype == torch.int64
    bags = batch["item_cates"]  # padded to the longest genre list of these 16 samples
    assert bags.shape == (16, max(map(len, seqs(cols, "item_cates")[:16]))) and bags.dtype == torch.int64
    assert bags[batch.mask("item_cates")].tolist() == sum(seqs(cols, "item_cates")[:16], [])
    assert set(batch.to("cpu").sparse) == set(batch.sparse) == set(schema.spec.names)
    for name in ("dnn", "can-dnn", "din"):  # models built for the core fields still run
        assert create_model(name, schema)(batch).logits.shape == (16,)


# -------------------------------------------------------------------------------------------- Taobao


@pytest.fixture(scope="session")
def taobao(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rows of the first N_TB_USERS users of the real UserBehavior subset (including the dirty
    1505117799 row of user 1000169) plus one junk timestamp 15, gzipped in tmp."""
    rows: list[str] = []
    users: set[str] = set()
    with gzip.open(
        shared_data / "taobao_userbehavior_subset" / "UserBehavior_complete_users.csv.gz", "rt"
    ) as f:
        for line in f:
            u = line.split(",", 1)[0]
            if u not in users and len(users) == N_TB_USERS:
                break
            users.add(u)
            rows.append(line)
    assert any(line.endswith(",1505117799\n") for line in rows)
    rows.insert(10, rows[10].rsplit(",", 1)[0] + ",15\n")
    path = tmp_path_factory.mktemp("taobao") / "UserBehavior.csv.gz"
    path.write_bytes(gzip.compress("".join(rows).encode(), mtime=0))
    return path


@pytest.fixture(scope="session")
def tb_events(taobao: Path) -> dict[str, list[tuple[int, int, str, str, str]]]:
    """user -> [(time, line, item, category, behavior)] inside the time window, time-sorted (ties: file order)."""
    out: dict[str, list[tuple[int, int, str, str, str]]] = {}
    for n, line in enumerate(gzip.decompress(taobao.read_bytes()).decode().splitlines()):
        u, i, c, b, t = line.split(",")
        if TAOBAO_WINDOW[0] <= int(t) < TAOBAO_WINDOW[1]:
            out.setdefault(u, []).append((int(t), n, i, c, b))
    return {u: sorted(v) for u, v in out.items()}


def outside_window(path: Path) -> list[int]:
    times = [int(line.rsplit(",", 1)[1]) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]
    return sorted(t for t in times if not TAOBAO_WINDOW[0] <= t < TAOBAO_WINDOW[1])


def test_taobao_mimn(taobao: Path, tb_events, tmp_path: Path) -> None:
    out = tmp_path / "mimn"
    schema = prepare_taobao(taobao, out, PrepareOptions(max_len=200, test_fraction=0.3))
    splits = check_invariants(out, schema)
    c = schema.counts
    window, dirty = c["outside_time_window"], outside_window(taobao)
    assert window["action"] == "dropped" and window["rows"] == len(dirty) >= 2
    assert window["range"] == [dirty[0], dirty[-1]] and dirty[:2] == [15, 1505117799]
    assert c["users"] == len(tb_events) == N_TB_USERS and c["events"] == sum(map(len, tb_events.values()))
    assert schema.splits == {"train": int(0.7 * N_TB_USERS), "test": N_TB_USERS - int(0.7 * N_TB_USERS)}
    user_ids = list(tb_events)  # dict order = first appearance = user code
    items, cates = vocab(out, "item"), vocab(out, "cate")
    last_time = {s: [tb_events[user_ids[g]][-1][0] for g in a.group] for s, a in splits.items()}
    assert max(last_time["train"]) <= min(last_time["test"])  # split by last-touch time
    assert last_time["train"] == sorted(last_time["train"]) and c["split_time"] == min(last_time["test"])
    n_neg = 0
    for a in splits.values():
        assert len(set(a.group.tolist())) == a.n  # one sample per user
        hist = seqs(a, "hist_item")
        for row, g in enumerate(a.group):
            ev = tb_events[user_ids[g]]
            last_item = items.get(ev[-1][2], 0)
            if a.label[row] == 1:
                assert a.ids["item"][row] == last_item and a.ids["cate"][row] == cates.get(ev[-1][3], 0)
            else:
                n_neg += 1
                assert a.ids["item"][row] != last_item or last_item == 0
            # every earlier behaviour of any type, no target appended
            assert hist[row] == [items.get(i, 0) for _, _, i, _, _ in ev[:-1][-200:]]
    assert 0.35 < n_neg / N_TB_USERS < 0.65
    assert schema.options["target_in_history"] is False and "split time" in format_summary(schema)

    # MIMN's quirk on request: the target is the last history position; --no-time-window keeps dirty rows
    schema = prepare_taobao(
        taobao,
        tmp_path / "q",
        PrepareOptions(max_len=50, test_fraction=0.3),
        target_in_history=True,
        time_window=False,
    )
    a = load(tmp_path / "q", "train")
    assert [h[-1] for h in seqs(a, "hist_item")] == a.ids["item"].tolist()
    assert a.lengths("hist").max() == 50 and schema.counts["events"] == c["events"] + len(dirty)
    assert schema.counts["outside_time_window"]["action"] == "kept"


def test_taobao_mimn_truncate(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "taobao_userbehavior_subset" / "UserBehavior_complete_users.csv.gz"
    schema = prepare_taobao(
        src, tmp_path / "t", PrepareOptions(max_len=200, test_fraction=0.3), truncate=True
    )
    assert schema.splits == {"train": 512, "test": 256}  # 927 users -> 648 / 279 -> multiples of 256
    assert schema.counts["truncated_users"] == {"train": 136, "test": 23}


def test_taobao_all(taobao: Path, tb_events, tmp_path: Path) -> None:
    out = tmp_path / "all"
    schema = prepare_taobao(taobao, out, PrepareOptions(max_len=15, test_fraction=0.2), protocol="all")
    splits = check_invariants(out, schema)
    # every pv with at least one earlier behaviour -> a positive and a sampled negative
    targets = {u: [k for k, e in enumerate(ev) if e[4] == "pv" and k >= 1] for u, ev in tb_events.items()}
    assert sum(schema.splits.values()) == 2 * sum(map(len, targets.values()))
    assert schema.counts["behaviors"]["pv"] == sum(e[4] == "pv" for ev in tb_events.values() for e in ev)
    items, user_ids = vocab(out, "item"), list(tb_events)
    a = splits["train"]
    assert a.label.tolist() == [0.0, 1.0] * (a.n // 2)
    hist = seqs(a, "hist_item")
    for g in np.unique(a.group)[:20]:
        ev = tb_events[user_ids[g]]
        rows = np.flatnonzero((a.group == g) & (a.label == 1))
        assert a.ids["item"][rows].tolist() == [items.get(ev[k][2], 0) for k in targets[user_ids[g]]]
        assert [hist[r] for r in rows] == [
            [items.get(e[2], 0) for e in ev[:k][-15:]] for k in targets[user_ids[g]]
        ]

    schema = prepare_taobao(taobao, tmp_path / "pv", PrepareOptions(max_len=30), protocol="all", history="pv")
    a = load(tmp_path / "pv", "train")
    g = a.group[1]
    ev = tb_events[user_ids[g]]
    rows = np.flatnonzero((a.group == g) & (a.label == 1))
    pv_targets = [k for k, e in enumerate(ev) if e[4] == "pv" and any(x[4] == "pv" for x in ev[:k])]
    items, hist = vocab(tmp_path / "pv", "item"), seqs(a, "hist_item")
    assert a.ids["item"][rows].tolist() == [items.get(ev[k][2], 0) for k in pv_targets]
    assert [hist[r] for r in rows] == [
        [items.get(e[2], 0) for e in ev[:k] if e[4] == "pv"][-30:] for k in pv_targets
    ]


def test_taobao_bad_rows(taobao: Path, tmp_path: Path) -> None:
    good = gzip.decompress(taobao.read_bytes()).decode().splitlines(keepends=True)[:500]
    for bad_line, line_no, problem in [
        ("1,2268318,2520377,pv\n", 8, "expected 5 comma-separated fields"),
        ("1,2268318,2520377,click,1511544070\n", 8, "behavior 'click' is not one of pv, buy, cart, fav"),
        ("1,2268318,2520377,pv,2017-11-25\n", 8, "timestamp '2017-11-25' is not a non-negative integer"),
        ("user_id,item_id,category_id,behavior_type,timestamp\n", 1, "a header line"),
    ]:
        path = tmp_path / "ub_bad.csv"
        at = line_no - 1
        path.write_text("".join(good[:at]) + bad_line + "".join(good[at:]))
        with pytest.raises(DataFormatError, match=rf"ub_bad.csv, line {line_no}: .*{problem}"):
            prepare_taobao(path, tmp_path / "o", PrepareOptions())
    schema = prepare_taobao(path, tmp_path / "o", PrepareOptions(skip_bad_rows=True))
    assert schema.counts["skipped_rows"] == {str(path): 1}
    old = tmp_path / "ub_old.csv"
    old.write_text("1,2,3,pv,1505117799\n1,3,3,pv,15\n")
    with pytest.raises(DataFormatError, match=r"ub_old.csv: no rows inside the time window .* \(2 outside\)"):
        prepare_taobao(old, tmp_path / "o", PrepareOptions())


# ----------------------------------------------------------------------------------------- synthetic

SMALL_WORLD = WorldConfig(users=600, items=60, cates=6, seed=5)


def test_synthetic_deterministic_and_bayes_consistent(tmp_path: Path) -> None:
    opts = PrepareOptions(max_len=SMALL_WORLD.hist_max, test_fraction=0.2, seed=1)
    schema = prepare_synthetic(tmp_path / "a", SMALL_WORLD, opts)
    prepare_synthetic(tmp_path / "b", SMALL_WORLD, opts)
    assert files_bytes(tmp_path / "a") == files_bytes(tmp_path / "b")
    prepare_synthetic(tmp_path / "c", WorldConfig(users=600, items=60, cates=6, seed=6), opts)
    assert (
        files_bytes(tmp_path / "c")["test/extra.true_prob.npy"]
        != files_bytes(tmp_path / "a")["test/extra.true_prob.npy"]
    )
    splits = check_invariants(tmp_path / "a", schema)
    test = splits["test"]
    c = schema.counts
    assert 0.5 < c["bayes_auc"] == pytest.approx(auc(test.label, test.extras["true_prob"]), abs=1e-6)
    assert (
        c["users"] == 600
        and schema.splits["train"] + schema.splits["test"] == 600 * SMALL_WORLD.targets_per_user
    )

    # true_prob is the world's sigmoid(logit) of exactly the stored (target, history): decode and recompute
    world, _ = generate(SMALL_WORLD)
    names = {i: int(raw[1:]) for raw, i in vocab(tmp_path / "a", "item").items() if raw != "<pad/unk>"}
    for a in splits.values():
        assert (a.ids["item"] > 0).all() and (a.values["hist_item"] > 0).all()
        target = np.array([names[i] for i in a.ids["item"]])
        hist = np.array([names[i] for i in a.values["hist_item"]], dtype=np.int64)
        prob = 1 / (1 + np.exp(-world.logit(target, hist, a.lengths("hist").astype(np.int64))))
        np.testing.assert_allclose(a.extras["true_prob"], prob, rtol=1e-5)
    # a schema.json of the padded format (version 1) is refused with what to do
    old = json.loads((tmp_path / "a" / "schema.json").read_text()) | {"format_version": 1}
    with pytest.raises(SchemaError, match="format_version 1 is not supported .*re-run `canctr prepare`"):
        Schema.from_dict(old)
    # the loader never hands true_prob to a model
    batch = next(iter(BatchLoader(test, schema.spec, batch_size=8, shuffle=False)))
    assert "true_prob" not in batch.sparse and batch.dense is None
    with pytest.raises(ValueError, match="max_len 5 < hist_max"):
        prepare_synthetic(tmp_path / "d", SMALL_WORLD, PrepareOptions(max_len=5))


def test_can_dnn_is_closer_to_bayes_than_dnn(tmp_path: Path) -> None:
    """The synthetic world's point: co-action features capture what sum-pooling cannot. Seeded and CPU-
    deterministic; across world seeds 0-3 this config gives CAN-DNN a 0.040-0.096 AUC lead over DNN
    (gaps to Bayes ~0.09 vs ~0.15), so the 0.02 margin below is far from noise (test AUC std ~0.006)."""
    lines: list[str] = []
    world = WorldConfig(users=3000, items=100, cates=10, seed=0)
    rows = run_demo(
        tmp_path,
        models=("dnn", "can-dnn", "no-such-model"),
        world=world,
        epochs=3,
        seed=0,
        device="cpu",
        echo=lines.append,
    )
    gap = {r["model"]: r["bayes_gap"] for r in rows}
    assert gap["bayes (true_prob)"] == 0.0
    assert 0 < gap["can-dnn"] < gap["dnn"] - 0.02
    text = "\n".join(lines)
    assert "not registered, skipped: no-such-model" in text and "| can-dnn | 0." in text
    assert (tmp_path / "runs" / "can-dnn" / "metrics.json").exists()


def test_cli_prepare_new_formats_and_demo(
    ml, taobao: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert (
        run_cli(
            [
                "prepare",
                "movielens",
                "--ratings",
                str(ml["ratings"]),
                "--movies",
                str(ml["movies"]),
                "--out",
                str(tmp_path / "m"),
                "--history",
                "positive",
                "--test-fraction",
                "0.2",
            ]
        )
        == 0
    )
    schema = Schema.load(tmp_path / "m")
    assert schema.max_len("hist") == 50 and schema.options["max_len"] == 50  # MovieLens' own default width
    assert run_cli(["prepare", "taobao", "--behaviors", str(taobao), "--out", str(tmp_path / "t")]) == 0
    printed = capsys.readouterr().out
    assert "protocol=mimn" in printed and f"{len(outside_window(taobao))} dropped" in printed
    assert load(tmp_path / "t", "test").n == N_TB_USERS - int(0.7 * N_TB_USERS)  # 30 % test
    assert (
        run_cli(
            [
                "prepare",
                "synthetic",
                "--users",
                "300",
                "--items",
                "40",
                "--seed",
                "2",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    assert "bayes auc" in capsys.readouterr().out
    assert (
        run_cli(
            ["prepare", "taobao", "--behaviors", str(tmp_path / "none.csv"), "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert main(["demo", "--users", "300", "--items", "40", "--models", "dnn", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "| bayes (true_prob) |" in out and "| dnn |" in out


def test_exclude_test_pairs_drops_exactly_the_test_combinations():
    """The generalisation protocol: a train history position goes iff its (target, history item) pair occurs
    in the test set; everything else, and every sample, stays."""
    from canctr.data.encode import exclude_test_pairs
    from canctr.data.samples import RawSplit

    rng = np.random.default_rng(0)

    def split(n: int) -> RawSplit:
        hist_len = rng.integers(0, 6, n)
        h = rng.integers(0, 12, int(hist_len.sum()))
        item = rng.integers(0, 12, n)
        return RawSplit(label=rng.integers(0, 2, n).astype(np.int8), group=np.arange(n), user=np.arange(n),
                        item=item, cate=item % 3, hist_len=hist_len, hist_item=h, hist_cate=h % 3)

    train, test = split(200), split(40)
    starts = np.cumsum(test.hist_len) - test.hist_len
    test_pairs = {(int(test.item[i]), int(test.hist_item[starts[i] + k]))
                  for i in range(test.label.size) for k in range(int(test.hist_len[i]))}
    out, removed = exclude_test_pairs(train, test, 12)
    want_hist, want_len, dropped = [], [], 0
    s = 0
    for i in range(train.label.size):
        kept = []
        for k in range(int(train.hist_len[i])):
            h = int(train.hist_item[s + k])
            if (int(train.item[i]), h) in test_pairs:
                dropped += 1
            else:
                kept.append(h)
        s += int(train.hist_len[i])
        want_hist += kept
        want_len.append(len(kept))
    assert removed == dropped > 0
    assert out.hist_item.tolist() == want_hist and out.hist_len.tolist() == want_len
    assert np.array_equal(out.hist_cate, out.hist_item % 3) and np.array_equal(out.label, train.label)
