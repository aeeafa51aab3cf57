"""``camus``: the paper's 2CH/4CH echocardiography (Sec. IV.A, Table II), prepared from the user's CAMUS download.

Source: the CAMUS public NIfTI release (CREATIS "CAMUS_public", 500 patients), unpacked as::

    CAMUS_public/database_nifti/patient0001/patient0001_2CH_ED.nii.gz       (and _ES, _4CH_ED, _4CH_ES)
                                            patient0001_2CH_ED_gt.nii.gz    (labels; and _ES, 4CH)
                                            patient0001_2CH_half_sequence.nii.gz     (ED ... ES cine)
                                            patient0001_2CH_half_sequence_gt.nii.gz  (labels of every frame)
    CAMUS_public/database_split/subgroup_training.txt, subgroup_validation.txt, subgroup_testing.txt

Patient folders are found anywhere under ``--src``; ``.nii`` works as well as ``.nii.gz``. For each patient and
view the ED/ES images and labels are required; the half sequence is used when present (image and labels must
then both be there), else the sequence is the two frames [ED, ES]. Labels: CAMUS 1 (LV endocardium, the blood
pool) -> 1, 2 (LV myocardium) -> 2, 3 (left atrium) -> 0, as in Table II. The release's split files are
used when present; otherwise patients are split 80/10/10 in a fixed shuffled order (seed 0).

Geometry: nibabel gives CAMUS arrays as (width, height[, time]) because ITK wrote them; we transpose so rows
run in depth with the probe at the top. We choose to pad each frame to a square (columns centred) before
resizing to 160 x 160, because the paper's plain resize would stretch the heart anisotropically and the
regulariser and the Jacobian would then act on a distorted grid. Images are stored as uint8.
"""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import (
    SPLITS,
    array_problem,
    as_size,
    check_split,
    data_root,
    load_npz,
    pad_to_square,
    resize_images,
    resize_labels,
)
from .echo_synthetic import ECHO_LABEL_NAMES
from .io import read_volume, write_prepared
from .sequences import SequencePairDataset

CAMUS_VIEWS = ("2CH", "4CH")
SIZE = 160
OPTIONS = ("image_size", "num_pairs", "views")
COMMAND = "python data_scripts/prepare_camus.py --src /path/to/CAMUS_public --out {root}"
SPLIT_FILES = {"train": "subgroup_training.txt", "val": "subgroup_validation.txt", "test": "subgroup_testing.txt"}
_PATIENT = re.compile(r"patient\d{4}")


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (folder / (stem + suffix)).is_file():
            return folder / (stem + suffix)
    return None


def _require(folder: Path, stem: str) -> Path:
    path = _find(folder, stem)
    if path is None:
        raise FileNotFoundError(f"missing CAMUS file {folder / (stem + '.nii.gz')}")
    return path


def _read_frames(path: Path) -> np.ndarray:
    # (W, H) or (W, H, T) as nibabel reads CAMUS -> (T, H, W)
    data, _ = read_volume(path)
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim != 3:
        raise ValueError(f"{path} should be a 2D image or a 2D+time sequence, got shape {data.shape}")
    return np.ascontiguousarray(data.transpose(2, 1, 0))


def _to_160(frames: np.ndarray, labels: np.ndarray, source: Path) -> tuple[np.ndarray, np.ndarray]:
    """Frames (T, 160, 160) uint8 and labels (T, 160, 160) uint8 in {0, 1, 2} from CAMUS arrays (T, H, W)."""
    values = np.unique(labels)
    if not np.isin(values, [0, 1, 2, 3]).all():
        raise ValueError(f"{source} holds label values {values.tolist()}, expected a subset of 0, 1, 2, 3")
    top = max(float(frames.max()), 1.0)
    scale = 255.0 if top <= 255.0 else top  # CAMUS is 8-bit; rescale anything brighter
    frames = pad_to_square(np.clip(frames / scale, 0.0, 1.0))
    labels = pad_to_square(np.where(labels == 3, 0, labels).astype(np.int64))
    f = resize_images(torch.from_numpy(frames.astype(np.float32))[:, None], (SIZE, SIZE))[:, 0]
    lab = resize_labels(torch.from_numpy(labels)[:, None], (SIZE, SIZE))[:, 0]
    return np.rint(f.numpy() * 255).astype(np.uint8), lab.numpy().astype(np.uint8)


def read_patient_view(folder: Path, view: str) -> dict[str, Any]:
    """One patient's view: "frames", "labels" (T, 160, 160) uint8 from ED to ES, "es_frame", "source" (str)."""
    patient = folder.name
    stems = {k: f"{patient}_{view}_{k}" for k in ("ED", "ED_gt", "ES", "ES_gt", "half_sequence", "half_sequence_gt")}
    paths = {k: _require(folder, stems[k]) for k in ("ED", "ED_gt", "ES", "ES_gt")}
    half, half_gt = _find(folder, stems["half_sequence"]), _find(folder, stems["half_sequence_gt"])
    if (half is None) != (half_gt is None):
        missing = stems["half_sequence_gt"] if half_gt is None else stems["half_sequence"]
        raise FileNotFoundError(f"missing CAMUS file {folder / (missing + '.nii.gz')} (its pair is present)")
    # Read everything, so a corrupt ED/ES file is reported even when the half sequence is used.
    arrays = {k: _read_frames(p) for k, p in paths.items()}
    for k in ("ED", "ES"):
        if arrays[k].shape != arrays[k + "_gt"].shape:
            raise ValueError(
                f"{paths[k + '_gt']} has shape {arrays[k + '_gt'].shape}, {paths[k]} has {arrays[k].shape}"
            )
    if half is not None:
        frames, labels = _read_frames(half), _read_frames(half_gt)
        if frames.shape != labels.shape:
            raise ValueError(f"{half_gt} has shape {labels.shape} but {half} has {frames.shape}")
        if len(frames) < 2:
            raise ValueError(f"{half} has {len(frames)} frame; a half sequence needs ED and ES")
        source = half
    else:
        frames = np.concatenate([arrays["ED"], arrays["ES"]])
        labels = np.concatenate([arrays["ED_gt"], arrays["ES_gt"]])
        source = paths["ED"]
    frames8, labels8 = _to_160(frames, np.rint(labels).astype(np.int64), source)
    return {"frames": frames8, "labels": labels8, "es_frame": len(frames8) - 1, "source": str(source)}


def _split_patients(src: Path, patients: dict[str, Path]) -> tuple[dict[str, list[str]], str]:
    split_dir = next((p.parent for p in src.rglob(SPLIT_FILES["train"])), None)
    if split_dir is not None:
        out = {}
        for split, fname in SPLIT_FILES.items():
            path = split_dir / fname
            if not path.is_file():
                raise FileNotFoundError(f"missing CAMUS split file {path} (its siblings are present)")
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            missing = [n for n in names if n not in patients]
            if missing:
                raise FileNotFoundError(
                    f"{path} lists {len(missing)} patient folder(s) not found under {src}, e.g. {missing[0]}"
                )
            out[split] = sorted(names)
        return out, str(split_dir)
    names = sorted(patients)
    if len(names) < 3:
        raise ValueError(f"need at least 3 patients to split without split files, found {len(names)} under {src}")
    order = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    n_val = n_test = max(1, round(0.1 * len(names)))
    return {
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
        "train": sorted(order[n_val + n_test :]),
    }, "shuffled 80/10/10 (seed 0)"


def prepare_camus(src: str | Path, out: str | Path) -> dict[str, Any]:
    """Manifest (dict) of the prepared dataset written to ``<out>/camus/{train,val,test}.npz`` from CAMUS at ``src``."""
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"CAMUS source folder {src} does not exist")
    patients = {p.name: p for p in sorted(src.rglob("patient*")) if p.is_dir() and _PATIENT.fullmatch(p.name)}
    if not patients:
        raise FileNotFoundError(f"no CAMUS patient folders (patientXXXX/) found under {src}")
    splits, split_source = _split_patients(src, patients)
    split_arrays: dict[str, dict[str, np.ndarray]] = {}
    for split in SPLITS:
        frames, labels, starts, lengths, names, views, es = [], [], [], [], [], [], []
        offset = 0
        for patient in splits[split]:
            for view in CAMUS_VIEWS:
                seq = read_patient_view(patients[patient], view)
                frames.append(seq["frames"])
                labels.append(seq["labels"])
                starts.append(offset)
                lengths.append(len(seq["frames"]))
                offset += len(seq["frames"])
                names.append(patient)
                views.append(view)
                es.append(seq["es_frame"])
        if not frames:
            raise ValueError(f"split {split!r} has no patients")
        split_arrays[split] = {
            "frames": np.concatenate(frames),
            "labels": np.concatenate(labels),
            "seq_start": np.array(starts, np.int64),
            "seq_len": np.array(lengths, np.int64),
            "patients": np.array(names),
            "views": np.array(views),
            "es_frame": np.array(es, np.int64),
        }
    manifest = {
        "dataset": "camus",
        "format_version": 1,
        "source": str(src.resolve()),
        "split_source": split_source,
        "size": [SIZE, SIZE],
        "counts": {
            s: {"patients": len(splits[s]), "sequences": int(len(a["seq_len"])), "frames": int(a["seq_len"].sum())}
            for s, a in split_arrays.items()
        },
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_prepared(out / "camus", split_arrays, manifest)
    return manifest


def not_prepared_error(path: Path) -> FileNotFoundError:
    """The error the loader raises when ``path`` (a prepared split) is missing, with the command that makes it."""
    return FileNotFoundError(
        f"camus is not prepared: {path} is missing. Download the CAMUS public NIfTI release "
        f"(CREATIS, 'CAMUS_public'), unpack it and run:\n    {COMMAND.format(root=data_root())}"
    )


def prepared_problem(a: dict[str, np.ndarray]) -> str | None:
    """Why the arrays of a prepared split do not fit together (shapes, dtypes, ranges, sequence bounds), or None."""
    problem = array_problem(a, "frames", (None, None, None), "u")
    if problem:
        return problem
    f, h, w = a["frames"].shape
    k = len(a["seq_len"]) if a["seq_len"].ndim == 1 else -1
    problem = array_problem(a, "labels", (f, h, w), "iu") or array_problem(a, "seq_len", (None,), "iu")
    for name, kinds in (("seq_start", "iu"), ("es_frame", "iu"), ("patients", "UO"), ("views", "UO")):
        problem = problem or array_problem(a, name, (k,), kinds)
    if problem:
        return problem
    if a["labels"].size and (a["labels"].min() < 0 or a["labels"].max() >= len(ECHO_LABEL_NAMES)):
        return f"labels hold values outside 0..{len(ECHO_LABEL_NAMES) - 1}"
    start, length, es = a["seq_start"], a["seq_len"], a["es_frame"]
    if k and (start.min() < 0 or length.min() < 1 or (start + length).max() > f):
        return f"sequences run outside the {f} stored frames"
    if k and ((es < 0) | (es >= length)).any():
        return "es_frame lies outside its sequence"
    return None if k else "it holds no sequences"


class Camus(SequencePairDataset):
    """Prepared CAMUS sequences (ED ... ES, or [ED, ES]); items pair ED with frame t, labels 1 blood pool, 2 myocardium.

    ``sequence(i)`` adds "es_frame" (the last frame) to "frames", "labels", "view" and "subject" (patient).
    """

    name = "camus"
    has_labels = True
    label_names = ECHO_LABEL_NAMES
    num_labels = len(ECHO_LABEL_NAMES)

    def __init__(
        self,
        split: str,
        image_size: int | tuple[int, int] = SIZE,
        num_pairs: int | None = None,
        views: tuple[str, ...] | list[str] = CAMUS_VIEWS,
    ) -> None:
        self.split = check_split(split, name=self.name)
        path = data_root() / "camus" / f"{split}.npz"
        if not path.is_file():
            raise not_prepared_error(path)
        views = (views,) if isinstance(views, str) else tuple(views)
        if not views or any(v not in CAMUS_VIEWS for v in views):
            raise ValueError(f"views must be a non-empty subset of {', '.join(CAMUS_VIEWS)}, got {views!r}")
        self.image_size = as_size(image_size)
        try:
            a = load_npz(path, ("frames", "labels", "seq_start", "seq_len", "patients", "views", "es_frame"))
            problem = prepared_problem(a)
            if problem:
                raise ValueError(f"{path} is not a prepared camus split: {problem}")
        except ValueError as err:  # unreadable, wrong or from another version: prepare again
            raise ValueError(f"{err}; prepare it again with:\n    {COMMAND.format(root=data_root())}") from None
        keep = [i for i, v in enumerate(a["views"]) if str(v) in views]
        self._frames_u8, self._labels_u8 = a["frames"], a["labels"]
        self._start = a["seq_start"][keep]
        self._num_frames = [int(n) for n in a["seq_len"][keep]]
        self._patients = [str(p) for p in a["patients"][keep]]
        self._views = [str(v) for v in a["views"][keep]]
        self._es = [int(e) for e in a["es_frame"][keep]]
        self._init_pairs(num_pairs)

    def _meta(self, i: int) -> dict[str, Any]:
        return {"view": self._views[i], "subject": self._patients[i]}

    def _frames(self, i: int, ts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._start[i] + np.asarray(ts)
        frames = torch.from_numpy(self._frames_u8[rows].astype(np.float32) / 255.0)[:, None]
        labels = torch.from_numpy(self._labels_u8[rows].astype(np.int64))[:, None]
        return resize_images(frames, self.image_size), resize_labels(labels, self.image_size)

    def sequence(self, i: int) -> dict[str, Any]:
        """Sequence ``i``: "frames", "labels" (T, 1, H, W), "es_frame", "view", "subject"."""
        out = super().sequence(i)
        out["es_frame"] = self._es[i]
        return out
