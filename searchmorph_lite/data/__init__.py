"""Datasets of the book, one loader: ``load_dataset(name, split, **options)``.

Embedded (no download, nothing fetched at run time): "brain2d" (MNI152 template slices, stands in for LPBA40),
"echo2d-synthetic" (generated 2CH/3CH/4CH cine loops with labels), "echo2d-clip" (pydicom's real A4C cine, no
labels, test split only), "brain3d" (3D virtual subjects from MNI152 at 2 mm: items (1, D, H, W)). Prepared from
the user's download with ``data_scripts/``: "lpba40", "camus".

Every item is a dict with "moving" and "fixed" float tensors (1, H, W) in [0, 1], plus "moving_labels" and
"fixed_labels" int64 tensors (1, H, W) where the dataset has labels, and plain str/int metadata, so the default
``DataLoader`` collate works. Sequence datasets (echo2d-*, camus) pair the ED frame 0 (moving) with frame t
(fixed) and also give whole sequences through ``dataset.sequence(i)`` / ``dataset.sequences()``.
Generated data and caches live under :func:`data_root` (``$SEARCHMORPH_DATA``, default ``~/.searchmorph/data``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from torch.utils.data import Dataset

from .common import SPLITS, check_options, check_split, data_root

# name -> (module of this package, Dataset class in it); each module also defines OPTIONS, the option names
# its class accepts. Modules are imported on first use, so importing the package stays light.
REGISTRY: dict[str, tuple[str, str]] = {
    "brain2d": ("brain2d", "Brain2D"),
    "brain2d-subjects": ("brain_subjects", "BrainSubjects2D"),
    "brain3d": ("brain3d", "Brain3D"),
    "echo2d-synthetic": ("echo_synthetic", "EchoSynthetic"),
    "echo2d-clip": ("echo_clip", "EchoClip"),
    "lpba40": ("lpba40", "Lpba40"),
    "camus": ("camus", "Camus"),
}
DATASETS = tuple(REGISTRY)

__all__ = ["DATASETS", "REGISTRY", "SPLITS", "data_root", "dataset_frame", "dataset_options", "load_dataset"]


def _module(name: str):
    if name not in REGISTRY:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return import_module(f".{REGISTRY[name][0]}", __name__)


def dataset_options(name: str) -> tuple[str, ...]:
    """Option names ``load_dataset(name, split, **options)`` accepts for dataset ``name``."""
    return tuple(_module(name).OPTIONS)


def dataset_frame(name: str, options: dict) -> dict | None:
    """The frame a model trained on ``name`` with ``options`` expects ({"axcodes", "voxel_mm", "shape"}), or None
    for data without an anatomical orientation (echo sectors, prepared downloads): those register on the fixed
    image's own grid."""
    module = _module(name)
    return module.frame(options) if hasattr(module, "frame") else None


def load_dataset(name: str, split: str, **options: Any) -> Dataset:
    """Dataset of registration pairs for ``name`` and ``split`` ("train", "val", "test"); items as in the module doc.

    Options (all optional): brain2d: seed, num_pairs, image_size, max_displacement; echo2d-synthetic: seed,
    num_sequences, frames, image_size, num_pairs, views; echo2d-clip: image_size, frames, num_pairs;
    brain3d: seed, num_pairs, max_displacement, contrast, artifacts, voxel_mm (2 or 4);
    lpba40: image_size, num_pairs; camus: image_size, num_pairs, views. For data that exists (clip, lpba40,
    camus, and echo2d-synthetic's pairs) num_pairs keeps at most that many pairs, evenly spread.
    """
    module = _module(name)
    check_options(name, options, module.OPTIONS)
    check_split(split, SPLITS, name=name)
    return getattr(module, REGISTRY[name][1])(split, **options)
