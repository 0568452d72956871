"""`canctr reproduce` / `canctr compare` on a tiny synthetic dataset: files, resuming, summary math, html."""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import math
import re
import statistics
from pathlib import Path

import pytest
from synth import make_prepared

from canctr.cli import main
from canctr.config import ConfigError
from canctr.models import list_models
from canctr.report import experiments
from canctr.report.experiments import Grid, model_overrides, parse_seeds, resolve_models, run_grid
from canctr.report.paper import AMAZON_BOOKS, TAOBAO, paper_column, paper_results
from canctr.report.plots import global_steps, mean_curve
from canctr.report.summary import RunRecord, add_paper_columns, add_param_multiples, aggregate
from canctr.train import loop
from canctr.train.loop import TrainConfig, fit

MODELS, SEEDS = ["dnn", "can-dnn"], [1, 2]
SMALL = ["--set", "mlp=[16,8]", "--batch-size", "64", "--no-progress"]
PNGS = ("auc_by_model.png", "auc_vs_params.png", "curves.png")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_prepared(tmp_path_factory.mktemp("synth"))


@pytest.fixture(scope="module")
def report(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["reproduce", "--data", str(data_dir), "--models", ",".join(MODELS), "--seeds", "2",
                 "--out", str(out), *SMALL]) == 0
    return out


def _metrics(report: Path, model: str, seed: int) -> dict:
    return json.loads((report / "runs" / model / f"seed{seed}" / "metrics.json").read_text())


def test_reproduce_writes_every_file(report):
    for name in ("results.csv", "results.json", "summary.csv", "summary.md", "report.html", "status.json", *PNGS):
        assert (report / name).stat().st_size > 0, name
    rows = json.loads((report / "results.json").read_text())["rows"]
    assert [(r["model"], r["seed"]) for r in rows] == [(m, s) for m in MODELS for s in SEEDS]
    for r in rows:
        m = _metrics(report, r["model"], r["seed"])
        assert r["auc"] == m["auc"] and r["n_params"] == m["n_params"] and r["status"] == "trained"
        assert "curves" not in r and m["seed"] == r["seed"]
    with open(report / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 4 and float(csv_rows[0]["auc"]) == rows[0]["auc"]
    # eval_every defaults to about a quarter epoch (512 / 64 = 8 batches -> every 2): several AUC points
    curves = json.loads((report / "runs" / "dnn" / "seed1" / "metrics.json").read_text())["curves"]
    assert [c["step"] for c in curves if "eval_auc" in c] == [2, 4, 6, 8]
    assert sum("loss" in c for c in curves) == 8


def test_summary_is_mean_and_sample_std_over_seeds(report):
    with open(report / "summary.csv") as f:
        summary = {r["model"]: r for r in csv.DictReader(f)}
    for model in MODELS:
        aucs = [_metrics(report, model, s)["auc"] for s in SEEDS]
        assert float(summary[model]["auc"]) == pytest.approx(statistics.mean(aucs), abs=1e-12)
        assert float(summary[model]["auc_std"]) == pytest.approx(statistics.stdev(aucs), abs=1e-12)
    ratio = _metrics(report, "can-dnn", 1)["n_params"] / _metrics(report, "dnn", 1)["n_params"]
    assert float(summary["can-dnn"]["params_x_ref"]) == pytest.approx(ratio)
    assert summary["dnn"]["paper_auc"] == ""  # a synthetic dataset has no paper column
    md = (report / "summary.md").read_text()
    aucs = [_metrics(report, "dnn", s)["auc"] for s in SEEDS]
    assert f"| dnn | 2 | {statistics.mean(aucs):.4f} ± {statistics.stdev(aucs):.4f} |" in md


def test_second_call_does_not_retrain_finished_cells(report, data_dir, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(experiments, "fit", lambda cfg, resume=False: calls.append(cfg))
    before = {p: p.stat().st_mtime_ns for p in report.glob("runs/*/seed*/metrics.json")}
    assert len(before) == 4
    assert main(["reproduce", "--data", str(data_dir), "--models", ",".join(MODELS), "--seeds", "2",
                 "--out", str(report), *SMALL]) == 0
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in report.glob("runs/*/seed*/metrics.json")} == before
    status = json.loads((report / "status.json").read_text())["cells"]
    assert [c["status"] for c in status] == ["cached"] * 4
    assert capsys.readouterr().out.count(": cached") == 4


def test_changed_config_redoes_the_cell(data_dir, tmp_path):
    base = ["reproduce", "--data", str(data_dir), "--models", "dnn", "--seeds", "1", "--out", str(tmp_path),
            "--batch-size", "64", "--no-progress"]
    assert main([*base, "--set", "mlp=[16,8]"]) == 0
    first = json.loads((tmp_path / "runs" / "dnn" / "seed1" / "metrics.json").read_text())
    assert main([*base, "--set", "mlp=[8]"]) == 0
    status = json.loads((tmp_path / "status.json").read_text())["cells"][0]
    assert status["status"] == "redone" and "model_config" in status["message"]
    second = json.loads((tmp_path / "runs" / "dnn" / "seed1" / "metrics.json").read_text())
    assert second["n_params"] != first["n_params"]


def test_interrupted_cell_resumes_from_its_checkpoint(data_dir, tmp_path, monkeypatch):
    train = {"batch_size": 64, "progress": False, "eval_every": 2, "checkpoint_every": 2, "log_every": 1}
    grid = Grid(data_dir, tmp_path / "rep", ["dnn", "can-dnn"], [1], train, {"mlp": [16, 8]})
    ref = fit(TrainConfig(data=str(data_dir), model="can-dnn", out=str(tmp_path / "ref"), seed=1,
                          model_config={"mlp": [16, 8]}, **train))

    real_step, calls = loop.train_step, {"n": 0}

    def flaky_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8 + 5:  # dnn takes 8 steps; die at can-dnn's step 5, after its step-4 checkpoint
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", flaky_step)
    with pytest.raises(KeyboardInterrupt):
        run_grid(grid, echo=lambda s: None)
    status = json.loads((grid.out / "status.json").read_text())["cells"]
    assert [c["status"] for c in status] == ["trained", "interrupted"]
    cut = grid.out / "runs" / "can-dnn" / "seed1"
    assert not (cut / "metrics.json").exists()
    state = json.loads((cut / "checkpoint" / "train_state.json").read_text())
    assert (state["epoch"], state["step"]) == (0, 4)

    monkeypatch.setattr(loop, "train_step", real_step)
    cells = run_grid(grid, echo=lambda s: None)
    assert [c.status for c in cells] == ["cached", "resumed"]
    resumed = json.loads((cut / "metrics.json").read_text())
    assert resumed["auc"] == ref["auc"] and resumed["train_samples"] == ref["train_samples"]


def test_report_html_is_self_contained_and_embeds_the_plots(report):
    html = (report / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted((report / p).read_bytes() for p in PNGS)
    for model in MODELS:
        assert f"<td>{model}</td>" in html


def test_compare_groups_seeds_by_model(report, tmp_path, capsys):
    runs = [str(p) for p in sorted(report.glob("runs/*/seed*"))]
    out_md, out_csv = tmp_path / "cmp.md", tmp_path / "cmp.csv"
    assert main(["compare", *runs, "--out", str(out_md)]) == 0
    assert capsys.readouterr().out == out_md.read_text()
    aucs = [_metrics(report, "can-dnn", s)["auc"] for s in SEEDS]
    assert f"| can-dnn | 2 | {statistics.mean(aucs):.4f} ± {statistics.stdev(aucs):.4f} |" in out_md.read_text()
    assert main(["compare", runs[0], "--out", str(out_csv)]) == 0
    with open(out_csv) as f:
        (row,) = list(csv.DictReader(f))
    assert row["runs"] == "1" and row["auc_std"] == "nan"
    assert main(["compare", runs[0], "--out", str(tmp_path / "cmp.txt")]) == 2
    assert main(["compare", str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


def _record(model: str, seed: int, auc: float, n_params: int) -> RunRecord:
    metrics = {"model": model, "seed": seed, "auc": auc, "gauc": auc - 0.01, "logloss": 0.6,
               "train_samples_per_second": 1000.0 * seed, "n_params": n_params}
    return RunRecord(Path("."), metrics)


def test_aggregate_param_multiples_and_paper_columns():
    recs = [_record("din", 1, 0.70, 300), _record("din", 2, 0.72, 300), _record("din", 3, 0.77, 300),
            _record("can-dnn", 1, 0.75, 1200)]
    summary = aggregate(recs, [r.model for r in recs])
    din, can = summary
    assert din["auc"] == pytest.approx(0.73) and din["auc_std"] == pytest.approx(statistics.stdev([0.70, 0.72, 0.77]))
    assert din["train_samples_per_second"] == pytest.approx(2000.0) and din["seeds"] == [1, 2, 3]
    assert can["runs"] == 1 and math.isnan(can["auc_std"])
    assert add_param_multiples(summary) == "din"  # no dnn: the smallest model is the reference
    assert can["params_x_ref"] == pytest.approx(4.0)
    add_paper_columns(summary, paper_column("sequences:Beauty"))
    assert can["paper_auc"] == 0.7935 and can["paper_params_x_dnn"] == 3.3
    assert din["paper_auc"] is None  # DIN is not in the CAN paper's tables
    add_paper_columns(summary, paper_column("taobao:UserBehavior"))
    assert can["paper_auc"] == 0.8828 and can["paper_params_x_dnn"] == 2.6
    assert paper_column("dien:books") == AMAZON_BOOKS and paper_column("taobao:x") == TAOBAO
    assert paper_column("synthetic:test") is None
    registered = {e.name for e in list_models()}
    assert set(paper_results(AMAZON_BOOKS)) <= registered  # a typo in paper.py's mapping would hide a row


def test_curves_use_global_steps_and_average_over_seeds():
    def curves(offset: float) -> list[dict]:
        return [{"epoch": e, "step": s, "loss": offset + e * 10 + s} for e in (0, 1) for s in (2, 4)] + [
            {"epoch": 1, "step": 4, "eval_auc": 0.6 + offset}]

    steps, values = global_steps(curves(0.0), "loss")
    assert steps.tolist() == [2, 4, 6, 8] and values.tolist() == [2, 4, 12, 14]
    recs = [RunRecord(Path("."), {}, curves(0.0)), RunRecord(Path("."), {}, curves(0.2))]
    steps, mean, std = mean_curve(recs, "eval_auc")
    assert steps.tolist() == [8] and mean[0] == pytest.approx(0.7)
    assert std[0] == pytest.approx(statistics.stdev([0.6, 0.8]))


def test_models_and_seeds_specs():
    assert resolve_models("all") == [e.name for e in list_models()]
    assert resolve_models("can-dnn, dnn,can-dnn") == ["can-dnn", "dnn"]
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        resolve_models("dnn,nope")
    assert parse_seeds("3") == [1, 2, 3] and parse_seeds("7,3") == [7, 3]
    for bad in ("0", "x", "1,x"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_set_reaches_the_models_that_have_the_key():
    no_mlp = [e.name for e in list_models() if "mlp" not in dataclasses.asdict(e.config_cls())]
    assert no_mlp, "the registry has MLP-free models (fm, ffm)"
    per_model = model_overrides(["dnn", no_mlp[0]], {"mlp": [4], "embed_dim": 6})
    assert per_model == {"dnn": {"mlp": [4], "embed_dim": 6}, no_mlp[0]: {"embed_dim": 6}}
    with pytest.raises(ValueError, match="mlpp"):
        model_overrides(["dnn", no_mlp[0]], {"mlpp": [4]})
    with pytest.raises(ConfigError, match="mlp"):
        model_overrides(["dnn"], {"mlp": "wide"})


def test_bad_override_fails_before_any_training(data_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiments, "fit", lambda cfg, resume=False: pytest.fail("trained despite a bad --set"))
    assert main(["reproduce", "--data", str(data_dir), "--models", "dnn", "--seeds", "1", "--out",
                 str(tmp_path), "--set", "mlpp=[4]"]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_failed_cell_is_recorded_and_the_grid_goes_on(data_dir, tmp_path, monkeypatch):
    real_fit = experiments.fit

    def fit_or_diverge(cfg, resume=False):
        if cfg.model == "can-dnn":
            raise loop.TrainingDiverged("loss became nan at epoch 0 step 3")
        return real_fit(cfg, resume=resume)

    monkeypatch.setattr(experiments, "fit", fit_or_diverge)
    assert main(["reproduce", "--data", str(data_dir), "--models", "can-dnn,dnn", "--seeds", "1", "--out",
                 str(tmp_path), *SMALL]) == 1
    status = json.loads((tmp_path / "status.json").read_text())["cells"]
    assert [(c["model"], c["status"]) for c in status] == [("can-dnn", "failed"), ("dnn", "trained")]
    assert "TrainingDiverged: loss became nan" in status[0]["message"]
    with open(tmp_path / "summary.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["dnn"]
    html = (tmp_path / "report.html").read_text()
    assert "status-failed" in html and "1 of 2 cells are not finished" in html


def test_report_paths_are_shown_relative_to_the_working_directory(tmp_path, monkeypatch):
    """A report names its data and output as they would be typed from where it was made, never a machine's
    absolute folders, when they lie under the working directory."""
    from canctr.report.experiments import shown

    monkeypatch.chdir(tmp_path)
    assert shown(tmp_path / "data" / "beauty") == str(Path("data") / "beauty")
    assert shown(Path("runs") / "zoo") == str(Path("runs") / "zoo")
    outside = tmp_path.parent / "elsewhere"
    assert shown(outside) == str(outside)
