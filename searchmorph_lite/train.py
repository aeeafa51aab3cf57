"""Training and evaluation loops: unsupervised eq. 9 on a dataset of (moving, fixed) pairs."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import random
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from . import distributed
from ._checks import check_device, check_positive, one_line
from ._files import check_writable_folder, exclusive_lock, json_safe, path_problem
from .checkpoint import (
    MAX_WEIGHT,
    build_model,
    check_model_config,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    state_digest,
)
from .data import dataset_frame
from .losses import folding_barrier, grad_l2_loss, similarity_loss
from .metrics import dice, folding_ratio
from .model import RegistrationResult

MAX_SEED = 2**32 - 1
# A loss this many times the first epoch's (at least 1 in size) has exploded: the optimisation left its basin.
LOSS_EXPLODED = 1e6


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
    # Pairs per step of each process: under torchrun with N processes a step sees batch_size x N pairs (each
    # process its own batch_size, gradients averaged), which the checkpoint records as metadata global_batch_size.
    batch_size: int = 8
    lr: float = 1e-3
    seed: int = 0
    val_pairs: int = 16  # validation pairs scored after every epoch (0 = none)
    val_options: dict = field(default_factory=dict)  # load_dataset options of the validation split, on top of
    # dataset_options (e.g. {"variability": "wide"}); num_pairs never passes to validation
    # Budget and schedule for long runs. A budget in seconds of the training steps (forward, loss, backward, Adam;
    # not data generation or validation) makes runs comparable across models: train two models for the same
    # max_seconds and they had the same compute. The clock is the device's (budget_clock): on a CPU the process's
    # CPU seconds, which a machine under load does not move (one thread each); on a GPU wall-clock seconds with
    # the GPU synchronised around each step (its kernels run asynchronously, so the CPU's clock would stop
    # early). Under torchrun the budget is the seconds of all processes summed (history["budget_seconds"]), so
    # N processes spend it about N times sooner in wall time and every process stops at the same step.
    max_seconds: float = 0.0  # stop once the training steps used this many seconds of the device's clock (0: none)
    # The budget's name from before GPUs, the same budget in the same clock (configs and checkpoints that set it
    # keep working); give max_seconds or max_cpu_seconds, not both
    max_cpu_seconds: float = 0.0
    # Beyond eq. 9: + fold_weight * mean(relu(0.1 - det J)) on every iteration's field (losses.folding_barrier),
    # which penalises folding itself rather than only steep fields (0: the paper's loss)
    fold_weight: float = 0.0
    fresh_pairs: bool = False  # new training pairs every epoch (generated datasets: seed option + 1000 * epoch)
    # [lo, hi]: each training step runs a number of iterations drawn from lo..hi (SearchMorph only; [] = the
    # model's own). Training beyond the inference count teaches the iterator to settle, as RAFT's does.
    train_iterations: list = field(default_factory=list)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # a YAML value such as epochs: "3" must not reach the training loop
            value = getattr(self, f.name)
            kind = str(f.type)
            if isinstance(value, np.generic) and kind in ("int", "float"):  # numpy scalars from a notebook
                value = value.item()
                object.__setattr__(self, f.name, value)
            if kind == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"TrainConfig.{f.name} must be a finite number, got {value!r}")
                object.__setattr__(self, f.name, float(value))
            elif kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"TrainConfig.{f.name} must be an integer, got {value!r}")
            elif kind in ("str", "dict") and not isinstance(value, {"str": str, "dict": dict}[kind]):
                what = "a name (text)" if kind == "str" else "a mapping of options"
                raise ValueError(f"TrainConfig.{f.name} must be {what}, got {value!r}")
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("val_pairs", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"TrainConfig.{name} must be >= {low}, got {getattr(self, name)}")
        if self.seed > MAX_SEED:  # numpy's generator takes 32 bits
            raise ValueError(f"TrainConfig.seed must be at most 2**32 - 1 = {MAX_SEED}, got {self.seed}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.alpha < 0:
            raise ValueError(f"TrainConfig.alpha must be >= 0, got {self.alpha}")
        if self.fold_weight < 0:
            raise ValueError(f"TrainConfig.fold_weight must be >= 0 (0: no folding barrier), got {self.fold_weight}")
        if not 0 <= self.iteration_weight <= 1:
            raise ValueError(f"iteration_weight must lie in [0, 1], got {self.iteration_weight}")
        similarity_loss(self.similarity)  # raises for unknown names
        from .data import dataset_options
        from .data.common import check_options

        check_options(self.dataset, self.dataset_options, dataset_options(self.dataset))
        check_options(self.dataset, self.val_options, dataset_options(self.dataset))
        check_model_config(self.model, self.model_config)
        for name in ("max_seconds", "max_cpu_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name} must be >= 0 (0: no budget), got {getattr(self, name)}")
        if self.max_seconds and self.max_cpu_seconds and self.max_seconds != self.max_cpu_seconds:
            raise ValueError(
                f"TrainConfig.max_seconds ({self.max_seconds}) and max_cpu_seconds ({self.max_cpu_seconds}) are one "
                f"budget (max_cpu_seconds is its older name); give one of them"
            )
        if not isinstance(self.fresh_pairs, bool):
            raise ValueError(f"TrainConfig.fresh_pairs must be true or false, got {self.fresh_pairs!r}")
        if self.fresh_pairs and "seed" not in dataset_options(self.dataset):
            raise ValueError(f"TrainConfig.fresh_pairs needs a generated dataset with a seed; {self.dataset} has none")
        iters = self.train_iterations
        if isinstance(iters, tuple):
            object.__setattr__(self, "train_iterations", list(iters))
            iters = self.train_iterations
        if not isinstance(iters, list) or (
            iters
            and (
                len(iters) != 2
                or any(isinstance(n, bool) or not isinstance(n, int) for n in iters)
                or not 1 <= iters[0] <= iters[1] <= 1000
            )
        ):
            raise ValueError(f"TrainConfig.train_iterations must be [] or [lo, hi] with 1 <= lo <= hi, got {iters!r}")
        if iters and self.model != "SearchMorph":
            raise ValueError(f"TrainConfig.train_iterations is for SearchMorph; {self.model} has no iterations")

    @property
    def budget_seconds(self) -> float:
        """The training budget in seconds of the device's clock (:func:`budget_clock`); 0 for none."""
        return self.max_seconds or self.max_cpu_seconds

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> TrainConfig:
        """Config read from a .json or .yaml file, with keyword ``overrides`` (None values ignored).

        Every problem (missing file, bad syntax, unknown field, wrong type) is a ValueError or
        FileNotFoundError whose message starts with the file name. YAML is read with YAML 1.2 numbers, so
        ``lr: 1e-3`` is the number 0.001 (PyYAML alone reads it as text), and a key given twice is refused.
        """
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"config {path} is a folder, not a .yaml or .json file")
        problem = path_problem(path)
        if problem:
            raise ValueError(f"config {str(path)!r} {problem}")
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {str(path)!r}")
        if path.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise ValueError(f"config {path} must be a .yaml, .yml or .json file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"config {path} is not a text file (not UTF-8)") from None
        data = _parse_config_text(path, text)
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of TrainConfig fields, got {type(data).__name__}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown TrainConfig fields {sorted(str(k) for k in unknown)}")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{path}: {one_line(err)}") from None


def _yaml_loader():
    """A yaml.SafeLoader that reads YAML 1.2 floats (1e-3) and refuses keys given twice."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    float_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+|[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", float_12, list("-+0123456789."))
    return Loader


def _parse_config_text(path: Path, text: str) -> object:
    """The data of a config file's ``text``; ValueError naming the file, line and problem for bad syntax."""
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            problem = getattr(err, "problem", None) or one_line(err, 200)
            raise ValueError(f"{path} is not valid YAML{where}: {problem}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def registration_loss_all(
    result: RegistrationResult, moving: torch.Tensor, fixed: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    """Scalar eq. 9 (+ the folding barrier when cfg.fold_weight) averaged over the iterations' fields with weights
    iteration_weight^(N-1-i)."""
    from .transform import warp

    sim = similarity_loss(cfg.similarity)
    n = len(result.flows)
    weights = [cfg.iteration_weight ** (n - 1 - i) if i < n - 1 else 1.0 for i in range(n)]
    total = moving.new_zeros(())
    for w, flow in zip(weights, result.flows):
        if w == 0:
            continue
        warped = result.warped if flow is result.flow else warp(moving, flow)
        loss = sim(warped, fixed) + cfg.alpha * grad_l2_loss(flow)
        if cfg.fold_weight:
            loss = loss + cfg.fold_weight * folding_barrier(flow)
        total = total + w * loss
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
    ``max_pairs`` and ``batch_size`` must be >= 1 and ``iterations`` in [1, 1000] (ValueError); an empty
    dataset is refused rather than reported as NaN means.
    """
    from .inference import check_weights, forward_kwargs
    from .losses import local_ncc

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
    out: dict = {"dice": [], "folding": [], "ncc_before": [], "ncc_after": [], "seconds": []}
    labels = None
    for batch in loader:
        batch = _batch_to(batch, device)
        start = time.perf_counter()
        try:
            result = model(batch["moving"], batch["fixed"], **kwargs)
        except ValueError as err:
            if "flow contains NaN or inf" not in str(err):
                raise
            raise ValueError(  # the field is the model's output here, not the caller's input
                f"the model returned NaN or inf displacements: its weights are broken (largest |weight| "
                f"{_largest_weight(model):.3g})"
            ) from None
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


# Keys of a TrainConfig that a resumed run may change only when asked (allow_config_change): the new values apply
# from the next epoch on, and the checkpoint's metadata records it. "epochs" may always change: continuing a run
# for more epochs is what resuming is for. The model and its config never change: the weights belong to them.
MODEL_KEYS = ("model", "model_config")


def _flat_diff(old: dict, new: dict, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """{"key" or "key.subkey": (old value, new value)} for every entry that differs (one level into dicts)."""
    unset = "<unset>"
    diff = {}
    for key in sorted(set(old) | set(new), key=str):
        if key in skip:
            continue
        a, b = old.get(key, unset), new.get(key, unset)
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b), key=str):
                if a.get(sub, unset) != b.get(sub, unset):
                    diff[f"{key}.{sub}"] = (a.get(sub, unset), b.get(sub, unset))
        elif a != b:
            diff[key] = (a, b)
    return diff


def _describe(diff: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in diff.items())


def _check_resume(ckpt: dict, cfg: TrainConfig, path: Path, allow_config_change: bool) -> dict[str, tuple]:
    """The config changes a resume of ``ckpt`` with ``cfg`` makes ({key: (old, new)}); ValueError when refused."""
    for key, kind in (("optimizer", dict), ("epoch", int), ("history", dict)):
        if not isinstance(ckpt.get(key), kind):
            raise ValueError(
                f"{path} is not a training checkpoint (it has no {key!r}: a pretrained or exported model?); "
                f"--resume continues only a run written by train, so train into a new --out folder"
            )
    model_diff = _flat_diff({"model": ckpt["model"]}, {"model": cfg.model})
    if not model_diff:
        # the checkpoint's config through today's dataclass, so fields added since (at their defaults) match
        try:
            saved = check_model_config(ckpt["model"], ckpt["config"]).to_dict()
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        model_diff = _flat_diff(saved, check_model_config(cfg.model, cfg.model_config).to_dict())
        model_diff = {f"model_config.{k}": v for k, v in model_diff.items()}
    if model_diff:
        raise ValueError(
            f"{path} was trained with another model/config ({_describe(model_diff)}); its weights belong to that "
            f"model, so train into a new --out folder"
        )
    if "metadata_sha256" not in ckpt:
        warnings.warn(
            f"{path} was written before checkpoints carried a digest of their metadata: the training config it "
            f"records cannot be verified",
            stacklevel=3,
        )
    old = (ckpt.get("metadata") or {}).get("train_config")
    if not isinstance(old, dict):
        if not allow_config_change:
            raise ValueError(
                f"{path} records no training config (metadata 'train_config'), so this resume cannot be checked "
                f"against the config it ran with; pass --allow-config-change (allow_config_change=True) to continue "
                f"it with this config from epoch {ckpt['epoch'] + 1} on (its metadata records that the earlier "
                f"config is unknown)"
            )
        return {"train_config": ("<unrecorded>", "<this config>")}
    # fields added to TrainConfig since the checkpoint was written ran at their defaults: they match those
    defaults = {
        f.name: f.default_factory() if f.default is dataclasses.MISSING else f.default
        for f in dataclasses.fields(TrainConfig)
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    }
    old = {**json_safe(defaults), **old}
    new = json_safe(dataclasses.asdict(cfg))
    if old.get("dataset") == new["dataset"] and isinstance(old.get("dataset_options"), dict):
        # an option given at its default (seed: 0) is the option left out: compare what the loader ran with
        option_defaults = json_safe(_option_defaults(cfg.dataset))
        old["dataset_options"] = {**option_defaults, **old["dataset_options"]}
        new["dataset_options"] = {**option_defaults, **new["dataset_options"]}
    diff = _flat_diff(old, new, skip=("epochs", *MODEL_KEYS))
    if diff and not allow_config_change:
        raise ValueError(
            f"{path} was trained with another config: {_describe(diff)}. Resume with the checkpoint's values, "
            f"or pass --allow-config-change (allow_config_change=True) to run the new ones from epoch "
            f"{ckpt['epoch'] + 1} on"
        )
    if cfg.epochs < ckpt["epoch"]:
        raise ValueError(
            f"{path} has already run {ckpt['epoch']} epochs but the config asks for {cfg.epochs}; raise epochs "
            f"(--epochs) to continue it"
        )
    return diff


def _option_defaults(name: str) -> dict:
    """The default of every ``load_dataset(name, ...)`` option that has one (read from its loader's signature)."""
    import inspect

    from .data import REGISTRY

    try:
        module = importlib.import_module(f".data.{REGISTRY[name][0]}", __package__)
        parameters = inspect.signature(getattr(module, REGISTRY[name][1])).parameters.values()
    except (KeyError, ImportError, AttributeError, TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def validation_options(dataset_options: dict, val_options: dict) -> dict:
    """``load_dataset`` options of a run's validation split: its dataset options, ``val_options`` on top, without
    ``num_pairs`` (which sizes the training set; validation keeps its own pairs and scores the first val_pairs)."""
    return {k: v for k, v in {**dataset_options, **val_options}.items() if k != "num_pairs"}


def _load_split(name: str, split: str, options: dict):
    """``load_dataset(name, split, **options)``; a ValueError names the dataset and split it came from."""
    from .data import load_dataset

    try:
        return load_dataset(name, split, **options)
    except ValueError as err:
        raise ValueError(f"{name} {split} split: {one_line(err)}") from None


def check_run_folder(out_dir: str | Path, resume: bool) -> Path:
    """``out_dir/checkpoint.pt``, checked before any work: ValueError when the folder is a file, is not writable,
    or already holds a checkpoint that ``resume`` is not asked to continue (a run is never overwritten);
    FileNotFoundError when ``resume`` names a folder that does not exist (a mistyped path would start afresh)."""
    out_dir = Path(out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    problem = path_problem(out_dir)
    if problem:
        raise ValueError(f"run folder {str(out_dir)!r} {problem}")
    if resume and not out_dir.exists():
        raise FileNotFoundError(
            f"nothing to resume: the run folder {str(out_dir)!r} does not exist (check the path; leave out --resume "
            f"(resume=False) to start a new run there)"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"run folder {out_dir} is a file; training writes a folder (checkpoint.pt inside)")
    if ckpt_path.is_dir():
        raise ValueError(f"{ckpt_path} is a folder; the run's checkpoint file cannot be written there")
    if ckpt_path.exists() and not resume:
        raise ValueError(
            f"{ckpt_path} already exists: continue that run with --resume (resume=True), or train into another "
            f"--out folder (training never overwrites a run)"
        )
    check_writable_folder(ckpt_path, "run folder")
    return ckpt_path


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    max_steps: int | None = None,
    allow_config_change: bool = False,
) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset``; write ``out_dir/checkpoint.pt`` every epoch; return the history.

    With ``resume`` and an existing checkpoint, continue from its epoch with its optimizer state. A resumed
    config that differs from the one the checkpoint ran with (other than ``epochs``) is refused, naming each key
    and both values, unless ``allow_config_change``: then the new values run from the next epoch (the
    optimizer's lr too) and ``metadata["config_changes"]`` lists, per resume, the first epoch they ran and each
    (old, new) value. The model and model_config can never change on resume. Without ``resume`` an existing
    checkpoint is refused, never overwritten. ``max_steps`` (for tests and CI, >= 1) stops each epoch after that
    many batches. A loss that turns NaN or inf stops training with ValueError; the last checkpoint stays as it was.

    Under torchrun (WORLD_SIZE > 1 in the environment) every process runs this function: each trains on its own
    shard of every epoch (DistributedSampler) with ``cfg.batch_size`` pairs per step, DistributedDataParallel
    averages the gradients, and rank 0 alone validates, prints and writes the checkpoint, in the same format as
    a single process's (``metadata["world_size"]`` says how many processes wrote it). A resume may use another
    number of processes; ``metadata["config_changes"]`` records the change of world_size. Every process returns
    the same history and ends with one line on stderr, ``rank R/N: S steps, weights sha256 D``, D being the
    checkpoint's digest of its final weights.
    """
    if not isinstance(cfg, TrainConfig):
        raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if max_steps is not None:
        max_steps = check_positive(max_steps, "max_steps")
    rank = distributed.env_world()[0]  # a malformed torchrun environment fails before any work
    ckpt_path = check_run_folder(out_dir, resume)  # every rank checks (and reads) the same files
    device = check_device(device)
    if resume and not ckpt_path.exists() and rank == 0:
        print(f"note: {ckpt_path} does not exist yet: --resume starts a new run there", file=sys.stderr)
    created = _missing_folders(ckpt_path.parent)
    info = distributed.init_from_env(device)
    try:
        with _run_lock(ckpt_path.parent, info):
            check_run_folder(out_dir, resume)  # again under the lock: another run may have written meanwhile
            ckpt, changes = None, {}
            if resume and ckpt_path.exists():
                ckpt = read_checkpoint(ckpt_path)
                changes = _check_resume(ckpt, cfg, ckpt_path, allow_config_change)
            return _train_loop(cfg, ckpt_path, ckpt, changes, info, progress, max_steps)
    finally:
        distributed.shutdown(info)
        if info.main and not ckpt_path.exists():  # a run that failed before its first checkpoint leaves nothing
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, innermost first (what a failed run removes again)."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def _run_lock(out_dir: Path, info: distributed.DistInfo) -> Iterator[None]:
    """Rank 0 holds ``out_dir/.lock`` (created with the folder) for the life of the run, so a second ``train`` into
    the same folder stops with one line naming the holder; under torchrun every rank stops with it."""
    error = None
    with contextlib.ExitStack() as stack:
        if info.main:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(exclusive_lock(out_dir / ".lock", f"run folder {out_dir}"))
            except ValueError as err:
                error = str(err)
        if info.distributed:
            import torch.distributed as dist

            box = [error]
            dist.broadcast_object_list(box, src=0, device=info.device if info.device.type == "cuda" else None)
            error = box[0]
        if error:
            raise ValueError(error)
        yield


def epoch_loader(
    train_set, cfg: TrainConfig, epoch: int, info: distributed.DistInfo, generator: torch.Generator
) -> DataLoader:
    """Batches of ``cfg.batch_size`` pairs of epoch ``epoch`` for this process: all pairs, shuffled by ``generator``
    for one process; under torchrun this rank's shard of one shuffle (seed ``cfg.seed``, epoch ``epoch``).

    The shards are disjoint and together cover the set; when the set does not divide by the number of processes,
    DistributedSampler (drop_last=False) pads the last shards with repeated pairs, so every rank runs the same
    number of steps (a rank with fewer would leave the others waiting in DDP's gradient exchange).
    """
    if not info.distributed:
        return DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, generator=generator, drop_last=False)
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(train_set, info.world_size, info.rank, shuffle=True, seed=cfg.seed, drop_last=False)
    sampler.set_epoch(epoch)
    return DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=False)


def _train_loop(
    cfg: TrainConfig,
    ckpt_path: Path,
    ckpt: dict | None,
    changes: dict[str, tuple],
    info: distributed.DistInfo,
    progress: bool,
    max_steps: int | None,
) -> dict:
    """The history of :func:`train` after its checks, in one process of ``info.world_size`` (1 without torchrun)."""
    from torch.nn.parallel import DistributedDataParallel
    from tqdm.auto import tqdm

    out_dir, device = ckpt_path.parent, info.device
    progress = progress and info.main  # one process prints
    seed_everything(cfg.seed)
    train_set = _load_split(cfg.dataset, "train", cfg.dataset_options)
    val_options = validation_options(cfg.dataset_options, cfg.val_options)
    val_set = _load_split(cfg.dataset, "val", val_options) if cfg.val_pairs and info.main else None
    if len(train_set) == 0:
        raise ValueError(f"the {cfg.dataset} training split has no pairs")
    model = build_model(cfg.model, cfg.model_config).to(device)
    image_axes = train_set[0]["moving"].ndim - 1
    if image_axes != model.ndim:
        raise ValueError(
            f"a {model.ndim}D {cfg.model} (model_config.ndim) cannot train on {cfg.dataset}, whose images are "
            f"{image_axes}D"
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: dict = {"epoch": [], "loss": [], "val_dice": [], "val_folding": [], "seconds": [], "cpu_seconds": []}
    start_epoch = 0
    config_changes: list = []
    if ckpt is not None:
        load_weights(model, ckpt["state_dict"], str(ckpt_path))
        optimizer.load_state_dict(ckpt["optimizer"])
        for group in optimizer.param_groups:  # the lr that runs is the config's (unchanged unless allowed)
            group["lr"] = cfg.lr
        start_epoch = int(ckpt["epoch"])
        history = ckpt["history"]
        config_changes = list(ckpt["metadata"].get("config_changes", []))
        changed = {k: list(v) for k, v in changes.items()}
        old_world = ckpt["metadata"].get("world_size", 1)  # checkpoints from before torchrun: one process
        if old_world != info.world_size:  # a resume may change it freely; the global batch changes with it
            changed["world_size"] = [old_world, info.world_size]
        if changed:
            config_changes.append({"from_epoch": start_epoch + 1, "changes": changed})
        if progress and start_epoch >= cfg.epochs:
            print(f"{ckpt_path} has already run its {cfg.epochs} epochs; nothing to do")
    history.setdefault("cpu_seconds", [])
    # pairs trained on per epoch (all processes together); None for epochs of checkpoints written before it
    history.setdefault("pairs", [None] * len(history["epoch"]))
    # the seconds each epoch spent of the budget, in the clock of its device; before GPUs it was CPU seconds
    history.setdefault("budget_seconds", list(history["cpu_seconds"]))
    clock_name, clock = budget_clock(device)
    budget, budget_used = cfg.budget_seconds, float(sum(s for s in history["budget_seconds"] if s))
    if budget and budget_used >= budget:
        if progress:
            print(f"{ckpt_path} has used its budget of {budget:.0f} {clock_name}; nothing to do")
        start_epoch = cfg.epochs
    first_loss = history["loss"][0] if history["loss"] else None  # what an exploded loss is measured against
    if info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    # DDP starts every rank from rank 0's weights (the same anyway: same seed, same checkpoint)
    net = model
    if info.distributed:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    generator = torch.Generator().manual_seed(cfg.seed)
    steps = 0
    for epoch in range(start_epoch, cfg.epochs):
        generator.manual_seed(cfg.seed + epoch)
        if cfg.fresh_pairs and epoch > 0:
            fresh = {**cfg.dataset_options, "seed": cfg.dataset_options.get("seed", 0) + 1000 * epoch}
            train_set = _load_split(cfg.dataset, "train", fresh)
        loader = epoch_loader(train_set, cfg, epoch, info, generator)
        # the same draws on every rank: DDP needs each rank to run the same graph
        iteration_rng = np.random.default_rng([cfg.seed, epoch])
        net.train()
        losses, epoch_pairs = [], 0
        start, epoch_cpu, epoch_budget, budget_spent = time.perf_counter(), 0.0, 0.0, False
        with tqdm(
            loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or _log_file(), leave=False
        ) as bar:
            for step, batch in enumerate(bar):
                if max_steps is not None and step >= max_steps:
                    break
                batch = _batch_to(batch, device)
                step_start, step_clock = time.process_time(), clock()
                kwargs = {}
                if cfg.train_iterations:
                    lo, hi = cfg.train_iterations
                    kwargs["iterations"] = int(iteration_rng.integers(lo, hi + 1))
                result = net(batch["moving"], batch["fixed"], **kwargs)
                loss = registration_loss_all(result, batch["moving"], batch["fixed"], cfg)
                # the mean over ranks is NaN or inf when any rank's loss is: then every rank stops here
                loss_value = distributed.all_reduce_sum([loss.item()], info)[0] / info.world_size
                first_loss = loss_value if first_loss is None else first_loss
                across = f" (mean of {info.world_size} processes)" if info.distributed else ""
                if not math.isfinite(loss_value):
                    _diverged(f"the loss is {loss_value}{across}", epoch, step, ckpt_path)
                if abs(loss_value) > LOSS_EXPLODED * max(abs(first_loss), 1.0):
                    _diverged(
                        f"the loss is {loss_value:.3g}{across}, over 10^6 times the first epoch's {first_loss:.3g}",
                        epoch,
                        step,
                        ckpt_path,
                    )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                largest = _largest_weight(model)  # the same on every rank: DDP keeps the weights equal
                if not largest <= MAX_WEIGHT:
                    _diverged(f"a weight reached {largest:.3g} after the optimizer step", epoch, step, ckpt_path)
                losses.append(loss_value)
                epoch_pairs += batch["moving"].shape[0] * info.world_size  # every rank: same-sized shards
                steps += 1
                step_seconds = clock() - step_clock
                step_cpu = time.process_time() - step_start
                # the same sums on every rank, so every rank stops at the same step
                step_seconds, step_cpu = distributed.all_reduce_sum([step_seconds, step_cpu], info)
                epoch_cpu += step_cpu
                epoch_budget += step_seconds
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if budget and budget_used + epoch_budget >= budget:
                    budget_spent = True
                    break
        budget_used += epoch_budget
        distributed.broadcast_buffers(model, info)  # every rank ends the epoch with the checkpoint's weights
        history["epoch"].append(epoch + 1)
        history["loss"].append(float(np.mean(losses)))
        history["seconds"].append(time.perf_counter() - start)
        history["cpu_seconds"].append(epoch_cpu)
        history["budget_seconds"].append(epoch_budget)
        history["pairs"].append(epoch_pairs)
        if info.main:
            if val_set is not None:
                metrics = evaluate(model, val_set, device, max_pairs=cfg.val_pairs)
                history["val_dice"].append(metrics.get("dice_mean", math.nan))
                history["val_folding"].append(metrics["folding_mean"])
            meta = {
                "train_config": json_safe(dataclasses.asdict(cfg)),
                "device": str(device),
                "budget_clock": clock_name,
            }
            frame = dataset_frame(cfg.dataset, cfg.dataset_options)
            if frame is not None:  # the grid `searchmorph register` brings real images onto for this model
                meta["frame"] = frame
            meta.update(world_size=info.world_size, global_batch_size=cfg.batch_size * info.world_size)
            if config_changes:
                meta["config_changes"] = config_changes
            save_checkpoint(  # the bare model's weights: the same file as a single process writes
                ckpt_path,
                model,
                metadata=meta,
                optimizer=optimizer.state_dict(),
                epoch=epoch + 1,
                history=history,
            )
        distributed.barrier(info)  # the other ranks wait for rank 0's validation and checkpoint
        if progress:
            val = f", val Dice {history['val_dice'][-1]:.3f}" if history["val_dice"] else ""
            print(
                f"epoch {epoch + 1}: loss {history['loss'][-1]:.4f}{val} ({history['seconds'][-1]:.0f} s, "
                f"{budget_used:.0f} {clock_name} in all)"
            )
        if budget_spent:
            break
    model.eval()
    if info.distributed:
        history = _main_history(history, info)
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        digest = state_digest(type(model).__name__, model.config.to_dict(), state)
        # one write with its newline (print writes the end separately): the ranks share stderr, and a line written
        # in two pieces can be cut by another rank's line
        sys.stderr.write(f"rank {info.rank}/{info.world_size}: {steps} steps, weights sha256 {digest}\n")
        sys.stderr.flush()
    return history


def _log_file() -> bool:
    """True when stderr is a file or pipe (a log, or the CLI's one-line messages), not a terminal or a notebook: a
    progress bar there is a stream of carriage returns, and its last state would sit before an error line."""
    return not sys.stderr.isatty() and not type(sys.stderr).__module__.startswith("ipykernel")


def budget_clock(device: torch.device) -> tuple[str, Callable[[], float]]:
    """(name, clock) of the training budget on ``device``: the process's CPU seconds on a CPU; on a GPU (CUDA or
    MPS) wall-clock seconds, the device synchronised at each reading so its queued kernels are counted."""
    if device.type == "cuda":

        def cuda_clock() -> float:
            torch.cuda.synchronize(device)
            return time.perf_counter()

        return "wall-clock seconds (CUDA synchronised)", cuda_clock
    if device.type == "mps":

        def mps_clock() -> float:
            torch.mps.synchronize()
            return time.perf_counter()

        return "wall-clock seconds (MPS synchronised)", mps_clock
    return "CPU seconds", time.process_time


def _largest_weight(model: nn.Module) -> float:
    """The largest |value| of ``model``'s floating-point parameters (inf or NaN when one is not finite)."""
    tops = [p.detach().abs().max() for p in model.parameters() if p.is_floating_point() and p.numel()]
    return float(torch.stack(tops).max()) if tops else 0.0


def _diverged(what: str, epoch: int, step: int, ckpt_path: Path) -> None:
    """Raise the ValueError of a diverged training: what happened, where, and what the run folder still holds.

    It is raised before the optimizer's step is saved, so the checkpoint of the last good epoch stays as it was.
    """
    if epoch and ckpt_path.exists():  # the checkpoint of epoch ``epoch``, written before this one began
        kept = f"{ckpt_path} keeps epoch {epoch}, the last good one"
    else:
        kept = "no checkpoint was written"
    raise ValueError(f"training diverged: {what} at epoch {epoch + 1}, step {step + 1}; {kept} (try a lower lr)")


def _main_history(history: dict, info: distributed.DistInfo) -> dict:
    """Rank 0's ``history`` (with its validation scores and wall times) on every rank."""
    import torch.distributed as dist

    box = [history if info.main else None]
    dist.broadcast_object_list(box, src=0, device=info.device if info.device.type == "cuda" else None)
    return box[0]
