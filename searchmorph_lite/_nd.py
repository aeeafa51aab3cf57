"""The one place where the number of spatial dimensions picks layers and modes (VoxelMorph's idiom).

Every module asks ``nd(ndim)`` for its convolution, normalization, pooling and interpolation mode instead of
re-deciding ``if ndim == 2`` itself, so a 3D model is the 2D one with ``ndim=3``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def _onednn_ok(x: torch.Tensor, padding) -> bool:
    """True when ``x`` can take oneDNN's convolution directly: a float32 CPU tensor, numeric padding."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not isinstance(padding, str)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def conv3d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor:
    """``F.conv3d`` (B, C_out, D', H', W') that takes oneDNN on the CPU whatever the batch size.

    PyTorch's CPU heuristic (aten ``use_mkldnn``) sends a 5-D input with kernel <= 3 and N * C * D * H <= 20480 to
    its reference kernel ``aten::slow_conv3d``: every 3 x 3 x 3 convolution of a batch-1 SearchMorph-3D at 32
    channels on 24^3 (1 * 32 * 24 * 24 = 18432; the product leaves out W). There it took 44.7 ms forward where
    oneDNN took 6.6 ms (one thread, this project's CPU). Batches of 2 or more already take oneDNN, so training
    is unchanged; inference at batch 1 is what this fixes. Results agree with the reference kernel to float
    rounding (1e-6 relative).
    """
    if _onednn_ok(x, padding):
        triple = lambda v: [v] * 3 if isinstance(v, int) else list(v)  # noqa: E731
        return torch.ops.aten.mkldnn_convolution(
            x.contiguous(), weight.contiguous(), bias, triple(padding), triple(stride), triple(dilation), groups
        )
    return F.conv3d(x, weight, bias, stride, padding, dilation, groups)


class Conv3d(nn.Conv3d):
    """``nn.Conv3d`` whose CPU forward takes oneDNN at any batch size (see :func:`conv3d`); same weights and keys."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            return super()._conv_forward(input, weight, bias)
        return conv3d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


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
        Conv=nn.Conv2d if ndim == 2 else Conv3d,
        BatchNorm=getattr(nn, f"BatchNorm{ndim}d"),
        avg_pool=getattr(F, f"avg_pool{ndim}d"),
        conv=F.conv2d if ndim == 2 else conv3d,
        linear_mode="bilinear" if ndim == 2 else "trilinear",
    )
