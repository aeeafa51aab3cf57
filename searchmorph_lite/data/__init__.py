"""Datasets of the book, one loader: ``load_dataset(name, split, **options)``.

Embedded (no download, nothing fetched at run time): "brain2d" (MNI152 template slices, stands in for LPBA40),
"echo2d-synthetic" (generated 2CH/3CH/4CH cine loops with labels), "echo2d-clip" (pydicom's real A4C cine, no
labels, test split only). Prepared from the user's download with ``data_scripts/``: "lpba40", "camus".

Every item is a dict with "moving" and "fixed" float tensors (1, H, W) in [0, 1], plus "moving_labels" and
"fixed_labels" int64 tensors (1, H, W) where the dataset has labels, and plain str/int metadata, so the default
``DataLoader`` collate works. Sequence datasets (echo2d-*, camus) pair the ED frame 0 (moving) with frame t
(fixed) and also give whole sequences through ``dataset.sequence(i)`` / ``dataset.sequences()``.
Generated data and caches live under :func:`data_root` (``$SEARCHMORPH_DATA``, default ``~/.searchmorph/data``).
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from .common import SPLITS, check_options, check_split, data_root

DATASETS = ("brain2d", "echo2d-synthetic", "echo2d-clip", "lpba40", "camus")

__all__ = ["DATASETS", "SPLITS", "data_root", "dataset_options", "load_dataset"]


def dataset_options(name: str) -> tuple[str, ...]:
    """Option names ``load_dataset(name, split, **options)`` accepts for dataset ``name``."""
    if name == "brain2d":
        from .brain2d import OPTIONS
    elif name == "echo2d-synthetic":
        from .echo import SYNTHETIC_OPTIONS as OPTIONS
    elif name == "echo2d-clip":
        from .echo import CLIP_OPTIONS as OPTIONS
    elif name == "lpba40":
        from .lpba40 import OPTIONS
    elif name == "camus":
        from .camus import OPTIONS
    else:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    return tuple(OPTIONS)


def load_dataset(name: str, split: str, **options: Any) -> Dataset:
    """Dataset of registration pairs for ``name`` and ``split`` ("train", "val", "test"); items as in the module doc.

    Options (all optional): brain2d: seed, num_pairs, image_size, max_displacement; echo2d-synthetic: seed,
    num_sequences, frames, image_size, num_pairs, views; echo2d-clip: image_size, frames, num_pairs;
    lpba40: image_size, num_pairs; camus: image_size, num_pairs, views. For data that exists (clip, lpba40,
    camus, and echo2d-synthetic's pairs) num_pairs keeps at most that many pairs, evenly spread.
    """
    check_options(name, options, dataset_options(name))
    check_split(split, SPLITS, name=name)
    if name == "brain2d":
        from .brain2d import Brain2D

        return Brain2D(split, **options)
    if name == "echo2d-synthetic":
        from .echo import EchoSynthetic

        return EchoSynthetic(split, **options)
    if name == "echo2d-clip":
        from .echo import EchoClip

        return EchoClip(split, **options)
    if name == "lpba40":
        from .lpba40 import Lpba40

        return Lpba40(split, **options)
    from .camus import Camus

    return Camus(split, **options)
