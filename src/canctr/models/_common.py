"""Pieces shared by the models: the base config, the batch embeddings, the two cross-feature blocks
(CAN co-action, Cartesian pair ids) that CAN-DNN / CAN-DIEN / Cartesian add to their backbones, and the
field view ([B, F, E], one pooled vector per id field) that the FM family and Wide&Deep work on.

Notation: B batch, L history width, E embedding dim (18), P induction dim, D feed dim, F fields, W width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.coaction import CoAction, CoActionConfig
from canctr.layers.embedding import EmbeddingInit, embedding_table, masked_sum
from canctr.layers.interaction import LinearTerm
from canctr.layers.mlp import MLP, HiddenNorm, Norm


@dataclass
class BackboneConfig:
    """Fields every model shares; defaults from the official code (`train.py`, `build_fcn_net`)."""

    embed_dim: int = 18  # EMBEDDING_DIM
    mlp: tuple[int, ...] = (200, 80)  # final MLP hidden sizes (then Linear -> 1 logit)
    activation: Literal["prelu", "dice"] = "prelu"
    norm: Norm = "affine"  # the code's always-inference BatchNorm; "batchnorm" = a real BN
    hidden_norm: HiddenNorm = "none"  # "batchnorm": a real BN after each hidden Linear (torch-rechub, FuxiCTR)
    init: EmbeddingInit = "glorot"  # TF1 default; "normal" = the paper's N(0, 0.01)


def head(config: BackboneConfig, in_dim: int, late_dim: int = 0) -> MLP:
    """The final MLP producing one logit per sample: [..., in_dim] (+ [..., late_dim] features joining
    before the output layer, see MLP) -> [..., 1]."""
    return MLP(in_dim, config.mlp, activation=config.activation, norm=config.norm, hidden_norm=config.hidden_norm,
               late_dim=late_dim)


@dataclass
class Embedded:
    """Ordinary (representation) embeddings of one batch."""

    user: Tensor  # [B, E]
    target: Tensor  # [B, 2E] target item || target cate ("item_eb" in the code)
    hist: Tensor  # [B, L, 2E] history item || history cate
    hist_sum: Tensor  # [B, 2E] sum over VALID positions (the code's sum also adds the padding rows)
    mask: Tensor  # [B, L] bool


class BehaviourEmbeddings(nn.Module):
    """user / item / cate tables of width E; history and negative ids share the target's tables.

    The item / cate tables may be widened (`widen`) so that CAN without parameter independence reads its
    induction and feed vectors from the same rows; the representation is always a row's first E entries.
    """

    def __init__(self, schema: Schema, dim: int, init: EmbeddingInit) -> None:
        super().__init__()
        self.user = embedding_table(schema.n_user, dim, init)
        self.item = embedding_table(schema.n_item, dim, init)
        self.cate = embedding_table(schema.n_cate, dim, init)
        self.dim = dim
        self.user_dim = dim
        self.item_dim = 2 * dim  # an item is represented as item id || category id

    def items(self, item: Tensor, cate: Tensor) -> Tensor:
        """ids [...] -> [..., 2E]."""
        return torch.cat([self.item(item)[..., : self.dim], self.cate(cate)[..., : self.dim]], dim=-1)

    def widen(self, vocab: Literal["item", "cate"], width: int, init: EmbeddingInit) -> nn.Embedding:
        """Replace table `vocab` by a freshly initialised one of max(E, width) columns and return it."""
        table: nn.Embedding = getattr(self, vocab)
        if width > table.embedding_dim:
            table = embedding_table(table.num_embeddings, width, init)
            setattr(self, vocab, table)
        return table

    def forward(self, batch: Batch) -> Embedded:
        mask = batch.mask
        hist = self.items(batch.hist_item, batch.hist_cate)
        return Embedded(
            user=self.user(batch.user),
            target=self.items(batch.item, batch.cate),
            hist=hist,
            hist_sum=masked_sum(hist, mask),
            mask=mask,
        )


# Co-action pairs are named "TARGET>HISTORY": a target-side feature and the history feature it co-acts
# with. In the code's direction the left one induces (its rows are the micro-MLP) and the right one is fed;
# `swap_sides` reverses that for every pair. "item" / "cate" are short for the code's two pairs.
COACTION_TARGETS = ("item", "cate")
COACTION_HISTORIES = ("hist_item", "hist_cate")
PAIR_ALIASES = {"item": "item>hist_item", "cate": "cate>hist_cate"}


def split_pair(name: str) -> tuple[str, str]:
    """"item>hist_cate" (or an alias) -> ("item", "hist_cate"); unknown names raise ValueError."""
    target, sep, history = PAIR_ALIASES.get(name, name).partition(">")
    if not sep or target not in COACTION_TARGETS or history not in COACTION_HISTORIES:
        raise ValueError(
            f"coaction pair {name!r}: expected TARGET>HISTORY with TARGET in {COACTION_TARGETS} and HISTORY in "
            f"{COACTION_HISTORIES} (or an alias in {sorted(PAIR_ALIASES)})"
        )
    return target, history


@dataclass
class CoActionFeaturesConfig(CoActionConfig):
    """The co-action unit's config plus which pairs get one and the paper's independence levels (WSDM 4.4,
    can-paper.md 2.5). Defaults are the code's and the paper's public-data setting: the two same-type pairs,
    target induces, parameter independence only. The paper runs no public ablation of pairs, sides or
    independence; it says more independence needs more training data and that its online model uses all
    three levels.

    pairs: "TARGET>HISTORY" names (see `split_pair`), e.g. the code's "item>hist_item", "cate>hist_cate" or
        cross pairs "item>hist_cate", "cate>hist_item" (the paper's online model crosses 6 ad x 15 user
        features); "item" / "cate" are aliases, stored canonically.
    swap_sides: induce from the HISTORY ids and feed the TARGET id, in every pair (paper 2.2: the roles
        could be swapped; it induces from the target because candidates are fewer than history items,
        which keeps the P-wide tables small; here both sides index the same vocabularies, so only the work
        changes). Each history element then brings its own micro-MLP.
    combination_independence: (level 2, eqs. 12-13) a feature that takes part in k pairs as the inducing
        side holds k micro-MLPs per row (width k x P), and a fed feature taking part in k pairs holds k
        inputs (width k x D); the j-th pair of a feature, in `pairs` order, uses the j-th block. Off (the
        code, the paper's public data) a feature's one induction / feed vector serves all its pairs. Only
        partner features get a block (a block for a never-paired group would never train), so with the
        code's two same-type pairs this option changes nothing; it matters with cross pairs.
    parameter_independence: (level 1, "the basis of CAN") induction / feed tables separate from the
        representation embeddings. False reuses the representation: the model's item / cate tables are
        widened to max(E, induction width, feed width) and one row serves every role: the representation
        is its first E entries, the induction vector its first P (or k x P), the feed vector its first D
        (or k x D), so with the defaults (E 18, D 16, P 160) the feed vector is a prefix of the
        representation and the micro-MLP's first weights are the representation itself.
    """

    pairs: tuple[str, ...] = ("item>hist_item", "cate>hist_cate")
    swap_sides: bool = False
    combination_independence: bool = False
    parameter_independence: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pairs = tuple(">".join(split_pair(p)) for p in self.pairs)
        if not self.pairs or len(set(self.pairs)) != len(self.pairs):
            raise ValueError(f"coaction.pairs must be non-empty and distinct, got {self.pairs}")


class CoActionFeatures(nn.Module):
    """CAN's cross features: for each pair, CoAction(induction vectors, feed vectors), masked-sum pooled over
    the history -> [B, len(pairs) * out_dim] (2 x 36 = 72 by default).

    Tables are per role and vocabulary: `induction[v]` [n_v, k x P] and `feed[v]` [n_v, k x D] (k = 1
    unless combination independence; see CoActionFeaturesConfig). With the defaults these are the code's
    `item/cate_mlp_embeddings_var` [n, 160] and `item/cate_input_embeddings_var` [n, 16]. Without parameter
    independence they are the `representation`'s widened item / cate tables themselves (weight tying: the
    same modules, so state_dict lists each under both names); models pass their BehaviourEmbeddings.
    """

    def __init__(
        self,
        schema: Schema,
        config: CoActionFeaturesConfig,
        init: EmbeddingInit,
        *,
        representation: BehaviourEmbeddings | None = None,
    ) -> None:
        super().__init__()
        self.unit = CoAction(config)
        P, D = self.unit.induction_dim, self.unit.feed_dim
        pairs = [split_pair(p) for p in config.pairs]
        # (inducing field, fed field) per pair; within one role a vocabulary belongs to one field
        self.roles = [(h, t) if config.swap_sides else (t, h) for t, h in pairs]
        partners_of_inducer: dict[str, list[str]] = {}
        partners_of_fed: dict[str, list[str]] = {}
        for inducer, fed in self.roles:
            partners_of_inducer.setdefault(inducer, []).append(fed)
            partners_of_fed.setdefault(fed, []).append(inducer)
        # block of each pair inside its induction row and inside its feed row (eqs. 12-13)
        indep = config.combination_independence
        self.blocks = [
            (partners_of_inducer[i].index(f), partners_of_fed[f].index(i)) if indep else (0, 0) for i, f in self.roles
        ]
        induction_width = {_vocab(f): P * (len(p) if indep else 1) for f, p in partners_of_inducer.items()}
        feed_width = {_vocab(f): D * (len(p) if indep else 1) for f, p in partners_of_fed.items()}

        if config.parameter_independence:
            self.induction = _tables(schema, induction_width, init)
            self.feed = _tables(schema, feed_width, init)
        else:
            if representation is None:
                raise ValueError("coaction.parameter_independence=false needs the model's representation tables")
            shared = {
                v: representation.widen(v, max(induction_width.get(v, 0), feed_width.get(v, 0)), init)
                for v in induction_width | feed_width
            }
            self.induction = nn.ModuleDict({v: shared[v] for v in induction_width})
            self.feed = nn.ModuleDict({v: shared[v] for v in feed_width})
        self.out_dim = len(self.roles) * self.unit.out_dim

    def forward(self, batch: Batch) -> Tensor:
        mask = batch.mask
        P, D = self.unit.induction_dim, self.unit.feed_dim
        # one lookup per field and role, [B, width] for target ids, [B, L, width] for history ids
        inducers = {f: self.induction[_vocab(f)](getattr(batch, f)) for f in dict.fromkeys(i for i, _ in self.roles)}
        fed = {f: self.feed[_vocab(f)](getattr(batch, f)) for f in dict.fromkeys(f for _, f in self.roles)}
        ind_parts, feed_parts = [], []
        for (i, f), (bi, bf) in zip(self.roles, self.blocks, strict=True):
            feed = fed[f][..., bf * D : (bf + 1) * D]
            feed_parts.append(feed if feed.dim() == 3 else feed.unsqueeze(1))  # a fed target id: [B, 1, D]
            ind_parts.append(inducers[i][..., bi * P : (bi + 1) * P])
        n = len(self.roles)
        if n > 1 and len({t.shape for t in ind_parts}) == 1 and len({t.shape for t in feed_parts}) == 1:
            # same shapes (the default item and cate pairs): one unit call over the pairs stacked on the batch
            # axis halves the number of small ops; per-sample math is unchanged. [n*B, ...] -> [B, n * out]
            B = mask.shape[0]
            out = self.unit(torch.cat(ind_parts), torch.cat(feed_parts), mask.repeat(n, 1))
            return out.view(n, B, -1).transpose(0, 1).reshape(B, -1)
        return torch.cat([self.unit(ind, feed, mask) for ind, feed in zip(ind_parts, feed_parts)], dim=-1)


def _vocab(field: str) -> str:
    return FIELD_VOCAB[field][0]


def _tables(schema: Schema, widths: dict[str, int], init: EmbeddingInit) -> nn.ModuleDict:
    """One [n_vocab, width] table per vocabulary."""
    size_attr = dict(FIELD_VOCAB.values())  # vocabulary -> Schema size attribute
    return nn.ModuleDict({v: embedding_table(getattr(schema, size_attr[v]), w, init) for v, w in widths.items()})


class CartesianFeatures(nn.Module):
    """The Cartesian-product baseline's cross features: masked sums of E-dim embeddings of the
    (target item, history item) and (target cate, history cate) pair ids -> [B, 2E]. Id 0 = unseen pair."""

    def __init__(self, schema: Schema, dim: int, init: EmbeddingInit) -> None:
        super().__init__()
        self.item_pair = embedding_table(schema.n_item_pair, dim, init)
        self.cate_pair = embedding_table(schema.n_cate_pair, dim, init)
        self.out_dim = 2 * dim

    def forward(self, batch: Batch) -> Tensor:
        mask = batch.mask
        return torch.cat(
            [
                masked_sum(self.item_pair(batch.hist_item_pair), mask),
                masked_sum(self.cate_pair(batch.hist_cate_pair), mask),
            ],
            dim=-1,
        )


# ------------------------------------------------------------------------------------------ field view

Field = Literal["user", "item", "cate", "hist_item", "hist_cate", "hist_item_pair", "hist_cate_pair"]
HistPool = Literal["sum", "mean"]

# field (a Batch attribute) -> (vocabulary whose table it reads, Schema size attribute); history fields
# share the target's table, as everywhere in the official code
FIELD_VOCAB: dict[str, tuple[str, str]] = {
    "user": ("user", "n_user"),
    "item": ("item", "n_item"),
    "cate": ("cate", "n_cate"),
    "hist_item": ("item", "n_item"),
    "hist_cate": ("cate", "n_cate"),
    "hist_item_pair": ("item_pair", "n_item_pair"),
    "hist_cate_pair": ("cate_pair", "n_cate_pair"),
}
# the fields of the official code's FM-family baselines (FFM, DeepFM, xDeepFM): no user id
CODE_FIELDS: tuple[Field, ...] = ("item", "cate", "hist_item", "hist_cate")


def pooled(total: Tensor, mask: Tensor, pool: HistPool) -> Tensor:
    """A masked history sum [B, W] -> itself ("sum") or the mean over valid positions ("mean"; an empty
    history stays 0)."""
    if pool == "sum":
        return total
    if pool == "mean":
        return total / mask.sum(dim=1, keepdim=True).clamp(min=1)
    raise ValueError(f"unknown history pooling {pool!r}; expected 'sum' or 'mean'")


def embedded_fields(e: Embedded, *, user: bool = False, pool: HistPool = "sum") -> Tensor:
    """The field view of the shared (DNN) embeddings, no extra lookups: [item, cate, hist_item, hist_cate]
    ([user, ...] with `user`) -> [B, F, E]. The history fields are the halves of e.hist_sum."""
    fields = [e.target.unflatten(-1, (2, -1)), pooled(e.hist_sum, e.mask, pool).unflatten(-1, (2, -1))]
    if user:
        fields.insert(0, e.user.unsqueeze(1))
    return torch.cat(fields, dim=1)


class FieldEmbeddings(nn.Module):
    """Own tables of width W for `fields`, one per vocabulary used (hist_item reads item's):
    batch -> [B, F, W], history fields pooled over valid positions. W = 1 gives LR weights; FFM uses
    W = (F - 1) * E."""

    def __init__(
        self, schema: Schema, fields: tuple[Field, ...], dim: int, init: EmbeddingInit, pool: HistPool = "sum"
    ) -> None:
        super().__init__()
        unknown = sorted(set(fields) - set(FIELD_VOCAB))
        if not fields or unknown:
            raise ValueError(f"FieldEmbeddings: fields must be a non-empty subset of {sorted(FIELD_VOCAB)}")
        self.fields, self.pool = fields, pool
        self.tables = _tables(schema, {_vocab(f): dim for f in fields}, init)

    def forward(self, batch: Batch) -> Tensor:
        mask = batch.mask
        columns = []
        for f in self.fields:
            x = self.tables[_vocab(f)](getattr(batch, f))  # [B, W] or, for histories, [B, L, W]
            columns.append(pooled(masked_sum(x, mask), mask, self.pool) if x.dim() == 3 else x)
        return torch.stack(columns, dim=1)


class LinearFeatures(nn.Module):
    """The LR term over id fields, w_0 + sum_f w[id_f] -> [B], with per-id scalar weights ([n, 1] tables,
    the code's `w_item_var` / `w_cate_var`); a history field contributes its pooled weights."""

    def __init__(self, schema: Schema, fields: tuple[Field, ...], init: EmbeddingInit, pool: HistPool = "sum") -> None:
        super().__init__()
        self.weights = FieldEmbeddings(schema, fields, 1, init, pool)
        self.term = LinearTerm()

    def forward(self, batch: Batch) -> Tensor:
        return self.term(self.weights(batch).squeeze(-1))
