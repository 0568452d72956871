"""The feature spec: which columns a dataset has, how each is encoded, and how a model uses them.

One declarative description serves every stage: `canctr prepare table` reads a user's table with it,
every built-in pipeline writes its output under a preset of it, it travels in schema.json and in every
checkpoint, and the models take their inputs, widths and co-action pairs from it. It is the paper's
general CAN (Bian et al., WSDM 2022, sections 3 and 4.4): any induction-side feature co-acts with any
feed-side feature, which may be a behaviour sequence or a single categorical field.

A spec file is TOML (or JSON) with these keys (every key is checked; unknown keys are errors):

    version = 1
    label = "clicked"          # 0/1 column
    group = "user_id"          # optional: a column whose values group samples for GAUC
    time = "ts"                # optional: a time column (split = "time")

    [[fields]]                 # in model input order
    name = "user"              # the name models and pairs use
    column = "user_id"         # input column (default: name)
    kind = "categorical"       # categorical | dense | sequence
    side = "user"              # user | item | context
    table = "user"             # the embedding table (and vocabulary) it reads; fields may share one
    min_count = 1              # categorical/sequence: ids seen fewer times in train map to 0 (unknown)
    hash_buckets = 0           # > 0: hash raw values into this many buckets instead of a vocabulary
    group = "hist"             # sequence: its length group; aligned sequences share one (same lengths)
    norm = "standard"          # dense: standard | minmax | log1p | none, fitted on train
    nan = "mean"               # dense: mean | zero | error (what a missing value becomes)

    [[sequences]]              # one per length group
    name = "hist"
    max_len = 50               # most recent positions kept

    [[coaction]]               # co-action pairs: induction field -> feed field (sequence or categorical)
    induction = "item"
    feed = "hist_item"

    [[cartesian]]              # Cartesian-product pairs (the paper's Table 2 baseline)
    induction = "item"
    feed = "hist_item"

    [attention]                # the sequence DIN / DIEN attend over and the target fields that query it
    query = ["item", "cate"]
    keys = ["hist_item", "hist_cate"]

    [split]                    # prepare table only: how train and test are separated
    by = "user"                # column | user | time
    column = ""                # by = column: a 0/1 or "train"/"test" column
    test_fraction = 0.1        # by = user (seeded) or time (the latest fraction)
    seed = 3

Index 0 of every vocabulary is padding and unknown; vocabularies are fitted on the training split.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

SPEC_VERSION = 1

Kind = Literal["categorical", "dense", "sequence"]
Side = Literal["user", "item", "context"]
Norm = Literal["standard", "minmax", "log1p", "none"]
NanPolicy = Literal["mean", "zero", "error"]
SplitBy = Literal["column", "user", "time"]


class SpecError(ValueError):
    """A feature spec is invalid; the message names the spec key (and file)."""


@dataclass
class Field:
    name: str
    kind: Kind = "categorical"
    column: str = ""  # input column; "" = name
    side: Side = "context"
    table: str = ""  # categorical / sequence: embedding table and vocabulary; "" = name
    min_count: int = 1
    hash_buckets: int = 0
    group: str = ""  # sequence: length group; "" = name
    norm: Norm = "standard"
    nan: NanPolicy = "mean"

    def __post_init__(self) -> None:
        self.column = self.column or self.name
        if self.kind != "dense":
            self.table = self.table or self.name
        if self.kind == "sequence":
            self.group = self.group or self.name

    @property
    def is_sparse(self) -> bool:
        return self.kind != "dense"


@dataclass
class SequenceGroup:
    name: str
    max_len: int = 50


@dataclass
class Pair:
    induction: str
    feed: str

    @property
    def name(self) -> str:
        return f"{self.induction}>{self.feed}"


@dataclass
class Attention:
    query: tuple[str, ...]
    keys: tuple[str, ...]


@dataclass
class Split:
    by: SplitBy = "user"
    column: str = ""
    test_fraction: float = 0.1
    seed: int = 3


@dataclass
class FeatureSpec:
    fields: list[Field]
    label: str = "label"
    group: str = ""
    time: str = ""
    sequences: list[SequenceGroup] = dataclasses.field(default_factory=list)
    coaction: list[Pair] = dataclasses.field(default_factory=list)
    cartesian: list[Pair] = dataclasses.field(default_factory=list)
    attention: Attention | None = None
    split: Split = dataclasses.field(default_factory=Split)
    version: int = SPEC_VERSION

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------------------------ lookups

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise SpecError(f"no field named {name!r}; fields: {[f.name for f in self.fields]}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def categorical(self) -> list[Field]:
        """Single-valued sparse fields, [B] per batch."""
        return [f for f in self.fields if f.kind == "categorical"]

    @property
    def sequential(self) -> list[Field]:
        """Sequence fields, [B, L_group] per batch."""
        return [f for f in self.fields if f.kind == "sequence"]

    @property
    def dense(self) -> list[Field]:
        return [f for f in self.fields if f.kind == "dense"]

    @property
    def sparse(self) -> list[Field]:
        return [f for f in self.fields if f.is_sparse]

    def group_of(self, name: str) -> str:
        """The length group of sequence field `name`."""
        f = self.field(name)
        if f.kind != "sequence":
            raise SpecError(f"field {name!r} is {f.kind}, not a sequence")
        return f.group

    def sequence_group(self, name: str) -> SequenceGroup:
        for g in self.sequences:
            if g.name == name:
                return g
        raise SpecError(f"no sequence group named {name!r}")

    def group_fields(self, group: str) -> list[Field]:
        return [f for f in self.sequential if f.group == group]

    def tables(self) -> dict[str, list[Field]]:
        """table -> the sparse fields reading it, in field order."""
        out: dict[str, list[Field]] = {}
        for f in self.sparse:
            out.setdefault(f.table, []).append(f)
        return out

    # ------------------------------------------------------------------------------------ validation

    def validate(self) -> None:
        if self.version != SPEC_VERSION:
            raise SpecError(f"version: {self.version} is not supported (this canctr reads {SPEC_VERSION})")
        if not self.fields:
            raise SpecError("fields: a spec needs at least one field")
        seen: set[str] = set()
        for i, f in enumerate(self.fields):
            where = f"fields[{i}] ({f.name!r})"
            if not f.name or not f.name.replace("_", "").isalnum():
                raise SpecError(f"{where}.name: use letters, digits and '_' only")
            if f.name in seen:
                raise SpecError(f"{where}.name: {f.name!r} is defined twice")
            seen.add(f.name)
            if f.name in (self.label, "label", "group"):
                raise SpecError(f"{where}.name: {f.name!r} is reserved (label / group)")
            if f.min_count < 1:
                raise SpecError(f"{where}.min_count: must be >= 1, got {f.min_count}")
            if f.hash_buckets < 0:
                raise SpecError(f"{where}.hash_buckets: must be >= 0, got {f.hash_buckets}")
        for table, users in self.tables().items():
            opts = {(u.min_count, u.hash_buckets) for u in users}
            if len(opts) > 1:
                names = [u.name for u in users]
                raise SpecError(f"fields {names} share table {table!r} but differ in min_count / hash_buckets")
        groups = {g.name: g for g in self.sequences}
        if len(groups) != len(self.sequences):
            raise SpecError("sequences: a group name is defined twice")
        for i, g in enumerate(self.sequences):
            if g.max_len < 1:
                raise SpecError(f"sequences[{i}] ({g.name!r}).max_len: must be >= 1, got {g.max_len}")
            if not self.group_fields(g.name):
                raise SpecError(f"sequences[{i}] ({g.name!r}): no sequence field has group = {g.name!r}")
        for f in self.sequential:
            if f.group not in groups:
                raise SpecError(
                    f"fields ({f.name!r}).group: {f.group!r} has no [[sequences]] entry (give its max_len there)"
                )
        names = set(self.names)
        for key, pairs in (("coaction", self.coaction), ("cartesian", self.cartesian)):
            for i, p in enumerate(pairs):
                for role in ("induction", "feed"):
                    name = getattr(p, role)
                    if name not in names:
                        raise SpecError(f"{key}[{i}].{role}: {name!r} is not a field (fields: {sorted(names)})")
                    if self.field(name).kind == "dense":
                        raise SpecError(
                            f"{key}[{i}].{role}: {name!r} is dense; pairs take categorical or sequence fields"
                        )
                if self.field(p.induction).kind == "sequence" and self.field(p.feed).kind == "sequence":
                    raise SpecError(f"{key}[{i}]: at most one side of a pair may be a sequence ({p.name})")
            if len({p.name for p in pairs}) != len(pairs):
                raise SpecError(f"{key}: a pair is listed twice")
        if self.attention is not None:
            a = self.attention
            if not a.query or len(a.query) != len(a.keys):
                raise SpecError("attention: query and keys must be non-empty and of equal length")
            for i, (q, k) in enumerate(zip(a.query, a.keys)):
                for key, name, kind in (("query", q, "categorical"), ("keys", k, "sequence")):
                    if name not in names:
                        raise SpecError(f"attention.{key}[{i}]: {name!r} is not a field")
                    if self.field(name).kind != kind:
                        raise SpecError(f"attention.{key}[{i}]: {name!r} must be a {kind} field")
            if len({self.field(k).group for k in a.keys}) != 1:
                raise SpecError(f"attention.keys: {list(a.keys)} must belong to one sequence group (aligned)")
        if not 0.0 < self.split.test_fraction < 1.0:
            raise SpecError(f"split.test_fraction: must be in (0, 1), got {self.split.test_fraction}")
        if self.split.by == "column" and not self.split.column:
            raise SpecError("split.column: required when split.by = 'column'")
        if self.split.by == "time" and not self.time:
            raise SpecError("split.by = 'time' needs the top-level `time` column")

    @property
    def attention_group(self) -> str | None:
        return None if self.attention is None else self.field(self.attention.keys[0]).group

    # ------------------------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if self.attention is not None:
            d["attention"] = {"query": list(self.attention.query), "keys": list(self.attention.keys)}
        else:
            d.pop("attention")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "spec") -> FeatureSpec:
        return _build(cls, data, where)

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureSpec:
        path = Path(path)
        if not path.exists():
            raise SpecError(f"{path}: spec file not found")
        text = path.read_bytes()
        try:
            if path.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                try:
                    import tomllib
                except ModuleNotFoundError:  # Python 3.10: the same parser, packaged as tomli
                    import tomli as tomllib

                data = tomllib.loads(text.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError and JSONDecodeError
            kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
            raise SpecError(f"{path}: not a valid {kind} file ({e})") from e
        if not isinstance(data, dict):
            raise SpecError(f"{path}: the spec must be a table / object at the top level")
        try:
            return cls.from_dict(data)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None


# -------------------------------------------------------------------------------------------- strict build

_NESTED = {"fields": Field, "sequences": SequenceGroup, "coaction": Pair, "cartesian": Pair}


def _strict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, naming the spec key of any unknown key or wrong type."""
    import typing

    if not isinstance(data, dict):
        raise SpecError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise SpecError(f"{where}: missing key(s) {missing}")
    kwargs = {}
    for k, v in data.items():
        tp = hints[k]
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        here = f"{where}.{k}"
        if origin is Literal:
            if v not in args:
                raise SpecError(f"{here}: {v!r} is not one of {list(args)}")
        elif tp is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise SpecError(f"{here}: expected an integer, got {v!r}")
        elif tp is float:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SpecError(f"{here}: expected a number, got {v!r}")
            v = float(v)
        elif tp is str and not isinstance(v, str):
            raise SpecError(f"{here}: expected a string, got {v!r}")
        elif origin is tuple:
            if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
                raise SpecError(f"{here}: expected a list of field names, got {v!r}")
            v = tuple(v)
        kwargs[k] = v
    return cls(**kwargs)


def _build(cls: type[FeatureSpec], data: dict[str, Any], where: str) -> FeatureSpec:
    data = dict(data)
    for key, item_cls in _NESTED.items():
        if key in data:
            items = data[key]
            if not isinstance(items, list):
                raise SpecError(f"{where}.{key}: expected a list of tables ([[{key}]])")
            data[key] = [_strict(item_cls, x, f"{key}[{i}]") for i, x in enumerate(items)]
    if data.get("attention") is not None:
        data["attention"] = _strict(Attention, data["attention"], "attention")
    if "split" in data:
        data["split"] = _strict(Split, data["split"], "split")
    if "fields" not in data:
        raise SpecError("fields: missing (a spec needs [[fields]])")
    return _top(cls, data, where)


def _top(cls: type[FeatureSpec], data: dict[str, Any], where: str) -> FeatureSpec:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"unknown top-level key(s) {unknown}; allowed: {sorted(known)}")
    for key in ("label", "group", "time"):
        if key in data and not isinstance(data[key], str):
            raise SpecError(f"{key}: expected a column name (string), got {data[key]!r}")
    if "version" in data and (isinstance(data["version"], bool) or not isinstance(data["version"], int)):
        raise SpecError(f"version: expected an integer, got {data['version']!r}")
    return cls(**data)


# -------------------------------------------------------------------------------------------- presets


def behaviour_spec(
    *,
    max_len: int,
    user_fields: tuple[str, ...] = (),
    item_bags: dict[str, tuple[str, int]] | None = None,
) -> FeatureSpec:
    """The public code's layout (DIEN / CAN on Amazon): user, target item and category, their history
    sequences sharing the item and category tables, the two same-type co-action and Cartesian pairs, and
    attention of (item, cate) over (hist_item, hist_cate). Every built-in pipeline writes this preset.

    user_fields: extra user-side categorical fields (MovieLens gender / age / occupation).
    item_bags: extra multi-valued target fields, name -> (table, max_len) (MovieLens genres).
    """
    fields = [
        Field("user", side="user"),
        Field("item", side="item"),
        Field("cate", side="item"),
        *(Field(name, side="user") for name in user_fields),
        Field("hist_item", kind="sequence", side="user", table="item", group="hist"),
        Field("hist_cate", kind="sequence", side="user", table="cate", group="hist"),
    ]
    sequences = [SequenceGroup("hist", max_len)]
    for name, (table, width) in (item_bags or {}).items():
        fields.append(Field(name, kind="sequence", side="item", table=table, group=name))
        sequences.append(SequenceGroup(name, width))
    return FeatureSpec(
        fields=fields,
        label="label",
        group="user",
        sequences=sequences,
        coaction=[Pair("item", "hist_item"), Pair("cate", "hist_cate")],
        cartesian=[Pair("item", "hist_item"), Pair("cate", "hist_cate")],
        attention=Attention(("item", "cate"), ("hist_item", "hist_cate")),
    )


__all__ = [
    "Attention", "FeatureSpec", "Field", "Pair", "SequenceGroup", "Split", "SpecError", "SPEC_VERSION",
    "behaviour_spec",
]
