"""``brain2d-subjects``: inter-subject 2D brain MR pairs of "virtual subjects" made from every slice of MNI152.

Why. ``brain2d`` registers neighbouring template slices to one atlas slice: each test moving slice sits 1 mm
from two training slices, so a network can pass its test by memorising. Here, in the spirit of SynthMorph
(Hoffmann et al., IEEE TMI 2022), every image of a pair is its own virtual subject, and the splits are slabs of
the brain with a gap between them:

* Source slices: every axial slice of the MNI152 2009a template (1 mm, from nilearn's wheel) from z = -40 to
  +64 mm. Validation and test each hold three 3-mm slabs spread over the brain, and no training slice lies
  within ``GAP_MM`` of a validation or test slice (:func:`split_slices`). ``near_copy_table`` measures how far the
  test images really are from the training ones.
* A pair is two subjects: the moving one from slice z, the fixed one from a slice of the same slab at most
  1 mm away (slice-position error), each under its own random affine, large-scale and small-scale smooth
  deformation (never folding), so the pair differs by both subjects' deformations.
* Contrast (``contrast``): "t1" is the template's T1 with a random gamma; "synthetic" draws one random intensity
  per tissue (CSF, grey, white matter) for the pair and mixes them with the tissue probability maps (partial
  volume), so the network cannot rely on T1's ordering; "mixed" (training's default) takes either with
  probability 1/2; "inverted" (a T2-like test contrast) is 1 - T1 inside the brain.
* Artifacts (``artifacts``): a smooth multiplicative bias field, Gaussian blur and Rician noise, per image.

Labels are exact: each subject's tissue labels (0 background, 1 CSF and other brain, 2 grey matter, 3 white
matter, as ``brain2d``) warped with its own deformation (nearest). Images are scaled to [0, 1].

What it cannot show: real inter-subject variability (folding patterns, ventricle size, pathology), scanner
differences beyond gamma, bias, blur and noise, and the 56 LPBA40 structures. The out-of-distribution checks in
the book use other contrasts, larger deformations (``max_displacement``) and far slices (``slices="far"``:
z outside the training range) on top of these.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..metrics import jacobian_determinant
from ..transform import warp
from .common import (
    SPLIT_CODES,
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

Z_RANGE_MM = (-40, 64)  # slices with enough brain for a 192 x 160 crop to be mostly brain
FAR_Z_MM = tuple(range(-52, -43)) + tuple(range(68, 75))  # "far" out-of-distribution slices, outside Z_RANGE_MM
HELD_OUT_MM = {
    "val": ((-4, -2), (26, 28), (54, 56)),
    "test": ((-19, -17), (11, 13), (41, 43)),
}
GAP_MM = 3  # no training slice within 3 mm of a validation or test slice
DEFAULT_NUM_PAIRS = {"train": 2000, "val": 48, "test": 48}
CONTRASTS = ("t1", "synthetic", "mixed", "inverted")
OPTIONS = ("seed", "num_pairs", "image_size", "max_displacement", "contrast", "artifacts", "deform", "slices")
_CACHE_NAME = "brain2d_subjects_mni152_v1.npz"
_SLAB_KEYS = ("t1", "p_gm", "p_wm", "brain", "labels", "z_mm")


def split_slices(split: str, slices: str = "split") -> tuple[int, ...]:
    """z positions (mm) of the source slices of ``split``; ``slices="far"`` gives the out-of-range ones instead."""
    check_split(split, name="brain2d-subjects")
    if slices == "far":
        return FAR_Z_MM
    if slices != "split":
        raise ValueError(f"slices must be 'split' or 'far', got {slices!r}")
    if split in HELD_OUT_MM:
        return tuple(z for lo, hi in HELD_OUT_MM[split] for z in range(lo, hi + 1))
    held = [z for slabs in HELD_OUT_MM.values() for lo, hi in slabs for z in range(lo, hi + 1)]
    return tuple(z for z in range(Z_RANGE_MM[0], Z_RANGE_MM[1] + 1) if min(abs(z - h) for h in held) > GAP_MM)


def build_subject_slab() -> dict[str, np.ndarray]:
    """Every axial slice from z = -60 to +80 mm (:func:`mni152.axial_slices`) plus "z_mm" (S,)."""
    z_mm = np.arange(-60, 81)
    return {**axial_slices(z_mm.tolist()), "z_mm": z_mm.astype(np.int64)}


def load_subject_slab(cache: bool = True) -> dict[str, np.ndarray]:
    """The slab of :func:`build_subject_slab`, from ``<data root>/cache`` when cached and intact."""
    path = data_root() / "cache" / _CACHE_NAME
    if cache:
        arrays = try_cache(path, _SLAB_KEYS)
        if arrays is not None and _slab_is_valid(arrays):
            return arrays
    arrays = build_subject_slab()
    if cache:
        save_cache(path, **arrays)
    return arrays


def _slab_is_valid(arrays: dict[str, np.ndarray]) -> bool:
    n = len(arrays["z_mm"])
    shapes_ok = all(arrays[k].shape == (n, *NATIVE_SIZE) for k in ("t1", "p_gm", "p_wm", "brain", "labels"))
    return shapes_ok and int(arrays["labels"].max(initial=0)) < len(LABEL_NAMES)


def check_subject_options(
    split: str,
    max_displacement: float,
    limit: float,
    unit: str,
    contrast: str | None,
    artifacts: bool,
    contrasts: tuple[str, ...] = CONTRASTS,
) -> tuple[float, str, bool]:
    """(max_displacement, contrast, artifacts) of a virtual-subject dataset, checked: ValueError naming the option.

    ``contrast`` None means "mixed" for training and "t1" for validation and test.
    """
    if isinstance(max_displacement, bool) or not (
        isinstance(max_displacement, (int, float)) and 0 <= max_displacement <= limit
    ):
        raise ValueError(f"max_displacement must be a number of {unit} in [0, {limit:g}], got {max_displacement!r}")
    contrast = ("mixed" if split == "train" else "t1") if contrast is None else contrast
    if contrast not in contrasts:
        raise ValueError(f"contrast must be one of {', '.join(contrasts)}, got {contrast!r}")
    if not isinstance(artifacts, bool):
        raise ValueError(f"artifacts must be true or false, got {artifacts!r}")
    return float(max_displacement), contrast, artifacts


def subject_deformation(rng: np.random.Generator, shape: tuple[int, int], max_displacement: float) -> torch.Tensor:
    """A virtual subject's field (2, H, W) in pixels: affine jitter + large- and small-scale smooth warps, no folding.

    Affine: rotation up to 6 degrees, isotropic scale up to 6 %, anisotropy up to 3 %, shift up to 4 px (scaled
    with the image). Large scale: a 5 x 4 control grid, largest displacement U(0.3, 1) * ``max_displacement``;
    small scale: a 12 x 10 grid, largest U(0, 0.25) * ``max_displacement``. The elastic part shrinks by 0.7 until
    det(I + grad u) > 0.2 everywhere, so a subject never folds.
    """
    h, w = shape
    scale = (h / NATIVE_SIZE[0] + w / NATIVE_SIZE[1]) / 2
    theta = math.radians(rng.uniform(-6.0, 6.0))
    zoom = math.exp(rng.uniform(-0.06, 0.06))
    aniso = math.exp(rng.uniform(-0.03, 0.03))
    shift = rng.uniform(-4.0, 4.0, size=2) * scale
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    cr, cc = (h - 1) / 2, (w - 1) / 2
    dr, dc = (rows - cr) * zoom * aniso, (cols - cc) * zoom / aniso
    src_r = cr + math.cos(theta) * dr - math.sin(theta) * dc + shift[0]
    src_c = cc + math.sin(theta) * dr + math.cos(theta) * dc + shift[1]
    affine = np.stack([src_r - rows, src_c - cols])
    return add_unfolded_warps(rng, affine, max_displacement, grids=((5, 4), (12, 10)))


def add_unfolded_warps(
    rng: np.random.Generator, affine: np.ndarray, max_displacement: float, grids: tuple[tuple, tuple]
) -> torch.Tensor:
    """``affine`` (ndim, *S) plus a large- and a small-scale smooth warp, as a float32 field that never folds.

    The warps live on the control grids ``grids[0]`` and ``grids[1]`` with largest displacements U(0.3, 1) and
    U(0, 0.25) times ``max_displacement``; their sum shrinks by 0.7 until det(I + grad u) > 0.2 everywhere (the
    affine part alone after 20 tries). The one place both the 2D and the 3D virtual subjects get their warps.
    """
    shape = affine.shape[1:]
    elastic = np.zeros_like(affine)
    for grid, (lo, hi) in zip(grids, ((0.3, 1.0), (0.0, 0.25))):
        part = smooth_random_field(rng, shape, grid=grid, channels=len(shape))
        part *= rng.uniform(lo, hi) * max_displacement / max(float(np.sqrt((part**2).sum(0)).max()), 1e-6)
        elastic += part
    for _ in range(20):
        field = torch.from_numpy((affine + elastic).astype(np.float32))
        if float(jacobian_determinant(field[None]).min()) > 0.2:
            return field
        elastic *= 0.7
    return torch.from_numpy(affine.astype(np.float32))


def _artifacts(rng: np.random.Generator, image: torch.Tensor) -> torch.Tensor:
    """Image (H, W) with a bias field exp(N(0, s^2)), s in [0, 0.25], blur sigma in [0, 1] px, Rician noise."""
    from scipy import ndimage as ndi

    h, w = image.shape
    x = image.numpy() * np.exp(rng.uniform(0.0, 0.25) * smooth_random_field(rng, (h, w), grid=(4, 4))[0])
    x = ndi.gaussian_filter(x, rng.uniform(0.0, 1.0))
    sigma = rng.uniform(0.0, 0.04)
    n1, n2 = (rng.standard_normal((h, w)).astype(np.float32) * sigma for _ in range(2))
    return torch.from_numpy(np.sqrt((x + n1) ** 2 + n2**2).astype(np.float32))


def _rescale(image: torch.Tensor) -> torch.Tensor:
    """Image divided by its 99.5th percentile and clipped to [0, 1] (as ``register`` normalizes)."""
    hi = torch.quantile(image.flatten(), 0.995)
    return (image / hi).clamp(0, 1) if hi > 0 else image


class BrainSubjects2D(Dataset):
    """Inter-subject brain pairs: items {"moving", "fixed"} (1, H, W) float in [0, 1], label maps (1, H, W) int64.

    Items are generated on access, deterministically from (seed, split, index). Extra keys: "subject" (str),
    "moving_z_mm" and "fixed_z_mm" (int), "contrast" (str: the contrast this pair got).
    """

    name = "brain2d-subjects"
    num_labels = len(LABEL_NAMES)
    label_names = LABEL_NAMES

    def __init__(
        self,
        split: str,
        seed: int = 0,
        num_pairs: int | None = None,
        image_size: int | tuple[int, int] = NATIVE_SIZE,
        max_displacement: float = 8.0,
        contrast: str | None = None,
        artifacts: bool = True,
        deform: str = "both",
        slices: str = "split",
    ) -> None:
        self.split = check_split(split, name=self.name)
        self.seed = check_positive_int(seed, "seed", minimum=0)
        self.num_pairs = DEFAULT_NUM_PAIRS[split] if num_pairs is None else check_positive_int(num_pairs, "num_pairs")
        self.image_size = as_size(image_size)
        self.max_displacement, self.contrast, self.artifacts = check_subject_options(
            split, max_displacement, 40, "pixels", contrast, artifacts
        )
        if deform not in ("both", "moving"):
            raise ValueError(f"deform must be 'both' (two virtual subjects) or 'moving', got {deform!r}")
        self.deform = deform
        self.z_mm = split_slices(split, slices)
        slab = load_subject_slab()
        index = [int(np.nonzero(slab["z_mm"] == z)[0][0]) for z in self.z_mm]
        maps = {k: torch.from_numpy(slab[k][index].astype(np.float32)).unsqueeze(1) for k in ("t1", "p_gm", "p_wm")}
        self._maps = {k: resize_images(v, self.image_size) for k, v in maps.items()}
        labels = torch.from_numpy(slab["labels"][index].astype(np.int64)).unsqueeze(1)
        self._labels = resize_labels(labels, self.image_size)
        self._pixel_scale = (self.image_size[0] / NATIVE_SIZE[0] + self.image_size[1] / NATIVE_SIZE[1]) / 2

    def __len__(self) -> int:
        return self.num_pairs

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_pairs:
            raise IndexError(f"index {index} out of range for {self.name} {self.split} with {self.num_pairs} pairs")
        with single_thread():
            return self._pair(index)

    def _partner(self, rng: np.random.Generator, k: int) -> int:
        """Index of the fixed subject's slice: the same slice or a neighbour 1 mm away in the same slab."""
        near = [j for j in (k - 1, k, k + 1) if 0 <= j < len(self.z_mm) and abs(self.z_mm[j] - self.z_mm[k]) <= 1]
        return int(rng.choice(near))

    def sample(self, index: int) -> dict[str, Any]:
        """Item ``index`` with "moving_flow" and "fixed_flow" (2, H, W): the fields that made the two subjects.

        ``moving_labels = warp(source_labels, moving_flow, "nearest")`` where the source is the template slice at
        "moving_z_mm" (:func:`load_subject_slab`, resized to the image size), likewise for the fixed subject; the
        flows are not the answer to the registration, which also has to undo the slice difference.
        """
        if not 0 <= index < self.num_pairs:
            raise IndexError(f"index {index} out of range for {self.name} {self.split} with {self.num_pairs} pairs")
        with single_thread():
            return self._pair(index, with_flows=True)

    def source_labels(self, z_mm: int) -> torch.Tensor:
        """Label map (1, H, W) int64 of the undeformed template slice at ``z_mm`` (one of this split's slices)."""
        if z_mm not in self.z_mm:
            raise ValueError(f"z_mm must be one of this split's slices {list(self.z_mm)}, got {z_mm!r}")
        return self._labels[list(self.z_mm).index(z_mm)].clone()

    def _subject(
        self, rng: np.random.Generator, k: int, contrast: dict, deformed: bool, flows: list | None = None
    ) -> tuple[torch.Tensor, ...]:
        if deformed:
            flow = subject_deformation(rng, self.image_size, self.max_displacement * self._pixel_scale)[None]
        else:
            flow = torch.zeros(1, 2, *self.image_size)
        if flows is not None:
            flows.append(flow[0])
        maps = {name: warp(v[k : k + 1], flow)[0, 0] for name, v in self._maps.items()}
        labels = warp(self._labels[k : k + 1].float(), flow, mode="nearest")[0].long()
        if contrast["kind"] == "synthetic":
            p_gm, p_wm = maps["p_gm"], maps["p_wm"]
            brain = (labels[0] > 0).float()
            p_csf = (brain - p_gm - p_wm).clamp(min=0)
            image = contrast["csf"] * p_csf + contrast["gm"] * p_gm + contrast["wm"] * p_wm
        elif contrast["kind"] == "inverted":
            image = (1.0 - maps["t1"]) * (labels[0] > 0).float()
        else:
            image = maps["t1"]
        image = image.clamp(min=0) ** math.exp(rng.uniform(-0.3, 0.3))
        if self.artifacts:
            image = _artifacts(rng, image)
        return _rescale(image)[None], labels

    def _pair(self, index: int, with_flows: bool = False) -> dict[str, Any]:
        rng = rng_for(self.seed, SPLIT_CODES[self.split], index, 7)
        k = index % len(self.z_mm)  # cycle through the split's slices so each is used evenly
        j = self._partner(rng, k)
        kind = self.contrast if self.contrast != "mixed" else ("synthetic" if rng.random() < 0.5 else "t1")
        contrast = {"kind": kind, **dict(zip(("csf", "gm", "wm"), rng.uniform(0.05, 1.0, size=3).tolist()))}
        flows: list | None = [] if with_flows else None
        moving, moving_labels = self._subject(rng, k, contrast, deformed=True, flows=flows)
        fixed, fixed_labels = self._subject(rng, j, contrast, deformed=self.deform == "both", flows=flows)
        extra = {"moving_flow": flows[0], "fixed_flow": flows[1]} if flows is not None else {}
        return {
            "moving": moving,
            "fixed": fixed,
            "moving_labels": moving_labels,
            "fixed_labels": fixed_labels,
            "subject": f"{self.name}-s{self.seed}-{self.split}-{index:05d}",
            "moving_z_mm": int(self.z_mm[k]),
            "fixed_z_mm": int(self.z_mm[j]),
            "contrast": kind,
            **extra,
        }


def near_copy_table(
    splits: tuple[str, ...] = ("val", "test"),
    pairs: int = 48,
    train_pairs: int = 400,
    dataset: str = "brain2d-subjects",
    labels: tuple[int, ...] = (1, 2, 3),
    **options: Any,
) -> dict:
    """For each split: the highest label Dice and the lowest MSE between any of its first ``pairs`` moving images
    and any of ``train_pairs`` training moving images of ``dataset``.

    For brain2d-subjects the images are drawn in T1 contrast without artifacts (unless ``options`` say otherwise),
    so only anatomy and deformation differ. Dice per image pair is the mean over ``labels`` (labels absent from
    both maps skipped), computed for all pairs at once from one-hot overlaps; MSE likewise.
    """
    from . import load_dataset

    if dataset == "brain2d-subjects":
        options = {"contrast": "t1", "artifacts": False, **options}

    def stack(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ds = load_dataset(dataset, split, num_pairs=n, **options)
        items = [ds[i] for i in range(n)]
        images = torch.stack([it["moving"].flatten() for it in items]).double()
        label_maps = torch.stack([it["moving_labels"].flatten() for it in items])
        return images, label_maps

    train_img, train_lab = stack("train", train_pairs)
    out = {}
    for split in splits:
        img, lab = stack(split, pairs)
        score = torch.zeros(len(img), len(train_img), dtype=torch.float64)
        present = torch.zeros_like(score)
        for label in labels:
            a, b = (lab == label).double(), (train_lab == label).double()
            total = a.sum(1)[:, None] + b.sum(1)[None, :]
            inter = a @ b.T
            score += torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.zeros_like(total))
            present += (total > 0).double()
        mean_dice = score / present.clamp_min(1)
        # ||x - y||^2 = ||x||^2 + ||y||^2 - 2 x.y, per pixel
        mse = ((img**2).sum(1)[:, None] + (train_img**2).sum(1)[None, :] - 2 * img @ train_img.T) / img.shape[1]
        out[split] = {"max_label_dice": float(mean_dice.max()), "min_mse": float(mse.clamp_min(0).min())}
    return out
