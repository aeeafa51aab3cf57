"""What every registration model here shares: the result type and a base class with the input checks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ._checks import check_finite, check_image, check_same_spatial


@dataclass
class RegistrationResult:
    """What a registration model returns: the final field, the warped moving image, and every iteration's field.

    flow: (B, ndim, *S) in full-resolution pixels; warped: (B, C, *S); flows: list of (B, ndim, *S);
    velocity: the stationary velocity field (B, ndim, *S) whose exponential is ``flow`` for diffeomorphic models,
    else None.
    """

    flow: torch.Tensor
    warped: torch.Tensor
    flows: list[torch.Tensor] = field(default_factory=list)
    velocity: torch.Tensor | None = None


class RegistrationModel(nn.Module):
    """Base of SearchMorph and VoxelMorph: ``model(moving, fixed)`` with images (B, C, *S) -> RegistrationResult.

    A subclass sets ``ndim`` (2 or 3 spatial axes), ``in_channels`` and ``size_multiple`` (every side of the
    input must divide by it), calls :meth:`check_inputs` first in ``forward``, and returns a RegistrationResult.
    Its ``forward`` takes ``iterations`` (None: its own count; a one-shot model ignores it) and ``keep_flows``
    (False: ``flows`` may hold only the last field, so inference memory does not grow with the iterations).
    ``searchmorph_lite.register`` relies on exactly these attributes and arguments.
    """

    ndim: int = 2
    in_channels: int = 1
    size_multiple: int = 1

    def check_inputs(self, moving: torch.Tensor, fixed: torch.Tensor) -> None:
        """Raise ValueError for inputs this model cannot register (shape, channels, size multiple, NaN)."""
        check_image(moving, "moving", ndim=self.ndim)
        check_image(fixed, "fixed", ndim=self.ndim)
        check_same_spatial(moving, fixed, "moving", "fixed")
        for name, x in (("moving", moving), ("fixed", fixed)):
            if x.shape[1] != self.in_channels:
                raise ValueError(
                    f"this {type(self).__name__} takes images of {self.in_channels} channel(s) (its config's "
                    f"in_channels), but {name} has {x.shape[1]}: register such images with a model built or trained "
                    f"for them"
                )
        if any(n % self.size_multiple for n in moving.shape[2:]):
            raise ValueError(
                f"image size {tuple(moving.shape[2:])} must be divisible by {self.size_multiple}; "
                "pad it (searchmorph_lite.register does this for you)"
            )
        check_finite(moving, "moving")  # the model's entry is an edge: the inner functions check shapes only
        check_finite(fixed, "fixed")

    def forward(
        self, moving: torch.Tensor, fixed: torch.Tensor, iterations: int | None = None, keep_flows: bool = True
    ) -> RegistrationResult:
        raise NotImplementedError
