"""Finished runs -> per-run rows and per-model summaries (mean ± std over seeds), as CSV / JSON / Markdown.

A finished run directory holds `metrics.json` (written last by `canctr.train.loop.fit`) and `config.json`.
The std is the sample standard deviation (ddof=1) over seeds; with one run it is undefined (NaN, shown as
the mean alone).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from canctr.report.paper import paper_results

AGGREGATED = ("auc", "gauc", "logloss", "train_samples_per_second")


@dataclass
class RunRecord:
    """One finished run: its metrics (without curves), its curves and its training config."""

    run_dir: Path
    metrics: dict[str, Any]
    curves: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.metrics["model"]

    @property
    def seed(self) -> int:
        return self.metrics["seed"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e


def load_run(run_dir: str | Path) -> RunRecord:
    run_dir = Path(run_dir)
    path = run_dir / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir}: no metrics.json (not a run directory, or the run has not finished)")
    metrics = _read_json(path)
    for key in ("model", "seed", *AGGREGATED, "n_params"):
        if key not in metrics:
            raise ValueError(f"{path}: missing field {key!r}")
    curves = metrics.pop("curves", [])
    config = _read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    return RunRecord(run_dir, metrics, curves, config)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1; NaN for fewer than two values)."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else math.nan


def aggregate(records: Sequence[RunRecord], labels: Sequence[str]) -> list[dict[str, Any]]:
    """One summary dict per label (in first-seen order) over the records carrying it."""
    groups: dict[str, list[RunRecord]] = {}
    for rec, label in zip(records, labels, strict=True):
        groups.setdefault(label, []).append(rec)
    out = []
    for label, recs in groups.items():
        row: dict[str, Any] = {"model": label, "runs": len(recs), "seeds": [r.seed for r in recs]}
        for key in AGGREGATED:
            row[key], row[key + "_std"] = mean_std([r.metrics[key] for r in recs])
        row["n_params"] = round(float(np.mean([r.metrics["n_params"] for r in recs])))
        out.append(row)
    return out


def add_param_multiples(summary: list[dict[str, Any]]) -> str | None:
    """Set `params_x_ref` = n_params / the reference's: `dnn` when present, else the smallest model."""
    if not summary:
        return None
    ref = next((s for s in summary if s["model"] == "dnn"), None) or min(summary, key=lambda s: s["n_params"])
    for s in summary:
        s["params_x_ref"] = s["n_params"] / ref["n_params"]
    return ref["model"]


def add_paper_columns(summary: list[dict[str, Any]], column: str | None) -> None:
    """Set the paper's AUC (and Table 2 parameter multiple) for each model it reports in `column`."""
    paper = paper_results(column) if column else {}
    for s in summary:
        p = paper.get(s["model"])
        s["paper_row"] = p.row if p else None
        s["paper_auc"] = p.auc if p else None
        s["paper_auc_std"] = p.auc_std if p else None
        s["paper_params_x_dnn"] = p.params_x_dnn if p else None


# ---- formatting -----------------------------------------------------------------------------------------

def fmt_pm(mean: float, std: float, digits: int = 4) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if std is None or math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_multiple(x: float) -> str:
    """1.05 / 4.5 / 17.0: two decimals below 10 so that near-1 ratios stay visible."""
    return f"{x:.2f}" if x < 10 else f"{x:.1f}"


Column = tuple[str, Callable[[dict[str, Any]], str]]


def summary_columns(ref: str | None, paper_column: str | None) -> list[Column]:
    """(header, formatter) pairs shared by summary.md, report.html and `canctr compare`; `ref` names the
    parameter-multiple column ("× dnn"), None leaves it out."""
    cols: list[Column] = [
        ("model", lambda s: s["model"]),
        ("runs", lambda s: str(s["runs"])),
        ("AUC", lambda s: fmt_pm(s["auc"], s["auc_std"])),
        ("GAUC", lambda s: fmt_pm(s["gauc"], s["gauc_std"])),
        ("logloss", lambda s: fmt_pm(s["logloss"], s["logloss_std"])),
        ("params", lambda s: f"{s['n_params']:,}"),
    ]
    if ref is not None:
        cols.append((f"× {ref}", lambda s: fmt_multiple(s["params_x_ref"])))
    cols.append(("train samples/s", lambda s: f"{s['train_samples_per_second']:,.0f}"))
    if paper_column is not None:
        cols += [
            (f"paper AUC, {paper_column}",
             lambda s: fmt_pm(s["paper_auc"], s["paper_auc_std"]) if s["paper_auc"] is not None else "not in paper"),
            ("paper × DNN", lambda s: fmt_multiple(s["paper_params_x_dnn"]) if s["paper_params_x_dnn"] else "–"),
        ]
    return cols


def render_markdown(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(f(r) for _, f in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


SUMMARY_CSV_FIELDS = (
    "model", "runs", "auc", "auc_std", "gauc", "gauc_std", "logloss", "logloss_std", "n_params",
    "params_x_ref", "train_samples_per_second", "train_samples_per_second_std",
    "paper_row", "paper_auc", "paper_auc_std", "paper_params_x_dnn",
)


def to_csv(rows: Sequence[dict[str, Any]], fields: Sequence[str] | None = None) -> str:
    """CSV text; `fields` defaults to the union of keys in first-seen order. Lists become JSON."""
    if fields is None:
        fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)
                         for k, v in r.items()})
    return buf.getvalue()


# ---- `canctr compare` -----------------------------------------------------------------------------------

# training settings that do not change what a run measures; runs differing only in these are grouped
_NOT_IDENTITY = {"seed", "out", "progress", "device", "checkpoint_every", "keep_checkpoints", "eval_every",
                 "log_every", "eval_batch_size"}


def compare_labels(records: Sequence[RunRecord]) -> list[str]:
    """A group label per run: the model name, plus the config fields that tell apart same-model groups."""
    def identity(r: RunRecord) -> dict[str, Any]:
        return {k: v for k, v in r.config.items() if k not in _NOT_IDENTITY}

    labels = []
    for r in records:
        mine = identity(r)
        others = [identity(o) for o in records if o.model == r.model and identity(o) != mine]
        differing = sorted({k for o in others for k in set(o) | set(mine) if o.get(k) != mine.get(k)})
        extra = ", ".join(f"{k}={json.dumps(mine.get(k), sort_keys=True)}" for k in differing)
        labels.append(f"{r.model} [{extra}]" if extra else r.model)
    return labels


def compare(run_dirs: Sequence[str | Path]) -> tuple[list[dict[str, Any]], str | None]:
    """Summaries of finished runs grouped by model (and config), with parameter multiples."""
    if not run_dirs:
        raise ValueError("compare: give at least one run directory")
    records = [load_run(d) for d in run_dirs]
    summary = aggregate(records, compare_labels(records))
    ref = add_param_multiples(summary)
    return summary, ref
