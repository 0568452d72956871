"""`canctr train`, `canctr evaluate`, `canctr models`: over `canctr.train.loop` and the model registry."""

from __future__ import annotations

import argparse
import json
import re
import sys

from canctr.cli.args import (
    add_device_argument,
    add_no_progress_argument,
    add_optimizer_argument,
    add_set_argument,
    add_threads_argument,
    parse_overrides,
)
from canctr.cli.launch import add_launch_arguments


def cmd_models(args: argparse.Namespace) -> int:
    from canctr.models import list_models

    entries = list_models()
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {e.description}  [{e.paper}]")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from canctr.cli.launch import LAUNCH_OPTIONS, launch
    from canctr.train.distributed import is_main_process, launched
    from canctr.train.loop import TrainConfig, fit

    try:
        cfg = TrainConfig(
            data=args.data, model=args.model, out=args.out, epochs=args.epochs, batch_size=args.batch_size,
            eval_batch_size=args.eval_batch_size, lr=args.lr, optimizer=args.optimizer, seed=args.seed,
            device=args.device, max_len=args.max_len, eval_max_len=args.eval_max_len, bucket=args.bucket,
            shuffle_blocks=args.shuffle_blocks,
            model_config=parse_overrides(args.set),
            checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints,
            eval_every=args.eval_every, eval_at_samples=tuple(args.eval_at_samples), progress=not args.no_progress,
            shard_tables=args.shard_tables or "", table_optimizer=args.table_optimizer or "", table_lr=args.table_lr,
            shard_init=args.shard_init,
        )
    except ValueError as e:  # name the command-line option, not the dataclass field
        raise ValueError(re.sub(r"TrainConfig\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), str(e))) from None
    wants_launch = args.nproc is not None or any(getattr(args, o) is not None for o in LAUNCH_OPTIONS)
    if cfg.shard_tables:
        from canctr.train.sharded import require_torchrec

        if not launched() and (args.nproc or 0) * (args.nnodes or 1) < 2:
            raise ValueError("--shard-tables shards the tables over the ranks of a data-parallel job: add --nproc N "
                             "(N >= 2), or run it under torchrun")
        if args.resume or args.max_restarts:
            raise ValueError("--shard-tables runs cannot resume (--resume, --max-restarts): the fused table "
                             "optimizer's state is not checkpointed")
        require_torchrec()
    if wants_launch and not launched():  # under torchrun already, the launcher options are torchrun's: ignored
        return launch(args, getattr(args, "argv", None) or sys.argv[1:])
    m = fit(cfg, resume=args.resume)
    if not is_main_process():
        return 0
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add `train`, `evaluate` and `models` to the `canctr` subcommands."""
    p = sub.add_parser("train", help="train a model on a prepared dataset and evaluate it")
    p.add_argument("--data", required=True, help="prepared directory (has schema.json)")
    p.add_argument("--model", required=True, help="registry name, see `canctr models`")
    p.add_argument("--out", required=True, help="run directory for checkpoint/, metrics.json, train.log")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128,
                   help="the global batch: under torchrun each of the N ranks takes BATCH_SIZE / N a step")
    p.add_argument("--eval-batch-size", type=int, default=1024)
    p.add_argument("--lr", type=float, default=1e-3)
    add_optimizer_argument(p)
    p.add_argument("--seed", type=int, default=3)
    add_device_argument(p)
    p.add_argument("--max-len", type=int, default=100, help="training history cut-off (most recent)")
    p.add_argument("--eval-max-len", type=int, default=0, help="evaluation cut-off; 0 = all stored (official code)")
    p.add_argument("--bucket", type=int, default=20,
                   help="sort windows of BUCKET batches by history length (official iterator); 0 = off")
    p.add_argument("--shuffle-blocks", type=int, default=0, metavar="B",
                   help="data larger than memory: build each shuffle window (1M samples) from B contiguous blocks "
                        "in a seeded order, so reads stay nearly sequential; 0 = windows strided over the split")
    add_set_argument(p, "model config override (JSON value), e.g. --set coaction.orders=2")
    p.add_argument("--checkpoint-every", type=int, default=0, help="steps between mid-epoch checkpoints")
    p.add_argument("--keep-checkpoints", type=int, default=2, metavar="K",
                   help="checkpoints kept: the newest and K-1 older ones that --resume falls back on (default 2)")
    p.add_argument("--eval-every", type=int, default=0, help="steps between extra evaluations (curves)")
    p.add_argument("--eval-at-samples", type=int, nargs="+", default=[], metavar="N",
                   help="extra evaluations once N training samples have been seen, e.g. 10000 40000 200000 "
                        "(a learning curve; logged to curves)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in RUN_DIR that verifies, if there is one")
    g = p.add_argument_group("sharded embedding tables (torchrec; see docs/distributed.md)")
    g.add_argument("--shard-tables", choices=("row", "table"), default=None,
                   help="shard the embedding tables over the ranks (row-wise or table-wise) with torchrec, the "
                        "dense part data-parallel; needs --nproc N >= 2 and `pip install 'canctr[sharded]'`")
    g.add_argument("--table-optimizer", choices=("adagrad", "sgd"), default=None,
                   help="the embedding tables' optimizer (sparse row updates), the rest keeps --optimizer; "
                        "sharded tables: fbgemm's fused one, default adagrad")
    g.add_argument("--table-lr", type=float, default=0.0, help="the table optimizer's learning rate (0: --lr)")
    g.add_argument("--shard-init", choices=("blocks", "copy"), default="blocks",
                   help="the sharded tables' first rows: blocks (drawn shard by shard; no rank holds a whole table) "
                        "or copy (the plain run's initial weights; every rank builds the whole tables once)")
    add_no_progress_argument(p)
    add_threads_argument(p)
    add_launch_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-score a saved run on the held-out split")
    p.add_argument("--run", required=True)
    p.add_argument("--data", default=None, help="prepared directory (default: the run's own)")
    add_device_argument(p, documented=False)
    p.add_argument("--batch-size", type=int, default=1024)
    add_threads_argument(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("models", help="list the registered models with their papers")
    p.set_defaults(func=cmd_models)
