"""Float32 islands under mixed precision (``TrainConfig.amp``): what autocast must not lower.

Autocast runs convolutions and matrix products in bfloat16 or float16. The convolutions of the networks can take
that; three things here cannot, and run in float32 inside :func:`full_precision`:

* positions: the field and its sum over iterations, the search positions and every warp. bfloat16 keeps 8 bits of
  mantissa, so a position of 150 pixels would be rounded to a whole pixel;
* the correlations of eq. 1-3, sums of products of features;
* the loss (eq. 9): local NCC's variances are differences of box sums (cancellation, eps 1e-5), and det J is a
  difference of products of the field's derivatives.

Without autocast both helpers change nothing: the float32 path is the same code, bit for bit.
"""

from __future__ import annotations

import contextlib

import torch


def full_precision(like: torch.Tensor) -> contextlib.AbstractContextManager:
    """A context in which autocast is off on ``like``'s device; a no-op context where autocast is not on."""
    kind = like.device.type
    return torch.autocast(kind, enabled=False) if torch.is_autocast_enabled(kind) else contextlib.nullcontext()


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` (any shape) in float32 when it is a narrower float (bfloat16, float16), else ``x`` itself."""
    return x.float() if x.is_floating_point() and torch.finfo(x.dtype).bits < 32 else x
