"""FM-family layers against hand values and naive loops, and each FM-family model's logit decomposition
against references computed from its tables with explicit per-sample loops."""

from __future__ import annotations

import itertools

import pytest
import torch
from test_models import PROFILE, SCHEMA, SEQ_DENSE, make_batch

from canctr.data.batch import Batch
from canctr.data.schema import Schema
from canctr.layers.interaction import CIN, LinearTerm, ffm_interaction, fm_interaction
from canctr.models import create_model
from canctr.models.dnn import DNN, DNNConfig

# ------------------------------------------------------------------------------------------------ layers


def naive_fm(fields: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} <v_i, v_j> by explicit pairs: [B, F, E] -> [B]."""
    F = fields.shape[1]
    return sum(fields[:, i] @ fields[:, j].T for i, j in itertools.combinations(range(F), 2)).diagonal()


def test_fm_hand_example():
    # v1 = (1, 2), v2 = (3, -1), v3 = (0.5, 4): <v1,v2> = 1, <v1,v3> = 8.5, <v2,v3> = -2.5 -> 7
    fields = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]]])
    torch.testing.assert_close(fm_interaction(fields), torch.tensor([7.0]))
    # two fields: exactly their dot product
    torch.testing.assert_close(fm_interaction(fields[:, :2]), torch.tensor([1.0]))


def test_fm_linear_time_identity_matches_pairwise_sum():
    fields = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(fm_interaction(fields), naive_fm(fields))


def ffm_slot(i: int, j: int) -> int:
    """Field i's slot for partner j in an [F-1] table row (i itself skipped)."""
    return j - 1 if j > i else j


def test_ffm_matches_double_loop():
    B, F, E = 3, 4, 5
    fields = torch.randn(B, F, F - 1, E, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = torch.zeros(B, dtype=torch.float64)
    for b in range(B):
        for i in range(F):
            for j in range(i + 1, F):
                ref[b] += fields[b, i, ffm_slot(i, j)] @ fields[b, j, ffm_slot(j, i)]
    torch.testing.assert_close(ffm_interaction(fields), ref)


def test_ffm_hand_example_uses_the_partner_slot():
    # F = 3, E = 1; field i's row lists its vector for partners in order (i skipped)
    fields = torch.tensor([[[[2.0], [3.0]], [[5.0], [7.0]], [[11.0], [13.0]]]])
    # <v_{0,1}, v_{1,0}> + <v_{0,2}, v_{2,0}> + <v_{1,2}, v_{2,1}> = 2*5 + 3*11 + 7*13
    torch.testing.assert_close(ffm_interaction(fields), torch.tensor([10.0 + 33.0 + 91.0]))


def test_ffm_with_field_unaware_rows_is_fm():
    v = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(ffm_interaction(v.unsqueeze(2).expand(-1, -1, 4, -1)), fm_interaction(v))


def test_ffm_rejects_wrong_slot_count():
    with pytest.raises(ValueError, match="F-1"):
        ffm_interaction(torch.zeros(2, 4, 4, 3))


def naive_cin(cin: CIN, x0: torch.Tensor) -> torch.Tensor:
    """X^k[h, e] = sum_{i, m} W^k[h, i, m] X^{k-1}[i, e] X^0[m, e] by loops; split-half as the code."""
    B, F, E = x0.shape
    hidden, pooled = x0, []
    for k, layer in enumerate(cin.filters):
        W = layer.weight.view(layer.out_features, hidden.shape[1], F)  # [H, H_{k-1}, F]
        out = torch.zeros(B, W.shape[0], E, dtype=x0.dtype)
        for b, h, i, m, e in itertools.product(range(B), *map(range, W.shape), range(E)):
            out[b, h, e] += W[h, i, m] * hidden[b, i, e] * x0[b, m, e]
        if cin.split_half and k < len(cin.filters) - 1:
            hidden, direct = out[:, : W.shape[0] // 2], out[:, W.shape[0] // 2 :]
        else:
            hidden, direct = out, out
        pooled.append(direct.sum(-1))
    return torch.cat(pooled, -1)


def naive_cin_fast(cin: CIN, x0: torch.Tensor) -> torch.Tensor:
    """The CIN by per-layer einsum (the loop reference above is too slow for 256 maps)."""
    F = x0.shape[1]
    hidden, pooled = x0, []
    for k, layer in enumerate(cin.filters):
        W = layer.weight.view(layer.out_features, hidden.shape[1], F)
        out = torch.einsum("him,bie,bme->bhe", W, hidden, x0)
        if cin.split_half and k < len(cin.filters) - 1:
            hidden, direct = out.tensor_split(2, dim=1)
        else:
            hidden, direct = out, out
        pooled.append(direct.sum(-1))
    return torch.cat(pooled, -1)


@pytest.mark.parametrize("split_half", [True, False])
def test_cin_matches_loop_reference(split_half):
    torch.manual_seed(0)
    cin = CIN(3, (4, 2, 2), split_half=split_half).double()
    x0 = torch.randn(2, 3, 2, dtype=torch.float64)
    out = cin(x0)
    assert out.shape == (2, cin.out_dim)
    assert cin.out_dim == (2 + 1 + 2 if split_half else 4 + 2 + 2)
    torch.testing.assert_close(out, naive_cin(cin, x0))
    torch.testing.assert_close(naive_cin_fast(cin, x0), naive_cin(cin, x0))  # the models' reference


def test_cin_first_layer_einsum():
    # one layer = a learned combination of the F^2 Hadamard products, pooled over E
    torch.manual_seed(1)
    cin = CIN(4, (3,)).double()
    x0 = torch.randn(5, 4, 6, dtype=torch.float64)
    W = cin.filters[0].weight.view(3, 4, 4)
    torch.testing.assert_close(cin(x0), torch.einsum("him,bie,bme->bh", W, x0, x0))


def test_cin_rejects_odd_split_layers():
    with pytest.raises(ValueError, match="even"):
        CIN(4, (255, 256))


def test_linear_term_sums_weights_plus_bias():
    term = LinearTerm()
    with torch.no_grad():
        term.bias.fill_(0.5)
    torch.testing.assert_close(term(torch.tensor([[1.0, -2.0, 4.0], [0.0, 0.0, 0.0]])), torch.tensor([3.5, 0.5]))


# ------------------------------------------------------------------------------------------------ models
# References read the tables row by row with Python loops: field f of sample b is table[id] for a categorical
# field and the sum (or mean) of table[id] over the sample's valid positions for a sequence field.

BATCH = make_batch(seed=11)
CODE_FIELDS = ("item", "cate", "hist_item", "hist_cate")  # the official code's FM-family fields


def ref_field(table: torch.Tensor, batch: Batch, field: str, pool: str = "sum",
              schema: Schema = SCHEMA) -> torch.Tensor:
    """[B, W] from an [n, W] table, one sample at a time."""
    ids = batch[field]
    rows = []
    for b in range(batch.size):
        if ids.dim() == 1:
            rows.append(table[ids[b]])
            continue
        n = int(batch.lengths[schema.spec.group_of(field)][b])
        total = table[ids[b, :n]].sum(0) if n else torch.zeros(table.shape[1])
        rows.append(total / max(n, 1) if pool == "mean" else total)
    return torch.stack(rows)


def ref_linear(linear, batch: Batch, fields: tuple[str, ...], pool: str = "sum",
               schema: Schema = SCHEMA) -> torch.Tensor:
    """LR term from a LinearFeatures' tables: w_0 + sum_f w_f."""
    tables = linear.weights.tables
    return linear.term.bias + sum(
        ref_field(tables[schema.spec.field(f).table].weight, batch, f, pool, schema)[:, 0] for f in fields
    )


def shared_ref_fields(model, batch: Batch, fields: tuple[str, ...] = CODE_FIELDS, pool: str = "sum",
                      schema: Schema = SCHEMA) -> torch.Tensor:
    tables = model.embed.tables
    return torch.stack([ref_field(tables[schema.spec.field(f).table].weight, batch, f, pool, schema)
                        for f in fields], dim=1)


def dnn_twin(model) -> DNN:
    """A plain DNN holding `model`'s DNN part (embeddings + head)."""
    dnn = DNN(SCHEMA, DNNConfig())
    missing, _ = dnn.load_state_dict(model.state_dict(), strict=False)
    assert not missing
    return dnn.eval()


def build(name: str, schema: Schema = SCHEMA, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, schema, config or None).eval()


@torch.no_grad()
@pytest.mark.parametrize("pool", ["mean", "sum"])
def test_fm_is_lr_plus_pairwise_over_five_fields(pool):
    model = build("fm", hist_pool=pool)
    fields = ("user", "item", "cate", "hist_item", "hist_cate")
    ref = ref_linear(model.linear, BATCH, fields, pool) + naive_fm(shared_ref_fields(model, BATCH, fields, pool))
    torch.testing.assert_close(model(BATCH).logits, ref)


@torch.no_grad()
@pytest.mark.parametrize("schema", [PROFILE, SEQ_DENSE], ids=["profile", "seq_dense"])
def test_fm_takes_every_sparse_field_of_the_spec(schema):
    model = build("fm", schema)
    batch = make_batch(seed=11, schema=schema)
    fields = tuple(f.name for f in schema.spec.sparse)  # as a set: FM is symmetric in its fields
    assert set(model.fields) == set(fields)
    ref = ref_linear(model.linear, batch, fields, "mean", schema)
    ref = ref + naive_fm(shared_ref_fields(model, batch, fields, "mean", schema))
    torch.testing.assert_close(model(batch).logits, ref)


def ref_ffm(model, batch: Batch, order: tuple[str, ...], linear_fields: tuple[str, ...],
            schema: Schema = SCHEMA) -> torch.Tensor:
    tables = model.field_aware.tables
    F = len(order)
    v = torch.stack([ref_field(tables[schema.spec.field(f).table].weight, batch, f, schema=schema) for f in order], 1)
    v = v.unflatten(-1, (F - 1, -1))  # [B, F, F-1, E]
    pairs = sum(
        (v[:, i, ffm_slot(i, j)] * v[:, j, ffm_slot(j, i)]).sum(-1) for i, j in itertools.combinations(range(F), 2)
    )
    return ref_linear(model.linear, batch, linear_fields, schema=schema) + pairs


@torch.no_grad()
def test_ffm_is_lr_plus_field_aware_pairs():
    model = build("ffm")
    order = ("item", "hist_item", "cate", "hist_cate")  # the code's field order
    torch.testing.assert_close(model(BATCH).logits, ref_ffm(model, BATCH, order, CODE_FIELDS))
    # without attention: every categorical field then every sequence field, in spec order
    fields = tuple(f.name for f in PROFILE.spec.sparse)
    model = build("ffm", PROFILE)
    batch = make_batch(seed=11, schema=PROFILE)
    torch.testing.assert_close(model(batch).logits, ref_ffm(model, batch, fields, fields, PROFILE))


@torch.no_grad()
def test_deepffm_is_dnn_plus_ffm():
    model = build("deepffm")
    ffm = create_model("ffm", SCHEMA).eval()
    ffm.load_state_dict({k.removeprefix("ffm."): v for k, v in model.state_dict().items() if k.startswith("ffm.")})
    torch.testing.assert_close(model(BATCH).logits, dnn_twin(model)(BATCH).logits + ffm(BATCH).logits)


@torch.no_grad()
@pytest.mark.parametrize("combine", ["dense", "sum"])
def test_deepfm_combines_dnn_fm_lr(combine):
    model = build("deepfm", combine=combine)
    dnn = dnn_twin(model)(BATCH).logits
    fm = naive_fm(shared_ref_fields(model, BATCH))  # FM on the DNN's own embeddings
    lr = ref_linear(model.linear, BATCH, CODE_FIELDS)
    if combine == "dense":  # the code's Linear(3 -> 1) over [dnn, fm, lr]
        w, b = model.combine.weight[0], model.combine.bias
        ref = w[0] * dnn + w[1] * fm + w[2] * lr + b
    else:  # the paper's sigmoid(y_DNN + y_FM)
        assert model.combine is None
        ref = dnn + fm + lr
    torch.testing.assert_close(model(BATCH).logits, ref)


@torch.no_grad()
@pytest.mark.parametrize("use_linear,pool", [(True, "mean"), (False, "mean"), (False, "sum")])
def test_xdeepfm_is_dnn_plus_cin_logit(use_linear, pool):
    model = build("xdeepfm", use_linear=use_linear, hist_pool=pool)
    cin = model.cin_out(naive_cin_fast(model.cin, shared_ref_fields(model, BATCH, pool=pool))).squeeze(-1)
    ref = dnn_twin(model)(BATCH).logits + cin
    if use_linear:
        ref = ref + ref_linear(model.linear, BATCH, CODE_FIELDS)
    else:
        assert not any(k.startswith("linear.") for k in model.state_dict())  # the code drops the LR term
    torch.testing.assert_close(model(BATCH).logits, ref)
    assert model.cin.out_dim == 128 + 128 + 256


@torch.no_grad()
@pytest.mark.parametrize("wide_cross", [True, False])
def test_wide_deep_is_linear_over_ids_and_crosses_plus_dnn(wide_cross):
    model = build("wide-deep", wide_cross=wide_cross)
    fields = ("user", "item", "cate", "hist_item", "hist_cate")
    ref = dnn_twin(model)(BATCH).logits + ref_linear(model.wide, BATCH, fields)
    assert (model.crosses is not None) == wide_cross
    if wide_cross:  # one scalar weight per (target, history element) pair id, summed over the valid positions
        lengths = BATCH.lengths["hist"]
        for pair in model.crosses.pairs:
            w, ids = pair.table.weight[:, 0], pair.ids(BATCH)
            ref = ref + torch.stack([w[ids[b, : lengths[b]]].sum() for b in range(BATCH.size)])
    torch.testing.assert_close(model(BATCH).logits, ref)
