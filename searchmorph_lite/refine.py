"""Test-time refinement (instance optimisation): Adam on one pair, coarse to fine, from the network's field.

Learn2Reg's strongest methods (e.g. ConvexAdam, Siebert et al. 2021) do not trust a network's field as final:
they minimise the registration loss on the pair itself. We minimise the model's own training loss (eq. 9),
L_sim(warp(M, phi), F) + alpha * L_reg(phi), plus a barrier on folding, fold_weight * mean(relu(0.1 - det J)),
over phi = phi_net + r. Like ConvexAdam and ANTs, the residual r is found coarse to fine: on an image pyramid
(``levels`` levels, each half the size of the next, the images averaged down), each level optimises a residual
on a grid half its own size, smoothed by two box filters (``smoothing`` pixels wide) before it is upsampled; what
a level found is the next level's start. Coarse levels cost a quarter as much per level up and move the large
misalignments, the finest level the details. A level's result is kept only if it lowers the full-size loss, and
on the finest level the field of lowest loss among those visited is kept, so refinement never raises the loss
and step 0 is exactly the network's field.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_finite, check_flow, check_image, check_same_spatial
from ._nd import nd
from .losses import registration_loss, similarity_loss
from .transform import warp

# a pyramid level whose smallest side would fall below this many pixels is skipped (its steps go to finer ones)
MIN_LEVEL_SIDE = 8
# Refinement's settings where neither the caller nor a model's metadata gives them (refine_flow's defaults, and what
# register runs when the model's metadata has no training config, refine_lr or refine_levels): the one place.
REFINE_DEFAULTS = {"similarity": "lncc", "alpha": 2.0, "lr": 2.0, "levels": 3, "smoothing": 3, "fold_weight": 10.0}
# More steps only cost time: a few hundred converge (register, the CLI and a checkpoint's refine_steps).
MAX_REFINE_STEPS = 10000


def refinement_loss(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    flow: torch.Tensor,
    similarity: str,
    alpha: float,
    fold_weight: float = 0.0,
) -> torch.Tensor:
    """Scalar :func:`~searchmorph_lite.losses.registration_loss` of ``flow`` on the pair (moving, fixed): eq. 9,
    + fold_weight * mean(relu(0.1 - det J)) when ``fold_weight`` > 0, of warp(moving, flow). What refinement
    minimises."""
    return registration_loss(warp(moving, flow), fixed, flow, similarity, alpha, fold_weight)


def _smooth(field: torch.Tensor, width: int) -> torch.Tensor:
    """``field`` (B, C, *S) after two box filters ``width`` pixels wide (same size; 1: unchanged)."""
    if width <= 1:
        return field
    pool = nd(field.ndim - 2).avg_pool
    for _ in range(2):
        field = pool(field, width, stride=1, padding=width // 2, count_include_pad=False)
    return field


def _level_factors(spatial: tuple[int, ...], levels: int) -> list[int]:
    """Downsampling factors coarse to fine (..., 4, 2, 1), without those that make a side < MIN_LEVEL_SIDE."""
    factors = [2**k for k in reversed(range(levels))]
    return [d for d in factors if d == 1 or min(spatial) // d >= MIN_LEVEL_SIDE]


def refine_flow(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    flow: torch.Tensor,
    steps: int,
    similarity: str = REFINE_DEFAULTS["similarity"],
    alpha: float = REFINE_DEFAULTS["alpha"],
    lr: float = REFINE_DEFAULTS["lr"],
    levels: int = REFINE_DEFAULTS["levels"],
    smoothing: int = REFINE_DEFAULTS["smoothing"],
    fold_weight: float = REFINE_DEFAULTS["fold_weight"],
) -> torch.Tensor:
    """Refined field (B, ndim, *S): ``flow`` after ``steps`` Adam steps in all on the pair (moving, fixed).

    ``moving``, ``fixed`` are (B, C, *S) images as the model saw them (normalized). The steps are split evenly
    over ``levels`` pyramid levels (factors 2^(levels-1), ..., 2, 1; the coarser ones get the remainder; levels
    with a side under 8 pixels are skipped). ``lr`` is in full-size pixels per step (Adam's steps are about
    ``lr`` in size). The loss is :func:`refinement_loss` with ``similarity``, ``alpha`` and ``fold_weight``; the
    returned field never has a higher full-size loss than ``flow`` (step 0); with a batch, the loss (and so the
    choice) is the batch mean. Detached; runs with gradients enabled even inside ``torch.no_grad()``.
    """
    for x, name in ((moving, "moving"), (fixed, "fixed"), (flow, "flow")):
        check_image(x, name)
        check_finite(x, name)
    check_flow(flow)
    check_same_spatial(moving, flow, "moving", "flow")
    check_same_spatial(fixed, flow, "fixed", "flow")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"refine steps must be a non-negative integer, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"refine lr must be a positive number, got {lr!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 6:
        raise ValueError(f"refine levels must be an integer from 1 to 6, got {levels!r}")
    if isinstance(smoothing, bool) or not isinstance(smoothing, int) or smoothing < 1 or smoothing % 2 == 0:
        raise ValueError(f"refine smoothing must be an odd integer >= 1 (pixels), got {smoothing!r}")
    if not (isinstance(fold_weight, (int, float)) and fold_weight >= 0):
        raise ValueError(f"refine fold_weight must be a number >= 0, got {fold_weight!r}")
    similarity_loss(similarity)  # raises for unknown names
    best = flow.detach()
    if steps == 0:
        return best
    spatial = tuple(flow.shape[2:])
    layers = nd(flow.ndim - 2)
    factors = _level_factors(spatial, levels)
    per_level = [steps // len(factors) + (i < steps % len(factors)) for i in range(len(factors))]

    def full_loss(field: torch.Tensor) -> float:
        return refinement_loss(moving, fixed, field, similarity, alpha, fold_weight).item()

    def upsample(field: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
        return F.interpolate(field, size=size, mode=layers.linear_mode, align_corners=False)

    with torch.enable_grad():
        best_loss = full_loss(best)
        for d, level_steps in zip(factors, per_level):
            if level_steps == 0:
                continue
            if d > 1:  # the pair and the field at 1/d size; displacements in that level's pixels
                m_d = layers.avg_pool(moving, d, ceil_mode=True)
                f_d = layers.avg_pool(fixed, d, ceil_mode=True)
                base = F.interpolate(best, size=tuple(m_d.shape[2:]), mode="area") / d
            else:
                m_d, f_d, base = moving, fixed, best
            size = tuple(m_d.shape[2:])
            residual = torch.zeros(
                flow.shape[0], flow.shape[1], *((n + 1) // 2 for n in size), device=flow.device, dtype=flow.dtype
            )
            residual.requires_grad_(True)
            optimizer = torch.optim.Adam([residual], lr=lr / d)
            for step in range(level_steps + (d == 1)):
                current = base + upsample(_smooth(residual, smoothing), size)
                loss = refinement_loss(m_d, f_d, current, similarity, alpha, fold_weight)
                if d == 1 and step > 0 and loss.item() < best_loss:  # the finest level: the best field visited
                    best_loss, best = loss.item(), current.detach()
                if step < level_steps:
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
            if d > 1:  # a coarse level's residual, upsampled to full size in full-size pixels, if it helps
                with torch.no_grad():
                    candidate = best + d * upsample(upsample(_smooth(residual, smoothing), size), spatial)
                candidate_loss = full_loss(candidate)
                if candidate_loss < best_loss:
                    best_loss, best = candidate_loss, candidate
    return best
