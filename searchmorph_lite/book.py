"""What the book's chapters share, written once (d2l's ``#@save``): the setup cell, test fields and hand-made
features, parameter counts, where chapter 10 keeps its runs, the choice between shipped, your own and freshly
trained models, SearchMorph's pipeline (Fig. 1)
as a diagram, method colours, paired verdicts and synchronised timings.

matplotlib is a book dependency, not the library's: it is imported inside the functions, so
``import searchmorph_lite`` works without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def setup(
    seed: int = 0, device: str | torch.device = "auto", threads: int = 0, deterministic: bool = False
) -> torch.device:
    """The chapter's device (torch.device; "auto": CUDA when present, else CPU), after seeding torch with ``seed``.

    ``threads`` > 0 sets PyTorch's CPU threads (0 keeps its default); ``deterministic`` asks for deterministic
    kernels (a warning, not an error, where an operation has none), so that a rerun gives the same numbers.
    """
    from .checkpoint import default_device

    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if threads:
        torch.set_num_threads(threads)
    return default_device() if device == "auto" else torch.device(device)


def smooth_field(
    shape: tuple[int, ...],
    max_px: float,
    seed: int = 0,
    grid: int | tuple[int, ...] = 8,
    cubic: bool = False,
    draw_dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Random smooth field (1, ndim, *shape), float32 pixels, largest |component| ``max_px``: N(0, 1) values on a
    coarse ``grid`` (an int: that many points per axis), interpolated to ``shape`` with align_corners=True.

    The values are drawn and interpolated in ``draw_dtype`` from a generator seeded with ``seed``, (bi/tri)linearly,
    or bicubically with ``cubic`` (2D only): the same arguments give the same field on every machine.
    """
    ndim = len(shape)
    if ndim not in (2, 3) or (cubic and ndim != 2):
        raise ValueError(f"smooth_field makes 2D or 3D fields (cubic: 2D only), got shape {tuple(shape)}")
    points = (grid,) * ndim if isinstance(grid, int) else tuple(grid)
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, ndim, *points, generator=gen, dtype=draw_dtype)
    mode = "bicubic" if cubic else ("bilinear", "trilinear")[ndim - 2]
    field = F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)
    return (field * max_px / field.abs().max()).to(torch.float32).to(device)


def patch_features(image: torch.Tensor, size: int, eps: float = 1e-3) -> torch.Tensor:
    """Hand-made features (B, size^2, H, W) of images (B, 1, H, W): each pixel's size x size patch (zero padded),
    minus its mean, divided by its norm + ``eps``; inner products of two are patch NCCs (chapters 5, 6, 9).

    ``eps`` keeps flat background patches near 0 instead of dividing 0 by 0.
    """
    patches = F.unfold(image, size, padding=size // 2)  # (B, size^2, H*W)
    patches = patches - patches.mean(dim=1, keepdim=True)
    patches = patches / (patches.norm(dim=1, keepdim=True) + eps)
    return patches.reshape(image.shape[0], size * size, *image.shape[2:])


def n_params(module: nn.Module) -> int:
    """Number of trainable and frozen parameters (an int) of ``module``: buffers such as batch-norm statistics
    are not parameters."""
    return sum(p.numel() for p in module.parameters())


# Where "auto" keeps runs on Colab when Google Drive is mounted: a Colab machine's own disk is gone after the session.
DRIVE_RUNS = Path("/content/drive/MyDrive/searchmorph-runs")


def runs_folder(runs_dir: str | Path = "auto") -> Path | None:
    """Folder (a Path) where chapter 10 keeps its training runs, one subfolder per model; None for "" (a temporary
    folder: the CI scale's runs are not kept).

    "auto": Google Drive's ``searchmorph-runs`` on Colab with Drive mounted (``drive.mount("/content/drive")``),
    else ``runs/`` in the current folder, which is the notebooks' folder when a chapter runs (git ignores it).
    Any other value is the folder itself.
    """
    if runs_dir in ("", None):
        return None
    if runs_dir == "auto":
        on_colab = "google.colab" in sys.modules
        return DRIVE_RUNS if on_colab and DRIVE_RUNS.parent.is_dir() else Path("runs")
    return Path(runs_dir)


def run_checkpoints(runs_dir: str | Path, names: Iterable[str]) -> dict[str, Path]:
    """name -> ``runs_folder(runs_dir)/name/checkpoint.pt`` for every name ({} for runs_dir ""), each present.

    Raises FileNotFoundError naming the missing files: a missing run is an error, not a silent fall-back to other
    models.
    """
    folder = runs_folder(runs_dir)
    if folder is None:
        return {}
    files = {name: folder / name / "checkpoint.pt" for name in names}
    missing = [str(f) for f in files.values() if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"no run in {folder} for: {', '.join(missing)} (chapter 10 writes them there)")
    return files


def load_or_train(
    shipped: dict[str, str],
    train: Callable[[str], tuple[nn.Module, dict]],
    device: str | torch.device | None = None,
    use_pretrained: bool = True,
    checkpoints: dict[str, str] | None = None,
    expected_model: str | None = None,
    runs_dir: str | Path = "",
) -> tuple[dict[str, nn.Module], dict[str, dict], str]:
    """(models, cards, source) for every name of ``shipped`` (name -> pretrained model name), all from one source.

    The source is "checkpoints" when ``checkpoints`` (name -> file) names every model, or when ``runs_dir`` (a
    folder of runs, see :func:`run_checkpoints`) holds one for every name; else "pretrained" when
    ``use_pretrained`` and every shipped model is installed; else "trained": ``train(name)`` returns (model, card).
    Never a mix, so that the models compared share one budget. A checkpoint must hold the model class
    ``expected_model`` (default: its name). Cards as ``provenance.card_of``.
    """
    from .checkpoint import load_checkpoint
    from .pretrained import available_pretrained, load_pretrained
    from .provenance import card_of

    if runs_dir and checkpoints:
        raise ValueError("give checkpoints or runs_dir, not both")
    checkpoints = checkpoints or run_checkpoints(runs_dir, shipped)
    if set(checkpoints) >= set(shipped):
        source = "checkpoints"
    elif use_pretrained and set(shipped.values()) <= set(available_pretrained()):
        source = "pretrained"
    else:
        source = "trained"
    if checkpoints and source != "checkpoints":
        print(f"checkpoints given for {sorted(checkpoints)} only: they are not used, so that all share one budget")
    models, cards = {}, {}
    for name, pretrained_name in shipped.items():
        if source == "checkpoints":
            kind = expected_model or name
            models[name] = load_checkpoint(checkpoints[name], expected_model=kind, device=device)
            cards[name] = card_of(models[name], source="loaded from checkpoint")
        elif source == "pretrained":
            models[name] = load_pretrained(pretrained_name, device=device)
            cards[name] = card_of(models[name])
        else:
            models[name], cards[name] = train(name)
    return models, cards, source


# Fig. 1's boxes: key -> (label, short label for the one-row map, chapter, column, row of the two-row diagram).
BOXES = {
    "images": ("moving M\nfixed F", "M, F", "1", 0, 0),
    "encoder": ("shared\nencoder", "encoder", "4", 1, 0),
    "cost volume": ("cost\nvolume", "cost volume", "5", 2, 0),
    "pyramid": ("correlation\npyramid", "pyramid", "6", 3, 0),
    "search": ("diamond\nsearch", "search", "7", 3, 1),
    "iterator": ("ConvGRU\niterator", "ConvGRU", "8", 2, 1),
    "upsample": ("x2\nupsample", "upsample", "2", 1, 1),
    "warp": ("warp\nM o Phi", "warp", "2", 0, 1),
}
ORDER = ["images", "encoder", "cost volume", "pyramid", "search", "iterator", "upsample", "warp"]
# Arrows along the data flow: (from, to, key of the tensor they carry in ``shapes``).
ARROWS = [
    ("images", "encoder", "images"),
    ("encoder", "cost volume", "features"),
    ("cost volume", "pyramid", "volume"),
    ("pyramid", "search", "pyramid"),
    ("search", "iterator", "search map"),
    ("iterator", "upsample", "field"),
    ("upsample", "warp", "full field"),
]
# Colour-blind-safe (Okabe-Ito orange and blue): the highlighted box, the other boxes, the loop and context arrows.
HIGHLIGHT, PLAIN, LOOP = "#E69F00", "#D9E6F2", "#0072B2"


def draw_pipeline(ax, highlight: str | None = None, shapes: dict[str, str] | None = None, compact: bool = False):
    """Draw Fig. 1 on ``ax``: a box per component, arrows labelled with ``shapes[key]`` (tensor shapes) if given.

    ``highlight`` is a key of BOXES to colour (the "you are here" map); ``compact`` draws one row of boxes without
    shape labels, the small map at the top of a chapter. Keys of ``shapes``: those of ARROWS, plus "context" and
    "loop". Returns ``ax``.
    """
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    shapes = shapes or {}
    if compact:  # one row, left to right, in the order data flows
        pos = {k: (1.3 * i, 0.0) for i, k in enumerate(ORDER)}
        w, h, font = 1.08, 0.6, 9
    else:  # two rows: encoder and correlation on top, then the iteration and warp from right to left
        pos = {k: (3.3 * b[3], -2.1 * b[4]) for k, b in BOXES.items()}
        w, h, font = 1.5, 0.8, 10
    for key, (label, short, chapter, _, _) in BOXES.items():
        x, y = pos[key]
        ax.add_patch(
            FancyBboxPatch(
                (x - w / 2, y - h / 2),
                w,
                h,
                boxstyle="round,pad=0.02,rounding_size=0.08",
                facecolor=HIGHLIGHT if key == highlight else PLAIN,
                edgecolor="#333333",
                linewidth=1.6 if key == highlight else 0.8,
            )
        )
        ax.text(
            x,
            y + (0.0 if compact else 0.06),
            short if compact else label,
            ha="center",
            va="center",
            fontsize=font,
            fontweight="bold" if key == highlight else "normal",
        )
        if not compact:
            ax.text(
                x + w / 2 - 0.06,
                y - h / 2 + 0.05,
                f"ch. {chapter}",
                ha="right",
                va="bottom",
                fontsize=font - 2,
                color="#444444",
            )

    def side(key, where):
        x, y = pos[key]
        return {"left": (x - w / 2, y), "right": (x + w / 2, y), "top": (x, y + h / 2), "bottom": (x, y - h / 2)}[where]

    def arrow(start, end, color="#333333", rad=0.0, label=None, at=None, va="bottom"):
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle="-|>",
                mutation_scale=13,
                color=color,
                linewidth=1.3,
                connectionstyle=f"arc3,rad={rad}",
            )
        )
        if label:
            x, y = at or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.08)
            ax.text(x, y, label, ha="center", va=va, fontsize=font - 1, color=color, family="monospace")

    for a, b, key in ARROWS:
        (xa, ya), (xb, yb) = pos[a], pos[b]
        if abs(ya - yb) < 1e-9:
            arrow(
                side(a, "right" if xb > xa else "left"),
                side(b, "left" if xb > xa else "right"),
                label=None if compact else shapes.get(key),
            )
        else:
            arrow(side(a, "bottom"), side(b, "top"), label=shapes.get(key), at=(xa + 0.12, (ya + yb) / 2), va="center")
            if shapes.get(key):
                ax.texts[-1].set_ha("left")
    # The loop: the new field goes back to the search, which looks around p + phi_t(p); the context reaches the GRU.
    if compact:
        arrow(side("iterator", "top"), side("search", "top"), color=LOOP, rad=0.6)
        arrow(side("encoder", "bottom"), side("iterator", "bottom"), color=LOOP, rad=0.12)
    else:
        (xs, ys), (xi, _) = pos["search"], pos["iterator"]
        arrow(
            side("iterator", "bottom"),
            side("search", "bottom"),
            color=LOOP,
            rad=0.5,
            label=shapes.get("loop", "phi_t, once per iteration"),
            at=((xs + xi) / 2, ys - h / 2 - 0.9),
            va="top",
        )
        (xe, ye) = pos["encoder"]
        arrow(
            side("encoder", "bottom"),
            side("iterator", "top"),
            color=LOOP,
            rad=0.15,
            label=shapes.get("context", "context"),
            at=((xe + xi) / 2 - 0.25, (ye + ys) / 2 + 0.05),
            va="center",
        )
    xs_, ys_ = [p[0] for p in pos.values()], [p[1] for p in pos.values()]
    ax.set_xlim(min(xs_) - w / 2 - 0.05, max(xs_) + w / 2 + 0.05)
    ax.set_ylim(min(ys_) - h / 2 - (0.4 if compact else 1.3), max(ys_) + h / 2 + (0.45 if compact else 0.15))
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def you_are_here(component: str, title: str | None = None):
    """Show the one-row map of Fig. 1 with ``component`` (a key of BOXES) highlighted; returns the figure."""
    import matplotlib.pyplot as plt

    if component not in BOXES:
        raise ValueError(f"component must be one of {sorted(BOXES)}, got {component!r}")
    fig, ax = plt.subplots(figsize=(9.5, 1.5))
    draw_pipeline(ax, highlight=component, compact=True)
    name = BOXES[component][0].replace("\n", " ")
    ax.set_title(title or f"You are here: the {name} in SearchMorph (Fig. 1, chapter 9)", fontsize=10, loc="left")
    plt.show()
    return fig


# One colour per method in every figure of the evaluation chapters (Okabe-Ito, safe for colour-blind readers).
METHOD_COLORS = {
    "Identity": "#999999",
    "Affine": "#56B4E9",
    "SyN": "#009E73",
    "ElasticSyN": "#F0E442",
    "VoxelMorph": "#E69F00",
    "SearchMorph (w/o iter)": "#CC79A7",
    "SearchMorph": "#0072B2",
}
# Variants of SearchMorph in one figure (fewer iterations, refined): shades of its blue, so no two boxes share one.
SEARCHMORPH_VARIANT_COLORS = ("#56B4E9", "#003F63", "#7FA7C9", "#00A5FF")


def method_color(name: str, variant: int = 0) -> str:
    """A colour (hex string) for a method: METHOD_COLORS[name], else the ``variant``-th SearchMorph shade."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    return SEARCHMORPH_VARIANT_COLORS[variant % len(SEARCHMORPH_VARIANT_COLORS)]


@dataclass(frozen=True)
class Verdict:
    """A paired comparison of two methods on the same pairs, said from the side of the higher mean.

    ``state`` is "tie" (|mean difference| < ``tie``), "not resolved" (within 2 paired standard errors) or
    "beats". ``words()`` has no number an optimiser can move (for cells nbval checks on any CPU);
    ``sentence()`` adds the means, the difference and its standard error (for unchecked cells).
    """

    winner: str
    loser: str
    what: str
    mean_winner: float
    mean_loser: float
    diff: float  # mean of winner - loser over the pairs (>= 0)
    se: float  # paired standard error of that mean (inf with one pair)
    n: int
    state: str

    @property
    def resolved(self) -> bool:
        return self.state == "beats"

    def words(self) -> str:
        """The verdict without numbers but the pair count, e.g. "SyN beats SearchMorph (2CH blood pool, 36
        pairs, margin > 2 paired SE)."."""
        where = f"{self.what}, {self.n} pairs"
        if self.state == "tie":
            return f"{self.winner} and {self.loser} tie ({where})."
        if self.state == "not resolved":
            return f"{self.winner} vs {self.loser}: not resolved ({where}, margin within 2 paired SE)."
        return f"{self.winner} beats {self.loser} ({where}, margin > 2 paired SE)."

    def sentence(self, digits: int = 4) -> str:
        """The verdict with the means, the margin and its paired standard error."""
        nums = (
            f"{self.what}: {self.mean_winner:.{digits}f} vs {self.mean_loser:.{digits}f}, "
            f"margin {self.diff:.{digits}f}, paired SE {self.se:.{digits}f}, {self.n} pairs"
        )
        if self.state == "tie":
            return f"{self.winner} and {self.loser} tie ({nums})."
        if self.state == "not resolved":
            return f"{self.winner} scores above {self.loser} ({nums}): within 2 SE, not resolved."
        return f"{self.winner} beats {self.loser} ({nums})."


def paired_verdict(a: str, b: str, values_a, values_b, what: str = "Dice", tie: float = 5e-4) -> Verdict:
    """Verdict of methods ``a`` and ``b`` from their per-pair scores (n,) on the same n pairs (higher is better).

    The standard error is that of the mean paired difference, std(ddof=1) / sqrt(n); a difference counts as
    resolved when it exceeds twice that.
    """
    import numpy as np

    va, vb = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    if va.shape != vb.shape or va.ndim != 1 or len(va) == 0:
        raise ValueError(f"need two 1-D score arrays of the same length, got {va.shape} and {vb.shape}")
    if va.mean() < vb.mean():
        a, b, va, vb = b, a, vb, va
    d = va - vb
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")
    diff = float(d.mean())
    state = "tie" if diff < tie else "not resolved" if diff <= 2 * se else "beats"
    return Verdict(a, b, what, float(va.mean()), float(vb.mean()), diff, se, len(d), state)


def synchronize(device) -> None:
    """Wait for the device's queued kernels (CUDA runs them asynchronously); nothing on a CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced_times(fn, device, repeats: int = 3) -> list[float]:
    """Wall-clock seconds of each of ``repeats`` calls of ``fn()``, the device synchronised before and after each
    call: on a GPU an unsynchronised clock stops when the kernels are queued, not when they finish."""
    import time

    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def best_time(fn, device, repeats: int = 3) -> float:
    """Best wall-clock seconds (a float) of ``repeats`` synchronised calls of ``fn()`` (:func:`synced_times`)."""
    return min(synced_times(fn, device, repeats))
