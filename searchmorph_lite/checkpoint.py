"""Checkpoints: one file holding the model's kind, config, state dict and metadata, loadable with weights_only."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ._files import atomic_write
from .baselines import VoxelMorph, VoxelMorphConfig
from .model import SearchMorph, SearchMorphConfig

FORMAT = "searchmorph_lite.checkpoint/2"
# Format 1 (searchmorph_lite 0.1) stored SearchMorph's trunk twice, under both encoders, and kept the hidden-state
# initialisation on the model; format 2 has one SharedEncoder and the iterator owns init_hidden. Older files
# load through upgrade_state_dict.
READABLE_FORMATS = ("searchmorph_lite.checkpoint/1", FORMAT)
_RENAMES_V1 = (  # (old prefix, new prefix) of SearchMorph keys, format 1 -> 2
    ("feature_encoder.trunk.", "encoder.trunk."),
    ("feature_encoder.head.", "encoder.feature_head.conv."),
    ("context_encoder.head.", "encoder.context_head.conv."),
    ("init_hidden.", "iterator.init_hidden."),
)
MODELS = {"SearchMorph": (SearchMorph, SearchMorphConfig), "VoxelMorph": (VoxelMorph, VoxelMorphConfig)}


def build_model(kind: str, config: dict | None = None) -> nn.Module:
    """A fresh model of ``kind`` ("SearchMorph" or "VoxelMorph") built from a config dict."""
    if kind not in MODELS:
        raise ValueError(f"unknown model {kind!r}; choose one of {sorted(MODELS)}")
    model_cls, config_cls = MODELS[kind]
    try:
        cfg = config_cls(**(config or {}))
    except TypeError as err:
        raise ValueError(f"bad {kind} config: {err}") from None
    return model_cls(cfg)


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` through the library's atomic writer: a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path: str | os.PathLike, model: nn.Module, metadata: dict | None = None, **extra) -> None:
    """Write ``model`` (SearchMorph or VoxelMorph) with its config and ``metadata`` to ``path`` atomically.

    ``extra`` entries (e.g. optimizer state, epoch) are stored too; keep them to tensors, numbers, strings,
    lists and dicts so the file loads with ``torch.load(weights_only=True)``.
    """
    kind = type(model).__name__
    if kind not in MODELS:
        raise ValueError(f"can only save {sorted(MODELS)}, got {kind}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt = {
        "format": FORMAT,
        "model": kind,
        "config": model.config.to_dict(),
        "state_dict": state,
        "metadata": dict(metadata or {}),
    }
    ckpt.update(extra)
    atomic_save(ckpt, path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at ``path``, loaded with weights_only=True, its state dict in today's key format.

    Clear errors when it is not one. The "format" entry says which format the file itself is in.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path} is not a searchmorph_lite checkpoint (no '{FORMAT}' format tag)")
    ckpt["state_dict"] = upgrade_state_dict(ckpt.get("model"), ckpt.get("state_dict", {}), ckpt["format"])
    return ckpt


def upgrade_state_dict(kind: str, state: dict, version: str) -> dict:
    """State dict of a ``version`` checkpoint with the keys of today's ``kind`` model (format 1 -> 2 renames).

    Format 1 SearchMorph files hold the shared trunk twice (``feature_encoder.trunk`` and
    ``context_encoder.trunk``); the copies must be equal, and one is kept.
    """
    if version == FORMAT or kind != "SearchMorph" or not isinstance(state, dict):
        return state
    new = {}
    for key, value in state.items():
        if key.startswith("context_encoder.trunk."):
            twin = state.get("feature_encoder." + key[len("context_encoder.") :])
            if twin is None or not torch.equal(twin, value):
                raise ValueError(f"format-1 checkpoint: the two copies of the shared trunk differ at {key}")
            continue
        for old, renamed in _RENAMES_V1:
            if key.startswith(old):
                key = renamed + key[len(old) :]
                break
        new[key] = value
    return new


def load_checkpoint(
    path: str | os.PathLike, expected_model: str | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """The model stored at ``path``, in eval mode on ``device``; its metadata is ``model.metadata``.

    ``expected_model`` ("SearchMorph"/"VoxelMorph") raises ValueError when the file holds another kind.
    """
    ckpt = read_checkpoint(path)
    kind = ckpt["model"]
    if expected_model is not None and kind != expected_model:
        raise ValueError(f"{path} holds a {kind} checkpoint, expected {expected_model}")
    model = build_model(kind, ckpt["config"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not match the {kind} config: {err}") from None
    model.metadata = ckpt.get("metadata", {})
    return model.to(device or default_device()).eval()


def default_device() -> torch.device:
    """``cuda`` when a GPU is present, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
