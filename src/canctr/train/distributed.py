"""Data-parallel training: DistributedDataParallel over the environment torchrun sets up.

`fit` calls `setup()` first. Outside torchrun (no WORLD_SIZE/RANK/LOCAL_RANK) it returns a 1-process `Dist`
and nothing here changes a run. Under torchrun with WORLD_SIZE > 1 every rank:

- joins the process group (gloo on CPU, NCCL on CUDA; env:// rendezvous, a timeout on every collective);
- takes device cuda:LOCAL_RANK (with --device auto/cuda on a GPU machine) and cores // LOCAL_WORLD_SIZE
  CPU threads;
- trains a replica wrapped in DDP on its stride of the global batch (BatchLoader rank/world_size): the
  gradient allreduce averages the per-rank means, so a step is the 1-process step at the same global batch;
- scores a contiguous block of whole eval batches and all-gathers (prob, label, group) so AUC/GAUC/logloss are
  computed once over the whole test split, in the split's order;
- writes nothing: rank 0 alone writes config.json, train.log, metrics.json and the checkpoints.

TORCHELASTIC_RESTART_COUNT > 0 (torchrun restarted the group after a failure, `--max-restarts`) is treated
as `--resume`: every rank loads the same last checkpoint. See docs/distributed.md.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from canctr.data.batch import BatchLoader
from canctr.train.metrics import ctr_metrics

TIMEOUT_ENV = "CANCTR_DIST_TIMEOUT_S"  # seconds a collective may wait for the other ranks (default 600)
_TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")

# The tensors of this process's most recent collectives, kept referenced from Python until the interpreter
# exits. A gloo worker thread drops its reference to a finished collective a moment after the caller's wait()
# returns, and a barrier keeps the collectives still in progress when it was queued. If Python no longer
# references such a tensor, that drop is the last one and must take the GIL to free the Python object; at
# interpreter exit the thread cannot, and the process aborts ("terminate called without an active exception",
# SIGABRT, seen in about 1 in 17 two-process runs when exit followed the last barrier within milliseconds).
# With Python holding the tensors the worker's drop only decrements a count, and the main thread frees them.
_HELD: deque[tuple[torch.Tensor, ...]] = deque(maxlen=32)  # a collective this many calls old ended long ago


def _held(*tensors: torch.Tensor) -> None:
    _HELD.append(tensors)


def launched() -> bool:
    """True under torchrun (or any launcher that sets WORLD_SIZE, RANK and LOCAL_RANK)."""
    return all(k in os.environ for k in _TORCHRUN_ENV)


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (0 on the first start or outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def is_main_process() -> bool:
    """Rank 0, or not distributed: the process that prints and writes."""
    return int(os.environ.get("RANK", "0") or 0) == 0


@dataclass
class Dist:
    """This process's place in the job. world_size 1: not distributed (every method is a no-op)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this process initialised the process group, so `teardown` destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def per_rank_batch(self, global_batch: int) -> int:
        """`--batch-size` is the global batch: each rank takes global_batch / world_size samples a step."""
        if global_batch % self.world_size:
            raise ValueError(f"--batch-size {global_batch} is the global batch and must be divisible "
                             f"by the world size {self.world_size}")
        return global_batch // self.world_size

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around `model` (which keeps its own parameters: save and evaluate `model`, not the wrapper).

        find_unused_parameters costs a graph traversal per step, so it is on only for a model that holds
        parameters its training step can skip: an auxiliary-loss network with the loss switched off (DIEN's
        aux_weight=0). Every registered model uses all its parameters in a training step otherwise (checked
        for each one: every parameter gets a gradient); the unknown row is a row of a used table.
        """
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel as DDP

        from canctr.layers.sequence import AuxiliaryLoss
        from canctr.models.base import negative_groups

        skips = any(isinstance(m, AuxiliaryLoss) for m in model.modules()) and not negative_groups(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=skips)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of `x` over the ranks (an allreduce; call at log intervals only)."""
        if not self.enabled:
            return x
        x = x.detach().clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        _held(x)
        return x / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def check_same(self, values: list[int], what: str) -> None:
        """Raise on every rank unless all ranks hold the same `values` (e.g. the resumed epoch and step)."""
        if not self.enabled:
            return
        mine = torch.tensor(values, dtype=torch.long, device=self.device)
        every = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(every, mine)
        _held(mine, *every)
        rows = [t.tolist() for t in every]
        if any(r != rows[0] for r in rows):
            raise RuntimeError(f"ranks disagree on {what}: {rows} (rank order); every rank must see the same "
                               "run directory (a shared file system for several machines)")

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's `x` [n_r, ...] in rank order; the n_r may differ. Returns [sum n_r, ...]."""
        if not self.enabled:
            return x
        n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
        dist.all_gather(sizes, n)
        _held(n, *sizes)
        sizes_ = [int(s) for s in sizes]
        padded = torch.zeros((max(sizes_), *x.shape[1:]), dtype=x.dtype, device=x.device)
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        _held(padded, *parts)
        return torch.cat([p[:s] for p, s in zip(parts, sizes_, strict=True)])

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: BatchLoader, lockstep: bool = False) -> dict[str, float]:
        """Metrics over the whole (unsharded, unshuffled) `loader` split, computed once from every rank's part.

        The split's batches [0, bs), [bs, 2bs), ... are dealt to the ranks in contiguous blocks, so each batch
        (and its padded width) is the 1-process one and the gathered predictions are in the split's order.
        `lockstep`: every rank runs as many forward passes as the rank with the most batches (a model whose
        forward is itself a collective, sharded tables); a rank with fewer scores its first batch again and
        drops the result.
        """
        model.eval()
        bs = loader.batch_size
        n_batches = -(-loader.n // bs)
        lo, hi = self.rank * n_batches // self.world_size, (self.rank + 1) * n_batches // self.world_size
        probs, labels, groups = [], [], []
        for b in range(lo, hi):
            batch = loader.batch(torch.arange(b * bs, min(loader.n, (b + 1) * bs)))
            probs.append(torch.sigmoid(model(batch).logits.float()))
            labels.append(batch.label.float())
            groups.append(batch.group.long())
        for _ in range(hi - lo, -(-n_batches // self.world_size) if lockstep else 0):
            model(loader.batch(torch.arange(0, min(loader.n, bs))))
        dev = loader.device

        def local(xs: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
            return torch.cat(xs) if xs else torch.zeros(0, dtype=dtype, device=dev)

        pl = self.gather(torch.stack([local(probs, torch.float32), local(labels, torch.float32)], dim=1))
        grp = self.gather(local(groups, torch.long))
        pl, grp = pl.cpu().numpy(), grp.cpu().numpy()
        return ctr_metrics(pl[:, 1], pl[:, 0], grp)

    def teardown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False
            # release the GIL for a moment: a gloo worker thread still finishing a collective whose objects
            # need it (one of torchrec's, say; ours are held above) does so while the interpreter is alive
            time.sleep(0.05)


def rank_device(name: str, local_rank: int, local_world_size: int) -> torch.device:
    """--device for one rank: auto/cuda -> cuda:LOCAL_RANK (one GPU per process); cpu stays cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    if dev.index is None:
        dev = torch.device("cuda", local_rank)
    elif local_world_size > 1:
        raise ValueError(f"--device {name} would put all {local_world_size} local ranks on one GPU; "
                         "pass --device cuda (rank i takes cuda:LOCAL_RANK)")
    if dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK {local_rank}: no {dev} ({torch.cuda.device_count()} GPUs visible); "
                           "start at most one process per GPU")
    return dev


def threads_per_rank(local_world_size: int) -> int:
    """`--threads` if given, else the cores this process may use (`canctr.threads.available_cores`) // local
    ranks, at least 1.

    torchrun sets OMP_NUM_THREADS=1 for every worker unless the user set it, which would leave all but one
    core per rank idle; so the count is decided here, explicitly."""
    from canctr.threads import available_cores, requested_threads

    return requested_threads() or max(1, available_cores() // max(1, local_world_size))


def setup(device: str) -> Dist:
    """Join the torchrun job if launched by one with WORLD_SIZE > 1, else the 1-process `Dist` (device
    resolved by the caller as before)."""
    if not launched() or int(os.environ["WORLD_SIZE"]) <= 1:
        return Dist()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    dev = rank_device(device, local_rank, local_world)
    torch.set_num_threads(threads_per_rank(local_world))
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))
        # env:// store (torchrun's), with keys of this start only: a restarted group must never read the
        # addresses its dead predecessor left in a store that outlived it
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))
        store = dist.PrefixStore(f"canctr/start{restart_count()}", store)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", store=store, rank=rank,
                                world_size=world, timeout=timeout)
        owns = True
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError(f"the process group ({dist.get_rank()}/{dist.get_world_size()}) is not the "
                           f"environment's RANK/WORLD_SIZE ({rank}/{world})")
    return Dist(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world, device=dev,
                owns_group=owns)

