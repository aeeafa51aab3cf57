"""The registration models a config or checkpoint can name: ``MODELS``, their configs from dicts, and fresh models."""

from __future__ import annotations

from torch import nn

from ._checks import check_config_fields, one_line
from .base import RegistrationModel
from .baselines import VoxelMorph, VoxelMorphConfig
from .model import SearchMorph, SearchMorphConfig

# kind (the name a TrainConfig, a checkpoint's "model" entry and the CLI use) -> (model class, config dataclass)
MODELS: dict[str, tuple[type[RegistrationModel], type]] = {
    "SearchMorph": (SearchMorph, SearchMorphConfig),
    "VoxelMorph": (VoxelMorph, VoxelMorphConfig),
}


def check_model_config(kind: str, config: dict | None = None) -> object:
    """The config dataclass (SearchMorphConfig / VoxelMorphConfig) of ``kind`` from a dict, every field checked.

    ValueError naming the model, the field and the value for unknown kinds, unknown fields and wrong types.
    """
    if not isinstance(kind, str) or kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose one of {', '.join(sorted(MODELS))}")
    config = {} if config is None else config
    if not isinstance(config, dict):
        raise ValueError(f"{kind} config must be a mapping of fields, got {type(config).__name__}")
    config_cls = MODELS[kind][1]
    fields = list(config_cls.__dataclass_fields__)
    unknown = sorted((k for k in set(config) - set(fields)), key=str)
    if unknown:
        raise ValueError(
            f"{kind} config: unknown field(s) {', '.join(repr(k) for k in unknown)}; known: {', '.join(fields)}"
        )
    checked = check_config_fields(config_cls, config, f"{kind} config: ")
    if checked.get("in_channels", 1) < 1:
        raise ValueError(f"{kind} config: in_channels must be an integer >= 1, got {checked['in_channels']!r}")
    try:
        return config_cls(**checked)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad {kind} config: {one_line(err)}") from None


def build_model(kind: str, config: dict | None = None) -> nn.Module:
    """A fresh model of ``kind`` ("SearchMorph" or "VoxelMorph") built from a config dict."""
    return MODELS[kind][0](check_model_config(kind, config))
