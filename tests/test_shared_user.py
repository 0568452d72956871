"""The user-shared scoring path (serving): a batch holding one user's fields once for all its candidates
(`Batch.user`) scores the same as the batch expanded to one row per candidate, to 1e-6, for every model that
shares its user side; the others refuse such a batch. Also the inference kernels it uses (numpy tanh, the
lean AUGRU loop, the split attention layer, the fused co-action first layer) against the reference paths."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from canctr.data.batch import Batch, BatchLoader, load_split, user_side
from canctr.data.schema import Schema
from canctr.layers import AUGRU, CoAction, CoActionConfig, TargetAttention
from canctr.layers.inference import tanh_
from canctr.models import create_model, make_config
from canctr.models.base import shares_user_side
from canctr.models.registry import list_models

TOL = 1e-6
SHARING = {"dnn", "din", "dien", "can-dnn", "can-din", "can-dien", "cartesian", "can-cartesian"}


@pytest.fixture(scope="module")
def schema_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Schema, Batch]:
    from synth import make_prepared

    out = tmp_path_factory.mktemp("shared") / "data"
    make_prepared(out, n_train=128, n_test=64, width=9)
    schema = Schema.load(out)
    loader = BatchLoader(load_split(out, "test", schema.spec), schema.spec, batch_size=64, shuffle=False)
    return schema, loader.batch(torch.arange(64))


def share(batch: Batch, schema: Schema, sources: list[int], user: torch.Tensor) -> Batch:
    """A user-shared batch: user u takes the user side of row sources[u]; row b is a candidate of user[b]."""
    fields, groups = user_side(schema.spec)
    src = torch.tensor(sources)
    width = {g: max(int(batch.lengths[g][src].max()), 1) for g in groups}  # padded to the users' longest
    group_of = {f.name: f.group for f in schema.spec.sequential}
    sparse = {k: (v[src][:, : width[group_of[k]]] if v.dim() == 2 else v[src]) if k in fields else v
              for k, v in batch.sparse.items()}
    return batch.replace(sparse=sparse,
                         lengths={k: v[src] if k in groups else v for k, v in batch.lengths.items()},
                         masks={k: v[src][:, : width[k]] if k in groups else v for k, v in batch.masks.items()},
                         user=user, user_fields=fields, user_groups=groups)


def layouts(n: int) -> dict[str, tuple[list[int], torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return {
        "one user": ([3], torch.zeros(n, dtype=torch.long)),
        # users interleaved, unequal candidate counts, one of them with an empty history (synthetic row 1 or 2)
        "three users": ([5, 1, 2], torch.randint(0, 3, (n,), generator=g)),
    }


def test_user_side_of_the_public_layout(schema_batch: tuple[Schema, Batch]) -> None:
    schema, _ = schema_batch
    assert user_side(schema.spec) == (frozenset({"user", "hist_item", "hist_cate"}), frozenset({"hist"}))


@pytest.mark.parametrize(
    "name,overrides",
    [(e.name, {}) for e in sorted(list_models(), key=lambda e: e.name)]
    + [(name, {"hist_pool": "sum"}) for name in ("din", "dien", "can-dien")],
)
def test_shared_batch_scores_as_its_expansion(name: str, overrides: dict, schema_batch: tuple[Schema, Batch]) -> None:
    schema, batch = schema_batch
    torch.manual_seed(0)
    model = create_model(name, schema, make_config(name, overrides)).eval()
    assert shares_user_side(model) == (name in SHARING)
    for label, (sources, user) in layouts(batch.size).items():
        shared = share(batch, schema, sources, user)
        flat = shared.expanded()
        assert flat.user is None and flat.sparse["hist_item"].shape[0] == batch.size
        if name not in SHARING:
            with pytest.raises(ValueError, match="one row per candidate"):
                model(shared)
            continue
        with torch.inference_mode():
            got = torch.sigmoid(model(shared).logits)
            per_row = torch.sigmoid(model(flat).logits)
        with torch.no_grad():
            reference = torch.sigmoid(model(flat).logits)
        reference_grad = torch.sigmoid(model(flat).logits).detach()  # grad mode: torch's tanh, the autograd AUGRU
        assert got.shape == (batch.size,)
        for other in (per_row, reference, reference_grad):
            assert float((got - other).abs().max()) <= TOL, (label, float((got - other).abs().max()))


CONFIGS = {
    "code default": CoActionConfig(),
    "biases": CoActionConfig(bias=True),
    "tanh after the last layer": CoActionConfig(activate_last=True),
    "three layers": CoActionConfig(layers=((16, 8), (8, 8), (8, 4))),
    "order independence": CoActionConfig(order_independent=True),
    "paper (sum orders, last layer)": CoActionConfig(order_combine="sum", layer_outputs="last"),
    "no activation": CoActionConfig(activation="none"),
    "one layer": CoActionConfig(layers=((16, 4),)),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_coaction_shared_forward_equals_per_candidate(config: CoActionConfig) -> None:
    unit = CoAction(config)
    g = torch.Generator().manual_seed(1)
    U, L, B = 3, 7, 10
    feed = torch.randn(U, L, unit.feed_dim, generator=g)
    mask = torch.arange(L)[None, :] < torch.tensor([[7], [3], [0]])
    induction = torch.randn(B, unit.induction_dim, generator=g) * 0.5
    user = torch.tensor([2, 0, 0, 1, 0, 2, 1, 1, 1, 0])  # unordered, unequal counts
    with torch.no_grad():
        got = unit.shared_forward(induction, feed, mask, user)
        want = unit.reference_forward(induction, feed[user], mask[user])
    assert got.shape == (B, unit.out_dim)
    # raw features of magnitude ~1-10 summed in another order (one matmul per user): float32 rounding, 1e-5; the
    # scores the 1e-6 bound is for are compared in test_shared_batch_scores_as_its_expansion
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shared_forward expects"):
        unit.shared_forward(induction, feed[:, :, :3], mask, user)


def test_attention_shared_rows_equal_the_full_input() -> None:
    att = TargetAttention(6, query_dim=10, softmax=True)
    g = torch.Generator().manual_seed(2)
    keys, query = torch.randn(2, 5, 6, generator=g), torch.randn(4, 10, generator=g)
    rows = torch.tensor([1, 0, 1, 1])
    mask = (torch.arange(5)[None, :] < torch.tensor([[5], [2]]))[rows]
    w, pooled = att(query, keys, mask, rows=rows)
    w_ref, pooled_ref = att(query, keys[rows], mask)
    torch.testing.assert_close(w, w_ref, atol=TOL, rtol=0)
    torch.testing.assert_close(pooled, pooled_ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("form", ["code", "paper"])
def test_augru_inference_loop_and_rows_equal_the_reference(form: str) -> None:
    gru = AUGRU(6, 5, form=form)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 6, generator=g)
    rows = torch.tensor([0, 1, 1, 0])
    attention = torch.rand(4, 6, generator=g)
    for lengths in ([6, 6, 6, 6], [6, 0, 0, 3]):  # all full (masking skipped), then ragged with empty rows
        mask = torch.arange(6)[None, :] < torch.tensor(lengths)[:, None]
        want = gru.reference_forward(x[rows], attention, mask)
        with torch.no_grad():
            got = gru(x, attention, mask, rows=rows)
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)


def test_numpy_tanh_matches_torch_and_leaves_autograd_alone() -> None:
    x = torch.linspace(-12, 12, 20001)
    want = torch.tanh(x.double())
    assert float((tanh_(x.clone()) - want).abs().max()) <= 1e-7
    y = x.clone().requires_grad_()
    out = tanh_(y)
    assert out is not y and out.grad_fn is not None  # a tensor needing a gradient keeps torch.tanh
    z = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(tanh_(z.clone()), torch.tanh(z))


def test_scorer_shares_the_user_side_and_refuses_nothing(schema_batch: tuple[Schema, Batch], tmp_path: Path) -> None:
    """`Scorer.probabilities` gives a user-shared batch to a sharing model as it is and expands it for the others,
    with the same scores either way."""
    from canctr.serve.scorer import Limits, Scorer
    from canctr.serve.vocab import RawIdMapper

    schema, batch = schema_batch
    tables = {t: {"ids": ["<pad/unk>", *(f"{t}-{i}" for i in range(1, n))]} for t, n in schema.vocab.items()}
    mapper = RawIdMapper(schema.spec, tables, {})
    sources, user = layouts(batch.size)["three users"]
    shared = share(batch, schema, sources, user)
    for name in ("can-dien", "deepfm"):
        torch.manual_seed(0)
        model = create_model(name, schema, make_config(name, {})).eval()
        scorer = Scorer(engine="torch", spec=schema.spec, mapper=mapper, info={}, limits=Limits(), model=model)
        assert scorer.shared == (name == "can-dien")
        got = torch.from_numpy(scorer.probabilities(shared))
        want = torch.from_numpy(scorer.probabilities(dataclasses.replace(shared).expanded()))
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("form", ["code", "paper"])
def test_augru_cpu_loop_equals_the_step_reference(form: str) -> None:
    """The allocation-free AUGRU loop (numpy's tanh as the sigmoid, halves folded in) against one `_augru_step` a
    step: full rows, ragged rows with an empty one, rows all shorter than the width, and a projection broadcast
    from one user (stride 0), to 1e-6."""
    from canctr.layers.sequence import _augru_infer_cpu, _augru_infer_reference

    g = torch.Generator().manual_seed(5)
    B, L, H = 7, 9, 4
    w_gates, w_cand = torch.randn(2 * H, H, generator=g), torch.randn(H, H, generator=g)
    attention = torch.rand(B, L, generator=g)
    full = torch.randn(B, L, 3 * H, generator=g)
    one = torch.randn(1, L, 3 * H, generator=g).expand(B, -1, -1)
    for x in (full, one):
        x_gates, x_cand = x.split([2 * H, H], dim=-1)
        for lengths in ([L] * B, [9, 0, 3, 9, 1, 5, 9], [6] * B, [4, 2, 6, 1, 6, 3, 0]):
            mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]
            args = (x_gates, x_cand, attention, mask, w_gates, w_cand, form == "paper")
            torch.testing.assert_close(_augru_infer_cpu(*args), _augru_infer_reference(*args), atol=TOL, rtol=0)


def test_dien_scores_with_the_lean_loop_equal_the_reference(schema_batch: tuple[Schema, Batch],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """can-dien's scores of a user-shared batch with the lean AUGRU loop and with the step-by-step reference
    (the compiled kernels off, so that the lean loop runs)."""
    from canctr.layers import sequence

    monkeypatch.setenv("CANCTR_COMPILED", "0")
    schema, batch = schema_batch
    torch.manual_seed(0)
    model = create_model("can-dien", schema, make_config("can-dien", {})).eval()
    for sources, user in layouts(batch.size).values():
        shared = share(batch, schema, sources, user)
        with torch.inference_mode():
            fast = torch.sigmoid(model(shared).logits)
            with monkeypatch.context() as m:
                m.setattr(sequence, "_augru_infer_cpu", sequence._augru_infer_reference)
                ref = torch.sigmoid(model(shared).logits)
        torch.testing.assert_close(fast, ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("form", ["code", "paper"])
def test_export_forms_equal_the_eager_recurrences(form: str) -> None:
    """What the ONNX export traces, run eagerly: the extractor's opaque `gru_states` op against nn.GRU, the
    AUGRU's Scan (few nodes a step) against its reference, ragged rows included."""
    from canctr.layers.sequence import _augru_scan_export, gru_states

    g = torch.Generator().manual_seed(6)
    torch.manual_seed(6)
    extractor = torch.nn.GRU(5, 4, batch_first=True)
    x = torch.randn(3, 7, 5, generator=g)
    with torch.no_grad():
        got = gru_states(x, extractor.weight_ih_l0, extractor.weight_hh_l0, extractor.bias_ih_l0, extractor.bias_hh_l0)
        torch.testing.assert_close(got, extractor(x)[0], atol=TOL, rtol=0)
    gru = AUGRU(6, 5, form=form)
    x = torch.randn(4, 7, 6, generator=g)
    attention = torch.rand(4, 7, generator=g)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 0, 3, 5])[:, None]
    H = gru.hidden_dim
    with torch.no_grad():
        x_gates, x_cand = gru.input_proj(x).split([2 * H, H], dim=-1)
        got = _augru_scan_export(x_gates, x_cand, attention, mask, gru.gate_proj.weight, gru.cand_proj.weight,
                                 form == "paper")
        torch.testing.assert_close(got, gru.reference_forward(x, attention, mask), atol=TOL, rtol=0)


@pytest.mark.parametrize("model_name", ["dien", "can-dien"])
def test_dien_scores_with_the_compiled_recurrences_equal_the_python_loops(
        schema_batch: tuple[Schema, Batch], monkeypatch: pytest.MonkeyPatch, model_name: str) -> None:
    """The compiled extractor GRU and AUGRU (canctr/csrc/recurrent.cpp) against the Python loops
    (CANCTR_COMPILED=0), in a whole model: the plain batch and user-shared batches, to 1e-6."""
    from canctr.layers import compiled

    if compiled.ops() is None:
        pytest.skip("the compiled CPU kernels cannot be built here (no C++ compiler or ninja)")
    schema, batch = schema_batch
    torch.manual_seed(0)
    model = create_model(model_name, schema, make_config(model_name, {})).eval()
    batches = [batch] + [share(batch, schema, *layout) for layout in layouts(batch.size).values()]
    for b in batches:
        with torch.inference_mode():
            fast = torch.sigmoid(model(b).logits)
            monkeypatch.setenv("CANCTR_COMPILED", "0")
            slow = torch.sigmoid(model(b).logits)
            monkeypatch.delenv("CANCTR_COMPILED")
        torch.testing.assert_close(fast, slow, atol=TOL, rtol=0)
