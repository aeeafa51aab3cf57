"""Shared pieces of the data package: the data root, atomic writes, resizing, seeded random fields, option checks.

Nothing here touches the network. Heavy optional dependencies (nibabel, nilearn, pydicom) are imported inside
the functions that need them, so ``import searchmorph_lite.data`` stays fast.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .._files import atomic_write, atomic_write_text

__all__ = ["atomic_save_npz", "atomic_write_text"]  # re-exported: data.io and the scripts write through these

SPLITS = ("train", "val", "test")
# A different integer per split goes into every seed, so no two splits can draw the same generated subject.
SPLIT_CODES = {"train": 1, "val": 2, "test": 3}


def data_root() -> Path:
    """Data root directory: ``$SEARCHMORPH_DATA`` if set, else ``~/.searchmorph/data`` (not created here)."""
    env = os.environ.get("SEARCHMORPH_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".searchmorph" / "data"


def check_split(split: str, allowed: Iterable[str] = SPLITS, name: str = "dataset") -> str:
    """The split name, unchanged; raise ValueError if it is not one of ``allowed``."""
    allowed = tuple(allowed)
    if split not in allowed:
        raise ValueError(f"unknown split {split!r} for {name}; expected one of {', '.join(allowed)}")
    return split


def check_options(name: str, options: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """Raise ValueError naming any option in ``options`` that ``name`` does not accept."""
    accepted = sorted(accepted)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{name} does not accept option(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")


def as_size(image_size: int | tuple[int, ...] | list[int], what: str = "image_size", ndim: int = 2) -> tuple[int, ...]:
    """Size with ``ndim`` sides from an int (a square or cube) or a sequence; ValueError unless all are ints >= 8."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        size = (int(image_size),) * ndim
    elif isinstance(image_size, (tuple, list)) and len(image_size) == ndim:
        if not all(isinstance(n, (int, np.integer)) and not isinstance(n, bool) for n in image_size):
            raise ValueError(f"{what} must hold integers, got {image_size!r}")
        size = tuple(int(n) for n in image_size)
    else:
        shape = "(H, W)" if ndim == 2 else "(D, H, W)"
        raise ValueError(f"{what} must be an int or {ndim} integers {shape}, got {image_size!r}")
    if min(size) < 8:
        raise ValueError(f"{what} must be at least 8 pixels on each side, got {size}")
    return size


def check_positive_int(value: Any, what: str, minimum: int = 1) -> int:
    """``value`` as int; raise ValueError unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def evenly_spaced(n_available: int, n_wanted: int | None) -> np.ndarray:
    """Indices (min(n_wanted, n_available),) spread evenly over range(n_available); all of them if None."""
    if n_wanted is None or n_wanted >= n_available:
        return np.arange(n_available)
    n_wanted = check_positive_int(n_wanted, "num_pairs")
    return np.unique(np.round(np.linspace(0, n_available - 1, n_wanted)).astype(np.int64))


def resize_images(images: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Images (N, C, *size), clipped to [0, 1]: bilinear with antialiasing in 2D, trilinear (area when shrinking)
    in 3D, where torch has no antialiased trilinear mode."""
    if tuple(images.shape[2:]) == tuple(size):
        return images
    if len(size) == 2:
        out = F.interpolate(images.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    elif all(n <= m for n, m in zip(size, images.shape[2:])):
        out = F.interpolate(images.float(), size=size, mode="area")
    else:
        out = F.interpolate(images.float(), size=size, mode="trilinear", align_corners=False)
    return out.clamp(0.0, 1.0)


def resize_labels(labels: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Label maps (N, C, *size), nearest neighbour so no new label values appear."""
    if tuple(labels.shape[2:]) == tuple(size):
        return labels
    return F.interpolate(labels.float(), size=size, mode="nearest-exact").to(labels.dtype)


def pad_to_square(array: np.ndarray, value: float = 0.0, top_align: bool = False) -> np.ndarray:
    """Array (..., S, S) with S = max(H, W): zero padding, centred (or columns centred, rows at the top)."""
    h, w = array.shape[-2:]
    s = max(h, w)
    top = 0 if top_align else (s - h) // 2
    left = (s - w) // 2
    pad = [(0, 0)] * (array.ndim - 2) + [(top, s - h - top), (left, s - w - left)]
    return np.pad(array, pad, constant_values=value)


def smooth_random_field(
    rng: np.random.Generator, shape: tuple[int, ...], grid: tuple[int, ...], channels: int = 1
) -> np.ndarray:
    """Smooth field (channels, *shape): N(0, 1) values on a coarse ``grid`` upsampled bicubically (2D) or
    trilinearly (3D, where torch has no tricubic mode)."""
    coarse = torch.from_numpy(rng.standard_normal((1, channels, *grid)).astype(np.float32))
    mode = "bicubic" if len(shape) == 2 else "trilinear"
    fine = F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)
    return fine[0].numpy()


def rng_for(*keys: int) -> np.random.Generator:
    """Generator seeded from the integer tuple ``keys`` (NumPy SeedSequence): same keys, same stream."""
    return np.random.default_rng([int(k) for k in keys])


def atomic_save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> Path:
    """Path written: ``np.savez`` of ``arrays`` through the library's atomic writer (never half-written)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare path
            np.savez(f, **arrays)

    return atomic_write(path, write)


def load_npz(path: str | os.PathLike, required: Iterable[str]) -> dict[str, np.ndarray]:
    """Arrays of an .npz file as a dict; FileNotFoundError if absent, ValueError if unreadable or incomplete.

    Loaded without pickle: a file holding Python objects is refused (our message never suggests allowing them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"missing file {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("it is a single .npy array, not an .npz archive")
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, AttributeError, KeyError) as err:
        if "Object arrays" in str(err):
            raise ValueError(f"cannot read {path}: it holds Python object arrays, which are never loaded") from None
        if "pickle" in str(err):
            raise ValueError(f"cannot read {path}: it is not an .npz archive") from None
        raise ValueError(f"cannot read {path}: {err}") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        raise ValueError(f"{path} lacks array(s) {', '.join(missing)}")
    return arrays


def array_problem(arrays: Mapping[str, np.ndarray], name: str, shape: tuple, kinds: str = "f") -> str | None:
    """Why ``arrays[name]`` does not fit ``shape`` (None entries match any size) and dtype kinds ("f", "iu"):
    a sentence, or None when it fits."""
    a = arrays[name]
    if a.ndim != len(shape) or any(n is not None and m != n for m, n in zip(a.shape, shape)):
        want = "(" + ", ".join("*" if n is None else str(n) for n in shape) + ")"
        return f"{name} has shape {a.shape}, expected {want}"
    if a.dtype.kind not in kinds:
        return f"{name} has dtype {a.dtype}"
    if a.dtype.kind == "f" and a.size and not (np.isfinite(a).all() and 0 <= a.min() and a.max() <= 1):
        return f"{name} holds values outside [0, 1] or NaN"
    return None


def try_cache(
    path: Path, required: Iterable[str], validate: Callable[[dict[str, np.ndarray]], str | None] | None = None
) -> dict[str, np.ndarray] | None:
    """Cached arrays from ``path``, or None when the cache is absent, unreadable or wrong (it is then rebuilt).

    ``validate(arrays)`` returns why the content is wrong (shapes, dtypes, value ranges) or None. A cache is
    derived data, so a wrong one is rebuilt (and overwritten), with a warning naming the file and the reason,
    rather than refused.
    """
    try:
        arrays = load_npz(path, required)
        reason = validate(arrays) if validate is not None else None
    except FileNotFoundError:
        return None
    except ValueError as err:
        reason = str(err).replace(f"cannot read {path}: ", "")
    if reason is None:
        return arrays
    warnings.warn(f"rebuilding the data cache {path}: {reason}", stacklevel=3)
    return None


def save_cache(path: Path, **arrays: np.ndarray) -> None:
    """Write a cache file atomically; silently skip when the data root is not writable (caching is optional)."""
    try:
        atomic_save_npz(path, **arrays)
    except OSError:
        pass


def label_fractions(labels: torch.Tensor, num_labels: int) -> list[float]:
    """Fractions (num_labels,) of pixels holding each label value 0..num_labels-1 in ``labels``."""
    counts = torch.bincount(labels.flatten().long(), minlength=num_labels)[:num_labels]
    return (counts.double() / labels.numel()).tolist()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the body with one torch intra-op thread, restoring the previous count afterwards.

    We generate items on one thread because an item is a few 192 x 160 tensors: forking work across threads
    costs more than it saves, and on a busy 2-core machine it made generation 5x slower.
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
