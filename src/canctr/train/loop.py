"""The training loop: `train_step` (one optimizer step, pure), `evaluate`, and `fit` (the loop).

Sample order is a function of (seed, epoch) only (see BatchLoader.order), checkpoints carry (epoch, step)
and the optimizer state, so `fit(resume=True)` continues exactly where an interrupted run stopped. Under
torchrun, `fit` trains data-parallel: train/distributed.py joins the group, wraps the model in DDP and
gathers the evaluation; only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from canctr import __version__
from canctr.data.batch import Batch, BatchLoader, load_split
from canctr.data.schema import Schema, SchemaError, atomic_write_text
from canctr.env import machine_description
from canctr.layers.embedding import deferred_tables
from canctr.memory import keep_freed_memory
from canctr.models import create_model, make_config
from canctr.models.base import negative_groups
from canctr.train import distributed
from canctr.train.checkpoint import (
    check_disk_space,
    check_writable,
    load_model,
    remove_checkpoints,
    resume_training,
    save_checkpoint,
)
from canctr.train.metrics import ctr_metrics
from canctr.train.optim import OPTIMIZERS, PLAIN_TABLE_OPTIMIZERS, make_optimizer
from canctr.train.sharded import SHARD_INITS, SHARDINGS, TABLE_OPTIMIZERS, ShardedTables

log = logging.getLogger("canctr.train")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Defaults follow the official CAN code (train.py): Adam 1e-3, batch 128, 1 epoch, lr x0.5 per epoch."""

    data: str
    model: str
    out: str
    epochs: int = 1
    batch_size: int = 128  # the global batch: each of W data-parallel ranks takes batch_size / W (distributed.py)
    eval_batch_size: int = 1024
    lr: float = 1e-3
    lr_decay: float = 0.5  # multiply lr after each epoch (official code; no effect with 1 epoch)
    optimizer: str = "adam"  # "adam" (dense, the code's) or "lazy_adam" (sparse embedding rows); see train/optim.py
    seed: int = 3
    device: str = "auto"
    max_len: int = 100  # training history cut-off (most recent); evaluation uses `eval_max_len`
    bucket: int = 20  # sort windows of bucket x batch_size samples by history length (official iterator)
    shuffle_blocks: int = 0  # > 0: each shuffle window is that many contiguous blocks (data beyond the page cache)
    eval_max_len: int = 0  # 0: every stored position (the official code evaluates untruncated)
    model_config: dict[str, Any] = field(default_factory=dict)  # strict overrides of the model config
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: only at epoch ends)
    keep_checkpoints: int = 2  # the newest + older ones that --resume falls back on if a newer one is damaged
    eval_every: int = 0  # steps between extra evaluations logged to curves (0: only at epoch ends)
    eval_at_samples: tuple[int, ...] = ()  # extra evaluations once these many training samples are seen (curves)
    shard_tables: str = ""  # "row" / "table": embedding tables sharded with torchrec over the ranks (sharded.py)
    table_optimizer: str = ""  # the tables' own optimizer (sgd, adagrad); "": --optimizer
    table_lr: float = 0.0  # the table optimizer's learning rate (0: lr)
    shard_init: str = "blocks"  # sharded tables' first rows: "blocks" (drawn per shard) or "copy" (the plain run's)
    log_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_len", "bucket", "eval_max_len", "checkpoint_every", "eval_every", "shuffle_blocks"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        at = tuple(self.eval_at_samples)
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in at):
            raise ValueError(f"TrainConfig.eval_at_samples must be positive sample counts, got {list(at)}")
        self.eval_at_samples = tuple(sorted(set(at)))
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"TrainConfig.lr must be a positive number, got {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.shard_tables and self.shard_tables not in SHARDINGS:
            raise ValueError(f"TrainConfig.shard_tables must be one of {', '.join(SHARDINGS)}, "
                             f"got {self.shard_tables!r}")
        if self.shard_tables and not self.table_optimizer:
            self.table_optimizer = "adagrad"  # sharded tables train with a fused optimizer; Adam has none on CPU
        allowed = TABLE_OPTIMIZERS if self.shard_tables else PLAIN_TABLE_OPTIMIZERS
        if self.table_optimizer and self.table_optimizer not in allowed:
            raise ValueError(f"TrainConfig.table_optimizer must be one of {', '.join(allowed)}"
                             f"{' with' if self.shard_tables else ' without'} --shard-tables, got "
                             f"{self.table_optimizer!r}")
        if self.shard_init not in SHARD_INITS:
            raise ValueError(f"TrainConfig.shard_init must be one of {', '.join(SHARD_INITS)}, got {self.shard_init!r}")
        if not self.table_lr >= 0 or not math.isfinite(self.table_lr):
            raise ValueError(f"TrainConfig.table_lr must be >= 0 (0: lr), got {self.table_lr}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    return dev


def ctr_loss(output_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(output_logits, labels)


def batch_loss(model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The training objective of one batch: (click loss + the model's auxiliary losses, click loss, aux losses)."""
    out = model(batch)
    ctr = ctr_loss(out.logits, batch.label)
    return (ctr + sum(out.aux_losses.values()) if out.aux_losses else ctr), ctr, out.aux_losses


def train_step(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """One optimizer step. Returns detached loss terms (tensors: no host sync here)."""
    model.train()
    loss, ctr, aux = batch_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    terms = {"loss": loss.detach(), "ctr_loss": ctr.detach()}
    terms.update({k: v.detach() for k, v in aux.items()})
    return terms


@torch.no_grad()
def predict(model: nn.Module, loader: BatchLoader) -> dict[str, np.ndarray]:
    """Probabilities, labels and groups over a loader, in loader order."""
    model.eval()
    probs, labels, groups = [], [], []
    for batch in loader.iter_epoch(0):
        probs.append(torch.sigmoid(model(batch).logits.float()))
        labels.append(batch.label)
        groups.append(batch.group)
    cat = lambda xs: torch.cat(xs).cpu().numpy() if xs else np.zeros(0)  # noqa: E731
    return {"prob": cat(probs), "label": cat(labels), "group": cat(groups)}


def evaluate(model: nn.Module, loader: BatchLoader) -> dict[str, float]:
    p = predict(model, loader)
    return ctr_metrics(p["label"], p["prob"], p["group"])


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _setup_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("canctr")
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return handler


def _loaders(cfg: TrainConfig, schema: Schema, model: nn.Module, device: torch.device,
             ddp: distributed.Dist | None = None) -> tuple[BatchLoader, BatchLoader]:
    """Train: this rank's stride of each global batch (cfg.batch_size is global); test: the whole split."""
    spec = schema.spec
    ddp = ddp or distributed.Dist()
    train = BatchLoader(
        load_split(cfg.data, "train", spec), spec, batch_size=ddp.per_rank_batch(cfg.batch_size), shuffle=True,
        seed=cfg.seed, device=device, max_len=cfg.max_len or None, bucket=cfg.bucket,
        negatives=negative_groups(model), rank=ddp.rank, world_size=ddp.world_size, shuffle_blocks=cfg.shuffle_blocks,
    )
    test = BatchLoader(
        load_split(cfg.data, "test", spec), spec, batch_size=cfg.eval_batch_size, shuffle=False,
        device=device, max_len=cfg.eval_max_len or None,
    )
    return train, test


def fit(cfg: TrainConfig, resume: bool = False) -> dict[str, Any]:
    """Train `cfg.model` on `cfg.data`, evaluate on the held-out split, write RUN_DIR artefacts."""
    schema = Schema.load(_prepared_dir(cfg.data))  # a bad --data fails before the run directory is made
    keep_freed_memory()  # the step's buffers stay in the heap (canctr/memory.py)
    ddp = distributed.setup(cfg.device)  # under torchrun: join the group; else the 1-process no-op
    resume = resume or distributed.restart_count() > 0  # torchrun restarted the group: continue the run
    run_dir = Path(cfg.out)
    handler = None
    try:
        if ddp.is_main:  # only rank 0 writes
            check_writable(run_dir)  # a read-only run directory fails now, not at the first checkpoint
            handler = _setup_logging(run_dir)
        result = _fit(cfg, schema, run_dir, resume, ddp)
        # every rank done before any tears the group down: a rank that destroyed its group and exited while
        # another was still writing was seen to abort in gloo's teardown ("terminate called without an active
        # exception") once in CI; on an error path no barrier (the other ranks may never arrive)
        ddp.barrier()
        return result
    finally:
        if handler is not None:
            logging.getLogger("canctr").removeHandler(handler)
            handler.close()
        ddp.teardown()


def _prepared_dir(path: str | Path) -> Path:
    """`path` as a prepared directory: Schema.load also takes a schema.json file, the splits need the folder."""
    path = Path(path)
    if path.is_file():
        raise SchemaError(f"{path}: is a file; expected a prepared directory (with schema.json)")
    return path


def _fit(cfg: TrainConfig, schema: Schema, run_dir: Path, resume: bool,
         ddp: distributed.Dist | None = None) -> dict[str, Any]:
    ddp = ddp or distributed.Dist()
    device = ddp.device if ddp.enabled else resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model_cfg = make_config(cfg.model, cfg.model_config)
    table_lr = cfg.table_lr or cfg.lr
    sharded: ShardedTables | None = None
    if cfg.shard_tables:  # tables built as shapes only, then allocated shard by shard on their ranks
        if not ddp.enabled:
            raise ValueError("--shard-tables needs 2 or more ranks (--nproc N or torchrun --nproc-per-node N, "
                             "N >= 2); this job has 1")
        if resume:
            raise ValueError("--shard-tables runs cannot resume: the fused table optimizer's state is not "
                             "checkpointed (drop --resume / --max-restarts)")
        # "copy": every rank builds the plain run's model (whole tables, once) and keeps its shards of them
        with deferred_tables() if cfg.shard_init == "blocks" else nullcontext():
            model = create_model(cfg.model, schema, model_cfg)
        sharded = ShardedTables(model, cfg.shard_tables, cfg.table_optimizer, table_lr, cfg.seed)
        sharded.attach(model)  # a training forward looks each table up once (one fused update per table)
        model = model.to(device)
        optimizer = make_optimizer(model, cfg.lr, cfg.optimizer)  # the dense part; the tables' is fused
        log.info("embedding tables sharded %s-wise over %d ranks (%d parameters, %.1f MB on this rank), "
                 "trained by fused %s at lr %g", cfg.shard_tables, ddp.world_size, sharded.num_parameters,
                 sharded.local_bytes() / 2**20, cfg.table_optimizer, table_lr)
    else:
        model = create_model(cfg.model, schema, model_cfg).to(device)
        optimizer = make_optimizer(model, cfg.lr, cfg.optimizer, cfg.table_optimizer, table_lr)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # lr, or table_lr for a table optimizer's group
    ckpt_dir = run_dir / "checkpoint"
    if ddp.is_main and sharded is None:
        check_disk_space(ckpt_dir, model, cfg.keep_checkpoints)  # a full disk fails now, not after an epoch
    train_loader, test_loader = _loaders(cfg, schema, model, device, ddp)
    if len(train_loader) == 0:
        raise ValueError(f"{cfg.data}: the training split is empty")

    start_epoch, start_step, curves, train_seconds, seen = 0, 0, [], 0.0, 0
    resumed = resume_training(ckpt_dir, model, optimizer) if resume else None
    if resumed is not None:
        path, state = resumed
        if state.get("finished"):
            log.info("run already finished; re-evaluating only")
        start_epoch, start_step = state["epoch"], state["step"]
        curves, train_seconds, seen = state["curves"], state["train_seconds"], state["samples_seen"]
        log.info("resumed from %s: epoch %d step %d", path.name, start_epoch, start_step)
    elif not resume and ddp.is_main:
        remove_checkpoints(ckpt_dir)  # an earlier run's, which --resume could otherwise fall back on
    ddp.check_same([start_epoch, start_step], "the resumed (epoch, step)")
    train_model = ddp.wrap(model)  # DDP (or `model` itself): train through it; save and evaluate `model`

    def evaluate_all() -> dict[str, float]:  # every rank's test predictions, metrics computed once
        if ddp.enabled:
            return ddp.evaluate(model, test_loader, lockstep=sharded is not None)
        return evaluate(model, test_loader)

    if ddp.is_main:
        (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2, sort_keys=True) + "\n")

    n_params = count_params(model) + (sharded.num_parameters if sharded is not None else 0)
    log.info("model %s: %d parameters; %d train / %d test samples; device %s",
             cfg.model, n_params, train_loader.n, test_loader.n, device)

    def checkpoint(epoch: int, step: int, finished: bool = False) -> None:
        state = {"epoch": epoch, "step": step, "finished": finished, "curves": curves,
                 "train_seconds": train_seconds, "samples_seen": seen}
        if sharded is not None:  # the whole tables on rank 0 as ordinary ones; no optimizer state (no resume)
            tables = sharded.gather()
            if ddp.is_main:
                with sharded.restored(tables):
                    save_checkpoint(ckpt_dir, model, schema, train_state=state,
                                    step=epoch * len(train_loader) + step, keep=cfg.keep_checkpoints)
            del tables
        elif ddp.is_main:  # every rank holds the same weights and optimizer state
            save_checkpoint(ckpt_dir, model, schema, optimizer=optimizer, train_state=state,
                            step=epoch * len(train_loader) + step, keep=cfg.keep_checkpoints)
        ddp.barrier()  # no rank runs ahead of a checkpoint it could be restarted from

    final: dict[str, Any] | None = None  # evaluation of the model as trained, set at each epoch end
    eval_seconds = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        for g, base in zip(optimizer.param_groups, base_lrs, strict=True):  # the tables' own lr decays too
            g["lr"] = base * (cfg.lr_decay ** epoch)
        if sharded is not None:
            sharded.set_lr(table_lr * (cfg.lr_decay ** epoch))
        n_batches = len(train_loader)
        step0 = start_step if epoch == start_epoch else 0
        bar = _progress(cfg, n_batches, step0, epoch)
        t0 = time.perf_counter()
        running, running_ctr, running_n = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for step, batch in enumerate(train_loader.iter_epoch(epoch, step0), start=step0):
            terms = train_step(train_model, batch, optimizer)
            seen += batch.size * ddp.world_size  # global samples: every rank's batch has this size
            running += terms["loss"]
            running_ctr += terms["ctr_loss"]
            running_n += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == n_batches:
                if ddp.enabled:  # the ranks' mean: one allreduce per log interval, none per step
                    running, running_ctr = ddp.mean(torch.stack([running, running_ctr]))
                avg = float(running) / running_n  # one host sync per log interval
                if not math.isfinite(avg):
                    raise TrainingDiverged(
                        f"loss became {avg} at epoch {epoch} step {done}; lower --lr or check the data"
                    )
                elapsed = train_seconds + time.perf_counter() - t0
                curves.append({"epoch": epoch, "step": done, "loss": avg, "ctr_loss": float(running_ctr) / running_n,
                               "samples": seen})
                if bar is not None:
                    bar.set_postfix(loss=f"{avg:.4f}", sps=f"{seen / max(elapsed, 1e-9):,.0f}")
                log.info("epoch %d step %d/%d loss %.5f", epoch, done, n_batches, avg)
                running, running_ctr, running_n = torch.zeros((), device=device), torch.zeros((), device=device), 0
            if bar is not None:
                bar.update(1)
            periodic = cfg.eval_every and done % cfg.eval_every == 0
            crossed = any(seen - batch.size * ddp.world_size < n <= seen for n in cfg.eval_at_samples)
            if (periodic or crossed) and done != n_batches:
                train_seconds += time.perf_counter() - t0
                m = evaluate_all()
                curves.append({"epoch": epoch, "step": done, "eval_auc": m["auc"], "eval_gauc": m["gauc"],
                               "eval_logloss": m["logloss"], "samples": seen})
                t0 = time.perf_counter()
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != n_batches:
                train_seconds += time.perf_counter() - t0
                checkpoint(epoch, done)
                t0 = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds += time.perf_counter() - t0
        if bar is not None:
            bar.close()
        t_eval = time.perf_counter()
        m = final = evaluate_all()
        eval_seconds = time.perf_counter() - t_eval
        curves.append({"epoch": epoch, "step": n_batches, "eval_auc": m["auc"], "eval_gauc": m["gauc"],
                       "eval_logloss": m["logloss"], "samples": seen})
        log.info("epoch %d: auc %.5f gauc %.5f logloss %.5f", epoch, m["auc"], m["gauc"], m["logloss"])
        checkpoint(epoch + 1, 0, finished=epoch + 1 == cfg.epochs)
        start_step = 0

    if final is None:  # resumed a finished run: nothing trained here, evaluate the loaded model
        t_eval = time.perf_counter()
        final = evaluate_all()
        eval_seconds = time.perf_counter() - t_eval
    metrics = final  # the last epoch's evaluation is the final one: the model has not changed since
    result = {
        **metrics,
        "model": cfg.model,
        "seed": cfg.seed,
        "dataset": schema.dataset,
        "data_dir": str(cfg.data),
        "n_params": n_params,
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,  # the global batch
        "world_size": ddp.world_size,
        "batch_size_per_rank": train_loader.batch_size,
        "lr": cfg.lr,
        "shard_tables": cfg.shard_tables,
        "table_optimizer": cfg.table_optimizer,
        "train_samples": seen,
        "train_seconds": train_seconds,
        "train_samples_per_second": seen / train_seconds if train_seconds > 0 else float("nan"),
        "eval_seconds": eval_seconds,
        "device": str(device),
        "torch": torch.__version__,
        "canctr": __version__,
        "machine": machine_description(device),
        "curves": curves,
    }
    if ddp.is_main:
        atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=2) + "\n")
    log.info("final: auc %.5f gauc %.5f logloss %.5f (%.0f samples/s)", metrics["auc"], metrics["gauc"],
             metrics["logloss"], result["train_samples_per_second"])
    return result


def _progress(cfg: TrainConfig, total: int, initial: int, epoch: int):
    if not cfg.progress or not distributed.is_main_process():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"{cfg.model} epoch {epoch}", unit="batch",
                mininterval=1.0, dynamic_ncols=True)


def evaluate_run(run_dir: str | Path, data_dir: str | Path | None = None, device: str = "auto",
                 batch_size: int = 1024) -> dict[str, float]:
    """Re-score a saved run on the held-out split (data_dir defaults to the run's own)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    cfg = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").exists() else {}
    data_dir = data_dir or cfg.get("data")
    if data_dir is None:
        raise ValueError(f"{run_dir}: no config.json; pass --data")
    dev = resolve_device(device)
    model, schema = load_model(run_dir / "checkpoint", dev)
    data_schema = Schema.load(_prepared_dir(data_dir))
    if data_schema.vocab != schema.vocab or data_schema.spec != schema.spec:
        raise ValueError(
            f"{data_dir}: its feature spec or vocabulary sizes ({data_schema.vocab}) differ from the checkpoint's "
            f"({schema.vocab}): the data was prepared differently"
        )
    loader = BatchLoader(load_split(data_dir, "test", schema.spec), schema.spec, batch_size=batch_size,
                         shuffle=False, device=dev, max_len=cfg.get("eval_max_len") or None)
    return evaluate(model, loader)
