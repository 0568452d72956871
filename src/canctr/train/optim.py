"""Optimizers: dense Adam (the paper's and the official code's) and lazy Adam for big embedding tables.

"adam"       every parameter, embedding rows included, gets the dense Adam update each step: rows absent
             from the batch still move on their momentum. This is TF1's AdamOptimizer on embedding
             lookups (its sparse apply decays m and v over the whole table), so it is the default.
"lazy_adam"  embedding tables return sparse row gradients and only the rows a batch touched are updated
             (torch's SparseAdam, TF's LazyAdam); the dense layers keep fused Adam. The cost of a step no
             longer grows with vocabulary x width: a 5.6M-pair Cartesian table or the 160-wide CAN
             induction tables cost what the batch touches, which is how production CTR systems train.

A table optimizer ("sgd", "adagrad": `table_optimizer`) trains the embedding tables with sparse row gradients
and torch's SGD / Adagrad at their own learning rate, the dense layers with fused Adam: the plain-path twin
of the fused optimizers that sharded tables use (train/sharded.py; fbgemm's exact SGD and exact Adagrad
apply the same update to the rows a batch touched).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import nn

from canctr.config import OPTIMIZERS

OptimizerName = Literal["adam", "lazy_adam"]


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Fused Adam: one pass over each tensor (on CPU it halves CAN-DNN's step, see speed_ablation)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # an older torch or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr)


class LazyAdam(torch.optim.Optimizer):
    """SparseAdam on the embedding tables + fused Adam on everything else, behind one Optimizer.

    Its state_dict is one torch-format dict (dense parameters first, then the tables), so checkpoints and
    `--resume` treat it like any other optimizer. Same betas/eps as torch's Adam defaults.
    """

    def __init__(self, model: nn.Module, lr: float,
                 tables_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None) -> None:
        tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
        sparse_ids = set()
        for t in tables:
            t.sparse = True  # the lookup now returns a sparse [rows, D] gradient
            sparse_ids.add(id(t.weight))
        params = [p for p in model.parameters() if p.requires_grad]
        dense = [p for p in params if id(p) not in sparse_ids]
        sparse = [p for p in params if id(p) in sparse_ids]
        self.parts: list[torch.optim.Optimizer] = []
        if dense:
            self.parts.append(_adam(dense, lr))
        if sparse:
            self.parts.append(tables_optimizer(sparse) if tables_optimizer else torch.optim.SparseAdam(sparse, lr=lr))
        # the base class only holds the groups; each part owns its state and does its own step
        super().__init__([{"params": dense}, {"params": sparse}] if dense and sparse else params, {"lr": lr})
        self.param_groups = [g for part in self.parts for g in part.param_groups]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: ANN401 (torch's signature)
        loss = closure() if closure is not None else None
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for part in self.parts:
            sd = part.state_dict()
            for pid, st in sd["state"].items():
                state[pid + offset] = st
            for g in sd["param_groups"]:
                groups.append({**g, "params": [pid + offset for pid in g["params"]]})
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != len(self.parts):
            raise ValueError(f"optimizer state has {len(groups)} parameter groups; lazy_adam expects {len(self.parts)}")
        offset = 0
        for part, g in zip(self.parts, groups, strict=True):
            n = len(g["params"])
            ids = set(range(offset, offset + n))
            part.load_state_dict({
                "state": {int(pid) - offset: st for pid, st in state_dict["state"].items() if int(pid) in ids},
                "param_groups": [{**g, "params": [pid - offset for pid in g["params"]]}],
            })
            offset += n
        self.param_groups = [g for part in self.parts for g in part.param_groups]


PLAIN_TABLE_OPTIMIZERS = ("sgd", "adagrad")
TABLE_EPS = 1e-8  # Adagrad's epsilon: fbgemm's default, so the sharded tables' Adagrad is the same update


def make_optimizer(model: nn.Module, lr: float, name: OptimizerName = "adam", table_optimizer: str = "",
                   table_lr: float | None = None) -> torch.optim.Optimizer:
    """`name` for every parameter, or with `table_optimizer` ("sgd" / "adagrad") that one, at `table_lr`
    (default `lr`), for the embedding tables and Adam for the rest."""
    if table_optimizer:
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
        t_lr = lr if table_lr is None else table_lr
        factories = {
            "sgd": lambda ps: torch.optim.SGD(ps, lr=t_lr),
            "adagrad": lambda ps: torch.optim.Adagrad(ps, lr=t_lr, eps=TABLE_EPS),
        }
        if table_optimizer not in factories:
            raise ValueError(f"--table-optimizer {table_optimizer!r} without --shard-tables: expected one of "
                             f"{', '.join(PLAIN_TABLE_OPTIMIZERS)}")
        return LazyAdam(model, lr, factories[table_optimizer])
    if name == "adam":
        return _adam([p for p in model.parameters() if p.requires_grad], lr)
    if name == "lazy_adam":
        return LazyAdam(model, lr)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
