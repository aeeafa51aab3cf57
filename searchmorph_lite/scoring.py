"""One scoring code for every method on a dataset's pairs: the book's tables and the benchmark scripts use it.

A *method* is any callable ``method(moving, fixed) -> flow`` on numpy images (*S) returning a field (ndim, *S) in
pixels (our convention: ``warp(moving, flow)`` samples moving at p + flow(p)). :func:`score_flow` scores one field
on one pair; :func:`run_method` times a method on a list of pairs and scores each field the same way, whatever
produced it: a network through ``register``, ANTs through ``ants_register``, or the identity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .metrics import dice, folding_ratio
from .transform import warp

Method = Callable[[np.ndarray, np.ndarray], np.ndarray]


def global_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Pearson correlation of two images (inside ``mask`` when given); 0 when either is constant."""
    if mask is not None:
        a, b = a[mask], b[mask]
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def score_flow(pair: dict, flow: np.ndarray, labels: Sequence[int] | None = None) -> dict:
    """Scores of a field ``flow`` (ndim, *S) on a dataset ``pair`` ("moving", "fixed" (1, *S), labels optional).

    "folding": % of pixels with det(I + grad u) <= 0; "ncc": global NCC of the warped and fixed images inside
    the fixed image's support (fixed > 0.02, the echo sector or the head); with labels, "dice_per_label" (nan
    for a label absent from both maps) and "dice", their nan-mean, the labels warped by nearest neighbour.
    ``labels`` default to those present in the fixed label map (background 0 excluded).
    """
    f = torch.from_numpy(np.ascontiguousarray(flow)).double()[None]
    fixed = pair["fixed"][0].numpy()
    warped = warp(pair["moving"][None].double(), f)[0, 0].numpy()
    out = {"folding": float(folding_ratio(f)[0]), "ncc": global_ncc(warped, fixed, fixed > 0.02)}
    if "moving_labels" in pair:
        if labels is None:
            labels = sorted(int(v) for v in torch.unique(pair["fixed_labels"]) if v != 0)
        lab = warp(pair["moving_labels"][None].double(), f, mode="nearest").round().long()
        per_label = dice(lab, pair["fixed_labels"][None], list(labels))[0].double()
        out["dice_per_label"] = per_label.tolist()
        out["dice"] = float(torch.nanmean(per_label))
    return out


def run_method(method: Method, pairs: Sequence[dict], labels: Sequence[int] | None = None, warmup: bool = True) -> dict:
    """{"per_pair": [score_flow rows + "seconds"], "<key>_mean" for every scalar score, "pairs"}.

    Each pair's moving and fixed images go to ``method`` as numpy arrays; "seconds" is its wall time. With
    ``warmup`` the method first runs once on the first pair, untimed, so that one-off costs (imports, allocator,
    ITK start-up) do not land on the first pair's time.
    """
    if len(pairs) == 0:
        raise ValueError("run_method needs at least one pair")
    if warmup:
        method(pairs[0]["moving"][0].numpy(), pairs[0]["fixed"][0].numpy())
    rows = []
    for pair in pairs:
        m, f = pair["moving"][0].numpy(), pair["fixed"][0].numpy()
        start = time.perf_counter()
        flow = np.asarray(method(m, f))
        seconds = time.perf_counter() - start
        rows.append({**score_flow(pair, flow, labels), "seconds": seconds})
    out: dict = {"pairs": len(rows), "per_pair": rows}
    for key, value in rows[0].items():
        if isinstance(value, float):
            out[f"{key}_mean"] = float(np.mean([r[key] for r in rows]))
    return out


def network_method(model, **register_kwargs) -> Method:
    """method(moving, fixed) -> flow of ``model`` through ``register`` (keywords such as iterations,
    refine_steps, normalize pass on)."""
    from .inference import register

    return lambda m, f: register(m, f, model, **register_kwargs)[1]


def ants_method(transform: str = "SyN", seed: int = 1) -> Method:
    """method(moving, fixed) -> flow of ANTs ``transform`` ("Affine", "SyN", ...), seeded (antspyx needed)."""
    from .baselines import ants_register

    return lambda m, f: ants_register(m, f, transform, seed=seed)[1]


def identity_method(m: np.ndarray, f: np.ndarray) -> np.ndarray:
    """The zero field (ndim, *S)."""
    return np.zeros((m.ndim, *m.shape), dtype=np.float32)
