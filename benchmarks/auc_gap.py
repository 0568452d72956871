"""The early-training AUC gap of DIN / DIEN on MovieLens-1M (issue 13): test AUC after one epoch per
configuration, several seeds, mean +- sample std. Each configuration is `--set`-style model overrides.

    python benchmarks/auc_gap.py --data runs/peers/data_ml1m_train40000 --model din --model dien \
        --config sum= --config 'mean=hist_pool="mean"' --seeds 1,2,3 --out benchmarks/results/auc_gap_ml1m_40k.json

`--config LABEL=K1=V1;K2=V2` (values are JSON, as `canctr train --set`); an empty right side is the default.
Everything else is canctr train's defaults (Adam 1e-3, 1 epoch) with --batch-size (128). Runs one at a time,
in this process; the JSON holds every run, the printed table the means.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from canctr.cli.args import parse_overrides
from canctr.train.loop import TrainConfig, fit


def parse_config(text: str) -> tuple[str, dict]:
    label, _, sets = text.partition("=")
    return label, parse_overrides([s for s in sets.split(";") if s])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--model", action="append", required=True)
    p.add_argument("--config", action="append", required=True, help="LABEL=K1=V1;K2=V2 (JSON values)")
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--eval-at-samples", type=int, nargs="+", default=[], metavar="N",
                   help="also the test AUC once N training samples are seen (a learning curve)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", help="JSON file for every run and the summary")
    a = p.parse_args()
    seeds = [int(s) for s in a.seeds.split(",")]
    if a.threads:
        torch.set_num_threads(a.threads)
    runs, rows = [], []
    for model in a.model:
        for label, sets in map(parse_config, a.config):
            aucs, curves = [], []
            for seed in seeds:
                with tempfile.TemporaryDirectory(prefix="canctr-aucgap-") as run_dir:
                    cfg = TrainConfig(data=a.data, model=model, out=run_dir, batch_size=a.batch_size, epochs=a.epochs,
                                      seed=seed, device="cpu", progress=False, model_config=sets,
                                      eval_at_samples=tuple(a.eval_at_samples))
                    t = time.perf_counter()
                    m = fit(cfg)
                curve = {c["samples"]: c["eval_auc"] for c in m["curves"] if "eval_auc" in c}
                runs.append({"model": model, "config": label, "overrides": sets, "seed": seed, "auc": m["auc"],
                             "logloss": m.get("logloss"), "curve": curve, "seconds": round(time.perf_counter() - t, 1)})
                aucs.append(m["auc"])
                curves.append(curve)
            std = statistics.stdev(aucs) if len(aucs) > 1 else 0.0
            points = sorted(set.intersection(*(set(c) for c in curves))) if a.eval_at_samples else []
            at = {n: [c[n] for c in curves] for n in points}
            curve_stats = {n: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0}
                           for n, v in at.items()}
            rows.append({"model": model, "config": label, "overrides": sets, "mean": statistics.mean(aucs), "std": std,
                         "aucs": aucs, "curve": curve_stats})
            curve_text = "".join(f"  @{n:,}: {statistics.mean(v):.4f}" for n, v in at.items())
            print(f"{model:10s} {label:12s} {statistics.mean(aucs):.4f} +- {std:.4f}  "
                  f"({', '.join(f'{x:.4f}' for x in aucs)}){curve_text}", flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps({"data": a.data, "seeds": seeds, "batch_size": a.batch_size,
                                           "epochs": a.epochs, "runs": runs, "summary": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
