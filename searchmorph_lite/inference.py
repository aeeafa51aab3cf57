"""Register one pair with a trained model: arrays in, arrays out, any image size, 2D or 3D."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ._checks import check_iterations
from .base import RegistrationModel
from .refine import MAX_REFINE_STEPS, REFINE_DEFAULTS, refine_flow
from .transform import warp

# Registration computes in float32 (the models' weights) and writes float32 NIfTI: larger values overflow.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def to_image_tensor(x, name: str, ndim: int = 2) -> torch.Tensor:
    """Float64 tensor (*S) with ``ndim`` axes from a numpy array or tensor; leading size-1 axes are dropped.

    ValueError when ``x`` is not real-valued numeric (complex images are refused: which part to register is the
    caller's choice, e.g. ``np.abs``), has another number of axes, a side under 2 pixels, NaN / inf, or values
    beyond float32's range (registration computes in float32).
    """
    kind = {2: "2D image (H, W)", 3: "3D volume (D, H, W)"}[ndim]
    if isinstance(x, np.ndarray):
        if np.iscomplexobj(x):
            raise ValueError(f"{name} is complex-valued ({x.dtype}); pass a real image, e.g. np.abs({name})")
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise ValueError(f"{name} must be a numeric array, got dtype {x.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    elif isinstance(x, torch.Tensor):
        if x.is_complex():
            raise ValueError(f"{name} is complex-valued ({x.dtype}); pass a real image, e.g. {name}.abs()")
        t = x.detach().cpu().double()
    else:
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    while t.ndim > ndim and t.shape[0] == 1:  # accept (1, *S) and (1, 1, *S)
        t = t[0]
    if t.ndim != ndim:
        raise ValueError(f"{name} must be a {kind}, got shape {tuple(x.shape)}")
    if min(t.shape) < 2:
        raise ValueError(f"{name} must be at least 2 pixels along every axis, got {tuple(t.shape)}")
    finite = torch.isfinite(t)
    if not finite.all():
        raise ValueError(f"{name} contains NaN or inf values ({int((~finite).sum())} of {t.numel()})")
    largest = float(t.abs().max())
    if largest > FLOAT32_MAX:
        raise ValueError(
            f"{name} has values too large to register (largest |value| {largest:.3g}, float32 holds up to "
            f"{FLOAT32_MAX:.3g}); rescale the image, e.g. divide it by its maximum"
        )
    return t


def forward_kwargs(model: RegistrationModel, iterations: int | None = None) -> dict:
    """Keyword arguments for ``model(moving, fixed, **kw)`` at inference: the checked ``iterations`` and
    ``keep_flows=False``, so memory does not grow with the iteration count."""
    kwargs = {} if iterations is None else {"iterations": check_iterations(iterations)}
    if kwargs and getattr(getattr(model, "config", None), "iterations", None) is None:
        raise ValueError(
            f"iterations (--iterations) is {iterations}, but a {type(model).__name__} has no iterations: it predicts "
            f"its field in one pass; leave the option out"
        )
    return {**kwargs, "keep_flows": False}  # part of RegistrationModel's contract


def check_weights(model: torch.nn.Module) -> None:
    """Raise ValueError when a weight of ``model`` holds NaN or inf (a broken model, not a bad image)."""
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise ValueError(f"the model's weight {key!r} holds NaN or inf values: the model is broken")


def normalize_intensity(image: torch.Tensor, low: float = 0.0, high: float = 99.5) -> torch.Tensor:
    """Image rescaled to [0, 1] between its ``low`` and ``high`` intensity percentiles (clipped)."""
    lo = torch.quantile(image.flatten(), low / 100)
    hi = torch.quantile(image.flatten(), high / 100)
    if hi <= lo:
        hi = image.max()
        lo = image.min()
    if hi <= lo:
        return torch.zeros_like(image)
    if not torch.isfinite(hi - lo):
        raise ValueError(f"image values too large to normalize (range {float(lo):.3g} to {float(hi):.3g} overflows)")
    return ((image - lo) / (hi - lo)).clamp(0, 1)


def centred_padding(shape: tuple[int, ...], multiple: int) -> list[tuple[int, int]]:
    """(before, after) zero padding per axis that makes every side of ``shape`` divisible by ``multiple``."""
    return [(((-n) % multiple) // 2, (-n) % multiple - ((-n) % multiple) // 2) for n in shape]


def refine_settings(model: RegistrationModel, refine_steps: int | str) -> tuple[int, dict]:
    """(steps, {"similarity", "alpha", "lr", "levels"}) for ``register``'s refinement, from ``refine_steps`` and
    the model's metadata; ValueError for anything but an integer in [0, 10000] or "auto"."""
    metadata = getattr(model, "metadata", None) or {}
    if refine_steps == "auto":
        refine_steps = int(metadata.get("refine_steps", 0))
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, (int, np.integer)) or refine_steps < 0:
        raise ValueError(f'refine_steps must be an integer >= 0 or "auto", got {refine_steps!r}')
    if refine_steps > MAX_REFINE_STEPS:
        raise ValueError(f"refine_steps={refine_steps} is more than {MAX_REFINE_STEPS}; a few hundred steps converge")
    train_config = metadata.get("train_config", {}) if isinstance(metadata.get("train_config"), dict) else {}
    options = {
        "similarity": train_config.get("similarity", REFINE_DEFAULTS["similarity"]),
        "alpha": float(train_config.get("alpha", REFINE_DEFAULTS["alpha"])),
        "lr": float(metadata.get("refine_lr", REFINE_DEFAULTS["lr"])),
        "levels": int(metadata.get("refine_levels", REFINE_DEFAULTS["levels"])),
    }
    return int(refine_steps), options


def _is_nifti(x) -> bool:
    """True for what the physical-space pipeline takes: a path (str or os.PathLike) or a nibabel image."""
    import os

    if isinstance(x, (str, os.PathLike)):
        return True
    try:
        import nibabel as nib
    except ImportError:
        return False
    return isinstance(x, nib.spatialimages.SpatialImage)


@torch.no_grad()
def network_flow(
    moving: torch.Tensor, fixed: torch.Tensor, model: RegistrationModel, iterations: int | None = None
) -> torch.Tensor:
    """The model's field (1, ndim, *S) for one normalized pair ``moving``, ``fixed`` (*S) on the model's device.

    The images are zero-padded (centred) to the model's ``size_multiple``, registered in eval mode, and the field
    is cropped back; ValueError when it holds NaN or inf.
    """
    kwargs = forward_kwargs(model, iterations)
    padding = centred_padding(tuple(moving.shape), model.size_multiple)
    pad = [n for before_after in reversed(padding) for n in before_after]  # F.pad wants the last axis first
    was_training = model.training
    model.eval()
    try:
        result = model(F.pad(moving[None, None], pad), F.pad(fixed[None, None], pad), **kwargs)
    finally:
        model.train(was_training)
    if not torch.isfinite(result.flow).all():
        raise ValueError("the model returned NaN or inf displacements for this pair; the output was not written")
    crop = tuple(slice(before, before + n) for (before, _), n in zip(padding, moving.shape))
    return result.flow[(slice(None), slice(None), *crop)]


@torch.no_grad()
def register(
    moving,
    fixed,
    model: RegistrationModel,
    normalize: bool = True,
    iterations: int | None = None,
    refine_steps: int | str = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(warped (*S), flow (ndim, *S)) as numpy: ``moving`` registered to ``fixed`` by ``model``.

    Inputs are numpy arrays or tensors of the same size with the model's number of axes (``model.ndim``: 2D
    images, or 3D volumes for a 3D model), any size. With ``normalize`` each image is rescaled to [0, 1]
    (percentiles 0 and 99.5) as the models were trained; the images are zero-padded (centred) to the model's
    ``size_multiple``, registered, and cropped back. ``warped`` is the original (unnormalized) moving image
    resampled by the field, so it keeps the input's intensities. ``iterations`` (at most 1000) overrides the
    model's; only the last field is kept, so memory does not grow with it.

    ``refine_steps`` N > 0 refines the network's field on this pair for N Adam steps in all, coarse to fine, of
    the model's own training loss plus a folding barrier (:func:`searchmorph_lite.refine.refine_flow`; similarity
    and alpha from ``model.metadata``'s training config, else LNCC and 2; Adam lr 2 px and 3 pyramid levels, or
    ``metadata["refine_lr"]`` and ``["refine_levels"]``); "auto" takes ``model.metadata["refine_steps"]`` (0 when
    absent). 0 is the network.

    NIfTI paths or nibabel images instead of arrays take the physical-space pipeline
    (:func:`searchmorph_lite.pipeline.register_images`: affine, the model's frame, one composed transform) and
    return (the warped moving image as a nibabel image on the fixed grid, the :class:`~.pipeline.Registration`).
    """
    if _is_nifti(moving) or _is_nifti(fixed):
        from .pipeline import register_images

        if not isinstance(model, RegistrationModel):
            raise ValueError(f"model must be a searchmorph_lite registration model, got {type(model).__name__}")
        reg = register_images(moving, fixed, model, iterations=iterations, refine_steps=refine_steps)
        return reg.to_nifti(reg.apply()), reg
    for name, x in (("moving", moving), ("fixed", fixed)):
        if isinstance(x, np.ma.MaskedArray):
            raise ValueError(
                f"{name} is a numpy masked array, and registration takes no mask: pass {name}.filled(0) to register "
                f"its masked voxels as background, or {name}.data to use them as they are"
            )
    if not isinstance(model, RegistrationModel):
        raise ValueError(
            f"model must be a searchmorph_lite registration model (SearchMorph, VoxelMorph, or "
            f"load_pretrained/load_checkpoint), got {type(model).__name__}"
        )
    check_iterations_arg = forward_kwargs(model, iterations)  # noqa: F841 (checks iterations before any work)
    steps, refine_options = refine_settings(model, refine_steps)
    check_weights(model)
    m = to_image_tensor(moving, "moving", model.ndim)
    f = to_image_tensor(fixed, "fixed", model.ndim)
    if m.shape != f.shape:
        raise ValueError(f"moving and fixed differ in shape: {tuple(m.shape)} vs {tuple(f.shape)}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    m_in = normalize_intensity(m) if normalize else m
    f_in = normalize_intensity(f) if normalize else f
    as_model = {"device": device, "dtype": dtype}
    flow = network_flow(m_in.to(**as_model), f_in.to(**as_model), model, iterations)
    if steps:
        flow = refine_flow(
            m_in[None, None].to(**as_model), f_in[None, None].to(**as_model), flow, steps, **refine_options
        )
    flow = flow.double().cpu()
    warped = warp(m[None, None], flow)
    return warped[0, 0].numpy(), flow[0].numpy()
