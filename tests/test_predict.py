"""Batch scoring (`canctr predict`, canctr.serve.predict) on the README's generated click log
(examples/make_clicks.py, examples/specs/clicks.toml: vocabularies, a hashed field, dense fields with
missing values, a list column): raw rows scored through the run's vocabularies must equal the model on the
same rows as prepare encoded them; the output keeps the input's order and key columns; CSV and Parquet
inputs score alike; unknown ids are counted; bad inputs fail with one line naming the file and column."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from canctr.cli import main
from canctr.data.batch import BatchLoader, load_split
from canctr.data.spec import FeatureSpec, Split
from canctr.serve.predict import map_record_batch, predict
from canctr.serve.vocab import RawIdMapper
from canctr.train.checkpoint import load_model

ROOT = Path(__file__).resolve().parents[1]
ROWS = 3000


def _load(name: str):  # noqa: ANN202
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_clicks = _load("make_clicks")


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The click log with a seeded 20% `is_test` column, prepared split by that column (so the test split is
    exactly the marked rows, in input order), a short can-dnn run on it, and the raw test rows."""
    tmp = tmp_path_factory.mktemp("predict")
    table = make_clicks.make_clicks(ROWS, seed=0)
    is_test = np.random.default_rng(0).random(ROWS) < 0.2
    table = table.append_column("is_test", pa.array(is_test.astype(np.int8)))
    spec = FeatureSpec.load(ROOT / "examples" / "specs" / "clicks.toml")
    spec = dataclasses.replace(spec, split=Split(by="column", column="is_test"))
    (tmp / "spec.json").write_text(json.dumps(spec.to_dict()))
    pq.write_table(table, tmp / "clicks.parquet")
    rc, _, err = cli("prepare", "table", "--spec", str(tmp / "spec.json"), "--input", str(tmp / "clicks.parquet"),
                     "--out", str(tmp / "data"))
    assert rc == 0, err
    run = tmp / "run"
    rc, _, err = cli("train", "--data", str(tmp / "data"), "--model", "can-dnn", "--out", str(run), "--epochs", "1",
                     "--batch-size", "128", "--device", "cpu", "--no-progress")
    assert rc == 0, err
    test_rows = table.filter(pc.equal(table["is_test"], 1))
    pq.write_table(test_rows, tmp / "test.parquet")
    return {"tmp": tmp, "table": table, "test": test_rows, "data": tmp / "data", "run": run}


def expected_probs(world: dict) -> np.ndarray:
    """The model on the prepared test split, in stored order (= input order of the marked rows)."""
    model, schema = load_model(world["run"])
    model.eval()
    loader = BatchLoader(load_split(world["data"], "test", schema.spec), schema.spec, batch_size=500, shuffle=False)
    with torch.no_grad():
        return torch.cat([torch.sigmoid(model(b).logits) for b in loader]).numpy()


def scores(path: Path) -> np.ndarray:
    return pq.read_table(path)["score"].to_numpy()


@pytest.mark.parametrize("batch_size", [256, 4096])  # 4096: the batch is scored in sub-batches sorted by length
def test_raw_rows_score_as_prepared_rows(world: dict, tmp_path: Path, batch_size: int) -> None:
    out = tmp_path / "scores.parquet"
    s = predict(world["run"], [world["tmp"] / "test.parquet"], out, batch_size=batch_size)
    expected = expected_probs(world)
    assert s["rows"] == world["test"].num_rows == expected.size
    np.testing.assert_allclose(scores(out), expected, atol=1e-6, rtol=0)
    got = pq.read_table(out)
    assert got.column_names == ["user_id", "clicked", "score"]  # the spec's group and label columns
    assert got["user_id"].to_pylist() == world["test"]["user_id"].to_pylist()  # input order
    assert 0.0 < s["auc"] < 1.0 and s["unknown"].get("user", 0) > 0  # min_count 2 leaves some users unknown


def test_batch_size_csv_and_several_files_change_nothing(world: dict, tmp_path: Path) -> None:
    test = world["test"]
    half = test.num_rows // 2
    a, b = tmp_path / "a.parquet", tmp_path / "b.csv"
    pq.write_table(test.slice(0, half), a)
    make_clicks.write(test.slice(half).drop_columns(["is_test"]), b)  # lists as "1|2|3" text, as prepare reads
    one = tmp_path / "one.parquet"
    predict(world["run"], [world["tmp"] / "test.parquet"], one, batch_size=4096)
    two = tmp_path / "two.parquet"
    s = predict(world["run"], [a, b], two, batch_size=7)
    assert s["rows"] == test.num_rows and len(s["files"]) == 2
    np.testing.assert_allclose(scores(two), scores(one), atol=1e-6, rtol=0)


def test_unknown_ids_are_counted_and_scored_as_index_0(world: dict, tmp_path: Path) -> None:
    test = world["test"].slice(0, 50)
    items = test["item_id"].to_pylist()
    changed = test.set_column(test.schema.get_field_index("item_id"), "item_id",
                              pa.array(["never-seen"] * 10 + [str(x) for x in items[10:]]))
    pq.write_table(changed, tmp_path / "in.parquet")
    s = predict(world["run"], [tmp_path / "in.parquet"], tmp_path / "out.parquet")
    assert s["unknown"]["item"] == 10
    model, schema = load_model(world["run"])
    mapper = RawIdMapper.from_run(world["run"])
    batch = map_record_batch(mapper, changed.to_batches()[0],
                       {f.name: f.column for f in schema.spec.fields}, "|", Path("x"), 0)
    assert (batch["item"][:10] == 0).all() and (batch["item"][10:] > 0).all()
    with torch.no_grad():
        want = torch.sigmoid(model.eval()(batch).logits).numpy()
    np.testing.assert_allclose(scores(tmp_path / "out.parquet"), want, atol=1e-6, rtol=0)


def test_onnx_engine_matches_torch(world: dict, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="--engine onnx needs onnxruntime (pip install -e '.[serve]')")
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript (pip install -e '.[serve]')")
    rc, out, err = cli("predict", "--run", str(world["run"]), "--input", str(world["tmp"] / "test.parquet"),
                       "--out", str(tmp_path / "onnx.parquet"), "--engine", "onnx", "--no-progress")
    assert rc == 0, err
    assert "with the onnx engine" in out and "AUC against the input's labels" in out
    np.testing.assert_allclose(scores(tmp_path / "onnx.parquet"), expected_probs(world), atol=1e-5, rtol=0)


def test_bad_inputs_are_one_line_errors(world: dict, tmp_path: Path) -> None:
    test = world["test"].slice(0, 20)
    pq.write_table(test.drop_columns(["price"]), tmp_path / "no_price.parquet")
    bad_price = test.set_column(test.schema.get_field_index("price"), "price",
                                pa.array(["1.5"] * 5 + ["cheap"] + ["2"] * 14))
    pq.write_table(bad_price, tmp_path / "bad_price.parquet")
    run, out = str(world["run"]), str(tmp_path / "o.parquet")
    cases = [
        (["--input", str(tmp_path / "no_price.parquet")], "no_price.parquet: column(s) ['price'] not in the input"),
        (["--input", str(tmp_path / "bad_price.parquet")], "bad_price.parquet, row 6: column 'price': not a number"),
        (["--input", str(tmp_path / "missing.parquet")], "missing.parquet: input file not found"),
        (["--input", str(world["tmp"] / "test.parquet"), "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    ]
    for extra, message in cases:
        rc, _, err = cli("predict", "--run", run, "--out", out, "--no-progress", *extra)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert message in err and "Traceback" not in err, err
        assert not Path(out).exists()  # nothing half-written
    rc, _, err = cli("predict", "--run", str(tmp_path / "nope"), "--input", str(world["tmp"] / "test.parquet"),
                     "--out", out, "--no-progress")
    assert rc == 2 and "no such run directory" in err
