"""Write a prepared split back as the raw table it came from: every field's indices replaced by the raw ids
of its vocabulary (sequences as list columns), plus the label. Input for `canctr predict` and for trying the
HTTP service with real ids. Fields hashed at prepare have no vocabulary and cannot be written back.

    python examples/raw_rows.py --data data/beauty --split test --out data/beauty_test_raw.parquet
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def raw_table(data: Path, split: str, rows: int | None = None) -> pa.Table:
    """The first `rows` rows (default all) of `split` of prepared directory `data` as raw ids."""
    from canctr.data.batch import load_split
    from canctr.data.schema import Schema

    spec = Schema.load(data).spec
    cols = load_split(data, split, spec)
    n = cols.n if rows is None else min(rows, cols.n)
    vocab = {}
    for t, fields in spec.tables().items():
        path = data / "vocab" / f"{t}.json"
        if not path.exists():
            raise SystemExit(f"{path}: no vocabulary for table {t!r} (fields {[f.name for f in fields]}: hashed?)")
        vocab[t] = np.asarray(json.loads(path.read_text()), dtype=object)
    out = {spec.label: np.asarray(cols.label[:n])}
    for f in spec.categorical:
        out[f.column] = vocab[f.table][np.asarray(cols.ids[f.name][:n])].astype(str)
    for f in spec.sequential:
        off = np.asarray(cols.offsets[f.group][: n + 1], np.int64)
        values = vocab[f.table][np.asarray(cols.values[f.name][off[0] : off[-1]])].astype(str)
        out[f.column] = pa.LargeListArray.from_arrays(pa.array(off - off[0]), pa.array(values))
    for f in spec.dense:  # normalised values: prepare's statistics are not inverted
        out[f.column] = np.asarray(cols.dense[:n, spec.dense.index(f)])
    return pa.table(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared directory (with vocab/)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--out", required=True, help="output .parquet")
    a = ap.parse_args(argv)
    table = raw_table(Path(a.data), a.split, a.rows)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, a.out)
    print(f"{table.num_rows:,} rows -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
