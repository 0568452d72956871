"""Every registered model: shapes, padding invariance, training, gradients, state_dict round trip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from canctr.data.batch import HIST_FIELDS, Batch
from canctr.data.schema import Schema
from canctr.models import create_model, get_entry, list_models, make_config

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


def build(name: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(name, SCHEMA)


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
    model = build(name)
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
    model = build(name)
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
    model = build(name, seed=0)
    model.train()
    total_loss(model, make_batch(LENGTHS, seed=7)).backward()  # running statistics differ from a fresh model
    fresh = build(name, seed=1)
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
