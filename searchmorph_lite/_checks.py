"""Input validation shared by the library: every public function fails early with a message naming the problem."""

from __future__ import annotations

import torch


def check_image(x: torch.Tensor, name: str, ndim: int | None = None) -> None:
    """Raise ValueError unless `x` is a finite float tensor (B, C, *spatial) with 2 or 3 spatial axes."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (4, 5):
        raise ValueError(f"{name} must have shape (B, C, H, W) or (B, C, D, H, W), got {x.ndim} dims {tuple(x.shape)}")
    if ndim is not None and x.ndim - 2 != ndim:
        raise ValueError(f"{name} must have {ndim} spatial axes, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")


def check_flow(flow: torch.Tensor, name: str = "flow") -> None:
    """Raise ValueError unless `flow` is a finite (B, ndim, *spatial) field with one channel per spatial axis."""
    check_image(flow, name)
    spatial = flow.ndim - 2
    if flow.shape[1] != spatial:
        raise ValueError(
            f"{name} must have {spatial} channels (one displacement per spatial axis) for "
            f"{spatial} spatial axes, got {flow.shape[1]} channels in shape {tuple(flow.shape)}"
        )


def check_same_spatial(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raise ValueError unless `a` and `b` have the same batch size and spatial shape."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"batch sizes differ: {name_a} has {a.shape[0]}, {name_b} has {b.shape[0]}")
    if a.shape[2:] != b.shape[2:]:
        raise ValueError(f"spatial shapes differ: {name_a} is {tuple(a.shape[2:])}, {name_b} is {tuple(b.shape[2:])}")
