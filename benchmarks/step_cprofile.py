"""Where a training step's Python-visible time goes, for this tree or an older checkout: cProfile of
`--steps` steps on precomputed batches (the loader excluded), top functions by own time.

    python benchmarks/step_cprofile.py --data data/beauty --model can-dnn
    PYTHONPATH=<worktree of 8baab5a>/src python benchmarks/step_cprofile.py --data data/beauty_v1 --model can-dnn
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import pstats
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--model", default="dnn")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    import torch

    from canctr.data.batch import BatchLoader, load_split
    from canctr.data.schema import Schema
    from canctr.models import create_model
    from canctr.train.loop import train_step
    from canctr.train.optim import make_optimizer

    schema = Schema.load(a.data)
    torch.manual_seed(0)
    model = create_model(a.model, schema)
    if hasattr(schema, "spec"):  # the feature-spec store; older checkouts read padded arrays
        from canctr.models.base import negative_groups

        loader = BatchLoader(load_split(a.data, "train", schema.spec), schema.spec, batch_size=128, shuffle=True,
                             seed=0, max_len=100, bucket=20, drop_last=True, negatives=negative_groups(model))
    else:
        loader = BatchLoader(load_split(a.data, "train"), batch_size=128, shuffle=True, seed=0, max_len=100,
                             bucket=20, drop_last=True)
    batches = list(itertools.islice(loader.iter_epoch(0), 20 + a.steps))
    opt = make_optimizer(model, 1e-3)
    for b in batches[:20]:
        train_step(model, b, opt)
    prof = cProfile.Profile()
    prof.enable()
    for b in batches[20:]:
        train_step(model, b, opt)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(a.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
