"""canctr DIN / DIEN / CAN-DIEN through the library (canctr.train.loop.fit), timed like the peers' workers.

Runs in canctr's own environment, on a prepared directory (not the peers' padded export: with
--max-train-samples, compare_peers.py passes the sliced copy of the same rows). Everything is canctr's default
except batch size, epochs (1) and any `--set KEY=VALUE` model overrides (compare_peers.py --canctr-set); the
run directory is temporary. DIEN's auxiliary negatives are drawn by canctr's loader per batch.
train_seconds / epoch_samples_per_second are fit's own figures (metrics.json's
train_seconds / train_samples_per_second: the whole epoch loop, first batches included); samples_per_second
is the steady figure measured as in every other worker (_common.StepClock).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time

import _common as c

from canctr.cli.args import parse_overrides
from canctr.models import make_config
from canctr.train import loop
from canctr.train.loop import TrainConfig, fit


def settings(model: str) -> dict:
    """The model settings compare_peers.py checks against the peers' (_common's constants)."""
    cfg = dataclasses.asdict(make_config(model))
    keys = ("embed_dim", "mlp", "activation", "hidden_dim", "aux_weight")
    return {k: list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k] for k in keys if k in cfg}


def paused(evaluate, clock: c.StepClock):
    """`evaluate` with its time added to the clock's pause (as the peers' LearningCurve does)."""

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            clock.paused += time.perf_counter() - t0

    return timed


def main() -> None:
    args = c.parse_args(__doc__.split("\n")[0], canctr=True)
    c.set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="canctr-peers-") as run_dir:
        cfg = TrainConfig(data=args.data, model=args.model, out=run_dir, batch_size=args.batch_size, epochs=1,
                          eval_batch_size=args.eval_batch_size, seed=args.seed, device="cpu", progress=False,
                          model_config=parse_overrides(args.set), eval_at_samples=tuple(args.eval_at_samples))
        clock = c.StepClock()
        loop.evaluate = paused(loop.evaluate, clock)  # fit's learning-curve evaluations stay off the clock
        t_call = clock.now()
        m = fit(cfg)
        clock.close()
    timing = clock.summary(m["train_samples"], args.batch_size, args.warmup_batches, t_call)
    timing.update(train_seconds=m["train_seconds"], epoch_samples_per_second=m["train_samples_per_second"])
    c.emit({"library": "canctr", "model": args.model, "batch_size": args.batch_size,
            "train_samples": m["train_samples"], **timing, "test_auc": m["auc"], "n_params": m["n_params"],
            "lr": cfg.lr, "settings": settings(args.model), "overrides": cfg.model_config,
            "curve": [{"samples": p["samples"], "auc": p["eval_auc"]} for p in m["curves"] if "eval_auc" in p]})


if __name__ == "__main__":
    main()
