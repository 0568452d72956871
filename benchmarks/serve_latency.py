"""In-process latency of the scoring service's model path: 1 user x K candidates with a history of H ids,
p50 / p99 over many requests after a warm-up, for eager torch and ONNX Runtime (issue target: can-dnn p99
<= 1 ms, can-dien p99 <= 3 ms at K = 100, H = 50 on the 2-core CPU).

Each request is what `POST /v1/score` runs after JSON parsing: `Scorer.score` = map the raw ids through the
vocabularies (`map_requests`) + the model on K rows (`probabilities`); the two are also timed apart. Requests use
real raw ids of the prepared data (history items with their categories, candidate items with theirs), 64
different ones in turn. Models are untrained (latency does not depend on the weights).

    python benchmarks/serve_latency.py --data data/beauty --models can-dnn can-dien --engines torch onnx \
        --requests 2000 --out benchmarks/results/serve_latency_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def requests_of(data: Path, n: int, candidates: int, history: int, seed: int = 0) -> list[tuple[dict, list]]:
    """`n` requests of raw ids: a user, `history` (item, category) pairs and `candidates` candidate items."""
    from canctr.data.batch import load_split
    from canctr.data.schema import Schema

    spec = Schema.load(data).spec
    cols = load_split(data, "train", spec)
    vocab = {t: json.loads((data / "vocab" / f"{t}.json").read_text()) for t in ("user", "item", "cate")}
    item, cate = np.asarray(cols.ids["item"]), np.asarray(cols.ids["cate"])
    cate_of = dict(zip(item.tolist(), cate.tolist()))  # item index -> its category index
    items = np.asarray(sorted(cate_of))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        h = rng.choice(items, history, replace=False)
        c = rng.choice(items, candidates, replace=False)
        user = {"user": vocab["user"][int(rng.integers(1, len(vocab["user"])))],
                "hist_item": [vocab["item"][i] for i in h], "hist_cate": [vocab["cate"][cate_of[i]] for i in h]}
        out.append((user, [{"item": vocab["item"][i], "cate": vocab["cate"][cate_of[i]]} for i in c]))
    return out


def tanh_kernel(rounds: int = 300) -> dict[str, float]:
    """torch.tanh vs numpy's tanh on the co-action unit's first-layer output size, turn about."""
    import torch

    from canctr.layers.inference import tanh_

    x = torch.randn(200, 150, 8, generator=torch.Generator().manual_seed(0)) * 3
    ref = torch.tanh(x.double())
    times = {"torch": [], "numpy": []}
    for _ in range(rounds):
        for name, f in (("torch", torch.tanh), ("numpy", tanh_)):
            y = x.clone()
            t0 = time.perf_counter()
            f(y)
            times[name].append(time.perf_counter() - t0)
    return {"torch_us": 1e6 * float(np.median(times["torch"])), "numpy_us": 1e6 * float(np.median(times["numpy"])),
            "torch_err": float((torch.tanh(x).double() - ref).abs().max()),
            "numpy_err": float((tanh_(x.clone()).double() - ref).abs().max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="prepared Amazon-preset directory with vocab/ (prepare sequences)")
    ap.add_argument("--models", nargs="+", default=["can-dnn", "can-dien"])
    ap.add_argument("--engines", nargs="+", default=["torch", "onnx"])
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=5, help="the requests are timed in this many slices per variant, "
                    "the variants in turn")
    ap.add_argument("--kernels", nargs="+", default=["compiled"], choices=["compiled", "python"],
                    help="the torch engine's recurrences: the compiled kernels (canctr/csrc) or the Python loops "
                         "(CANCTR_COMPILED=0); both for a before/after in one run")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: canctr's default)")
    ap.add_argument("--out", default=None, help="results stem (JSON + markdown)")
    a = ap.parse_args()
    import torch

    from canctr.bench import untrained_run
    from canctr.data.schema import Schema
    from canctr.env import machine_description
    from canctr.serve.scorer import Scorer, ServeConfig

    data = Path(a.data)
    schema = Schema.load(data)
    reqs = requests_of(data, 64, a.candidates, a.history)
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # every (model, engine, kernels) variant loaded first, then timed in turn, `rounds` slices each, so a
        # drift of the machine's speed reaches every variant alike
        variants = []
        for model_name in a.models:
            run = untrained_run(model_name, schema, data, Path(tmp) / model_name)
            for engine in a.engines:
                recurrent = engine == "torch" and "dien" in model_name  # the models the kernels serve
                for kernels in (a.kernels if recurrent else ["-"]):
                    scorer = Scorer.load(ServeConfig(run=str(run), engine=engine, data=str(data)))
                    variants.append(({"model": model_name, "engine": engine, "kernels": kernels}, scorer,
                                      {"total": [], "map": [], "forward": []}))
        per_round = -(-a.requests // a.rounds)
        for r in range(a.rounds):
            for key, scorer, times in variants:
                os.environ["CANCTR_COMPILED"] = "0" if key["kernels"] == "python" else "1"
                for i in range(a.warmup if r == 0 else 20):
                    scorer.probabilities(scorer.map_requests([reqs[i % len(reqs)]])[0])
                for i in range(per_round):
                    user, cands = reqs[(r * per_round + i) % len(reqs)]
                    t0 = time.perf_counter()
                    batch, _, _ = scorer.map_requests([(user, cands)])
                    t1 = time.perf_counter()
                    scorer.probabilities(batch)
                    t2 = time.perf_counter()
                    times["map"].append(t1 - t0)
                    times["forward"].append(t2 - t1)
                    times["total"].append(t2 - t0)
        os.environ.pop("CANCTR_COMPILED", None)
        for key, _, times in variants:
            ms = {k: 1000 * np.asarray(v) for k, v in times.items()}
            row = {**key, **{f"{k}_p50_ms": float(np.percentile(v, 50)) for k, v in ms.items()},
                   **{f"{k}_p99_ms": float(np.percentile(v, 99)) for k, v in ms.items()}}
            rows.append(row)
            print(row, flush=True)
    meta = {"command": "python benchmarks/serve_latency.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(), "candidates": a.candidates,
            "history": a.history, "requests": a.requests, "warmup": a.warmup, "data": data.name, "rounds": a.rounds,
            "threads": torch.get_num_threads()}
    lines = [f"# Scoring latency in process: 1 user x {a.candidates} candidates, history {a.history}", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}", "",
             f"{a.requests:,} requests after {a.warmup} of warm-up, 64 different ones of real raw ids in turn. total = "
             "map raw ids + model (what `POST /v1/score` runs after parsing the JSON); ms, p50 / p99. The user side "
             "runs once per request (`Batch.user`: the history's lookups and co-action feed powers, DIEN's "
             "extractor GRU, the keys' share of the attention and AUGRU input layers); per candidate the rest.", "",
             f"Variants timed in turn, {a.rounds} slices each; {torch.get_num_threads()} torch threads. kernels: the "
             "torch engine's DIEN recurrences compiled (canctr/csrc/recurrent.cpp) or the Python loops "
             "(`CANCTR_COMPILED=0`).", "",
             "| model | engine | kernels | total p50 / p99 | map p50 / p99 | forward p50 / p99 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['engine']} | {r['kernels']} | {r['total_p50_ms']:.2f} / {r['total_p99_ms']:.2f} "
              f"| {r['map_p50_ms']:.2f} / {r['map_p99_ms']:.2f} "
              f"| {r['forward_p50_ms']:.2f} / {r['forward_p99_ms']:.2f} |"
              for r in rows]
    kernel = tanh_kernel()
    meta["tanh_kernel"] = kernel
    lines += ["", "Kernel: tanh of the co-action unit's first-layer output at this size (2 pairs x 100 candidates x "
              "3 orders x 50 positions x 8 = 240,000 float32), us per call, same process: "
              f"torch.tanh {kernel['torch_us']:.0f}, numpy tanh (`canctr.layers.inference.tanh_`, used without "
              f"gradients) {kernel['numpy_us']:.0f}: {kernel['torch_us'] / kernel['numpy_us']:.1f}x; max abs "
              f"difference to float64 tanh {kernel['torch_err']:.1e} / {kernel['numpy_err']:.1e}."]
    from canctr.bench import publish

    publish(a.out, {"meta": meta, "rows": rows}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
