"""Argument helpers shared by the command groups: the same flag, default and help text wherever it appears.

Standard library only (imported on the torch-free `canctr prepare` path too).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from canctr.config import OPTIMIZERS

DEVICE_HELP = "auto | cpu | cuda | cuda:N"


def add_device_argument(parser: argparse.ArgumentParser, *, documented: bool = True) -> None:
    """`--device` (default auto); `documented=False` keeps the commands that list it without a help text."""
    parser.add_argument("--device", default="auto", **({"help": DEVICE_HELP} if documented else {}))


def add_optimizer_argument(parser: argparse.ArgumentParser) -> None:
    """`--optimizer`, the same for train, reproduce and bench."""
    parser.add_argument("--optimizer", default="adam", choices=OPTIMIZERS,
                        help="adam: dense (the official code's); lazy_adam: only the embedding rows a batch touches")


def _positive_threads(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of threads, got {text!r}")
    return n


def add_threads_argument(parser: argparse.ArgumentParser, help: str | None = None) -> None:
    """`--threads N`: the intra-op threads of a command that computes; `canctr.cli.main` applies it (with
    `canctr.threads.set_threads`) before the command runs. Default: OMP_NUM_THREADS, else the cores this
    process may use (affinity and cgroup quota)."""
    parser.add_argument("--threads", type=_positive_threads, default=None, metavar="N",
                        help=help or "intra-op CPU threads (default: OMP_NUM_THREADS, else the cores available "
                                     "to this process: affinity and cgroup CPU quota)")
    parser.set_defaults(applies_threads=True)


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """`--set KEY=VALUE` (repeatable), read by `parse_overrides`."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def add_no_progress_argument(parser: argparse.ArgumentParser, help: str = "no progress bar") -> None:
    parser.add_argument("--no-progress", action="store_true", help=help)


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
