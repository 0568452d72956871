"""`canctr demo`: CAN's claim, end to end, in one command and without any data files.

It prepares the synthetic co-action world (`canctr.data.formats.synthetic`: clicks from a hidden, known
(target, history item) interaction table, so the Bayes-optimal AUC is known), trains DNN, DIN, CAN-DNN
and CAN-DIN (those of them registered) with the library's own `fit`, and prints one table: AUC, GAUC,
logloss, the gap to the Bayes AUC, parameters, training samples/s and wall seconds per model. A model
that captures co-action (CAN) should end up closer to the Bayes AUC than one that sum-pools the history
(DNN).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from canctr.data.batch import load_split
from canctr.data.formats.synthetic import WorldConfig, prepare_synthetic
from canctr.data.samples import PrepareOptions
from canctr.train.metrics import ctr_metrics

DEMO_MODELS = ("dnn", "din", "can-dnn", "can-din")
DEMO_EPOCHS = 2  # one epoch of 64 k samples leaves every model short of what it can learn
# batches of 128 through 200-80 MLPs are too small for intra-op parallelism to pay: on the project's
# 2-core machine, shared with other jobs, 2 torch threads ran DNN ~15x slower than 1 (oversubscription)
DEMO_THREADS = 1


def run_demo(
    out: str | Path | None = None,
    *,
    models: Sequence[str] = DEMO_MODELS,
    world: WorldConfig | None = None,
    epochs: int = DEMO_EPOCHS,
    seed: int = 3,
    device: str = "auto",
    threads: int | None = DEMO_THREADS,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Prepare `world` (default WorldConfig()) into `out` (a temporary folder when None), train `models`
    (unregistered names are skipped with a note) with `threads` torch CPU threads (None: torch's default),
    echo progress and the table; returns the Bayes row followed by one row per model."""
    import torch

    from canctr.models import list_models
    from canctr.train.loop import TrainConfig, fit

    world = world or WorldConfig()
    registered = {e.name for e in list_models()}
    missing = [m for m in models if m not in registered]
    if missing:
        echo(f"not registered, skipped: {', '.join(missing)}")
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory(prefix="canctr-demo-") if out is None else nullcontext(out)
    try:
        with tmp as where:
            root = Path(where)
            start = time.perf_counter()
            opts = PrepareOptions(max_len=world.hist_max, test_fraction=0.2, seed=seed)
            schema = prepare_synthetic(root / "data", world, opts)
            echo(
                f"synthetic world: {world.users:,} users, {world.items:,} items, {world.cates} categories; "
                f"{schema.splits['train']:,} train / {schema.splits['test']:,} test samples; "
                f"Bayes AUC {schema.counts['bayes_auc']:.4f} ({time.perf_counter() - start:.1f}s)"
            )
            test = load_split(root / "data", "test", schema.spec)
            bayes = {
                "model": "bayes (true_prob)",
                **ctr_metrics(test.label, test.extras["true_prob"], test.group),
            }
            rows = [bayes]
            for name in (m for m in models if m in registered):
                t0 = time.perf_counter()
                cfg = TrainConfig(
                    data=str(root / "data"),
                    model=name,
                    out=str(root / "runs" / name),
                    epochs=epochs,
                    seed=seed,
                    device=device,
                    progress=False,
                )
                rows.append({**fit(cfg), "seconds": time.perf_counter() - t0})
                echo(f"  {name}: auc {rows[-1]['auc']:.4f} ({rows[-1]['seconds']:.1f}s)")
            for r in rows:
                r["bayes_gap"] = bayes["auc"] - r["auc"]
            echo(format_table(rows))
            echo(f"total {time.perf_counter() - start:.1f}s" + (f"; data and runs in {root}" if out else ""))
    finally:
        torch.set_num_threads(threads_before)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A markdown table of `run_demo` rows."""
    head = "| model | AUC | GAUC | logloss | Bayes AUC - AUC | params | train samples/s | seconds |"
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        trained = "n_params" in r
        lines.append(
            f"| {r['model']} | {r['auc']:.4f} | {r['gauc']:.4f} | {r['logloss']:.4f} | {r['bayes_gap']:.4f} | "
            + (
                f"{r['n_params']:,} | {r['train_samples_per_second']:,.0f} | {r['seconds']:.1f} |"
                if trained
                else "- | - | - |"
            )
        )
    return "\n".join(lines)
