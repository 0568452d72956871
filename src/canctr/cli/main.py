"""`canctr` command line: thin wrappers over library functions.

    canctr prepare {amazon,sequences,dien,movielens,taobao,synthetic,table} ...   raw data -> arrays + schema.json
    canctr train --data DIR --model NAME --out RUN_DIR
    canctr evaluate --run RUN_DIR [--data DIR]
    canctr models
    canctr reproduce --data DIR [--models all|LIST] [--seeds 5] [--out REPORT_DIR]   grid + report.html
    canctr compare RUN_DIR... [--out FILE.md|.csv]
    canctr bench --data DIR [--sections ...]     training / inference / loader / pipeline throughput and memory
    canctr demo [--out DIR]                      synthetic co-action world: DNN/DIN/CAN vs the Bayes AUC
    canctr export --run RUN_DIR --format onnx|torchscript --out DIR   model file + manifest.json + vocab/
    canctr predict --run RUN_DIR --input PATH... --out scores.parquet
    canctr serve --run RUN_DIR [--engine torch|onnx]

`--threads N` on the commands that compute (train, evaluate, bench, predict, serve, reproduce) is applied
here, once, before the command runs (`canctr.threads`).

Standard library only at import time: the command groups are imported when the parser is built, and
`canctr prepare` builds only its own group (numpy; no torch: ~1 s and ~300 MB saved).
"""

from __future__ import annotations

import argparse
import os
import sys

DESCRIPTION = __doc__.split("\n")[0]


def build_parser() -> argparse.ArgumentParser:
    """The full `canctr` parser, every command group registered."""
    from canctr.cli import bench, data, demo, report, serve, train

    parser = argparse.ArgumentParser(prog="canctr", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    data.register(sub)  # prepare
    report.register(sub)  # reproduce, compare
    train.register(sub)  # train, evaluate, models
    bench.register(sub)
    demo.register(sub)
    serve.register(sub)  # export, serve, predict
    return parser


def _prepare_parser() -> argparse.ArgumentParser:
    """`canctr prepare ...` only: numpy and the data package, never torch."""
    from canctr.cli import data

    parser = argparse.ArgumentParser(prog="canctr")
    data.register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = _prepare_parser() if argv[:1] == ["prepare"] else build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv)  # `canctr train --nproc N` re-runs its own command line under torchrun
    try:
        if getattr(args, "applies_threads", False):  # the commands with --threads (args.add_threads_argument)
            from canctr.threads import set_threads

            set_threads(args.threads)
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        if os.environ.get("CANCTR_DEBUG"):
            raise
        # user-facing errors (bad files, bad config, divergence; checkpoint.CheckpointError, a ValueError, for
        # damaged checkpoints and unwritable or full run directories) without a traceback
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"canctr {args.command}: error: {msg}", file=sys.stderr)
        return 2
