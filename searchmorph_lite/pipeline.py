"""Registering real images in physical space: any orientation and voxel size in, the fixed image's grid out.

``register`` on arrays registers voxel to voxel. Real scans are not like that: two NIfTI brains from two scanners
differ in axis order, voxel size, field of view and head position, and a network trained at 4 mm in one axis
order meets none of that. Like ``mri_synthmorph``, ``unigradicon-register`` and ANTs, the pipeline here works in
world coordinates (mm, nibabel's RAS+; in 2D the two world axes of the image plane):

1. **Read** both images with their affines (:func:`read_image`); 2D files may store the plane as (H, W),
   (H, W, 1), (1, H, W) or (H, 1, W).
2. **Initial alignment** (:mod:`.affine`): centres of mass, then an affine optimised on the pair, coarse to fine.
3. **The model's frame**: a grid in the orientation, voxel size and field of view the model was trained on
   (``model.metadata["frame"]``, written by training), centred on the fixed image's foreground. The fixed image
   is resampled onto it, the moving image through the affine. The network (and refinement) run there, whatever the
   input resolution. A model without a frame (echo) runs on the fixed image's own grid.
4. **One composed transform** on the fixed image's own grid: phi(x) = T(x + R u(x)), x a fixed-grid world point,
   u the network's (refined) field on the model grid, R that grid's voxel axes, T the affine. Images are resampled
   once through phi (linear; labels nearest), and the transform is written as an ITK displacement field
   (:func:`write_itk_displacement`) that ANTs and 3D Slicer read.

Outputs carry the fixed image's header: affine, qform and sform with their codes, units.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ._checks import one_line
from .affine import AffineResult, affine_register, sample_world, world_grid
from .inference import FLOAT32_MAX, network_flow, normalize_intensity, refine_settings
from .refine import refine_flow

# nibabel's axis codes: the world axis an array index runs along, and its sign (RAS+ world)
AXIS_CODES = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0), "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}
STAGES = ("affine", "deform", "full")


@dataclass
class Image:
    """One image in physical space: ``data`` (*S) float64 with ``ndim`` axes, ``affine`` (ndim+1, ndim+1) index ->
    world mm, the nibabel image it came from (for its header), and ``world_axes``: which RAS axes the world
    coordinates are (all three in 3D; two in 2D)."""

    data: np.ndarray
    affine: np.ndarray
    nifti: object = None
    world_axes: tuple[int, ...] = (0, 1, 2)
    name: str = "image"

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def voxel_mm(self) -> np.ndarray:
        return np.linalg.norm(self.affine[: self.ndim, : self.ndim], axis=0)


def _check_affine(affine4: np.ndarray, name: str) -> None:
    if not np.isfinite(affine4).all():
        raise ValueError(f"{name} has a NaN or inf in its affine (NIfTI sform/qform); fix its header")


def as_image(source, ndim: int, name: str = "image", world_axes: tuple[int, ...] | None = None) -> Image:
    """:class:`Image` with ``ndim`` axes from a NIfTI path or nibabel image; ValueError naming ``name`` for a file
    that is not ``ndim``-D, has a singular affine, NaN/inf values or values beyond float32.

    2D: the image plane is the two axes longer than 1; its world axes are the two RAS axes the plane spans best
    (for an axial slice x and y, as ITK reads a 2D NIfTI), unless ``world_axes`` fixes them (the fixed image's, so
    that both images of a pair share one 2D world).
    """
    import nibabel as nib

    if isinstance(source, Image):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = f"{name} {source}"
        if path.is_dir():
            raise ValueError(f"{label} is a folder, not a NIfTI file")
        if not path.is_file():
            raise FileNotFoundError(f"{label}: no such file")
        try:
            img = nib.load(str(path))
            dtype = img.get_data_dtype()
        except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
            raise ValueError(f"cannot read NIfTI {source}: {one_line(err, 200)}") from None
    elif isinstance(source, nib.spatialimages.SpatialImage):
        img, label, dtype = source, name, source.get_data_dtype()
    else:
        raise ValueError(f"{name} must be a NIfTI path or a nibabel image, got {type(source).__name__}")
    if dtype.kind == "c":
        raise ValueError(f"{label} is complex-valued ({dtype}); register a real image, e.g. its magnitude")
    if dtype.fields is not None:
        raise ValueError(f"{label} holds {dtype} voxels (colour?); convert it to one grey value per voxel")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.asarray(img.get_fdata(dtype=np.float64))
    except Exception as err:
        raise ValueError(f"cannot read NIfTI {label}: {one_line(err, 200)}") from None
    affine4 = np.asarray(img.affine, dtype=np.float64)
    _check_affine(affine4, label)
    shape = tuple(int(n) for n in data.shape)
    what = {2: "a 2D image", 3: "a 3D volume"}[ndim]
    long_axes = [a for a, n in enumerate(shape) if n > 1]
    if len(shape) >= ndim and all(n == 1 for n in shape[ndim:]):
        kept = list(range(ndim))
    elif len(long_axes) == ndim:
        kept = long_axes
    else:
        raise ValueError(
            f"{label} is not {what} (the model is {ndim}D): shape {shape} has {len(long_axes)} axes longer than 1"
        )
    if max(kept) > 2:
        raise ValueError(f"{label} has shape {shape}: its axes beyond the third (time, vectors) are not a space")
    if min(shape[a] for a in kept) < 2:
        size = " x ".join(str(shape[a]) for a in kept)
        raise ValueError(f"{label} is {size} voxels: too small to register (at least 2 along every axis)")
    spatial = (shape + (1, 1, 1))[:3]
    data = data.reshape(spatial)
    columns = affine4[:3, kept]
    if ndim == 3:
        rows = [0, 1, 2]
    elif world_axes is not None:
        rows = list(world_axes)
    else:  # drop the world axis the plane's normal points along
        normal = np.cross(columns[:, 0], columns[:, 1])
        drop = int(np.argmax(np.abs(normal))) if np.abs(normal).max() > 0 else 2  # no plane: x-y, as ITK
        rows = [r for r in range(3) if r != drop]
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = columns[rows]
    affine[:ndim, ndim] = affine4[rows, 3]
    if abs(np.linalg.det(affine[:ndim, :ndim])) < 1e-9 * max(1.0, np.abs(columns).max() ** ndim):
        plane = "" if ndim == 3 else f" in the world plane of axes {''.join('xyz'[r] for r in rows)}"
        raise ValueError(
            f"{label} has a singular affine{plane} (voxel axes {np.round(columns.T, 4).tolist()}): its header does "
            f"not say where the voxels are; fix its sform/qform"
        )
    data = data.reshape([spatial[a] for a in kept])
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise ValueError(f"{label} contains NaN or inf values ({bad} of {data.size} voxels)")
    largest = float(np.abs(data).max())
    if largest > FLOAT32_MAX:
        raise ValueError(
            f"{label} has values too large to register (largest |value| {largest:.3g}, float32 holds up to "
            f"{FLOAT32_MAX:.3g}); rescale it"
        )
    return Image(data, affine, img, tuple(rows), label)


def frame_of(model) -> dict | None:
    """The model's frame ({"axcodes", "voxel_mm", "shape"}) from its metadata, or from the dataset it trained on;
    None for a model without one (it registers on the fixed image's own grid)."""
    from .data import dataset_frame

    metadata = getattr(model, "metadata", None) or {}
    frame = metadata.get("frame")
    if frame is None:
        config = metadata.get("train_config")
        if isinstance(config, dict) and isinstance(config.get("dataset"), str):
            try:
                frame = dataset_frame(config["dataset"], dict(config.get("dataset_options") or {}))
            except ValueError:
                frame = None
    if frame is None:
        return None
    axcodes = [str(c) for c in frame["axcodes"]]
    if len(axcodes) != model.ndim or len({AXIS_CODES[c][0] for c in axcodes}) != len(axcodes):
        raise ValueError(f"the model's frame axis codes {axcodes} do not name {model.ndim} distinct world axes")
    return {
        "axcodes": axcodes,
        "voxel_mm": [float(v) for v in frame["voxel_mm"]],
        "shape": [int(n) for n in frame["shape"]],
    }


def robust_unit(data: np.ndarray) -> np.ndarray:
    """``data`` rescaled so that its 0.5th..99.5th intensity percentiles of the non-zero voxels map to 0..1."""
    values = data[data != 0]
    if values.size == 0:
        return np.zeros_like(data)
    lo = min(0.0, float(np.percentile(values, 0.5)))
    hi = float(np.percentile(values, 99.5))
    if hi <= lo:
        hi = float(values.max())
    if hi <= lo:
        return np.zeros_like(data)
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def model_grid(fixed: Image, unit: np.ndarray, frame: dict, multiple: int) -> tuple[tuple[int, ...], np.ndarray]:
    """(shape, affine) of the grid the network runs on: the frame's axis order and voxel size, the frame's shape
    grown (to a multiple of ``multiple``) where the fixed image's foreground is larger, centred on that foreground
    (the 1st to 99th percentile of its voxel positions along each frame axis, as training centres on the brain)."""
    ndim = fixed.ndim
    world = fixed.world_axes
    directions = np.zeros((ndim, ndim))
    for k, code in enumerate(frame["axcodes"]):
        axis, sign = AXIS_CODES[code]
        if axis not in world:
            raise ValueError(
                f"{fixed.name} lies in the world plane of axes {''.join('xyz'[r] for r in world)}, but the model "
                f"was trained on images along {''.join(frame['axcodes'])}: register images of the model's plane"
            )
        directions[world.index(axis), k] = sign
    voxel = np.array(frame["voxel_mm"], dtype=np.float64)
    lin = directions * voxel[None]
    fg = unit > 0.1
    if not fg.any():
        fg = np.ones_like(unit, dtype=bool)
    index = np.stack(np.nonzero(fg)).astype(np.float64)
    if index.shape[1] > 200000:
        index = index[:, np.random.default_rng(0).choice(index.shape[1], 200000, replace=False)]
    points = fixed.affine[:ndim, :ndim] @ index + fixed.affine[:ndim, ndim:]
    along = np.linalg.solve(lin, points)  # positions in model-grid voxels (up to the origin)
    lo, hi = np.percentile(along, 1, axis=1), np.percentile(along, 99, axis=1)
    shape = []
    for n, extent in zip(frame["shape"], hi - lo + 1):
        size = max(int(n), int(math.ceil(extent + 4)))
        shape.append(int(math.ceil(size / multiple) * multiple))
    centre = (lo + hi) / 2
    origin_index = centre - (np.array(shape) - 1) / 2
    affine = np.eye(ndim + 1)
    affine[:ndim, :ndim] = lin
    affine[:ndim, ndim] = lin @ origin_index
    return tuple(shape), affine


@dataclass
class Registration:
    """The result of :func:`register_images`: one transform from the fixed image's world to the moving image's.

    ``displacement`` (ndim, *S_fixed) float64, world mm (RAS; in 2D the plane's two world axes): the fixed-grid
    point x maps to x + displacement(x) in the moving image's world. ``affine`` is the initial alignment alone.
    ``network_field`` is the model-grid field (voxels) and ``grid_affine`` that grid's index -> world affine.
    """

    fixed: Image
    moving: Image
    displacement: np.ndarray
    affine: AffineResult
    grid_shape: tuple[int, ...] | None = None
    grid_affine: np.ndarray | None = None
    network_field: np.ndarray | None = None
    seconds: dict = field(default_factory=dict)

    def moving_points(self) -> np.ndarray:
        """Moving-image world points (ndim, *S_fixed) each fixed voxel maps to."""
        grid = world_grid(self.fixed.data.shape, torch.from_numpy(self.fixed.affine)).numpy()
        return grid + self.displacement

    def apply(self, image=None, labels: bool = False) -> np.ndarray:
        """``image`` (default: the moving image; else a path, nibabel image or :class:`Image` in the moving image's
        space, e.g. its label map) resampled onto the fixed grid (*S_fixed): linear, or nearest with ``labels``
        (integer labels kept), 0 outside."""
        if image is None:
            image = self.moving
        elif not isinstance(image, Image):
            image = as_image(image, self.fixed.ndim, "labels" if labels else "image", self.fixed.world_axes)
        if labels:
            check_same_grid(image, self.moving)
        points = torch.from_numpy(self.moving_points())
        data = torch.from_numpy(np.ascontiguousarray(image.data))[None]
        out = sample_world(data, torch.from_numpy(image.affine), points, mode="nearest" if labels else "bilinear")
        return out[0].numpy()

    def to_nifti(self, data: np.ndarray, dtype=np.float32):
        """A nibabel image of ``data`` (*S_fixed) on the fixed image's grid, with its header (see :func:`like`)."""
        return like(self.fixed, data, dtype)


def check_same_grid(labels: Image, moving: Image) -> None:
    """ValueError unless ``labels`` lies on ``moving``'s voxel grid (same shape and affine to 1e-3 mm)."""
    if labels.data.shape != moving.data.shape or not np.allclose(labels.affine, moving.affine, atol=1e-3):
        raise ValueError(
            f"{labels.name} does not lie on the moving image's grid ({labels.data.shape} vs {moving.data.shape} "
            f"voxels, or other affines): a label map must be the moving image's own"
        )


def like(fixed: Image, data: np.ndarray, dtype=np.float32, intent: str | None = None):
    """A nibabel NIfTI image of ``data`` laid out as the fixed file (its singleton axes put back), with the fixed
    image's header: affine, qform and sform with their codes, xyzt units; ``dtype`` on disk, no scaling."""
    import nibabel as nib

    src = fixed.nifti
    shape = tuple(src.shape[:3]) if src is not None else fixed.data.shape
    extra = data.shape[fixed.ndim :]
    if extra:  # a vector image: (X, Y, Z, 1, C), as NIfTI and ITK lay one out
        shape = (shape + (1, 1, 1))[:3]
    array = np.asarray(data, dtype=dtype).reshape(*shape, *extra)
    if src is None:
        return nib.Nifti1Image(array, np.eye(4))
    header = src.header.copy() if isinstance(src, nib.Nifti1Image) else None
    img = nib.Nifti1Image(array, src.affine, header=header)
    img.set_data_dtype(dtype)
    img.header.set_slope_inter(1.0, 0.0)
    if header is not None:
        img.set_qform(src.get_qform(), code=int(src.header["qform_code"]))
        img.set_sform(src.get_sform(), code=int(src.header["sform_code"]))
        img.header.set_xyzt_units(*src.header.get_xyzt_units())
    if intent is not None:
        img.header.set_intent(intent)
    else:
        img.header.set_intent("none")
    return img


def write_itk_displacement(registration: Registration):
    """The transform as an ITK displacement field (nibabel image): what ANTs (``antsApplyTransforms``,
    ``ants.apply_transforms``) and 3D Slicer read as a transform from the fixed image's space to the moving one's.

    ITK's conventions: a vector image on the fixed image's grid (NIfTI dims (X, Y, Z, 1, 3), intent "vector"), each
    voxel's vector the displacement in world millimetres in ITK's LPS axes (x and y negated from RAS).
    """
    fixed = registration.fixed
    ndim = fixed.ndim
    disp = np.moveaxis(registration.displacement, 0, -1)  # (*S, ndim)
    lps = np.zeros((*disp.shape[:-1], 3))
    for k, axis in enumerate(fixed.world_axes):
        lps[..., axis] = disp[..., k] * (-1.0 if axis < 2 else 1.0)
    if ndim == 2 and tuple(fixed.world_axes) != (0, 1):
        raise ValueError(
            "--transform-out writes 2D fields only for images in the x-y plane (as ITK reads 2D NIfTI); this one "
            f"lies in the {''.join('xyz'[r] for r in fixed.world_axes)} plane"
        )
    components = lps if ndim == 3 else lps[..., :2]
    return like(fixed, components.reshape(*fixed.data.shape, 1, components.shape[-1]), np.float32, intent="vector")


def register_images(
    moving,
    fixed,
    model=None,
    stage: str = "full",
    iterations: int | None = None,
    refine_steps: int | str = 0,
    affine_similarity: str = "mi",
) -> Registration:
    """:class:`Registration` of ``moving`` onto ``fixed`` (NIfTI paths or nibabel images) in physical space.

    ``stage``: "affine" (the initial alignment alone, no model needed), "deform" (no affine search: the images'
    own affines align them, then the network), or "full" (affine, then the network). ``iterations`` and
    ``refine_steps`` (a number or "auto") as in :func:`searchmorph_lite.register`; refinement runs on the model's
    grid with the model's settings. The network sees both images in its frame (``model.metadata["frame"]``), the
    moving one already through the affine.
    """
    import time

    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if stage != "affine" and model is None:
        raise ValueError(f'stage {stage!r} needs a model; stage "affine" runs without one')
    ndim = model.ndim if model is not None else None
    if ndim is None:
        ndim = spatial_axes(fixed, "fixed")
    steps, refine_options = refine_settings(model, refine_steps) if model is not None else (0, {})
    fixed_img = as_image(fixed, ndim, "fixed")
    moving_img = as_image(moving, ndim, "moving", world_axes=fixed_img.world_axes)
    seconds = {}
    t0 = time.perf_counter()
    f_unit, m_unit = robust_unit(fixed_img.data), robust_unit(moving_img.data)
    f_aff, m_aff = torch.from_numpy(fixed_img.affine), torch.from_numpy(moving_img.affine)
    f_t, m_t = torch.from_numpy(f_unit), torch.from_numpy(m_unit)
    frame = frame_of(model) if model is not None else None
    finest = float(min(frame["voxel_mm"])) if frame else float(max(fixed_img.voxel_mm.min(), 1.0)) * 2
    spacings = tuple(s for s in (4 * finest, 2 * finest, finest))
    if stage == "deform":
        affine = AffineResult(np.eye(ndim + 1), float("nan"))
        _check_overlap(affine, moving_img, fixed_img, searched=False)
    else:
        affine = affine_register(m_t, m_aff, f_t, f_aff, spacings=spacings, similarity=affine_similarity)
        _check_overlap(affine, moving_img, fixed_img)
    seconds["affine"] = time.perf_counter() - t0
    T = torch.from_numpy(affine.matrix)
    fixed_points = world_grid(fixed_img.data.shape, f_aff)
    if stage == "affine":
        disp = (T[:ndim, :ndim] @ fixed_points.reshape(ndim, -1) + T[:ndim, ndim:]).reshape(fixed_points.shape)
        return Registration(fixed_img, moving_img, (disp - fixed_points).numpy(), affine, seconds=seconds)
    t0 = time.perf_counter()
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if frame is not None:
        shape, grid_affine = model_grid(fixed_img, f_unit, frame, model.size_multiple)
        g_aff = torch.from_numpy(grid_affine)
        grid_points = world_grid(shape, g_aff)
        f_grid = _sample_smooth(torch.from_numpy(fixed_img.data), f_aff, grid_points, frame["voxel_mm"])
    else:  # no frame: the fixed image's own grid
        shape, grid_affine, g_aff, grid_points = fixed_img.data.shape, fixed_img.affine, f_aff, fixed_points
        f_grid = torch.from_numpy(fixed_img.data)
    mapped = (T[:ndim, :ndim] @ grid_points.reshape(ndim, -1) + T[:ndim, ndim:]).reshape(grid_points.shape)
    m_grid = _sample_smooth(torch.from_numpy(moving_img.data), m_aff, mapped,
                            frame["voxel_mm"] if frame else fixed_img.voxel_mm)  # fmt: skip
    m_in, f_in = normalize_intensity(m_grid), normalize_intensity(f_grid)
    as_model = {"device": device, "dtype": dtype}
    flow = network_flow(m_in.to(**as_model), f_in.to(**as_model), model, iterations)
    seconds["network"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if steps:
        flow = refine_flow(m_in[None, None].to(**as_model), f_in[None, None].to(**as_model), flow, steps,
                           **refine_options)  # fmt: skip
    seconds["refine"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    u = flow[0].double().cpu()  # (ndim, *grid) in grid voxels
    # the field at each fixed voxel (linear, the grid's edge value beyond it), in world mm
    u_fixed = sample_world(u, g_aff, fixed_points, border=True)
    world_u = (g_aff[:ndim, :ndim] @ u_fixed.reshape(ndim, -1)).reshape(fixed_points.shape)
    moved = fixed_points + world_u
    target = (T[:ndim, :ndim] @ moved.reshape(ndim, -1) + T[:ndim, ndim:]).reshape(fixed_points.shape)
    seconds["compose"] = time.perf_counter() - t0
    return Registration(
        fixed_img, moving_img, (target - fixed_points).numpy(), affine, tuple(shape), np.asarray(grid_affine),
        u.numpy(), seconds,
    )  # fmt: skip


def spatial_axes(source, name: str = "image") -> int:
    """2 or 3: the number of axes longer than 1 among the first three of a NIfTI path or image."""
    import nibabel as nib

    if isinstance(source, Image):
        return source.ndim
    if isinstance(source, (str, os.PathLike)):
        try:
            source = nib.load(str(source))
        except FileNotFoundError:
            raise FileNotFoundError(f"{name} {source}: no such file") from None
        except Exception as err:
            raise ValueError(f"cannot read NIfTI {source}: {one_line(err, 200)}") from None
    n = sum(1 for k in tuple(source.shape[:3]) if k > 1)
    return 3 if n >= 3 else 2


def check_label_map(labels: Image) -> None:
    """ValueError unless ``labels`` holds whole numbers (a label map, not an image)."""
    data = labels.data
    if not np.array_equal(data, np.round(data)):
        raise ValueError(f"{labels.name} holds non-integer values: a label map has one whole number per voxel")


def _sample_smooth(data: torch.Tensor, affine: torch.Tensor, points: torch.Tensor, voxel_mm) -> torch.Tensor:
    """``data`` (*S) sampled linearly at world ``points`` (ndim, *T) after a box filter to about the target voxel
    size (so that a 1 mm image sampled at 4 mm does not alias), as float32 (*T)."""
    from .affine import downsample

    pooled, pooled_affine = downsample(data, affine, float(min(voxel_mm)))
    return sample_world(pooled[None], pooled_affine, points)[0]


def _check_overlap(affine: AffineResult, moving: Image, fixed: Image, searched: bool = True) -> None:
    """ValueError when, through ``affine``, the moving image covers less than 5 % of the fixed image's foreground
    (``searched``: the affine stage ran; else the images' own headers were trusted)."""
    ndim = fixed.ndim
    fg = robust_unit(fixed.data) > 0.1
    if not fg.any():
        raise ValueError(f"{fixed.name} is blank (no voxel above 10 % of its intensity range): nothing to register")
    idx = np.stack(np.nonzero(fg)).astype(np.float64)
    world = fixed.affine[:ndim, :ndim] @ idx + fixed.affine[:ndim, ndim:]
    mapped = affine.apply(world)
    vox = np.linalg.solve(moving.affine[:ndim, :ndim], mapped - moving.affine[:ndim, ndim:])
    inside = np.all((vox >= -0.5) & (vox <= np.array(moving.data.shape)[:, None] - 0.5), axis=0)
    if inside.mean() < 0.05:
        how = " even after the affine" if searched else ""
        hint = "" if searched else ", or let the affine stage align them (--stage full)"
        raise ValueError(
            f"{moving.name} and {fixed.name} do not overlap in physical space{how} ({100 * inside.mean():.1f} % of "
            f"the fixed foreground falls inside the moving image): check their headers (origins, orientation){hint}"
        )
