"""`canctr prepare {amazon,sequences,dien,movielens,taobao,synthetic,table}`: argparse wiring over the pipelines.

`canctr.cli.main` calls `register(sub)` with its subparsers; each leaf sets `func(args) -> int`, which runs
the pipeline, prints a short summary and returns 0, or prints the error and returns 2 for bad input.
numpy and canctr.data only: `canctr prepare` never imports torch (pyarrow only for `prepare table`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable

from canctr.data.formats.amazon import prepare_amazon
from canctr.data.formats.dien import prepare_dien
from canctr.data.formats.movielens import DEFAULT_MAX_LEN as MOVIELENS_MAX_LEN
from canctr.data.formats.movielens import prepare_movielens
from canctr.data.formats.sequences import prepare_sequences
from canctr.data.formats.synthetic import WorldConfig, prepare_synthetic
from canctr.data.formats.taobao import PROTOCOL_DEFAULTS, prepare_taobao
from canctr.data.samples import PrepareOptions
from canctr.data.schema import Schema
from canctr.data.summary import format_summary


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `prepare` and its formats to the `canctr` subcommands."""
    prepare = subparsers.add_parser(
        "prepare",
        help="raw data -> encoded arrays + schema.json",
        description="Turn raw data into the encoded arrays + schema.json that training reads.",
    )
    formats = prepare.add_subparsers(dest="format", required=True)

    p = formats.add_parser("amazon", help="McAuley 2014 reviews_<Cat>_5.json + meta_<Cat>.json")
    p.add_argument("--reviews", required=True, help="reviews_<Cat>[_5].json[.gz], one JSON review per line")
    p.add_argument("--meta", required=True, help="meta_<Cat>.json[.gz], one Python-literal dict per line")
    p.add_argument("--workers", type=int, default=0,
                   help="processes parsing review blocks (default 0: one per core; 1: no subprocesses)")
    _add_common(p, protocol=True)
    p.set_defaults(func=_leaf(lambda a: prepare_amazon(a.reviews, a.meta, a.out, _options(a), workers=a.workers)))

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

    p = formats.add_parser(
        "movielens", help="MovieLens-1M ratings.dat + movies.dat (+ users.dat): every rating is a sample"
    )
    p.add_argument("--ratings", required=True, help="ratings.dat[.gz]: UserID::MovieID::Rating::Timestamp")
    p.add_argument("--movies", required=True, help="movies.dat (Latin-1): MovieID::Title::Genres")
    p.add_argument("--users", help="users.dat: UserID::Gender::Age::Occupation::Zip-code (user features)")
    p.add_argument(
        "--positive-threshold", type=int, default=4, help="label = rating >= this (default 4)"
    )
    p.add_argument(
        "--history",
        choices=("all", "positive"),
        default="all",
        help="history = every earlier rated movie (default) or only the earlier ones rated >= threshold",
    )
    p.add_argument(
        "--genres",
        choices=("first", "multi"),
        default="first",
        help="category = first genre (default); multi also writes every genre (item_cates)",
    )
    _add_common(p, protocol=False, max_len=MOVIELENS_MAX_LEN)
    p.set_defaults(
        func=_leaf(
            lambda a: prepare_movielens(
                a.ratings, a.movies, a.out, _options(a), users=a.users,
                positive_threshold=a.positive_threshold, history=a.history, genres=a.genres,
            )
        )
    )

    p = formats.add_parser("taobao", help="Tianchi UserBehavior.csv: MIMN's protocol (CAN's Taobao) or DIN")
    p.add_argument(
        "--behaviors", required=True, help="UserBehavior.csv[.gz]: user,item,category,behavior,timestamp"
    )
    p.add_argument(
        "--protocol",
        choices=tuple(PROTOCOL_DEFAULTS),
        default="mimn",
        help="mimn: one sample per user, last behaviour, time split (default); all: every pv + a negative",
    )
    p.add_argument(
        "--behaviors-as-history",
        choices=("all", "pv"),
        default="all",
        help="protocol all: history of every behaviour type (default) or clicks (pv) only",
    )
    p.add_argument(
        "--time-window",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="drop (and count) rows outside 2017-11-25..2017-12-03 UTC+8 (default; --no-time-window keeps)",
    )
    p.add_argument(
        "--mimn-target-in-history",
        action="store_true",
        help="append the target to the history as MIMN's script does (leaks the label; off by default)",
    )
    p.add_argument("--mimn-truncate", action="store_true", help="cut each split to a multiple of 256 (MIMN)")
    _add_common(p, protocol=False, max_len=None, test_fraction=None)
    p.set_defaults(func=_leaf(_taobao))

    w = WorldConfig()
    p = formats.add_parser("synthetic", help="a co-action world with a known Bayes-optimal click probability")
    p.add_argument("--users", type=int, default=w.users)
    p.add_argument("--items", type=int, default=w.items)
    p.add_argument("--cates", type=int, default=w.cates)
    p.add_argument("--seed", type=int, default=w.seed, help="seeds the world, the split and the negatives")
    p.add_argument("--test-fraction", type=float, default=0.2, help="per-user test probability")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_leaf(_synthetic))

    _register_table(formats)
    _register_random(formats)


def _taobao(a: argparse.Namespace) -> Schema:
    defaults = PROTOCOL_DEFAULTS[a.protocol]  # max_len / test_fraction unless given
    a = argparse.Namespace(**{**vars(a), **{k: v for k, v in defaults.items() if getattr(a, k) is None}})
    return prepare_taobao(
        a.behaviors, a.out, _options(a), protocol=a.protocol, history=a.behaviors_as_history,
        time_window=a.time_window, target_in_history=a.mimn_target_in_history, truncate=a.mimn_truncate,
    )


def _synthetic(a: argparse.Namespace) -> Schema:
    world = dataclasses.replace(WorldConfig(), users=a.users, items=a.items, cates=a.cates, seed=a.seed)
    opts = PrepareOptions(max_len=world.hist_max, test_fraction=a.test_fraction, seed=a.seed)
    return prepare_synthetic(a.out, world, opts)


def _add_common(
    p: argparse.ArgumentParser,
    *,
    protocol: bool,
    max_len: int | None = PrepareOptions.max_len,
    test_fraction: float | None = PrepareOptions.test_fraction,
) -> None:
    """The shared options; a None default means 'the format's own default' (resolved by its leaf)."""
    d = PrepareOptions()
    p.add_argument("--out", required=True, help="output directory")
    if protocol:
        p.add_argument(
            "--targets",
            choices=("last", "all"),
            default=d.protocol,
            help="last: each user's last event (DIEN, default); all: every event after the first",
        )
    p.add_argument("--max-len", type=int, default=max_len, help="most recent history positions kept")
    p.add_argument(
        "--test-max-len",
        type=int,
        default=d.test_max_len,
        help="history positions kept in test (default: --max-len)",
    )
    p.add_argument("--test-fraction", type=float, default=test_fraction, help="fraction of users in test")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--skip-bad-rows", action="store_true", help="skip and count malformed lines")
    p.add_argument("--exclude-test-pairs", action="store_true",
                   help="generalisation test: remove from the training histories every (target item, history item) "
                        "combination that occurs in the test set")


def _options(a: argparse.Namespace) -> PrepareOptions:
    return PrepareOptions(
        protocol=getattr(a, "targets", "last"),
        max_len=a.max_len,
        test_max_len=a.test_max_len,
        test_fraction=a.test_fraction,
        seed=a.seed,
        skip_bad_rows=a.skip_bad_rows,
        exclude_test_pairs=a.exclude_test_pairs,
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


# -------------------------------------------------------------------------------------------- prepare table


def _register_random(formats: argparse._SubParsersAction) -> None:
    """`canctr prepare random`: random samples of any feature spec at any scale (canctr.data.random_data)."""
    p = formats.add_parser(
        "random",
        help="random samples of a feature spec, any number (scale and speed tests)",
        description="Write N random training and M test samples of a feature spec to the ragged store, chunk by "
        "chunk (memory does not grow with N), with a progress bar: Zipf-like ids per table, uniform "
        "sequence lengths up to each group's max_len, labels from a small known rule. For benchmarks and "
        "scale tests (e.g. a set larger than memory), not for model quality.",
    )
    p.add_argument("--spec", required=True, help="feature spec file (.toml or .json)")
    p.add_argument("--train", type=int, required=True, help="training samples")
    p.add_argument("--test", type=int, default=100_000, help="test samples (default 100000)")
    p.add_argument("--vocab", nargs="*", default=[], metavar="TABLE=ROWS",
                   help="rows per embedding table, e.g. item=1000000 (default 1000 each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=_random)


def _random(args: argparse.Namespace) -> int:
    from canctr.data.random_data import write_random_dataset
    from canctr.data.spec import FeatureSpec

    try:
        spec = FeatureSpec.load(args.spec)
        vocab = {}
        for item in args.vocab:
            table, _, rows = item.partition("=")
            if table not in spec.tables() or not rows.isdigit() or int(rows) < 2:
                raise ValueError(f"--vocab {item!r}: expected TABLE=ROWS with TABLE one of {sorted(spec.tables())} "
                                 "and ROWS >= 2")
            vocab[table] = int(rows)
        if args.train < 1 or args.test < 1:
            raise ValueError(f"--train and --test must be >= 1, got {args.train} and {args.test}")
        start = time.perf_counter()
        schema = write_random_dataset(spec, args.out, n_train=args.train, n_test=args.test, vocab=vocab,
                                      seed=args.seed, progress=True)
    except (FileNotFoundError, ValueError) as e:  # SpecError is a ValueError
        print(f"canctr prepare random: error: {e}", file=sys.stderr)
        return 2
    print(f"random:{args.train}  train {schema.splits['train']:,} + test {schema.splits['test']:,} samples in "
          f"{time.perf_counter() - start:.1f}s; vocab {schema.vocab}\n  wrote {args.out}")
    return 0


def _register_table(formats: argparse._SubParsersAction) -> None:
    """`canctr prepare table`: any Parquet / CSV / JSON-lines table under a feature spec (canctr.data.table)."""
    p = formats.add_parser(
        "table",
        help="Parquet / CSV / JSON-lines table(s) + a feature spec (TOML / JSON)",
        description="Encode the rows of one or more Parquet, CSV / TSV or JSON-lines files (optionally .gz) "
        "under a feature spec: vocabularies and normalisation fitted on the training split, train/test "
        "split as the spec's [split] says. See docs/data.md and examples/specs/clicks.toml.",
    )
    p.add_argument("--spec", required=True, help="feature spec file (.toml or .json)")
    p.add_argument("--input", required=True, nargs="+", metavar="PATH_OR_GLOB",
                   help="input files or quoted globs ('data/part-*.parquet'); all must share one schema")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default=None, choices=("parquet", "csv", "tsv", "json"),
                   help="input format when the file names do not say it (default: from the suffix)")
    p.add_argument("--list-sep", default="|",
                   help="separator of sequence values given as text, e.g. CSV '12|7|9' (default '|')")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="skip and count malformed rows (null label, text in a dense column, ...) instead of failing")
    p.add_argument("--batch-rows", type=int, default=None, help="rows per record batch (default 262144)")
    p.set_defaults(func=_table)


def _table(args: argparse.Namespace) -> int:
    from canctr.data.table import BATCH_ROWS, format_table_summary, prepare_table  # pyarrow: only when used

    start = time.perf_counter()
    try:
        schema = prepare_table(args.spec, args.input, args.out, list_sep=args.list_sep,
                               skip_bad_rows=args.skip_bad_rows, batch_rows=args.batch_rows or BATCH_ROWS,
                               input_format=args.format)
    except (FileNotFoundError, ValueError) as e:  # SpecError and TableError are ValueErrors
        print(f"canctr prepare table: error: {e}", file=sys.stderr)
        return 2
    print(format_table_summary(schema, time.perf_counter() - start))
    print(f"  wrote {args.out}")
    return 0
