"""A production-shaped CAN benchmark: the spec examples/specs/production.toml (6 target features, 8
behaviour sequences of length <= 50, 48 co-action pairs; the deployment of Bian et al., WSDM 2022,
section 6) on random data of that shape.

Measured in one run, on the same machine state:
    * the machine's float32 matmul peak (torch.mm, 2048 x 2048, the intra-op threads in use);
    * training and inference samples/s of each model (fixed batches, after warm-up);
    * the co-action unit alone (layers.CoAction forward + backward on the shapes of one training batch,
      all 48 pairs): its time, its share of the can-* training step, and its achieved GFLOP/s counted
      from the paper's equations (every micro-MLP layer at every position and order, 2 FLOPs per
      multiply-add; backward = 2 x forward). canctr computes fewer FLOPs than that count (the linear
      layers after the last activation run once on the pooled sum), so the figure is the equations' work
      per second: the number to compare with the peak.

    python benchmarks/production_bench.py --out benchmarks/results/production_cpu
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VOCAB = {"user": 100_000, "ad": 100_000, "item": 200_000, "shop": 20_000, "cate": 2_000, "brand": 10_000,
         "campaign": 5_000}


def timed(fn, reps: int) -> float:
    """Median seconds of fn() over reps calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def unit_cost(batch, spec, reps: int) -> dict[str, float]:
    """The co-action unit alone over every pair of `spec` on `batch`'s shapes: seconds per fwd+bwd and the
    paper-equation FLOPs."""
    from canctr.layers import CoAction

    unit = CoAction()
    P, D = unit.induction_dim, unit.feed_dim
    B = batch.size
    layers = unit.config.layers
    macs_per_position = sum(i * o for i, o in layers) * unit.config.orders
    inputs, flops = [], 0.0
    for pair in spec.coaction:
        group = spec.field(pair.feed).group
        mask = batch.mask(group)
        ind = torch.randn(B, P, requires_grad=True)
        feed = torch.randn(B, mask.shape[1], D, requires_grad=True)
        inputs.append((ind, feed, mask))
        flops += 2 * macs_per_position * float(batch.lengths[group].sum())

    def step():
        out = torch.cat([unit(i, f, m) for i, f, m in inputs], dim=-1)
        out.sum().backward()

    seconds = timed(step, reps)
    return {"seconds": seconds, "flops": 3 * flops}  # forward + backward (2x forward)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["dnn", "can-dnn", "din", "can-din"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    ap.add_argument("--train-samples", type=int, default=100_000)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default=None, help="results file stem (.json + .md)")
    a = ap.parse_args()
    from canctr.bench import matmul_peak_gflops
    from canctr.data.batch import BatchLoader, load_split
    from canctr.data.random_data import write_random_dataset
    from canctr.data.spec import FeatureSpec
    from canctr.env import machine_description
    from canctr.models import create_model
    from canctr.models.base import negative_groups
    from canctr.train.loop import train_step
    from canctr.train.optim import make_optimizer

    spec = FeatureSpec.load(ROOT / "examples" / "specs" / "production.toml")
    peak = matmul_peak_gflops()
    rows, units = [], []
    with tempfile.TemporaryDirectory() as tmp:
        schema = write_random_dataset(spec, tmp, n_train=a.train_samples, n_test=10_000, vocab=VOCAB, seed=0)
        cols = load_split(tmp, "train", spec)
        test = load_split(tmp, "test", spec)
        for bs in a.batch_sizes:
            loader = BatchLoader(cols, spec, batch_size=bs, shuffle=True, seed=0, drop_last=True, negatives=("click",))
            batches = list(itertools.islice(loader.iter_epoch(0), a.warmup + a.steps))
            u = unit_cost(batches[0], spec, reps=5)
            units.append({"batch_size": bs, **u, "gflops": u["flops"] / u["seconds"] / 1e9})
            for name in a.models:
                torch.manual_seed(0)
                model = create_model(name, schema)
                opt = make_optimizer(model, 1e-3)
                for b in batches[: a.warmup]:
                    train_step(model, b, opt)
                t0 = time.perf_counter()
                for b in batches[a.warmup :]:
                    train_step(model, b, opt)
                step = (time.perf_counter() - t0) / a.steps
                model.eval()
                infer_loader = BatchLoader(test, spec, batch_size=bs, shuffle=False)
                infer_batches = list(itertools.islice(infer_loader.iter_epoch(0), 10))
                with torch.inference_mode():
                    infer = timed(lambda m=model, bb=infer_batches: [m(x) for x in bb], 3) / len(infer_batches)
                row = {"model": name, "batch_size": bs, "train_samples_per_second": bs / step, "step_ms": 1000 * step,
                       "infer_samples_per_second": bs / infer, "params": sum(p.numel() for p in model.parameters()),
                       "negatives": list(negative_groups(model))}
                if name.startswith("can-"):
                    row["unit_share"] = u["seconds"] / step
                rows.append(row)
                print(row, flush=True)
    meta = {"command": "python benchmarks/production_bench.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(),
            "threads": torch.get_num_threads(), "matmul_peak_gflops": peak, "pairs": len(spec.coaction)}
    lines = [f"# Production-shaped spec: {len(spec.coaction)} co-action pairs, 8 sequences (<= 50)", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}; "
             f"{meta['threads']} threads", "",
             f"Measured float32 matmul peak (torch.mm 2048 x 2048): **{peak:.1f} GFLOP/s**.", "",
             "| model | batch | train samples/s | step ms | inference samples/s | co-action unit share of step "
             "| params |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        share = f"{100 * r['unit_share']:.0f} %" if "unit_share" in r else ""
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['train_samples_per_second']:,.0f} | {r['step_ms']:.1f} "
                     f"| {r['infer_samples_per_second']:,.0f} | {share} | {r['params']:,} |")
    lines += ["", "The co-action unit alone (48 pairs, forward + backward, the paper's equations' FLOPs):", "",
              "| batch | unit ms | GFLOP | achieved GFLOP/s | of the matmul peak |", "|---|---|---|---|---|"]
    lines += [f"| {u['batch_size']} | {1000 * u['seconds']:.1f} | {u['flops'] / 1e9:.2f} | {u['gflops']:.1f} "
              f"| {100 * u['gflops'] / peak:.0f} % |" for u in units]
    print("\n".join(lines))
    if a.out:
        from canctr.bench import write_results

        write_results(a.out, {"meta": meta, "rows": rows, "unit": units}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
