"""Checkpoints as plain files, written atomically (temp dir + rename), never pickle.

RUN_DIR/checkpoint/
    model.safetensors   weights
    model.json          {"model": name, "config": {...}, "canctr_version": ...}
    schema.json         the dataset Schema the model was built for (vocab sizes)
    optimizer.safetensors + train_state.json   (optional) optimizer tensors, param groups, epoch/step, rng
A checkpoint directory is loadable alone: `load_model(path)` rebuilds the model without the data.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from canctr import __version__
from canctr.data.schema import Schema
from canctr.models import create_model
from canctr.models.registry import config_dict


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared/non-contiguous storage; clone to be safe (tiny cost, only at save time)
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def _optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"{pid}.{name}"] = val.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[name] = val
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    schema: Schema,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory atomically: a crash mid-write leaves the previous one intact."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(_state_tensors(model), str(tmp / "model.safetensors"))
    meta = {"model": model.model_name, "config": config_dict(model), "canctr_version": __version__}
    (tmp / "model.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    schema.save(tmp / "schema.json")
    if optimizer is not None:
        tensors, rest = _optimizer_files(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {"optimizer": rest, **(train_state or {})}
        (tmp / "train_state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    # swap in: rename the old one away first so `path` is always either old or new, never partial
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    if old.exists():
        shutil.rmtree(old)
    return path


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, Schema]:
    """Rebuild the model from a checkpoint directory and load its weights (strict)."""
    path = Path(path)
    if not (path / "model.json").exists() and (path / "checkpoint" / "model.json").exists():
        path = path / "checkpoint"
    meta_path = path / "model.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{path}: not a canctr checkpoint (no model.json)")
    meta = json.loads(meta_path.read_text())
    schema = Schema.load(path / "schema.json")
    model = create_model(meta["model"], schema, meta["config"])
    state = load_file(str(path / "model.safetensors"), device="cpu")
    model.load_state_dict(state, strict=True)
    return model.to(device), schema


def load_training_state(
    path: str | os.PathLike, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore optimizer tensors + param groups into `optimizer`; return the rest of train_state.json."""
    path = Path(path)
    state = json.loads((path / "train_state.json").read_text())
    opt = state.pop("optimizer")
    tensors = load_file(str(path / "optimizer.safetensors"), device="cpu")
    per_param: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        pid, name = key.split(".", 1)
        per_param.setdefault(int(pid), {})[name] = val
    for pid, sc in opt["scalars"].items():
        per_param.setdefault(int(pid), {}).update(sc)
    optimizer.load_state_dict({"state": per_param, "param_groups": opt["param_groups"]})
    return state
