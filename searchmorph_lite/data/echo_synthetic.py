"""``echo2d-synthetic``: generated apical cine loops with exact labels and the true ED-to-t field.

echo2d-synthetic models an apical view with the probe at the top: a sector of 80 degrees, the left ventricle
(label 1 blood pool, label 2 myocardium) as a truncated ellipse whose wall is open at the mitral plane, the other
chambers of the view as dark unlabelled cavities (2CH: left atrium; 3CH: left atrium and aortic outflow; 4CH:
left atrium, right ventricle and right atrium), a bright pericardial line, textured surrounding tissue,
multiplicative Rayleigh speckle that moves with the tissue and partly decorrelates from frame to frame (fully in
blood), depth attenuation, near-field clutter and electronic noise. The cycle is ED -> ES -> ED: frame t is the
ED frame warped by an analytic contraction field (cavity radial 30-45 %, longitudinal 10-20 % at ES; the base
moves toward a nearly still apex, the wall keeps its area and thickens), so labels, images and the true ED-to-t
field agree exactly (labels are warped with nearest, as the library does). ES is at 40 % of the sequence, the
last frame is ED again.

It omits: out-of-plane motion and probe motion, valves, trabeculae and papillary muscles, the other chambers'
own contraction, twist, acoustic shadowing, reverberation, dropout of walls parallel to the beam and the depth
dependence of the point-spread function. Its speckle is a statistical model, not an acoustic simulation.

The real clip that tests a model trained on these loops is in :mod:`searchmorph_lite.data.echo_clip`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi

from ..transform import warp
from .common import (
    SPLIT_CODES,
    as_size,
    check_positive_int,
    check_split,
    rng_for,
    single_thread,
    smooth_random_field,
)
from .sequences import SequencePairDataset

VIEWS = ("2CH", "3CH", "4CH")
ECHO_LABEL_NAMES = ("background", "lv_blood_pool", "lv_myocardium")
OPTIONS = ("seed", "num_sequences", "frames", "image_size", "num_pairs", "views", "variability")
VARIABILITIES = ("standard", "wide")
DEFAULT_NUM_SEQUENCES = {"train": 30, "val": 9, "test": 9}
SECTOR_HALF_ANGLE = math.radians(40.0)
ES_FRACTION = 0.4  # systole takes about 40 % of a cycle at rest


def contraction(t: int, frames: int) -> float:
    """Contraction c in [0, 1] at frame ``t`` of ``frames``: 0 at ED (t = 0 and t = frames-1), 1 at ES."""
    es = es_frame(frames)
    if t <= es:
        return 0.5 * (1.0 - math.cos(math.pi * t / es))
    return 0.5 * (1.0 + math.cos(math.pi * (t - es) / (frames - 1 - es)))


def es_frame(frames: int) -> int:
    """Index of the end-systolic frame: round(0.4 * (frames - 1)), at least 1 and before the last frame."""
    return min(max(1, round(ES_FRACTION * (frames - 1))), frames - 2)


@dataclass(frozen=True)
class HeartGeometry:
    """One synthetic heart at ED in pixel units: LV apex, axes, size, contraction and the other cavities."""

    view: str
    size: int
    apex: np.ndarray  # endocardial apex (row, col)
    axis: np.ndarray  # unit vector apex -> base
    normal: np.ndarray  # unit vector across the LV, toward the image's right
    length: float  # endocardial apex to mitral plane
    width: float  # endocardial half-width at the base
    wall: float  # myocardial thickness at ED
    alpha_long: float  # longitudinal shortening at ES (fraction)
    alpha_radial: float  # radial shortening at ES (fraction)
    cavities: tuple  # ((kind, centre, axis, half_length, half_width), ...) for unlabelled chambers


@dataclass(frozen=True)
class Imaging:
    """How a sequence is scanned and displayed: sector, speckle, gains, compression, noise, motion amplitude."""

    half_angle: float = SECTOR_HALF_ANGLE  # radians
    depth: float = 0.95  # sector depth as a fraction of the image side
    heart_scale: float = 1.0  # multiplies every length of the heart
    speckle_sigma: tuple[float, float] = (0.7, 1.5)  # speckle correlation (depth, lateral) in px at 160 x 160
    blood: float = 0.04  # blood reflectivity (haze in the cavities)
    log_gain: float = 0.0  # display compression: log1p(g x) / log1p(g); 0 is linear
    noise: float = 0.02  # electronic noise sigma
    blur: float = 0.0  # extra Gaussian blur of each frame (px at 160 x 160)
    motion: float = 1.0  # multiplies the contraction amplitudes drawn for the heart


STANDARD_IMAGING = Imaging()


def draw_imaging(rng: np.random.Generator) -> Imaging:
    """Random scan and display settings for ``variability="wide"``.

    We widen what separates our simulator from real clips (pydicom's A4C, CAMUS): wider and shallower
    sectors, larger hearts, coarser speckle, hazier cavities, logarithmic display compression, more noise and
    blur, and 0.7-1.3x the motion amplitude. Ranges are our choice, set by eye on the two kinds of images.
    """
    return Imaging(
        half_angle=math.radians(rng.uniform(35.0, 50.0)),
        depth=rng.uniform(0.85, 1.0),
        heart_scale=rng.uniform(0.9, 1.25),
        speckle_sigma=(rng.uniform(0.7, 2.0), rng.uniform(1.5, 3.5)),
        blood=rng.uniform(0.02, 0.15),
        log_gain=float(rng.choice([0.0, rng.uniform(2.0, 30.0)])),
        noise=rng.uniform(0.01, 0.05),
        blur=rng.uniform(0.0, 1.5),
        motion=rng.uniform(0.7, 1.3),
    )


def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def draw_geometry(rng: np.random.Generator, view: str, size: int, scale: float = 1.0) -> HeartGeometry:
    """Random heart geometry for ``view`` ("2CH", "3CH", "4CH") in an image of ``size`` x ``size`` pixels.

    ``scale`` multiplies the heart's lengths (not its position near the probe).
    """
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    s = size / 160.0 * scale
    col_shift, tilt = {"2CH": ((-4, 4), (-6, 6)), "3CH": ((-8, -2), (-10, -2)), "4CH": ((2, 8), (2, 10))}[view]
    tilt = math.radians(rng.uniform(*tilt))
    axis = _unit(tilt)  # (row, col): tilt > 0 leans the base to the right
    normal = np.array([-axis[1], axis[0]])
    apex = np.array([rng.uniform(24, 32) * size / 160.0, (size - 1) / 2 + rng.uniform(*col_shift) * s])
    length, width, wall = rng.uniform(78, 92) * s, rng.uniform(19, 25) * s, rng.uniform(7.5, 10.5) * s
    base = apex + axis * length
    gap = 0.8 * wall  # atrioventricular plane tissue between ventricle and atrium
    cavities = []
    la_shift = -6 * s if view == "3CH" else 0.0
    la_len = rng.uniform(20, 26) * s
    cavities.append(
        ("ellipse", base + axis * (gap + la_len) + normal * la_shift, axis, la_len, rng.uniform(20, 25) * s)
    )
    if view == "4CH":
        rv_axis = _unit(tilt - math.radians(6))
        rv_width = rng.uniform(13, 17) * s
        rv_base = base - normal * (width + wall + 3 * s + rv_width)
        cavities.append(("half", rv_base, rv_axis, rng.uniform(0.7, 0.8) * length, rv_width))
        ra_len = rng.uniform(18, 22) * s
        cavities.append(("ellipse", rv_base + rv_axis * (gap + ra_len), rv_axis, ra_len, 1.1 * rv_width))
    if view == "3CH":
        ao_axis = _unit(tilt + math.radians(50))
        cavities.append(("ellipse", base + normal * (width + 6 * s) - axis * (4 * s), ao_axis, 22 * s, 8 * s))
    return HeartGeometry(
        view=view,
        size=size,
        apex=apex,
        axis=axis,
        normal=normal,
        length=length,
        width=width,
        wall=wall,
        alpha_long=rng.uniform(0.10, 0.20),
        alpha_radial=rng.uniform(0.30, 0.45),
        cavities=tuple(cavities),
    )


def _grid(size: int) -> np.ndarray:
    return np.stack(np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij"))


def _local(points: np.ndarray, origin: np.ndarray, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rel = points - origin[:, None, None]
    u = rel[0] * axis[0] + rel[1] * axis[1]
    v = -rel[0] * axis[1] + rel[1] * axis[0]
    return u, v


def _half_ellipse(
    points: np.ndarray, base: np.ndarray, axis: np.ndarray, half_length: float, half_width: float
) -> np.ndarray:
    # Apex side of an ellipse centred on the base point (u <= 0 points from the base toward the apex).
    u, v = _local(points, base, axis)
    return (u <= 0) & ((u / half_length) ** 2 + (v / half_width) ** 2 <= 1.0)


def _ellipse(
    points: np.ndarray, centre: np.ndarray, axis: np.ndarray, half_length: float, half_width: float
) -> np.ndarray:
    u, v = _local(points, centre, axis)
    return (u / half_length) ** 2 + (v / half_width) ** 2 <= 1.0


def ed_anatomy(geo: HeartGeometry) -> tuple[np.ndarray, np.ndarray]:
    """ED labels (H, W) uint8 (1 LV blood pool, 2 myocardium) and a mask (H, W) bool of all blood cavities."""
    p = _grid(geo.size)
    base = geo.apex + geo.axis * geo.length
    endo = _half_ellipse(p, base, geo.axis, geo.length, geo.width)
    epi = _half_ellipse(p, base, geo.axis, geo.length + geo.wall, geo.width + geo.wall)
    band = 3.0 * geo.size / 160.0  # other cavities stay clear of the myocardium and pericardium
    keep_out = _half_ellipse(p, base, geo.axis, geo.length + geo.wall + band, geo.width + geo.wall + band)
    blood = endo.copy()
    for kind, centre, axis, half_length, half_width in geo.cavities:
        shape = _half_ellipse if kind == "half" else _ellipse
        blood |= shape(p, centre, axis, half_length, half_width) & ~keep_out
    labels = np.zeros((geo.size, geo.size), np.uint8)
    labels[epi] = 2
    labels[endo] = 1
    return labels, blood


def _radial_scale(rho: np.ndarray, c: float, alpha: float) -> np.ndarray:
    # Factor k with ED radius = k * current radius. The cavity (inside the current endocardium) scales
    # uniformly; outside it, rho0^2 = rho^2 + delta * taper(rho) keeps the area between any two contours
    # (the wall is incompressible: it thickens as it shortens) and the taper stops the motion far away.
    k_cavity = 1.0 + c * alpha
    rho_endo = 1.0 / k_cavity
    delta = 1.0 - rho_endo**2
    s = np.clip((rho - 1.5) / (2.6 - 1.5), 0.0, 1.0)
    taper = 1.0 - (3 * s**2 - 2 * s**3)
    outside = np.sqrt(rho**2 + delta * taper) / np.maximum(rho, 1e-9)
    return np.where(rho <= rho_endo, k_cavity, outside)


def contraction_flow(geo: HeartGeometry, c: float) -> np.ndarray:
    """Field (2, H, W) in pixels mapping each pixel of a frame with contraction ``c`` to its ED position (p + flow).

    Around a centre on the long axis at 35 % of the length from the apex, a point's coordinates along and across
    the axis are scaled by factors that depend on an elliptic radius rho (~1 on the ED endocardium): uniform
    inside the cavity (1 + c * alpha), area-preserving in the wall (it thickens as the cavity shrinks), and
    tapering to none beyond rho = 2.6. We choose this closed form (not a biomechanical model) because it is
    invertible (no folding), exact at any frame, and gives the textbook picture of a base moving toward a
    nearly still apex with a thickening wall.
    """
    p = _grid(geo.size)
    centre = geo.apex + geo.axis * (0.35 * geo.length)
    u, v = _local(p, centre, geo.axis)
    a_u = np.where(u < 0, 0.35 * geo.length, 0.65 * geo.length)
    rho = np.sqrt((u / a_u) ** 2 + (v / geo.width) ** 2)
    u0 = u * _radial_scale(rho, c, geo.alpha_long)
    v0 = v * _radial_scale(rho, c, geo.alpha_radial)
    ed = centre[:, None, None] + geo.axis[:, None, None] * u0 + geo.normal[:, None, None] * v0
    return (ed - p).astype(np.float32)


def sector_geometry(
    size: int, half_angle: float = SECTOR_HALF_ANGLE, depth_fraction: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Depth from the probe (H, W) in pixels and the sector mask (H, W) bool of the apical view."""
    p = _grid(size)
    probe = np.array([3.0 * size / 160.0, (size - 1) / 2])
    dr, dc = p[0] - probe[0], p[1] - probe[1]
    depth = np.hypot(dr, dc)
    inside = (depth <= depth_fraction * size) & (np.abs(np.arctan2(dc, np.maximum(dr, 1e-9))) <= half_angle) & (dr > 0)
    return depth, inside


def _speckle(rng: np.random.Generator, size: int, sigma: tuple[float, float] = (0.7, 1.5)) -> np.ndarray:
    # Complex Gaussian field (2, H, W) with unit power, correlated over ~sigma px in depth and laterally.
    s = size / 160.0
    z = rng.standard_normal((2, size, size))
    z = np.stack([ndi.gaussian_filter(c, sigma=(sigma[0] * s, sigma[1] * s)) for c in z])
    return z / np.sqrt((z**2).sum(axis=0).mean())


def make_echo_sequence(
    seed: int | tuple[int, ...],
    view: str = "4CH",
    frames: int = 20,
    image_size: int = 160,
    ts: list[int] | None = None,
    variability: str = "standard",
) -> dict[str, Any]:
    """Cine dict: "frames" (T, 1, S, S) float in [0, 1], "labels" (T, 1, S, S) int64, "flows" (T, 2, S, S), "es_frame".

    ``flows[t]`` is the true field of the pair (frame 0 -> frame t): ``frames[0]`` sampled at p + flows[t](p)
    gives frame t's anatomy. With ``ts`` only those frames are made (in that order), which is how dataset
    items stay cheap. Deterministic in (seed, view, frames, image_size, variability). ``variability="wide"``
    draws the scan and display settings of :func:`draw_imaging` per sequence (a separate random stream, so the
    heart and its motion are those of the standard sequence with the same seed).
    """
    if variability not in VARIABILITIES:
        raise ValueError(f"variability must be one of {', '.join(VARIABILITIES)}, got {variability!r}")
    with single_thread():
        return _make_echo_sequence(seed, view, frames, image_size, ts, variability)


def _make_echo_sequence(
    seed: int | tuple[int, ...], view: str, frames: int, image_size: int, ts: list[int] | None, variability: str
) -> dict[str, Any]:
    frames = check_positive_int(frames, "frames", minimum=3)
    size = check_positive_int(image_size, "image_size", minimum=32)
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; expected one of {', '.join(VIEWS)}")
    keys = tuple(seed) if isinstance(seed, tuple) else (seed,)
    rng = rng_for(*keys, VIEWS.index(view))
    imaging = draw_imaging(rng_for(*keys, VIEWS.index(view), 77)) if variability == "wide" else STANDARD_IMAGING
    geo = draw_geometry(rng, view, size, scale=imaging.heart_scale)
    if imaging.motion != 1.0:
        geo = replace(geo, alpha_long=geo.alpha_long * imaging.motion, alpha_radial=geo.alpha_radial * imaging.motion)
    labels0, blood = ed_anatomy(geo)

    # Reflectivity at ED: textured tissue, brighter myocardium, a bright pericardial line, dark blood.
    tissue = 0.32 * np.exp(0.25 * smooth_random_field(rng, (size, size), grid=(6, 6))[0])
    myo = 0.62 * np.exp(0.12 * smooth_random_field(rng, (size, size), grid=(8, 8))[0])
    p = _grid(size)
    base = geo.apex + geo.axis * geo.length
    band = 3.0 * size / 160.0  # pericardium just outside the epicardium
    peri = _half_ellipse(p, base, geo.axis, geo.length + geo.wall + band, geo.width + geo.wall + band) & (labels0 == 0)
    refl = np.where(peri, 0.85, tissue)
    refl = np.where(labels0 == 2, myo, refl)
    refl = np.where(blood, imaging.blood, refl)
    refl = ndi.gaussian_filter(refl, sigma=1.0 * size / 160.0)
    decorrelation = ndi.gaussian_filter(np.where(blood, 1.0, 0.12), sigma=1.0)
    speckle0 = _speckle(rng, size, imaging.speckle_sigma)
    attenuation = rng.uniform(0.5, 1.0)
    clutter = rng.uniform(0.1, 0.3)
    gain = rng.uniform(0.9, 1.2)
    depth, sector = sector_geometry(size, imaging.half_angle, imaging.depth)
    ramp = gain * np.exp(-attenuation * depth / size)
    haze = clutter * np.exp(-depth / (12.0 * size / 160.0))

    ed_stack = torch.from_numpy(np.stack([refl, speckle0[0], speckle0[1], decorrelation]).astype(np.float32))[None]
    ed_labels = torch.from_numpy(labels0.astype(np.float32))[None, None]
    ts = list(range(frames)) if ts is None else list(ts)
    out_frames, out_labels, out_flows = [], [], []
    for t in ts:
        if not 0 <= t < frames:
            raise ValueError(f"frame {t} out of range for a sequence of {frames} frames")
        frng = rng_for(*keys, VIEWS.index(view), 1000 + t)  # per-frame speckle and noise, independent of ts
        flow = torch.from_numpy(contraction_flow(geo, contraction(t, frames)))[None]
        r, zr, zi, eps = warp(ed_stack, flow, mode="bilinear", padding_mode="border")[0].numpy()
        fresh = _speckle(frng, size, imaging.speckle_sigma)
        eps = np.clip(eps, 0.0, 1.0)
        keep = np.sqrt(1.0 - eps)
        envelope = np.hypot(keep * zr + np.sqrt(eps) * fresh[0], keep * zi + np.sqrt(eps) * fresh[1])
        envelope /= math.sqrt(math.pi) / 2  # Rayleigh mean of unit-power speckle -> mean 1
        image = (r * ramp + haze) * envelope
        if imaging.blur:
            image = ndi.gaussian_filter(image, imaging.blur * size / 160.0)
        if imaging.log_gain:
            image = np.log1p(imaging.log_gain * np.clip(image, 0.0, None)) / math.log1p(imaging.log_gain)
        image = image + imaging.noise * frng.standard_normal((size, size))
        image = np.clip(image * sector, 0.0, 1.0).astype(np.float32)
        lab = warp(ed_labels, flow, mode="nearest")[0].long() * torch.from_numpy(sector)
        out_frames.append(torch.from_numpy(image)[None])
        out_labels.append(lab)
        out_flows.append(flow[0])
    return {
        "frames": torch.stack(out_frames),
        "labels": torch.stack(out_labels),
        "flows": torch.stack(out_flows),
        "es_frame": es_frame(frames),
        "view": view,
    }


class EchoSynthetic(SequencePairDataset):
    """``echo2d-synthetic``: sequence i of a split has view ``views[i % len(views)]`` and is made from (seed, split, i).

    ``sequence(i)`` adds "flows" (T, 2, H, W), the true ED-to-t fields, and "es_frame" to the base class's keys.
    """

    name = "echo2d-synthetic"
    has_labels = True
    label_names = ECHO_LABEL_NAMES
    num_labels = len(ECHO_LABEL_NAMES)

    def __init__(
        self,
        split: str,
        seed: int = 0,
        num_sequences: int | None = None,
        frames: int = 20,
        image_size: int = 160,
        num_pairs: int | None = None,
        views: tuple[str, ...] | list[str] = VIEWS,
        variability: str = "standard",
    ) -> None:
        self.split = check_split(split, name=self.name)
        if variability not in VARIABILITIES:
            raise ValueError(f"variability must be one of {', '.join(VARIABILITIES)}, got {variability!r}")
        self.variability = variability
        self.seed = check_positive_int(seed, "seed", minimum=0)
        n = (
            DEFAULT_NUM_SEQUENCES[split]
            if num_sequences is None
            else check_positive_int(num_sequences, "num_sequences")
        )
        self.frames = check_positive_int(frames, "frames", minimum=3)
        size = as_size(image_size)
        if size[0] != size[1] or size[0] < 32:
            raise ValueError(f"echo2d-synthetic images are square and at least 32 px, got image_size={image_size!r}")
        self.image_size = size
        views = (views,) if isinstance(views, str) else tuple(views)
        bad = [v for v in views if v not in VIEWS]
        if bad or not views:
            raise ValueError(f"views must be a non-empty subset of {', '.join(VIEWS)}, got {views!r}")
        self.views = views
        self._num_frames = [self.frames] * n
        self._init_pairs(num_pairs)

    def _keys(self, i: int) -> tuple[int, int, int]:
        return (self.seed, SPLIT_CODES[self.split], i)

    def _meta(self, i: int) -> dict[str, Any]:
        return {"view": self.views[i % len(self.views)], "subject": f"echo-s{self.seed}-{self.split}-{i:03d}"}

    def _frames(self, i: int, ts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        seq = make_echo_sequence(
            self._keys(i), self._meta(i)["view"], self.frames, self.image_size[0], ts, self.variability
        )
        return seq["frames"], seq["labels"]

    def sequence(self, i: int) -> dict[str, Any]:
        """Sequence ``i``: "frames", "labels" (T, 1, H, W), "flows" (T, 2, H, W), "es_frame", "view", "subject"."""
        self._check_sequence(i)
        seq = make_echo_sequence(
            self._keys(i), self._meta(i)["view"], self.frames, self.image_size[0], variability=self.variability
        )
        seq.update(self._meta(i))
        return seq
