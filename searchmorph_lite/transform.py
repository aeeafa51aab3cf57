"""The spatial transformer (eq. 8): warp an image with a dense displacement field, and resize fields.

Convention (VoxelMorph's): a field ``flow`` has shape (B, ndim, *spatial) in pixels; channel k is the
displacement along spatial axis k (channel 0 = rows/H, channel 1 = columns/W). ``warp(moving, flow)`` at pixel
p samples ``moving`` at p + flow(p), so the field lives on the fixed image's grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._checks import check_flow, check_image, check_same_spatial
from ._nd import nd
from .sampling import identity_grid, sample_grid

__all__ = ["SpatialTransformer", "identity_grid", "integrate_velocity", "upsample_flow", "warp"]


def _check_modes(mode: str, padding_mode: str) -> None:
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    if padding_mode not in ("zeros", "border"):
        raise ValueError(f"padding_mode must be 'zeros' or 'border', got {padding_mode!r}")


def warp(
    image: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros", exact: bool = False
) -> torch.Tensor:
    """Warped image (B, C, *spatial): ``image`` sampled at p + flow(p) for every pixel p (eq. 8).

    Bilinear (trilinear in 3D) interpolation between the 2^ndim neighbours of p + flow(p), or ``nearest`` for
    label maps. Positions outside the image read 0 (``padding_mode="zeros"``) or the nearest border pixel
    (``"border"``). Sampling goes through :func:`searchmorph_lite.sampling.sample_grid`: the fused ``grid_sample``
    kernel, exact to about 1e-7 * size pixels; ``exact=True`` takes the gather instead, so a zero or integer field
    copies pixels bit for bit (slower, in backward most). Shapes are checked here, values at the edges.
    """
    check_image(image, "image")
    check_flow(flow)
    check_same_spatial(image, flow, "image", "flow")
    _check_modes(mode, padding_mode)
    shape = tuple(image.shape[2:])
    dtype = torch.promote_types(image.dtype, flow.dtype)
    coords = identity_grid(shape, device=flow.device, dtype=dtype) + flow.to(dtype)
    return sample_grid(image.to(dtype), coords, mode=mode, padding_mode=padding_mode, exact=exact).to(image.dtype)


class SpatialTransformer(nn.Module):
    """Module form of :func:`warp` with no parameters (eq. 8): ``forward(image, flow)`` -> (B, C, *spatial)."""

    def __init__(self, mode: str = "bilinear", padding_mode: str = "zeros") -> None:
        super().__init__()
        _check_modes(mode, padding_mode)
        self.mode = mode
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        return warp(image, flow, mode=self.mode, padding_mode=self.padding_mode)


def upsample_flow(flow: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Field (B, ndim, *spatial*factor) resized by ``factor`` with its displacements multiplied by ``factor``.

    Resizing is (bi/tri)linear with ``align_corners=False``: pixel centres of the coarse grid map to
    ``factor * i + (factor - 1) / 2`` on the fine grid, which is how strided convolutions and average pooling
    place their outputs. A constant field stays constant (times ``factor``).
    """
    check_flow(flow)
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    factor = int(factor)
    if factor == 1:
        return flow
    mode = nd(flow.ndim - 2).linear_mode
    return factor * F.interpolate(flow, scale_factor=factor, mode=mode, align_corners=False)


def integrate_velocity(velocity: torch.Tensor, steps: int = 7) -> torch.Tensor:
    """Displacement (B, ndim, *spatial): exp(v) of a stationary velocity field v (B, ndim, *spatial), in pixels.

    Scaling and squaring (Arsigny et al. 2006; VoxelMorph-diff's ``VecInt``): u = v / 2^steps, then ``steps``
    self-compositions u <- u + warp(u, u), so exp(0) = 0 and a constant v gives that translation. The samples
    outside the grid read the nearest border displacement (``padding_mode="border"``), so a constant field stays
    exact up to the border; VoxelMorph reads zeros there, which pulls the field to 0 at the edges.
    ``steps=0`` returns v itself.
    """
    check_flow(velocity)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    disp = velocity / 2**steps
    for _ in range(steps):
        disp = disp + warp(disp, disp, padding_mode="border")
    return disp
