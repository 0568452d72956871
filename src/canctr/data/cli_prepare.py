"""`canctr prepare {amazon,sequences,dien}`: argparse wiring over `canctr.data.pipeline`.

`canctr.cli` calls `register(sub)` with its subparsers; each leaf sets `func(args) -> int`, which runs
the pipeline, prints a short summary and returns 0, or prints the error and returns 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from canctr.data.pipeline import (
    PrepareOptions,
    format_summary,
    prepare_amazon,
    prepare_dien,
    prepare_sequences,
)
from canctr.data.schema import Schema


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `prepare` and its three formats to the `canctr` subcommands."""
    prepare = subparsers.add_parser(
        "prepare",
        help="raw data -> encoded arrays + schema.json",
        description="Turn raw data into the encoded arrays + schema.json that training reads.",
    )
    formats = prepare.add_subparsers(dest="format", required=True)

    p = formats.add_parser("amazon", help="McAuley 2014 reviews_<Cat>_5.json + meta_<Cat>.json")
    p.add_argument("--reviews", required=True, help="reviews_<Cat>[_5].json[.gz], one JSON review per line")
    p.add_argument("--meta", required=True, help="meta_<Cat>.json[.gz], one Python-literal dict per line")
    _add_common(p, protocol=True)
    p.set_defaults(func=_leaf(lambda a: prepare_amazon(a.reviews, a.meta, a.out, _options(a))))

    p = formats.add_parser("sequences", help="S3-Rec <Name>.txt + <Name>_item2attributes.json (+ times)")
    p.add_argument(
        "--sequences", required=True, help="<Name>.txt[.gz]: 'uid item_1 ... item_n' in time order"
    )
    p.add_argument("--attributes", required=True, help="<Name>_item2attributes.json[.gz]: {item: [attr ids]}")
    p.add_argument("--times", help="<Name>_with_time_intervals.txt[.gz]: 'uid items<TAB>gaps' (seconds)")
    p.add_argument(
        "--category-rule",
        choices=("last", "first"),
        default="last",
        help="category = last attribute id (deepest category; default) or first (brand if any)",
    )
    _add_common(p, protocol=True)
    p.set_defaults(
        func=_leaf(
            lambda a: prepare_sequences(
                a.sequences, a.attributes, a.out, _options(a), times=a.times, category_rule=a.category_rule
            )
        )
    )

    p = formats.add_parser("dien", help="a folder of DIEN's processed files (local_*, reviews-info, ...)")
    p.add_argument("--dir", required=True, help="folder with local_{train,test}_splitByUser or local_test")
    p.add_argument(
        "--vocab-pickle",
        action="append",
        default=[],
        metavar="PATH",
        help="extra DIEN *_voc.pkl to report coverage of (repeatable; never used for encoding)",
    )
    _add_common(p, protocol=False)
    p.set_defaults(
        func=_leaf(lambda a: prepare_dien(a.dir, a.out, _options(a), vocab_pickles=a.vocab_pickle))
    )


def _add_common(p: argparse.ArgumentParser, *, protocol: bool) -> None:
    d = PrepareOptions()
    p.add_argument("--out", required=True, help="output directory")
    if protocol:
        p.add_argument(
            "--targets",
            choices=("last", "all"),
            default=d.protocol,
            help="last: each user's last event (DIEN, default); all: every event after the first",
        )
    p.add_argument("--max-len", type=int, default=d.max_len, help="most recent history positions kept")
    p.add_argument(
        "--test-max-len",
        type=int,
        default=d.test_max_len,
        help="history positions kept in test (default: --max-len)",
    )
    p.add_argument("--test-fraction", type=float, default=d.test_fraction, help="per-user test probability")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed lines")


def _options(a: argparse.Namespace) -> PrepareOptions:
    return PrepareOptions(
        protocol=getattr(a, "targets", "last"),
        max_len=a.max_len,
        test_max_len=a.test_max_len,
        test_fraction=a.test_fraction,
        seed=a.seed,
        skip_bad_rows=a.skip_bad_rows,
    )


def _leaf(run: Callable[[argparse.Namespace], Schema]) -> Callable[[argparse.Namespace], int]:
    def func(args: argparse.Namespace) -> int:
        start = time.perf_counter()
        try:
            schema = run(args)
        except (FileNotFoundError, ValueError) as e:  # DataFormatError is a ValueError
            print(f"canctr prepare {args.format}: error: {e}", file=sys.stderr)
            return 2
        print(format_summary(schema))
        print(f"  wrote {args.out} in {time.perf_counter() - start:.1f}s")
        return 0

    return func
