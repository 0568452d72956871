"""`canctr export --run RUN_DIR --format onnx|torchscript --out DIR [--data DIR] [--force]`."""

from __future__ import annotations

import argparse

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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained run to ONNX or TorchScript with a manifest")
    p.add_argument("--run", required=True, help="run directory (has checkpoint/)")
    p.add_argument("--format", required=True, metavar="FORMAT", help=f"one of {', '.join(FORMATS)}")
    p.add_argument("--out", required=True, help="export directory (model file, manifest.json, vocab/)")
    p.add_argument("--data", default=None, help="prepared data directory (default: the run's config.json)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=cmd_export)
