"""`canctr export --run RUN_DIR --format onnx|torchscript --out DIR [--data DIR] [--force]` and
`canctr serve --run RUN_DIR [--engine torch|onnx] [--export DIR] [--host H --port P --workers N] [limits]` and
`canctr predict --run RUN_DIR --input PATH... --out scores.parquet [--engine torch|onnx] [--batch-size N]`:
argparse wiring over `canctr.serve` (export.py, predict.py, scorer.py, app.py)."""

from __future__ import annotations

import argparse

from canctr.cli.args import add_no_progress_argument, add_threads_argument
from canctr.serve.export import FORMATS


def cmd_export(args: argparse.Namespace) -> int:
    from canctr.serve.export import export_run

    m = export_run(args.run, args.format, args.out, data=args.data, force=args.force)
    diff = m["parity_max_abs_diff"]
    check = "not checked (onnxruntime missing)" if diff is None else f"max abs diff vs eager {diff:.2e}"
    opset = f", opset {m['opset']}" if m["opset"] else ""
    print(f"{m['model']} -> {args.out}/{m['file']} ({m['format']}{opset}; {check}) + manifest.json, "
          f"{sum('file' in v for v in m['vocab'].values())} vocabularies")
    return 0


def worker_threads(threads: int, workers: int) -> int:
    """Each of `workers` processes' share of `threads` intra-op threads, at least 1."""
    return max(1, threads // workers)


def cmd_serve(args: argparse.Namespace) -> int:
    import atexit
    import os
    import shutil
    import sys

    try:
        import uvicorn

        from canctr.serve.app import Loaded, create_app
    except ImportError as e:
        raise ValueError(f"canctr serve needs fastapi and uvicorn (pip install -e '.[serve]'): {e}") from None
    from canctr.serve.scorer import Limits, ServeConfig, export_for_workers

    for flag in ("workers", "port", "max_candidates", "max_history", "max_batch", "max_body_bytes"):
        if getattr(args, flag) < (0 if flag == "port" else 1):
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {getattr(args, flag)}")
    if args.export and args.engine != "onnx":
        raise ValueError("--export is an ONNX export directory: use it with --engine onnx")
    config = ServeConfig(run=args.run, engine=args.engine, export=args.export, data=args.data, workers=args.workers,
                         limits=Limits(max_candidates=args.max_candidates, max_history=args.max_history,
                                       max_batch=args.max_batch, max_body_bytes=args.max_body_bytes))
    common = dict(host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=30)
    if args.workers == 1:
        loaded = Loaded.load(config)  # a bad run fails here, before the port is bound
        info = loaded.scorer.info
        print(f"canctr serve: {info['model']} ({info['engine']}, checkpoint {info['checkpoint']['sha256'][:12]}) "
              f"on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
        uvicorn.run(create_app(config, loaded=loaded), **common)
        return 0
    if args.engine == "torch":
        Loaded.load(config)  # check the run once here, before the workers start (onnx: the export checks it)
    config, tmp = export_for_workers(config)
    if tmp:
        atexit.register(shutil.rmtree, tmp, True)
    os.environ["CANCTR_SERVE_CONFIG"] = config.to_json()
    if args.threads is None:  # the cores shared among the workers, not each taking them all (canctr/threads.py)
        import torch

        os.environ["OMP_NUM_THREADS"] = str(worker_threads(torch.get_num_threads(), args.workers))
    print(f"canctr serve: {args.workers} workers on http://{args.host}:{args.port} (SIGHUP reloads them)",
          file=sys.stderr, flush=True)
    uvicorn.run("canctr.serve.app:app_from_env", factory=True, workers=args.workers, **common)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from canctr.serve.predict import format_summary, predict

    summary = predict(args.run, args.input, args.out, engine=args.engine, export_dir=args.export, data=args.data,
                      batch_size=args.batch_size, fmt=args.format, list_sep=args.list_sep, keep=args.keep,
                      progress=not args.no_progress)
    print(format_summary(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add `export`, `serve` and `predict` to the `canctr` subcommands."""
    p = sub.add_parser("export", help="export a trained run to ONNX or TorchScript with a manifest")
    p.add_argument("--run", required=True, help="run directory (has checkpoint/)")
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, help="export directory (model file, manifest.json, vocab/)")
    p.add_argument("--data", default=None, help="prepared data directory (default: the run's config.json)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=cmd_export)

    s = sub.add_parser("serve", help="serve a trained run over HTTP (FastAPI + uvicorn): POST /v1/score")
    s.add_argument("--run", required=True, help="run directory (has checkpoint/)")
    s.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="eager torch, or ONNX Runtime (the run is exported at start unless --export)")
    s.add_argument("--export", default=None, help="--engine onnx: an existing `canctr export --format onnx` directory")
    s.add_argument("--data", default=None, help="prepared data whose vocabularies to use (default: the run's)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="worker processes (each loads the model)")
    s.add_argument("--max-candidates", type=int, default=1000, help="candidates per user (default 1000)")
    s.add_argument("--max-history", type=int, default=1000,
                   help="ids per sequence field in a request (default 1000; the last max_len are used)")
    s.add_argument("--max-batch", type=int, default=64, help="users per /v1/score/batch request (default 64)")
    s.add_argument("--max-body-bytes", type=int, default=4 << 20, help="request body size (default 4 MiB)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_threads_argument(s, "intra-op CPU threads of each worker process (default: OMP_NUM_THREADS, else the "
                            "cores available, divided among the --workers)")
    s.set_defaults(func=cmd_serve)
    p = sub.add_parser("predict", help="score new rows of raw ids with a trained run (Parquet out)")
    p.add_argument("--run", required=True, help="run directory (has checkpoint/)")
    p.add_argument("--input", required=True, nargs="+", help="Parquet, CSV / TSV or JSON-lines files or globs")
    p.add_argument("--out", required=True, help="output Parquet file: the kept columns and `score`, in input order")
    p.add_argument("--engine", default="torch", choices=["torch", "onnx"], help="eager torch or ONNX Runtime")
    p.add_argument("--export", default=None, help="an ONNX export of the run (canctr export) for --engine onnx "
                                                  "(default: exported on the fly)")
    p.add_argument("--data", default=None, help="prepared data directory with the vocabularies "
                                                "(default: the run's config.json)")
    p.add_argument("--batch-size", type=int, default=4096, help="rows per scored batch (memory is bounded by it)")
    p.add_argument("--format", default=None, help="input format when the file name does not say it "
                                                  "(parquet, csv, tsv, json)")
    p.add_argument("--list-sep", default="|", help="separator of sequence ids in text inputs (as at prepare)")
    p.add_argument("--keep", nargs="*", default=None, metavar="COLUMN",
                   help="input columns copied beside the score (default: the spec's group and label columns)")
    add_no_progress_argument(p)
    add_threads_argument(p)
    p.set_defaults(func=cmd_predict)
