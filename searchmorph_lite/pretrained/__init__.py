"""Pretrained models shipped inside the package: ``load_pretrained(name)``.

Each ``<name>.pt`` here is a checkpoint written by ``save_checkpoint`` (state dict + config + metadata: data,
training config, epochs, wall time, hardware, validation metrics); ``MODEL_CARD.md`` describes them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

PRETRAINED = {
    "brain2d": "SearchMorph",
    "echo2d": "SearchMorph",
    "brain2d-voxelmorph": "VoxelMorph",
    "echo2d-voxelmorph": "VoxelMorph",
    # Table III (chapter 13): the full model and its four ablations, trained with one budget (the first brain2d's)
    "brain2d-ablation-base": "SearchMorph",
    "brain2d-no-context": "SearchMorph",
    "brain2d-no-search": "SearchMorph",
    "brain2d-no-pyramid": "SearchMorph",
    "brain2d-no-iteration": "SearchMorph",
    # Beyond the paper (chapters 14-16): 3D at 4 mm, and three brain2d-subjects models trained side by side for the
    # same 1,200 CPU seconds (displacement, diffeomorphic, full-resolution features)
    "brain3d": "SearchMorph",
    "brain3d-voxelmorph": "VoxelMorph",
    "brain2d-displacement": "SearchMorph",
    "brain2d-diffeomorphic": "SearchMorph",
    "brain2d-stride1": "SearchMorph",
}


def pretrained_path(name: str) -> Path:
    """Path of the shipped checkpoint ``name`` (which may not exist in a development checkout)."""
    if not isinstance(name, str) or name not in PRETRAINED:
        hint = "; load a checkpoint file with load_checkpoint" if isinstance(name, str) and "." in name else ""
        raise ValueError(f"unknown pretrained model {name!r}; available: {', '.join(PRETRAINED)}{hint}")
    return Path(__file__).with_name(f"{name}.pt")


def available_pretrained() -> list[str]:
    """Names of the pretrained models whose checkpoint file is present."""
    return [name for name in PRETRAINED if pretrained_path(name).is_file()]


def load_pretrained(name: str, device: str | torch.device | None = None) -> nn.Module:
    """The pretrained model ``name`` (a key of ``PRETRAINED``, e.g. "brain2d", "echo2d-voxelmorph") in eval mode.

    Loaded with ``torch.load(weights_only=True)`` and checked like every checkpoint (zip CRC-32, finite
    weights), so a damaged installation is refused, naming the file; ``model.metadata`` holds its model card.
    """
    from ..checkpoint import load_checkpoint

    path = pretrained_path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained model {name!r} is not in this installation ({path}); train it with "
            f"`python -m searchmorph_lite train --config configs/...` or install a release that ships it"
        )
    return load_checkpoint(path, expected_model=PRETRAINED[name], device=device)
