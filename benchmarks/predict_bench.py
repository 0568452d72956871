"""Batch scoring throughput (`canctr predict`) of eager torch against ONNX Runtime, turn about in one run.

The input is a prepared split turned back into raw ids (examples/raw_rows.py: each index replaced by its
vocabulary entry), so
the timed path is the whole of `predict`: reading Parquet, mapping raw ids through the vocabularies,
padding, scoring and writing the scores. Models are untrained (throughput does not depend on the weights),
built from the data's schema and saved as a run. Each (model, engine) cell runs `--rounds` times,
alternating the engines; the table gives the median rows/s.

    python benchmarks/predict_bench.py --data data/beauty --models dnn can-dnn dien can-dien \
        --batch-size 4096 --rounds 3 --out benchmarks/results/predict_cpu
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq


def _raw_table():  # noqa: ANN202 - examples/raw_rows.py's function (examples are scripts, not a package)
    spec = importlib.util.spec_from_file_location("raw_rows", Path(__file__).resolve().parents[1] / "examples"
                                                  / "raw_rows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.raw_table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared directory with vocab/ (e.g. prepare sequences)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--models", nargs="+", default=["dnn", "can-dnn", "dien", "can-dien"])
    ap.add_argument("--engines", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None, help="results stem (JSON + markdown)")
    a = ap.parse_args()
    from canctr.bench import untrained_run
    from canctr.data.schema import Schema
    from canctr.env import machine_description
    from canctr.serve.export import export_run
    from canctr.serve.predict import predict

    data = Path(a.data)
    schema = Schema.load(data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = _raw_table()(data, a.split)
        inp = tmp / "input.parquet"
        pq.write_table(table, inp)
        for model_name in a.models:
            run = untrained_run(model_name, schema, data, tmp / model_name)
            exports = {"onnx": tmp / f"{model_name}-onnx"} if "onnx" in a.engines else {}
            for engine, d in exports.items():
                export_run(run, engine, d, data=str(data))
            cells: dict[str, list[float]] = {e: [] for e in a.engines}
            scores = {}
            for r in range(a.rounds):
                for engine in (a.engines if r % 2 == 0 else a.engines[::-1]):
                    s = predict(run, [inp], tmp / f"{model_name}-{engine}.parquet", engine=engine,
                                export_dir=exports.get(engine), data=str(data), batch_size=a.batch_size)
                    cells[engine].append(s["rows_per_second"])
                    scores[engine] = pq.read_table(tmp / f"{model_name}-{engine}.parquet")["score"].to_numpy()
            diff = float(np.abs(scores["torch"] - scores["onnx"]).max()) if len(scores) == 2 else float("nan")
            rows.append({"model": model_name,
                         **{f"{e}_rows_per_second": statistics.median(v) for e, v in cells.items()},
                         **{f"{e}_rounds": v for e, v in cells.items()}, "max_abs_diff": diff})
            print(rows[-1], flush=True)
    meta = {"command": "python benchmarks/predict_bench.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(), "rows": table.num_rows,
            "batch_size": a.batch_size, "data": data.name, "split": a.split}
    lines = [f"# Batch scoring throughput (`canctr predict`), batch {a.batch_size}, {data.name} {a.split} split", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}", "",
             f"{table.num_rows:,} rows of raw ids in one Parquet file; each cell is the whole `predict` (read, map "
             "raw ids, pad, score, write), median rows/s of the rounds, engines alternating. The last column is "
             "the largest difference between the two engines' scores.", "",
             "| model | torch rows/s | ONNX Runtime rows/s | ONNX / torch | max abs diff |", "|---|---|---|---|---|"]
    for r in rows:
        t, o = r.get("torch_rows_per_second", float("nan")), r.get("onnx_rows_per_second", float("nan"))
        lines.append(f"| {r['model']} | {t:,.0f} | {o:,.0f} | {o / t:.2f}x | {r['max_abs_diff']:.1e} |")
    from canctr.bench import publish

    publish(a.out, {"meta": meta, "rows": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
