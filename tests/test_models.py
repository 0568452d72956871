"""Every registered model: shapes, padding invariance, training, gradients, state_dict round trip."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from canctr.data.batch import HIST_FIELDS, Batch
from canctr.data.schema import Schema
from canctr.models import create_model, get_entry, list_models, make_config
from canctr.models._common import CoActionFeatures

SCHEMA = Schema(
    dataset="synthetic",
    protocol="last",
    seed=0,
    max_len=8,
    n_user=20,
    n_item=50,
    n_cate=8,
    n_item_pair=40,
    n_cate_pair=15,
    splits={},
)
MODELS = [e.name for e in list_models()]
VOCAB = {
    "hist_item": SCHEMA.n_item,
    "hist_cate": SCHEMA.n_cate,
    "neg_hist_item": SCHEMA.n_item,
    "neg_hist_cate": SCHEMA.n_cate,
    "hist_item_pair": SCHEMA.n_item_pair,
    "hist_cate_pair": SCHEMA.n_cate_pair,
}


def make_batch(hist_len: list[int], width: int = 8, seed: int = 0) -> Batch:
    """Random ids; history positions >= hist_len are 0 (padding)."""
    g = torch.Generator().manual_seed(seed)
    B = len(hist_len)
    lengths = torch.tensor(hist_len)
    valid = torch.arange(width)[None, :] < lengths[:, None]

    def ids(n: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(1, n, shape, generator=g)

    hist = {k: ids(n, (B, width)) * valid for k, n in VOCAB.items()}
    return Batch(
        label=torch.randint(0, 2, (B,), generator=g).float(),
        group=torch.arange(B),
        user=ids(SCHEMA.n_user, (B,)),
        item=ids(SCHEMA.n_item, (B,)),
        cate=ids(SCHEMA.n_cate, (B,)),
        hist_len=lengths,
        **hist,
    )


def scramble_padding(batch: Batch, extra: int, seed: int = 1) -> Batch:
    """Random (valid-looking) ids at every padded position, and `extra` more padded columns."""
    g = torch.Generator().manual_seed(seed)
    B, L = batch.hist_item.shape
    valid = torch.arange(L + extra)[None, :] < batch.hist_len[:, None]
    changes = {}
    for k in HIST_FIELDS:
        wide = torch.cat([getattr(batch, k), torch.zeros(B, extra, dtype=torch.long)], dim=1)
        changes[k] = torch.where(valid, wide, torch.randint(1, VOCAB[k], (B, L + extra), generator=g))
    return batch.replace(**changes)


def total_loss(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    out = model(batch)
    return F.binary_cross_entropy_with_logits(out.logits, batch.label) + sum(out.aux_losses.values())


def build(name: str, seed: int = 0, overrides: dict | None = None) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, SCHEMA, make_config(name, overrides))


LENGTHS = [8, 5, 1, 0, 3, 8, 2, 7, 6, 4, 2, 8]  # includes empty and full histories


@pytest.mark.parametrize("name", MODELS)
def test_forward_shape_and_finite(name):
    model = build(name)
    for mode in (model.train, model.eval):
        mode()
        out = model(make_batch(LENGTHS))
        assert out.logits.shape == (len(LENGTHS),) and torch.isfinite(out.logits).all()
    assert out.aux_losses == {}  # eval mode never returns auxiliary terms


@pytest.mark.parametrize("name", MODELS)
def test_padding_invariance(name):
    check_padding_invariance(build(name))


def check_padding_invariance(model: torch.nn.Module) -> None:
    model.train()
    total_loss(model, make_batch(LENGTHS, seed=3)).backward()  # move any running statistics off 0/1
    model.eval()
    batch = make_batch(LENGTHS)
    with torch.no_grad():
        ref = model(batch).logits
        for extra in (0, 5):
            torch.testing.assert_close(model(scramble_padding(batch, extra, seed=extra + 1)).logits, ref)


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_gets_a_gradient(name):
    check_every_parameter_gets_a_gradient(build(name))


def check_every_parameter_gets_a_gradient(model: torch.nn.Module) -> None:
    model.train()
    total_loss(model, make_batch(LENGTHS)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing, f"parameters without gradient: {missing}"


@pytest.mark.parametrize("name", MODELS)
def test_trains_on_a_fixed_batch(name):
    model = build(name)
    model.train()
    batch = make_batch(LENGTHS * 3, seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = total_loss(model, batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


@pytest.mark.parametrize("name", MODELS)
def test_state_dict_round_trip(name):
    check_state_dict_round_trip(name)


def check_state_dict_round_trip(name: str, overrides: dict | None = None) -> None:
    model = build(name, seed=0, overrides=overrides)
    model.train()
    total_loss(model, make_batch(LENGTHS, seed=7)).backward()  # running statistics differ from a fresh model
    fresh = build(name, seed=1, overrides=overrides)
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    batch = make_batch(LENGTHS)
    with torch.no_grad():
        assert torch.equal(model(batch).logits, fresh(batch).logits)


def test_registry_entries_and_configs():
    assert {"dnn", "can-dnn", "cartesian", "din", "dien", "can-dien"} <= set(MODELS)
    for name in MODELS:
        entry = get_entry(name)
        assert entry.paper and entry.description
        assert isinstance(make_config(name), entry.config_cls)
    cfg = make_config("can-dnn", {"coaction.orders": 2, "coaction.pairs": ["item"]})
    model = create_model("can-dnn", SCHEMA, cfg)
    assert model.mlp.net[0].weight.shape == (90 + 24,)  # one pair, 2 orders x (8 + 4)
    with pytest.raises(ValueError):
        make_config("can-dnn", {"coaction.pairs": ["user"]})


def test_default_mlp_input_widths():
    # can-paper.md 2.6: DNN 90, CAN 162, Cartesian 126, CAN+Cartesian 198; DIN / DIEN 162, CAN-DIEN 234
    widths = {
        "dnn": 90,
        "can-dnn": 162,
        "cartesian": 126,
        "can-cartesian": 198,
        "din": 162,
        "dien": 162,
        "can-dien": 234,
    }
    for name, width in widths.items():
        assert build(name).mlp.net[0].weight.shape == (width,), name


def test_dien_aux_loss_weight():
    batch = make_batch(LENGTHS)
    torch.manual_seed(0)
    a = create_model("dien", SCHEMA, {"aux_weight": 1.0}).train()
    torch.manual_seed(0)
    b = create_model("dien", SCHEMA, {"aux_weight": 0.5}).train()
    aux_a, aux_b = a(batch).aux_losses["aux"], b(batch).aux_losses["aux"]
    assert aux_a > 0
    torch.testing.assert_close(aux_b, 0.5 * aux_a)


# ------------------------------------------------------------------------------- the zoo's other models


def test_zoo_default_widths():
    # can-paper.md 7: PNN and ONN append 6 inner + 6 kernel products to a 90-dim input; NCF's 36-dim GMF
    # vector joins after the 80-unit layer; DCN-V2 keeps the DNN input's width; CAN-DIN = DIN 162 + 72
    widths = {"pnn": 102, "onn": 102, "ncf": 90, "dcn-v2": 90, "can-din": 234}
    for name, width in widths.items():
        model = build(name)
        assert model.mlp.net[0].weight.shape == (width,), name
    assert build("ncf").mlp.net[-1].weight.shape == (1, 80 + 36)
    assert build("pnn", overrides={"product": "inner"}).mlp.net[0].weight.shape == (96,)
    assert build("onn").operations.tables["item"].weight.shape == (SCHEMA.n_item, 15)
    assert build("dcn-v2", overrides={"structure": "parallel"}).mlp.net[-1].weight.shape == (1, 80 + 90)
    low_rank = build("dcn-v2", overrides={"rank": 4})
    assert [tuple(p.shape) for p in low_rank.cross.layers[0].parameters()] == [(4, 90), (90, 4), (90,)]


@pytest.mark.parametrize(
    "name,overrides",
    [("pnn", {"product": "outer"}), ("onn", {"product": "inner"}), ("dcn-v2", {"structure": "parallel", "rank": 8}),
     ("dien", {"hidden_norm": "batchnorm"}), ("can-dnn", {"hidden_norm": "batchnorm"})],
)
def test_zoo_options_train_cleanly(name, overrides):
    check_every_parameter_gets_a_gradient(build(name, overrides=overrides))
    check_padding_invariance(build(name, overrides=overrides))


# ------------------------------------------------------------------------------------ co-action options

CROSS_PAIRS = ["item>hist_item", "item>hist_cate", "cate>hist_item"]


def coaction_features(**options):
    """A can-dnn with `coaction.*` options, and its CoActionFeatures block."""
    model = build("can-dnn", overrides={f"coaction.{k}": v for k, v in options.items()})
    return model, model.cross[0]


def widths(tables: torch.nn.ModuleDict) -> dict[str, int]:
    return {v: t.embedding_dim for v, t in tables.items()}


def test_coaction_pair_names():
    cfg = make_config("can-dnn", {"coaction.pairs": ["item", "cate>hist_item"]}).coaction
    assert cfg.pairs == ("item>hist_item", "cate>hist_item")  # aliases stored canonically
    for bad in (["item", "item>hist_item"], ["hist_item>item"], ["item>cate"], []):
        with pytest.raises(ValueError):
            make_config("can-dnn", {"coaction.pairs": bad})


def test_combination_independence_slices_tables_as_eqs_12_13():
    P, D, S = 160, 16, 36  # induction, feed and output widths of the default unit
    batch = make_batch(LENGTHS)
    mask = batch.mask
    _, on = coaction_features(pairs=CROSS_PAIRS, combination_independence=True)
    # eq. 12: item induces with 2 feed groups (hist_item, hist_cate) -> 2 micro-MLPs per row, cate with 1;
    # eq. 13: hist_item is fed to 2 induction groups (item, cate) -> 2 inputs per row, hist_cate to 1
    assert widths(on.induction) == {"item": 2 * P, "cate": P}
    assert widths(on.feed) == {"item": 2 * D, "cate": D}
    ind_item, ind_cate = on.induction["item"](batch.item), on.induction["cate"](batch.cate)
    feed_item, feed_cate = on.feed["item"](batch.hist_item), on.feed["cate"](batch.hist_cate)
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
    _, off = coaction_features(pairs=CROSS_PAIRS)
    assert widths(off.induction) == {"item": P, "cate": P} and widths(off.feed) == {"item": D, "cate": D}
    ind_item, ind_cate = off.induction["item"](batch.item), off.induction["cate"](batch.cate)
    feed_item, feed_cate = off.feed["item"](batch.hist_item), off.feed["cate"](batch.hist_cate)
    expected = [
        off.unit(ind_item, feed_item, mask),
        off.unit(ind_item, feed_cate, mask),
        off.unit(ind_cate, feed_item, mask),
    ]
    out = off(batch)
    torch.testing.assert_close(out, torch.cat(expected, dim=-1))
    # item>hist_cate trains the very item rows that item>hist_item reads
    out[:, S : 2 * S].sum().backward()
    assert off.induction["item"].weight.grad.abs().sum() > 0 and off.induction["cate"].weight.grad.abs().sum() == 0
    # with the code's two same-type pairs every feature has one partner: on and off are the same model
    assert widths(coaction_features(combination_independence=True)[1].induction) == {"item": P, "cate": P}


def test_default_pairs_in_one_stacked_call_equal_one_call_per_pair():
    batch = make_batch(LENGTHS)
    _, feats = coaction_features()
    ind = [feats.induction[v](getattr(batch, v)) for v in ("item", "cate")]
    feed = [feats.feed[v](getattr(batch, f"hist_{v}")) for v in ("item", "cate")]
    per_pair = torch.cat([feats.unit(i, f, batch.mask) for i, f in zip(ind, feed)], dim=-1)
    stacked = feats(batch)
    assert torch.equal(stacked, per_pair)  # the same per-sample math, bit for bit
    (g_pair,) = torch.autograd.grad(per_pair.square().sum(), feats.induction["cate"].weight)
    (g_stack,) = torch.autograd.grad(stacked.square().sum(), feats.induction["cate"].weight)
    torch.testing.assert_close(g_stack, g_pair)


def test_swap_sides_induces_from_history():
    batch = make_batch(LENGTHS)
    mask = batch.mask
    _, feats = coaction_features(swap_sides=True)
    # induction [B, L, 160] from the history ids, feed [B, 1, 16] from the target id
    expected = [
        feats.unit(feats.induction[v](getattr(batch, f"hist_{v}")), feats.feed[v](getattr(batch, v))[:, None], mask)
        for v in ("item", "cate")
    ]
    torch.testing.assert_close(feats(batch), torch.cat(expected, dim=-1))


def test_without_parameter_independence_the_representation_tables_serve_every_role():
    model, feats = coaction_features(parameter_independence=False)
    for v in ("item", "cate"):
        assert feats.induction[v] is getattr(model.embed, v) and feats.feed[v] is getattr(model.embed, v)
        assert getattr(model.embed, v).embedding_dim == 160  # max(E 18, P 160, D 16)
    batch = make_batch(LENGTHS)
    e = model.embed(batch)
    torch.testing.assert_close(e.target[:, :18], model.embed.item.weight[batch.item, :18])
    expected = [
        feats.unit(table(getattr(batch, v)), table(getattr(batch, f"hist_{v}"))[..., :16], batch.mask)
        for v, table in (("item", model.embed.item), ("cate", model.embed.cate))
    ]
    torch.testing.assert_close(feats(batch), torch.cat(expected, dim=-1))
    # one [n, 160] table per vocabulary replaces the representation [n, 18] + induction [n, 160] + feed [n, 16]
    saved = (SCHEMA.n_item + SCHEMA.n_cate) * (18 + 16)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in build("can-dnn").parameters()) - saved
    with pytest.raises(ValueError):
        CoActionFeatures(SCHEMA, model.config.coaction, "glorot")  # no representation to share


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
