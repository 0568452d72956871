"""Compatibility: the synthetic world now lives in `canctr.data.formats.synthetic`; this module only keeps
older imports (`canctr.demo`) working."""

from canctr.data.formats.synthetic import World, WorldConfig, generate, prepare_synthetic

__all__ = ["World", "WorldConfig", "generate", "prepare_synthetic"]
