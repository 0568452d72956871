"""Optimizers: dense Adam (the paper's and the official code's) and lazy Adam for big embedding tables.

"adam"       every parameter, embedding rows included, gets the dense Adam update each step: rows absent
             from the batch still move on their momentum. This is TF1's AdamOptimizer on embedding
             lookups (its sparse apply decays m and v over the whole table), so it is the default.
"lazy_adam"  embedding tables return sparse row gradients and only the rows a batch touched are updated
             (torch's SparseAdam, TF's LazyAdam); the dense layers keep fused Adam. The cost of a step no
             longer grows with vocabulary x width: a 5.6M-pair Cartesian table or the 160-wide CAN
             induction tables cost what the batch touches, which is how production CTR systems train.
"""

from __future__ import annotations

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

    def __init__(self, model: nn.Module, lr: float) -> None:
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
            self.parts.append(torch.optim.SparseAdam(sparse, lr=lr))
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


def make_optimizer(model: nn.Module, lr: float, name: OptimizerName = "adam") -> torch.optim.Optimizer:
    if name == "adam":
        return _adam([p for p in model.parameters() if p.requires_grad], lr)
    if name == "lazy_adam":
        return LazyAdam(model, lr)
    raise ValueError(f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}")
