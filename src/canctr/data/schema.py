"""The encoded dataset format, written by every `canctr prepare` pipeline and read by training.

Layout of a prepared directory DIR:
    DIR/schema.json             this Schema (vocab sizes, protocol, seed, sources with sha256, counts)
    DIR/vocab/{user,item,cate}.json   raw ids in index order; index 0 is "<pad/unk>"
    DIR/{train,test}/<name>.npy  one array per ARRAY_SPECS entry, N rows each

Conventions (B batch, L history width):
    * index 0 of every id field is padding / unknown (out-of-vocabulary); vocabularies are fitted on the
      training split only and sorted by descending frequency (ties: first appearance).
    * histories are left-aligned in time order (oldest first): positions [0, hist_len) are valid,
      the rest is 0. `hist_len` may be 0 (empty history).
    * `group` is a dense user index over *all* users (train and test) used for GAUC; it is not a vocab id
      (test users are unseen by the user vocabulary by construction of the user split).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from canctr.config import from_dict

FORMAT_VERSION = 1
SPLITS = ("train", "test")

# name -> (dtype, ndim, required). 2-D arrays are [N, L].
ARRAY_SPECS: dict[str, tuple[np.dtype, int, bool]] = {
    "label": (np.dtype(np.float32), 1, True),
    "group": (np.dtype(np.int64), 1, True),
    "user": (np.dtype(np.int32), 1, True),
    "item": (np.dtype(np.int32), 1, True),
    "cate": (np.dtype(np.int32), 1, True),
    "hist_item": (np.dtype(np.int32), 2, True),
    "hist_cate": (np.dtype(np.int32), 2, True),
    "hist_len": (np.dtype(np.int32), 1, True),
    # one sampled negative per history position (DIEN's auxiliary loss), 0 where no history
    "neg_hist_item": (np.dtype(np.int32), 2, True),
    "neg_hist_cate": (np.dtype(np.int32), 2, True),
    # Cartesian-product ids of (target, history element) pairs seen in training; 0 = unseen pair
    "hist_item_pair": (np.dtype(np.int32), 2, True),
    "hist_cate_pair": (np.dtype(np.int32), 2, True),
    # optional (written only by the pipelines that have them; models must work without them):
    # user attributes (MovieLens users.dat), indices into vocab/<name>.json, sizes in schema.feature_vocab
    "user_gender": (np.dtype(np.int32), 1, False),
    "user_age": (np.dtype(np.int32), 1, False),
    "user_occupation": (np.dtype(np.int32), 1, False),
    # [N, G] every category of the target item in cate indices (column 0 = `cate`), 0-padded
    # (MovieLens --genres multi); vocab/item_cates.npy [n_item, G] gives the same for any item index
    "item_cates": (np.dtype(np.int32), 2, False),
    # Bayes-optimal click probability of the sample (synthetic worlds only; never a model input)
    "true_prob": (np.dtype(np.float32), 1, False),
}


@dataclass
class Schema:
    """Everything a model or trainer needs to know about a prepared dataset."""

    dataset: str  # e.g. "amazon:reviews_Beauty_5", "sequences:Beauty", "dien:books"
    protocol: str  # "last" | "all" (event logs), "ratings" (MovieLens), "mimn" (Taobao), "synthetic"
    seed: int
    max_len: int  # history width of the training split
    n_user: int  # vocab sizes including index 0
    n_item: int
    n_cate: int
    n_item_pair: int
    n_cate_pair: int
    splits: dict[str, int]  # split -> number of samples
    sources: list[dict[str, Any]] = field(default_factory=list)  # {path, sha256, bytes}
    counts: dict[str, Any] = field(default_factory=dict)  # users, items, oov counts, positive rate ...
    options: dict[str, Any] = field(default_factory=dict)  # pipeline options used
    format_version: int = FORMAT_VERSION
    feature_vocab: dict[str, int] = field(default_factory=dict)  # optional array -> its vocab size (incl. 0)

    def vocab_sizes(self) -> dict[str, int]:
        return {
            "user": self.n_user,
            "item": self.n_item,
            "cate": self.n_cate,
            "item_pair": self.n_item_pair,
            "cate_pair": self.n_cate_pair,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        schema = from_dict(cls, data)
        if schema.format_version != FORMAT_VERSION:
            raise ValueError(
                f"schema format_version {schema.format_version} is not supported "
                f"(this canctr reads {FORMAT_VERSION}); re-run `canctr prepare`"
            )
        return schema

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Schema:
        path = Path(path)
        if path.is_dir():
            path = path / "schema.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no schema.json; run `canctr prepare ...` first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file + os.replace so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_split(out_dir: str | os.PathLike, split: str, arrays: dict[str, np.ndarray]) -> None:
    """Validate and write one split's arrays as .npy files (dtype/shape checked against ARRAY_SPECS)."""
    d = Path(out_dir) / split
    d.mkdir(parents=True, exist_ok=True)
    missing = [k for k, (_, _, req) in ARRAY_SPECS.items() if req and k not in arrays]
    if missing:
        raise ValueError(f"split {split!r}: missing arrays {missing}")
    n = None
    for name, arr in arrays.items():
        if name not in ARRAY_SPECS:
            raise ValueError(f"split {split!r}: unknown array {name!r}")
        dtype, ndim, _ = ARRAY_SPECS[name]
        arr = np.ascontiguousarray(arr, dtype=dtype)
        if arr.ndim != ndim:
            raise ValueError(f"split {split!r}: {name} has ndim {arr.ndim}, expected {ndim}")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise ValueError(f"split {split!r}: {name} has {arr.shape[0]} rows, expected {n}")
        tmp = d / f".{name}.tmp.npy"
        np.save(tmp, arr)
        os.replace(tmp, d / f"{name}.npy")


def save_vocab(out_dir: str | os.PathLike, name: str, raw_ids: list[str]) -> None:
    """raw_ids[i] is the raw id of index i; raw_ids[0] must be the padding/unknown token."""
    atomic_write_text(Path(out_dir) / "vocab" / f"{name}.json", json.dumps(raw_ids) + "\n")
