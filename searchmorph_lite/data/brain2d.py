"""``brain2d``: atlas-based 2D brain MR pairs built from the MNI152 2009a template that ships inside nilearn.

What it stands in for. The paper registers the 80th slice of each LPBA40 subject to an atlas (Sec. IV.A, Table I).
LPBA40 needs a registration and a download; this dataset needs neither. The fixed image is one axial slice of the
MNI152 2009a T1 template (MNI z = +16 mm: lateral ventricles, caudate, insula), at 1 mm, cropped to 192 x 160
with the brain centred. Each moving "subject" is a neighbouring template slice (a real anatomical difference:
ventricles, sulci and deep nuclei change shape from slice to slice) under a random smooth deformation, a small
rotation/scale/shift, a bias field, a gamma change and Rician noise. Its labels are that slice's labels warped
with the same field (nearest), so every moving image comes with exact labels.

Labels (from nilearn's GM and WM probability maps and its brain mask, the template above 0.2 with holes filled):
0 background, 1 CSF and other brain (brain minus GM minus WM), 2 grey matter, 3 white matter; inside the brain
each pixel takes the argmax of (1 - p_GM - p_WM, p_GM, p_WM).

What it cannot show. Real inter-subject variability (folding patterns, ventricle size, age), scanner and
protocol differences, the 56 LPBA40 structures (we have 3 tissue classes, and the template's deep grey nuclei
mostly fall into "white matter" in nilearn's maps), and slice-position error of a 2D protocol beyond +-9 mm.
Dice values here are therefore not comparable with Table I; the ranking of methods is what the chapter uses.

Orientation: rows run anterior (top) to posterior, columns run from the subject's left to right (the
neurological convention, x increasing as in MNI space).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..transform import warp
from .common import (
    SPLIT_CODES,
    array_problem,
    as_size,
    check_positive_int,
    check_split,
    data_root,
    resize_images,
    resize_labels,
    rng_for,
    save_cache,
    single_thread,
    smooth_random_field,
    try_cache,
)
from .mni152 import LABEL_NAMES, NATIVE_SIZE, axial_slices, frame  # noqa: F401 (frame: the dataset's model frame)

ATLAS_Z_MM = 16
# Slice offsets (mm from the atlas slice) each split draws its moving subjects from. The splits share no slice,
# and val/test hold the same distances (2, 5, 8 mm) so their difficulty matches; train's mean distance is 5 mm too.
SPLIT_OFFSETS = {
    "train": (-9, -7, -6, -4, -3, -1, 1, 3, 4, 6, 7, 9),
    "val": (-5, 2, 8),
    "test": (-8, -2, 5),
}
DEFAULT_NUM_PAIRS = {"train": 400, "val": 40, "test": 40}
OPTIONS = ("seed", "num_pairs", "image_size", "max_displacement")
_CACHE_NAME = "brain2d_mni152_v1.npz"
_SLAB_KEYS = ("images", "labels", "offsets")


def build_mni152_slab(max_offset: int = 9) -> dict[str, np.ndarray]:
    """Slices around the atlas: "images" (S, 192, 160) float32 in [0, 1], "labels" (S, 192, 160) uint8, "offsets" (S,).

    The slices at MNI z = ATLAS_Z_MM +- ``max_offset`` mm, read by :func:`mni152.axial_slices` (files inside the
    nilearn wheel, no network).
    """
    offsets = np.arange(-max_offset, max_offset + 1)
    slices = axial_slices((ATLAS_Z_MM + offsets).tolist())
    return {"images": slices["t1"], "labels": slices["labels"], "offsets": offsets.astype(np.int64)}


def slab_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """Why cached slab ``arrays`` are not what :func:`build_mni152_slab` makes (shapes, dtypes, ranges), or None."""
    problem = array_problem(arrays, "images", (None, *NATIVE_SIZE))
    n = arrays["images"].shape[0]
    problem = problem or array_problem(arrays, "labels", (n, *NATIVE_SIZE), "iu")
    problem = problem or array_problem(arrays, "offsets", (n,), "iu")
    if problem:
        return problem
    if arrays["labels"].size and (arrays["labels"].min() < 0 or arrays["labels"].max() >= len(LABEL_NAMES)):
        return f"labels hold values outside 0..{len(LABEL_NAMES) - 1}"
    needed = {0, *(o for offsets in SPLIT_OFFSETS.values() for o in offsets)}
    missing = sorted(needed - {int(o) for o in arrays["offsets"]})
    return f"slice offsets {missing} are missing" if missing else None


def load_mni152_slab(cache: bool = True) -> dict[str, np.ndarray]:
    """Slab from :func:`build_mni152_slab`, read from ``<data root>/cache`` when cached (built and cached otherwise).

    A cache whose content is wrong (see :func:`slab_problem`) is rebuilt with a warning.
    """
    path = data_root() / "cache" / _CACHE_NAME
    if cache:
        arrays = try_cache(path, _SLAB_KEYS, slab_problem)
        if arrays is not None:
            return arrays
    arrays = build_mni152_slab()
    if cache:
        save_cache(path, **arrays)
    return arrays


def random_deformation(rng: np.random.Generator, shape: tuple[int, int], max_displacement: float) -> torch.Tensor:
    """Random smooth field (2, H, W) in pixels (channel 0 rows, 1 columns): elastic part plus a small similarity.

    We choose a 6 x 5 control grid upsampled bicubically (control points ~35 px apart at 192 x 160) because it
    moves whole gyri and ventricles rather than single pixels, and keeps the field free of folding at the
    default 8 px amplitude. The elastic part's largest displacement is drawn in [0.4, 1] * ``max_displacement``;
    the similarity adds at most 3 degrees of rotation, 3 % of scale and 2 px of shift (scaled with the image).
    """
    h, w = shape
    scale = (h / NATIVE_SIZE[0] + w / NATIVE_SIZE[1]) / 2
    elastic = smooth_random_field(rng, shape, grid=(6, 5), channels=2)
    norm = np.sqrt((elastic**2).sum(axis=0)).max()
    elastic *= rng.uniform(0.4, 1.0) * max_displacement / max(norm, 1e-6)

    theta = math.radians(rng.uniform(-3.0, 3.0))
    zoom = math.exp(rng.uniform(-0.03, 0.03))
    shift = rng.uniform(-2.0, 2.0, size=2) * scale
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    cr, cc = (h - 1) / 2, (w - 1) / 2
    dr, dc = rows - cr, cols - cc
    src_r = cr + zoom * (math.cos(theta) * dr - math.sin(theta) * dc) + shift[0]
    src_c = cc + zoom * (math.sin(theta) * dr + math.cos(theta) * dc) + shift[1]
    affine = np.stack([src_r - rows, src_c - cols])
    return torch.from_numpy((affine + elastic).astype(np.float32))


def random_intensity(rng: np.random.Generator, image: torch.Tensor) -> torch.Tensor:
    """Image (H, W) in [0, 1] after a gamma change, a smooth multiplicative bias field and Rician noise.

    We choose gamma in [0.78, 1.28], a bias field exp(N(0, 0.12^2)) on a 3 x 3 grid and noise sigma in
    [0.005, 0.03] because these are the ranges MRI augmentation pipelines commonly use for T1 images.
    """
    h, w = image.shape
    gamma = math.exp(rng.uniform(-0.25, 0.25))
    bias = np.exp(0.12 * smooth_random_field(rng, (h, w), grid=(3, 3))[0])
    sigma = rng.uniform(0.005, 0.03)
    n1 = rng.standard_normal((h, w)).astype(np.float32) * sigma
    n2 = rng.standard_normal((h, w)).astype(np.float32) * sigma
    x = image.clamp(0, 1).numpy() ** gamma * bias
    x = np.sqrt((x + n1) ** 2 + n2**2)  # Rician: magnitude of a complex signal with Gaussian noise
    return torch.from_numpy(np.clip(x, 0.0, 1.0).astype(np.float32))


class Brain2D(Dataset):
    """Atlas-based brain pairs: items {"moving", "fixed"} (1, H, W) float in [0, 1], label maps (1, H, W) int64.

    Items are generated on access, deterministically from (seed, split, index); nothing is stored per pair.
    Extra item keys: "subject" (str, unique over splits for one seed) and "slice_offset_mm" (int, the source
    slice's distance from the atlas slice).
    """

    num_labels = len(LABEL_NAMES)
    label_names = LABEL_NAMES

    def __init__(
        self,
        split: str,
        seed: int = 0,
        num_pairs: int | None = None,
        image_size: int | tuple[int, int] = NATIVE_SIZE,
        max_displacement: float = 8.0,
    ) -> None:
        self.split = check_split(split, name="brain2d")
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.num_pairs = DEFAULT_NUM_PAIRS[split] if num_pairs is None else check_positive_int(num_pairs, "num_pairs")
        self.image_size = as_size(image_size)
        if not (isinstance(max_displacement, (int, float)) and 0 <= max_displacement <= 40):
            raise ValueError(f"max_displacement must be a number of pixels in [0, 40], got {max_displacement!r}")
        self.max_displacement = float(max_displacement)

        slab = load_mni152_slab()
        images = torch.from_numpy(slab["images"]).unsqueeze(1)
        labels = torch.from_numpy(slab["labels"].astype(np.int64)).unsqueeze(1)
        images, labels = resize_images(images, self.image_size), resize_labels(labels, self.image_size)
        index = {int(o): i for i, o in enumerate(slab["offsets"])}
        self.offsets = SPLIT_OFFSETS[split]
        self._sources = images[[index[o] for o in self.offsets]]
        self._source_labels = labels[[index[o] for o in self.offsets]]
        self.fixed = images[index[0]]
        self.fixed_labels = labels[index[0]]
        # Displacements are set for 192 x 160; a smaller image gets proportionally smaller ones.
        self._pixel_scale = (self.image_size[0] / NATIVE_SIZE[0] + self.image_size[1] / NATIVE_SIZE[1]) / 2

    def __len__(self) -> int:
        return self.num_pairs

    def sample(self, index: int, with_flow: bool = True) -> dict[str, Any]:
        """Item ``index`` as a dict; with ``with_flow`` also "flow" (2, H, W), the field that made the moving image.

        ``moving = warp(source, flow)`` and ``moving_labels = warp(source_labels, flow, "nearest")`` before the
        intensity changes, where source is the slice at "slice_offset_mm"; "flow" is not the fixed-to-moving field.
        """
        if not 0 <= index < self.num_pairs:
            raise IndexError(f"index {index} out of range for brain2d {self.split} with {self.num_pairs} pairs")
        with single_thread():
            return self._sample(index, with_flow)

    def _sample(self, index: int, with_flow: bool) -> dict[str, Any]:
        rng = rng_for(self.seed, SPLIT_CODES[self.split], index)
        k = index % len(self.offsets)  # cycle through the split's slices so every slice is used evenly
        flow = random_deformation(rng, self.image_size, self.max_displacement * self._pixel_scale)[None]
        source = self._sources[k : k + 1]
        moving = warp(source, flow, mode="bilinear")[0, 0]
        moving_labels = warp(self._source_labels[k : k + 1].float(), flow, mode="nearest")[0].long()
        item = {
            "moving": random_intensity(rng, moving)[None],
            "fixed": self.fixed.clone(),
            "moving_labels": moving_labels,
            "fixed_labels": self.fixed_labels.clone(),
            "subject": f"brain2d-s{self.seed}-{self.split}-{index:04d}",
            "slice_offset_mm": int(self.offsets[k]),
        }
        if with_flow:
            item["flow"] = flow[0]
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index, with_flow=False)
