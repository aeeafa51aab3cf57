"""The one place where the number of spatial dimensions picks layers and modes (VoxelMorph's idiom).

Every module asks ``nd(ndim)`` for its convolution, normalization, pooling and interpolation mode instead of
re-deciding ``if ndim == 2`` itself, so a 3D model is the 2D one with ``ndim=3``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class NdLayers:
    """Layer classes and functions for ``ndim`` spatial axes (2: H, W; 3: D, H, W)."""

    ndim: int
    Conv: type[nn.Module]
    BatchNorm: type[nn.Module]
    avg_pool: Callable
    conv: Callable  # functional convolution (F.conv2d / F.conv3d)
    linear_mode: str  # "bilinear" or "trilinear": the interpolation mode of F.interpolate


def nd(ndim: int) -> NdLayers:
    """Layers for ``ndim`` (2 or 3) spatial dimensions; ValueError otherwise."""
    if isinstance(ndim, bool) or ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    return NdLayers(
        ndim=ndim,
        Conv=getattr(nn, f"Conv{ndim}d"),
        BatchNorm=getattr(nn, f"BatchNorm{ndim}d"),
        avg_pool=getattr(F, f"avg_pool{ndim}d"),
        conv=getattr(F, f"conv{ndim}d"),
        linear_mode="bilinear" if ndim == 2 else "trilinear",
    )
