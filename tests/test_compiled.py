"""The compiled CPU kernels (canctr/csrc/recurrent.cpp, DIEN's recurrences for inference) against their Python
references: every row layout the models produce (full, ragged with empty rows, a projection broadcast from one
user), both AUGRU forms, enough rows to be split over threads; and the switch that turns them off."""

from __future__ import annotations

import pytest
import torch

from canctr.layers import compiled
from canctr.layers.sequence import InterestExtractor, _augru_infer, _augru_infer_reference

TOL = 1e-6


@pytest.fixture(scope="module")
def kernels():  # noqa: ANN201
    ops = compiled.ops()
    if ops is None:
        pytest.skip("the compiled CPU kernels cannot be built here (no C++ compiler or ninja)")
    return ops


def _lengths(B: int, L: int, g: torch.Generator) -> list[torch.Tensor]:
    ragged = torch.randint(0, L + 1, (B,), generator=g)
    ragged[B // 2] = 0  # an empty history
    return [torch.full((B,), L), ragged, torch.full((B,), L - 3), torch.zeros(B, dtype=torch.long)]


@pytest.mark.parametrize("form", ["code", "paper"])
@pytest.mark.parametrize("B", [1, 5, 37])  # 37 rows: split over the threads (16 rows a chunk at least)
def test_augru_kernel_equals_the_reference(kernels, form: str, B: int) -> None:  # noqa: ANN001
    g = torch.Generator().manual_seed(B)
    L, H = 11, 6
    w_gates, w_cand = 0.5 * torch.randn(2 * H, H, generator=g), 0.5 * torch.randn(H, H, generator=g)
    attention = torch.rand(B, L, generator=g)
    full = torch.randn(B, L, 3 * H, generator=g)
    one = torch.randn(1, L, 3 * H, generator=g).expand(B, -1, -1)  # one user's projection, stride 0
    for x in (full, one, full.transpose(0, 1).contiguous().transpose(0, 1)):  # the last one time-major
        x_gates, x_cand = x.split([2 * H, H], dim=-1)
        for lengths in _lengths(B, L, g):
            mask = torch.arange(L)[None, :] < lengths[:, None]
            args = (x_gates, x_cand, attention, mask, w_gates, w_cand, form == "paper")
            with torch.no_grad():
                got = _augru_infer(*args)
            torch.testing.assert_close(got, _augru_infer_reference(*args), atol=TOL, rtol=0)
    # the op itself, so that a fallback cannot pass for it
    keep = attention if form == "paper" else 1.0 - attention
    x_gates, x_cand = full.split([2 * H, H], dim=-1)
    mask = torch.ones(B, L, dtype=torch.bool)
    want = _augru_infer_reference(x_gates, x_cand, attention, mask, w_gates, w_cand, form == "paper")
    got = kernels.augru_infer(x_gates, x_cand, keep, None, w_gates.t(), w_cand.t(), form == "paper", L)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)


@pytest.mark.parametrize("B", [0, 1, 5, 37])
def test_gru_kernel_equals_torch_gru(kernels, B: int) -> None:  # noqa: ANN001
    """The extractor without gradient (compiled) against the same module with gradient (nn.GRU), padding zeroed."""
    g = torch.Generator().manual_seed(B)
    torch.manual_seed(B)
    L, D, H = 9, 5, 7
    extractor = InterestExtractor(D, H)
    with torch.no_grad():  # non-trivial biases (the initial candidate bias is 0)
        for p in extractor.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    x = torch.randn(B, L, D, generator=g)
    for lengths in (_lengths(B, L, g) if B else [torch.zeros(0, dtype=torch.long)]):
        mask = torch.arange(L)[None, :] < lengths[:, None]
        want = extractor(x, mask).detach()
        with torch.no_grad():
            got = extractor(x, mask)
        torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    proj = torch.nn.functional.linear(x, extractor.gru.weight_ih_l0, extractor.gru.bias_ih_l0)
    got = kernels.gru_infer(proj, extractor.gru.weight_hh_l0.t(), extractor.gru.bias_hh_l0, L)
    torch.testing.assert_close(got, extractor.gru(x)[0].detach(), atol=TOL, rtol=0)


def test_kernels_reject_what_they_do_not_run(kernels) -> None:  # noqa: ANN001
    x = torch.randn(2, 3, 12, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float32 CPU tensor"):
        kernels.gru_infer(x, torch.randn(4, 12), torch.randn(12), 3)
    with pytest.raises(RuntimeError, match="steps 4 > sequence length 3"):
        kernels.gru_infer(x.float(), torch.randn(4, 12), torch.randn(12), 4)
    with pytest.raises(RuntimeError, match="hidden size"):
        kernels.augru_infer(torch.randn(2, 3, 8), torch.randn(2, 3, 4), torch.rand(2, 3), None, torch.randn(5, 8),
                            torch.randn(5, 5), False, 3)


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANCTR_COMPILED", "0")
    assert compiled.ops() is None and not compiled.enabled()
    monkeypatch.setenv("CANCTR_COMPILED", "1")
    assert compiled.enabled()


def _grads(out: torch.Tensor, inputs: list[torch.Tensor], seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad(out, inputs, g)


@pytest.mark.parametrize("form", ["code", "paper"])
@pytest.mark.parametrize("B", [1, 37])
def test_augru_training_kernels_equal_the_hand_written_scan(kernels, monkeypatch: pytest.MonkeyPatch, form: str,
                                                            B: int) -> None:  # noqa: ANN001
    """Forward and every gradient (inputs, attention, weights) of the compiled training scan against the Python
    `_AUGRUScan` (CANCTR_COMPILED=0), ragged rows with an empty one; float32, sums over up to 37 x 11 terms."""
    from canctr.layers import AUGRU

    torch.manual_seed(B)
    g = torch.Generator().manual_seed(B)
    L, D, H = 11, 5, 6
    augru = AUGRU(D, H, form=form)
    x = torch.randn(B, L, D, generator=g, requires_grad=True)
    attention = torch.rand(B, L, generator=g, requires_grad=True)
    for lengths in _lengths(B, L, g):
        mask = torch.arange(L)[None, :] < lengths[:, None]
        inputs = [x, attention, *augru.parameters()]
        out = augru(x, attention, mask)
        got = (out, *_grads(out, inputs, 1))
        with monkeypatch.context() as m:
            m.setenv("CANCTR_COMPILED", "0")
            ref_out = augru(x, attention, mask)
            want = (ref_out, *_grads(ref_out, inputs, 1))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("B", [1, 37])
def test_gru_training_kernels_equal_torch_gru(kernels, monkeypatch: pytest.MonkeyPatch, B: int) -> None:  # noqa: ANN001
    """The extractor's states and gradients (inputs and all four GRU parameters) with the compiled training
    kernels against nn.GRU under autograd (CANCTR_COMPILED=0), padding masked as the model does."""
    torch.manual_seed(B)
    g = torch.Generator().manual_seed(B)
    L, D, H = 9, 5, 7
    extractor = InterestExtractor(D, H)
    with torch.no_grad():
        for p in extractor.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    x = torch.randn(B, L, D, generator=g, requires_grad=True)
    for lengths in _lengths(B, L, g):
        mask = torch.arange(L)[None, :] < lengths[:, None]
        inputs = [x, *extractor.parameters()]
        out = extractor(x, mask)
        got = (out, *_grads(out, inputs, 2))
        with monkeypatch.context() as m:
            m.setenv("CANCTR_COMPILED", "0")
            ref_out = extractor(x, mask)
            want = (ref_out, *_grads(ref_out, inputs, 2))
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_a_failed_build_falls_back_with_a_warning(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """A source that does not compile (or no compiler at all): one warning naming the cause, None, no exception."""
    bad = tmp_path / "broken.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(compiled, "_SOURCES", [bad])
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    with pytest.warns(UserWarning, match="compiled CPU kernels unavailable"):
        assert compiled._build() is None
