"""CAN's co-action features as a block any backbone can take (Bian et al., "CAN: Feature Co-Action Network
for Click-Through Rate Prediction", WSDM 2022, arXiv 2011.05625).

For every co-action pair (induction field -> feed field) the induction field's id looks up a vector that
becomes the weights of a micro-MLP (section 4.2, eqs. 5-6), the feed field's ids look up the inputs it
runs on (eqs. 7-9, orders 1..C by eq. 11), and the per-position outputs are summed over the feed's valid
positions (eq. 10 and the text; the official code's per-element unit then masked sum). The block returns
the pairs' outputs concatenated, [B, len(pairs) * unit.out_dim], which the backbone appends to its MLP
input (eq. 3: the DNN over the ordinary embeddings and the co-action outputs). The unit itself is
`canctr.layers.CoAction`.

The pairs are the feature spec's `coaction` list (the public layout: item -> hist_item, cate -> hist_cate,
36 dims each); `coaction.pairs` in the model config overrides them. A feed may be a sequence or a single
categorical field (a length-1 sequence with a mask of ones, as in the paper's Avazu experiments, Table 4,
which co-act non-sequential fields); the induction side may be a sequence when the feed is categorical.

Tables are per role and per spec table, so fields sharing a table (a target item and its history) share
rows: `induction[table]` [n, k x P] and `feed[table]` [n, k x D], with the defaults the code's
`item/cate_mlp_embeddings_var` [n, 160] and `item/cate_input_embeddings_var` [n, 16]. The independence
levels of section 4.4 are options (see `CoActionBlockConfig`).

Notation: B batch, L feed (or induction) positions, P induction width, D feed width, S unit output width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.data.spec import FeatureSpec
from canctr.layers.coaction import CoAction, CoActionConfig
from canctr.layers.embedding import EmbeddingInit, embedding_table, gather_rows
from canctr.models.features import FeatureEmbeddings
from canctr.models.registry import FeatureBlock


@dataclass
class CoActionBlockConfig(CoActionConfig):
    """The co-action unit's config plus which pairs get one and the paper's independence levels (WSDM
    section 4.4). Defaults are the code's and the paper's public-data setting: the spec's pairs, the
    spec's induction side, parameter independence only. The paper runs no public ablation of pairs,
    sides or independence; it says more independence needs more training data and that its online model
    uses all three levels.

    pairs: "INDUCTION>FEED" field names overriding the spec's `coaction` list, e.g. "item>hist_cate" (the
        paper's online model crosses 6 ad x 15 user features); empty = the spec's pairs. A bare field name
        stands for every spec pair that field induces ("item" = "item>hist_item" in the public layout).
    swap_sides: induce from the FEED field and feed the INDUCTION field, in every pair (section 4.2: the
        roles could be swapped; it induces from the target because candidates are fewer than history
        items, which keeps the P-wide tables small). Each history element then brings its own micro-MLP.
    combination_independence: (level 2, eqs. 12-13) a feature that induces in k pairs with partners of k
        different tables holds k micro-MLPs per row (width k x P), and a fed feature with k inducing
        partner tables holds k inputs (width k x D); the blocks follow the order partners first appear in
        `pairs`. A feature is its table here (rows are per table), so a pair's block is that of (its
        table, its partner's table). Off (the code, the paper's public data) one induction / feed vector
        serves all pairs. With the code's two same-type pairs this option changes nothing.
    parameter_independence: (level 1, "the basis of CAN") induction / feed tables separate from the
        representation embeddings. False reuses the representation: its tables are widened to
        max(E, induction width, feed width) and one row serves every role: the representation is its
        first E entries, the induction vector its first P (or k x P), the feed vector its first D (or k x D).
    """

    pairs: tuple[str, ...] = ()
    swap_sides: bool = False
    combination_independence: bool = False
    parameter_independence: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pairs = tuple(self.pairs)
        for p in self.pairs:
            induction, sep, feed = p.partition(">")
            if not induction or (sep and not feed) or ">" in feed:
                raise ValueError(f"coaction.pairs: {p!r} is not INDUCTION>FEED or a field name")
        if len(set(self.pairs)) != len(self.pairs):
            raise ValueError(f"coaction.pairs: a pair is listed twice in {self.pairs}")


def resolve_pairs(spec: FeatureSpec, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(induction, feed) field pairs: `names` checked against the spec, or the spec's `coaction` list."""
    if not names:
        if not spec.coaction:
            raise ValueError("a co-action block needs pairs: the feature spec's `coaction` list is empty "
                             "(or set coaction.pairs)")
        return [(p.induction, p.feed) for p in spec.coaction]
    pairs: list[tuple[str, str]] = []
    sparse = {f.name: f for f in spec.sparse}
    for name in names:
        induction, sep, feed = name.partition(">")
        if not sep:  # a bare field: the spec's pairs it induces
            found = [(p.induction, p.feed) for p in spec.coaction if p.induction == name]
            if not found:
                raise ValueError(f"coaction.pairs: the spec has no co-action pair induced by {name!r}")
            pairs += found
            continue
        for field in (induction, feed):
            if field not in sparse:
                raise ValueError(f"coaction.pairs: {name!r}: {field!r} is not a categorical or sequence field "
                                 f"(sparse fields: {sorted(sparse)})")
        if sparse[induction].kind == "sequence" and sparse[feed].kind == "sequence":
            raise ValueError(f"coaction.pairs: {name!r}: at most one side of a pair may be a sequence")
        pairs.append((induction, feed))
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"coaction.pairs: {list(names)} name a pair twice")
    return pairs


class CoActionBlock(nn.Module):
    """Co-action features of the pairs: batch -> [B, len(pairs) * unit.out_dim] (see the module docstring).

    Without parameter independence the induction / feed tables are the representation's widened tables
    themselves (weight tying: the same modules, so state_dict lists each under both names); pass the
    backbone's `FeatureEmbeddings` as `representation`.
    """

    def __init__(
        self,
        schema: Schema,
        config: CoActionBlockConfig,
        init: EmbeddingInit,
        *,
        representation: FeatureEmbeddings | None = None,
    ) -> None:
        super().__init__()
        spec = schema.spec
        self.unit = CoAction(config)
        P, D = self.unit.induction_dim, self.unit.feed_dim
        pairs = resolve_pairs(spec, config.pairs)
        self.pair_names = tuple(f"{i}>{f}" for i, f in pairs)
        # (inducing field, fed field) of each pair, after swap_sides
        self.sides = [(f, i) if config.swap_sides else (i, f) for i, f in pairs]
        fields = {f.name: f for f in spec.sparse}
        self.table_of = {name: fields[name].table for pair in self.sides for name in pair}
        # a pair's mask: the group of its sequence side, or None (both categorical: one position)
        self.groups = [next((fields[n].group for n in pair if fields[n].kind == "sequence"), None)
                       for pair in self.sides]

        # partner tables of each role's table, in order of first appearance (eqs. 12-13)
        partners_of_inducer: dict[str, list[str]] = {}
        partners_of_fed: dict[str, list[str]] = {}
        for i, f in self.sides:
            ti, tf = self.table_of[i], self.table_of[f]
            if tf not in partners_of_inducer.setdefault(ti, []):
                partners_of_inducer[ti].append(tf)
            if ti not in partners_of_fed.setdefault(tf, []):
                partners_of_fed[tf].append(ti)
        indep = config.combination_independence
        self.blocks = [
            (partners_of_inducer[self.table_of[i]].index(self.table_of[f]),
             partners_of_fed[self.table_of[f]].index(self.table_of[i])) if indep else (0, 0)
            for i, f in self.sides
        ]
        induction_width = {t: P * (len(p) if indep else 1) for t, p in partners_of_inducer.items()}
        feed_width = {t: D * (len(p) if indep else 1) for t, p in partners_of_fed.items()}

        if config.parameter_independence:
            self.induction = _tables(schema, induction_width, init)
            self.feed = _tables(schema, feed_width, init)
        else:
            if representation is None:
                raise ValueError("coaction.parameter_independence=false needs the model's representation tables")
            shared = {
                t: representation.widen(t, max(induction_width.get(t, 0), feed_width.get(t, 0)), init)
                for t in induction_width | feed_width
            }
            self.induction = nn.ModuleDict({t: shared[t] for t in induction_width})
            self.feed = nn.ModuleDict({t: shared[t] for t in feed_width})
        self.out_dim = len(self.sides) * self.unit.out_dim

    def forward(self, batch: Batch) -> Tensor:
        P, D = self.unit.induction_dim, self.unit.feed_dim
        # one lookup per field and role: [B, width] for a categorical field, [B, L, width] for a sequence
        inducers = {f: gather_rows(self.induction[self.table_of[f]], batch[f])
                    for f in dict.fromkeys(i for i, _ in self.sides)}
        fed = {f: gather_rows(self.feed[self.table_of[f]], batch[f]) for f in dict.fromkeys(f for _, f in self.sides)}
        B, user = batch.size, batch.user
        shared_user = batch.user_fields if user is not None else frozenset()
        ind_parts, feed_parts, masks, shared = [], [], [], []
        for (i, f), (bi, bf), group in zip(self.sides, self.blocks, self.groups, strict=True):
            feed = fed[f][..., bf * D : (bf + 1) * D]
            ind = inducers[i][..., bi * P : (bi + 1) * P]
            mask = batch.mask(group) if group is not None else None
            # a user-shared batch (serving): a candidate's micro-MLP fed by its user's history runs the feed side
            # once per user (CoAction.shared_forward); any other pair gets its user side gathered per candidate
            per_user = f in shared_user and feed.dim() == 3 and i not in shared_user and ind.dim() == 2
            if user is not None and not per_user:
                ind = ind.index_select(0, user) if i in shared_user else ind
                feed = feed.index_select(0, user) if f in shared_user else feed
                mask = mask.index_select(0, user) if mask is not None and group in batch.user_groups else mask
            feed_parts.append(feed if feed.dim() == 3 else feed.unsqueeze(1))  # a fed categorical id: [N, 1, D]
            ind_parts.append(ind)
            masks.append(mask if mask is not None else torch.ones(B, 1, dtype=torch.bool, device=feed.device))
            shared.append(per_user)
        n = len(self.sides)
        same = n > 1 and all(t.shape == parts[0].shape for parts in (ind_parts, feed_parts, masks) for t in parts[1:])
        if same and (all(shared) or not any(shared)):
            # same shapes (the public layout's item and cate pairs): one unit call over the pairs stacked on the
            # batch axis halves the number of small ops; per-sample math is unchanged. [n*B, ...] -> [B, n * S]
            args = (torch.cat(ind_parts), torch.cat(feed_parts), torch.cat(masks))
            if shared[0]:  # the users stacked likewise: pair j's candidates read users j*U ...
                U = feed_parts[0].shape[0]
                # one user (a single request): pair j's candidates are the stack's j-th user's, B of them each
                out = self.unit.shared_forward(*args, torch.cat([user + j * U for j in range(n)]),
                                               per_user=B if U == 1 else None)
            else:
                out = self.unit(*args)
            return out.view(n, B, -1).transpose(0, 1).reshape(B, -1)
        return torch.cat([self.unit.shared_forward(*args, user) if s_ else self.unit(*args)
                          for *args, s_ in zip(ind_parts, feed_parts, masks, shared, strict=True)], dim=-1)


def _tables(schema: Schema, widths: dict[str, int], init: EmbeddingInit) -> nn.ModuleDict:
    """One [vocab[table], width] table per spec table."""
    return nn.ModuleDict({t: embedding_table(schema.vocab[t], w, init) for t, w in widths.items()})


def _build(schema: Schema, config, representation: FeatureEmbeddings) -> CoActionBlock:  # noqa: ANN001
    return CoActionBlock(schema, config.coaction, config.init, representation=representation)


# the block as a backbone takes it (registry.register_composite): its config is the model's `coaction` section
COACTION = FeatureBlock("coaction", _build, section="coaction", config_cls=CoActionBlockConfig)

__all__ = ["COACTION", "CoActionBlock", "CoActionBlockConfig", "resolve_pairs"]
