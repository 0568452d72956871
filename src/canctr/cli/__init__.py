"""The `canctr` command line, a package of its own: the library never imports it.

    main.py      parser assembly, the `prepare` fast path (no torch import), one-line user errors (exit 2)
    args.py      argument helpers shared by the command groups (--device, --set, --optimizer, --no-progress)
    data.py      canctr prepare {amazon,sequences,dien,movielens,taobao,synthetic,table}
    train.py     canctr train, evaluate, models
    report.py    canctr reproduce, compare
    bench.py     canctr bench
    demo.py      canctr demo
    serve.py     canctr export, predict, serve

Each group module has `register(subparsers)`; every command sets `func(args) -> int`. This module and
main.py import only the standard library, so `canctr prepare` loads numpy and the data package only.
"""

from canctr.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
