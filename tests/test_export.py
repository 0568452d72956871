"""Export (canctr.serve.export) and raw-id mapping (canctr.serve.vocab).

Parity: every registered model, untrained and small, exported to ONNX (run by onnxruntime) and TorchScript,
against the eager model on real test batches of Amazon Beauty (prepared once per session from
../shared/data; tests/synth.py data when it is absent): batches of other sizes and history widths than the
export example, rows with padding and empty histories, and junk ids at padded positions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from canctr.cli import main
from canctr.data.batch import BatchLoader, lengths_to_mask, load_split
from canctr.data.schema import Schema, save_vocab
from canctr.models import create_model, list_models, make_config
from canctr.serve.export import (
    ExportModule,
    export_onnx,
    export_torchscript,
    input_specs,
    run_exported,
    tensor_inputs,
)
from canctr.serve.vocab import RawIdMapper, make_batch, map_candidates, map_rows

MODELS = [e.name for e in list_models()]
TOL = 1e-5
SMALL = {"embed_dim": 4, "mlp": [8], "hidden_dim": 6, "cin_layers": [4], "operation_dim": 2}


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Amazon Beauty prepared with `canctr prepare sequences` (history up to 20), or synthetic data with
    vocabulary files when ../shared/data is absent."""
    out = tmp_path_factory.mktemp("export-data") / "beauty"
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon_beauty"
    if not shared.is_dir() and os.environ.get("CANCTR_SHARED_DATA"):
        shared = Path(os.environ["CANCTR_SHARED_DATA"]) / "amazon_beauty"
    if shared.is_dir():
        rc, _, err = cli("prepare", "sequences", "--sequences", str(shared / "Beauty.txt.gz"),
                         "--attributes", str(shared / "Beauty_item2attributes.json.gz"), "--out", str(out),
                         "--max-len", "20")
        assert rc == 0, err
        return out
    if os.environ.get("CI"):
        pytest.fail(f"real data not found at {shared}")
    from synth import make_prepared

    make_prepared(out, n_train=128, n_test=64)
    schema = Schema.load(out)
    for table, n in schema.vocab.items():  # synthetic raw ids: "<table>-<index>"
        save_vocab(out, table, ["<pad/unk>", *(f"{table}-{i}" for i in range(1, n))])
    return out


@pytest.fixture(scope="session")
def schema(data_dir: Path) -> Schema:
    return Schema.load(data_dir)


@pytest.fixture(scope="session")
def batches(data_dir: Path, schema: Schema) -> list:
    """Real test batches: 1 row, 17 rows and 64 rows (widths differ), plus a copy of the 17-row batch with
    random ids at every padded position and 3 extra padded columns (must score the same)."""
    cols = load_split(data_dir, "test", schema.spec)
    loader = BatchLoader(cols, schema.spec, batch_size=64, shuffle=False)
    order = torch.arange(cols.n)
    out = [loader.batch(order[:1]), loader.batch(order[100:117]), loader.batch(order[200:264])]
    b = out[1]
    g = torch.Generator().manual_seed(0)
    sparse, masks = dict(b.sparse), dict(b.masks)
    for grp, n in b.lengths.items():
        B, W = b.masks[grp].shape
        valid = lengths_to_mask(n, W + 3)
        masks[grp] = valid
        for f in schema.spec.group_fields(grp):
            wide = torch.cat([sparse[f.name], torch.zeros(B, 3, dtype=torch.long)], dim=1)
            junk = torch.randint(1, schema.vocab[f.table], (B, W + 3), generator=g)
            sparse[f.name] = torch.where(valid, wide, junk)
    out.append(b.replace(sparse=sparse, masks=masks))
    return out


def small_model(name: str, schema: Schema, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    fields = {f.name for f in dataclasses.fields(make_config(name))}
    config = make_config(name, {**{k: v for k, v in SMALL.items() if k in fields}, **overrides})
    return create_model(name, schema, config).eval()


def check_parity(name: str, fmt: str, schema: Schema, batches: list, tmp_path: Path, **overrides) -> float:
    model = small_model(name, schema, **overrides)
    module = ExportModule(model, schema.spec)
    path = tmp_path / ("model.onnx" if fmt == "onnx" else "model.pt")
    (export_onnx if fmt == "onnx" else export_torchscript)(module, schema, path)
    names = [s.name for s in input_specs(schema.spec, module.shared)]
    worst = 0.0
    widths = set()
    for b in batches:
        with torch.no_grad():
            logit = model(batches[1] if b is batches[-1] else b).logits  # the junk-padded copy: the clean batch's
        prob, got = run_exported(path, tensor_inputs(b, schema.spec, module.shared), names)
        assert got.shape == logit.shape and got.dtype == prob.dtype == torch.float32
        worst = max(worst, float((got - logit).abs().max()), float((prob - torch.sigmoid(logit)).abs().max()))
        widths.add(tuple(m.shape for m in b.masks.values()))
    assert len(widths) == len(batches)  # every batch has other shapes than the others
    assert worst <= TOL, f"{name} {fmt}: max abs diff {worst:.3g}"
    return worst


@pytest.mark.parametrize("name", MODELS)
def test_onnx_parity(name: str, schema: Schema, batches: list, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="ONNX parity needs onnxruntime (pip install -e '.[serve]')")
    pytest.importorskip("onnxscript", reason="the ONNX exporter needs onnxscript (pip install -e '.[serve]')")
    check_parity(name, "onnx", schema, batches, tmp_path)


@pytest.mark.parametrize("name", MODELS)
def test_torchscript_parity(name: str, schema: Schema, batches: list, tmp_path: Path) -> None:
    check_parity(name, "torchscript", schema, batches, tmp_path)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_dien_paper_form_exports(fmt: str, schema: Schema, batches: list, tmp_path: Path) -> None:
    """The AUGRU's other update form (DIEN's eq. 6) goes through the same scan / scripted loop."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="ONNX parity needs onnxruntime (pip install -e '.[serve]')")
    check_parity("dien", fmt, schema, batches, tmp_path, augru_form="paper")


def test_input_names_follow_the_spec(schema: Schema) -> None:
    specs = input_specs(schema.spec)
    sparse = [f.name for f in schema.spec.sparse]
    assert [s.name for s in specs[: len(sparse)]] == sparse
    assert [s.name for s in specs[len(sparse):]] == [f"lengths.{g.name}" for g in schema.spec.sequences]
    hist = next(s for s in specs if s.name == "hist_item")
    assert hist.shape == ("batch", "len_hist") and hist.dtype == "int64"
    # the user-shared form: the user's fields and history lengths per user, then each row's user
    shared = {s.name: s for s in input_specs(schema.spec, shared=True)}
    assert shared["hist_item"].shape == ("users", "len_hist") and shared["user"].shape == ("users",)
    assert shared["lengths.hist"].shape == ("users",) and shared["item"].shape == ("batch",)
    assert list(shared)[-1] == "row.user" and shared["row.user"].shape == ("batch",)


# -------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny end-to-end training run (can-dien: GRU, AUGRU and the co-action block)."""
    run = tmp_path_factory.mktemp("export-runs") / "can-dien"
    rc, _, err = cli("train", "--data", str(data_dir), "--model", "can-dien", "--out", str(run), "--device", "cpu",
                     "--no-progress", "--batch-size", "256", "--set", "embed_dim=4", "--set", "mlp=[8]",
                     "--set", "hidden_dim=4")
    assert rc == 0, err
    return run


def test_cli_export_onnx_then_score_raw_ids(run_dir: Path, data_dir: Path, schema: Schema, tmp_path: Path) -> None:
    """Export with the CLI, then score raw ids with onnxruntime using only the export directory, and compare
    with the eager checkpoint on the same rows."""
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install -e '.[serve]')")
    out = tmp_path / "onnx"
    rc, text, err = cli("export", "--run", str(run_dir), "--format", "onnx", "--out", str(out))
    assert rc == 0, err
    assert "can-dien -> " in text and "opset 18" in text
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "can-dien" and manifest["opset"] == 18 and manifest["format"] == "onnx"
    assert manifest["shared_user"] is True  # can-dien takes the user-shared form
    assert manifest["inputs"] == [s.to_dict() for s in input_specs(schema.spec, shared=True)]
    assert [o["name"] for o in manifest["outputs"]] == ["prob", "logit"]
    assert manifest["parity_max_abs_diff"] <= TOL
    for table, entry in manifest["vocab"].items():
        assert (out / entry["file"]).read_text() == (data_dir / "vocab" / f"{table}.json").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp directory left

    # raw ids of 40 test rows: index -> raw id through the prepared vocabularies; one unknown item
    from canctr.train.checkpoint import load_model

    cols = load_split(data_dir, "test", schema.spec)
    batch = BatchLoader(cols, schema.spec, batch_size=40, shuffle=False).batch(torch.arange(40))
    raw_of = {t: json.loads((data_dir / "vocab" / f"{t}.json").read_text()) for t in schema.vocab}
    columns = {}
    for f in schema.spec.categorical:
        columns[f.name] = [raw_of[f.table][i] for i in batch.sparse[f.name].tolist()]
    for f in schema.spec.sequential:
        n = batch.lengths[f.group].tolist()
        columns[f.name] = [[raw_of[f.table][i] for i in row[:k]] for row, k in zip(batch.sparse[f.name].tolist(), n)]
    columns["item"][5] = "no-such-item"
    mapper = RawIdMapper.from_export(out)
    mapped = map_rows(mapper, columns)
    assert mapper.unknown["item"] == 1 + sum(columns["item"][i] == "<pad/unk>" for i in range(40))
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {s["name"]: x.numpy() for s, x in zip(manifest["inputs"], tensor_inputs(mapped, schema.spec, shared=True))}
    prob, logit = session.run(["prob", "logit"], feeds)
    model, _ = load_model(run_dir)
    model.eval()
    expected_batch = batch.replace(sparse={**batch.sparse, "item": batch.sparse["item"].clone()})
    expected_batch.sparse["item"][5] = 0
    with torch.no_grad():
        eager = model(expected_batch).logits
    np.testing.assert_allclose(logit, eager.numpy(), atol=TOL)
    np.testing.assert_allclose(prob, torch.sigmoid(eager).numpy(), atol=TOL)


def test_cli_export_torchscript(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ts"
    rc, text, err = cli("export", "--run", str(run_dir), "--format", "torchscript", "--out", str(out))
    assert rc == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["file"] == "model.pt" and manifest["opset"] is None
    assert len(manifest["checkpoint"]["sha256"]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 marks TorchScript deprecated
        module = torch.jit.load(str(out / "model.pt"))
    inputs = [torch.zeros(2, *([3] if len(s["shape"]) == 2 else []), dtype=torch.long) for s in manifest["inputs"]]
    prob, logit = module(*inputs)
    assert prob.shape == (2,) and torch.allclose(prob, torch.sigmoid(logit))


def export_error(*argv: str) -> str:
    """Run `canctr export ARGV`; check it fails with exactly one `canctr export: error: ...` line; return it."""
    rc, _, err = cli("export", *argv)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("canctr export: error: "), err
    return lines[0]


def test_cli_export_errors(run_dir: Path, tmp_path: Path) -> None:
    line = export_error("--run", str(tmp_path / "nope"), "--format", "onnx", "--out",
                               str(tmp_path / "o"))
    assert "run directory not found" in line
    line = export_error("--run", str(run_dir), "--format", "tflite", "--out", str(tmp_path / "o"))
    assert "unknown format 'tflite'" in line and "torchscript" in line
    line = export_error("--run", str(tmp_path), "--format", "onnx", "--out", str(tmp_path / "o"))
    assert "not a training run" in line
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    line = export_error("--run", str(run_dir), "--format", "torchscript", "--out", str(busy))
    assert "exists and is not empty" in line and "--force" in line
    assert (busy / "keep.txt").exists()
    line = export_error("--run", str(run_dir), "--format", "torchscript", "--out",
                               str(tmp_path / "o"), "--data", str(tmp_path / "nodata"))
    assert "no vocabulary for table" in line and "--data" in line
    assert not (tmp_path / "o").exists()
    rc, _, err = cli("export", "--run", str(run_dir), "--format", "torchscript", "--out", str(busy), "--force")
    assert rc == 0, err
    assert (busy / "manifest.json").exists() and not (busy / "keep.txt").exists()


def test_a_model_that_cannot_export_fails_cleanly(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """An exporter failure is one line naming the model and the reason, and leaves no file behind."""
    import canctr.serve.export as export

    def broken(*args, **kwargs):
        raise RuntimeError("unsupported operator aten::frobnicate\nmore detail")

    monkeypatch.setattr(export, "export_torchscript", broken)
    out = tmp_path / "o"
    line = export_error("--run", str(run_dir), "--format", "torchscript", "--out", str(out))
    assert "model 'can-dien' cannot be exported to torchscript" in line and "aten::frobnicate" in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -------------------------------------------------------------------------------------------- raw ids


def test_mapper_reproduces_prepare_table(tmp_path: Path) -> None:
    """Raw rows of a prepared table (string ids, integer ids, a hashed field, lists, dense values with
    missing ones) map to exactly the stored test indices and normalised values."""
    from canctr.data.spec import FeatureSpec
    from canctr.data.table import prepare_table

    rng = np.random.default_rng(0)
    n = 600
    hist = [[f"i{v}" for v in rng.integers(0, 40, rng.integers(0, 6))] for _ in range(n)]
    price = rng.gamma(2.0, 10.0, n)
    price[::17] = np.nan
    table = pa.table({
        "user": pa.array([f"u{v}" for v in rng.integers(0, 150, n)]),
        "item": pa.array([f"i{v}" for v in rng.integers(0, 45, n)]),
        "hour": pa.array(rng.integers(0, 24, n)),
        "shop": pa.array([f"s{v}" for v in rng.integers(0, 500, n)]),
        "hist": pa.array(hist, pa.list_(pa.string())),
        "price": pa.array(price),
        "label": pa.array(rng.integers(0, 2, n)),
        "is_test": pa.array((np.arange(n) % 4 == 0).astype(np.int64)),
    })
    import pyarrow.parquet as pq

    pq.write_table(table, tmp_path / "t.parquet")
    spec = FeatureSpec.from_dict({
        "label": "label",
        "fields": [
            {"name": "user", "side": "user", "min_count": 2},
            {"name": "item", "side": "item"},
            {"name": "hour"},
            {"name": "shop", "hash_buckets": 97},
            {"name": "hist", "kind": "sequence", "table": "item", "side": "user"},
            {"name": "price", "kind": "dense", "norm": "log1p"},
        ],
        "sequences": [{"name": "hist", "max_len": 3}],
        "split": {"by": "column", "column": "is_test"},
    })
    prepared = prepare_table(spec, [tmp_path / "t.parquet"], tmp_path / "data")
    assert prepared.options["key_types"]["hour"] == "int"
    cols = load_split(tmp_path / "data", "test", prepared.spec)
    rows = np.flatnonzero(np.arange(n) % 4 == 0)
    mapper = RawIdMapper.from_data(tmp_path / "data")
    sub = table.take(pa.array(rows))
    for name in ("user", "item", "hour", "shop"):
        got = mapper.map_field(name, sub[name])
        np.testing.assert_array_equal(got, cols.ids[name], err_msg=name)
    # the hour as text (another source's type) maps alike in an integer-keyed table
    np.testing.assert_array_equal(mapper.map_field("hour", [f"{v:02d}" for v in sub["hour"].to_pylist()]),
                                  cols.ids["hour"])
    flat, lens = mapper.map_sequence("hist", sub["hist"])
    np.testing.assert_array_equal(lens, np.diff(cols.offsets["hist"]))
    np.testing.assert_array_equal(flat, cols.values["hist"])
    dense = mapper.map_dense({"price": sub["price"].to_numpy(zero_copy_only=False)})
    np.testing.assert_allclose(dense, cols.dense, rtol=1e-6, atol=1e-6)
    assert mapper.unknown["user"] == int(np.count_nonzero(cols.ids["user"] == 0)) > 0
    assert mapper.unknown["shop"] == 0  # hashed fields are never unknown


def test_make_batch_pads_each_group_to_its_longest_row() -> None:
    from canctr.data.spec import behaviour_spec

    spec = behaviour_spec(max_len=5)
    ids = {"user": np.array([1, 2, 3]), "item": np.array([4, 5, 6]), "cate": np.array([1, 1, 2])}
    lens = np.array([2, 0, 3])
    seqs = {"hist_item": (np.array([7, 8, 9, 10, 11]), lens), "hist_cate": (np.array([1, 2, 3, 4, 5]), lens)}
    b = make_batch(spec, ids, seqs)
    assert b.sparse["hist_item"].tolist() == [[7, 8, 0], [0, 0, 0], [9, 10, 11]]
    assert b.masks["hist"].tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert b.lengths["hist"].tolist() == [2, 0, 3] and b.sparse["user"].dtype == torch.int64
    with pytest.raises(ValueError, match="differ in length"):
        make_batch(spec, ids, {**seqs, "hist_cate": (np.array([1, 2]), np.array([1, 0, 1]))})


@pytest.mark.parametrize("k", [1, 2, 3, 7, 8, 1000])
def test_export_lookup_equals_searchsorted(k: int) -> None:
    """The unrolled binary search used under export finds what torch.searchsorted finds."""
    from canctr.models.cartesian_block import _lower_bound

    g = torch.Generator().manual_seed(k)
    keys = torch.unique(torch.randint(0, 3 * k, (k,), generator=g))
    query = torch.randint(-2, 3 * k + 3, (50, 7), generator=g)
    query[0, : keys.numel()] = keys[:7]
    assert torch.equal(_lower_bound(keys, query), torch.searchsorted(keys, query))


def test_map_candidates_maps_the_user_once_and_equals_row_mapping(data_dir: Path, schema: Schema) -> None:
    mapper = RawIdMapper.from_data(data_dir)
    user, hist_item, hist_cate = "17", [301, 775, 999999], [34, 171, 33]
    items, cates = [862, "302", 424242], [34, 171, 33]
    got = map_candidates(mapper, {"user": user, "hist_item": hist_item, "hist_cate": hist_cate},
                         {"item": items, "cate": cates})
    counts = mapper.reset_counts()
    rows = map_rows(mapper, {"user": [user] * 3, "item": items, "cate": cates, "hist_item": [hist_item] * 3,
                             "hist_cate": [hist_cate] * 3})
    assert got.user.tolist() == [0, 0, 0] and got.lengths["hist"].tolist() == [3]  # the user side kept once
    expanded = got.expanded()
    for name, t in rows.sparse.items():
        assert torch.equal(expanded.sparse[name], t), name
    assert torch.equal(expanded.lengths["hist"], rows.lengths["hist"])
    assert counts["item"] == 1 and counts["hist_item"] == 1  # the shared history is mapped once
    assert got.sparse["item"][2] == 0 and got.sparse["hist_item"][0, 2] == 0
    with pytest.raises(ValueError, match="missing field"):
        map_candidates(mapper, {"user": user}, {"item": items, "cate": cates})
    with pytest.raises(ValueError, match="unknown field"):
        map_candidates(mapper, {"user": user, "hist_item": [], "hist_cate": [], "age": 3},
                       {"item": items, "cate": cates})


def test_numeric_text_ids_take_the_integer_search_with_text_semantics() -> None:
    """A vocabulary of canonical decimal ids (every preset's) finds text ids by integer search (the serving
    path's JSON strings), yet compares as text in a text-keyed table: "07", " 7", "+7" are not "7"."""
    from canctr.serve.vocab import _Table

    text_keyed = _Table("item", ids=["<pad/unk>", "7", "12", "300"])
    assert text_keyed.int_sorted is not None  # the integer search is available
    idx, unknown = text_keyed.lookup(["7", "12", "300", "8", "07", " 7", "+7", "-0", "9223372036854775808"])
    assert idx.tolist() == [1, 2, 3, 0, 0, 0, 0, 0, 0] and unknown == 6
    assert text_keyed.lookup([7, 300])[0].tolist() == [1, 3]  # numbers and their text agree
    assert text_keyed.lookup(pa.array(["12", None]))[0].tolist() == [2, 0]  # a null: the text path, unknown
    int_keyed = _Table("item", ids=["<pad/unk>", "7", "12"], key_type="int")
    assert int_keyed.lookup(["07", "12", "x"])[0].tolist() == [1, 2, 0]  # integer keys: "07" is 7
