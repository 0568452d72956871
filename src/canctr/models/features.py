"""The feature side every model shares, computed from the feature spec (`canctr.data.spec`).

`Roles.of(spec)` says what each field is to a model:

    query   the target fields: spec.attention.query, or the item-side categorical fields without attention
    keys    the behaviour sequence that the query attends over (spec.attention.keys, one length group)
    others  every other categorical field (the user id, profile and context fields)
    bags    every other sequence field, masked-sum pooled (a second behaviour sequence, a target's genres)
    dense   the dense fields, [B, D] in spec order

`FeatureEmbeddings` holds one [vocab[table], E] table per spec `table` (fields sharing a table share rows,
so a history item reads the target item's row) and turns a `Batch` into an `Embedded`: one lookup per
field, and the role views the backbones need (target, keys, pooled sums, the MLP input, the FM family's
field view). Every width is computed here from the spec; no model counts one by hand.

For the public code's layout (`behaviour_spec`: user, item, cate, hist_item, hist_cate) this gives the
official inputs exactly: the DNN input [e_user, e_item || e_cate, sum hist_item || sum hist_cate]
(3 x 18 + 2 x 18 = 90 dims), the DIN / DIEN query e_item || e_cate and keys [B, L, 36].

Notation: B batch, L_g width of sequence group g, E embedding dim, F fields.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.data.spec import FeatureSpec
from canctr.layers.embedding import EmbeddingInit, embedding_table, gather_rows, masked_sum
from canctr.layers.interaction import LinearTerm

Pool = Literal["sum", "mean"]


@dataclass(frozen=True)
class Roles:
    """What each field of a spec is to a model (see the module docstring)."""

    query: tuple[str, ...]
    keys: tuple[str, ...]
    group: str | None  # the keys' length group (None without attention)
    others: tuple[str, ...]
    bags: tuple[str, ...]
    dense: tuple[str, ...]
    view: tuple[str, ...]  # the FM family's fields (see `of`)

    @classmethod
    def of(cls, spec: FeatureSpec) -> Roles:
        """Roles from the spec. The FM family's field view follows the official code's baselines (target
        fields and pooled key sequences, no user id) when the spec has attention, else it is every
        categorical field and every sequence field (pooled), in spec order."""
        att = spec.attention
        if att is not None:
            query, keys, group = tuple(att.query), tuple(att.keys), spec.attention_group
            view = query + keys
        else:
            query = tuple(f.name for f in spec.categorical if f.side == "item")
            keys, group = (), None
            view = tuple(f.name for f in spec.categorical) + tuple(f.name for f in spec.sequential)
        return cls(
            query=query,
            keys=keys,
            group=group,
            others=tuple(f.name for f in spec.categorical if f.name not in query),
            bags=tuple(f.name for f in spec.sequential if f.name not in keys),
            dense=tuple(f.name for f in spec.dense),
            view=view,
        )

    @property
    def inputs(self) -> tuple[str, ...]:
        """The sparse fields of the MLP input, in its order: others, query, keys, bags."""
        return self.others + self.query + self.keys + self.bags

    def require_attention(self, model: str) -> None:
        """Raise the one-line error of a model that attends over a behaviour sequence."""
        if not self.keys:
            raise ValueError(
                f"{model} needs the feature spec's `attention` key (query fields and the behaviour sequence "
                "they attend over); this spec has none"
            )


class FeatureEmbeddings(nn.Module):
    """Representation embeddings of every sparse field: one [vocab[table], E] table per spec table.

    Args:
        schema: the prepared dataset's schema (spec and vocabulary sizes).
        dim: E, every table's width.
        init: table initialisation (see layers.embedding.embedding_table). Tables are created in the order
            their first field appears in the spec, so the public layout draws user, item, cate in that order.

    A table may be widened (`widen`) so that CAN without parameter independence reads its induction and
    feed vectors from the same rows; the representation is always a row's first E entries.
    """

    def __init__(self, schema: Schema, dim: int, init: EmbeddingInit = "glorot") -> None:
        super().__init__()
        spec = schema.spec
        self.roles = Roles.of(spec)
        self.dim = dim
        self.fields = tuple(f.name for f in spec.sparse)
        self.table_of = {name: spec.field(name).table for name in self.fields}
        self.group_of = {f.name: f.group for f in spec.sequential}
        self.tables = nn.ModuleDict()
        for name in self.fields:
            table = self.table_of[name]
            if table not in self.tables:
                self.tables[table] = embedding_table(schema.vocab[table], dim, init)

    # ---------------------------------------------------------------------------------- widths

    @property
    def target_dim(self) -> int:
        return len(self.roles.query) * self.dim

    @property
    def key_dim(self) -> int:
        return len(self.roles.keys) * self.dim

    @property
    def input_dim(self) -> int:
        """Width of `Embedded.inputs()`: E per sparse input field plus the dense fields."""
        return len(self.roles.inputs) * self.dim + len(self.roles.dense)

    # ---------------------------------------------------------------------------------- lookups

    def lookup(self, name: str, ids: Tensor) -> Tensor:
        """The representation of field `name`'s ids [...] -> [..., E]."""
        table = self.tables[self.table_of[name]]
        rows = gather_rows(table, ids)
        return rows if table.embedding_dim == self.dim else rows[..., : self.dim]

    def widen(self, table: str, width: int, init: EmbeddingInit) -> nn.Embedding:
        """Replace `table` by a freshly initialised one of max(E, width) columns and return it."""
        if table not in self.tables:
            raise ValueError(f"table {table!r} is not one of the representation tables {sorted(self.tables)}")
        current: nn.Embedding = self.tables[table]
        if width > current.embedding_dim:
            current = embedding_table(current.num_embeddings, width, init)
            self.tables[table] = current
        return current

    def forward(self, batch: Batch, shared: bool = False) -> Embedded:
        """The batch's embeddings. `shared`: the caller reads the user side of a user-shared batch (`Batch.user`)
        through `Embedded.by_field` / `by_group`; a model that does not is refused such a batch."""
        if batch.user is not None and not shared:
            raise ValueError("this model takes one row per candidate: give it batch.expanded(), not a user-shared "
                             "batch")
        return Embedded(self, batch)


class Embedded:
    """One batch's representation embeddings: every field looked up once; the target, the keys and their
    masked sum are built with them (every model reads them), the other views on first use. The lookups run
    in the pre-spec models' order (keys, others, query, then the rest), so that with the public layout the
    gradients accumulate in the same order and training reproduces the earlier runs bit for bit.

    On a user-shared batch (`Batch.user`, serving) the user-side fields are looked up once per user: their
    values, the keys, `mask`, `key_sum` and the pooled sequences have U rows; `by_field` / `by_group` give a
    user-side tensor's rows per candidate, and `target` and `inputs()` are per candidate [B, ...] always."""

    def __init__(self, collection: FeatureEmbeddings, batch: Batch) -> None:
        self.batch = batch
        self.user = batch.user  # [B] the user row of each candidate, or None (every field has B rows)
        r = self.roles = collection.roles
        self.dim = collection.dim
        self.group_of = collection.group_of
        self.values: dict[str, Tensor] = {}  # field -> [B, E] or [B, L, E]
        self._pooled: dict[tuple[str, str], Tensor] = {}  # (sequence field or "" = keys, pool) -> computed once

        def look(names: Sequence[str]) -> list[Tensor]:
            for name in names:
                self.values[name] = collection.lookup(name, batch[name])
            return [self.values[name] for name in names]

        # [B, L, K*E], the key sequences concatenated per position
        self.keys: Tensor | None = torch.cat(look(r.keys), dim=-1) if r.keys else None
        look(r.others)
        # [B, Q*E], the query fields' embeddings concatenated (the code's item_eb)
        self.target = torch.cat([self.by_field(t, q) for q, t in zip(r.query, look(r.query), strict=True)], dim=-1) \
            if r.query else batch.label.new_zeros(batch.size, 0)
        # [B, K*E], the keys summed over their valid positions (one masked sum for all key fields)
        self.key_sum: Tensor | None = masked_sum(self.keys, self.mask) if r.keys else None
        look([name for name in collection.fields if name not in self.values])

    @property
    def mask(self) -> Tensor:
        """[B, L] bool (U rows when the keys are user-shared), the keys' valid positions."""
        return self.batch.mask(self.roles.group)

    def by_field(self, t: Tensor, name: str) -> Tensor:
        """`t`, computed from field `name` on its native rows, per candidate: gathered by user when the field is
        user-shared in this batch, else `t` itself."""
        return t if self.user is None or name not in self.batch.user_fields else t.index_select(0, self.user)

    def rows_of(self, group: str | None = None) -> Tensor | None:
        """[B] the row of each candidate in sequence group `group`'s tensors (default: the keys'): the user
        index when the group is user-shared in this batch, else None (one row per candidate already)."""
        group = self.roles.group if group is None else group
        return self.user if self.user is not None and group in self.batch.user_groups else None

    def by_group(self, t: Tensor, group: str | None = None) -> Tensor:
        """`t`, computed from sequence group `group` (default: the keys') on its native rows, per candidate."""
        rows = self.rows_of(group)
        return t if rows is None else t.index_select(0, rows)

    def key_pool(self, pool: Pool = "sum") -> Tensor:
        """[B, K*E], the keys' masked sum ("sum") or mean over the valid positions ("mean")."""
        if ("", pool) not in self._pooled:
            self._pooled["", pool] = _pooled(self.key_sum, self.batch.lengths[self.roles.group], pool)
        return self._pooled["", pool]

    def pooled(self, name: str, pool: Pool = "sum") -> Tensor:
        """[B, E]: a categorical field's embedding, or a sequence field's masked sum (or mean)."""
        if name in self.roles.keys:
            i = self.roles.keys.index(name)
            return self.key_pool(pool)[:, i * self.dim : (i + 1) * self.dim]
        x = self.values[name]
        if x.dim() == 2:
            return x
        if (name, pool) not in self._pooled:
            group = self.group_of[name]
            self._pooled[name, pool] = _pooled(masked_sum(x, self.batch.mask(group)), self.batch.lengths[group], pool)
        return self._pooled[name, pool]

    def view(self, names: Sequence[str], pool: Pool = "sum") -> Tensor:
        """The FM family's field view [B, F, E] of `names`, sequences pooled."""
        return torch.stack([self.by_field(self.pooled(n, pool), n) for n in names], dim=1)

    def inputs(self, pool: Pool = "sum", extra: Sequence[Tensor] = ()) -> Tensor:
        """The MLP input [B, input_dim (+ extra widths)]: [others, target, pooled keys, pooled bags, dense,
        *extra], one concatenation (a model's own features, e.g. DIN's interest, and the blocks' outputs
        go into `extra`)."""
        r = self.roles
        parts = [self.by_field(self.values[o], o) for o in r.others]
        if r.query:
            parts.append(self.target)
        if r.keys:
            parts.append(self.by_group(self.key_pool(pool)))
        parts += [self.by_field(self.pooled(b, pool), b) for b in r.bags]
        if r.dense:
            parts.append(self.dense)
        return torch.cat([*parts, *extra], dim=-1)

    @property
    def dense(self) -> Tensor:
        if self.batch.dense is None:
            raise ValueError(f"the spec has dense fields {list(self.roles.dense)} but the batch carries none")
        return self.batch.dense


def _pooled(total: Tensor, lengths: Tensor, pool: Pool) -> Tensor:
    """A masked sum [B, W] -> itself ("sum") or the mean over valid positions ("mean"; empty stays 0)."""
    if pool == "sum":
        return total
    if pool == "mean":
        return total / lengths.clamp(min=1).unsqueeze(-1).to(total.dtype)
    raise ValueError(f"unknown pooling {pool!r}; expected 'sum' or 'mean'")


# ------------------------------------------------------------------------------------ own field tables


class FieldEmbeddings(nn.Module):
    """A model's own tables of width W for `fields` (one per spec table they read): batch -> [B, F, W],
    sequences pooled over their valid positions. W = 1 gives LR weights; FFM uses W = (F - 1) * E."""

    def __init__(
        self, schema: Schema, fields: Sequence[str], dim: int, init: EmbeddingInit, pool: Pool = "sum"
    ) -> None:
        super().__init__()
        if not fields:
            raise ValueError("FieldEmbeddings: no fields")
        spec = schema.spec
        self.fields, self.pool = tuple(fields), pool
        self.table_of = {n: spec.field(n).table for n in self.fields}
        kinds = {n: spec.field(n).kind for n in self.fields}
        if "dense" in kinds.values():
            raise ValueError(f"FieldEmbeddings: dense fields have no table ({kinds})")
        self.group_of = {n: spec.field(n).group for n in self.fields if kinds[n] == "sequence"}
        self.tables = nn.ModuleDict()
        for n in self.fields:
            if self.table_of[n] not in self.tables:
                self.tables[self.table_of[n]] = embedding_table(schema.vocab[self.table_of[n]], dim, init)

    def forward(self, batch: Batch) -> Tensor:
        if batch.user is not None:
            raise ValueError("FieldEmbeddings takes one row per candidate: give it batch.expanded()")
        columns = []
        for n in self.fields:
            x = gather_rows(self.tables[self.table_of[n]], batch[n])  # [B, W] or, for a sequence, [B, L, W]
            if n in self.group_of:
                g = self.group_of[n]
                x = _pooled(masked_sum(x, batch.mask(g)), batch.lengths[g], self.pool)
            columns.append(x)
        return torch.stack(columns, dim=1)


class LinearFeatures(nn.Module):
    """The LR term over sparse fields, w_0 + sum_f w[id_f] -> [B], with per-id scalar weights ([n, 1]
    tables, the code's `w_item_var` / `w_cate_var`); a sequence field contributes its pooled weights."""

    def __init__(self, schema: Schema, fields: Sequence[str], init: EmbeddingInit, pool: Pool = "sum") -> None:
        super().__init__()
        self.weights = FieldEmbeddings(schema, fields, 1, init, pool)
        self.term = LinearTerm()

    def forward(self, batch: Batch) -> Tensor:
        return self.term(self.weights(batch).squeeze(-1))


__all__ = ["Embedded", "FeatureEmbeddings", "FieldEmbeddings", "LinearFeatures", "Pool", "Roles"]
