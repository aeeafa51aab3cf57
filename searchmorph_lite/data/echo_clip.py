"""``echo2d-clip``: the real apical four-chamber cine that ships with pydicom, a test set without labels.

The clip is ``pydicom.examples.get_path("ybr_color")``, 30 frames at 33 ms, about one beat. It has no labels;
evaluate it with image similarity, folding and cycle consistency. It is one clip of one subject, so it has only a
"test" split: never train or tune on it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from .common import (
    array_problem,
    as_size,
    check_positive_int,
    check_split,
    data_root,
    evenly_spaced,
    pad_to_square,
    resize_images,
    save_cache,
    try_cache,
)
from .sequences import SequencePairDataset

OPTIONS = ("image_size", "frames", "num_pairs")

_CLIP_CACHE = "echo2d_clip_ybr_color_v2.npz"


def _region_box(ds: Any, rows: int, cols: int) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1) of the first ultrasound region, rescaled when it was given for a larger frame."""
    regions = ds.get("SequenceOfUltrasoundRegions")
    if not regions:
        raise ValueError("the DICOM has no SequenceOfUltrasoundRegions to crop to")
    r = regions[0]
    x0, y0 = int(r.RegionLocationMinX0), int(r.RegionLocationMinY0)
    x1, y1 = int(r.RegionLocationMaxX1), int(r.RegionLocationMaxY1)
    # pydicom's example was downsampled 2x after acquisition but kept the original region coordinates; the
    # smallest integer factor that puts the region inside the stored frame undoes that.
    factor = 1
    while x1 // factor >= cols or y1 // factor >= rows:
        factor += 1
        if factor > 8:
            raise ValueError(f"ultrasound region {(x0, y0, x1, y1)} does not fit a {rows}x{cols} frame")
    return y0 // factor, y1 // factor + 1, x0 // factor, x1 // factor + 1


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """Mask (H, W) bool of the pixels inside the convex hull of the True pixels of ``mask``."""
    from scipy.spatial import ConvexHull, Delaunay

    points = np.argwhere(mask).astype(np.float64)
    if len(points) < 3:
        raise ValueError("need at least 3 pixels to take a convex hull")
    hull = Delaunay(points[ConvexHull(points).vertices])
    grid = np.indices(mask.shape).reshape(2, -1).T
    return (hull.find_simplex(grid) >= 0).reshape(mask.shape)


def build_echo_clip(size: int = 160) -> dict[str, np.ndarray]:
    """pydicom's A4C cine: "frames" (30, size, size) float32 in [0, 1] and "frame_time_ms" (scalar).

    Steps: decode (JPEG baseline through Pillow), convert to grey (luma of RGB), crop to the ultrasound region,
    keep the sector (convex hull of the largest bright component of the temporal maximum, which drops the depth
    scale and text overlays), crop to it, pad to a square with the probe at the top, resize. We choose one
    intensity scale for the whole clip (its 99.5th percentile inside the sector -> 1) because per-frame
    scaling would fake brightness changes between frames.
    """
    import pydicom
    from pydicom import examples

    ds = pydicom.dcmread(examples.get_path("ybr_color"))
    rgb = ds.pixel_array  # pydicom converts YBR_FULL_422 to RGB
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"expected a colour cine (T, H, W, 3), got {rgb.shape}")
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    r0, r1, c0, c1 = _region_box(ds, *grey.shape[1:])
    grey = grey[:, r0:r1, c0:c1]
    bright = ndi.uniform_filter(grey.max(axis=0), 5) > 12
    components, n = ndi.label(bright)
    if n == 0:
        raise ValueError("no ultrasound sector found in the clip")
    largest = 1 + int(np.argmax(ndi.sum(bright, components, range(1, n + 1))))
    sector = convex_hull_mask(components == largest)
    rows, cols = np.nonzero(sector)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    grey = grey[:, box[0], box[1]] * sector[box]
    scale = np.percentile(grey[:, sector[box]], 99.5)
    grey = pad_to_square(np.clip(grey / scale, 0.0, 1.0), top_align=True)
    frames = resize_images(torch.from_numpy(grey)[:, None], (size, size))[:, 0].numpy()
    return {"frames": frames.astype(np.float32), "frame_time_ms": np.float32(ds.get("FrameTime", 33.333))}


def clip_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """Why cached clip ``arrays`` are not what :func:`build_echo_clip` makes at 160 x 160, or None."""
    problem = array_problem(arrays, "frames", (None, 160, 160))
    if problem:
        return problem
    if len(arrays["frames"]) < 2:
        return f"frames holds {len(arrays['frames'])} frame(s), a clip has at least 2"
    t = np.asarray(arrays["frame_time_ms"])
    if t.size != 1 or t.dtype.kind not in "fiu" or not (np.isfinite(t).all() and float(t.reshape(-1)[0]) > 0):
        return f"frame_time_ms is {t!r}, expected one positive number"
    return None


def load_echo_clip(cache: bool = True) -> dict[str, np.ndarray]:
    """The clip of :func:`build_echo_clip` at 160 x 160, read from ``<data root>/cache`` when cached.

    A cache whose content is wrong (see :func:`clip_problem`) is rebuilt with a warning.
    """
    path = data_root() / "cache" / _CLIP_CACHE
    if cache:
        arrays = try_cache(path, ("frames", "frame_time_ms"), clip_problem)
        if arrays is not None:
            return arrays
    arrays = build_echo_clip(160)
    if cache:
        save_cache(path, **arrays)
    return arrays


class EchoClip(SequencePairDataset):
    """``echo2d-clip``: one unlabelled A4C sequence (split "test" only); items pair frame 0 with frame t.

    ``frames`` keeps that many frames, evenly spaced and always including frame 0; ``sequence(0)`` adds
    "frame_time_ms" (mean time between kept frames).
    """

    name = "echo2d-clip"
    has_labels = False

    def __init__(
        self, split: str, image_size: int = 160, frames: int | None = None, num_pairs: int | None = None
    ) -> None:
        if split in ("train", "val"):
            raise ValueError(
                "echo2d-clip is a single unlabelled clip of one subject, so it has only a 'test' split; "
                "train on 'echo2d-synthetic' (or 'camus') and evaluate here"
            )
        self.split = check_split(split, ("test",), name=self.name)
        size = as_size(image_size)
        if size[0] != size[1]:
            raise ValueError(f"echo2d-clip images are square, got image_size={image_size!r}")
        clip = load_echo_clip()
        video = torch.from_numpy(clip["frames"])[:, None]
        keep = evenly_spaced(len(video), None if frames is None else check_positive_int(frames, "frames", minimum=2))
        self._video = resize_images(video[keep], size)
        # Mean time between kept frames (evenly spaced indices may differ by one frame).
        self.frame_time_ms = float(clip["frame_time_ms"]) * (keep[-1] - keep[0]) / max(len(keep) - 1, 1)
        self.image_size = size
        self._num_frames = [len(keep)]
        self._init_pairs(num_pairs)

    def _meta(self, i: int) -> dict[str, Any]:
        return {"view": "4CH", "subject": "pydicom-ybr_color"}

    def _frames(self, i: int, ts: list[int]) -> tuple[torch.Tensor, None]:
        return self._video[ts].clone(), None

    def sequence(self, i: int) -> dict[str, Any]:
        """The clip: "frames" (T, 1, H, W), "view", "subject", "frame_time_ms" (no labels)."""
        out = super().sequence(i)
        out["frame_time_ms"] = self.frame_time_ms
        return out
