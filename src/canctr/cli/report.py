"""`canctr reproduce` and `canctr compare`: argparse wiring over `canctr.report`.

`canctr.cli.main` calls `register(sub)` with its subparsers; each command sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from canctr.cli.args import (
    add_device_argument,
    add_no_progress_argument,
    add_optimizer_argument,
    add_set_argument,
    add_threads_argument,
    parse_overrides,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reproduce",
        help="train a model x seed grid (resumable) and write tables, plots and report.html",
        description="Train every requested model for every seed on one prepared dataset, then write "
                    "results.{csv,json}, summary.{csv,md}, PNG plots and a self-contained report.html "
                    "beside the CAN paper's numbers. Re-running skips finished cells and resumes "
                    "interrupted ones.",
    )
    p.add_argument("--data", required=True, help="prepared directory (has schema.json)")
    p.add_argument("--models", default="all", help="'all' (every registered model) or a comma list, e.g. dnn,can-dnn")
    p.add_argument("--seeds", default="5", help="a count N (seeds 1..N) or a comma list, e.g. 1,2,3")
    p.add_argument("--out", default=None, help="report directory (default: reports/<data dir name>)")
    add_device_argument(p)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    add_optimizer_argument(p)
    add_set_argument(p, "model config override (JSON value), e.g. --set mlp=[64,32]; applied to every model whose "
                        "config has KEY, an error when none has it")
    p.add_argument("--eval-every", type=int, default=None,
                   help="steps between held-out evaluations for the AUC curves (default: about 1/4 epoch; 0: "
                        "only at epoch ends)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between resumable checkpoints (default: about 1/4 epoch; 0: epoch ends only)")
    add_no_progress_argument(p, "no progress bars")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N cells at a time, each in its own process with max(1, threads // N) threads "
                        "(default 1: one after the other); the metrics are those of serial runs with as many "
                        "threads per cell")
    add_threads_argument(p, "CPU threads for the whole grid, divided among --jobs cells (default: OMP_NUM_THREADS, "
                            "else the cores available to this process: affinity and cgroup CPU quota)")
    p.set_defaults(func=cmd_reproduce)

    p = subparsers.add_parser("compare", help="a table of finished runs: mean ± std per model over seeds")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (with metrics.json)")
    p.add_argument("--out", default=None, help="also write the table to FILE.md or FILE.csv")
    p.set_defaults(func=cmd_compare)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from canctr.report.experiments import Grid, default_train_settings, parse_seeds, reproduce, resolve_models, shown

    if args.jobs < 1:
        raise ValueError(f"--jobs must be a positive number of cells at a time, got {args.jobs}")
    data = Path(args.data).resolve()
    out = Path(args.out or Path("reports") / data.name).resolve()
    models, seeds = resolve_models(args.models), parse_seeds(args.seeds)
    overrides = parse_overrides(args.set)
    train = {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": args.optimizer,
        "device": args.device,
        "progress": not args.no_progress,
        **default_train_settings(data, batch_size=args.batch_size, eval_every=args.eval_every,
                                 checkpoint_every=args.checkpoint_every),
    }
    command = shlex.join([
        "canctr", "reproduce", "--data", shown(data), "--models", ",".join(models),
        "--seeds", ",".join(map(str, seeds)), "--out", shown(out), "--device", args.device,
        "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--optimizer", args.optimizer,
        "--eval-every", str(train["eval_every"]), "--checkpoint-every", str(train["checkpoint_every"]),
        *[a for k, v in overrides.items() for a in ("--set", f"{k}={json.dumps(v, separators=(',', ':'))}")],
    ])
    cells, report = reproduce(Grid(data, out, models, seeds, train, overrides), command=command, jobs=args.jobs,
                              threads=args.threads)
    failed = [c for c in cells if c.status == "failed"]
    print(f"report: {report}" + (f"  ({len(failed)} failed cells, see status.json)" if failed else ""))
    return 1 if failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    from canctr.report.summary import compare, render_markdown, summary_columns, to_csv

    path = Path(args.out) if args.out else None
    if path is not None and path.suffix not in (".md", ".csv"):
        raise ValueError(f"--out {path}: expected a .md or .csv file name")
    summary, ref = compare(args.runs)
    plain = ref is None or "[" not in ref  # a long "model [config]" label goes below the table instead
    table = render_markdown(summary_columns(ref if plain else "ref", None), summary)
    if ref is not None and ref != "dnn":
        table += f"\n× {ref if plain else 'ref'}: parameters as a multiple of {ref}'s (no plain dnn group)\n"
    print(table, end="")
    if path is not None:
        path.write_text(table if path.suffix == ".md" else to_csv(summary))
    return 0
