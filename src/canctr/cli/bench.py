"""`canctr bench`: argparse wiring over `canctr.bench` (training / inference / loader / pipeline throughput and
memory, recorded with the machine and the command)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from canctr.bench import DEFAULT_MODELS, SECTIONS, run, to_markdown, write_results
from canctr.cli.args import add_device_argument, add_optimizer_argument, add_threads_argument


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `bench` to the `canctr` subcommands."""
    p = subparsers.add_parser("bench", help="training/inference/loader/pipeline throughput and memory")
    p.add_argument("--data", required=True, help="prepared directory")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    add_device_argument(p, documented=False)
    p.add_argument("--large-batch", type=int, default=0, help="second batch size (default 1024 CPU, 4096 GPU)")
    add_optimizer_argument(p)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--pipeline-reviews", type=int, nargs="*", default=[],
                   help="also time `prepare amazon` on generated files of N reviews (several N: memory scaling)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to measure")
    p.add_argument("--workdir", default="/tmp/canctr-bench", help="where generated raw files are cached")
    p.add_argument("--out", default=None, help="results file stem (default benchmarks/results/bench_<device>)")
    add_threads_argument(p, "intra-op CPU threads of every measured cell (default: OMP_NUM_THREADS, else the "
                            "cores available to this process)")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    r = run(args.data, models=args.models, device=args.device, large_batch=args.large_batch, optimizer=args.optimizer,
            warmup=args.warmup, steps=args.steps, candidates=args.candidates, requests=args.requests,
            pipeline_reviews=args.pipeline_reviews, sections=args.sections, workdir=args.workdir,
            command="canctr bench " + " ".join(sys.argv[2:]))
    stem = Path(args.out or f"benchmarks/results/bench_{r['device'].split(':')[0]}")  # cuda:0 -> bench_cuda
    write_results(stem, r, to_markdown(r))
    print(f"wrote {stem}.json and {stem}.md")
    return 0
