"""Reading the user's downloads (NIfTI and Analyze through nibabel) and writing prepared datasets atomically.

Every reader turns a missing file into FileNotFoundError and an unreadable one into ValueError, both naming it.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .common import atomic_save_npz, atomic_write_text

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".hdr", ".img", ".img.gz")


def strip_volume_suffix(name: str) -> str | None:
    """File name without its image suffix (one of VOLUME_SUFFIXES), or None if it has none of them."""
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Voxel array (float32, trailing singleton axes dropped) and its 4x4 affine from a NIfTI or Analyze file.

    Analyze pairs may come as ``X.hdr`` + ``X.img.gz`` (LPBA40's release does), which nibabel cannot open as
    they are; we decompress the image next to a copy of the header in a temporary folder and read that.
    """
    path = Path(path)
    name = path.name
    if name.endswith(".img.gz") or name.endswith(".hdr"):
        stem = strip_volume_suffix(name)
        hdr = path.with_name(stem + ".hdr")
        img, img_gz = path.with_name(stem + ".img"), path.with_name(stem + ".img.gz")
        if not hdr.is_file():
            if path.with_name(stem + ".hdr.gz").is_file():
                return _read_with_nibabel(path)
            raise FileNotFoundError(f"missing Analyze header {hdr} (needed to read {path})")
        if img.is_file():
            return _read_with_nibabel(hdr)
        if not img_gz.is_file():
            raise FileNotFoundError(f"missing Analyze image {img} or {img_gz} (header {hdr})")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                shutil.copyfile(hdr, Path(tmp) / hdr.name)
                with gzip.open(img_gz, "rb") as src, open(Path(tmp) / img.name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except (OSError, EOFError, gzip.BadGzipFile) as err:
                raise ValueError(f"cannot read {img_gz}: {err}") from err
            data, affine = _read_with_nibabel(Path(tmp) / hdr.name, shown=img_gz)
        return data, affine
    return _read_with_nibabel(path)


def _read_with_nibabel(path: Path, shown: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    shown = shown or path
    if not path.is_file():
        raise FileNotFoundError(f"missing file {shown}")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ValueError, ...)
        raise ValueError(f"cannot read {shown}: {type(err).__name__}: {err}") from err
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if not np.isfinite(data).all():
        raise ValueError(f"{shown} contains NaN or inf values")
    return data, affine


def find_files(root: Path, pattern: str) -> dict[str, list[Path]]:
    """Files under ``root`` (recursive) whose name minus its image suffix matches ``pattern``; key = group(1)."""
    regex = re.compile(pattern)
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        stem = strip_volume_suffix(path.name)
        if stem is None or not path.is_file():
            continue
        m = regex.fullmatch(stem)
        if m:
            found.setdefault(m.group(1), []).append(path)
    return found


def pick_volume(paths: list[Path]) -> Path:
    """The one file to read among the parts of a volume (NIfTI first, then an Analyze header or image)."""
    order = {s: i for i, s in enumerate(VOLUME_SUFFIXES)}
    return min(paths, key=lambda p: next(order[s] for s in VOLUME_SUFFIXES if p.name.endswith(s)))


def write_prepared(out_dir: Path, splits: dict[str, dict[str, np.ndarray]], manifest: dict[str, Any]) -> None:
    """Write ``<out_dir>/{split}.npz`` and ``manifest.json``, each through a temporary file and ``os.replace``.

    All data is in memory before the first write, so an unreadable input stops the run before any output
    changes; the manifest is written last.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, arrays in splits.items():
        atomic_save_npz(out_dir / f"{split}.npz", **arrays)
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
