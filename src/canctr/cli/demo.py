"""`canctr demo`: argparse wiring over `canctr.demo.run_demo` (the synthetic co-action world, DNN/DIN/CAN vs
the Bayes AUC)."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

import canctr.demo
from canctr.cli.args import add_device_argument
from canctr.data.formats.synthetic import WorldConfig
from canctr.demo import DEMO_EPOCHS, DEMO_MODELS, DEMO_THREADS, run_demo


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `demo` to the `canctr` subcommands."""
    d = WorldConfig()
    p = subparsers.add_parser(
        "demo",
        help="synthetic co-action world: DNN vs DIN vs CAN against the known Bayes AUC (no files needed)",
        description=canctr.demo.__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("--out", default=None, help="keep the prepared data and runs here (default: a temp dir)")
    p.add_argument("--models", default=",".join(DEMO_MODELS), help="comma-separated registry names")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    p.add_argument("--seed", type=int, default=3, help="split, negatives and training seed")
    p.add_argument("--world-seed", type=int, default=d.seed, help="seed of the world itself")
    p.add_argument("--users", type=int, default=d.users)
    p.add_argument("--items", type=int, default=d.items)
    add_device_argument(p)
    p.add_argument("--threads", type=int, default=DEMO_THREADS, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    world = dataclasses.replace(WorldConfig(), seed=args.world_seed, users=args.users, items=args.items)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = run_demo(
        args.out,
        models=models,
        world=world,
        epochs=args.epochs,
        seed=args.seed,
        device=args.device,
        threads=args.threads or None,
    )
    return 0 if np.isfinite([r["auc"] for r in rows]).all() else 1
