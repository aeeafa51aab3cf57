"""Test-time refinement (instance optimisation): a few Adam steps on one pair, starting from the network's field.

Learn2Reg's strongest methods (e.g. ConvexAdam, Siebert et al. 2021) do not trust a network's field as final:
they minimise the registration loss on the pair itself. We minimise the model's own training loss (eq. 9),
L_sim(warp(M, phi), F) + alpha * L_reg(phi), over phi = phi_net + upsample_2(r), where r is a residual at half
resolution (the resolution SearchMorph's field lives at), started at zero. So step 0 is exactly the network's
field, the residual stays as smooth as the network's own updates, and only pixels where the loss has a
gradient move. The field with the lowest loss seen is returned, so refinement never raises the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_flow, check_image, check_same_spatial
from ._nd import nd
from .losses import grad_l2_loss, similarity_loss
from .transform import warp


def refinement_loss(
    moving: torch.Tensor, fixed: torch.Tensor, flow: torch.Tensor, similarity: str, alpha: float
) -> torch.Tensor:
    """Scalar eq. 9 per batch, L_sim(warp(M, flow), F) + alpha * L_reg(flow): what refinement minimises."""
    return similarity_loss(similarity)(warp(moving, flow), fixed) + alpha * grad_l2_loss(flow)


def refine_flow(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    flow: torch.Tensor,
    steps: int,
    similarity: str = "lncc",
    alpha: float = 2.0,
    lr: float = 0.1,
) -> torch.Tensor:
    """Refined field (B, ndim, *S): ``flow`` after ``steps`` Adam steps on eq. 9 for the pair (moving, fixed).

    ``moving``, ``fixed`` are (B, C, *S) images as the model saw them (normalized); ``lr`` is in pixels per step
    (Adam's steps are about ``lr`` in size). The residual is optimised at half resolution (sides rounded up)
    and upsampled bilinearly. Returns the field of lowest loss among the ``steps + 1`` visited (step 0 is
    ``flow`` itself), detached; with a batch, the loss (and so the choice) is the batch mean. Runs with
    gradients enabled even inside ``torch.no_grad()``.
    """
    check_image(moving, "moving")
    check_image(fixed, "fixed")
    check_flow(flow)
    check_same_spatial(moving, flow, "moving", "flow")
    check_same_spatial(fixed, flow, "fixed", "flow")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"refine steps must be a non-negative integer, got {steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"refine lr must be a positive number, got {lr!r}")
    similarity_loss(similarity)  # raises for unknown names
    base = flow.detach()
    if steps == 0:
        return base
    spatial = tuple(flow.shape[2:])
    coarse = tuple((n + 1) // 2 for n in spatial)
    mode = nd(flow.ndim - 2).linear_mode
    with torch.enable_grad():
        residual = torch.zeros(flow.shape[0], flow.shape[1], *coarse, device=flow.device, dtype=flow.dtype)
        residual.requires_grad_(True)
        optimizer = torch.optim.Adam([residual], lr=lr)
        best_flow, best_loss = base, None
        for step in range(steps + 1):
            current = base + F.interpolate(residual, size=spatial, mode=mode, align_corners=False)
            loss = refinement_loss(moving, fixed, current, similarity, alpha)
            if best_loss is None or loss.item() < best_loss:
                best_loss, best_flow = loss.item(), current.detach()
            if step < steps:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return best_flow
