"""canctr: CAN (Feature Co-Action Network, Bian et al., WSDM 2022) and its CTR baselines in PyTorch.

Flow: data (raw files -> encoded arrays + schema.json) -> layers (schema-agnostic tensor modules)
-> models (compositions built from a Schema and a config dataclass, returning logits)
-> train (step function, loop, metrics, checkpoints) -> cli.
"""

__version__ = "0.1.0"
