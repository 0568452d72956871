"""The model x seed grid behind `canctr reproduce`: train every cell, resumably, then write the report.

Layout of REPORT_DIR:
    runs/<model>/seed<s>/     one `canctr.train.loop.fit` run directory per cell
    status.json               per-cell status, rewritten after every cell
    results.{csv,json}  summary.{csv,md}  *.png  report.html     (see `write_report`)

Resuming: a cell whose metrics.json exists and whose config.json equals the config this call would use is
not trained again ("cached"). A cell with a matching config but no metrics.json was interrupted: it
continues from its last checkpoint ("resumed"; checkpoints every `checkpoint_every` steps). A cell whose
config differs (other epochs, --set, ...) is started afresh ("redone"), after its stale metrics and
checkpoint are removed so that they can never be mixed with the new config.

Parallel cells (`jobs` > 1, `canctr reproduce --jobs N`): each cell trains in a fresh process (spawned, so no
state of this one is shared), at most `jobs` at a time, each with max(1, threads // jobs) intra-op threads
(threads: `--threads`, else OMP_NUM_THREADS, else the available cores). A cell's results do not depend on
the order or company it runs in (its seed fixes initialisation and sample order), only on its thread count:
with the same threads per cell, --jobs N reproduces the serial metrics exactly. A cell that raises is
"failed" with its error, as in a serial run; a cell whose process dies (killed, out of memory) is "failed"
with its exit status; the others go on. A script that calls `reproduce(..., jobs=N)` needs the usual
`if __name__ == "__main__":` guard (spawned processes import the main script); the CLI has it.

Seed s sets TrainConfig(seed=s): initialisation and sample order. The train/test split is the one of the
prepared directory (`canctr prepare --seed`); the paper's 5 runs also re-draw the split.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import multiprocessing.connection
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canctr import __version__
from canctr.data.schema import Schema, atomic_write_text
from canctr.models import get_entry, list_models, make_config
from canctr.report.html import render, summary_table
from canctr.report.paper import CITATION, paper_column
from canctr.report.plots import make_plots
from canctr.report.summary import (
    SUMMARY_CSV_FIELDS,
    RunRecord,
    add_paper_columns,
    add_param_multiples,
    aggregate,
    load_run,
    render_markdown,
    summary_columns,
    to_csv,
)
from canctr.threads import resolve_threads, set_threads
from canctr.train.loop import TrainConfig, fit

# config.json fields that do not change a run's results (where it lives, progress bar, checkpoint spacing)
_NOT_COMPARED = ("out", "progress", "checkpoint_every", "keep_checkpoints")


def shown(path: Path) -> str:
    """`path` as a report shows it: relative to the working directory when inside it (the command that made the
    report is run from there), so a committed report names no machine's folders."""
    path = Path(path)
    return str(path.relative_to(Path.cwd())) if path.is_absolute() and path.is_relative_to(Path.cwd()) else str(path)


@dataclass
class Grid:
    data: Path
    out: Path
    models: list[str]
    seeds: list[int]
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields shared by every cell
    overrides: dict[str, Any] = field(default_factory=dict)  # --set KEY=VALUE, see model_overrides


@dataclass
class Cell:
    model: str
    seed: int
    run_dir: Path
    status: str = "pending"  # pending | running (--jobs) | cached | trained | resumed | redone | failed | interrupted
    message: str = ""
    seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return (self.run_dir / "metrics.json").exists() and self.status not in ("failed", "interrupted")


def resolve_models(spec: str) -> list[str]:
    """'all' (every registered model, at call time) or a comma-separated list of registry names."""
    if spec.strip() == "all":
        return [e.name for e in list_models()]
    names = list(dict.fromkeys(n.strip() for n in spec.split(",") if n.strip()))
    if not names:
        raise ValueError("--models: give 'all' or a comma-separated list of model names")
    for n in names:
        get_entry(n)  # KeyError naming the available models
    return names


def parse_seeds(spec: str) -> list[int]:
    """'5' -> seeds 1..5; '3,7,9' -> exactly those."""
    try:
        if "," in spec:
            seeds = list(dict.fromkeys(int(s) for s in spec.split(",") if s.strip()))
        else:
            n = int(spec)
            if n < 1:
                raise ValueError
            seeds = list(range(1, n + 1))
    except ValueError:
        raise ValueError(f"--seeds: expected a count (5) or a comma-separated list (1,2,3), got {spec!r}") from None
    return seeds


def auto_interval(n_train: int, batch_size: int, parts: int) -> int:
    """Steps between about `parts` evenly spaced points of one epoch, rounded up so that the last point
    falls on the epoch end (which fit always evaluates) rather than a few steps before it."""
    n_batches = -(-n_train // batch_size)
    return max(1, -(-n_batches // parts))


def _has_key(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def model_overrides(models: list[str], overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per model, the overrides whose key its config has (`--set mlp=[64,32]` reaches the models with an MLP
    and skips FFM). A key that no model in the grid has, or a bad value, is an error, raised here, before
    any training."""
    per_model = {}
    for m in models:
        defaults = dataclasses.asdict(make_config(m))
        per_model[m] = {k: v for k, v in overrides.items() if _has_key(defaults, k)}
        make_config(m, per_model[m])  # type errors (ConfigError names the model config and key)
    unused = [k for k in overrides if not any(k in o for o in per_model.values())]
    if unused:
        raise ValueError(f"--set {', '.join(unused)}: unknown key for every model in the grid "
                         f"({', '.join(models)}); see the config dataclasses in canctr/models")
    return per_model


def cell_config(grid: Grid, model: str, seed: int, overrides: dict[str, Any]) -> TrainConfig:
    return TrainConfig(data=str(grid.data), model=model, out=str(grid.out / "runs" / model / f"seed{seed}"),
                       seed=seed, model_config=overrides, **grid.train)


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in _NOT_COMPARED}


def config_difference(cfg: TrainConfig, run_dir: Path) -> list[str] | None:
    """None when run_dir has no config.json; else the fields whose saved value differs from `cfg`."""
    path = run_dir / "config.json"
    if not path.exists():
        return None
    saved = _comparable(json.loads(path.read_text()))
    want = _comparable(json.loads(json.dumps(dataclasses.asdict(cfg))))  # tuples -> lists, as saved
    return sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))


def run_cell(cell: Cell, cfg: TrainConfig) -> None:
    """Bring one cell to a finished state, setting its status. Training errors mark it failed."""
    diff = config_difference(cfg, cell.run_dir)
    if diff:  # another configuration ran here: drop its results and checkpoint, start afresh
        (cell.run_dir / "metrics.json").unlink(missing_ok=True)
        shutil.rmtree(cell.run_dir / "checkpoint", ignore_errors=True)
        cell.status, cell.message = "redone", "config changed: " + ", ".join(diff)
    elif diff is not None and (cell.run_dir / "metrics.json").exists():
        cell.status = "cached"
        return
    elif (cell.run_dir / "checkpoint" / "train_state.json").exists():
        cell.status = "resumed"
    else:
        cell.status = "trained"
    t0 = time.perf_counter()
    try:
        fit(cfg, resume=not diff)
    except KeyboardInterrupt:
        cell.status, cell.message = "interrupted", "stopped by the user; re-run to resume from the checkpoint"
        raise
    except Exception as e:  # noqa: BLE001  (one failing cell must not lose the rest of the grid)
        cell.status, cell.message = "failed", f"{type(e).__name__}: {e}"
    finally:
        cell.seconds = time.perf_counter() - t0


def write_status(cells: list[Cell], path: Path) -> None:
    rows = [{"model": c.model, "seed": c.seed, "status": c.status, "message": c.message,
             "seconds": round(c.seconds, 2), "run_dir": str(c.run_dir)} for c in cells]
    atomic_write_text(path, json.dumps({"cells": rows}, indent=2) + "\n")


def run_grid(grid: Grid, echo: Callable[[str], None] = print, *, jobs: int = 1,
             threads: int | None = None) -> list[Cell]:
    """Train every (model, seed) cell that is not finished yet; status.json is kept current. jobs > 1: that
    many cells at a time, each in its own process with max(1, resolve_threads(threads) // jobs) threads."""
    if jobs < 1:
        raise ValueError(f"--jobs must be a positive number of cells at a time, got {jobs}")
    per_model = model_overrides(grid.models, grid.overrides)  # a typo fails now, not at the 10th cell
    cells = [Cell(m, s, grid.out / "runs" / m / f"seed{s}") for m in grid.models for s in grid.seeds]
    status_path = grid.out / "status.json"
    grid.out.mkdir(parents=True, exist_ok=True)
    write_status(cells, status_path)
    done = 0

    def report_done(cell: Cell) -> None:
        nonlocal done
        done += 1
        write_status(cells, status_path)
        echo(f"[{done}/{len(cells)}] {cell.model} seed {cell.seed}: {cell.status}"
             + (f" ({cell.message})" if cell.message else "") + _brief(cell))

    configs = [cell_config(grid, c.model, c.seed, per_model[c.model]) for c in cells]
    try:
        if jobs == 1:
            for cell, cfg in zip(cells, configs):
                run_cell(cell, cfg)
                report_done(cell)
        else:
            # progress bars of several processes would overwrite each other (progress is not compared)
            configs = [dataclasses.replace(cfg, progress=False) for cfg in configs]
            _run_parallel(cells, configs, jobs, max(1, resolve_threads(threads) // jobs), report_done)
    finally:
        write_status(cells, status_path)  # also on Ctrl-C: the interrupted cell is recorded
    return cells


def _cell_process(cell: Cell, cfg: TrainConfig, threads: int, conn: multiprocessing.connection.Connection) -> None:
    """A spawned process's whole work: one cell, with `threads` threads; the updated cell goes back on conn."""
    set_threads(threads)
    try:
        run_cell(cell, cfg)
    except KeyboardInterrupt:
        pass  # run_cell marked it interrupted; the parent stops the grid
    conn.send(cell)
    conn.close()


def _run_parallel(cells: list[Cell], configs: list[TrainConfig], jobs: int, threads: int,
                  finished: Callable[[Cell], None]) -> None:
    """Run the cells `jobs` at a time, each in a fresh spawned process; `finished(cell)` as each ends.
    Cached cells are decided here, without a process."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch's thread pools
    todo = list(range(len(cells)))
    running: dict[Any, tuple[int, Any, Any]] = {}  # sentinel -> (index, process, receiving end)
    try:
        while todo or running:
            while todo and len(running) < jobs:
                i = todo.pop(0)
                cell, cfg = cells[i], configs[i]
                if config_difference(cfg, cell.run_dir) == [] and (cell.run_dir / "metrics.json").exists():
                    cell.status = "cached"
                    finished(cell)
                    continue
                recv, send = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=_cell_process, args=(cell, cfg, threads, send), daemon=True,
                                   name=f"canctr-{cell.model}-seed{cell.seed}")
                proc.start()
                send.close()  # the child holds the only sending end: EOF here once it exits
                cell.status = "running"
                running[proc.sentinel] = (i, proc, recv)
            if not running:  # every cell left was cached
                continue
            for sentinel in multiprocessing.connection.wait(list(running)):
                i, proc, recv = running.pop(sentinel)
                try:
                    result = recv.recv() if recv.poll() else None
                except (EOFError, OSError):
                    result = None
                recv.close()
                proc.join()
                if result is None:  # died before it could report: killed, out of memory, a crash
                    result = cells[i]
                    result.status = "failed"
                    result.message = f"its process ended with exit status {proc.exitcode} before reporting"
                cells[i] = result
                finished(result)
                if result.status == "interrupted":
                    raise KeyboardInterrupt
    finally:
        for i, proc, _ in running.values():  # Ctrl-C or an error here: stop the cells still training
            proc.terminate()
            proc.join()
            if cells[i].status == "running":
                cells[i].status = "interrupted"
                cells[i].message = "stopped; re-run to resume from the checkpoint"


def _brief(cell: Cell) -> str:
    if not cell.finished:
        return ""
    m = json.loads((cell.run_dir / "metrics.json").read_text())
    return f"  auc {m['auc']:.4f}  gauc {m['gauc']:.4f}  logloss {m['logloss']:.4f}"


def default_train_settings(data: Path, *, batch_size: int, eval_every: int | None,
                           checkpoint_every: int | None) -> dict[str, int]:
    """eval / checkpoint / log intervals from the training size: None = automatic (about 1/4 epoch)."""
    n_train = Schema.load(data).splits["train"]
    quarter = auto_interval(n_train, batch_size, 4)
    return {
        "eval_every": quarter if eval_every is None else eval_every,
        "checkpoint_every": quarter if checkpoint_every is None else checkpoint_every,
        "log_every": min(50, auto_interval(n_train, batch_size, 40)),  # about 40 loss points per epoch
    }


# ---- the report ------------------------------------------------------------------------------------------

PLOT_CAPTIONS = {
    "auc_by_model.png": "Test AUC per model; bars = std over seeds.",
    "auc_vs_params.png": "Test AUC against parameter count (log scale), the CAN paper's Figure 5 view.",
    "curves.png": "Training loss and held-out AUC against the training step; line = mean over seeds, "
                  "band = ±std.",
}


def _notes(schema: Schema, grid: Grid, ref: str | None, column: str | None, n_unfinished: int) -> list[str]:
    notes = []
    if n_unfinished:
        notes.append(f"{n_unfinished} of {len(grid.models) * len(grid.seeds)} cells are not finished (see "
                     "Cells); the summary covers the finished runs only.")
    notes.append(f"± is the sample standard deviation over seeds. Seed s is the training seed (initialisation "
                 f"and sample order); every seed uses the same prepared split (prepare seed {schema.seed}), "
                 "whereas the paper's 5 runs also re-draw the train/validation split.")
    notes.append("train samples/s: training throughput (evaluation excluded), mean over seeds, on the machine "
                 "under Setup; it moves with any other load on that machine.")
    if ref is not None and ref != "dnn":
        notes.append(f"× {ref}: parameters as a multiple of {ref}'s, the smallest model here (dnn is not in "
                     "the grid).")
    if column is not None:
        notes.append(f"Paper: {CITATION}. Its {column} column is shown beside {schema.dataset}: absolute AUCs "
                     "are comparable only on the paper's own data; model orderings and gaps are what carry "
                     "over. 'paper × DNN' is Table 2's parameter multiple (DNN-based models only).")
    return notes


def write_report(grid: Grid, cells: list[Cell], command: str | None = None) -> Path:
    """results.{csv,json}, summary.{csv,md}, the PNG plots and report.html in grid.out; returns the html."""
    out, schema = grid.out, Schema.load(grid.data)
    records = {(c.model, c.seed): load_run(c.run_dir) for c in cells if c.finished}
    rows = []
    for c in cells:
        rec = records.get((c.model, c.seed))
        metrics = {k: v for k, v in rec.metrics.items() if k not in ("model", "seed")} if rec else {}
        if "data_dir" in metrics:
            metrics["data_dir"] = shown(metrics["data_dir"])
        rows.append({"model": c.model, "seed": c.seed, "status": c.status, **metrics, "run_dir": shown(c.run_dir)})
    recs = list(records.values())
    summary = aggregate(recs, [r.model for r in recs])
    ref = add_param_multiples(summary)
    column = paper_column(schema.dataset)
    add_paper_columns(summary, column)
    columns = summary_columns(ref, column)
    notes = _notes(schema, grid, ref, column, len(cells) - len(recs))

    settings = {k: v for k, v in grid.train.items() if k != "progress"} | {"set": grid.overrides}
    machines = sorted({r.metrics.get("machine", "?") for r in recs})
    meta = {
        "dataset": schema.dataset, "data_dir": shown(grid.data), "protocol": schema.protocol,
        "prepare_seed": schema.seed, "splits": schema.splits, "models": grid.models, "seeds": grid.seeds,
        "train_settings": settings, "command": command, "machines": machines,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"), "canctr": __version__, "paper_column": column,
    }
    atomic_write_text(out / "results.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    atomic_write_text(out / "results.csv", to_csv(rows))
    atomic_write_text(out / "summary.csv", to_csv(summary, SUMMARY_CSV_FIELDS))
    title = f"canctr reproduce: {schema.dataset}"
    md = [f"# {title}", ""] + ([f"Command: `{command}`", ""] if command else [])
    md += [render_markdown(columns, summary)] + [f"{n}\n" for n in notes]
    atomic_write_text(out / "summary.md", "\n".join(md))

    groups: dict[str, list[RunRecord]] = {}
    for r in recs:
        groups.setdefault(r.model, []).append(r)
    pngs = make_plots(summary, groups, out)
    n_paper = 2 if column else 0
    seeds_label = f"this run: {len(grid.seeds)} seed{'s' if len(grid.seeds) > 1 else ''} on {schema.dataset}"
    per_seed_headers = ["model", "seed", "AUC", "GAUC", "logloss", "params", "train samples/s", "train s",
                        "device"]
    per_seed_rows = [[r.model, str(r.seed), f"{r.metrics['auc']:.4f}", f"{r.metrics['gauc']:.4f}",
                      f"{r.metrics['logloss']:.4f}", f"{r.metrics['n_params']:,}",
                      f"{r.metrics['train_samples_per_second']:,.0f}", f"{r.metrics['train_seconds']:.1f}",
                      str(r.metrics.get("device", ""))] for r in recs]
    cell_rows = [[c.model, str(c.seed), (c.status, f"status-{c.status}"), f"{c.seconds:.1f}",
                  c.message or str(c.run_dir.relative_to(out))] for c in cells]
    html = render(
        title=title,
        subtitle=f"{len(grid.models)} models × {len(grid.seeds)} seeds; {schema.splits.get('train', 0):,} train / "
                 f"{schema.splits.get('test', 0):,} test samples; generated {meta['generated']}",
        summary_html=summary_table(columns, summary, n_paper, seeds_label, f"CAN paper (WSDM 2022), {column}"),
        notes=notes,
        figures=[(p, PLOT_CAPTIONS[p.name]) for p in pngs],
        per_seed=(per_seed_headers, per_seed_rows),
        cells=(["model", "seed", "status", "seconds (this call)", "note / run dir"], cell_rows),
        meta=[("dataset", f"{schema.dataset} (protocol {schema.protocol}, prepare seed {schema.seed})"),
              ("data", shown(grid.data)), ("command", command or "–"),
              ("training", json.dumps(settings, sort_keys=True)),
              ("machine", "; ".join(machines) or "–"), ("canctr", __version__),
              ("paper", CITATION if column else "no paper column for this dataset")],
    )
    atomic_write_text(out / "report.html", html)
    return out / "report.html"


def reproduce(grid: Grid, command: str | None = None, echo: Callable[[str], None] = print, *, jobs: int = 1,
              threads: int | None = None) -> tuple[list[Cell], Path]:
    """Run the grid (`jobs` cells at a time, see run_grid), then write the tables, plots and report.html
    into grid.out."""
    cells = run_grid(grid, echo, jobs=jobs, threads=threads)
    return cells, write_report(grid, cells, command)
