"""A training run's configuration: :class:`TrainConfig` and the YAML / JSON files it is read from."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ._checks import one_line, set_checked_fields
from ._files import path_problem
from .losses import similarity_loss
from .registry import check_model_config

MAX_SEED = 2**32 - 1
AMP_MODES = ("off", "bf16", "fp16")  # TrainConfig.amp: float32, or autocast to bfloat16 / float16


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
    # Clip the gradients' global L2 norm to this before each Adam step (0: no clipping). Beyond the paper; RAFT
    # clips at 1.0. Without it SearchMorph-3D at batch 2 saturated its GRU in its first epochs and never recovered:
    # every iteration then added the same update, whatever the search map said (training/BRAIN3D_STATUS.md).
    grad_clip: float = 0.0
    # Mixed precision on CUDA, beyond the paper: "off", "bf16" (bfloat16) or "fp16" (float16, with a loss scaler,
    # torch.amp.GradScaler, whose state the checkpoint keeps for resume). Under torch.autocast in reduced precision:
    # the convolutions of the encoders, the motion encoder, the ConvGRU and the flow head (VoxelMorph: its U-Net).
    # In float32 always (searchmorph_lite/_precision.py): the field and the sum of its updates, the correlation
    # lookups and their search positions, every warp (grid_sample), VoxelMorph's output layer, the whole loss
    # (local NCC's box sums and variances, eps 1e-5; the smoothness term; det J and the folding barrier), and the
    # weights and Adam's update. A CPU (or MPS) run refuses it: autocast there is slower than float32 on most CPUs.
    amp: str = "off"

    def __post_init__(self) -> None:
        set_checked_fields(self, "TrainConfig.")  # a YAML value such as epochs: "3" must not reach the loop
        for name, low in (("epochs", 1), ("batch_size", 1), ("seed", 0), ("val_pairs", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"TrainConfig.{name} must be >= {low}, got {getattr(self, name)}")
        if self.seed > MAX_SEED:  # numpy's generator takes 32 bits
            raise ValueError(f"TrainConfig.seed must be at most 2**32 - 1 = {MAX_SEED}, got {self.seed}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.alpha < 0:
            raise ValueError(f"TrainConfig.alpha must be >= 0, got {self.alpha}")
        if self.grad_clip < 0:
            raise ValueError(f"TrainConfig.grad_clip must be >= 0 (0: no clipping), got {self.grad_clip}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"TrainConfig.amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
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
