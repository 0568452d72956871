"""User errors at the command line: each is one line on stderr naming the option, directory, key or file, and a
non-zero exit, never a traceback. Tiny data (tests/synth.py), one short training run for `evaluate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from synth import make_prepared

from canctr.cli import main


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("synth"), n_train=128, n_test=64)


@pytest.fixture(scope="module")
def run_dir(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "dnn"
    assert main(["train", "--data", str(data_dir), "--model", "dnn", "--out", str(run), "--batch-size", "64",
                 "--device", "cpu", "--no-progress", "--set", "mlp=[8]"]) == 0
    return run


def one_line_error(capsys: pytest.CaptureFixture[str], rc: int, command: str) -> str:
    """Check the exit status and that stderr is exactly one `canctr COMMAND: error: ...` line; return it."""
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"canctr {command}: error: "), err
    assert "Traceback" not in err and "TypeError" not in err
    return lines[0]


def train(data: Path | str, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--model", "dnn", "--out", str(out), "--device", "cpu",
                 "--no-progress", *extra])


def copy_of(data_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(data_dir, tmp_path / "data"))


# -------------------------------------------------------------------------------------------- train options


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--epochs", "0", "--epochs must be >= 1, got 0"),
    ("--epochs", "-2", "--epochs must be >= 1, got -2"),
    ("--batch-size", "0", "--batch-size must be >= 1, got 0"),
    ("--eval-batch-size", "0", "--eval-batch-size must be >= 1, got 0"),
    ("--lr", "0", "--lr must be a positive number, got 0.0"),
    ("--lr", "-0.001", "--lr must be a positive number, got -0.001"),
    ("--lr", "nan", "--lr must be a positive number, got nan"),
    ("--max-len", "-1", "--max-len must be >= 0, got -1"),
])
def test_bad_train_option_names_it(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   option: str, value: str, message: str) -> None:
    line = one_line_error(capsys, train(data_dir, tmp_path / "run", option, value), "train")
    assert line == f"canctr train: error: {message}"
    assert not (tmp_path / "run").exists()  # refused before anything is written


# -------------------------------------------------------------------------------------------- directories


def test_evaluate_missing_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-run"
    line = one_line_error(capsys, main(["evaluate", "--run", str(missing)]), "evaluate")
    assert line == f"canctr evaluate: error: {missing}: no such run directory"
    (tmp_path / "a-file").write_text("x")
    line = one_line_error(capsys, main(["evaluate", "--run", str(tmp_path / "a-file")]), "evaluate")
    assert "a-file: no such run directory" in line


@pytest.mark.parametrize("which", ["other file", "schema.json"])
def test_data_that_is_a_file(data_dir: Path, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             which: str) -> None:
    if which == "schema.json":  # Schema.load reads it, but the splits live beside it: still refused
        path = data_dir / "schema.json"
    else:
        path = tmp_path / "clicks.parquet"
        path.write_bytes(b"PAR1")
    expected = f"{path}: is a file; expected a prepared directory (with schema.json)"
    line = one_line_error(capsys, train(path, tmp_path / "run"), "train")
    assert line == f"canctr train: error: {expected}"
    assert not (tmp_path / "run").exists()  # refused before the run directory is made
    line = one_line_error(capsys, main(["evaluate", "--run", str(run_dir), "--data", str(path)]), "evaluate")
    assert line == f"canctr evaluate: error: {expected}"


# -------------------------------------------------------------------------------------------- schema.json


def _drop(*keys: str):
    def change(schema: dict) -> None:
        node = schema
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return change


def _set(key: str, table: str, value):
    def change(schema: dict) -> None:
        schema[key][table] = value
    return change


@pytest.mark.parametrize(("change", "message"), [
    (_drop("vocab"), "missing key(s) ['vocab']"),
    (_drop("splits"), "missing key(s) ['splits']"),
    (_drop("dataset"), "missing key(s) ['dataset']"),
    (_drop("spec"), "missing or malformed key 'spec'"),
    (_drop("format_version"), "format_version None is not supported"),
    (_drop("vocab", "item"), "no vocabulary size for table(s) ['item']"),
    (_drop("pairs", "item>hist_item"), "no pair count for Cartesian pair(s) ['item>hist_item']"),
    (_drop("spec", "fields"), "fields: missing"),
    (_set("vocab", "item", "60"), "vocab sizes must be positive integers, got {'item': '60'}"),
    (_set("vocab", "cate", 0), "vocab sizes must be positive integers, got {'cate': 0}"),
    (_set("pairs", "cate>hist_cate", None), "pairs sizes must be positive integers, got {'cate>hist_cate': None}"),
])
def test_schema_with_missing_or_bad_keys(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         change, message: str) -> None:
    data = copy_of(data_dir, tmp_path)
    path = data / "schema.json"
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema))
    line = one_line_error(capsys, train(data, tmp_path / "run"), "train")
    assert line.startswith(f"canctr train: error: {path}: ") and message in line
    assert line.count(str(path)) == 1  # the file is named once


def test_checkpoint_schema_with_a_missing_key(run_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (run / "checkpoint" / "manifest.json").unlink()  # as an older canctr wrote it: the checksum would catch the edit
    path = run / "checkpoint" / "schema.json"
    schema = json.loads(path.read_text())
    del schema["vocab"]
    path.write_text(json.dumps(schema))
    line = one_line_error(capsys, main(["evaluate", "--run", str(run), "--device", "cpu"]), "evaluate")
    assert line == f"canctr evaluate: error: {path}: missing key(s) ['vocab']"


# -------------------------------------------------------------------------------------------- stored arrays


@pytest.mark.parametrize(("split", "name", "keep"), [
    ("train", "label.npy", -8),  # the data cut short
    ("train", "label.npy", 20),  # inside the header
    ("train", "label.npy", 0),  # empty
    ("train", "hist_item.npy", -4),  # a sequence field's values
    ("train", "hist.offsets.npy", 100),
    ("train", "item.npy", -4),
])
def test_truncated_array_is_named(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  split: str, name: str, keep: int) -> None:
    data = copy_of(data_dir, tmp_path)
    path = data / split / name
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    line = one_line_error(capsys, train(data, tmp_path / "run"), "train")
    assert line.startswith(f"canctr train: error: {path}: corrupt or truncated .npy file ({len(raw[:keep])} bytes")


def test_truncated_test_split_at_evaluate(data_dir: Path, run_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    data = copy_of(data_dir, tmp_path)
    path = data / "test" / "hist_cate.npy"
    path.write_bytes(path.read_bytes()[:-4])
    line = one_line_error(capsys, main(["evaluate", "--run", str(run_dir), "--data", str(data), "--device", "cpu"]),
                          "evaluate")
    assert line.startswith(f"canctr evaluate: error: {path}: corrupt or truncated .npy file")


def test_prepare_random_writes_a_readable_set_and_names_bad_options(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """`canctr prepare random`: N random samples of a spec, readable by the loader with the vocab sizes asked for;
    impossible options are one-line errors naming the option."""
    from canctr.data.batch import load_split
    from canctr.data.schema import Schema

    spec = Path(__file__).resolve().parents[1] / "examples" / "specs" / "clicks.toml"
    out = tmp_path / "rnd"
    assert main(["prepare", "random", "--spec", str(spec), "--train", "5000", "--test", "700", "--vocab",
                 "item=321", "--out", str(out)]) == 0
    schema = Schema.load(out)
    assert schema.splits == {"train": 5000, "test": 700} and schema.vocab["item"] == 321
    train = load_split(out, "train", schema.spec)
    assert train.n == 5000 and 0 < int(train.ids["item"].max()) < 321
    capsys.readouterr()
    line = one_line_error(capsys, main(["prepare", "random", "--spec", str(spec), "--train", "0", "--out",
                                        str(out)]), "prepare random")
    assert "--train" in line
    line = one_line_error(capsys, main(["prepare", "random", "--spec", str(spec), "--train", "5", "--vocab",
                                        "nope=3", "--out", str(out)]), "prepare random")
    assert "--vocab 'nope=3'" in line
