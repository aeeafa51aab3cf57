"""Sampling an image at real-valued pixel positions: the one sampler behind ``warp`` (eq. 8) and the search (eq. 3).

Positions are pixel coordinates in array order (row, column[, depth-last]), never normalized, never (x, y):
the flip to ``grid_sample``'s (x, y[, z]) convention in [-1, 1] happens once, here. Two implementations compute
the same (bi/tri)linear interpolation with zeros outside the grid:

* ``bilinear_sample``: a gather over the 2^ndim corners with weights from exact pixel coordinates. Readable, exact
  for integer positions (a zero field copies pixels bit for bit), works on axes of size 1; slow in backward.
* ``sample_points`` / ``sample_grid``: the fused ``grid_sample`` kernel, about 10x faster forward + backward.
  Normalizing to [-1, 1] costs float32 precision: positions are exact to about 1e-7 * size pixels.

``sample_grid`` takes the fast path, and the exact one for nearest-neighbour sampling, axes of one pixel, and
where its caller asks with ``exact=True`` (then an identity or an integer shift copies pixels bit for bit).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F


def identity_grid(shape: tuple[int, ...], device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel coordinates (ndim, *shape): channel k holds the index along spatial axis k."""
    axes = [torch.arange(n, device=device, dtype=dtype) for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"))


def bilinear_sample(values: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Samples (N, C, P) of ``values`` (N, C, *S) at pixel coordinates ``coords`` (N, P, ndim), zero outside.

    Linear interpolation between the 2^ndim neighbouring pixels; a neighbour outside the grid contributes 0
    (the same as ``grid_sample(..., padding_mode="zeros", align_corners=True)``, but exact for grids of size 1
    and for integer coordinates).
    """
    n, c = values.shape[:2]
    spatial = values.shape[2:]
    ndim = len(spatial)
    if coords.shape[0] != n or coords.shape[-1] != ndim:
        raise ValueError(f"coords must be (N={n}, P, {ndim}), got {tuple(coords.shape)}")
    flat = values.reshape(n, c, -1)
    base = torch.floor(coords)
    frac = coords - base
    base = base.long()
    out = values.new_zeros(n, c, coords.shape[1])
    strides = [math.prod(spatial[k + 1 :]) for k in range(ndim)]
    for corner in itertools.product((0, 1), repeat=ndim):
        weight = torch.ones_like(coords[..., 0])
        index = torch.zeros_like(base[..., 0])
        valid = torch.ones_like(base[..., 0], dtype=torch.bool)
        for k, step in enumerate(corner):
            pos = base[..., k] + step
            weight = weight * (frac[..., k] if step else 1 - frac[..., k])
            valid &= (pos >= 0) & (pos < spatial[k])
            index = index + pos.clamp(0, spatial[k] - 1) * strides[k]
        gathered = torch.gather(flat, 2, index.unsqueeze(1).expand(n, c, -1))
        out = out + gathered * (weight * valid).unsqueeze(1)
    return out


def _to_grid(coords: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    """``grid_sample``'s grid (..., ndim): pixel coordinates (row-first) -> (x, y[, z]) in [-1, 1]."""
    scale = torch.tensor([2.0 / (s - 1) for s in spatial], dtype=coords.dtype, device=coords.device)
    return (coords * scale - 1).flip(-1)


def sample_points(values: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Samples (N, C, P) of ``values`` (N, C, *S) at pixel ``coords`` (N, P, ndim), (bi/tri)linear, zero outside.

    The fused ``grid_sample`` path when every axis has at least 2 pixels, else :func:`bilinear_sample`; both
    compute the same thing (to float32 precision of the normalized position).
    """
    spatial = tuple(values.shape[2:])
    if min(spatial) < 2:
        return bilinear_sample(values, coords)
    n, c = values.shape[:2]
    ndim = len(spatial)
    if coords.shape[0] != n or coords.shape[-1] != ndim:
        raise ValueError(f"coords must be (N={n}, P, {ndim}), got {tuple(coords.shape)}")
    grid = _to_grid(coords.to(values.dtype), spatial).reshape(n, coords.shape[1], *([1] * (ndim - 1)), ndim)
    out = F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(n, c, coords.shape[1])


def _sample_around(values: torch.Tensor, centre: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Samples (N, C, K, *S) of ``values`` (N, C, *T) at pixel positions ``centre`` (N, *S, ndim) + ``offsets[k]``.

    ``offsets`` (K, ndim); both row-first, (bi/tri)linear, zero outside: ``sample_points`` at every
    centre + offset, with the same positions to the bit. The search (eq. 3) calls this with K diamond offsets
    around every pixel. Flipping the small centre and offset tensors to (x, y[, z]) before broadcasting them
    to (N, K, *S, ndim), rather than the broadcast grid after, saves one full copy of the grid per call.
    """
    spatial = tuple(values.shape[2:])
    n, c = values.shape[:2]
    k, ndim = offsets.shape
    out_spatial = tuple(centre.shape[1:-1])
    if min(spatial) < 2:  # grid_sample cannot address a one-pixel axis; the gather can
        pos = centre.unsqueeze(1) + offsets.reshape(1, k, *[1] * len(out_spatial), ndim)
        return bilinear_sample(values, pos.reshape(n, -1, ndim)).reshape(n, c, k, *out_spatial)
    scale = torch.tensor([2.0 / (s - 1) for s in reversed(spatial)], dtype=values.dtype, device=values.device)
    # contiguous: a centre made by movedim keeps channel-first strides, which the broadcast would copy to the grid
    pos = centre.flip(-1).contiguous().unsqueeze(1) + offsets.flip(-1).reshape(1, k, *[1] * len(out_spatial), ndim)
    grid = (pos.to(values.dtype) * scale - 1).reshape(n, k * out_spatial[0], *out_spatial[1:], ndim)
    out = F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(n, c, k, *out_spatial)


def sample_grid(
    image: torch.Tensor,
    coords: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    exact: bool = False,
) -> torch.Tensor:
    """``image`` (B, C, *S) sampled at pixel positions ``coords`` (B, ndim, *S) -> (B, C, *S).

    ``mode`` "bilinear" (trilinear in 3D) or "nearest"; ``padding_mode`` "zeros" (outside reads 0) or "border"
    (outside reads the nearest border pixel). Fast path ``grid_sample``; the exact gather for nearest sampling,
    one-pixel axes, and where the caller asks for it with ``exact`` (integer positions then copy pixels bit for
    bit). The path follows from the arguments and shapes, never from the values: a value test would make a GPU
    wait on every call.
    """
    spatial = tuple(image.shape[2:])
    b, c = image.shape[:2]
    ndim = len(spatial)
    if padding_mode == "border":
        limits = torch.tensor([n - 1 for n in spatial], device=coords.device, dtype=coords.dtype)
        coords = torch.minimum(coords.clamp_min(0), limits.view(1, -1, *[1] * ndim))
    if mode == "nearest":
        coords = torch.round(coords)
    if exact or mode == "nearest" or min(spatial) < 2:
        points = coords.flatten(2).transpose(1, 2)  # (B, P, ndim)
        return bilinear_sample(image, points).reshape(b, c, *spatial)
    grid = _to_grid(coords.movedim(1, -1), spatial)  # (B, *S, ndim)
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
