"""Layer tests: hand-computed co-action, the fast unit against its reference forward, masking and padding
properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from canctr.data.batch import lengths_to_mask
from canctr.layers import (
    AUGRU,
    MLP,
    Affine,
    AuxiliaryLoss,
    CoAction,
    CoActionConfig,
    CrossNetwork,
    Dice,
    InterestExtractor,
    ProductLayer,
    TargetAttention,
    embedding_table,
    masked_sum,
)

# ---------------------------------------------------------------------------------------------- co-action

# B=1, L=3 (position 2 is padding), layers ((2, 2), (2, 1)), orders 2, no bias.
# W1 = [[1, 0], [2, -1]] and W2 = [[1], [3]], flattened row-major into the induction vector.
HAND_INDUCTION = [[1.0, 0.0, 2.0, -1.0, 1.0, 3.0]]
HAND_FEED = [[[1.0, 2.0], [0.5, -1.0], [100.0, 100.0]]]
HAND_MASK = [[True, True, False]]


def _hand_unit(**options) -> CoAction:
    return CoAction(CoActionConfig(**{"layers": ((2, 2), (2, 1)), "orders": 2, **options}))


def _run_hand(unit: CoAction) -> list[float]:
    """The fast forward's output, checked equal to the reference forward's."""
    args = torch.tensor(HAND_INDUCTION), torch.tensor(HAND_FEED), torch.tensor(HAND_MASK)
    out = unit(*args)
    torch.testing.assert_close(out, unit.reference_forward(*args))
    return out[0].tolist()


def test_coaction_hand_computed_linear():
    # x1 = [1, 2]:    order 1: x1 W1 = [5, -2],   W2 -> 5 - 6 = -1;   order 2: [1, 4] W1 = [9, -4],  W2 -> -3
    # x2 = [.5, -1]:  order 1: [-1.5, 1],         W2 -> 1.5;          order 2: [.25, 1] W1 = [2.25, -1], -> -0.75
    # masked sum per order of [h1, h2]: order 1 [3.5, -1, 0.5], order 2 [11.25, -5, -3.75]
    unit = _hand_unit(activation="none")
    assert unit.induction_dim == 6 and unit.feed_dim == 2 and unit.out_dim == 6
    assert _run_hand(unit) == pytest.approx([3.5, -1.0, 0.5, 11.25, -5.0, -3.75])
    assert _run_hand(_hand_unit(activation="none", order_combine="sum")) == pytest.approx([14.75, -6.0, -3.25])
    assert _run_hand(_hand_unit(activation="none", layer_outputs="last")) == pytest.approx([0.5, -3.75])


def test_coaction_hand_computed_tanh():
    t = math.tanh
    # first-layer pre-activations per (position, order), from the linear case above
    pre = {(0, 1): (5.0, -2.0), (0, 2): (9.0, -4.0), (1, 1): (-1.5, 1.0), (1, 2): (2.25, -1.0)}
    expected = []
    for order in (1, 2):
        h1 = [[t(a), t(b)] for (pos, o), (a, b) in pre.items() if o == order]
        h2 = [a * 1.0 + b * 3.0 for a, b in h1]  # last layer stays linear (code)
        expected += [h1[0][0] + h1[1][0], h1[0][1] + h1[1][1], h2[0] + h2[1]]
    assert _run_hand(_hand_unit()) == pytest.approx(expected, rel=1e-6)
    # activate_last: tanh on the last layer too (paper)
    expected_last = list(expected)
    for k, order in ((2, 1), (5, 2)):
        h1 = [[t(a), t(b)] for (pos, o), (a, b) in pre.items() if o == order]
        expected_last[k] = sum(t(a + 3.0 * b) for a, b in h1)
    assert _run_hand(_hand_unit(activate_last=True)) == pytest.approx(expected_last, rel=1e-6)


def test_coaction_hand_computed_bias_and_order_independence():
    # bias: induction = [W1 (4), b1 (2), W2 (2), b2 (1)]; b1 = [1, -1], b2 = [10]
    unit = _hand_unit(activation="none", bias=True, orders=1, layer_outputs="last")
    ind = torch.tensor([[1.0, 0.0, 2.0, -1.0, 1.0, -1.0, 1.0, 3.0, 10.0]])
    out = unit(ind, torch.tensor(HAND_FEED), torch.tensor(HAND_MASK))
    torch.testing.assert_close(out, unit.reference_forward(ind, torch.tensor(HAND_FEED), torch.tensor(HAND_MASK)))
    # x1: [5+1, -2-1] = [6, -3] -> 6 - 9 + 10 = 7;  x2: [-0.5, 0] -> -0.5 + 10 = 9.5
    assert out[0].tolist() == pytest.approx([16.5])
    # order independence: order 2 uses the second block, here the first block scaled by 2 (all linear)
    unit = _hand_unit(activation="none", order_independent=True)
    assert unit.induction_dim == 12
    block = torch.tensor(HAND_INDUCTION)
    args = torch.cat([block, 2 * block], dim=1), torch.tensor(HAND_FEED), torch.tensor(HAND_MASK)
    out = unit(*args)
    torch.testing.assert_close(out, unit.reference_forward(*args))
    # layer 1 is linear in W1 (x2), layer 2 in W1 and W2 (x4)
    assert out[0].tolist() == pytest.approx([3.5, -1.0, 0.5, 22.5, -10.0, -15.0])


# (induction positions, feed positions): the code's target -> history, the swapped history -> target, both
# per position, and two single-valued features (L = 1: the paper's profile pairs); 0 means one vector per
# sample given as [B, P]
LAYOUTS = {"target": (0, 5), "swapped": (5, 1), "per_position": (5, 5), "single": (0, 1)}


@pytest.mark.parametrize("layout", ["target", "swapped", "per_position", "single"])
@pytest.mark.parametrize(
    "activation,bias,activate_last,order_combine,order_independent,layer_outputs",
    list(itertools.product(["tanh", "none"], [False, True], [False, True], ["concat", "sum"], [False, True],
                           ["concat", "last"])),
)
def test_coaction_fast_path_equals_the_reference(
    activation, bias, activate_last, order_combine, order_independent, layer_outputs, layout
):
    # with one micro-MLP per sample the fast path pools before its linear tail (after layer 1 with tanh, on the
    # input powers with no activation, after the last layer with activate_last) and stacks orders and positions
    # into one bmm; the reference runs the paper's equations per position. Outputs and gradients, float64.
    cfg = CoActionConfig(
        layers=((4, 3), (3, 2)),
        activation=activation,
        bias=bias,
        activate_last=activate_last,
        orders=3,
        order_combine=order_combine,
        order_independent=order_independent,
        layer_outputs=layer_outputs,
    )
    unit = CoAction(cfg)
    g = torch.Generator().manual_seed(0)
    B, L = 3, (1 if layout == "single" else 5)
    ind_positions, feed_positions = LAYOUTS[layout]
    ind_shape = (B, ind_positions, unit.induction_dim) if ind_positions else (B, unit.induction_dim)
    induction = torch.randn(*ind_shape, generator=g, dtype=torch.float64, requires_grad=True)
    feed = torch.randn(B, feed_positions, unit.feed_dim, generator=g, dtype=torch.float64, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([5, 2, 0]).clamp(max=L), L)
    out, ref = unit(induction, feed, mask), unit.reference_forward(induction, feed, mask)
    assert out.shape == ref.shape == (B, unit.out_dim)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * w).sum(), (induction, feed))
    ref_grads = torch.autograd.grad((ref * w).sum(), (induction, feed))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_coaction_swapped_fm_special_case():
    # one linear 1 x D layer is FM's inner product (paper 2.2), symmetric in its two vectors: inducing from
    # the history and feeding the target equals the usual direction with the two roles' vectors exchanged
    unit = CoAction(CoActionConfig(layers=((4, 1),), orders=1, activation="none"))
    target, hist = torch.randn(2, 4), torch.randn(2, 3, 4)
    mask = lengths_to_mask(torch.tensor([3, 1]), 3)
    expected = masked_sum((hist * target[:, None]).sum(-1, keepdim=True), mask)
    torch.testing.assert_close(unit(target, hist, mask), expected)
    torch.testing.assert_close(unit(hist, target[:, None], mask), expected)


@pytest.mark.parametrize("bias", [False, True])
def test_coaction_target_induction_ignores_padded_feed(bias):
    unit = CoAction(CoActionConfig(bias=bias))
    induction = torch.randn(2, unit.induction_dim)
    feed = torch.randn(2, 4, 16, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([4, 1]), 4)
    out = unit(induction, feed, mask)
    out.sum().backward()
    assert feed.grad[1, 1:].abs().sum() == 0 and feed.grad[1, :1].abs().sum() > 0
    noisy = torch.where(mask[..., None], feed, 1e3 * torch.randn(2, 4, 16))
    torch.testing.assert_close(unit(induction, noisy, mask), out)


def test_coaction_per_position_induction_ignores_padding():
    unit = CoAction()
    induction = torch.randn(2, 4, 160, requires_grad=True)
    feed = torch.randn(2, 1, 16, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([4, 2]), 4)
    out = unit(induction, feed, mask)
    out.sum().backward()
    assert induction.grad[1, 2:].abs().sum() == 0 and induction.grad[1, :2].abs().sum() > 0
    noisy = torch.where(mask[..., None], induction, 1e3 * torch.randn(2, 4, 160))
    torch.testing.assert_close(unit(noisy, feed, mask), out)
    for bad_ind, bad_feed in [
        (torch.zeros(2, 3, 160), feed),  # induction positions != mask width
        (torch.zeros(2, 160), torch.zeros(2, 1, 16)),  # neither side spans the history
        (induction, torch.zeros(2, 2, 16)),  # feed positions neither 1 nor L
    ]:
        with pytest.raises(ValueError):
            unit(bad_ind, bad_feed, mask)


def test_coaction_default_dims_and_validation():
    unit = CoAction()
    assert (unit.induction_dim, unit.feed_dim, unit.out_dim) == (160, 16, 36)
    assert CoAction(CoActionConfig(order_independent=True)).induction_dim == 480
    assert CoAction(CoActionConfig(order_combine="sum")).out_dim == 12
    assert CoAction(CoActionConfig(layer_outputs="last")).out_dim == 12
    assert CoAction(CoActionConfig(bias=True)).induction_dim == 172
    with pytest.raises(ValueError):
        CoActionConfig(layers=((16, 8), (4, 4)))
    with pytest.raises(ValueError):
        unit(torch.zeros(2, 159), torch.zeros(2, 3, 16), torch.ones(2, 3, dtype=torch.bool))


def test_coaction_gradients_reach_both_inputs():
    unit = CoAction()
    induction = torch.randn(2, 160, requires_grad=True)
    feed = torch.randn(2, 4, 16, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([4, 2]), 4)
    unit(induction, feed, mask).sum().backward()
    assert induction.grad.abs().sum() > 0
    assert feed.grad[1, 2:].abs().sum() == 0 and feed.grad[1, :2].abs().sum() > 0  # padding gets no gradient


# ------------------------------------------------------------------------------------- embedding / mlp


def test_embedding_init_and_masked_sum():
    table = embedding_table(1000, 18, "glorot")
    assert table.weight.abs().max() <= math.sqrt(6 / 1018)
    assert embedding_table(1000, 18, "normal").weight.std().item() == pytest.approx(0.01, rel=0.1)
    with pytest.raises(ValueError):
        embedding_table(10, 4, "uniform")
    x = torch.tensor([[[1.0], [2.0], [float("inf")]]])
    assert masked_sum(x, torch.tensor([[True, True, False]])).tolist() == [[3.0]]


def test_affine_starts_as_inference_batchnorm():
    x = torch.randn(5, 7)
    torch.testing.assert_close(Affine(7)(x), x / math.sqrt(1 + 1e-3))


def test_mlp_shapes_and_init():
    mlp = MLP(10, (6, 4), activation="prelu", norm="affine")
    assert mlp(torch.randn(3, 10)).shape == (3, 1)
    assert mlp(torch.randn(2, 5, 10)).shape == (2, 5, 1)
    linears = [m for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(6, 10), (4, 6), (1, 4)]
    assert all(m.bias.abs().sum() == 0 for m in linears)
    assert MLP(10, (6,), norm="batchnorm", activation="dice")(torch.randn(4, 10)).shape == (4, 1)


def test_mlp_hidden_batchnorm_normalises_each_hidden_layer_in_training():
    torch.manual_seed(0)
    mlp = MLP(10, (6, 4), activation="prelu", hidden_norm="batchnorm")
    kinds = [type(m).__name__ for m in mlp.net]
    assert kinds == ["Affine", "Linear", "BatchNorm", "PReLU", "Linear", "BatchNorm", "PReLU", "Linear"]
    x = torch.randn(64, 10) * 5 + 3
    pre = mlp.net[:3](x)  # affine -> Linear -> BN, before the first activation
    torch.testing.assert_close(pre.mean(0), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(pre.var(0, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    mlp.eval()  # running statistics: a sample's score does not depend on its batch-mates
    torch.testing.assert_close(mlp(x[:3]), mlp(x)[:3])
    assert len(MLP(10, (6, 4)).net) == 6  # default: no hidden normalisation, the official head
    with pytest.raises(ValueError, match="hidden_norm"):
        MLP(10, (6,), hidden_norm="layernorm")


def test_mlp_late_features_join_before_the_output_layer():
    torch.manual_seed(0)
    mlp = MLP(10, (6, 4), late_dim=3)
    x, late = torch.randn(5, 10), torch.randn(5, 3)
    hidden = mlp.net[:-1](x)  # [5, 4]
    out_layer = mlp.net[-1]
    assert out_layer.weight.shape == (1, 4 + 3)
    torch.testing.assert_close(mlp(x, late), hidden @ out_layer.weight[:, :4].T + late @ out_layer.weight[:, 4:].T)
    with pytest.raises(ValueError):
        mlp(x)
    with pytest.raises(ValueError):
        MLP(10, (6, 4))(x, late)


def test_dice_eval_is_independent_of_batch_mates():
    torch.manual_seed(0)
    dice = Dice(6)
    for _ in range(5):  # move the running statistics
        dice(torch.randn(16, 6) * 3 + 1)
    dice.eval()
    x = torch.randn(8, 6)
    alone = torch.cat([dice(x[i : i + 1]) for i in range(8)])
    torch.testing.assert_close(dice(x), alone)
    torch.testing.assert_close(dice(torch.cat([x, 100 * torch.randn(4, 6)]))[:8], alone)
    dice.train()
    assert torch.isfinite(dice(torch.randn(1, 6))).all()  # a single-row training batch does not raise


def test_gather_rows_equals_the_embedding_module_bit_for_bit():
    """gather_rows (index_select) gives nn.Embedding's rows and, with repeated ids, the very same table
    gradient (same accumulation order); a sparse table (lazy Adam) keeps its sparse gradient."""
    from canctr.layers.embedding import embedding_table, gather_rows

    torch.manual_seed(4)
    table = embedding_table(7, 3)
    ids = torch.randint(0, 7, (5, 40))
    g = torch.randn(5, 40, 3)
    out = gather_rows(table, ids)
    out.backward(g)
    fast = table.weight.grad.clone()
    table.weight.grad = None
    ref = table(ids)
    ref.backward(g)
    assert torch.equal(out, ref) and out.shape == (5, 40, 3)
    assert torch.equal(fast, table.weight.grad)
    table.weight.grad = None
    table.sparse = True
    gather_rows(table, ids).backward(g)
    assert table.weight.grad.is_sparse
    torch.testing.assert_close(table.weight.grad.to_dense(), fast)


# --------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("softmax", [True, False])
def test_target_attention_masking(softmax):
    torch.manual_seed(0)
    att = TargetAttention(4, softmax=softmax)
    B, L = 3, 5
    q, keys = torch.randn(B, 4), torch.randn(B, L, 4)
    mask = lengths_to_mask(torch.tensor([5, 2, 0]), L)
    weights, pooled = att(q, keys, mask)
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(pooled, (weights.unsqueeze(-1) * keys).sum(1))
    assert (pooled[2] == 0).all()  # empty history
    if softmax:
        torch.testing.assert_close(weights.sum(1), torch.tensor([1.0, 1.0, 0.0]))
    # keys at padded positions and extra padding change nothing
    keys2 = torch.cat([torch.where(mask.unsqueeze(-1), keys, 50 * torch.randn(B, L, 4)), torch.randn(B, 2, 4)], 1)
    mask2 = torch.cat([mask, torch.zeros(B, 2, dtype=torch.bool)], 1)
    weights2, pooled2 = att(q, keys2, mask2)
    torch.testing.assert_close(pooled2, pooled)
    torch.testing.assert_close(weights2[:, :L], weights)


@pytest.mark.parametrize("softmax", [True, False])
def test_target_attention_fast_scores_equal_the_reference(softmax):
    """The per-sample [D, h1] first layer (`_scores`, baddbmm) equals the activation unit on the concatenated
    [q, k, q - k, q * k] (`reference_scores`, the official code), forward and every gradient, in float64."""
    torch.manual_seed(1)
    att = TargetAttention(5, query_dim=7, hidden=(6, 3), softmax=softmax).double()
    query = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(4, 9, 5, dtype=torch.float64, requires_grad=True)
    outs = []
    for fn in (att._scores, att.reference_scores):
        att.zero_grad()
        query.grad = keys.grad = None
        s = fn(att.query_proj(query), keys)
        (s * torch.linspace(-1, 1, 9, dtype=torch.float64)).sum().backward()
        outs.append((s.detach(), query.grad.clone(), keys.grad.clone(),
                     [p.grad.clone() for p in att.parameters() if p.grad is not None]))
    (s1, gq1, gk1, gp1), (s2, gq2, gk2, gp2) = outs
    torch.testing.assert_close(s1, s2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gq1, gq2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gk1, gk2, rtol=1e-12, atol=1e-12)
    assert len(gp1) == len(gp2) > 0
    for a, b in zip(gp1, gp2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_target_attention_query_projection():
    att = TargetAttention(6, query_dim=10)
    weights, pooled = att(torch.randn(2, 10), torch.randn(2, 3, 6), torch.ones(2, 3, dtype=torch.bool))
    assert weights.shape == (2, 3) and pooled.shape == (2, 6)


# ------------------------------------------------------------------------------------------------ GRUs


def _pad_garbage(x: torch.Tensor, mask: torch.Tensor, extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace padded positions of x [B, L, ...] with noise and append `extra` noisy padded positions."""
    noise = 10 * torch.randn_like(x)
    m = mask.view(*mask.shape, *([1] * (x.dim() - 2)))
    x2 = torch.where(m, x, noise)
    x2 = torch.cat([x2, torch.randn(x.shape[0], extra, *x.shape[2:])], dim=1)
    return x2, torch.cat([mask, torch.zeros(mask.shape[0], extra, dtype=torch.bool)], dim=1)


def test_interest_extractor_ignores_padding():
    torch.manual_seed(0)
    gru = InterestExtractor(4, 6)
    x, mask = torch.randn(3, 5, 4), lengths_to_mask(torch.tensor([5, 3, 0]), 5)
    states = gru(x, mask)
    x2, mask2 = _pad_garbage(x, mask, 3)
    states2 = gru(x2, mask2)
    torch.testing.assert_close(states2[:, :5], states)
    assert (states2[~mask2] == 0).all()


@pytest.mark.parametrize("form", ["code", "paper"])
def test_augru_ignores_padding_and_handles_empty(form):
    torch.manual_seed(0)
    augru = AUGRU(4, 6, form=form)
    x, att = torch.randn(3, 5, 4), torch.rand(3, 5)
    mask = lengths_to_mask(torch.tensor([5, 2, 0]), 5)
    h = augru(x, att, mask)
    assert h.shape == (3, 6) and torch.isfinite(h).all()
    assert (h[2] == 0).all()  # empty history: the initial zero state
    x2, mask2 = _pad_garbage(x, mask, 3)
    att2, _ = _pad_garbage(att, mask, 3)
    torch.testing.assert_close(augru(x2, att2, mask2), h)
    # the final state equals the state after exactly hist_len steps
    torch.testing.assert_close(augru(x[1:2, :2], att[1:2, :2], mask[1:2, :2]), h[1:2])


@pytest.mark.parametrize("form", ["code", "paper"])
def test_augru_fused_scan_equals_step_by_step_autograd(form):
    """The hand-written backward (`_AUGRUScan`) against autograd through the reference loop, in float64."""
    torch.manual_seed(1)
    augru = AUGRU(5, 6, form=form).double()
    x = torch.randn(7, 9, 5, dtype=torch.float64, requires_grad=True)
    att = torch.rand(7, 9, dtype=torch.float64, requires_grad=True)
    mask = lengths_to_mask(torch.tensor([0, 1, 9, 4, 9, 2, 6]), 9)
    out, ref = augru(x, att, mask), augru.reference_forward(x, att, mask)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    w = torch.randn_like(out)
    inputs = [x, att, *augru.parameters()]
    for g, g_ref in zip(torch.autograd.grad((out * w).sum(), inputs), torch.autograd.grad((ref * w).sum(), inputs)):
        torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-13)
    assert torch.autograd.gradcheck(lambda x, att: augru(x, att, mask), (x, att))
    empty = augru(x[:, :0], att[:, :0], mask[:, :0])  # width 0: the zero state, still differentiable
    assert (empty == 0).all()
    empty.sum().backward()


def test_augru_zero_attention():
    torch.manual_seed(0)
    x, mask = torch.randn(2, 4, 3), lengths_to_mask(torch.tensor([4, 3]), 4)
    zero = torch.zeros(2, 4)
    # paper form: u~ = a * u = 0, the state never moves from zero
    assert (AUGRU(3, 5, form="paper")(x, zero, mask) == 0).all()
    # code form: u' = (1 - 0) * u, a plain TF-convention GRU step; check against a hand-written loop
    augru = AUGRU(3, 5, form="code")
    Wx, bx = augru.input_proj.weight, augru.input_proj.bias
    Wg, Wc = augru.gate_proj.weight, augru.cand_proj.weight
    for b, n in enumerate([4, 3]):
        h = torch.zeros(5)
        for t in range(n):
            xp = Wx @ x[b, t] + bx
            gates = torch.sigmoid(xp[:10] + Wg @ h)
            r, u = gates[:5], gates[5:]
            c = torch.tanh(xp[10:] + Wc @ (r * h))
            h = u * h + (1 - u) * c
        torch.testing.assert_close(augru(x, zero, mask)[b], h)


def test_auxiliary_loss_counts_valid_pairs_only():
    torch.manual_seed(0)
    aux = AuxiliaryLoss(6, 4)
    states, pos, neg = torch.randn(3, 5, 6), torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    mask = lengths_to_mask(torch.tensor([5, 2, 0]), 5)
    loss = aux(states, pos, neg, mask)
    # by hand: pairs (t, t+1) with t+1 < hist_len
    terms = []
    for b, n in enumerate([5, 2, 0]):
        for t in range(n - 1):
            p = aux.net(torch.cat([states[b, t], pos[b, t + 1]])).squeeze()
            q = aux.net(torch.cat([states[b, t], neg[b, t + 1]])).squeeze()
            terms.append(-torch.log(torch.sigmoid(p)) - torch.log(1 - torch.sigmoid(q)))
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    s2, m2 = _pad_garbage(states, mask, 2)
    p2, _ = _pad_garbage(pos, mask, 2)
    n2, _ = _pad_garbage(neg, mask, 2)
    torch.testing.assert_close(aux(s2, p2, n2, m2), loss)
    assert aux(states, pos, neg, lengths_to_mask(torch.tensor([1, 0, 1]), 5)) == 0


# ------------------------------------------------------------------------------- products and crosses


def test_product_layer_by_hand():
    # 3 fields, K = 2: pairs (0, 1), (0, 2), (1, 2)
    fields = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]]])
    inner = ProductLayer(3, 2, product="inner")
    assert inner.kernel is None and inner.out_dim == 3
    assert inner(fields)[0].tolist() == pytest.approx([1.0, 8.5, -2.5])
    outer = ProductLayer(3, 2, product="outer")
    with torch.no_grad():
        outer.kernel.copy_(torch.arange(12.0).reshape(2, 3, 2))  # W_n[m, k] = kernel[k, n, m]
    kernel = outer.kernel.detach()
    pairs = [(0, 1), (0, 2), (1, 2)]
    expected = [float(fields[0, i] @ kernel[:, n, :].T @ fields[0, j]) for n, (i, j) in enumerate(pairs)]
    assert outer(fields)[0].tolist() == pytest.approx(expected)
    both = ProductLayer(3, 2)
    with torch.no_grad():
        both.kernel.copy_(outer.kernel)
    assert both.out_dim == 6 and both(fields)[0].tolist() == pytest.approx([1.0, 8.5, -2.5, *expected])


def test_operation_aware_products_use_each_partners_slice():
    # fields [B, F, F-1, K]: field i's vector for partner j sits in slot j-1 if j > i, else j
    torch.manual_seed(0)
    fields = torch.randn(2, 4, 3, 5)
    layer = ProductLayer(4, 5, product="inner")
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    # for i < j: field i's slot for j is j - 1, field j's slot for i is i
    expected = torch.stack([(fields[:, i, j - 1] * fields[:, j, i]).sum(-1) for i, j in pairs], 1)
    torch.testing.assert_close(layer(fields), expected)
    with pytest.raises(ValueError):
        layer(torch.randn(2, 4, 2, 5))


def test_cross_network_by_hand_and_low_rank():
    torch.manual_seed(0)
    net = CrossNetwork(4, layers=2)
    x0 = torch.randn(3, 4)
    x = x0
    for layer in net.layers:
        x = x0 * (x @ layer.weight.T + layer.bias) + x  # eq. 1
    torch.testing.assert_close(net(x0), x)
    low = CrossNetwork(4, layers=1, rank=2)
    down, up = low.layers[0]
    full = CrossNetwork(4, layers=1)
    with torch.no_grad():  # W = U V^T
        full.layers[0].weight.copy_(up.weight @ down.weight)
        full.layers[0].bias.copy_(up.bias)
    torch.testing.assert_close(low(x0), full(x0))


# ------------------------------------------------------------------------------------------- docs/api.md


def test_api_doc_example_runs(tmp_path, monkeypatch):
    """The ```python blocks of docs/api.md run as written: the co-action unit inside a user's own module,
    and a model over a prepared `data/clicks` (made here from the generated click log)."""
    import importlib.util
    import re
    from pathlib import Path

    from canctr.data.table import prepare_table

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("make_clicks", root / "examples" / "make_clicks.py")
    make_clicks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_clicks)
    monkeypatch.chdir(tmp_path)
    make_clicks.write(make_clicks.make_clicks(2000, 0), tmp_path / "clicks.parquet", "parquet")
    prepare_table(root / "examples" / "specs" / "clicks.toml", [tmp_path / "clicks.parquet"], "data/clicks")

    text = (root / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2, "docs/api.md has no python example"
    namespace: dict = {}
    for code in blocks:
        exec(compile(code, "docs/api.md", "exec"), namespace)  # noqa: S102
    assert namespace["logits"].shape == (4,)
    assert namespace["out"].logits.shape == (128,) and "aux" in namespace["out"].aux_losses


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5)])
def test_prelu_kernel_equals_its_reference(shape):
    """The fused kernel path of PReLU (channels last, any rank) against max(0, x) + alpha * min(0, x):
    outputs and gradients (x has no exact zeros, where the two subgradients differ)."""
    from canctr.layers.mlp import PReLU

    torch.manual_seed(0)
    layer = PReLU(5).double()
    with torch.no_grad():
        layer.alpha.uniform_(-0.5, 0.5)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape, dtype=torch.float64)
    out = layer(x)
    gx, ga = torch.autograd.grad(out, (x, layer.alpha), g)
    ref = layer.reference_forward(x)
    rx, ra = torch.autograd.grad(ref, (x, layer.alpha), g)
    assert torch.equal(out, ref)
    assert torch.allclose(gx, rx, atol=1e-12) and torch.allclose(ga, ra, atol=1e-12)
