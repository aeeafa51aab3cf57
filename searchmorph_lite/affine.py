"""Initial alignment: centre of mass, then a 12-dof (3D) or 6-dof (2D) affine optimised on the pair, coarse to fine.

The network was trained on pairs that differ by a small residual affine (a few degrees, a few per cent, a few
millimetres); real scans differ by much more (head position, field of view, scanner). Like ANTs
(``antsRegistrationSyN``: rigid, then affine, then SyN), ``mri_synthmorph`` (affine, then deformable) and
uniGradICON, we first find the affine, then hand the network a pair that looks like its training pairs.

All in world coordinates (mm; RAS in 3D, the two in-plane world axes in 2D), so voxel sizes, axis orders and
fields of view of the two images never enter the answer. The transform ``T`` maps a fixed-image world point x to
the moving-image world point T(x) = A x + b, the direction in which images are resampled (as ITK's and ANTs'
transforms). It is found by Adam on ``T(x) = c_m + (I + L)(x - c_f) + s * t`` (``c_f``, ``c_m`` the two centres
of mass, ``s`` the level's voxel size; L and t start at 0), maximising a similarity between the fixed image and
the moving image sampled at T(x) on a pyramid of grids (each level's voxel size ``spacing``), both images
box-filtered to that voxel size first so that coarse levels do not alias.

The similarity is Mattes-style mutual information with Gaussian Parzen windows (the default: it does not assume
the two contrasts agree, so a T2 aligns to a T1) or global normalised cross-correlation ("ncc").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ._nd import nd


def rotation_matrix(degrees) -> np.ndarray:
    """3 x 3 rotation (float64): about the first, second and third world axes in turn, by ``degrees`` (3,)."""
    out = np.eye(3)
    for axis, deg in enumerate(degrees):
        i, j = [k for k in range(3) if k != axis]
        r, a = np.eye(3), math.radians(deg)
        r[i, i] = r[j, j] = math.cos(a)
        r[i, j], r[j, i] = -math.sin(a), math.sin(a)
        out = out @ r
    return out


def world_grid(shape: tuple[int, ...], affine: torch.Tensor) -> torch.Tensor:
    """World coordinates (ndim, *shape) of the voxel centres of a grid with ``affine`` ((ndim+1, ndim+1), index ->
    world, indices in array order)."""
    ndim = len(shape)
    axes = [torch.arange(n, dtype=affine.dtype, device=affine.device) for n in shape]
    index = torch.stack(torch.meshgrid(*axes, indexing="ij")).reshape(ndim, -1)
    return (affine[:ndim, :ndim] @ index + affine[:ndim, ndim:]).reshape(ndim, *shape)


def sample_world(
    data: torch.Tensor, affine: torch.Tensor, points: torch.Tensor, mode: str = "bilinear", border: bool = False
) -> torch.Tensor:
    """Values (C, *T) of ``data`` (C, *S) (voxel grid with ``affine``, index -> world) at world ``points`` (ndim, *T).

    Linear interpolation ("bilinear" covers trilinear) or "nearest"; 0 outside the grid, or with ``border`` the
    nearest edge value. One ``grid_sample`` call: indices are normalised to [-1, 1] and flipped to its (x, y, z)
    order here, the only place the pipeline does so.
    """
    ndim = points.shape[0]
    spatial = tuple(data.shape[1:])
    inv = torch.linalg.inv(affine)
    flat = points.reshape(ndim, -1).to(affine.dtype)
    index = inv[:ndim, :ndim] @ flat + inv[:ndim, ndim:]  # (ndim, P) in array order
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in spatial], dtype=index.dtype, device=index.device)
    out_shape = tuple(points.shape[1:])
    grid_shape = out_shape if len(out_shape) == ndim else (index.shape[1],) + (1,) * (ndim - 1)
    grid = (index * scale[:, None] - 1).flip(0).T.reshape(1, *grid_shape, ndim).to(data.dtype)
    out = F.grid_sample(data[None], grid, mode=mode, padding_mode="border" if border else "zeros", align_corners=True)
    return out[0].reshape(data.shape[0], *out_shape)


def centre_of_mass(data: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """World position (ndim,) of the intensity centre of mass of ``data`` (*S) (values below 0 count as 0)."""
    weights = data.clamp_min(0).flatten()
    total = weights.sum()
    points = world_grid(tuple(data.shape), affine).reshape(data.ndim, -1)
    if total <= 0:
        return points.mean(1)
    return (points * weights).sum(1) / total


def downsample(data: torch.Tensor, affine: torch.Tensor, spacing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(``data`` (*S) box-averaged to about ``spacing`` mm per voxel, its affine): integer factors per axis."""
    ndim = data.ndim
    voxel = torch.linalg.norm(affine[:ndim, :ndim], dim=0)
    factors = [max(1, int(math.floor(spacing / float(v) + 1e-6))) for v in voxel]
    if max(factors) == 1:
        return data, affine
    pooled = nd(ndim).avg_pool(data[None, None], factors, ceil_mode=True)[0, 0]
    f = torch.tensor(factors, dtype=affine.dtype, device=affine.device)
    out = affine.clone()
    out[:ndim, :ndim] = affine[:ndim, :ndim] * f[None]
    out[:ndim, ndim] = affine[:ndim, ndim] + affine[:ndim, :ndim] @ ((f - 1) / 2)
    return pooled, out


def parzen_weights(v: torch.Tensor, bins: int = 32) -> torch.Tensor:
    """Weights (P, bins) of samples ``v`` (P,) in [0, 1] over ``bins`` bin centres: Gaussian windows of half a bin's
    sigma, normalised per sample.

    A window is evaluated on the 6 bins nearest its sample only: 3 bins away it is exp(-18) ~ 1.5e-8 of its peak.
    The weights keep ``v``'s dtype: the affine stage runs in float64, where 300 Adam steps land on the same
    affine whatever the number of threads (in float32 the summation order moved the result by more than 1e-3).
    """
    x = v * bins - 0.5  # position in bins: centre j sits at j
    idx = torch.floor(x).long()[:, None] + torch.arange(-2, 4, device=v.device)  # (P, 6)
    w = torch.exp(-2 * (x[:, None] - idx) ** 2) * ((idx >= 0) & (idx < bins))  # exp(-d^2 / (2 (1/2)^2))
    w = w / (w.sum(1, keepdim=True) + 1e-12)
    return v.new_zeros(v.shape[0], bins).scatter_add(1, idx.clamp(0, bins - 1), w)


def mutual_information(
    a: torch.Tensor, b: torch.Tensor, bins: int = 32, weights_b: torch.Tensor | None = None
) -> torch.Tensor:
    """Scalar mutual information (nats) of two intensity samples ``a``, ``b`` (P,) in [0, 1], Gaussian Parzen windows.

    Each sample spreads over ``bins`` bin centres (:func:`parzen_weights`); the joint histogram is the product of
    the two weight matrices, so the estimate is smooth in the sample values and has a gradient (Mattes et al. 2003
    use B-spline windows to the same end). ``weights_b``: ``parzen_weights(b, bins)`` when the caller has them
    (the fixed image's samples do not change while the affine is optimised).
    """
    wa = parzen_weights(a, bins)
    wb = parzen_weights(b, bins) if weights_b is None else weights_b
    joint = wa.T @ wb / a.shape[0]  # (bins, bins)
    pa, pb = joint.sum(1), joint.sum(0)
    eps = 1e-10
    return (joint * (torch.log(joint + eps) - torch.log(pa[:, None] * pb[None] + eps))).sum()


def global_ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Scalar Pearson correlation of two samples ``a``, ``b`` (P,)."""
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm() + 1e-8)


def _mi_to(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """sampled (P,) -> mutual information with ``target`` (P,), whose Parzen weights are computed once."""
    weights = parzen_weights(target)
    return lambda sampled: mutual_information(sampled, target, weights_b=weights)


def _ncc_to(target: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """sampled (P,) -> Pearson correlation with ``target`` (P,)."""
    return lambda sampled: global_ncc(sampled, target)


@dataclass(frozen=True)
class AffineResult:
    """A world-to-world affine: fixed-image point x -> moving-image point ``matrix[:n, :n] @ x + matrix[:n, n]``."""

    matrix: np.ndarray  # (ndim+1, ndim+1), float64
    similarity: float  # the similarity at the finest level at the end (higher is better)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """World points (ndim, *T) mapped by the affine."""
        n = self.matrix.shape[0] - 1
        flat = points.reshape(n, -1)
        return (self.matrix[:n, :n] @ flat + self.matrix[:n, n:]).reshape(points.shape)


def affine_register(
    moving: torch.Tensor,
    moving_affine: torch.Tensor,
    fixed: torch.Tensor,
    fixed_affine: torch.Tensor,
    spacings: tuple[float, ...] = (16.0, 8.0, 4.0),
    steps: int | tuple[int, ...] = 100,
    similarity: str = "mi",
    dof: str = "affine",
    lr: float = 0.05,
    max_points: int = 20000,
) -> AffineResult:
    """The affine (:class:`AffineResult`) that maps ``fixed``'s world onto ``moving``'s, centre of mass then Adam.

    ``moving``, ``fixed`` are intensity arrays (*S) rescaled to about [0, 1] (background near 0), each with its
    index -> world affine ((ndim+1, ndim+1)). ``spacings`` are the pyramid's voxel sizes in mm, coarse to fine
    (a level finer than the fixed image's own voxels is skipped); ``steps`` Adam steps per level (one number for
    all, or one per level), with the step size decaying linearly to 0 within each level. ``similarity`` "mi" or
    "ncc"; ``dof`` "affine" (12 parameters in 3D, 6 in 2D), "translation" (centres of mass and a shift), or
    "none" (the centres of mass alone). A level with more than ``max_points`` voxels scores a fixed random
    subset of that many (seeded: the result is the same on every run), as ANTs samples its MI metric.
    """
    if similarity not in ("mi", "ncc"):
        raise ValueError(f'affine similarity must be "mi" or "ncc", got {similarity!r}')
    if dof not in ("affine", "translation", "none"):
        raise ValueError(f'affine dof must be "affine", "translation" or "none", got {dof!r}')
    ndim = fixed.ndim
    dtype = torch.float64
    moving, fixed = moving.to(dtype), fixed.to(dtype)
    moving_affine, fixed_affine = moving_affine.to(dtype), fixed_affine.to(dtype)
    c_f = centre_of_mass(fixed, fixed_affine)
    c_m = centre_of_mass(moving, moving_affine)
    linear = torch.zeros(ndim, ndim, dtype=dtype, requires_grad=True)
    shift = torch.zeros(ndim, dtype=dtype, requires_grad=True)
    fixed_voxel = float(torch.linalg.norm(fixed_affine[:ndim, :ndim], dim=0).min())
    levels = [s for s in spacings if s >= fixed_voxel * 0.999] or [fixed_voxel]
    per_level = [steps] * len(levels) if isinstance(steps, int) else list(steps)[-len(levels) :]
    params = {"affine": [linear, shift], "translation": [shift], "none": []}[dof]
    similarity_fn = _mi_to if similarity == "mi" else _ncc_to

    def matrix(scale: float) -> torch.Tensor:
        a = torch.eye(ndim, dtype=dtype) + linear
        bottom = torch.eye(ndim + 1, dtype=dtype)[ndim:]
        return torch.cat([torch.cat([a, (c_m + scale * shift - a @ c_f)[:, None]], 1), bottom], 0)

    with torch.enable_grad():  # callers may run under torch.no_grad (register does)
        value, scale = _optimise(levels, per_level, fixed, fixed_affine, moving, moving_affine, params, shift, matrix,
                                 similarity_fn, lr, max_points)  # fmt: skip
    with torch.no_grad():
        return AffineResult(matrix(scale).detach().cpu().numpy(), value)


def _optimise(levels, per_level, fixed, fixed_affine, moving, moving_affine, params, shift, matrix, similarity_fn,
              lr, max_points) -> tuple[float, float]:  # fmt: skip
    """The coarse-to-fine Adam loop of :func:`affine_register`; returns (final similarity, last level's spacing)."""
    ndim = fixed.ndim
    value = float("nan")
    scale = levels[0]
    for spacing, n_steps in zip(levels, per_level):
        f_data, f_aff = downsample(fixed, fixed_affine, spacing)
        m_data, m_aff = downsample(moving, moving_affine, spacing)
        points = world_grid(tuple(f_data.shape), f_aff).reshape(ndim, -1)
        target = f_data.flatten().clamp(0, 1)
        if points.shape[1] > max_points:
            keep = torch.randperm(points.shape[1], generator=torch.Generator().manual_seed(0))[:max_points]
            points, target = points[:, keep], target[keep]
        score = similarity_fn(target)  # sampled (P,) -> similarity to this level's fixed samples
        with torch.no_grad():  # keep the shift in mm while its unit changes with the level
            shift *= scale / spacing
        scale = spacing
        optimizer = torch.optim.Adam(params, lr=lr) if params else None
        for step in range(n_steps + 1):
            m_mat = matrix(scale)
            mapped = m_mat[:ndim, :ndim] @ points + m_mat[:ndim, ndim:]
            sampled = sample_world(m_data[None], m_aff, mapped)[0].clamp(0, 1)
            s = score(sampled)
            value = float(s.detach())
            if step == n_steps or optimizer is None:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr * (1 - step / n_steps)
            optimizer.zero_grad()
            (-s).backward()
            optimizer.step()
    return value, scale
