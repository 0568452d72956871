"""Every registered model on three feature specs: shapes, padding invariance, training, gradients, state_dict
round trips; the feature roles and widths; the co-action and Cartesian blocks and their options."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from canctr.data.batch import Batch, lengths_to_mask
from canctr.data.schema import Schema
from canctr.data.spec import Attention, FeatureSpec, Field, Pair, SequenceGroup, behaviour_spec
from canctr.data.store import save_pair_keys
from canctr.layers.embedding import embedding_table
from canctr.models import create_model, get_entry, list_models, make_config, negative_groups
from canctr.models.cartesian_block import CartesianBlock, pair_ids
from canctr.models.coaction_block import CoActionBlock
from canctr.models.features import FeatureEmbeddings, Roles

# ------------------------------------------------------------------------------------------------ specs

# the public layout (every built-in dataset): user, item, cate, hist_item, hist_cate; attention; 2 + 2 pairs
AMAZON = Schema(
    dataset="test:amazon", protocol="last", seed=0, spec=behaviour_spec(max_len=8),
    vocab={"user": 20, "item": 50, "cate": 8}, splits={}, pairs={"item>hist_item": 40, "cate>hist_cate": 15},
)
SCHEMA = AMAZON  # the default spec of the tests below and of test_interactions.py

# non-sequential, Avazu-like: 6 categorical fields, 4 categorical x categorical co-action pairs, no attention
PROFILE = Schema(
    dataset="test:profile", protocol="table", seed=0, splits={},
    spec=FeatureSpec(
        fields=[Field("C14", side="item"), Field("C17", side="item"), Field("site", side="context"),
                Field("app", side="context"), Field("device", side="user"), Field("conn", side="user")],
        coaction=[Pair("C14", "site"), Pair("C14", "app"), Pair("C17", "device"), Pair("C17", "conn")],
        cartesian=[Pair("C14", "site"), Pair("C17", "device")],
    ),
    vocab={"C14": 30, "C17": 12, "site": 25, "app": 9, "device": 40, "conn": 5},
    pairs={"C14>site": 60, "C17>device": 30},
)

# two sequence groups of different max lengths (hist 8, clicks 3), two dense fields, mixed co-action pairs:
# categorical -> sequence (same and other group), sequence -> categorical, categorical -> categorical
SEQ_DENSE = Schema(
    dataset="test:seq_dense", protocol="table", seed=0, splits={},
    spec=FeatureSpec(
        fields=[
            Field("user", side="user"), Field("item", side="item"), Field("cate", side="item"),
            Field("hist_item", kind="sequence", side="user", table="item", group="hist"),
            Field("hist_cate", kind="sequence", side="user", table="cate", group="hist"),
            Field("clicks", kind="sequence", side="user", table="item", group="clicks"),
            Field("price", kind="dense", side="item"), Field("age", kind="dense", side="user"),
        ],
        sequences=[SequenceGroup("hist", 8), SequenceGroup("clicks", 3)],
        coaction=[Pair("item", "hist_item"), Pair("cate", "hist_cate"), Pair("item", "clicks"),
                  Pair("clicks", "cate"), Pair("user", "item")],
        cartesian=[Pair("item", "hist_item"), Pair("cate", "clicks")],
        attention=Attention(("item", "cate"), ("hist_item", "hist_cate")),
    ),
    vocab={"user": 20, "item": 50, "cate": 8}, pairs={"item>hist_item": 40, "cate>clicks": 30},
)
SPECS = {"amazon": AMAZON, "profile": PROFILE, "seq_dense": SEQ_DENSE}
MODELS = [e.name for e in list_models()]
NEEDS_ATTENTION = {"din", "dien", "can-din", "can-dien"}

LENGTHS = [8, 5, 1, 0, 3, 8, 2, 7, 6, 4, 2, 8]  # lengths of the attention group: empty and full rows included


# ------------------------------------------------------------------------------------------------ batches


def make_batch(hist_len: list[int] | None = None, seed: int = 0, schema: Schema = SCHEMA,
               negatives: tuple[str, ...] = ("hist",)) -> Batch:
    """Random ids of every field (1..vocab-1; 0 at padded positions), as BatchLoader builds them: each group
    padded to its longest row. `hist_len` fixes the lengths of the attention group (or the first group);
    the other groups get random lengths (from 0 to max_len). Negatives for `negatives` groups of the spec."""
    spec = schema.spec
    g = torch.Generator().manual_seed(seed)
    B = len(hist_len or LENGTHS)
    main = spec.attention_group or (spec.sequences[0].name if spec.sequences else None)

    def ids(table: str, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(1, schema.vocab[table], shape, generator=g)

    sparse = {f.name: ids(f.table, (B,)) for f in spec.categorical}
    lengths, masks, negs = {}, {}, {}
    for group in spec.sequences:
        if group.name == main:
            n = torch.tensor(hist_len or LENGTHS)
        else:
            n = torch.randint(0, group.max_len + 1, (B,), generator=g)
        width = max(int(n.max()), 1)
        mask = lengths_to_mask(n, width)
        lengths[group.name], masks[group.name] = n, mask
        for f in spec.group_fields(group.name):
            sparse[f.name] = ids(f.table, (B, width)) * mask
            if group.name in negatives:
                negs[f.name] = ids(f.table, (B, width)) * mask
    return Batch(
        label=torch.randint(0, 2, (B,), generator=g).float(),
        group=torch.arange(B),
        sparse=sparse, lengths=lengths, masks=masks,
        dense=torch.randn(B, len(spec.dense), generator=g) if spec.dense else None,
        negatives=negs,
    )


def scramble_padding(batch: Batch, schema: Schema, extra: int, seed: int = 1) -> Batch:
    """Random (valid-looking) ids at every padded position of every group, and `extra` more padded columns."""
    g = torch.Generator().manual_seed(seed)
    sparse, masks, negatives = dict(batch.sparse), dict(batch.masks), dict(batch.negatives)
    for group, n in batch.lengths.items():
        B, L = batch.masks[group].shape
        valid = lengths_to_mask(n, L + extra)
        masks[group] = valid
        for f in schema.spec.group_fields(group):
            rows = schema.vocab[f.table]
            for store in (sparse, negatives):
                if f.name in store:
                    wide = torch.cat([store[f.name], torch.zeros(B, extra, dtype=torch.long)], dim=1)
                    store[f.name] = torch.where(valid, wide, torch.randint(1, rows, (B, L + extra), generator=g))
    return batch.replace(sparse=sparse, masks=masks, negatives=negatives)


def total_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    out = model(batch)
    return F.binary_cross_entropy_with_logits(out.logits, batch.label) + sum(out.aux_losses.values())


def build(name: str, seed: int = 0, overrides: dict | None = None, schema: Schema = SCHEMA) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, schema, make_config(name, overrides))


CASES = [(n, s) for s in SPECS for n in MODELS]
RUNNABLE = [(n, s) for n, s in CASES if not (s == "profile" and n in NEEDS_ATTENTION)]


def case_id(case: tuple[str, str]) -> str:
    return f"{case[0]}@{case[1]}"


# ------------------------------------------------------------------------------------- every model, 3 specs


@pytest.mark.parametrize("case", RUNNABLE, ids=case_id)
def test_forward_shape_and_finite(case):
    name, spec = case
    schema = SPECS[spec]
    model = build(name, schema=schema)
    for mode in (model.train, model.eval):
        mode()
        out = model(make_batch(schema=schema))
        assert out.logits.shape == (len(LENGTHS),) and torch.isfinite(out.logits).all()
    assert out.aux_losses == {}  # eval mode never returns auxiliary terms


@pytest.mark.parametrize("name", sorted(NEEDS_ATTENTION))
def test_attention_models_name_the_missing_spec_key(name):
    with pytest.raises(ValueError, match="`attention`") as info:
        build(name, schema=PROFILE)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", RUNNABLE, ids=case_id)
def test_padding_invariance(case):
    name, spec = case
    check_padding_invariance(build(name, schema=SPECS[spec]), SPECS[spec])


def check_padding_invariance(model: torch.nn.Module, schema: Schema = SCHEMA) -> None:
    model.train()
    total_loss(model, make_batch(seed=3, schema=schema)).backward()  # move any running statistics off 0/1
    model.eval()
    batch = make_batch(schema=schema)
    with torch.no_grad():
        ref = model(batch).logits
        for extra in (0, 5):
            torch.testing.assert_close(model(scramble_padding(batch, schema, extra, seed=extra + 1)).logits, ref)


@pytest.mark.parametrize("case", RUNNABLE, ids=case_id)
def test_every_parameter_gets_a_gradient(case):
    name, spec = case
    check_every_parameter_gets_a_gradient(build(name, schema=SPECS[spec]), SPECS[spec])


def check_every_parameter_gets_a_gradient(model: torch.nn.Module, schema: Schema = SCHEMA) -> None:
    model.train()
    total_loss(model, make_batch(schema=schema)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("case", RUNNABLE, ids=case_id)
def test_trains_on_a_fixed_batch(case):
    name, spec = case
    schema = SPECS[spec]
    model = build(name, schema=schema)
    model.train()
    batch = make_batch(LENGTHS * 3, seed=5, schema=schema)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = total_loss(model, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("case", RUNNABLE, ids=case_id)
def test_state_dict_round_trip(case):
    name, spec = case
    check_state_dict_round_trip(name, schema=SPECS[spec])


def check_state_dict_round_trip(name: str, overrides: dict | None = None, schema: Schema = SCHEMA) -> None:
    model = build(name, seed=0, overrides=overrides, schema=schema)
    model.train()
    total_loss(model, make_batch(seed=7, schema=schema)).backward()  # running statistics differ from a fresh model
    fresh = build(name, seed=1, overrides=overrides, schema=schema)
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    batch = make_batch(schema=schema)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, fresh(batch).logits)


# ------------------------------------------------------------------------------------ registry and widths


def test_registry_entries_and_configs():
    assert {"dnn", "can-dnn", "cartesian", "din", "dien", "can-dien"} <= set(MODELS)
    for name in MODELS:
        entry = get_entry(name)
        assert entry.paper and entry.description
        assert isinstance(make_config(name), entry.config_cls)
    # composed models: the backbone's config plus the block's section, built by composition
    can_dien = get_entry("can-dien")
    assert (can_dien.backbone, can_dien.blocks) == ("dien", ("coaction",))
    assert issubclass(can_dien.config_cls, get_entry("dien").config_cls)
    assert type(build("can-dien")) is type(build("dien"))
    assert get_entry("can-cartesian").blocks == ("coaction", "cartesian")
    cfg = make_config("can-dien", {"coaction.orders": 2, "aux_weight": 0.5})
    assert (cfg.coaction.orders, cfg.aux_weight) == (2, 0.5)
    cfg = make_config("can-dnn", {"coaction.orders": 2, "coaction.pairs": ["item"]})
    model = create_model("can-dnn", SCHEMA, cfg)
    assert model.mlp.net[0].weight.shape == (90 + 24,)  # one pair, 2 orders x (8 + 4)
    with pytest.raises(ValueError, match="induced by 'user'"):
        create_model("can-dnn", SCHEMA, make_config("can-dnn", {"coaction.pairs": ["user"]}))
    with pytest.raises(ValueError):
        make_config("can-dien", {"coaction.no_such_option": 1})


def test_default_mlp_input_widths():
    # the paper's section 5 setup (inferred from the code's shapes): DNN 90, CAN 162, Cartesian 126,
    # CAN+Cartesian 198; DIN / DIEN 162, CAN-DIN / CAN-DIEN 234; PNN / ONN 90 + 6 inner + 6 kernel products
    widths = {"dnn": 90, "can-dnn": 162, "cartesian": 126, "can-cartesian": 198, "din": 162, "dien": 162,
              "can-dien": 234, "can-din": 234, "pnn": 102, "onn": 102, "ncf": 90, "dcn-v2": 90}
    for name, width in widths.items():
        assert build(name).mlp.net[0].weight.shape == (width,), name
    assert build("ncf").mlp.net[-1].weight.shape == (1, 80 + 36)
    assert build("pnn", overrides={"product": "inner"}).mlp.net[0].weight.shape == (96,)
    assert build("onn").operations.tables["item"].weight.shape == (SCHEMA.vocab["item"], 15)
    assert build("dcn-v2", overrides={"structure": "parallel"}).mlp.net[-1].weight.shape == (1, 80 + 90)
    low_rank = build("dcn-v2", overrides={"rank": 4})
    assert [tuple(p.shape) for p in low_rank.cross.layers[0].parameters()] == [(4, 90), (90, 4), (90,)]


def test_widths_follow_the_spec():
    E = 18
    # seq_dense: [user, item, cate, hist_item, hist_cate, clicks] x 18 + 2 dense; 5 co-action pairs x 36
    assert build("dnn", schema=SEQ_DENSE).mlp.net[0].weight.shape == (6 * E + 2,)
    assert build("can-dnn", schema=SEQ_DENSE).mlp.net[0].weight.shape == (6 * E + 2 + 5 * 36,)
    assert build("din", schema=SEQ_DENSE).mlp.net[0].weight.shape == (6 * E + 2 + 2 * 2 * E,)
    assert build("cartesian", schema=SEQ_DENSE).mlp.net[0].weight.shape == (6 * E + 2 + 2 * E,)
    # profile: 6 fields, 4 pairs
    assert build("can-dnn", schema=PROFILE).mlp.net[0].weight.shape == (6 * E + 4 * 36,)
    assert build("pnn", schema=PROFILE).mlp.net[0].weight.shape == (6 * E + 2 * 15,)  # 15 pairs, inner + kernel
    assert build("ncf", schema=PROFILE).mlp.net[-1].weight.shape == (1, 80 + E)


def test_roles_from_the_spec():
    amazon = Roles.of(AMAZON.spec)
    assert (amazon.query, amazon.keys, amazon.group) == (("item", "cate"), ("hist_item", "hist_cate"), "hist")
    assert (amazon.others, amazon.bags, amazon.dense) == (("user",), (), ())
    assert amazon.view == ("item", "cate", "hist_item", "hist_cate")  # the code's FM-family fields, no user
    assert amazon.inputs == ("user", "item", "cate", "hist_item", "hist_cate")
    profile = Roles.of(PROFILE.spec)
    assert (profile.query, profile.keys, profile.group) == (("C14", "C17"), (), None)
    assert profile.view == ("C14", "C17", "site", "app", "device", "conn")
    seq = Roles.of(SEQ_DENSE.spec)
    assert (seq.bags, seq.dense) == (("clicks",), ("price", "age"))
    # a target-side bag (MovieLens genres) is a sequence too
    ml = Roles.of(behaviour_spec(max_len=8, user_fields=("gender",), item_bags={"genres": ("genre", 4)}))
    assert (ml.others, ml.bags) == (("user", "gender"), ("genres",))


def test_feature_embeddings_one_table_per_spec_table_in_spec_order():
    torch.manual_seed(0)
    embed = FeatureEmbeddings(SEQ_DENSE, 4)
    assert list(embed.tables) == ["user", "item", "cate"]  # hist_item and clicks read item's rows
    batch = make_batch(schema=SEQ_DENSE)
    e = embed(batch)
    torch.testing.assert_close(e.values["clicks"], embed.tables["item"].weight[batch["clicks"]])
    mask = batch.mask("hist")
    torch.testing.assert_close(e.key_sum[:, :4], (embed.tables["item"].weight[batch["hist_item"]] * mask[..., None])
                               .sum(1))
    x = e.inputs()
    assert x.shape == (batch.size, embed.input_dim) == (batch.size, 6 * 4 + 2)
    torch.testing.assert_close(x[:, -2:], batch.dense)


def test_the_public_layout_draws_the_pre_spec_initialisation():
    # tables are drawn user, item, cate, as the models built before the feature spec did
    torch.manual_seed(0)
    model = create_model("can-dnn", SCHEMA)
    torch.manual_seed(0)
    expected = [embedding_table(SCHEMA.vocab[t], 18, "glorot").weight for t in ("user", "item", "cate")]
    for table, want in zip(("user", "item", "cate"), expected, strict=True):
        assert torch.equal(model.embed.tables[table].weight, want)


# ------------------------------------------------------------------------------------------------- DIEN


def test_dien_declares_and_uses_negatives():
    assert negative_groups(build("dien")) == ("hist",)
    assert negative_groups(build("can-dien", schema=SEQ_DENSE)) == ("hist",)
    assert negative_groups(build("dien", overrides={"aux_weight": 0.0})) == ()
    assert all(negative_groups(build(n)) == () for n in ("dnn", "din", "can-dnn", "fm"))
    model = build("dien").train()
    with pytest.raises(ValueError, match="negatives"):
        model(make_batch(negatives=()))
    assert build("dien", overrides={"aux_weight": 0.0}).train()(make_batch(negatives=())).aux_losses == {}


def test_dien_aux_loss_weight():
    batch = make_batch()
    a = build("dien", overrides={"aux_weight": 1.0}).train()
    b = build("dien", overrides={"aux_weight": 0.5}).train()
    aux_a, aux_b = a(batch).aux_losses["aux"], b(batch).aux_losses["aux"]
    assert aux_a > 0
    torch.testing.assert_close(aux_b, 0.5 * aux_a)


@pytest.mark.parametrize(
    "name,overrides",
    [("pnn", {"product": "outer"}), ("onn", {"product": "inner"}), ("dcn-v2", {"structure": "parallel", "rank": 8}),
     ("dien", {"hidden_norm": "batchnorm"}), ("can-dnn", {"hidden_norm": "batchnorm"}),
     ("din", {"hist_pool": "sum"}), ("dien", {"hist_pool": "sum"}), ("can-dien", {"hist_pool": "sum"})],
)
def test_zoo_options_train_cleanly(name, overrides):
    check_every_parameter_gets_a_gradient(build(name, overrides=overrides))
    check_padding_invariance(build(name, overrides=overrides))


@pytest.mark.parametrize("name", ["din", "dien", "can-din"])
def test_hist_pool_mean_divides_the_mlp_history_by_its_length(name):
    """hist_pool only rescales the pooled history in the MLP input: the same parameters, the same input on
    histories of length 0 or 1, and (pooled keys, target x pooled keys) / length on longer ones."""
    summed, mean = build(name, overrides={"hist_pool": "sum"}), build(name)
    assert make_config(name).hist_pool == "mean"  # the default
    mean.load_state_dict(summed.state_dict())
    batch = make_batch()
    inputs = {}
    for tag, model in (("sum", summed), ("mean", mean)):
        model.eval()
        model.mlp.register_forward_pre_hook(lambda _m, args, tag=tag: inputs.__setitem__(tag, args[0]))
        model(batch)
    n = batch.lengths["hist"]
    short = n <= 1
    torch.testing.assert_close(inputs["mean"][short], inputs["sum"][short])
    differs = (inputs["mean"] - inputs["sum"]).abs().amax(dim=0) > 0
    cols = differs.nonzero().squeeze(-1)
    long_rows = ~short
    scale = n[long_rows].float().unsqueeze(-1)
    torch.testing.assert_close(inputs["mean"][long_rows][:, cols] * scale, inputs["sum"][long_rows][:, cols])
    assert cols.numel() == 2 * 2 * make_config(name).embed_dim  # pooled keys and target x pooled keys


# ----------------------------------------------------------------------------------------- co-action block

CROSS_PAIRS = ["item>hist_item", "item>hist_cate", "cate>hist_item"]


def coaction_block(schema: Schema = SCHEMA, **options) -> tuple[torch.nn.Module, CoActionBlock]:
    """A can-dnn with `coaction.*` options, and its co-action block."""
    model = build("can-dnn", overrides={f"coaction.{k}": v for k, v in options.items()}, schema=schema)
    return model, model.blocks[0]


def widths(tables: torch.nn.ModuleDict) -> dict[str, int]:
    return {v: t.embedding_dim for v, t in tables.items()}


def test_coaction_pairs_default_to_the_spec_and_validate():
    assert coaction_block()[1].pair_names == ("item>hist_item", "cate>hist_cate")
    assert coaction_block(PROFILE)[1].pair_names == ("C14>site", "C14>app", "C17>device", "C17>conn")
    assert coaction_block(pairs=["item", "cate>hist_item"])[1].pair_names == ("item>hist_item", "cate>hist_item")
    for bad in (["item", "item"], ["item>"], ["a>b>c"]):  # rejected by the config
        with pytest.raises(ValueError):
            make_config("can-dnn", {"coaction.pairs": bad})
    for bad in (["hist_item>hist_cate"], ["item>nope"], ["item", "item>hist_item"]):  # rejected against the spec
        with pytest.raises(ValueError, match="coaction.pairs"):
            coaction_block(pairs=bad)


def test_combination_independence_slices_tables_as_eqs_12_13():
    P, D, S = 160, 16, 36  # induction, feed and output widths of the default unit
    batch = make_batch()
    mask = batch.mask("hist")
    _, on = coaction_block(pairs=CROSS_PAIRS, combination_independence=True)
    # eq. 12: item induces with 2 feed groups (hist_item, hist_cate) -> 2 micro-MLPs per row, cate with 1;
    # eq. 13: hist_item is fed to 2 induction groups (item, cate) -> 2 inputs per row, hist_cate to 1
    assert widths(on.induction) == {"item": 2 * P, "cate": P}
    assert widths(on.feed) == {"item": 2 * D, "cate": D}
    ind_item, ind_cate = on.induction["item"](batch["item"]), on.induction["cate"](batch["cate"])
    feed_item, feed_cate = on.feed["item"](batch["hist_item"]), on.feed["cate"](batch["hist_cate"])
    expected = [
        on.unit(ind_item[:, :P], feed_item[..., :D], mask),  # item>hist_item: 1st MLP of item, 1st input of hist_item
        on.unit(ind_item[:, P:], feed_cate, mask),  # item>hist_cate: 2nd MLP of item
        on.unit(ind_cate, feed_item[..., D:], mask),  # cate>hist_item: 2nd input of hist_item
    ]
    out = on(batch)
    torch.testing.assert_close(out, torch.cat(expected, dim=-1))
    out[:, S : 2 * S].sum().backward()  # item>hist_cate alone trains only the 2nd block of item's rows
    grad = on.induction["item"].weight.grad
    assert grad[:, :P].abs().sum() == 0 and grad[:, P:].abs().sum() > 0

    # off (the code): one vector per feature and role, shared by every pair the feature takes part in
    _, off = coaction_block(pairs=CROSS_PAIRS)
    assert widths(off.induction) == {"item": P, "cate": P} and widths(off.feed) == {"item": D, "cate": D}
    ind_item, ind_cate = off.induction["item"](batch["item"]), off.induction["cate"](batch["cate"])
    feed_item, feed_cate = off.feed["item"](batch["hist_item"]), off.feed["cate"](batch["hist_cate"])
    expected = [off.unit(ind_item, feed_item, mask), off.unit(ind_item, feed_cate, mask),
                off.unit(ind_cate, feed_item, mask)]
    out = off(batch)
    torch.testing.assert_close(out, torch.cat(expected, dim=-1))
    out[:, S : 2 * S].sum().backward()  # item>hist_cate trains the very item rows that item>hist_item reads
    assert off.induction["item"].weight.grad.abs().sum() > 0 and off.induction["cate"].weight.grad.abs().sum() == 0
    # with the code's two same-type pairs every feature has one partner: on and off are the same model
    assert widths(coaction_block(combination_independence=True)[1].induction) == {"item": P, "cate": P}
    # Avazu-like: C14 induces for two partner tables, C17 for two; each fed table has one inducer
    _, profile = coaction_block(PROFILE, combination_independence=True)
    assert widths(profile.induction) == {"C14": 2 * P, "C17": 2 * P}
    assert widths(profile.feed) == {"site": D, "app": D, "device": D, "conn": D}


def test_default_pairs_in_one_stacked_call_equal_one_call_per_pair():
    batch = make_batch()
    _, block = coaction_block()
    ind = [block.induction[v](batch[v]) for v in ("item", "cate")]
    feed = [block.feed[v](batch[f"hist_{v}"]) for v in ("item", "cate")]
    per_pair = torch.cat([block.unit(i, f, batch.mask("hist")) for i, f in zip(ind, feed)], dim=-1)
    stacked = block(batch)
    assert torch.equal(stacked, per_pair)  # the same per-sample math, bit for bit
    (g_pair,) = torch.autograd.grad(per_pair.square().sum(), block.induction["cate"].weight)
    (g_stack,) = torch.autograd.grad(stacked.square().sum(), block.induction["cate"].weight)
    torch.testing.assert_close(g_stack, g_pair)


def test_categorical_feed_is_a_length_one_sequence():
    # the paper's profile pairs: induction [B, P], feed [B, 1, D], mask of ones
    batch = make_batch(schema=PROFILE)
    _, block = coaction_block(PROFILE)
    ones = torch.ones(batch.size, 1, dtype=torch.bool)
    expected = [block.unit(block.induction[i](batch[i]), block.feed[f](batch[f])[:, None], ones)
                for i, f in (("C14", "site"), ("C14", "app"), ("C17", "device"), ("C17", "conn"))]
    torch.testing.assert_close(block(batch), torch.cat(expected, dim=-1))


def test_mixed_pairs_of_two_groups():
    batch = make_batch(schema=SEQ_DENSE)
    _, block = coaction_block(SEQ_DENSE)
    hist, clicks = batch.mask("hist"), batch.mask("clicks")
    ind, feed, u = block.induction, block.feed, block.unit
    expected = [
        u(ind["item"](batch["item"]), feed["item"](batch["hist_item"]), hist),
        u(ind["cate"](batch["cate"]), feed["cate"](batch["hist_cate"]), hist),
        u(ind["item"](batch["item"]), feed["item"](batch["clicks"]), clicks),
        u(ind["item"](batch["clicks"]), feed["cate"](batch["cate"])[:, None], clicks),  # a sequence induces
        u(ind["user"](batch["user"]), feed["item"](batch["item"])[:, None], torch.ones_like(hist[:, :1])),
    ]
    torch.testing.assert_close(block(batch), torch.cat(expected, dim=-1))


def test_swap_sides_induces_from_history():
    batch = make_batch()
    mask = batch.mask("hist")
    _, block = coaction_block(swap_sides=True)
    # induction [B, L, 160] from the history ids, feed [B, 1, 16] from the target id
    expected = [block.unit(block.induction[v](batch[f"hist_{v}"]), block.feed[v](batch[v])[:, None], mask)
                for v in ("item", "cate")]
    torch.testing.assert_close(block(batch), torch.cat(expected, dim=-1))


def test_without_parameter_independence_the_representation_tables_serve_every_role():
    model, block = coaction_block(parameter_independence=False)
    tables = model.embed.tables
    for v in ("item", "cate"):
        assert block.induction[v] is tables[v] and block.feed[v] is tables[v]
        assert tables[v].embedding_dim == 160  # max(E 18, P 160, D 16)
    batch = make_batch()
    e = model.embed(batch)
    torch.testing.assert_close(e.target[:, :18], tables["item"].weight[batch["item"], :18])
    expected = [block.unit(tables[v](batch[v]), tables[v](batch[f"hist_{v}"])[..., :16], batch.mask("hist"))
                for v in ("item", "cate")]
    torch.testing.assert_close(block(batch), torch.cat(expected, dim=-1))
    # one [n, 160] table per vocabulary replaces the representation [n, 18] + induction [n, 160] + feed [n, 16]
    saved = (SCHEMA.vocab["item"] + SCHEMA.vocab["cate"]) * (18 + 16)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in build("can-dnn").parameters()) - saved
    with pytest.raises(ValueError):
        CoActionBlock(SCHEMA, model.config.coaction, "glorot")  # no representation to share


@pytest.mark.parametrize(
    "swap,combination,parameter,cross,order_independent", list(itertools.product([False, True], repeat=5))
)
def test_coaction_option_combinations_train_cleanly(swap, combination, parameter, cross, order_independent):
    overrides = {
        "coaction.swap_sides": swap,
        "coaction.combination_independence": combination,
        "coaction.parameter_independence": parameter,
        "coaction.order_independent": order_independent,
    }
    if cross:
        overrides["coaction.pairs"] = CROSS_PAIRS
    check_every_parameter_gets_a_gradient(build("can-dnn", overrides=overrides))
    check_padding_invariance(build("can-dnn", overrides=overrides))


@pytest.mark.parametrize("spec", ["profile", "seq_dense"])
@pytest.mark.parametrize("swap,combination,parameter", list(itertools.product([False, True], repeat=3)))
def test_coaction_options_on_other_specs(spec, swap, combination, parameter):
    overrides = {"coaction.swap_sides": swap, "coaction.combination_independence": combination,
                 "coaction.parameter_independence": parameter}
    schema = SPECS[spec]
    check_every_parameter_gets_a_gradient(build("can-dnn", overrides=overrides, schema=schema), schema)
    check_padding_invariance(build("can-dnn", overrides=overrides, schema=schema), schema)


@pytest.mark.parametrize("name", ["can-din", "can-dien", "can-cartesian"])
def test_coaction_options_on_every_backbone(name):
    overrides = {
        "coaction.swap_sides": True,
        "coaction.combination_independence": True,
        "coaction.parameter_independence": False,
        "coaction.pairs": CROSS_PAIRS,
    }
    check_every_parameter_gets_a_gradient(build(name, overrides=overrides))
    check_padding_invariance(build(name, overrides=overrides))
    check_state_dict_round_trip(name, overrides)  # tied tables appear under two names in the state_dict


# ----------------------------------------------------------------------------------------- Cartesian block


def test_pair_ids_are_rank_plus_one_and_zero_when_unseen():
    keys = torch.tensor([3, 7, 20, 41])
    assert pair_ids(keys, torch.tensor([[7, 3, 5], [41, 0, 99]])).tolist() == [[2, 1, 0], [4, 0, 0]]
    assert pair_ids(torch.zeros(0, dtype=torch.long), torch.tensor([1, 2])).tolist() == [0, 0]


def prepared_schema(schema: Schema, root, seed: int = 0) -> Schema:
    """`schema` as if loaded from a prepared directory `root` holding random Cartesian pair keys."""
    rng = np.random.default_rng(seed)
    pairs = {}
    for p in schema.spec.cartesian:
        n_ind = schema.vocab[schema.spec.field(p.induction).table]
        n_feed = schema.vocab[schema.spec.field(p.feed).table]
        keys = np.unique(rng.integers(0, n_ind * n_feed, size=n_ind * n_feed // 2))
        save_pair_keys(root, p.name, keys)
        pairs[p.name] = int(keys.size) + 1
    out = Schema(dataset=schema.dataset, protocol=schema.protocol, seed=schema.seed, spec=schema.spec,
                 vocab=schema.vocab, splits=schema.splits, pairs=pairs)
    out.root = root
    return out


@pytest.mark.parametrize("spec", ["amazon", "profile", "seq_dense"])
def test_cartesian_block_derives_pair_ids_from_the_stored_keys(spec, tmp_path):
    schema = prepared_schema(SPECS[spec], tmp_path)
    torch.manual_seed(0)
    block = CartesianBlock(schema, 4, "glorot")
    batch = make_batch(schema=schema)
    expected = []
    for pair, p in zip(block.pairs, schema.spec.cartesian, strict=True):
        keys = pair.keys.tolist()
        assert keys == sorted(keys) and len(keys) == schema.pairs[p.name] - 1
        rows = schema.vocab[schema.spec.field(p.feed).table]
        a, b = batch[p.induction], batch[p.feed]
        a, b = (a[:, None] if a.dim() == 1 else a), (b[:, None] if b.dim() == 1 else b)
        key = (a * rows + b).broadcast_to(torch.broadcast_shapes(a.shape, b.shape))
        ids = torch.tensor([[keys.index(k) + 1 if k in keys else 0 for k in row] for row in key.tolist()])
        torch.testing.assert_close(pair.ids(batch), ids)
        group = next((schema.spec.field(n).group for n in (p.induction, p.feed)
                      if schema.spec.field(n).kind == "sequence"), None)
        mask = batch.mask(group) if group else torch.ones(batch.size, 1, dtype=torch.bool)
        expected.append((pair.table.weight[ids] * mask[..., None]).sum(1))
    torch.testing.assert_close(block(batch), torch.cat(expected, dim=-1))


def test_cartesian_model_rebuilds_from_a_checkpoint_without_the_data(tmp_path):
    schema = prepared_schema(SCHEMA, tmp_path)
    torch.manual_seed(0)
    trained = create_model("can-cartesian", schema).eval()
    assert trained.blocks[1].pairs[0].keys.abs().sum() > 0  # read from the prepared directory
    no_data = Schema.from_dict(schema.to_dict())  # as read from a checkpoint: root is None
    assert no_data.root is None
    rebuilt = create_model("can-cartesian", no_data).eval()
    assert rebuilt.blocks[1].pairs[0].keys.abs().sum() == 0  # zeros until the state_dict fills them
    rebuilt.load_state_dict(trained.state_dict())
    batch = make_batch()
    with torch.no_grad():
        assert torch.equal(rebuilt(batch).logits, trained(batch).logits)


def test_cartesian_models_need_cartesian_pairs():
    spec = FeatureSpec(fields=[Field("a", side="item"), Field("b")], coaction=[Pair("a", "b")])
    schema = Schema(dataset="t", protocol="table", seed=0, spec=spec, vocab={"a": 5, "b": 5}, splits={})
    for name in ("cartesian", "can-cartesian"):
        with pytest.raises(ValueError, match="`cartesian`"):
            create_model(name, schema)
    create_model("wide-deep", schema)  # the wide part simply has no crosses
