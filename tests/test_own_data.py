"""The README's "Your own data" example end to end on a small generated click log: examples/make_clicks.py
writes it as Parquet and as CSV, `canctr prepare table` encodes both under examples/specs/clicks.toml,
`canctr train --model can-dien` learns from it and `canctr evaluate` re-scores the run. The model must
really use the spec's extra columns (shop, hour, the dense price and age): they are in its MLP input and
the loss has a gradient through them."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import torch
from torch import nn

from canctr.cli import main
from canctr.data.batch import BatchLoader, load_split
from canctr.data.schema import Schema
from canctr.data.spec import FeatureSpec
from canctr.models.base import negative_groups
from canctr.train.checkpoint import load_model
from canctr.train.loop import ctr_loss

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "specs" / "clicks.toml"
ROWS = 4000


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_clicks", ROOT / "examples" / "make_clicks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_clicks = _load_generator()


def cli(*argv: str) -> str:
    """Run `canctr ARGV` in process; return what it printed (a failure shows its stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    assert rc == 0, err.getvalue()
    return out.getvalue()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny batches gain nothing from a second intra-op thread, and on a shared machine two threads can
    slow every op a hundredfold; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"parquet": DIR, "csv": DIR}: the same generated log prepared from each format."""
    tmp = tmp_path_factory.mktemp("clicks")
    table = make_clicks.make_clicks(ROWS, seed=0)
    out = {}
    for fmt in ("parquet", "csv"):
        path = make_clicks.write(table, tmp / f"clicks.{fmt}")
        text = cli("prepare", "table", "--spec", str(SPEC), "--input", str(path), "--out", str(tmp / fmt))
        assert f"rows read {ROWS:,}: train" in text
        out[fmt] = tmp / fmt
    return out


@pytest.fixture(scope="module")
def run(prepared: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, one_thread) -> Path:
    run = tmp_path_factory.mktemp("runs") / "clicks-can-dien"
    text = cli("train", "--data", str(prepared["parquet"]), "--model", "can-dien", "--out", str(run),
               "--epochs", "2", "--batch-size", "64", "--device", "cpu", "--no-progress")
    assert text.startswith("can-dien seed 3: auc ")
    return run


def test_generator_is_deterministic_and_matches_the_spec(tmp_path: Path) -> None:
    a, b = make_clicks.make_clicks(500, seed=1), make_clicks.make_clicks(500, seed=1)
    assert a.equals(b) and not a.equals(make_clicks.make_clicks(500, seed=2))
    assert a.column_names == ["user_id", "item_id", "category", "shop_id", "hour", "price", "age", "clicked_items",
                              "clicked_categories", "clicked", "ts"]
    spec = FeatureSpec.load(SPEC)
    assert set(a.column_names) == {f.column for f in spec.fields} | {spec.label, spec.group, spec.time}
    lens_items = a.column("clicked_items").combine_chunks().value_lengths()
    lens_cates = a.column("clicked_categories").combine_chunks().value_lengths()
    assert lens_items.equals(lens_cates)  # aligned, as the spec's group "hist" requires
    assert set(a.column("hour").to_pylist()) <= set(range(24))
    # the script's CSV: the same columns, each list joined by "|"
    assert make_clicks.main(["--rows", "500", "--seed", "1", "--out", str(tmp_path / "x.csv")]) == 0
    csv = pcsv.read_csv(tmp_path / "x.csv", convert_options=pcsv.ConvertOptions(
        column_types={"clicked_items": pa.string(), "clicked_categories": pa.string()}))
    assert csv.column_names == a.column_names and csv.num_rows == 500
    for name in ("clicked_items", "clicked_categories"):
        joined = ["|".join(map(str, xs)) for xs in a.column(name).to_pylist()]
        assert [x or "" for x in csv.column(name).to_pylist()] == joined


def test_parquet_and_csv_prepare_identically(prepared: dict[str, Path]) -> None:
    pq_dir, csv_dir = prepared["parquet"], prepared["csv"]
    names = sorted(p.relative_to(pq_dir) for p in pq_dir.rglob("*.npy"))
    assert names == sorted(p.relative_to(csv_dir) for p in csv_dir.rglob("*.npy"))
    assert {str(n) for n in names} >= {"train/dense.npy", "train/shop.npy", "train/hour.npy", "test/hist.offsets.npy",
                                       "vocab/pairs/item.hist_item.npy"}
    for name in names:
        a, b = np.load(pq_dir / name), np.load(csv_dir / name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    for path in sorted((pq_dir / "vocab").glob("*.json")):
        assert path.read_text() == (csv_dir / "vocab" / path.name).read_text(), path.name
    a, b = Schema.load(pq_dir), Schema.load(csv_dir)
    assert (a.vocab, a.splits, a.pairs, a.dense, a.spec) == (b.vocab, b.splits, b.pairs, b.dense, b.spec)
    assert a.vocab["hour"] == 25 and a.vocab["shop"] == 100_001  # 24 hours; 100000 hash buckets (+ index 0)
    assert a.counts["nulls"]["train"] == b.counts["nulls"]["train"]


def test_can_dien_learns_and_evaluate_reproduces(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    bayes = make_clicks.bayes_auc(ROWS, seed=0)
    assert metrics["auc"] > 0.6, metrics["auc"]  # well above chance; the true probabilities reach `bayes`
    assert metrics["auc"] < bayes + 0.05
    evaluated = json.loads(cli("evaluate", "--run", str(run), "--device", "cpu"))
    assert evaluated["auc"] == pytest.approx(metrics["auc"], abs=1e-9)
    assert evaluated["gauc"] == pytest.approx(metrics["gauc"], abs=1e-9)


def test_model_uses_the_extra_columns(run: Path, prepared: dict[str, Path]) -> None:
    model, schema = load_model(run / "checkpoint", "cpu")
    spec, cfg = schema.spec, model.config
    E = cfg.embed_dim
    query, keys = spec.attention.query, spec.attention.keys
    others = [f.name for f in spec.categorical if f.name not in query]
    assert others == ["user", "shop", "hour"] and [f.name for f in spec.dense] == ["price", "age"]
    co = cfg.coaction
    unit = co.orders * sum(out for _, out in co.layers)  # orders and layer outputs concatenated: 3 x (8 + 4)
    width = (len(others) * E  # user, shop, hour
             + len(query) * E  # the target item || cate
             + len(keys) * E  # the history's masked sum
             + len(spec.dense)  # price, age
             + len(keys) * E + cfg.hidden_dim  # DIEN's own: target * history sum, the AUGRU's final state
             + len(spec.coaction) * unit)  # CAN: item -> hist_item, cate -> hist_cate
    assert width == 272
    first = next(m for m in model.mlp.net if isinstance(m, nn.Linear))
    assert first.in_features == width

    loader = BatchLoader(load_split(prepared["parquet"], "train", spec), spec, batch_size=256, shuffle=True,
                         seed=0, negatives=negative_groups(model))
    batch = next(loader.iter_epoch(0))
    dense = batch.dense.clone().requires_grad_(True)
    seen = []
    handle = model.mlp.register_forward_hook(lambda module, args, output: seen.append(args[0].shape[-1]))
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(batch.replace(dense=dense))
    handle.remove()
    assert seen == [width]
    loss = ctr_loss(out.logits, batch.label) + sum(out.aux_losses.values())
    loss.backward()
    assert (dense.grad.abs().sum(0) > 0).all()  # both price and age reach the loss
    for table in ("hour", "shop"):
        grad = model.embed.tables[table].weight.grad
        assert grad is not None and grad.abs().sum() > 0, table
        rows = torch.unique(batch[table])
        assert (grad[rows].abs().sum(1) > 0).all()  # every hour / shop bucket of the batch gets a gradient
