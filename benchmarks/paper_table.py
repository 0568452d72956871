"""Multi-seed model comparison on Amazon Beauty beside the CAN paper's Amazon (Books) column.

Each seed s is one independent run as in the paper ("5 runs with random train/validation splits"):
the data is prepared with --seed s (a new user split and new sampled negatives) and the model is
trained with --seed s. Results go to benchmarks/results/<name>.{json,md}.

    python benchmarks/paper_table.py --seeds 1 2 3 --models dnn can-dnn dien can-dien
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from canctr.env import machine_description
from canctr.report.paper import AMAZON_BOOKS, paper_results

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "amazon_beauty"

# the paper's Amazon (Books) column (WSDM'22 Tables 2/3), shared with `canctr reproduce`
PAPER_AMAZON = {name: f"{r.auc:.4f} ± {r.auc_std:.4f}" for name, r in paper_results(AMAZON_BOOKS).items()}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--models", nargs="+", default=["dnn", "can-dnn", "dien", "can-dien"])
    ap.add_argument("--work", default="runs/paper_table", help="prepared data and run directories")
    ap.add_argument("--name", default="beauty_foundation")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()

    work = ROOT / args.work
    rows = []
    t_start = time.time()
    for seed in args.seeds:
        data = work / f"data_seed{seed}"
        if not (data / "schema.json").exists():
            run([sys.executable, "-m", "canctr.cli", "prepare", "sequences",
                 "--sequences", str(SHARED / "Beauty.txt.gz"),
                 "--attributes", str(SHARED / "Beauty_item2attributes.json.gz"),
                 "--seed", str(seed), "--out", str(data)])
        for model in args.models:
            out = work / f"{model}_seed{seed}"
            if not (out / "metrics.json").exists():
                run([sys.executable, "-m", "canctr.cli", "train", "--data", str(data), "--model", model,
                     "--seed", str(seed), "--epochs", str(args.epochs), "--out", str(out), "--no-progress"])
            m = json.loads((out / "metrics.json").read_text())
            rows.append({k: m[k] for k in ("model", "seed", "auc", "gauc", "logloss", "n_params",
                                           "train_samples_per_second", "train_seconds")})

    dnn_params = next((r["n_params"] for r in rows if r["model"] == "dnn"), None)
    summary = []
    for model in args.models:
        rs = [r for r in rows if r["model"] == model]
        agg = {"model": model, "runs": len(rs)}
        for k in ("auc", "gauc", "logloss", "train_samples_per_second"):
            vals = [r[k] for r in rs]
            agg[k] = statistics.mean(vals)
            agg[k + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        agg["n_params"] = rs[0]["n_params"]
        agg["params_x_dnn"] = rs[0]["n_params"] / dnn_params if dnn_params else None
        agg["paper_amazon_books_auc"] = PAPER_AMAZON.get(model, "n/a (not in the CAN tables)")
        summary.append(agg)

    machine = machine_description()
    meta = {"command": "python benchmarks/paper_table.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"), "machine": machine, "torch": torch.__version__,
            "wall_seconds": round(time.time() - t_start, 1), "epochs": args.epochs, "seeds": args.seeds}
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    report = {"meta": meta, "summary": summary, "runs": rows}
    (res / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")

    lines = [
        f"# {args.name}: Amazon Beauty (5-core), default protocol, {len(args.seeds)} seeds",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; machine: {machine}; torch {meta['torch']}; {args.epochs} epoch(s), batch 128, "
        f"Adam 1e-3. Seed s = data split seed s + training seed s.",
        "",
        "| model | AUC (mean ± std) | GAUC | logloss | params | × DNN | train samples/s | paper, Amazon Books AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in summary:
        x_dnn = "n/a (no dnn run)" if a["params_x_dnn"] is None else f"{a['params_x_dnn']:.1f}"
        lines.append(
            f"| {a['model']} | {a['auc']:.4f} ± {a['auc_std']:.4f} | {a['gauc']:.4f} ± {a['gauc_std']:.4f} | "
            f"{a['logloss']:.4f} | {a['n_params']:,} | {x_dnn} | "
            f"{a['train_samples_per_second']:,.0f} | {a['paper_amazon_books_auc']} |"
        )
    lines += ["", "Per run:", "", "| model | seed | AUC | GAUC | logloss |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['seed']} | {r['auc']:.4f} | {r['gauc']:.4f} | {r['logloss']:.4f} |" for r in rows]
    (res / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
