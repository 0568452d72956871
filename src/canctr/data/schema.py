"""What a prepared dataset is: its feature spec, vocabulary sizes and provenance (DIR/schema.json).

Every `canctr prepare` command writes one; training reads it to build the model, and every checkpoint
carries a copy so a model can be rebuilt without the data. The arrays themselves are laid out by
`store.py`, the only module that knows the disk layout.

Conventions:
    * index 0 of every vocabulary is padding / unknown; vocabularies are fitted on the training split only
      (descending frequency, ties by first appearance) and `vocab[table]` counts index 0;
    * `pairs[name]` is the number of Cartesian pair ids (incl. 0 = a pair unseen in training) of each
      `spec.cartesian` pair, named "induction>feed";
    * `dense[field]` holds the normalisation fitted on train ({"shift", "scale", "fill"}: x' = (x - shift) /
      scale, a missing value becomes `fill` before that).
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from canctr.config import ConfigError, from_dict
from canctr.data.spec import FeatureSpec, SpecError

FORMAT_VERSION = 2
SPLITS = ("train", "test")


class SchemaError(ValueError):
    """schema.json is missing, unreadable or inconsistent; the message names the file."""


@dataclass
class Schema:
    """Everything a model or trainer needs to know about a prepared dataset."""

    dataset: str  # e.g. "sequences:Beauty", "table:clicks", "synthetic"
    protocol: str  # "last" | "all" (event logs), "ratings" (MovieLens), "mimn" (Taobao), "table", "synthetic"
    seed: int
    spec: FeatureSpec
    vocab: dict[str, int]  # embedding table -> rows incl. index 0
    splits: dict[str, int]  # split -> number of samples
    pairs: dict[str, int] = field(default_factory=dict)  # Cartesian pair name -> ids incl. 0
    dense: dict[str, dict[str, float]] = field(default_factory=dict)  # dense field -> fitted normalisation
    sources: list[dict[str, Any]] = field(default_factory=list)  # {path, sha256, bytes}
    counts: dict[str, Any] = field(default_factory=dict)  # users, items, oov counts, positive rate ...
    options: dict[str, Any] = field(default_factory=dict)  # pipeline options used
    format_version: int = FORMAT_VERSION
    # the prepared directory this schema was loaded from (None when built in memory or read from a
    # checkpoint without its data); models read files that belong to the data, e.g. Cartesian pair keys
    root: ClassVar[Path | None] = None

    def __post_init__(self) -> None:
        for key in ("vocab", "pairs"):
            bad = {k: v for k, v in getattr(self, key).items()
                   if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1}
            if bad:
                raise SchemaError(f"schema: {key} sizes must be positive integers, got {bad}")
        missing = sorted({f.table for f in self.spec.sparse} - set(self.vocab))
        if missing:
            raise SchemaError(f"schema: no vocabulary size for table(s) {missing}")
        missing_pairs = sorted({p.name for p in self.spec.cartesian} - set(self.pairs))
        if missing_pairs:
            raise SchemaError(f"schema: no pair count for Cartesian pair(s) {missing_pairs}")

    def vocab_size(self, table: str) -> int:
        return self.vocab[table]

    def max_len(self, group: str) -> int:
        return self.spec.sequence_group(group).max_len

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "schema") -> Schema:
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise SchemaError(
                f"{where}: format_version {version} is not supported (this canctr reads {FORMAT_VERSION}); "
                "re-run `canctr prepare`"
            )
        if not isinstance(data.get("spec"), dict):
            raise SchemaError(f"{where}: missing or malformed key 'spec'")
        try:
            spec = FeatureSpec.from_dict(data["spec"])
            return from_dict(cls, {**data, "spec": spec}, where=where)
        except (ConfigError, SpecError, SchemaError) as e:
            msg = str(e).removeprefix("schema: ")  # __post_init__'s prefix; `where` says more
            raise SchemaError(msg if msg.startswith(where) else f"{where}: {msg}") from None

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> Schema:
        path = Path(path)
        if path.is_dir():
            path = path / "schema.json"
        elif path.is_file() and path.name != "schema.json":
            raise SchemaError(f"{path}: is a file; expected a prepared directory (with schema.json)")
        if not path.exists():
            raise SchemaError(f"{path}: no schema.json; run `canctr prepare ...` first")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise SchemaError(f"{path}: not valid JSON ({e})") from e
        schema = cls.from_dict(data, where=str(path))
        schema.root = path.parent
        return schema


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file + os.replace so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_vocab(out_dir: str | os.PathLike, name: str, raw_ids: list[str]) -> None:
    """raw_ids[i] is the raw id of index i; raw_ids[0] must be the padding/unknown token."""
    atomic_write_text(Path(out_dir) / "vocab" / f"{name}.json", json.dumps(raw_ids) + "\n")
