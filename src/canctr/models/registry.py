"""Model registry: names -> (config dataclass, builder, source paper). Unknown or duplicate names raise."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from canctr.config import ConfigError, from_dict, replace
from canctr.data.schema import Schema


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config_cls: type
    builder: Callable[[Schema, Any], nn.Module]
    paper: str
    description: str


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, config: type, paper: str, description: str):
    """Class decorator: `@register_model("can-dnn", config=CANDNNConfig, paper="...", description="...")`.

    The decorated class must accept `(schema, config)`.
    """

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, config, cls, paper, description)
        return cls

    return deco


def list_models() -> list[ModelEntry]:
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """Default config of model `name` with strict (dotted) overrides."""
    entry = get_entry(name)
    cfg = entry.config_cls()
    return replace(cfg, overrides) if overrides else cfg


def create_model(name: str, schema: Schema, config: Any | dict[str, Any] | None = None) -> nn.Module:
    """Build model `name` for `schema`. `config` may be a config object, a full dict, or None (defaults)."""
    entry = get_entry(name)
    if config is None:
        config = entry.config_cls()
    elif isinstance(config, dict):
        config = from_dict(entry.config_cls, config)
    elif not isinstance(config, entry.config_cls):
        raise ConfigError(f"model {name!r} takes {entry.config_cls.__name__}, got {type(config).__name__}")
    model = entry.builder(schema, config)
    model.model_name = name
    model.config = config
    return model


def config_dict(model: nn.Module) -> dict[str, Any]:
    return dataclasses.asdict(model.config)
