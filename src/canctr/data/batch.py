"""Typed batches and a vectorised loader over the ragged store (store.py).

A `Batch` is keyed by the spec's field names, in the spirit of torchrec's KeyedJaggedTensor: every sparse
field is an int64 tensor, [B] for a categorical field and [B, L_g] for a sequence field of length group g,
left-aligned and 0-padded to the longest sequence of that group in the batch; `lengths[g]` [B] gives the
valid positions (`mask(g)`), and `jagged(field)` the unpadded values on demand.

The loader keeps each split memory-mapped (copied to the device once when that is not the CPU) and
builds a batch with a few `index_select`s: no per-sample Python, no collate. The sample order is a pure
function of (seed, epoch), and `rank`/`world_size` shard it, so data-parallel training and mid-epoch resume
only need (epoch, step) to pick up exactly where they left off. DIEN's auxiliary negatives are drawn here,
per batch, from a generator seeded by (seed, epoch, step, rank), so nothing model-specific is stored.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from canctr.data.spec import FeatureSpec
from canctr.data.store import Columns, read_split


@dataclass(frozen=True)
class Batch:
    """One mini-batch. B = batch size, L_g = width of sequence group g in this batch (its longest row)."""

    label: Tensor  # [B] float32 in {0, 1}
    group: Tensor  # [B] int64, GAUC group (user)
    sparse: dict[str, Tensor]  # field -> [B] (categorical) or [B, L_g] (sequence) int64, 0 = padding/unknown
    lengths: dict[str, Tensor]  # sequence group -> [B] int64 valid positions
    masks: dict[str, Tensor]  # sequence group -> [B, L_g] bool, True at valid positions
    dense: Tensor | None = None  # [B, D] float32, the spec's dense fields in order
    negatives: dict[str, Tensor] = field(default_factory=dict)  # sequence field -> [B, L_g] sampled negatives
    # Scoring several candidates of one user (serving): `user` [B] int64 gives each row's user, and the fields in
    # `user_fields` (and the lengths / masks of `user_groups`) hold one row per user, [U] or [U, L_g], instead of
    # one per candidate. None: every field has B rows (training, evaluation, batch scoring).
    user: Tensor | None = None
    user_fields: frozenset[str] = frozenset()
    user_groups: frozenset[str] = frozenset()

    def __getitem__(self, name: str) -> Tensor:
        return self.sparse[name]

    def mask(self, group: str) -> Tensor:
        """[B, L_g] bool, True at valid positions of sequence group `group`."""
        return self.masks[group]

    def jagged(self, name: str, group: str) -> tuple[Tensor, Tensor]:
        """(values [sum(lengths)], lengths [B]) of sequence field `name` of `group`, padding removed."""
        return self.sparse[name][self.masks[group]], self.lengths[group]

    @property
    def size(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(x):
            if isinstance(x, dict):
                return {k: v.to(device, non_blocking=non_blocking) for k, v in x.items()}
            return x.to(device, non_blocking=non_blocking) if isinstance(x, Tensor) else x

        return Batch(**{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def replace(self, **changes) -> Batch:
        return dataclasses.replace(self, **changes)

    def expanded(self) -> Batch:
        """This batch with one row per candidate: the per-user fields gathered by `user` (a batch without
        `user` is returned as it is). Models that do not share the user side are given this."""
        if self.user is None:
            return self
        u = self.user
        return self.replace(
            sparse={k: v.index_select(0, u) if k in self.user_fields else v for k, v in self.sparse.items()},
            lengths={k: v.index_select(0, u) if k in self.user_groups else v for k, v in self.lengths.items()},
            masks={k: v.index_select(0, u) if k in self.user_groups else v for k, v in self.masks.items()},
            negatives={k: v.index_select(0, u) if k in self.user_fields else v for k, v in self.negatives.items()},
            user=None, user_fields=frozenset(), user_groups=frozenset(),
        )


def user_side(spec: FeatureSpec) -> tuple[frozenset[str], frozenset[str]]:
    """(fields, groups) that a user-shared batch holds once per user: the spec's user-side categorical fields
    and every sequence group whose fields are all user-side (the behaviour histories), with their fields."""
    groups = frozenset(g.name for g in spec.sequences if all(f.side == "user" for f in spec.group_fields(g.name)))
    fields = frozenset(f.name for f in spec.sparse if (f.side == "user" and f.kind == "categorical")
                       or (f.kind == "sequence" and f.group in groups))
    return fields, groups


def lengths_to_mask(lengths: Tensor, width: int) -> Tensor:
    """[B] lengths -> [B, width] bool mask, True for positions < length."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def load_split(data_dir: str | Path, split: str, spec: FeatureSpec, mmap: bool = True) -> Columns:
    """One split's columns, memory-mapped (see store.read_split)."""
    return read_split(data_dir, split, spec, mmap=mmap)


def _tensor(arr: np.ndarray, device: torch.device) -> Tensor:
    with warnings.catch_warnings():  # a copy-on-write map is writable; any other read-only view is never written
        warnings.simplefilter("ignore", UserWarning)
        t = torch.from_numpy(arr) if arr.size else torch.zeros(arr.shape, dtype=_TORCH[arr.dtype])
    return t.to(device)


_TORCH = {np.dtype(np.int32): torch.int32, np.dtype(np.int64): torch.int64, np.dtype(np.float32): torch.float32}


class BatchLoader:
    """Iterate `Batch`es over one split.

    Args:
        cols: output of `load_split`.
        spec: the dataset's feature spec (which fields are categorical, which sequences).
        batch_size: samples per batch per process; the global batch is batch_size x world_size.
        shuffle: permute the samples each epoch with a generator seeded by (seed, epoch).
        device: where batches are built; arrays are moved there once (on the CPU they stay mapped).
        max_len: keep at most the most recent `max_len` positions of every sequence group (None: all stored).
        drop_last: drop a final partial batch.
        rank, world_size: this process's shard of every epoch's order (strided, equal counts). The epoch's
            order (bucketing included) is built for the global batch, so the union of the ranks' batches at
            step s is the 1-process batch s at batch_size x world_size, save the last n % world_size samples
            of the epoch's order, which no rank gets.
        bucket: with shuffle, sort each window of `bucket` global batches of shuffled samples by the length of the
            attention group (else the first group) and shuffle the resulting batches (the official
            DataIterator sorts 20-batch buffers by length): the padded width, and DIEN's recurrent steps,
            shrink. 0 or 1 = plain shuffling.
        shuffle_window: the most samples one epoch's order holds in memory at a time. Up to this many
            samples the order is one permutation of the split. A larger split is dealt into K = ceil(n /
            shuffle_window) windows by sample index modulo K (each window spans the whole split); an epoch
            visits the windows in a seeded order, each permuted (and bucketed) on its own, so the order's
            memory stays bounded however large the data.
        shuffle_blocks: 0 keeps those strided windows (every window reads the whole split: random reads, fine
            while the split is in the page cache). B > 0 builds each window instead from B contiguous blocks of
            shuffle_window / B samples: the blocks are dealt in a seeded order (a function of seed and epoch),
            B at a time, and each window is permuted on its own, so a window reads B runs of consecutive
            samples and data larger than memory is read nearly sequentially.
        negatives: sequence groups for which to draw one negative per valid position (DIEN's auxiliary
            loss): a uniformly drawn position of the same split's group, i.e. by popularity, with every field
            of that position (an item comes with its own category); drawn again once where it equals the
            positive's first field.
    """

    def __init__(
        self,
        cols: Columns,
        spec: FeatureSpec,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        device: torch.device | str = "cpu",
        max_len: int | None = None,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        bucket: int = 0,
        negatives: tuple[str, ...] = (),
        shuffle_window: int = 1 << 20,
        shuffle_blocks: int = 0,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if shuffle_window < 1:
            raise ValueError(f"shuffle_window must be >= 1, got {shuffle_window}")
        if not 0 <= shuffle_blocks <= shuffle_window:
            raise ValueError(f"shuffle_blocks must be in 0..shuffle_window ({shuffle_window}), got {shuffle_blocks}")
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.spec = spec
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.bucket = bucket
        self.shuffle_window = shuffle_window
        self.shuffle_blocks = shuffle_blocks
        self.max_len = max_len
        dev = self.device
        self.n = cols.n
        self._label = _tensor(np.asarray(cols.label), dev)
        self._group = _tensor(np.asarray(cols.group), dev)
        self._dense = None if cols.dense is None else _tensor(cols.dense, dev)
        self._ids = {f.name: _tensor(cols.ids[f.name], dev) for f in spec.categorical}
        self._groups = {g.name: [f.name for f in spec.group_fields(g.name)] for g in spec.sequences}
        self._offsets = {g: _tensor(cols.offsets[g], dev) for g in self._groups}
        self._values = {f: _tensor(cols.values[f], dev) for fs in self._groups.values() for f in fs}
        for g in negatives:
            if g not in self._groups:
                raise ValueError(f"negatives: {g!r} is not a sequence group of the spec")
        self.negatives = tuple(negatives)
        # per-sample lengths on the CPU (batch widths and bucketing without device syncs), read from the mapped
        # offsets when needed: nothing per sample is held in memory
        self._offsets_cpu = {g: np.asarray(cols.offsets[g]) for g in self._groups}
        self._bucket_group = spec.attention_group or (spec.sequences[0].name if spec.sequences else None)

    def _lengths(self, g: str, idx: np.ndarray) -> np.ndarray:
        """Lengths of group `g` of samples `idx`, capped at max_len, int64."""
        off = self._offsets_cpu[g]
        lens = off[idx + 1].astype(np.int64) - off[idx]
        return lens if self.max_len is None else np.minimum(lens, self.max_len)

    def __len__(self) -> int:
        per_rank = self.n // self.world_size if self.world_size > 1 else self.n
        if self.drop_last:
            return per_rank // self.batch_size
        return (per_rank + self.batch_size - 1) // self.batch_size

    def order(self, epoch: int) -> Tensor:
        """This rank's sample indices for `epoch` (CPU): a function of (seed, epoch, rank, world_size) only.
        Materialises the whole order (for tests and small splits); iteration streams it window by window."""
        parts = list(self._rank_order(epoch))
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def _windows(self, epoch: int) -> Iterator[Tensor]:
        """The epoch's order as consecutive pieces, one shuffle window each (see `shuffle_window`)."""
        if not self.shuffle:
            for start in range(0, self.n, self.shuffle_window):
                yield torch.arange(start, min(self.n, start + self.shuffle_window))
            return
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        k = -(-self.n // self.shuffle_window)
        if k <= 1:  # the split fits one window: one permutation of it
            yield self._shuffled(torch.arange(self.n), g)
            return
        if self.shuffle_blocks:
            yield from self._block_windows(epoch, g)
            return
        for w in torch.randperm(k, generator=g).tolist():
            gw = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_033 + w) * 64 + 63)
            yield self._shuffled(torch.arange(w, self.n, k), gw)  # samples w, w + k, w + 2k, ...

    def _block_windows(self, epoch: int, g: torch.Generator) -> Iterator[Tensor]:
        """`shuffle_blocks` > 0: windows of that many contiguous blocks of shuffle_window / shuffle_blocks samples,
        the blocks taken in one seeded permutation; each window permuted (and bucketed) on its own."""
        size = max(1, self.shuffle_window // self.shuffle_blocks)
        blocks = torch.randperm(-(-self.n // size), generator=g)
        for w, start in enumerate(range(0, blocks.numel(), self.shuffle_blocks)):
            members = torch.cat([torch.arange(b * size, min(self.n, (b + 1) * size))
                                 for b in blocks[start : start + self.shuffle_blocks].tolist()])
            gw = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_033 + w) * 64 + 62)
            yield self._shuffled(members, gw)

    def _shuffled(self, members: Tensor, g: torch.Generator) -> Tensor:
        idx = members[torch.randperm(members.numel(), generator=g)]
        if self.bucket > 1 and self._bucket_group is not None:
            idx = self._bucketed(idx, g)
        return idx

    def _rank_order(self, epoch: int) -> Iterator[Tensor]:
        """This rank's part of the epoch's order, in pieces: position p of the epoch's order goes to rank
        p % world_size, over the first (n // world_size) * world_size positions (equal counts)."""
        if self.world_size == 1:
            yield from self._windows(epoch)
            return
        usable, p = (self.n // self.world_size) * self.world_size, 0
        for piece in self._windows(epoch):
            piece = piece[: max(0, usable - p)]
            first = (self.rank - p) % self.world_size  # the first position of this piece that is ours
            yield piece[first :: self.world_size]
            p += piece.numel()

    def _bucketed(self, idx: Tensor, g: torch.Generator) -> Tensor:
        """Sort windows of the shuffled order by descending length, then shuffle whole batches. Both use the
        global batch (batch_size x world_size): the order is the same for every world size."""
        n, bs = idx.numel(), self.batch_size * self.world_size
        window = self.bucket * bs
        lens = torch.from_numpy(self._lengths(self._bucket_group, idx.numpy()))
        top = int(lens.max()) + 1 if lens.numel() else 1
        key = (torch.arange(n) // window) * top + (top - 1 - lens)
        idx = idx[torch.sort(key, stable=True).indices]
        n_full = n // bs
        blocks = idx[: n_full * bs].view(n_full, bs)
        return torch.cat([blocks[torch.randperm(n_full, generator=g)].reshape(-1), idx[n_full * bs :]])

    def batch(self, idx: Tensor, epoch: int = 0, step: int = 0) -> Batch:
        """Gather rows `idx` (CPU indices); each sequence group is padded to its longest row among them."""
        idx = idx.cpu()
        widths = {g: max(int(self._lengths(g, idx.numpy()).max()) if idx.numel() else 0, 1) for g in self._groups}
        didx = idx.to(self.device, non_blocking=True)
        sparse = {name: t.index_select(0, didx).long() for name, t in self._ids.items()}
        lengths, masks, negatives = {}, {}, {}
        for g, fields in self._groups.items():
            off = self._offsets[g]
            start, end = off.index_select(0, didx), off.index_select(0, didx + 1)
            if self.max_len is not None:
                start = torch.maximum(start, end - self.max_len)  # keep the most recent positions
            length = end - start
            width = widths[g]
            cols = torch.arange(width, device=self.device)[None, :]
            valid = cols < length[:, None]  # [B, W]
            pad = ~valid
            flat = (start[:, None] + cols).masked_fill_(pad, 0).view(-1)
            for f in fields:
                sparse[f] = self._gather(self._values[f], flat, pad)
            lengths[g], masks[g] = length, valid
            if g in self.negatives:
                negatives.update(self._negatives(g, fields, pad, sparse, epoch, step))
        return Batch(
            label=self._label.index_select(0, didx),
            group=self._group.index_select(0, didx),
            sparse=sparse, lengths=lengths, masks=masks,
            dense=None if self._dense is None else self._dense.index_select(0, didx),
            negatives=negatives,
        )

    @staticmethod
    def _gather(values: Tensor, flat: Tensor, pad: Tensor) -> Tensor:
        """values[flat] as [B, W] int64, 0 where `pad` (flat holds any valid index there)."""
        if values.numel() == 0:
            return torch.zeros(pad.shape, dtype=torch.long, device=pad.device)
        return values.index_select(0, flat).view(pad.shape).long().masked_fill_(pad, 0)

    def _negatives(self, g: str, fields: list[str], pad: Tensor, sparse: dict[str, Tensor],
                   epoch: int, step: int) -> dict[str, Tensor]:
        total = self._values[fields[0]].numel()
        if total == 0:
            return {f: torch.zeros_like(sparse[f]) for f in fields}
        gen = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_033 + step) * 64 + self.rank)
        j = torch.randint(total, pad.shape, generator=gen).to(self.device)
        first = self._values[fields[0]]
        same = first.index_select(0, j.view(-1)).view(pad.shape).long() == sparse[fields[0]]
        j = torch.where(same, (j + 1) % total, j).view(-1)
        return {f: self._gather(self._values[f], j, pad) for f in fields}

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Batches of `epoch`, skipping the first `start_step` (exact mid-epoch resume)."""
        bs, step, skip = self.batch_size, 0, start_step * self.batch_size
        pending = torch.zeros(0, dtype=torch.long)
        for piece in self._rank_order(epoch):
            if skip >= piece.numel():  # resume: whole pieces before the start step
                skip -= piece.numel()
                continue
            pending = torch.cat([pending, piece[skip:]]) if pending.numel() else piece[skip:]
            skip = 0
            full = pending.numel() // bs
            for i in range(full):
                yield self.batch(pending[i * bs : (i + 1) * bs], epoch, start_step + step)
                step += 1
            pending = pending[full * bs :]
        if pending.numel() and not self.drop_last:
            yield self.batch(pending, epoch, start_step + step)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_epoch(0)
