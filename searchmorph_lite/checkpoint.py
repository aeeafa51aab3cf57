"""Checkpoints: one file holding the model's kind, config, state dict and metadata, loadable with weights_only."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ._checks import readable_mode
from .baselines import VoxelMorph, VoxelMorphConfig
from .model import SearchMorph, SearchMorphConfig

FORMAT = "searchmorph_lite.checkpoint/1"
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
    """``torch.save`` to a temporary file beside ``path``, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    readable_mode(tmp)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    """The raw checkpoint dict at ``path``, loaded with weights_only=True; clear errors when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a searchmorph_lite checkpoint (no '{FORMAT}' format tag)")
    return ckpt


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
