"""What every worker shares: arguments, the matched settings, data loading, thread count, timing, output.

Imported by worker_*.py, which run in the peers' own venvs: numpy and torch only, never canctr.

Timing is taken the same way in every library, without touching its training loop: a global optimizer
step post-hook (torch.optim.optimizer.register_optimizer_step_post_hook) stamps the end of every training
step. Steady throughput = samples in steps W+1..n / (stamp[n] - stamp[W]), W = --warmup-batches; each of
those steps includes fetching its batch (the library's own loader), forward, backward and the update.

`--eval-at-samples N ...` adds a learning curve: the peers' workers score the test split from the same hook
(`LearningCurve`) once the step that crosses N training samples has ended, and the clock leaves that time
out; canctr's worker asks `fit` for the same points (TrainConfig.eval_at_samples).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import time
from pathlib import Path

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

RESULT_TAG = "PEER_RESULT "  # prefix of the one result line a worker prints to stdout

# canctr's defaults for DIN/DIEN (src/canctr/models/{base,din,dien}.py, layers/attention.py); the canctr
# worker reports its own config and compare_peers.py checks it (and the attention unit) against these.
EMBED_DIM = 18  # user / item / cate; histories share the item / cate tables
MLP_DIMS = (200, 80)  # then one output unit
ATTENTION_DIMS = (80, 40)  # DIN activation unit (then one output unit)
GRU_HIDDEN = 36  # DIEN extractor and AUGRU hidden size
AUX_WEIGHT = 1.0  # DIEN auxiliary-loss weight
LR = 1e-3  # Adam, no weight decay, no regularisation

# the arrays of compare_peers.py's padded export, per split: DIR/<split>/<field>.npy
FIELDS = ("label", "user", "item", "cate", "hist_item", "hist_cate", "hist_len", "neg_hist_item", "neg_hist_cate")
EXPORT_FORMAT = "canctr-peers-padded-1"  # DIR/export.json "format"


def parse_args(description: str, *, canctr: bool = False) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    if canctr:
        ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="canctr model config override, as `canctr train --set`")
    ap.add_argument("--data", required=True,
                    help="canctr: a prepared directory; peers: compare_peers.py's padded export of it")
    ap.add_argument("--model", required=True, help="din | dien (canctr also: can-dien)")
    ap.add_argument("--batch-size", type=int, required=True)
    ap.add_argument("--eval-batch-size", type=int, default=1024)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--warmup-batches", type=int, default=5)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--eval-at-samples", type=int, nargs="*", default=[], metavar="N",
                    help="also score the test split once N training samples have been seen (a learning curve)")
    return ap.parse_args()


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def export_meta(data: str | Path) -> dict:
    """DIR/export.json of a padded export (vocab sizes, width, rows per split, how negatives were drawn)."""
    path = Path(data) / "export.json"
    if not path.exists():
        raise SystemExit(f"{path}: missing; --data must be compare_peers.py's padded export (export_*/), "
                         "not a `canctr prepare` directory")
    meta = json.loads(path.read_text())
    if meta.get("format") != EXPORT_FORMAT:
        raise SystemExit(f"{path}: format {meta.get('format')!r}, this worker reads {EXPORT_FORMAT!r}")
    return meta


def load_split(data: str | Path, split: str) -> dict[str, np.ndarray]:
    """The arrays of one split of the export: label float32 [N]; user, item, cate, hist_len int32 [N];
    hist_item, hist_cate, neg_hist_item, neg_hist_cate int32 [N, W], left-aligned and 0-padded."""
    meta = export_meta(data)
    d = Path(data) / split
    arrays = {name: np.load(d / f"{name}.npy", allow_pickle=False) for name in FIELDS}
    n = {name: a.shape[0] for name, a in arrays.items()}
    if set(n.values()) != {meta["splits"][split]}:
        raise ValueError(f"{d}: row counts {n}, export.json says {meta['splits'][split]}")
    widths = {name: a.shape[1] for name, a in arrays.items() if a.ndim == 2}
    if set(widths.values()) != {meta["width"]}:
        raise ValueError(f"{d}: history widths {widths}, export.json says {meta['width']}")
    return arrays


def vocab_sizes(data: str | Path) -> dict[str, int]:
    """{user, item, cate} -> vocabulary size including index 0 (padding / unknown)."""
    return {k: int(v) for k, v in export_meta(data)["vocab"].items()}


class StepClock:
    """Stamps the end of every optimizer step in this process (any optimizer, any library)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.paused = 0.0  # seconds spent outside training (a learning-curve evaluation), left out of the stamps
        self._handle = register_optimizer_step_post_hook(lambda *_: self.stamps.append(self.now()))

    def now(self) -> float:
        return time.perf_counter() - self.paused

    def close(self) -> None:
        self._handle.remove()

    def summary(self, n_samples: int, batch_size: int, warmup: int, t_call: float) -> dict[str, float]:
        """Throughput of one epoch of n_samples in batches of batch_size (only the last may be partial).

        t_call: time just before the library's train call; the whole-epoch figure runs from there, so it
        includes whatever the call does before its first step (deepctr-torch: building its TensorDataset).
        """
        n_steps = math.ceil(n_samples / batch_size)
        if len(self.stamps) != n_steps:
            raise RuntimeError(f"expected {n_steps} optimizer steps for {n_samples} samples, saw {len(self.stamps)}")
        if n_steps <= warmup:
            raise ValueError(f"{n_steps} training steps leave none after {warmup} warm-up batches")
        steady_seconds = self.stamps[-1] - self.stamps[warmup - 1] if warmup else self.stamps[-1] - t_call
        epoch_seconds = self.stamps[-1] - t_call
        return {
            "train_seconds": epoch_seconds,
            "epoch_samples_per_second": n_samples / epoch_seconds,
            "samples_per_second": (n_samples - warmup * batch_size) / steady_seconds,
            "warmup_batches": warmup,
        }


class LearningCurve:
    """Test AUC after the step that brings the samples seen to each of `at` (steps of `batch_size` samples of
    an epoch of `total`; not after the last step, which ends training, where the worker scores anyway).

    Registered after the StepClock, so the clock has stamped the step; the evaluation's time is added to the
    clock's pause. `score()` returns the AUC and leaves the model in training mode."""

    def __init__(self, at: list[int], batch_size: int, total: int, clock: StepClock, score) -> None:
        self.at, self.batch_size, self.total, self.clock, self.score = sorted(set(at)), batch_size, total, clock, score
        self.steps, self.points = 0, []
        self._handle = register_optimizer_step_post_hook(lambda *_: self._step())

    def _step(self) -> None:
        before, self.steps = self.steps * self.batch_size, self.steps + 1
        seen = self.steps * self.batch_size
        if seen < self.total and any(before < n <= seen for n in self.at):
            t0 = time.perf_counter()
            self.points.append({"samples": seen, "auc": float(self.score())})
            self.clock.paused += time.perf_counter() - t0

    def close(self) -> None:
        self._handle.remove()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def emit(result: dict) -> None:
    result = {**result, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "peak_rss_mb": round(peak_rss_mb(), 1)}
    print(RESULT_TAG + json.dumps(result), flush=True)
