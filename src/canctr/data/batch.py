"""Typed batches and a vectorised loader over pre-encoded arrays.

The loader keeps each split as tensors (on the training device when it fits) and builds a batch with a
handful of `index_select`s: no per-sample Python, no collate. The sample order is a pure function of
(seed, epoch), and `rank`/`world_size` shard it, so data-parallel training and mid-epoch resume only need
(epoch, step) to pick up exactly where they left off.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from canctr.data.schema import ARRAY_SPECS

HIST_FIELDS = ("hist_item", "hist_cate", "neg_hist_item", "neg_hist_cate", "hist_item_pair", "hist_cate_pair")


@dataclass(frozen=True)
class Batch:
    """One mini-batch. B = batch size, L = history width (trimmed to the longest history in the batch).

    Id tensors are int64, 0 = padding/unknown. Histories are left-aligned: position t < hist_len is valid.
    """

    label: Tensor  # [B] float32 in {0, 1}
    group: Tensor  # [B] int64, user index for GAUC
    user: Tensor  # [B]
    item: Tensor  # [B] target item
    cate: Tensor  # [B] target category
    hist_item: Tensor  # [B, L]
    hist_cate: Tensor  # [B, L]
    hist_len: Tensor  # [B]
    neg_hist_item: Tensor  # [B, L] auxiliary negatives (DIEN)
    neg_hist_cate: Tensor  # [B, L]
    hist_item_pair: Tensor  # [B, L] Cartesian (target item, history item) ids
    hist_cate_pair: Tensor  # [B, L]
    # optional side features (schema.py ARRAY_SPECS; None when the dataset has none)
    user_gender: Tensor | None = None  # [B]
    user_age: Tensor | None = None  # [B]
    user_occupation: Tensor | None = None  # [B]
    item_cates: Tensor | None = None  # [B, G] every category of the target item, 0-padded

    @property
    def mask(self) -> Tensor:
        """[B, L] bool, True at valid history positions. The one place a mask is derived from lengths."""
        return lengths_to_mask(self.hist_len, self.hist_item.shape[1])

    @property
    def size(self) -> int:
        return int(self.label.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(**{k: v.to(device, non_blocking=non_blocking) for k, v in self.as_dict().items()})

    def as_dict(self) -> dict[str, Tensor]:
        """The tensors present (optional fields that are None are left out)."""
        return {f.name: v for f in dataclasses.fields(self) if (v := getattr(self, f.name)) is not None}

    def replace(self, **changes: Tensor) -> Batch:
        return dataclasses.replace(self, **changes)


BATCH_FIELDS = frozenset(f.name for f in dataclasses.fields(Batch))


def lengths_to_mask(lengths: Tensor, width: int) -> Tensor:
    """[B] lengths -> [B, width] bool mask, True for positions < length."""
    return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]


def load_split(data_dir: str | Path, split: str, mmap: bool = False) -> dict[str, np.ndarray]:
    """Read one split's arrays; checks that every required array exists and row counts agree."""
    d = Path(data_dir) / split
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: split directory missing; was `canctr prepare` run with --out {data_dir}?")
    arrays: dict[str, np.ndarray] = {}
    n = None
    for name, (dtype, ndim, required) in ARRAY_SPECS.items():
        path = d / f"{name}.npy"
        if not path.exists():
            if required:
                raise FileNotFoundError(f"{path}: required array missing")
            continue
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        if arr.dtype != dtype or arr.ndim != ndim:
            raise ValueError(f"{path}: expected {dtype} with ndim {ndim}, got {arr.dtype} ndim {arr.ndim}")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise ValueError(f"{path}: {arr.shape[0]} rows, expected {n}")
        arrays[name] = arr
    return arrays


class BatchLoader:
    """Iterate `Batch`es over a split held as tensors.

    Args:
        arrays: output of `load_split`.
        batch_size: samples per batch (per process when world_size > 1).
        shuffle: permute the samples each epoch with a generator seeded by (seed, epoch).
        device: where batches are built; arrays are moved there once.
        max_len: keep at most the most recent `max_len` history positions (None: all stored).
        drop_last: drop a final partial batch.
        rank, world_size: this process's shard of every epoch's order (strided, equal counts).
        bucket: with shuffle, sort each window of `bucket * batch_size` shuffled samples by history length
            and shuffle the resulting batches (the official DataIterator sorts 20-batch buffers by length):
            batches hold similar lengths, so the trimmed width, and the recurrent steps of DIEN, shrink.
            0 or 1 = plain shuffling.
    """

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
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
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.rank, self.world_size = rank, world_size
        self.bucket = bucket
        hist_len = np.asarray(arrays["hist_len"]).astype(np.int64)
        width = arrays["hist_item"].shape[1]
        shift = None
        if max_len is not None and max_len < width:
            # keep the most recent max_len positions: shift long rows left so they stay left-aligned
            shift = np.clip(hist_len - max_len, 0, None)
            hist_len = np.minimum(hist_len, max_len)
        hist: dict[str, np.ndarray] = {}
        other: dict[str, np.ndarray] = {}
        for name, arr in arrays.items():
            if name not in BATCH_FIELDS:
                continue  # stored for evaluation only (e.g. true_prob): never a model input
            a = np.asarray(arr)
            if name in HIST_FIELDS:
                if shift is not None:
                    cols = (np.arange(max_len)[None, :] + shift[:, None]).clip(max=width - 1)
                    a = np.take_along_axis(a, cols, axis=1)
                    a = np.where(np.arange(max_len)[None, :] < hist_len[:, None], a, 0)
                hist[name] = a
            else:
                other[name] = hist_len if name == "hist_len" else a
        # Packed storage, so a batch is 3-4 gathers instead of one per field: every history field in one
        # [N, F, W] int64 tensor, every 1-D id field in one [N, K] int64 tensor (ids become int64 once here,
        # not per batch), the rest (label, multi-valued side fields) as they are.
        self._hist_names = tuple(hist)
        self._hist = torch.from_numpy(np.stack([hist[k].astype(np.int64) for k in hist], axis=1)).to(self.device)
        self._id_names = tuple(k for k, a in other.items() if a.ndim == 1 and np.issubdtype(a.dtype, np.integer))
        self._ids = torch.from_numpy(np.stack([other[k].astype(np.int64) for k in self._id_names], axis=1))
        self._ids = self._ids.to(self.device)
        self._rest = {
            k: torch.from_numpy(np.ascontiguousarray(a if a.dtype != np.int32 else a.astype(np.int64))).to(self.device)
            for k, a in other.items()
            if k not in self._id_names
        }
        self.n = int(hist_len.shape[0])
        self._hist_len_cpu = torch.from_numpy(hist_len)  # batch widths and bucketing without device syncs

    def __len__(self) -> int:
        per_rank = self.n // self.world_size if self.world_size > 1 else self.n
        if self.drop_last:
            return per_rank // self.batch_size
        return (per_rank + self.batch_size - 1) // self.batch_size

    def order(self, epoch: int) -> Tensor:
        """This rank's sample indices for `epoch` (CPU): a function of (seed, epoch, rank, world_size) only."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            idx = torch.randperm(self.n, generator=g)
            if self.bucket > 1:
                idx = self._bucketed(idx, g)
        else:
            idx = torch.arange(self.n)
        if self.world_size > 1:
            usable = (self.n // self.world_size) * self.world_size
            idx = idx[:usable][self.rank :: self.world_size]
        return idx

    def _bucketed(self, idx: Tensor, g: torch.Generator) -> Tensor:
        """Sort windows of the shuffled order by descending history length, then shuffle whole batches."""
        window = self.bucket * self.batch_size
        lens = self._hist_len_cpu[idx]
        key = (torch.arange(self.n) // window) * (int(lens.max()) + 1) + (lens.max() - lens)
        idx = idx[torch.sort(key, stable=True).indices]
        n_full = self.n // self.batch_size
        blocks = idx[: n_full * self.batch_size].view(n_full, self.batch_size)
        return torch.cat([blocks[torch.randperm(n_full, generator=g)].reshape(-1), idx[n_full * self.batch_size :]])

    def batch(self, idx: Tensor) -> Batch:
        """Gather rows `idx` (CPU indices) and trim the history width to the longest history among them."""
        idx = idx.cpu()
        width = max(int(self._hist_len_cpu[idx].max()) if idx.numel() else 0, 1)
        return self._gather(idx.to(self.device, non_blocking=True), width)

    def _gather(self, idx: Tensor, width: int) -> Batch:
        hist = self._hist[:, :, :width].index_select(0, idx)  # [B, F, width]
        ids = self._ids.index_select(0, idx)  # [B, K]
        out = {name: hist[:, j] for j, name in enumerate(self._hist_names)}
        out.update({name: ids[:, j] for j, name in enumerate(self._id_names)})
        out.update({name: t.index_select(0, idx) for name, t in self._rest.items()})
        return Batch(**out)

    def iter_epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """Batches of `epoch`, skipping the first `start_step` (exact mid-epoch resume)."""
        idx = self.order(epoch)
        for step in range(start_step, len(self)):
            sel = idx[step * self.batch_size : (step + 1) * self.batch_size]
            if sel.numel() == 0:
                break
            yield self.batch(sel)

    def __iter__(self) -> Iterator[Batch]:
        return self.iter_epoch(0)
