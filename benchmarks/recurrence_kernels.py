"""DIEN's recurrences alone at scoring sizes: the compiled kernels (canctr/csrc/recurrent.cpp) against the Python
loops, turn about in one process. The AUGRU over K candidates of one user (its input projection broadcast, as the
scorer runs it) and the extractor GRU at batch 1 and 128, history L, hidden H, without gradient; median and p99
microseconds per call.

    python benchmarks/recurrence_kernels.py --out benchmarks/results/recurrence_kernels_cpu
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--hidden", type=int, default=36)
    ap.add_argument("--calls", type=int, default=400, help="timed calls per variant and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None, help="results stem (JSON + markdown)")
    a = ap.parse_args()
    from canctr.bench import publish
    from canctr.env import machine_description
    from canctr.layers import compiled
    from canctr.layers.sequence import AUGRU, InterestExtractor

    if compiled.ops() is None:
        print("the compiled kernels cannot be built here", file=sys.stderr)
        return 1
    torch.manual_seed(0)
    K, L, H = a.candidates, a.history, a.hidden
    augru, extractor = AUGRU(H, H).eval(), InterestExtractor(H, H).eval()
    keys = torch.randn(1, L, H)
    attention = torch.rand(K, L).softmax(-1)
    rows = torch.zeros(K, dtype=torch.long)
    cases = {
        f"AUGRU, 1 user x {K} candidates": lambda: augru(keys, attention, torch.ones(K, L, dtype=torch.bool), rows),
        "extractor GRU, batch 1": lambda: extractor(keys, torch.ones(1, L, dtype=torch.bool)),
        "extractor GRU, batch 128": lambda: extractor(torch.randn(128, L, H), torch.ones(128, L, dtype=torch.bool)),
    }
    times = {(c, v): [] for c in cases for v in ("python", "compiled")}
    with torch.inference_mode():
        for r in range(a.rounds + 1):  # round 0 warms up
            for case, call in cases.items():
                for variant in ("python", "compiled"):
                    os.environ["CANCTR_COMPILED"] = "1" if variant == "compiled" else "0"
                    for _ in range(a.calls):
                        t0 = time.perf_counter()
                        call()
                        if r:
                            times[case, variant].append(1e6 * (time.perf_counter() - t0))
    os.environ.pop("CANCTR_COMPILED", None)
    rows_out = []
    for case in cases:
        row = {"case": case}
        for v in ("python", "compiled"):
            row[f"{v}_p50_us"] = float(np.percentile(times[case, v], 50))
            row[f"{v}_p99_us"] = float(np.percentile(times[case, v], 99))
        row["speedup_p50"] = row["python_p50_us"] / row["compiled_p50_us"]
        rows_out.append(row)
    meta = {"command": "python benchmarks/recurrence_kernels.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine_description(),
            "threads": torch.get_num_threads(), "history": L, "hidden": H, "candidates": K}
    lines = ["# DIEN's recurrences at scoring sizes: compiled kernels against the Python loops", "",
             f"Command: `{meta['command']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}", "",
             f"History {L}, hidden {H}, no gradient; {a.rounds} rounds of {a.calls} calls per variant after one of "
             "warm-up, the variants in turn; microseconds per call (the module's forward: input projection, loop, "
             "masking). python: the lean AUGRU loop and nn.GRU (`CANCTR_COMPILED=0`).", "",
             "| case | python p50 / p99 | compiled p50 / p99 | speed-up (p50) |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['python_p50_us']:.0f} / {r['python_p99_us']:.0f} | {r['compiled_p50_us']:.0f} / "
              f"{r['compiled_p99_us']:.0f} | {r['speedup_p50']:.2f}x |" for r in rows_out]
    publish(a.out, {"meta": meta, "rows": rows_out}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
