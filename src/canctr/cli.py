"""`canctr` command line: thin wrappers over library functions.

    canctr prepare {amazon,sequences,dien} ...   raw data -> encoded arrays + schema.json
    canctr train --data DIR --model NAME --out RUN_DIR
    canctr evaluate --run RUN_DIR [--data DIR]
    canctr models
    canctr reproduce --data DIR [--models all|LIST] [--seeds 5] [--out REPORT_DIR]   grid + report.html
    canctr compare RUN_DIR... [--out FILE.md|.csv]
    canctr demo [--out DIR]                      synthetic co-action world: DNN/DIN/CAN vs the Bayes AUC
    canctr export --run RUN_DIR --format onnx|torchscript --out DIR   model file + manifest.json + vocab/
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any

from canctr.config import add_optimizer_argument


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set coaction.orders=2 --set mlp=[256,128]`: values are JSON, falling back to plain strings."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def cmd_models(args: argparse.Namespace) -> int:
    from canctr.models import list_models

    entries = list_models()
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {e.description}  [{e.paper}]")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from canctr.train.loop import TrainConfig, fit

    try:
        cfg = TrainConfig(
            data=args.data, model=args.model, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size, lr=args.lr, optimizer=args.optimizer, seed=args.seed,
            device=args.device, max_len=args.max_len, eval_max_len=args.eval_max_len, bucket=args.bucket,
            model_config=parse_overrides(args.set),
            checkpoint_every=args.checkpoint_every, eval_every=args.eval_every, progress=not args.no_progress,
        )
    except ValueError as e:  # name the command-line option, not the dataclass field
        raise ValueError(re.sub(r"TrainConfig\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(e))) from None
    m = fit(cfg, resume=args.resume)
    print(
        f"{m['model']} seed {m['seed']}: auc {m['auc']:.4f}  gauc {m['gauc']:.4f}  logloss {m['logloss']:.4f}  "
        f"params {m['n_params']:,}  {m['train_samples_per_second']:,.0f} samples/s  -> {args.out}/metrics.json"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from canctr.train.loop import evaluate_run

    m = evaluate_run(args.run, args.data, device=args.device, batch_size=args.batch_size)
    print(json.dumps(m, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from canctr.data.cli_prepare import register as register_prepare
    from canctr.report.cli_report import register as register_report

    parser = argparse.ArgumentParser(prog="canctr", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    register_prepare(sub)
    register_report(sub)  # reproduce, compare

    p = sub.add_parser("train", help="train a model on a prepared dataset and evaluate it")
    p.add_argument("--data", required=True, help="prepared directory (has schema.json)")
    p.add_argument("--model", required=True, help="registry name, see `canctr models`")
    p.add_argument("--out", required=True, help="run directory for checkpoint/, metrics.json, train.log")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    add_optimizer_argument(p)
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--max-len", type=int, default=100, help="training history cut-off (most recent)")
    p.add_argument("--eval-max-len", type=int, default=0, help="evaluation cut-off; 0 = all stored (official code)")
    p.add_argument("--bucket", type=int, default=20,
                   help="sort windows of BUCKET batches by history length (official iterator); 0 = off")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model config override (JSON value), e.g. --set coaction.orders=2")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between mid-epoch checkpoints")
    p.add_argument("--eval-every", type=int, default=0, help="steps between extra evaluations (curves)")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint if present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-score a saved run on the held-out split")
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=None, help="prepared directory (default: the run's own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=1024)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="list the registered models with their papers")
    p.set_defaults(func=cmd_models)

    from canctr.bench import register as register_bench

    register_bench(sub)

    from canctr.demo import register as register_demo

    register_demo(sub)

    from canctr.serve.cli import register as register_export

    register_export(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["prepare"]:  # numpy only: skip the other commands' imports (torch: ~1 s and ~300 MB)
        from canctr.data.cli_prepare import register as register_prepare

        parser = argparse.ArgumentParser(prog="canctr")
        register_prepare(parser.add_subparsers(dest="command", required=True))
    else:
        parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        if os.environ.get("CANCTR_DEBUG"):
            raise
        # user-facing errors (bad files, bad config, divergence) without a traceback
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"canctr {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
