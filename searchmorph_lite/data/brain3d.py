"""``brain3d``: 3D brain MR pairs of virtual subjects made from the MNI152 2009a template at 2 mm (no network).

The 3D counterpart of ``brain2d-subjects`` (same recipe, one more axis). The template, its grey/white-matter
probability maps and brain mask at 2 mm ship inside nilearn's wheel (``load_mni152_*(resolution=2)``, 99 x 117 x 95
voxels). We crop them to ``NATIVE_SIZE`` = 80 x 96 x 80 (D, H, W; divisible by 16), centred on the brain's bounding
box (brain extent 78 x 90 x 73 voxels). ``voxel_mm=4`` averages 2 x 2 x 2 blocks first and crops 48 x 48 x 48
(``SIZES[4]``; brain extent 39 x 45 x 37): 5.6x fewer voxels, the size the book trains on a CPU. Axes: D runs
superior (index 0) to inferior, H anterior to posterior, W from the subject's left to right, as
``mni152.axial_slices`` orders rows and columns.

* Labels as ``brain2d``: 0 background, 1 CSF and other brain, 2 grey matter, 3 white matter.
* A pair is two virtual subjects, each under its own random affine (rotations up to 6 degrees about each axis,
  scale up to 6 %, shift up to 3 voxels) and a large- plus a small-scale smooth warp, shrunk until
  det(I + grad u) > 0.2 everywhere (never folding); contrast "t1" (random gamma) or "synthetic" (one random
  intensity per tissue, mixed by the probability maps; training's default "mixed" takes either; "inverted", a
  T2-like contrast no training pair has, is 1 - T1 inside the brain, as in ``brain2d-subjects``), then a bias
  field, blur and Rician noise per image (``artifacts``).
* Splits: every item's random stream is keyed by (seed, split, index), so train, val and test draw disjoint
  subjects; test deformations use control grids (3 x 4 x 3 and 7 x 8 x 7) that training (4 x 5 x 4 and
  6 x 7 x 6) never uses, so a test field has spatial frequencies no training field has. ``grids="unseen"``
  gives any split a third pair of grids (5 x 6 x 5 and 8 x 9 x 8) that neither training nor test uses: the
  out-of-distribution validation sets that choose a model's refinement (``training/choose_refinement.py``) use it,
  so that the choice never sees a test grid.

What it cannot show, and what makes test only moderately far from train: there is one anatomy. Every subject
is the same template deformed, so test differs from training by the deformation and the contrast draw, not by
folding patterns, ventricle size or pathology. Use LPBA40 (``lpba40``) for real inter-subject 3D variability.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..transform import warp
from .brain_subjects import add_unfolded_warps, check_subject_options
from .common import SPLIT_CODES, check_positive_int, check_split, rng_for, single_thread, smooth_random_field
from .mni152 import LABEL_NAMES

NATIVE_SIZE = (80, 96, 80)
SIZES = {2: NATIVE_SIZE, 4: (48, 48, 48)}  # voxel size in mm -> cropped volume (D, H, W), every side divisible by 16
DEFAULT_NUM_PAIRS = {"train": 64, "val": 4, "test": 8}
CONTRASTS = ("t1", "synthetic", "mixed", "inverted")
# control grids of the large- and small-scale warps: test uses sizes training never sees; "unseen" (grids="unseen")
# sizes that neither training nor test uses
GRIDS = {
    "train": ((4, 5, 4), (6, 7, 6)),
    "val": ((4, 5, 4), (6, 7, 6)),
    "test": ((3, 4, 3), (7, 8, 7)),
    "unseen": ((5, 6, 5), (8, 9, 8)),
}
GRID_CHOICES = ("split", "unseen")
OPTIONS = (
    "seed", "num_pairs", "max_displacement", "contrast", "artifacts", "voxel_mm", "residual_affine", "grids"
)  # fmt: skip


def frame(options: dict) -> dict:
    """The model frame of a brain3d run with these options: axis codes, voxel size (mm) and grid shape.

    ``searchmorph register`` brings real volumes into this frame before the network sees them: array axis 0 runs
    superior to inferior ("I"), axis 1 anterior to posterior ("P"), axis 2 from the subject's left to right ("R")
    (nibabel's axis codes name the direction an index increases towards), at ``voxel_mm`` on a grid of
    ``SIZES[voxel_mm]`` centred on the brain.
    """
    voxel = int(options.get("voxel_mm", 2))
    return {"axcodes": ["I", "P", "R"], "voxel_mm": [float(voxel)] * 3, "shape": list(SIZES.get(voxel, NATIVE_SIZE))}


def _block_mean(v: np.ndarray) -> np.ndarray:
    """Volume (D, H, W) at half resolution: the mean of each 2 x 2 x 2 block (odd sides padded with zeros)."""
    v = np.pad(v, [(0, n % 2) for n in v.shape])
    d, h, w = (n // 2 for n in v.shape)
    return v.reshape(d, 2, h, 2, w, 2).mean(axis=(1, 3, 5))


@lru_cache(maxsize=2)
def template_volumes(voxel_mm: int = 2) -> dict[str, np.ndarray]:
    """MNI152 at ``voxel_mm`` (2 or 4) cropped to SIZES[voxel_mm]: "t1", "p_gm", "p_wm" float32, "labels" uint8."""
    from nilearn import datasets
    from scipy import ndimage as ndi

    vols = [
        np.asarray(load(resolution=2).get_fdata(dtype=np.float32))
        for load in (
            datasets.load_mni152_template,
            datasets.load_mni152_gm_template,
            datasets.load_mni152_wm_template,
            datasets.load_mni152_brain_mask,
        )
    ]
    if len({v.shape for v in vols}) != 1:
        raise ValueError(f"MNI152 2 mm maps disagree in shape: {[v.shape for v in vols]}")
    # (x, y, z) -> (z flipped: superior first, y flipped: anterior first, x)
    t1, gm, wm, mask = (np.ascontiguousarray(v.transpose(2, 1, 0)[::-1, ::-1, :]) for v in vols)
    if voxel_mm == 4:
        t1, gm, wm, mask = (_block_mean(v) for v in (t1, gm, wm, mask))
    size_ = SIZES[voxel_mm]
    brain = mask > 0.5
    starts = []
    for axis, size in enumerate(size_):
        idx = np.nonzero(brain.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        starts.append((int(idx.min()) + int(idx.max())) // 2 - size // 2)

    def crop(v: np.ndarray) -> np.ndarray:
        pad = [(s, s) for s in size_]
        padded = np.pad(v, pad)
        return padded[tuple(slice(a + s, a + s + s) for a, s in zip(starts, size_))]

    t1, gm, wm = (np.clip(crop(v), 0.0, 1.0) for v in (t1, gm, wm))
    brain = ndi.binary_fill_holes(crop(brain.astype(np.float32)) > 0.5)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = np.where(brain, 1 + np.argmax(np.stack([csf, gm, wm]), axis=0), 0).astype(np.uint8)
    return {"t1": (t1 * brain).astype(np.float32), "p_gm": (gm * brain).astype(np.float32),
            "p_wm": (wm * brain).astype(np.float32), "labels": labels}  # fmt: skip


def subject_deformation_3d(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    max_displacement: float,
    grids: tuple[tuple, tuple],
    shift: float = 3.0,
    affine: float = 1.0,
) -> torch.Tensor:
    """A virtual subject's field (3, D, H, W) in voxels: affine jitter + two smooth warps, det(I + grad u) > 0.2.

    The affine part rotates up to 6 degrees per axis, scales up to 6 % and shifts up to ``shift`` voxels.
    Large scale on ``grids[0]`` with largest displacement U(0.3, 1) * ``max_displacement``, small scale on
    ``grids[1]`` with U(0, 0.25) * ``max_displacement``; the elastic part shrinks by 0.7 until it does not fold.
    ``affine`` scales the affine part's angles, log-scales and shift (the same random draws: 1 is the default
    jitter, 0.33 what is left after ``searchmorph register``'s affine stage, 0 none).
    """
    angles = [math.radians(a * affine) for a in rng.uniform(-6.0, 6.0, size=3)]
    rot = np.eye(3)
    for axis, a in enumerate(angles):
        i, j = [k for k in range(3) if k != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = math.cos(a)
        r[i, j], r[j, i] = -math.sin(a), math.sin(a)
        rot = rot @ r
    scales = math.exp(rng.uniform(-0.06, 0.06) * affine) * np.exp(rng.uniform(-0.03, 0.03, size=3) * affine)
    matrix = rot * scales[None]
    offset = rng.uniform(-shift, shift, size=3) * affine
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"))
    centre = (np.array(shape, dtype=np.float64) - 1) / 2
    rel = grid - centre[:, None, None, None]
    src = np.einsum("ij,j...->i...", matrix, rel) + (centre + offset)[:, None, None, None]
    affine = (src - grid).astype(np.float32)
    return add_unfolded_warps(rng, affine, max_displacement, grids)


class Brain3D(Dataset):
    """3D virtual-subject pairs: {"moving", "fixed"} (1, D, H, W) float in [0, 1], label maps (1, D, H, W) int64.

    (D, H, W) is SIZES[voxel_mm]: 80 x 96 x 80 at 2 mm (default), 48 x 48 x 48 at 4 mm. ``max_displacement`` is in
    voxels (default 10 mm: 5 voxels at 2 mm, 2.5 at 4 mm); the affine shift (6 mm) and blur scale with the voxel.
    Generated on access, deterministically from (seed, split, index). Extra keys: "subject" (str), "contrast" (str).
    """

    name = "brain3d"
    num_labels = len(LABEL_NAMES)
    label_names = LABEL_NAMES

    def __init__(
        self,
        split: str,
        seed: int = 0,
        num_pairs: int | None = None,
        max_displacement: float | None = None,
        contrast: str | None = None,
        artifacts: bool = True,
        voxel_mm: int = 2,
        residual_affine: float = 1.0,
        grids: str = "split",
    ) -> None:
        self.split = check_split(split, name=self.name)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.num_pairs = DEFAULT_NUM_PAIRS[split] if num_pairs is None else check_positive_int(num_pairs, "num_pairs")
        if isinstance(voxel_mm, bool) or voxel_mm not in SIZES:
            raise ValueError(f"voxel_mm must be one of {', '.join(map(str, SIZES))} (mm), got {voxel_mm!r}")
        self.voxel_mm, self.size = int(voxel_mm), SIZES[voxel_mm]
        if isinstance(residual_affine, bool) or not isinstance(residual_affine, (int, float)):
            raise ValueError(f"residual_affine must be a number in [0, 1], got {residual_affine!r}")
        if not 0.0 <= residual_affine <= 1.0:
            raise ValueError(
                f"residual_affine must lie in [0, 1] (a fraction of the default jitter), got {residual_affine}"
            )
        self.residual_affine = float(residual_affine)
        if grids not in GRID_CHOICES:
            raise ValueError(f"grids must be one of {', '.join(GRID_CHOICES)}, got {grids!r}")
        self.grids = GRIDS[self.split if grids == "split" else grids]
        self._voxel_scale = 2.0 / self.voxel_mm  # lengths given in 2 mm voxels -> this dataset's voxels
        if max_displacement is None:
            max_displacement = 10.0 / self.voxel_mm
        self.max_displacement, self.contrast, self.artifacts = check_subject_options(
            split, max_displacement, 20, "voxels", contrast, artifacts, CONTRASTS
        )
        vols = template_volumes(self.voxel_mm)
        self._maps = torch.from_numpy(np.stack([vols["t1"], vols["p_gm"], vols["p_wm"]]))[None]  # (1, 3, *S)
        self._labels = torch.from_numpy(vols["labels"].astype(np.float32))[None, None]

    def __len__(self) -> int:
        return self.num_pairs

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_pairs:
            raise IndexError(f"index {index} out of range for {self.name} {self.split} with {self.num_pairs} pairs")
        with single_thread():
            rng = rng_for(self.seed, SPLIT_CODES[self.split], index, 11)
            kind = self.contrast if self.contrast != "mixed" else ("synthetic" if rng.random() < 0.5 else "t1")
            tissue = rng.uniform(0.05, 1.0, size=3)
            (m, ml), (f, fl) = (self._subject(rng, kind, tissue) for _ in range(2))
        return {"moving": m, "fixed": f, "moving_labels": ml, "fixed_labels": fl, "contrast": kind,
                "subject": f"brain3d-{self.split}-{self.seed}-{index}"}  # fmt: skip

    def _subject(self, rng: np.random.Generator, kind: str, tissue: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        flow = subject_deformation_3d(
            rng,
            self.size,
            self.max_displacement,
            self.grids,
            shift=3.0 * self._voxel_scale,
            affine=self.residual_affine,
        )[None]
        t1, p_gm, p_wm = warp(self._maps, flow)[0]
        labels = warp(self._labels, flow, mode="nearest")[0].long()
        if kind == "synthetic":
            p_csf = ((labels[0] > 0).float() - p_gm - p_wm).clamp(min=0)
            image = float(tissue[0]) * p_csf + float(tissue[1]) * p_gm + float(tissue[2]) * p_wm
        elif kind == "inverted":
            image = (1.0 - t1) * (labels[0] > 0).float()
        else:
            image = t1
        image = image.clamp(min=0) ** math.exp(rng.uniform(-0.3, 0.3))
        if self.artifacts:
            image = _artifacts_3d(rng, image, blur=self._voxel_scale)
        hi = torch.quantile(image.flatten()[::7], 0.995)  # a subsample: quantile of 600k values is slow
        image = (image / hi).clamp(0, 1) if hi > 0 else image
        return image[None].float(), labels


def _artifacts_3d(rng: np.random.Generator, image: torch.Tensor, blur: float = 1.0) -> torch.Tensor:
    """Volume (D, H, W) with a bias field exp(N(0, s^2)), s in [0, 0.25], blur sigma U(0, blur) voxels, Rician noise."""
    from scipy import ndimage as ndi

    shape = tuple(image.shape)
    x = image.numpy() * np.exp(rng.uniform(0.0, 0.25) * smooth_random_field(rng, shape, grid=(3, 3, 3))[0])
    x = ndi.gaussian_filter(x, rng.uniform(0.0, 1.0) * blur)
    sigma = rng.uniform(0.0, 0.04)
    n1, n2 = (rng.standard_normal(shape).astype(np.float32) * sigma for _ in range(2))
    return torch.from_numpy(np.sqrt((x + n1) ** 2 + n2**2).astype(np.float32))
