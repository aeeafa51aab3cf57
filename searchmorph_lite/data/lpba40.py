"""``lpba40``: the paper's brain data (Sec. IV.A), prepared from the user's own LPBA40 download.

Source: the LONI Probabilistic Brain Atlas, 40 subjects S01..S40, "delineation space" release (LONI IDA,
``LPBA40_Subjects_Delineation_Space_MRI_and_label_files``), unpacked as::

    LPBA40/delineation_space/S01/S01.delineation.skullstripped.hdr  + .img.gz   (T1, skull stripped)
    LPBA40/delineation_space/S01/S01.delineation.structure.label.hdr + .img.gz  (56 structures)
    ...                      S40/...

Files are found anywhere under ``--src`` by name, with any of the suffixes .nii.gz, .nii, .hdr/.img, .img.gz,
so the NIfTI conversions that circulate (one flat folder of ``S??.delineation.*.nii.gz``) work too.

The paper takes "the 80th slice" of volumes of 160 x 192 x 160 without saying along which axis or how the volumes
were brought to that size. We choose: resample to 1 mm (through each file's affine), a 160 x 192 x 160 mm box
(x left-right, y posterior-anterior, z inferior-superior) centred on the brain's bounding box, and the axial
plane z = 80 of that box, shown with anterior at the top and the subject's left on the left, 192 rows x 160
columns. That is the same plane and orientation as ``brain2d``. Intensities are divided by each volume's
99.5th percentile inside the brain and clipped to [0, 1]. Labels are renumbered 0..K-1 in the order of the
LPBA40 codes present (``label_codes`` maps back). Atlas-based as in the paper: S01 is the fixed image of every
pair; S02-S30 train, S31-S34 validation, S35-S40 test (the paper does not give its split).

Analyze headers carry no orientation; nibabel then assumes its default (x flipped, LAS). ``manifest.json`` records
the axis codes used per subject, so a flipped result can be traced.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import (
    SPLITS,
    array_problem,
    as_size,
    check_split,
    data_root,
    evenly_spaced,
    load_npz,
    resize_images,
    resize_labels,
)
from .io import find_files, pick_volume, read_volume, strip_volume_suffix, write_prepared

SLICE_SIZE = (192, 160)
BOX_MM = (160, 192, 160)  # x, y, z
ATLAS = "S01"
SPLIT_RANGES = {"train": range(2, 31), "val": range(31, 35), "test": range(35, 41)}
OPTIONS = ("image_size", "num_pairs")
COMMAND = "python data_scripts/prepare_lpba40.py --src /path/to/LPBA40 --out {root}"
_IMAGE_PATTERN = r"(S\d\d)\.delineation\.skullstripped"
_LABEL_PATTERN = r"(S\d\d)\.delineation\.structure\.label"


def extract_slice(
    image: np.ndarray, labels: np.ndarray, affine: np.ndarray, slice_index: int = 80
) -> tuple[np.ndarray, np.ndarray]:
    """Axial slice ``slice_index`` of the 1 mm brain box: image (192, 160) float32 in [0, 1], labels (192, 160) int."""
    from scipy import ndimage as ndi

    if image.ndim != 3 or image.shape != labels.shape:
        raise ValueError(f"image {image.shape} and labels {labels.shape} must be 3D volumes of the same shape")
    if not 0 <= slice_index < BOX_MM[2]:
        raise ValueError(f"slice_index must be in [0, {BOX_MM[2]}), got {slice_index}")
    brain = (labels > 0) | (image > 0)
    if not brain.any():
        raise ValueError("the volume is empty (no voxel above 0)")
    idx = np.argwhere(brain)
    world = affine[:3, :3] @ np.stack([idx.min(0), idx.max(0)]).T + affine[:3, 3:4]
    centre = (world.min(axis=1) + world.max(axis=1)) / 2  # bounding box of the brain in mm (x, y, z)

    h, w = SLICE_SIZE
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    x = centre[0] + cols - (w - 1) / 2
    y = centre[1] + (h - 1) / 2 - rows  # anterior at the top
    z = np.full_like(x, centre[2] + slice_index - BOX_MM[2] / 2)
    vox = np.linalg.solve(affine, np.stack([x.ravel(), y.ravel(), z.ravel(), np.ones(x.size)]))[:3]
    img = ndi.map_coordinates(image, vox, order=1, cval=0.0).reshape(h, w)
    lab = ndi.map_coordinates(labels, vox, order=0, cval=0).reshape(h, w)
    scale = np.percentile(image[brain], 99.5)
    if scale <= 0:
        raise ValueError("the brain has no positive intensity")
    return np.clip(img / scale, 0.0, 1.0).astype(np.float32), np.rint(lab).astype(np.int64)


def split_of(subject: str) -> str | None:
    """Split of subject "Sxx" ("train", "val", "test"), or None for the atlas S01."""
    n = int(subject[1:])
    for split, numbers in SPLIT_RANGES.items():
        if n in numbers:
            return split
    return None


def prepare_lpba40(src: str | Path, out: str | Path, slice_index: int = 80) -> dict[str, Any]:
    """Manifest (dict) of the dataset written to ``<out>/lpba40/{train,val,test}.npz`` from LPBA40 at ``src``."""
    import nibabel as nib

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"LPBA40 source folder {src} does not exist")
    images = find_files(src, _IMAGE_PATTERN)
    labels = find_files(src, _LABEL_PATTERN)
    if not images:
        raise FileNotFoundError(
            f"no LPBA40 images (S??.delineation.skullstripped.{{hdr,img.gz,nii.gz}}) found under {src}"
        )
    if ATLAS not in images:
        raise FileNotFoundError(f"the atlas subject {ATLAS} (S01.delineation.skullstripped.*) is missing under {src}")
    slices: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    axcodes: dict[str, str] = {}
    for subject in sorted(images):
        image_path = pick_volume(images[subject])
        if subject not in labels:
            suffix = image_path.name[len(strip_volume_suffix(image_path.name) or "") :]
            expected = image_path.parent / f"{subject}.delineation.structure.label{suffix}"
            raise FileNotFoundError(f"missing label file {expected} for {image_path}")
        label_path = pick_volume(labels[subject])
        image, affine = read_volume(image_path)
        label, _ = read_volume(label_path)
        if image.shape != label.shape:
            raise ValueError(f"{label_path} has shape {label.shape} but {image_path} has {image.shape}")
        if image.ndim != 3:
            raise ValueError(f"{image_path} is not a 3D volume (shape {image.shape})")
        slices[subject] = extract_slice(image, label, affine, slice_index)
        axcodes[subject] = "".join(nib.aff2axcodes(affine))

    codes = np.unique(np.concatenate([lab.ravel() for _, lab in slices.values()] + [np.zeros(1, np.int64)]))
    fixed_image, fixed_labels = slices[ATLAS]
    split_arrays: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        subjects = [s for s in sorted(slices) if split_of(s) == split]
        if not subjects:
            numbers = SPLIT_RANGES[split]
            raise ValueError(
                f"no subject for split {split!r} (it takes S{numbers[0]:02d}-S{numbers[-1]:02d}); "
                f"found only {', '.join(sorted(slices))} under {src}"
            )
        split_arrays[split] = {
            "moving": np.stack([slices[s][0] for s in subjects]),
            "moving_labels": np.stack([np.searchsorted(codes, slices[s][1]) for s in subjects]).astype(np.int16),
            "subjects": np.array(subjects),
            "fixed": fixed_image,
            "fixed_labels": np.searchsorted(codes, fixed_labels).astype(np.int16),
            "label_codes": codes.astype(np.int32),
        }
    manifest = {
        "dataset": "lpba40",
        "format_version": 1,
        "source": str(src.resolve()),
        "slice_index": slice_index,
        "size": list(SLICE_SIZE),
        "atlas": ATLAS,
        "counts": {s: int(len(a["subjects"])) for s, a in split_arrays.items()},
        "num_labels": int(len(codes)),
        "axcodes": axcodes,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_prepared(out / "lpba40", split_arrays, manifest)
    return manifest


def not_prepared_error(path: Path) -> FileNotFoundError:
    """The error the loader raises when ``path`` (a prepared split) is missing, with the command that makes it."""
    return FileNotFoundError(
        f"lpba40 is not prepared: {path} is missing. Download the LPBA40 delineation-space release "
        f"(LONI, 'LPBA40_Subjects_Delineation_Space_MRI_and_label_files'), unpack it and run:\n"
        f"    {COMMAND.format(root=data_root())}"
    )


def prepared_problem(a: dict[str, np.ndarray]) -> str | None:
    """Why the arrays of a prepared split do not fit together (shapes, dtypes, label range), or None."""
    problem = array_problem(a, "moving", (None, None, None))
    if problem:
        return problem
    n, h, w = a["moving"].shape
    problem = (
        array_problem(a, "moving_labels", (n, h, w), "iu")
        or array_problem(a, "subjects", (n,), "UO")
        or array_problem(a, "fixed", (h, w))
        or array_problem(a, "fixed_labels", (h, w), "iu")
        or array_problem(a, "label_codes", (None,), "iu")
    )
    if problem:
        return problem
    k = len(a["label_codes"])
    for name in ("moving_labels", "fixed_labels"):
        if a[name].size and (a[name].min() < 0 or a[name].max() >= k):
            return f"{name} hold values outside 0..{k - 1} (label_codes has {k} entries)"
    return None if n else "it holds no pairs"


class Lpba40(Dataset):
    """Prepared LPBA40 pairs: subject slice (moving) -> S01 slice (fixed), (1, H, W) tensors; "subject" is "Sxx"."""

    name = "lpba40"

    def __init__(self, split: str, image_size: int | tuple[int, int] = SLICE_SIZE, num_pairs: int | None = None):
        self.split = check_split(split, name=self.name)
        path = data_root() / "lpba40" / f"{split}.npz"
        if not path.is_file():
            raise not_prepared_error(path)
        try:
            arrays = load_npz(path, ("moving", "moving_labels", "subjects", "fixed", "fixed_labels", "label_codes"))
            problem = prepared_problem(arrays)
            if problem:
                raise ValueError(f"{path} is not a prepared lpba40 split: {problem}")
        except ValueError as err:  # unreadable, wrong or from another version: prepare again
            raise ValueError(f"{err}; prepare it again with:\n    {COMMAND.format(root=data_root())}") from None
        keep = evenly_spaced(len(arrays["subjects"]), num_pairs)
        self.image_size = as_size(image_size)
        self.label_codes = arrays["label_codes"]
        self.num_labels = int(len(self.label_codes))
        self.subjects = [str(s) for s in arrays["subjects"][keep]]
        self._moving = resize_images(torch.from_numpy(arrays["moving"][keep]).unsqueeze(1), self.image_size)
        labels = torch.from_numpy(arrays["moving_labels"][keep].astype(np.int64)).unsqueeze(1)
        self._moving_labels = resize_labels(labels, self.image_size)
        self.fixed = resize_images(torch.from_numpy(arrays["fixed"])[None, None], self.image_size)[0]
        fixed_labels = torch.from_numpy(arrays["fixed_labels"].astype(np.int64))[None, None]
        self.fixed_labels = resize_labels(fixed_labels, self.image_size)[0]

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for lpba40 {self.split} with {len(self)} pairs")
        return {
            "moving": self._moving[index].clone(),
            "fixed": self.fixed.clone(),
            "moving_labels": self._moving_labels[index].clone(),
            "fixed_labels": self.fixed_labels.clone(),
            "subject": self.subjects[index],
        }
