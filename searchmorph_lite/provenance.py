"""Where a model came from, in one line: the model-card fields the evaluation chapters print next to every score.

A card is a plain dict: "source", "data", "image_size" (a tuple), "pairs", "epochs", "batch_size", "hardware",
"seconds" (training wall time, or None). Shipped checkpoints carry these in their metadata
(``training/ship_pretrained.py``); a model trained in the reader's run gets them from :func:`train_with_card`.
"""

from __future__ import annotations

import platform
import tempfile
import time
from pathlib import Path

import torch

from .base import RegistrationModel


def hardware_line(device: torch.device | str | None = None) -> str:
    """What runs this process: machine, torch version, device (GPU name or CPU thread count)."""
    device = torch.device(device or "cpu")
    line = f"{platform.machine()} {platform.processor()}".strip() + f", torch {torch.__version__} on {device.type}"
    if device.type == "cuda":
        return line + f" ({torch.cuda.get_device_name(device)})"
    return line + f" with {torch.get_num_threads()} thread(s)"


def card_of(model: RegistrationModel, source: str = "pretrained") -> dict:
    """Card of a loaded checkpoint, from ``model.metadata`` (what ``train`` and ``ship_pretrained`` store)."""
    from .data import load_dataset

    md = getattr(model, "metadata", {}) or {}
    tc = md.get("train_config", {})
    opts = tc.get("dataset_options", {})
    data = md.get("dataset", tc.get("dataset", "?"))
    size = md.get("image_size") or opts.get("image_size")
    if isinstance(size, int):
        size = (size,) * model.ndim
    pairs = md.get("train_pairs") or opts.get("num_pairs")
    if (pairs is None or not size) and data != "?":  # a training checkpoint: ask its dataset
        train_set = load_dataset(data, "train", **opts)
        pairs = pairs or len(train_set)
        size = size or tuple(train_set[0]["moving"].shape[1:])
    return {
        "source": source,
        "data": data,
        "image_size": tuple(size) if size else None,
        "pairs": pairs,
        "epochs": md.get("epochs", tc.get("epochs")),
        "batch_size": tc.get("batch_size"),
        "hardware": md.get("hardware", md.get("device", "?")),
        "seconds": md.get("wall_time_s"),
    }


def train_with_card(cfg, device: torch.device | str | None = None) -> tuple[RegistrationModel, dict]:
    """(model in eval mode, card): ``cfg`` (a TrainConfig) trained in a temporary folder on ``device``, timed."""
    from .checkpoint import load_checkpoint
    from .train import train

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(cfg, Path(tmp) / "run", device=device, progress=False)
        seconds = time.perf_counter() - start
        model = load_checkpoint(Path(tmp) / "run" / "checkpoint.pt", device=device)
    card = card_of(model, source="trained in this run")
    card.update(hardware=hardware_line(next(model.parameters()).device), seconds=seconds)
    return model, card


def describe(name: str, card: dict, with_hardware: bool = True) -> str:
    """One provenance line: "name: source, data H x W, N pairs x E epochs (batch B), on hardware in S s"."""
    size = " x ".join(str(n) for n in card["image_size"]) if card.get("image_size") else "?"
    line = (
        f"{name}: {card['source']}, {card['data']} {size}, {card['pairs']} pairs x {card['epochs']} epochs "
        f"(batch {card['batch_size']})"
    )
    if with_hardware:
        secs = f" in {card['seconds']:.0f} s" if card.get("seconds") else ""
        line += f", on {card['hardware']}{secs}"
    return line
