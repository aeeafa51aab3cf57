"""Axial slices of the MNI152 2009a template that ships inside nilearn's wheel (no network), cropped to 192 x 160.

Both brain datasets read the template through :func:`axial_slices`: ``brain2d`` (a slab around one atlas slice)
and ``brain2d-subjects`` (every slice, for virtual subjects). Orientation: rows run anterior (top) to posterior,
columns from the subject's left to right (the neurological convention, x increasing as in MNI space).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NATIVE_SIZE = (192, 160)
LABEL_NAMES = ("background", "csf_and_other_brain", "grey_matter", "white_matter")


def axial_slices(z_mm: Sequence[int]) -> dict[str, np.ndarray]:
    """Slices at MNI z (mm): "t1", "p_gm", "p_wm" (S, 192, 160) float32 in [0, 1], "brain", "labels" uint8.

    One crop window, centred on the whole brain's bounding box, for every slice, so slices stay aligned. The brain
    is the template's mask with holes filled; T1 and the GM/WM probabilities are zero outside it. Labels: 0
    background, 1 CSF and other brain, 2 grey matter, 3 white matter, the argmax of (1 - p_GM - p_WM, p_GM, p_WM).
    """
    from nilearn import datasets  # lazy: nilearn takes a second to import
    from scipy import ndimage as ndi

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(t1_img.get_fdata(dtype=np.float32))
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(dtype=np.float32))
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(dtype=np.float32))
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata(dtype=np.float32)) > 0.5
    if not (t1.shape == gm.shape == wm.shape == mask.shape):
        raise ValueError(f"MNI152 maps disagree in shape: {t1.shape}, {gm.shape}, {wm.shape}, {mask.shape}")
    # Voxel index of each slice from the affine (z_mm = affine[2] @ [i, j, k, 1]).
    ks = [int(round(np.linalg.solve(t1_img.affine, np.array([0.0, 0.0, z, 1.0]))[2])) for z in z_mm]
    if min(ks) < 0 or max(ks) >= t1.shape[2]:
        raise ValueError(f"z from {min(z_mm)} to {max(z_mm)} mm leaves the template (slices 0..{t1.shape[2] - 1})")

    def to_rows_cols(vol: np.ndarray) -> np.ndarray:
        # (x, y, k) -> (k, y flipped so anterior is row 0, x)
        return np.ascontiguousarray(vol[:, :, ks].transpose(2, 1, 0)[:, ::-1, :])

    ys = np.nonzero(mask.any(axis=(0, 2)))[0]
    xs = np.nonzero(mask.any(axis=(1, 2)))[0]
    n_y = t1.shape[1]
    row_c = (n_y - 1 - ys.max() + n_y - 1 - ys.min()) // 2
    col_c = (xs.min() + xs.max()) // 2
    h, w = NATIVE_SIZE
    r0, c0 = row_c - h // 2, col_c - w // 2

    def crop(stack: np.ndarray) -> np.ndarray:
        padded = np.pad(stack, [(0, 0), (h, h), (w, w)])
        return padded[:, r0 + h : r0 + 2 * h, c0 + w : c0 + 2 * w]

    t1s, gms, wms, masks = (crop(to_rows_cols(v)) for v in (t1, gm, wm, mask.astype(np.float32)))
    brain = np.stack([ndi.binary_fill_holes(m > 0.5) for m in masks])
    csf = np.clip(1.0 - gms - wms, 0.0, 1.0)
    labels = np.where(brain, 1 + np.argmax(np.stack([csf, gms, wms]), axis=0), 0).astype(np.uint8)
    return {
        "t1": np.clip(t1s * brain, 0.0, 1.0).astype(np.float32),
        "p_gm": (np.clip(gms, 0, 1) * brain).astype(np.float32),
        "p_wm": (np.clip(wms, 0, 1) * brain).astype(np.float32),
        "brain": brain.astype(np.uint8),
        "labels": labels,
    }


def frame(options: dict) -> dict:
    """The model frame of a run on this dataset: rows anterior to posterior ("P"), columns left to right ("R"),
    192 x 160 pixels of 1 mm (``image_size`` rescales the pixel: 96 x 80 pixels are 2 mm), as
    :func:`mni152.axial_slices` cuts them. ``searchmorph register`` brings 2D NIfTI images into this frame."""
    from .common import as_size  # lazy: common imports torch

    size = as_size(options.get("image_size", NATIVE_SIZE))
    return {
        "axcodes": ["P", "R"],
        "voxel_mm": [NATIVE_SIZE[0] / size[0], NATIVE_SIZE[1] / size[1]],
        "shape": list(size),
    }
