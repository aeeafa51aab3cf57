"""Training and evaluation loops: unsupervised eq. 9 on a dataset of (moving, fixed) pairs."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import sys
import time
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
from .checkpoint import MAX_WEIGHT, largest_weight, load_weights, read_checkpoint, save_checkpoint, state_digest
from .config import TrainConfig
from .data import dataset_frame
from .losses import sequence_loss
from .model import RegistrationResult
from .registry import build_model
from .resume import check_resume
from .scoring import batch_to, evaluate

# TrainConfig lives in config.py and the resume checks in resume.py; ``from searchmorph_lite.train import
# TrainConfig`` keeps working.
__all__ = ["TrainConfig", "evaluate", "registration_loss_all", "train"]

# A loss this many times the first epoch's (at least 1 in size) has exploded: the optimisation left its basin.
LOSS_EXPLODED = 1e6


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def registration_loss_all(
    result: RegistrationResult, moving: torch.Tensor, fixed: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    """Scalar training loss of ``result``: :func:`~searchmorph_lite.losses.sequence_loss` with ``cfg``'s
    similarity, alpha, fold_weight and iteration_weight."""
    return sequence_loss(result, moving, fixed, cfg.similarity, cfg.alpha, cfg.fold_weight, cfg.iteration_weight)


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
    check_amp(cfg.amp, device)
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
                changes = check_resume(ckpt, cfg, ckpt_path, allow_config_change)
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


# The divergence checks (a finite loss, no explosion, weights below MAX_WEIGHT) read values back from the device,
# which on a GPU waits for its queue, and under torchrun they need a collective: they run on the values of the last
# CHECK_EVERY steps at once, and at an epoch's last step, so a diverged run still stops before its next checkpoint.
CHECK_EVERY = 16


@dataclass
class RunState:
    """What a run carries from epoch to epoch: built fresh, or restored from a checkpoint by :func:`restore_run`."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: dict
    scaler: torch.amp.GradScaler  # fp16's loss scaler (TrainConfig.amp); disabled, a pass-through, otherwise
    start_epoch: int = 0
    config_changes: list = field(default_factory=list)
    first_loss: float | None = None  # the first epoch's loss, what an exploded loss is measured against
    budget_used: float = 0.0  # seconds of the budget clock spent by the epochs so far, all processes together
    steps: int = 0  # optimizer steps of this process in this call


@dataclass
class EpochResult:
    """One epoch's step losses, pairs (all processes), seconds, and whether it stopped for the budget."""

    losses: list[float]
    pairs: int
    seconds: float
    cpu_seconds: float
    budget_seconds: float
    budget_spent: bool


def restore_run(
    cfg: TrainConfig, ckpt_path: Path, ckpt: dict | None, changes: dict[str, tuple], device: torch.device, world: int
) -> RunState:
    """A fresh model, Adam and loss scaler for ``cfg`` on ``device``, or with ``ckpt``'s weights, optimizer and
    scaler state, epoch and history (its keys filled in for checkpoints written before they existed) and
    ``changes`` recorded."""
    model = build_model(cfg.model, cfg.model_config).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    history: dict = {"epoch": [], "loss": [], "val_dice": [], "val_folding": [], "seconds": [], "cpu_seconds": []}
    run = RunState(model, optimizer, history, scaler)
    if ckpt is not None:
        load_weights(model, ckpt["state_dict"], str(ckpt_path))
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler.is_enabled() and ckpt.get("scaler"):  # fp16 continues at its scale, not from 2^16 again
            scaler.load_state_dict(ckpt["scaler"])
        for group in optimizer.param_groups:  # the lr that runs is the config's (unchanged unless allowed)
            group["lr"] = cfg.lr
        run.start_epoch = int(ckpt["epoch"])
        run.history = history = ckpt["history"]
        run.config_changes = list(ckpt["metadata"].get("config_changes", []))
        changed = {k: list(v) for k, v in changes.items()}
        old_world = ckpt["metadata"].get("world_size", 1)  # checkpoints from before torchrun: one process
        if old_world != world:  # a resume may change it freely; the global batch changes with it
            changed["world_size"] = [old_world, world]
        if changed:
            run.config_changes.append({"from_epoch": run.start_epoch + 1, "changes": changed})
    history.setdefault("cpu_seconds", [])
    # pairs trained on per epoch (all processes together); None for epochs of checkpoints written before it
    history.setdefault("pairs", [None] * len(history["epoch"]))
    # the seconds each epoch spent of the budget, in the clock of its device; before GPUs it was CPU seconds
    history.setdefault("budget_seconds", list(history["cpu_seconds"]))
    run.budget_used = float(sum(s for s in history["budget_seconds"] if s))
    run.first_loss = history["loss"][0] if history["loss"] else None
    return run


def train_epoch(
    net: nn.Module,
    run: RunState,
    batches,
    cfg: TrainConfig,
    epoch: int,
    info: distributed.DistInfo,
    ckpt_path: Path,
    max_steps: int | None = None,
) -> EpochResult:
    """Adam steps of ``run``'s model (``net``: it, or its DDP wrapper) on ``batches`` for one epoch.

    ``batches``: the epoch's DataLoader (:func:`epoch_loader`), or a tqdm bar around it, which shows the loss.
    Stops after ``max_steps`` batches, or where the budget is spent. Every CHECK_EVERY steps and at the last one,
    the losses and weights since the last check are read back and checked (:func:`_check_steps`).
    """
    _, clock = budget_clock(info.device)
    budget = cfg.budget_seconds
    # the same draws on every rank: DDP needs each rank to run the same graph
    iteration_rng = np.random.default_rng([cfg.seed, epoch])
    last = len(batches) - 1 if max_steps is None else min(len(batches), max_steps) - 1
    losses: list[float] = []
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (loss, largest |weight| after the step) per step
    unsummed = [0.0, 0.0]  # budget-clock and CPU seconds of this process since the last sum over processes
    out = EpochResult(losses, 0, 0.0, 0.0, 0.0, False)
    net.train()
    for step, batch in enumerate(batches):
        if step > last:
            break
        batch = batch_to(batch, info.device)
        step_start, step_clock = time.process_time(), clock()
        kwargs = {}
        if cfg.train_iterations:
            lo, hi = cfg.train_iterations
            kwargs["iterations"] = int(iteration_rng.integers(lo, hi + 1))
        loss = training_step(net, run, batch["moving"], batch["fixed"], cfg, **kwargs)
        pending.append((loss, largest_weight(run.model)))
        out.pairs += batch["moving"].shape[0] * info.world_size  # every rank: same-sized shards
        run.steps += 1
        unsummed[0] += clock() - step_clock
        unsummed[1] += time.process_time() - step_start
        check = step == last or len(pending) == CHECK_EVERY
        if check:
            losses += _check_steps(pending, run, epoch, step + 1 - len(pending), info, ckpt_path)
            pending = []
            if hasattr(batches, "set_postfix"):
                batches.set_postfix(loss=f"{losses[-1]:.4f}")
        # One process needs no collective to sum its seconds. Several sum theirs at every step only under a budget:
        # every rank must stop at the step that spends it, the same on every rank.
        if check or budget or not info.distributed:
            step_seconds, step_cpu = distributed.all_reduce_sum(unsummed, info)
            out.budget_seconds += step_seconds
            out.cpu_seconds += step_cpu
            unsummed = [0.0, 0.0]
            if budget and run.budget_used + out.budget_seconds >= budget:
                out.budget_spent = True
                if not check:
                    losses += _check_steps(pending, run, epoch, step + 1 - len(pending), info, ckpt_path)
                break
    return out


def training_step(
    net: nn.Module, run: RunState, moving: torch.Tensor, fixed: torch.Tensor, cfg: TrainConfig, **kwargs
) -> torch.Tensor:
    """The loss (a detached 0-d tensor) of one Adam step of ``run``'s model on a batch of pairs (B, C, *S).

    ``net``: the model, or its DDP wrapper; ``kwargs`` go to its forward (``iterations``). The forward pass runs
    under ``cfg.amp``'s autocast (:func:`amp_autocast`), the loss in float32 after it; with fp16 the loss is
    scaled before backward and Adam's step is skipped where the scaled gradients overflowed (``run.scaler``).
    With amp off the scaler is a pass-through: forward, loss, backward, clip, step, in float32.
    """
    with amp_autocast(cfg.amp, moving.device):
        result = net(moving, fixed, **kwargs)
    loss = registration_loss_all(result, moving, fixed, cfg)
    run.optimizer.zero_grad()
    run.scaler.scale(loss).backward()
    if cfg.grad_clip:  # after backward, so under DDP every rank clips the same averaged gradients
        run.scaler.unscale_(run.optimizer)  # fp16: clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return loss.detach()


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_autocast(amp: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``TrainConfig.amp`` on ``device``; a no-op context for "off"."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def check_amp(amp: str, device: torch.device) -> None:
    """Raise ValueError (one line) when ``TrainConfig.amp`` cannot run on ``device``: it is for CUDA only."""
    if amp == "off":
        return
    if device.type != "cuda":
        raise ValueError(
            f"TrainConfig.amp {amp!r} (mixed precision) runs on CUDA only, and this run is on {device}: "
            f"set amp: off, or train on a GPU (--device cuda)"
        )
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"TrainConfig.amp 'bf16': {torch.cuda.get_device_name(device)} has no bfloat16; use fp16")


def _check_steps(
    pending: list[tuple[torch.Tensor, torch.Tensor]],
    run: RunState,
    epoch: int,
    first_step: int,
    info: distributed.DistInfo,
    ckpt_path: Path,
) -> list[float]:
    """The losses of ``pending`` steps (each the mean over processes) as floats, after checking them step by step:
    :func:`_diverged` for a loss that is not finite or over LOSS_EXPLODED times the first epoch's, or for a weight
    over MAX_WEIGHT after the step. ``first_step`` is the epoch's index of the first pending step."""
    if not pending:
        return []
    values = torch.stack([loss for loss, _ in pending]).tolist()
    # the mean over ranks is NaN or inf when any rank's loss is: then every rank stops here
    values = [v / info.world_size for v in distributed.all_reduce_sum(values, info)]
    largest = torch.stack([top for _, top in pending]).tolist()  # the same on every rank: DDP keeps weights equal
    across = f" (mean of {info.world_size} processes)" if info.distributed else ""
    for i, (value, top) in enumerate(zip(values, largest)):
        step = first_step + i
        run.first_loss = value if run.first_loss is None else run.first_loss
        if not math.isfinite(value):
            _diverged(f"the loss is {value}{across}", epoch, step, ckpt_path)
        if abs(value) > LOSS_EXPLODED * max(abs(run.first_loss), 1.0):
            _diverged(
                f"the loss is {value:.3g}{across}, over 10^6 times the first epoch's {run.first_loss:.3g}",
                epoch,
                step,
                ckpt_path,
            )
        if not top <= MAX_WEIGHT:
            _diverged(f"a weight reached {top:.3g} after the optimizer step", epoch, step, ckpt_path)
    return values


def end_epoch(
    run: RunState,
    result: EpochResult,
    cfg: TrainConfig,
    epoch: int,
    wall_seconds: float,
    val_set,
    info: distributed.DistInfo,
    ckpt_path: Path,
) -> None:
    """Close epoch ``epoch``: its row of the history, then on rank 0 the validation scores and the checkpoint."""
    run.budget_used += result.budget_seconds
    distributed.broadcast_buffers(run.model, info)  # every rank ends the epoch with the checkpoint's weights
    history = run.history
    history["epoch"].append(epoch + 1)
    history["loss"].append(float(np.mean(result.losses)))
    history["seconds"].append(wall_seconds)
    history["cpu_seconds"].append(result.cpu_seconds)
    history["budget_seconds"].append(result.budget_seconds)
    history["pairs"].append(result.pairs)
    if info.main:
        if val_set is not None:
            metrics = evaluate(run.model, val_set, info.device, max_pairs=cfg.val_pairs)
            history["val_dice"].append(metrics.get("dice_mean", math.nan))
            history["val_folding"].append(metrics["folding_mean"])
        meta = {
            "train_config": json_safe(dataclasses.asdict(cfg)),
            "device": str(info.device),
            "budget_clock": budget_clock(info.device)[0],
        }
        frame = dataset_frame(cfg.dataset, cfg.dataset_options)
        if frame is not None:  # the grid `searchmorph register` brings real images onto for this model
            meta["frame"] = frame
        meta.update(world_size=info.world_size, global_batch_size=cfg.batch_size * info.world_size)
        if run.config_changes:
            meta["config_changes"] = run.config_changes
        save_checkpoint(  # the bare model's weights: the same file as a single process writes
            ckpt_path,
            run.model,
            metadata=meta,
            optimizer=run.optimizer.state_dict(),
            epoch=epoch + 1,
            history=history,
            **({"scaler": run.scaler.state_dict()} if run.scaler.is_enabled() else {}),
        )
    distributed.barrier(info)  # the other ranks wait for rank 0's validation and checkpoint


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
    run = restore_run(cfg, ckpt_path, ckpt, changes, device, info.world_size)
    image_axes = train_set[0]["moving"].ndim - 1
    if image_axes != run.model.ndim:
        raise ValueError(
            f"a {run.model.ndim}D {cfg.model} (model_config.ndim) cannot train on {cfg.dataset}, whose images are "
            f"{image_axes}D"
        )
    start_epoch, clock_name = run.start_epoch, budget_clock(device)[0]
    if progress and ckpt is not None and start_epoch >= cfg.epochs:
        print(f"{ckpt_path} has already run its {cfg.epochs} epochs; nothing to do")
    if cfg.budget_seconds and run.budget_used >= cfg.budget_seconds:
        if progress:
            print(f"{ckpt_path} has used its budget of {cfg.budget_seconds:.0f} {clock_name}; nothing to do")
        start_epoch = cfg.epochs
    if info.main:
        out_dir.mkdir(parents=True, exist_ok=True)
    # DDP starts every rank from rank 0's weights (the same anyway: same seed, same checkpoint)
    net = run.model
    if info.distributed:
        net = DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None)
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(start_epoch, cfg.epochs):
        generator.manual_seed(cfg.seed + epoch)
        if cfg.fresh_pairs and epoch > 0:
            fresh = {**cfg.dataset_options, "seed": cfg.dataset_options.get("seed", 0) + 1000 * epoch}
            train_set = _load_split(cfg.dataset, "train", fresh)
        loader = epoch_loader(train_set, cfg, epoch, info, generator)
        start = time.perf_counter()
        # iterated through the bar even when it is off: tqdm's wrapper draws the shuffle's seed from the generator
        # in its own order, and a resumed run must see the pairs in the order the run began with
        bar_off = not progress or _log_file()
        with tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=bar_off, leave=False) as bar:
            result = train_epoch(net, run, bar, cfg, epoch, info, ckpt_path, max_steps)
        end_epoch(run, result, cfg, epoch, time.perf_counter() - start, val_set, info, ckpt_path)
        if progress:
            history = run.history
            val = f", val Dice {history['val_dice'][-1]:.3f}" if history["val_dice"] else ""
            print(
                f"epoch {epoch + 1}: loss {history['loss'][-1]:.4f}{val} ({history['seconds'][-1]:.0f} s, "
                f"{run.budget_used:.0f} {clock_name} in all)"
            )
        if result.budget_spent:
            break
    run.model.eval()
    history = run.history
    if info.distributed:
        history = _main_history(history, info)
        state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
        digest = state_digest(type(run.model).__name__, run.model.config.to_dict(), state)
        # one write with its newline (print writes the end separately): the ranks share stderr, and a line written
        # in two pieces can be cut by another rank's line
        sys.stderr.write(f"rank {info.rank}/{info.world_size}: {run.steps} steps, weights sha256 {digest}\n")
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
