"""Register one 2D pair with a trained model: arrays in, arrays out, any image size."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .transform import warp


def _to_2d_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"{name} must be a numeric array, got dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    elif isinstance(x, torch.Tensor):
        t = x.detach().cpu().double()
    else:
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    while t.ndim > 2 and t.shape[0] == 1:  # accept (1, H, W) and (1, 1, H, W)
        t = t[0]
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2D image (H, W), got shape {tuple(x.shape)}")
    if min(t.shape) < 2:
        raise ValueError(f"{name} must be at least 2 x 2 pixels, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return t


def normalize_intensity(image: torch.Tensor, low: float = 0.0, high: float = 99.5) -> torch.Tensor:
    """Image rescaled to [0, 1] between its ``low`` and ``high`` intensity percentiles (clipped)."""
    lo = torch.quantile(image.flatten(), low / 100)
    hi = torch.quantile(image.flatten(), high / 100)
    if hi <= lo:
        hi = image.max()
        lo = image.min()
    if hi <= lo:
        return torch.zeros_like(image)
    return ((image - lo) / (hi - lo)).clamp(0, 1)


@torch.no_grad()
def register(
    moving, fixed, model: nn.Module, normalize: bool = True, iterations: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(warped (H, W), flow (2, H, W)) as numpy: ``moving`` registered to ``fixed`` by ``model``.

    Inputs are 2D numpy arrays or tensors of the same size, any H x W. With ``normalize`` each image is
    rescaled to [0, 1] (percentiles 0 and 99.5) as the models were trained; the images are zero-padded to
    the model's size multiple, registered, and cropped back. ``warped`` is the original (unnormalized) moving
    image resampled by the field, so it keeps the input's intensities.
    """
    m = _to_2d_tensor(moving, "moving")
    f = _to_2d_tensor(fixed, "fixed")
    if m.shape != f.shape:
        raise ValueError(f"moving and fixed differ in shape: {tuple(m.shape)} vs {tuple(f.shape)}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    m_in = normalize_intensity(m) if normalize else m
    f_in = normalize_intensity(f) if normalize else f
    h, w = m.shape
    mult = getattr(model, "size_multiple", 16)
    ph, pw = (-h) % mult, (-w) % mult
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)  # centre the image in the padded canvas

    def prep(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t[None, None].to(device=device, dtype=dtype), pad)

    was_training = model.training
    model.eval()
    try:
        kwargs = {} if iterations is None else {"iterations": iterations}
        result = model(prep(m_in), prep(f_in), **kwargs)
    finally:
        model.train(was_training)
    flow = result.flow[:, :, pad[2] : pad[2] + h, pad[0] : pad[0] + w].double().cpu()
    warped = warp(m[None, None], flow)
    return warped[0, 0].numpy(), flow[0].numpy()
