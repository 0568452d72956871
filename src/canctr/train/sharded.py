"""Embedding tables sharded over the ranks with torchrec, the dense part data-parallel (`--shard-tables`).

`ShardedTables(model, ...)` takes every embedding table of a model built inside
`canctr.layers.embedding.deferred_tables()` (so no table was ever allocated: shapes only), places them in
torchrec `EmbeddingCollection`s (one per width, as torchrec needs) sharded over the process group, and puts a
`ShardedTable` in each table's place. The model keeps its own code: a table is still called with ids of any
shape and returns [..., D] rows, per position (attention, co-action and the Cartesian block read unpooled
rows), with gradients flowing back. Tables shared by several modules (a representation widened into CAN's
induction table) stay one table. What is left in the model (MLPs, attention, GRUs) is the dense part, which
`Dist.wrap` puts in DDP as for plain data-parallel runs.

- "row": every table is split into contiguous row blocks, one per rank (a 5M-row table costs each of W ranks
  1/W of it); "table": each table lives whole on one rank (torchrec's planner balances them).
- A torchrec forward sends ids to the ranks holding their rows (all-to-all) and the rows come back; the
  backward sends the row gradients the same way. In a training forward (`attach`) a dry run of the model
  first records every lookup's ids, then one torchrec forward per width group fetches them all and the real
  forward takes its rows in order; outside training each lookup is its own torchrec forward. Every rank
  makes the same lookups in the same order (the same model code on batches of any size);
  `Dist.evaluate(lockstep=True)` keeps evaluation in step too.
- The tables are trained by torchrec's fused optimizer (fbgemm's, applied in the backward on the rows a
  batch touched): on CPU fbgemm has exact SGD, exact Adagrad and exact row-wise Adagrad, not Adam; the
  first two are used. The dense part keeps the run's `--optimizer`. torchrec divides the row gradients by
  the world size on their way back (its default gradient division), so a table's gradient is the ranks'
  mean, as DDP makes the dense part's.
- The fused update runs in the backward of a torchrec forward, so a table read by several lookups in a
  step (the target item and the history items) must be fetched by one forward to get one update with the
  summed gradient, as the plain path's optimizer step does: that is what the dry run is for. Without it
  Adagrad would step once per lookup, each normalised by its own gradient.
- Initial rows ("blocks", the default): each table's own distribution (`embedding_table`), drawn in blocks of
  `INIT_BLOCK` rows from a generator seeded by (seed, table, block), so row-wise and table-wise runs start
  from the same weights and no rank ever holds a whole table. "copy": the model was built with ordinary
  tables (the plain run's weights, every rank the same), each rank copies its shards and drops the rest:
  the run starts exactly where the plain run starts, at the cost of every rank holding the whole tables
  once while setting up.
- Checkpoints: `gather()` collects the whole tables on rank 0 (a lookup of every row), and `restored()`
  puts them back as ordinary tables while the checkpoint is written, so a checkpoint is a plain one
  (evaluate, export and serve load it). The fused optimizer state is not saved: no `--resume`.

torchrec is optional (`pip install 'canctr[sharded]' && pip install --no-deps torchrec==1.8.0`);
`require_torchrec()` says so in one line.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from canctr.layers.embedding import init_rows

SHARDINGS = ("row", "table")
SHARD_INITS = ("blocks", "copy")  # how fit gives the shards their first rows (see the module docstring)
# fbgemm's fused optimizers on CPU that are wired here (its exact row-wise Adagrad is not: a first try through
# torchrec's RowWiseAdagrad left can-dnn at AUC 0.5, not investigated)
TABLE_OPTIMIZERS = ("adagrad", "sgd")
EPS = 1e-8  # Adagrad's epsilon, fbgemm's default (the plain path's sparse Adagrad uses the same)
INIT_BLOCK = 1 << 16  # rows per initialisation block (and per gathered chunk)
INSTALL = ("--shard-tables needs torchrec and fbgemm-gpu: pip install 'canctr[sharded]' && pip install --no-deps "
           "torchrec==1.8.0 (for torch 2.13 on CPU; see docs/distributed.md)")


def require_torchrec() -> None:
    """Raise the one-line install hint unless torchrec (and its fbgemm kernels) import."""
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except Exception as e:  # an ImportError, or a kernel library built for another torch
        raise RuntimeError(f"{INSTALL} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def tables_of(model: nn.Module) -> dict[str, tuple[nn.Embedding, list[tuple[nn.Module, str]]]]:
    """Every distinct embedding table of `model`: name (its first module path) -> (table, the (parent,
    attribute) places holding it). A table held in several places (weight tying) is listed once."""
    found: dict[int, tuple[str, nn.Embedding, list[tuple[nn.Module, str]]]] = {}
    for parent_name, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent.named_children():
            if isinstance(child, nn.Embedding):
                path = f"{parent_name}.{attr}" if parent_name else attr
                entry = found.setdefault(id(child), (path.replace(".", "__"), child, []))
                if not any(p is parent and a == attr for p, a in entry[2]):
                    entry[2].append((parent, attr))
    return {name: (table, places) for name, table, places in found.values()}


def draw_rows(name: str, num: int, dim: int, init: str, seed: int, lo: int, hi: int) -> Tensor:
    """Rows [lo, hi) of table `name` [num, dim] as the "blocks" initialisation draws them: block b of
    `INIT_BLOCK` rows from a generator seeded by (seed, name, b), so any split of the rows draws the same."""
    table_seed = zlib.crc32(name.encode()) ^ (seed * 1_000_003)
    out = torch.empty(hi - lo, dim)
    for b in range(lo // INIT_BLOCK, -(-hi // INIT_BLOCK)):
        b_lo, b_hi = b * INIT_BLOCK, min(num, (b + 1) * INIT_BLOCK)
        g = torch.Generator().manual_seed((table_seed + b * 7919) & 0x7FFF_FFFF_FFFF_FFFF)
        block = init_rows(torch.empty(b_hi - b_lo, dim), num, dim, init, g)
        a, z = max(b_lo, lo), min(b_hi, hi)
        out[a - lo : z - lo] = block[a - b_lo : z - b_lo]
    return out


@torch.no_grad()
def materialize_tables(model: nn.Module, seed: int) -> None:
    """Ordinary tables in place of the meta tables of a model built inside `deferred_tables()`, holding the
    rows that sharded tables with the "blocks" initialisation start from (a plain run to compare with)."""
    for name, (table, places) in tables_of(model).items():
        if not table.weight.is_meta:
            continue
        init = getattr(table, "init", "glorot")
        new = nn.Embedding(table.num_embeddings, table.embedding_dim,
                           _weight=draw_rows(name, table.num_embeddings, table.embedding_dim, init, seed, 0,
                                             table.num_embeddings))
        new.init = init
        for parent, attr in places:
            setattr(parent, attr, new)


class ShardedTable(nn.Module):
    """Stands in a model for a table of `ShardedTables`: ids [...] -> rows [..., D]. Holds no parameters."""

    def __init__(self, name: str, num_embeddings: int, embedding_dim: int, owner: ShardedTables) -> None:
        super().__init__()
        self.name, self.num_embeddings, self.embedding_dim = name, num_embeddings, embedding_dim
        self._owner = [owner]  # a list: the owner is not a submodule (its shards are not this model's)

    def forward(self, ids: Tensor) -> Tensor:
        return self._owner[0].lookup(self.name, ids)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, sharded"


class _Collections(nn.Module):
    """One torchrec EmbeddingCollection per table width; forward(width key, features) -> its lookups."""

    def __init__(self, collections: dict[str, nn.Module]) -> None:
        super().__init__()
        self.collections = nn.ModuleDict(collections)

    def forward(self, key: str, features: Any) -> Any:  # noqa: ANN401 (torchrec's types)
        return self.collections[key](features)


class ShardedTables:
    """The model's tables as torchrec-sharded collections over the default process group (see the module
    docstring). Replaces the tables in `model` in place; `model` must have been built inside
    `deferred_tables()` (meta tables) or hold ordinary tables, whose weights are then copied."""

    def __init__(self, model: nn.Module, sharding: str, optimizer: str, lr: float, seed: int) -> None:
        require_torchrec()
        from torchrec import EmbeddingCollection, EmbeddingConfig
        from torchrec.distributed.embedding import EmbeddingCollectionSharder
        from torchrec.distributed.embedding_types import EmbeddingComputeKernel
        from torchrec.distributed.model_parallel import DistributedModelParallel
        from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
        from torchrec.distributed.types import ShardingType
        from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

        if sharding not in SHARDINGS:
            raise ValueError(f"--shard-tables must be one of {', '.join(SHARDINGS)}, got {sharding!r}")
        if optimizer not in TABLE_OPTIMIZERS:
            raise ValueError(f"--table-optimizer must be one of {', '.join(TABLE_OPTIMIZERS)} with --shard-tables "
                             f"(fbgemm's fused optimizers on CPU), got {optimizer!r}")
        if not dist.is_initialized() or dist.get_world_size() < 2:
            raise ValueError("--shard-tables needs a process group of 2 or more ranks: run with --nproc N (N >= 2) "
                             "or under torchrun")
        tables = tables_of(model)
        if not tables:
            raise ValueError(f"model {getattr(model, 'model_name', type(model).__name__)!r} has no embedding tables "
                             "to shard")
        self.world_size, self.rank, self.seed = dist.get_world_size(), dist.get_rank(), seed
        self.shape = {n: (t.num_embeddings, t.embedding_dim) for n, (t, _) in tables.items()}
        self.init = {n: getattr(t, "init", "glorot") for n, (t, _) in tables.items()}
        # fbgemm's kernels take widths that are multiples of 4: a table of width D is stored D rounded up,
        # and a lookup returns its first D columns (the padding columns get zero gradients and stay unused)
        self.stored = {n: -(-d // 4) * 4 for n, (_, d) in self.shape.items()}
        self.group_of = {n: f"d{w}" for n, w in self.stored.items()}
        self.keys: dict[str, list[str]] = {}
        for n, g in self.group_of.items():
            self.keys.setdefault(g, []).append(n)
        self.sharding, self.optimizer = sharding, optimizer
        configs = {g: [EmbeddingConfig(name=n, num_embeddings=self.shape[n][0], embedding_dim=self.stored[n],
                                       feature_names=[n]) for n in names] for g, names in self.keys.items()}
        collections = _Collections({g: EmbeddingCollection(tables=c, device=torch.device("meta"))
                                    for g, c in configs.items()})
        opt_cls, opt_args = {
            "sgd": (torch.optim.SGD, {"lr": lr}),
            "adagrad": (torch.optim.Adagrad, {"lr": lr, "eps": EPS}),
        }[optimizer]
        apply_optimizer_in_backward(opt_cls, collections.parameters(), opt_args)
        kind = ShardingType.ROW_WISE if sharding == "row" else ShardingType.TABLE_WISE
        constraints = {n: ParameterConstraints(sharding_types=[kind.value],
                                               compute_kernels=[EmbeddingComputeKernel.FUSED.value])
                       for n in self.shape}
        sharder = EmbeddingCollectionSharder()
        topology = Topology(world_size=self.world_size, compute_device="cpu")
        planner = EmbeddingShardingPlanner(topology=topology, constraints=constraints)
        plan = planner.collective_plan(collections, [sharder], dist.GroupMember.WORLD)
        self.dmp = DistributedModelParallel(collections, device=torch.device("cpu"), plan=plan, sharders=[sharder])
        self._fill({n: t for n, (t, _) in tables.items()})
        self.places = {n: places for n, (_, places) in tables.items()}
        self._mode, self._recorded, self._replay = "direct", [], None  # see `attach`
        self.proxies = {n: ShardedTable(n, *self.shape[n], self) for n in self.shape}
        self._place(self.proxies)

    # ------------------------------------------------------------------------------------------ set-up

    def _shards(self) -> Iterator[tuple[str, Tensor, int, int]]:
        """(table, local shard tensor [rows, cols] (a view of the fused weights), first row, first column)."""
        for key, value in self.dmp.state_dict().items():
            name = key.split(".")[-2]
            if name not in self.shape or not hasattr(value, "local_shards"):
                continue
            for shard in value.local_shards():
                r0, c0 = shard.metadata.shard_offsets
                yield name, shard.tensor, int(r0), int(c0)

    @torch.no_grad()
    def _fill(self, tables: dict[str, nn.Embedding]) -> None:
        """Initial rows of the local shards: copied from an ordinary table, else drawn block by block."""
        for name, shard, r0, c0 in self._shards():
            rows, cols = shard.shape
            source = tables[name].weight
            if not source.is_meta:
                shard.zero_()
                c1 = min(c0 + cols, source.shape[1])
                if c1 > c0:
                    shard[:, : c1 - c0] = source[r0 : r0 + rows, c0:c1]
                continue
            num, dim = self.shape[name]
            shard.zero_()
            c1 = min(c0 + cols, dim)
            for lo in range(r0, r0 + rows, INIT_BLOCK):  # a block at a time: no second copy of the shard
                hi = min(r0 + rows, lo + INIT_BLOCK)
                if c1 > c0:
                    shard[lo - r0 : hi - r0, : c1 - c0] = draw_rows(name, num, dim, self.init[name], self.seed,
                                                                   lo, hi)[:, c0:c1]

    def _place(self, modules: dict[str, nn.Module]) -> None:
        for name, places in self.places.items():
            for parent, attr in places if name in modules else ():
                setattr(parent, attr, modules[name])

    # ------------------------------------------------------------------------------------------ use

    def lookup(self, name: str, ids: Tensor) -> Tensor:
        """Rows of table `name` for `ids` [...] -> [..., D]. Outside a training forward (see `attach`) a
        collective: every rank must call it in turn."""
        dim = self.shape[name][1]
        if self._mode == "record":  # the dry run: note the ids, return rows of the right shape
            self._recorded.append((name, ids.detach()))
            return torch.zeros((*ids.shape, dim), device=ids.device)
        if self._mode == "replay":
            if not self._replay:
                raise RuntimeError(f"sharded tables: a lookup of {name!r} that the dry run did not make")
            recorded, rows = self._replay.popleft()
            if recorded != name or rows.shape[:-1] != ids.shape:
                raise RuntimeError(f"sharded tables: the forward looked up {name!r} {tuple(ids.shape)} where the dry "
                                   f"run looked up {recorded!r} {tuple(rows.shape[:-1])}")
            return rows
        return self._fetch([(name, ids)])[0]

    def _fetch(self, calls: list[tuple[str, Tensor]]) -> list[Tensor]:
        """The rows of every (table, ids) call: one torchrec forward per width group, every group every time
        (the same collectives on every rank), each table's ids of all its calls in one key (so one fused
        update per table)."""
        from torchrec import KeyedJaggedTensor

        flat = [ids.reshape(-1).long().cpu() for _, ids in calls]
        out: list[Tensor | None] = [None] * len(calls)
        for group, keys in self.keys.items():
            mine = {k: [i for i, (n, _) in enumerate(calls) if n == k] for k in keys}
            if not any(mine.values()) and len(calls) == 1:
                continue  # a single direct lookup: only its own group
            values = [flat[i] for k in keys for i in mine[k]] or [torch.zeros(0, dtype=torch.long)]
            lengths = torch.tensor([sum(flat[i].numel() for i in mine[k]) for k in keys], dtype=torch.int32)
            features = KeyedJaggedTensor(keys=keys, values=torch.cat(values), lengths=lengths)
            rows = self.dmp(group, features)
            for k in keys:
                if not mine[k]:
                    continue
                dim = self.shape[k][1]
                parts = rows[k].values().split([flat[i].numel() for i in mine[k]])
                for i, part in zip(mine[k], parts, strict=True):
                    part = part[:, :dim] if self.stored[k] != dim else part
                    out[i] = part.reshape(*calls[i][1].shape, dim).to(calls[i][1].device)
        return out  # type: ignore[return-value]

    def attach(self, model: nn.Module) -> None:
        """Make each training forward of `model` (training mode, gradients on) look every table up once.

        A dry run of the forward first (no gradients, zero rows; buffers and the RNG restored after it)
        records which ids each lookup asks for; one torchrec forward per width group then fetches them all,
        and the real forward takes its rows in order. So a table read by several lookups in a step (the
        target item and the history items) gets one fused update with the summed gradient, as a plain
        optimizer step does, and a step costs one round of all-to-alls per width group instead of one per
        lookup. The dry run is another forward pass of the dense part, without its backward."""
        model.register_forward_pre_hook(self._prefetch, with_kwargs=True)
        model.register_forward_hook(self._done)

    def _prefetch(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._mode == "record" or not (module.training and torch.is_grad_enabled()):
            return None
        self._mode, self._replay = "direct", None  # a forward that failed half way leaves nothing behind
        saved = {n: b.clone() for n, b in module.named_buffers() if b.is_floating_point() or b.numel() == 1}
        rng = torch.get_rng_state()
        self._mode, self._recorded = "record", []
        try:
            with torch.no_grad():
                module(*args, **kwargs)
        finally:
            self._mode = "direct"
            torch.set_rng_state(rng)
            buffers = dict(module.named_buffers())
            with torch.no_grad():
                for n, b in saved.items():
                    buffers[n].copy_(b)
        self._replay = deque(zip([n for n, _ in self._recorded], self._fetch(self._recorded), strict=True))
        self._recorded, self._mode = [], "replay"
        return None

    def _done(self, module: nn.Module, args: tuple, output: Any) -> None:  # noqa: ANN401
        if self._mode == "replay":
            left = len(self._replay)
            self._mode, self._replay = "direct", None
            if left:
                raise RuntimeError(f"sharded tables: the forward made {left} lookups fewer than its dry run")

    def set_lr(self, lr: float) -> None:
        """The fused optimizer's learning rate from now on (per-epoch decay)."""
        opt = self.dmp.fused_optimizer
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad()  # torchrec's fused optimizers hand the param group's lr to the kernels here

    @property
    def num_parameters(self) -> int:
        return sum(n * d for n, d in self.shape.values())  # without the padding columns

    def local_bytes(self) -> int:
        """Bytes of table rows this rank holds."""
        return sum(shard.numel() * shard.element_size() for _, shard, _, _ in self._shards())

    @torch.no_grad()
    def gather(self) -> dict[str, Tensor]:
        """Every whole table on rank 0 (a lookup of all its rows, in chunks); {} on the other ranks."""
        out: dict[str, Tensor] = {}
        for name, (num, _) in self.shape.items():
            parts = []
            for lo in range(0, num, INIT_BLOCK):
                hi = min(num, lo + INIT_BLOCK) if self.rank == 0 else lo  # the other ranks ask for no rows
                ids = torch.arange(lo, hi)
                parts.append(self.lookup(name, ids))
            if self.rank == 0:
                out[name] = torch.cat(parts)
        return out

    @contextmanager
    def restored(self, weights: dict[str, Tensor]) -> Iterator[None]:
        """Ordinary tables holding `weights` (from `gather`) in the model while inside, e.g. to save it."""
        tables = {}
        for name, w in weights.items():
            t = nn.Embedding(*w.shape, _weight=w)
            t.init = self.init[name]
            tables[name] = t
        self._place(tables)
        try:
            yield
        finally:
            self._place(self.proxies)


__all__ = ["INSTALL", "SHARD_INITS", "SHARDINGS", "TABLE_OPTIMIZERS", "ShardedTable", "ShardedTables", "draw_rows",
           "materialize_tables", "require_torchrec", "tables_of"]
