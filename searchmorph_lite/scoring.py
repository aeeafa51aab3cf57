"""Evaluation: each metric defined once, named for what it computes, and the two ways to score a registration.

Metrics: Dice per label and folding % (:mod:`.metrics`), :func:`global_ncc` (Pearson correlation of two images
inside a mask) and :func:`rms_local_ncc` (the root of the mean squared local NCC of eq. 9's LNCC term).

* :func:`evaluate` scores a model on a dataset in batches, the model called directly: training's validation, the
  model cards, ``searchmorph evaluate``, chapter 13.
* :func:`score_flow` scores one field on one pair, and :func:`run_method` times a *method* on pairs and scores each
  field the same way, whatever produced it: a network through ``register``, ANTs through ``ants_register``, or the
  identity (chapters 11 and 12, the benchmarks). A method is any callable ``method(moving, fixed) -> flow`` on
  numpy images (*S) returning a field (ndim, *S) in pixels (``warp(moving, flow)`` samples moving at p + flow(p)).
* :func:`run_methods` does the same for several methods at once, taking turns pair by pair (:func:`interleave`) so
  that a drift in the machine's speed lands on every method alike; :func:`run_method` is its one-method case.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ._checks import check_device, check_positive
from .checkpoint import largest_weight
from .losses import local_ncc
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


def rms_local_ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pair (B,) root of the mean over pixels of the squared local NCC (:func:`~.losses.local_ncc`, 9-pixel boxes)
    of two images (B, C, *S): 1 for images equal up to local brightness and contrast, 0 for unrelated ones."""
    return local_ncc(a, b).flatten(1).mean(1).sqrt()


def scored_labels(fixed_labels: torch.Tensor, labels: Sequence[int] | None = None) -> list[int]:
    """The labels a pair is scored on, the one rule of :func:`score_flow` and :func:`evaluate`: ``labels`` when
    given, else those present in the pair's fixed label map (*S or (1, *S)), background 0 excluded."""
    if labels is not None:
        return [int(v) for v in labels]
    return sorted(int(v) for v in torch.unique(fixed_labels) if v != 0)


def score_flow(pair: dict, flow: np.ndarray, labels: Sequence[int] | None = None) -> dict:
    """Scores of a field ``flow`` (ndim, *S) on a dataset ``pair`` ("moving", "fixed" (1, *S), labels optional).

    "folding": % of pixels with det(I + grad u) <= 0; "global_ncc": :func:`global_ncc` of the warped and fixed
    images inside the fixed image's support (fixed > 0.02, the echo sector or the head), also under its older name
    "ncc" (the stored benchmark results and chapters read it); with labels, "dice_per_label" (nan for a label
    absent from both maps) and "dice", their nan-mean, the labels warped by nearest neighbour. ``labels`` default
    to those present in this pair's fixed label map (background 0 excluded).
    """
    f = torch.from_numpy(np.ascontiguousarray(flow)).double()[None]
    fixed = pair["fixed"][0].numpy()
    warped = warp(pair["moving"][None].double(), f)[0, 0].numpy()
    ncc = global_ncc(warped, fixed, fixed > 0.02)
    out = {"folding": float(folding_ratio(f)[0]), "global_ncc": ncc, "ncc": ncc}
    if "moving_labels" in pair:
        labels = scored_labels(pair["fixed_labels"], labels)
        lab = warp(pair["moving_labels"][None].double(), f, mode="nearest").round().long()
        per_label = dice(lab, pair["fixed_labels"][None], labels)[0].double()
        out["dice_per_label"] = per_label.tolist()
        out["dice"] = float(torch.nanmean(per_label))
    return out


def batch_to(batch: dict, device: torch.device) -> dict:
    """``batch`` with its tensors on ``device`` (other entries as they are)."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    device: torch.device | str | None = None,
    max_pairs: int | None = None,
    iterations: int | None = None,
    batch_size: int = 4,
    labels: Sequence[int] | None = None,
) -> dict:
    """Per-pair scores of ``model`` on ``dataset`` in batches: the model itself, not ``register``.

    Returns a dict of lists (one entry per pair): "dice" (per label, if labelled), "folding" (%),
    "rms_local_ncc_before" / "rms_local_ncc_after" (:func:`rms_local_ncc` of the moving / warped image and the fixed
    one), "seconds"; plus "labels" and the means "dice_mean", "folding_mean". The labels are those of ``labels``, else
    those present in each pair's fixed label map (:func:`scored_labels`, the rule :func:`score_flow` follows), and
    "dice" is a table over every label some pair was scored on, nan where a pair was not. "ncc_before" and
    "ncc_after" repeat the RMS local NCC under the names of files written before (model cards, ``evaluate --out``).
    ``max_pairs`` and ``batch_size`` must be >= 1 and ``iterations`` in [1, 1000] (ValueError); an empty dataset is
    refused rather than reported as NaN means.
    """
    from .inference import check_weights, forward_kwargs

    if max_pairs is not None:
        max_pairs = check_positive(max_pairs, "max_pairs")
    batch_size = check_positive(batch_size, "batch_size")
    if iterations is not None and not hasattr(getattr(model, "config", None), "iterations"):
        raise ValueError(f"iterations is for models that iterate (SearchMorph); a {type(model).__name__} does not")
    kwargs = forward_kwargs(model, iterations)
    check_weights(model)
    device = check_device(device) if device is not None else next(model.parameters()).device
    model.eval()
    n = len(dataset) if max_pairs is None else min(max_pairs, len(dataset))
    if n == 0:
        raise ValueError("the dataset to evaluate on has no pairs")
    _check_model_fits(model, dataset[0]["moving"])
    loader = DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size)
    out: dict = {"dice": [], "folding": [], "rms_local_ncc_before": [], "rms_local_ncc_after": [], "seconds": []}
    labels = None if labels is None else [int(v) for v in labels]
    per_label: list[dict[int, float]] = []
    for batch in loader:
        batch = batch_to(batch, device)
        start = time.perf_counter()
        result = model(batch["moving"], batch["fixed"], **kwargs)
        if not torch.isfinite(result.flow).all():  # the model's output: checked here, at the edge, once per batch
            raise ValueError(
                f"the model returned NaN or inf displacements: its weights are broken (largest |weight| "
                f"{float(largest_weight(model)):.3g})"
            )
        elapsed = (time.perf_counter() - start) / batch["moving"].shape[0]
        out["folding"] += folding_ratio(result.flow).tolist()
        out["seconds"] += [elapsed] * batch["moving"].shape[0]
        for key, img in (("rms_local_ncc_before", batch["moving"]), ("rms_local_ncc_after", result.warped)):
            out[key] += rms_local_ncc(img, batch["fixed"]).tolist()
        if "moving_labels" in batch:
            warped_lab = warp(batch["moving_labels"].float(), result.flow, mode="nearest").round().long()
            for i, fixed_labels in enumerate(batch["fixed_labels"]):  # each pair on its own labels (scored_labels)
                mine = scored_labels(fixed_labels, labels)
                per_label.append(dict(zip(mine, dice(warped_lab[i : i + 1], fixed_labels[None], mine)[0].tolist())))
    out["ncc_before"], out["ncc_after"] = out["rms_local_ncc_before"], out["rms_local_ncc_after"]  # older names
    # the table's columns: the labels given, else every label some pair was scored on; nan where a pair had none
    out["labels"] = labels or sorted(set().union(*per_label))
    out["dice"] = [[row.get(lab, float("nan")) for lab in out["labels"]] for row in per_label]
    if out["dice"]:
        out["dice_mean"] = float(np.nanmean(np.nanmean(np.array(out["dice"], dtype=float), axis=1)))
    out["folding_mean"] = float(np.mean(out["folding"]))
    return out


def _check_model_fits(model: nn.Module, image: torch.Tensor) -> None:
    """Raise ValueError, blaming the model, when the dataset's images (C, *S) do not fit its ndim or channels."""
    kind, ndim, channels = type(model).__name__, getattr(model, "ndim", None), getattr(model, "in_channels", None)
    if ndim is not None and image.ndim - 1 != ndim:
        raise ValueError(
            f"the model is a {ndim}D {kind} (config ndim={ndim}) but the dataset's images are {image.ndim - 1}D; "
            f"evaluate it on a {ndim}D dataset"
        )
    if channels is not None and image.shape[0] != channels:
        raise ValueError(
            f"the model is a {kind} for {channels}-channel images (config in_channels={channels}) but the dataset's "
            f"images have {image.shape[0]}"
        )


def interleave(
    methods: Mapping[str, Callable],
    items: Sequence,
    inputs: Callable[[object], tuple] = lambda item: (item,),
    keep: Callable[[str, object, object, float], object] = lambda name, item, output, seconds: (output, seconds),
    warmup: bool = True,
) -> dict[str, list]:
    """{name: [keep(name, item, output, seconds) for each item]}: every method timed on every item, taking turns.

    On item i the methods run in their order rotated by i (A B C, B C A, C A B, ...), so that a drift in the
    machine's speed (another job starting, a CPU warming up) lands on every method alike, and no method always
    runs first or right after the same neighbour. ``method(*inputs(item))`` is timed (wall seconds; ``inputs``
    and ``keep`` are not), ``keep`` turns its output into what is stored, right away, so that outputs need not be
    held. With ``warmup`` each method first runs once on the first item, untimed and not kept, so that one-off
    costs (imports, the allocator, ITK's start-up) do not land on the first item's time.
    """
    names = list(methods)
    if warmup and len(items):
        for name in names:
            methods[name](*inputs(items[0]))
    out: dict[str, list] = {name: [] for name in names}
    for i, item in enumerate(items):
        args = inputs(item)
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            output = methods[name](*args)
            seconds = time.perf_counter() - start
            out[name].append(keep(name, item, output, seconds))
    return out


def _images(pair: dict) -> tuple[np.ndarray, np.ndarray]:
    """(moving, fixed) (*S) of a dataset pair as numpy arrays: what a method takes."""
    return pair["moving"][0].numpy(), pair["fixed"][0].numpy()


def run_methods(
    methods: Mapping[str, Method],
    pairs: Sequence[dict],
    labels: Sequence[int] | None = None,
    warmup: bool = True,
    extra: Callable[[dict, np.ndarray], dict] | None = None,
) -> dict[str, dict]:
    """{name: {"pairs", "per_pair": [score_flow row + extra + "seconds"], "<key>_mean" per scalar score}}.

    The methods take turns pair by pair (:func:`interleave`, with its untimed ``warmup``); each field is scored by
    :func:`score_flow` with ``labels``, and ``extra(pair, flow)`` (if given) adds its entries to the row, e.g. the
    det J of every pixel. Means are taken of the float entries.
    """
    if len(pairs) == 0:
        raise ValueError("run_method needs at least one pair")
    if len(methods) == 0:
        raise ValueError("run_methods needs at least one method")

    def keep(name: str, pair: dict, flow, seconds: float) -> dict:
        flow = np.asarray(flow)
        return {**score_flow(pair, flow, labels), **(extra(pair, flow) if extra else {}), "seconds": seconds}

    rows = interleave(methods, pairs, inputs=_images, keep=keep, warmup=warmup)
    out = {}
    for name, per_pair in rows.items():
        out[name] = {"pairs": len(per_pair), "per_pair": per_pair}
        for key, value in per_pair[0].items():
            if isinstance(value, float):
                out[name][f"{key}_mean"] = float(np.mean([r[key] for r in per_pair]))
    return out


def run_method(method: Method, pairs: Sequence[dict], labels: Sequence[int] | None = None, warmup: bool = True) -> dict:
    """{"per_pair": [score_flow rows + "seconds"], "<key>_mean" for every scalar score, "pairs"}.

    Each pair's moving and fixed images go to ``method`` as numpy arrays; "seconds" is its wall time. With
    ``warmup`` the method first runs once on the first pair, untimed, so that one-off costs (imports, allocator,
    ITK start-up) do not land on the first pair's time. :func:`run_methods` with one method.
    """
    return run_methods({"method": method}, pairs, labels, warmup)["method"]


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


def input_use(model, pairs: Sequence[dict]) -> dict[str, dict[str, float]]:
    """How much a trained SearchMorph relies on each input of its ConvGRU, on dataset ``pairs``: {"as trained",
    "search zeroed", "context zeroed": {"dice": mean label Dice, "field_change": mean |field - full field| / |full
    field|}, "identity (no field)": {"dice", "field_change": 1}}; the inputs zeroed by
    :func:`~searchmorph_lite.model.zeroed_input` at test time (``training/search_use.py``, chapter 14)."""
    from contextlib import nullcontext

    from .model import zeroed_input

    device = next(model.parameters()).device
    out: dict[str, dict[str, float]] = {}
    full_flows = []
    for name, part in (("as trained", None), ("search zeroed", "search"), ("context zeroed", "context")):
        dices, changes = [], []
        for i, item in enumerate(pairs):
            moving, fixed = item["moving"][None].to(device), item["fixed"][None].to(device)
            with torch.no_grad(), zeroed_input(model, part) if part else nullcontext():
                flow = model(moving, fixed).flow.cpu()
            if part is None:
                full_flows.append(flow)
            changes.append(float((flow - full_flows[i]).norm() / full_flows[i].norm().clamp(min=1e-12)))
            dices.append(score_flow(item, flow[0].double().numpy())["dice"])
        out[name] = {"dice": float(np.mean(dices)), "field_change": float(np.mean(changes))}
    identity = [score_flow(item, np.zeros((model.ndim, *item["fixed"].shape[1:])))["dice"] for item in pairs]
    out["identity (no field)"] = {"dice": float(np.mean(identity)), "field_change": 1.0}
    return out
