"""Model registry: names -> (config dataclass, builder, source paper). Unknown or duplicate names raise.

Models register with `@register_model` on their class. A composed model (e.g. "can-dien" = DIEN + the
co-action block) registers with `register_composite(name, backbone=..., blocks=[...])`: the builder is the
backbone's, called with the blocks, and the config dataclass is the backbone's plus one section per block
that has one (so `--set coaction.orders=2` reaches the co-action block of can-dien). A backbone that
takes blocks accepts `blocks=` in its constructor, builds each with `block.build(schema, config,
representation)` after its own modules, and appends each block's `forward(batch) -> [B, out_dim]` to its
MLP input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from canctr.config import ConfigError, from_dict, replace
from canctr.data.schema import Schema


@dataclass(frozen=True)
class FeatureBlock:
    """An extra feature block for a backbone.

    name: what it is ("coaction", "cartesian"); section: its config section in a composed model's config
    (None: the block reads only the backbone's fields, e.g. embed_dim and init), with dataclass
    `config_cls`; build(schema, model config, representation embeddings) -> an nn.Module with `out_dim`
    and `forward(batch) -> [B, out_dim]`.
    """

    name: str
    build: Callable[[Schema, Any, nn.Module], nn.Module]
    section: str | None = None
    config_cls: type | None = None


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config_cls: type
    builder: Callable[[Schema, Any], nn.Module]
    paper: str
    description: str
    backbone: str | None = None  # composed models: the backbone's name and the blocks' names
    blocks: tuple[str, ...] = ()


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, config: type, paper: str, description: str):
    """Class decorator: `@register_model("din", config=DINConfig, paper="...", description="...")`.

    The decorated class must accept `(schema, config)`.
    """

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, config, cls, paper, description)
        return cls

    return deco


def register_composite(
    name: str,
    *,
    backbone: str,
    blocks: Sequence[FeatureBlock],
    config_name: str,
    module: str,
    paper: str,
    description: str,
) -> type:
    """Register `name` = backbone `backbone` (a registered model whose class accepts `blocks=`) + `blocks`,
    and return its config dataclass: the backbone's config plus a field per block section (named
    `config_name`, placed in `module` so that it pickles and prints like a hand-written one)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} registered twice")
    base = get_entry(backbone)
    blocks = tuple(blocks)
    sections = []
    for b in blocks:
        if b.section is not None and b.section not in {s[0] for s in sections}:
            sections.append((b.section, b.config_cls, dataclasses.field(default_factory=b.config_cls)))
    config_cls = dataclasses.make_dataclass(config_name, sections, bases=(base.config_cls,))
    config_cls.__module__ = module
    config_cls.__doc__ = f"{base.config_cls.__name__}'s fields plus the section(s) {[s[0] for s in sections]}."

    def builder(schema: Schema, config: Any) -> nn.Module:
        return base.builder(schema, config, blocks=blocks)

    _REGISTRY[name] = ModelEntry(name, config_cls, builder, paper, description, backbone, tuple(b.name for b in blocks))
    return config_cls


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
