"""Optimizers: lazy Adam touches only the embedding rows a batch used; dense Adam moves every row."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from canctr.train.loop import TrainConfig
from canctr.train.optim import LazyAdam, make_optimizer


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.table(idx).sum(dim=1)).squeeze(-1)


def _step(model: nn.Module, opt: torch.optim.Optimizer, idx: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    model(idx).square().mean().backward()
    opt.step()


def _pair() -> tuple[Tiny, Tiny]:
    torch.manual_seed(0)
    a = Tiny()
    b = Tiny()
    b.load_state_dict(a.state_dict())
    return a, b


def test_lazy_adam_updates_only_touched_rows_and_matches_adam_on_them():
    dense_model, lazy_model = _pair()
    dense, lazy = make_optimizer(dense_model, 1e-2, "adam"), make_optimizer(lazy_model, 1e-2, "lazy_adam")
    assert isinstance(lazy, LazyAdam) and lazy_model.table.sparse
    before = lazy_model.table.weight.detach().clone()
    idx = torch.tensor([[1, 2], [2, 3]])
    _step(dense_model, dense, idx)
    _step(lazy_model, lazy, idx)
    moved = (lazy_model.table.weight != before).any(dim=1)
    assert moved.tolist() == [i in (1, 2, 3) for i in range(10)]
    # first step: both see zero moments, so the touched rows and the dense layers get the same update
    torch.testing.assert_close(lazy_model.table.weight, dense_model.table.weight)
    torch.testing.assert_close(lazy_model.head.weight, dense_model.head.weight)
    # second step on other rows: dense Adam moves rows 1-3 again on momentum, lazy Adam leaves them
    frozen = lazy_model.table.weight[1:4].detach().clone()
    dense_rows = dense_model.table.weight[1:4].detach().clone()
    _step(dense_model, dense, torch.tensor([[5, 6]]))
    _step(lazy_model, lazy, torch.tensor([[5, 6]]))
    assert torch.equal(lazy_model.table.weight[1:4], frozen)
    assert not torch.equal(dense_model.table.weight[1:4], dense_rows)


def test_lazy_adam_state_round_trip_continues_identically():
    a, b = _pair()
    opt_a = make_optimizer(a, 1e-2, "lazy_adam")
    for idx in ([[1, 2]], [[2, 4]]):
        _step(a, opt_a, torch.tensor(idx))
    b.load_state_dict(a.state_dict())
    opt_b = make_optimizer(b, 1e-2, "lazy_adam")
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # a checkpoint holds copies, not aliases
    assert [g["lr"] for g in opt_b.param_groups] == [1e-2, 1e-2]
    for idx in ([[4, 7]], [[1, 9]]):
        _step(a, opt_a, torch.tensor(idx))
        _step(b, opt_b, torch.tensor(idx))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_lr_changes_reach_both_parts():
    model = Tiny()
    opt = make_optimizer(model, 1e-3, "lazy_adam")
    for g in opt.param_groups:
        g["lr"] *= 0.5
    assert [g["lr"] for part in opt.parts for g in part.param_groups] == [5e-4, 5e-4]


def test_unknown_optimizer_is_rejected():
    with pytest.raises(ValueError, match="lazy_adam"):
        make_optimizer(Tiny(), 1e-3, "sgd")
    with pytest.raises(ValueError, match="TrainConfig.optimizer"):
        TrainConfig(data="d", model="dnn", out="o", optimizer="adamw")
