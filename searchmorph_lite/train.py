"""Training and evaluation loops: unsupervised eq. 9 on a dataset of (moving, fixed) pairs."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import build_model, default_device, read_checkpoint, save_checkpoint
from .losses import grad_l2_loss, similarity_loss
from .metrics import dice, folding_ratio
from .model import RegistrationResult


@dataclass(frozen=True)
class TrainConfig:
    """One training run: which model on which data with which loss (eq. 9) and optimizer (Adam)."""

    dataset: str = "brain2d"
    dataset_options: dict = field(default_factory=dict)  # passed to load_dataset (e.g. num_pairs, seed)
    model: str = "SearchMorph"  # or "VoxelMorph"
    model_config: dict = field(default_factory=dict)  # SearchMorphConfig / VoxelMorphConfig fields
    similarity: str = "lncc"  # "lncc" (brain MR) or "mse" (echo), as the paper
    alpha: float = 2.0  # smoothness weight: 2 with LNCC, 0.01 with MSE in the paper
    # The paper does not say which iterations the loss sees. We weight iteration i of N by
    # iteration_weight ** (N - 1 - i) (RAFT's sequence loss), normalized; 0 scores the last one only.
    iteration_weight: float = 0.8
    epochs: int = 10
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    val_pairs: int = 16  # validation pairs scored after every epoch (0 = none)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.alpha < 0:
            raise ValueError(f"bad TrainConfig: epochs, batch_size, lr must be positive, alpha >= 0: {self}")
        if not 0 <= self.iteration_weight <= 1:
            raise ValueError(f"iteration_weight must lie in [0, 1], got {self.iteration_weight}")
        similarity_loss(self.similarity)  # raises for unknown names

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        """Config read from a .json or .yaml file, with keyword ``overrides`` (None values ignored)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of TrainConfig fields")
        data.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown TrainConfig fields {sorted(unknown)}")
        return cls(**data)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def registration_loss_all(
    result: RegistrationResult, moving: torch.Tensor, fixed: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    """Scalar eq. 9 averaged over the iterations' fields with weights iteration_weight^(N-1-i)."""
    from .transform import warp

    sim = similarity_loss(cfg.similarity)
    n = len(result.flows)
    weights = [cfg.iteration_weight ** (n - 1 - i) if i < n - 1 else 1.0 for i in range(n)]
    total = moving.new_zeros(())
    for w, flow in zip(weights, result.flows):
        if w == 0:
            continue
        warped = result.warped if flow is result.flow else warp(moving, flow)
        total = total + w * (sim(warped, fixed) + cfg.alpha * grad_l2_loss(flow))
    return total / sum(weights)


def _batch_to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    device: torch.device | str | None = None,
    max_pairs: int | None = None,
    iterations: int | None = None,
    batch_size: int = 4,
) -> dict:
    """Per-pair metrics of ``model`` on ``dataset``: Dice per label (if labelled), % folding, NCC, seconds.

    Returns a dict of lists (one entry per pair) plus "labels" and means: "dice_mean", "folding_mean".
    """
    from .losses import local_ncc

    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    n = len(dataset) if max_pairs is None else min(max_pairs, len(dataset))
    loader = DataLoader(torch.utils.data.Subset(dataset, range(n)), batch_size=batch_size)
    out: dict = {"dice": [], "folding": [], "ncc_before": [], "ncc_after": [], "seconds": []}
    labels = None
    for batch in loader:
        batch = _batch_to(batch, device)
        kwargs = {} if iterations is None else {"iterations": iterations}
        start = time.perf_counter()
        result = model(batch["moving"], batch["fixed"], **kwargs)
        elapsed = (time.perf_counter() - start) / batch["moving"].shape[0]
        out["folding"] += folding_ratio(result.flow).tolist()
        out["seconds"] += [elapsed] * batch["moving"].shape[0]
        for key, img in (("ncc_before", batch["moving"]), ("ncc_after", result.warped)):
            out[key] += local_ncc(img, batch["fixed"]).flatten(1).mean(1).sqrt().tolist()
        if "moving_labels" in batch:
            from .transform import warp

            warped_lab = warp(batch["moving_labels"].float(), result.flow, mode="nearest").round().long()
            if labels is None:
                labels = sorted(int(v) for v in torch.unique(batch["fixed_labels"]) if v != 0)
            out["dice"] += dice(warped_lab, batch["fixed_labels"], labels).tolist()
    out["labels"] = labels or []
    if out["dice"]:
        out["dice_mean"] = float(np.nanmean(np.nanmean(np.array(out["dice"], dtype=float), axis=1)))
    out["folding_mean"] = float(np.mean(out["folding"])) if out["folding"] else math.nan
    return out


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_steps: int | None = None,
) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset``; write ``out_dir/checkpoint.pt`` every epoch; return the history.

    With ``resume`` and an existing checkpoint, continue from its epoch with its optimizer state.
    ``max_steps`` (for tests and CI) stops each epoch after that many batches.
    """
    from tqdm.auto import tqdm

    from .data import load_dataset

    out_dir = Path(out_dir)
    device = torch.device(device) if device is not None else default_device()
    seed_everything(cfg.seed)
    train_set = load_dataset(cfg.dataset, "train", **cfg.dataset_options)
    # num_pairs sizes the training set; validation keeps its own pairs and scores the first val_pairs of them
    val_options = {k: v for k, v in cfg.dataset_options.items() if k != "num_pairs"}
    val_set = load_dataset(cfg.dataset, "val", **val_options) if cfg.val_pairs else None
    model = build_model(cfg.model, cfg.model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: dict = {"epoch": [], "loss": [], "val_dice": [], "val_folding": [], "seconds": []}
    start_epoch = 0
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        ckpt = read_checkpoint(ckpt_path)
        if ckpt["model"] != cfg.model or ckpt["config"] != model.config.to_dict():
            raise ValueError(f"{ckpt_path} was trained with another model/config; use a new --out folder")
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch = int(ckpt["epoch"])
        history = ckpt["history"]
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(start_epoch, cfg.epochs):
        generator.manual_seed(cfg.seed + epoch)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=generator, drop_last=False)
        model.train()
        losses = []
        start = time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for step, batch in enumerate(bar):
            if max_steps is not None and step >= max_steps:
                break
            batch = _batch_to(batch, device)
            result = model(batch["moving"], batch["fixed"])
            loss = registration_loss_all(result, batch["moving"], batch["fixed"], cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        history["epoch"].append(epoch + 1)
        history["loss"].append(float(np.mean(losses)))
        history["seconds"].append(time.perf_counter() - start)
        if val_set is not None:
            metrics = evaluate(model, val_set, device, max_pairs=cfg.val_pairs)
            history["val_dice"].append(metrics.get("dice_mean", math.nan))
            history["val_folding"].append(metrics["folding_mean"])
        meta = {"train_config": json.loads(json.dumps(dataclasses.asdict(cfg))), "device": str(device)}
        save_checkpoint(
            ckpt_path,
            model,
            metadata=meta,
            optimizer=optimizer.state_dict(),
            epoch=epoch + 1,
            history=history,
        )
        if progress:
            val = f", val Dice {history['val_dice'][-1]:.3f}" if history["val_dice"] else ""
            print(f"epoch {epoch + 1}: loss {history['loss'][-1]:.4f}{val} ({history['seconds'][-1]:.0f} s)")
    model.eval()
    return history
