"""Trainer, metrics, loader and checkpoint behaviour on a tiny synthetic prepared dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from synth import make_prepared

from canctr.cli import main
from canctr.data.batch import BatchLoader, load_split
from canctr.models.base import negative_groups
from canctr.train import loop
from canctr.train.checkpoint import load_model
from canctr.train.loop import TrainConfig, TrainingDiverged, evaluate_run, fit
from canctr.train.metrics import auc, gauc, logloss


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return make_prepared(tmp_path_factory.mktemp("synth"))


def _brute_auc(y, s):
    p, n = s[y == 1][:, None], s[y == 0][None, :]
    return ((p > n) + 0.5 * (p == n)).mean()


def test_auc_and_gauc_match_brute_force():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    s = np.round(rng.random(400), 1)  # many ties
    g = rng.integers(0, 30, 400)
    assert auc(y, s) == pytest.approx(_brute_auc(y, s), abs=1e-12)
    num = den = 0.0
    for k in np.unique(g):
        m = g == k
        if 0 < y[m].sum() < m.sum():
            num += _brute_auc(y[m], s[m]) * m.sum()
            den += m.sum()
    value, users = gauc(y, s, g)
    assert value == pytest.approx(num / den, abs=1e-12)
    assert users == sum(0 < y[g == k].sum() < (g == k).sum() for k in np.unique(g))
    assert np.isnan(auc(np.ones(5), np.arange(5)))
    assert logloss(np.array([1, 0]), np.array([0.5, 0.5])) == pytest.approx(np.log(2))


def _cols(data_dir, split="train"):
    from canctr.data.schema import Schema

    spec = Schema.load(data_dir).spec
    return load_split(data_dir, split, spec), spec


def test_loader_order_is_function_of_seed_epoch_and_shards_cover(data_dir):
    cols, spec = _cols(data_dir)
    a = BatchLoader(cols, spec, batch_size=64, shuffle=True, seed=7)
    b = BatchLoader(cols, spec, batch_size=64, shuffle=True, seed=7)
    assert torch.equal(a.order(3), b.order(3))
    assert not torch.equal(a.order(0), a.order(1))
    shards = [BatchLoader(cols, spec, batch_size=64, shuffle=True, seed=7, rank=r, world_size=2).order(0)
              for r in (0, 1)]
    both = torch.cat(shards)
    assert len(set(both.tolist())) == len(both) == a.n  # disjoint, and 512 divides evenly


def test_length_bucketing_is_a_permutation_of_similar_length_batches(data_dir):
    cols, spec = _cols(data_dir)
    plain = BatchLoader(cols, spec, batch_size=16, shuffle=True, seed=5)
    bucketed = BatchLoader(cols, spec, batch_size=16, shuffle=True, seed=5, bucket=8)
    order = bucketed.order(2)
    assert sorted(order.tolist()) == list(range(bucketed.n))
    assert torch.equal(order, bucketed.order(2))  # still a function of (seed, epoch)
    lens = torch.from_numpy(cols.lengths("hist")).long()

    def mean_spread(loader):  # mean (max - min) history length inside a batch
        return sum(float(lens[b].max() - lens[b].min()) for b in loader.order(2).split(16)) / len(loader)

    assert mean_spread(bucketed) < 0.5 * mean_spread(plain)
    widths = [b["hist_item"].shape[1] for b in bucketed.iter_epoch(2)]
    assert sum(widths) < sum(b["hist_item"].shape[1] for b in plain.iter_epoch(2))


def test_loader_trims_width_and_keeps_most_recent(data_dir):
    cols, spec = _cols(data_dir)
    loader = BatchLoader(cols, spec, batch_size=32, shuffle=False, max_len=4)
    batch = next(iter(loader))
    n = 32
    full_len = cols.lengths("hist")[:n]
    hist = batch["hist_item"]
    assert hist.shape[1] == min(4, int(full_len.max()))
    for i in range(n):
        k = min(int(full_len[i]), 4)
        end = int(cols.offsets["hist"][i + 1])
        want = cols.values["hist_item"][end - k : end]
        assert hist[i, :k].tolist() == want.tolist()
        assert int(batch.lengths["hist"][i]) == k
        assert (hist[i, k:] == 0).all()


def _cfg(data_dir, out, **kw):
    base = dict(data=str(data_dir), model="dnn", out=str(out), batch_size=64, progress=False, log_every=2)
    base.update(kw)
    return TrainConfig(**base)


def test_fit_writes_metrics_and_evaluate_reproduces(data_dir, tmp_path):
    m = fit(_cfg(data_dir, tmp_path / "run", epochs=2))
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("auc", "gauc", "logloss", "n_params", "train_seconds", "train_samples_per_second", "model",
                "seed", "dataset"):
        assert key in saved
    assert saved["train_samples"] == 2 * 512
    logged = [c for c in saved["curves"] if "loss" in c]
    assert logged and all(c["ctr_loss"] == pytest.approx(c["loss"]) for c in logged)  # dnn: no auxiliary term
    again = evaluate_run(tmp_path / "run", device="cpu")
    assert again["auc"] == pytest.approx(m["auc"], abs=1e-9)
    assert again["logloss"] == pytest.approx(m["logloss"], abs=1e-9)
    assert (tmp_path / "run" / "train.log").read_text().count("final: auc") == 1


def test_eval_at_samples_adds_learning_curve_points_without_changing_training(data_dir, tmp_path):
    """512 samples an epoch, batch 64: 100, 300 and 700 samples are first reached after 128, 320 and 704 (the
    third step of epoch 2); 5,000 never is. The evaluations leave the trained weights as they were."""
    plain = fit(_cfg(data_dir, tmp_path / "plain", model="din", epochs=2))
    m = fit(_cfg(data_dir, tmp_path / "curve", model="din", epochs=2, eval_at_samples=(700, 100, 300, 5000)))
    points = [(c["samples"], c["epoch"], c["step"]) for c in m["curves"] if "eval_auc" in c]
    assert points == [(128, 0, 2), (320, 0, 5), (512, 0, 8), (704, 1, 3), (1024, 1, 8)]
    assert all({"eval_gauc", "eval_logloss"} <= c.keys() for c in m["curves"] if "eval_auc" in c)
    assert (m["auc"], m["logloss"]) == (plain["auc"], plain["logloss"])
    with pytest.raises(ValueError, match="eval_at_samples"):
        _cfg(data_dir, tmp_path / "bad", eval_at_samples=(0, 100))


def test_training_is_deterministic_on_cpu(data_dir, tmp_path):
    a = fit(_cfg(data_dir, tmp_path / "a", model="can-dnn"))
    b = fit(_cfg(data_dir, tmp_path / "b", model="can-dnn"))
    assert a["auc"] == b["auc"] and a["logloss"] == b["logloss"]
    ma, _ = load_model(tmp_path / "a" / "checkpoint")
    mb, _ = load_model(tmp_path / "b" / "checkpoint")
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("optimizer", ["adam", "lazy_adam"])
def test_interrupted_run_resumes_exactly(data_dir, tmp_path, monkeypatch, optimizer):
    ref = fit(_cfg(data_dir, tmp_path / "ref", epochs=2, model="can-dnn", optimizer=optimizer))
    real_step, calls = loop.train_step, {"n": 0}

    def flaky_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 11:  # die mid-epoch 1 (8 batches per epoch), after the step-2 checkpoint
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(data_dir, tmp_path / "cut", epochs=2, checkpoint_every=2, model="can-dnn", optimizer=optimizer))
    state = json.loads((tmp_path / "cut" / "checkpoint" / "train_state.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 2)
    monkeypatch.setattr(loop, "train_step", real_step)
    resumed = fit(_cfg(data_dir, tmp_path / "cut", epochs=2, checkpoint_every=2, model="can-dnn", optimizer=optimizer),
                  resume=True)
    assert resumed["auc"] == ref["auc"]
    assert resumed["train_samples"] == ref["train_samples"]
    m_ref, _ = load_model(tmp_path / "ref" / "checkpoint")
    m_cut, _ = load_model(tmp_path / "cut" / "checkpoint")
    for (k, va), vb in zip(m_ref.state_dict().items(), m_cut.state_dict().values()):
        assert torch.equal(va, vb), k


def test_nan_loss_stops_with_clear_error(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "ctr_loss", lambda logits, labels: (logits * float("nan")).mean())
    with pytest.raises(TrainingDiverged, match="step 2"):
        fit(_cfg(data_dir, tmp_path / "nan"))


def test_cli_train_evaluate_models(data_dir, tmp_path, capsys):
    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    for name in ("dnn", "can-dnn", "cartesian", "din", "dien", "can-dien"):
        assert name in listed
    run = tmp_path / "cli-run"
    assert main(["train", "--data", str(data_dir), "--model", "din", "--out", str(run), "--batch-size", "64",
                 "--no-progress", "--set", "mlp=[32,16]"]) == 0
    assert json.loads((run / "checkpoint" / "model.json").read_text())["config"]["mlp"] == [32, 16]
    assert main(["evaluate", "--run", str(run), "--device", "cpu"]) == 0
    out = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert out["auc"] == pytest.approx(json.loads((run / "metrics.json").read_text())["auc"], abs=1e-9)


def test_cli_rejects_unknown_model_and_config_key(data_dir, tmp_path, capsys):
    assert main(["train", "--data", str(data_dir), "--model", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["train", "--data", str(data_dir), "--model", "dnn", "--out", str(tmp_path / "y"),
                 "--set", "embed_dimm=4"]) == 2
    assert "unknown key" in capsys.readouterr().err


@pytest.mark.parametrize("name", [e.name for e in __import__("canctr.models", fromlist=["list_models"]).list_models()])
def test_checkpoint_round_trip_gives_identical_predictions(name, data_dir, tmp_path):
    from canctr.data.schema import Schema
    from canctr.models import create_model, make_config
    from canctr.train.checkpoint import save_checkpoint
    from canctr.train.loop import predict

    schema = Schema.load(data_dir)
    torch.manual_seed(0)
    cfg = make_config(name)
    model = create_model(name, schema, make_config(name, {"mlp": [16, 8]}) if hasattr(cfg, "mlp") else cfg)
    loader = BatchLoader(*_cols(data_dir), batch_size=64, shuffle=True, seed=1, negatives=negative_groups(model))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for batch in list(loader.iter_epoch(0))[:3]:  # move weights and Dice/BN running stats off their init
        loop.train_step(model, batch, opt)
    save_checkpoint(tmp_path / "ckpt", model, schema)
    loaded, loaded_schema = load_model(tmp_path / "ckpt")
    assert loaded_schema == schema and loaded.config == model.config
    test = BatchLoader(*_cols(data_dir, "test"), batch_size=100, shuffle=False)
    a, b = predict(model, test)["prob"], predict(loaded, test)["prob"]
    assert np.array_equal(a, b)
