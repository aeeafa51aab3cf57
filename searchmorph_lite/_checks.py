"""Input validation shared by the library: every public function fails early with a message naming the problem."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import torch


def check_image(x: torch.Tensor, name: str, ndim: int | None = None) -> None:
    """Raise ValueError unless `x` is a float tensor (B, C, *spatial) with 2 or 3 spatial axes.

    Shapes and dtype only, as MONAI's ``Warp`` and VoxelMorph's ``SpatialTransformer``: reading values back would
    make a GPU wait in every inner call. Values are checked at the edges (:func:`check_finite`).
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (4, 5):
        raise ValueError(f"{name} must have shape (B, C, H, W) or (B, C, D, H, W), got {x.ndim} dims {tuple(x.shape)}")
    if ndim is not None and x.ndim - 2 != ndim:  # ndim is the model's: say which side does not fit
        raise ValueError(
            f"{name} has {x.ndim - 2} spatial axes (shape {tuple(x.shape)}) but the model is {ndim}D (its config's "
            f"ndim): give {ndim}D images, or a {x.ndim - 2}D model"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_finite(x: torch.Tensor, name: str) -> None:
    """Raise ValueError when ``x`` holds NaN or inf: the value check of the edges (a model's entry, refinement's
    inputs, evaluation of a model's output), which inner functions leave out."""
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")


def check_flow(flow: torch.Tensor, name: str = "flow") -> None:
    """Raise ValueError unless `flow` is a (B, ndim, *spatial) field with one channel per spatial axis (shapes only)."""
    check_image(flow, name)
    spatial = flow.ndim - 2
    if flow.shape[1] != spatial:
        raise ValueError(
            f"{name} must have {spatial} channels (one displacement per spatial axis) for "
            f"{spatial} spatial axes, got {flow.shape[1]} channels in shape {tuple(flow.shape)}"
        )


def check_same_spatial(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """Raise ValueError unless `a` and `b` have the same batch size and spatial shape."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"batch sizes differ: {name_a} has {a.shape[0]}, {name_b} has {b.shape[0]}")
    if a.shape[2:] != b.shape[2:]:
        raise ValueError(f"spatial shapes differ: {name_a} is {tuple(a.shape[2:])}, {name_b} is {tuple(b.shape[2:])}")


# More iterations than this only cost time: the paper runs 4 to 16, and the field stops changing after a few
# dozen. 100 000 ran for 10 minutes and diverged, so we refuse before running.
MAX_ITERATIONS = 1000


def check_iterations(value: object, name: str = "iterations") -> int:
    """``value`` as an int in [1, MAX_ITERATIONS]; ValueError naming ``name`` and the reason otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    if value > MAX_ITERATIONS:
        raise ValueError(
            f"{name}={value} is more than {MAX_ITERATIONS}: each iteration costs as much time as the first and "
            f"the field stops changing after a few dozen (the paper uses 4 to 16)"
        )
    return int(value)


def check_positive(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``; ValueError naming ``name`` otherwise (bools and floats refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


_DEVICE_HELP = "use cpu, cuda, cuda:N or mps (or leave it out: cuda when present, else cpu)"


def check_device(device: str | torch.device | None) -> torch.device:
    """The torch.device ``device`` names, checked to exist here; None or "auto" picks cuda when present, else cpu.

    ValueError for names torch does not know ("gpu0") and for devices this machine or this torch build lacks.
    """
    if device is None or (isinstance(device, str) and device.strip().lower() in ("", "auto")):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.strip().lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}: {_DEVICE_HELP}") from None
    if dev.type == "cuda":
        if torch.version.cuda is None:
            raise ValueError(
                f"device {device!r}: this torch build ({torch.__version__}) has no CUDA support; use cpu, or "
                f"install a CUDA build of torch"
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {device!r}: no CUDA GPU is visible on this machine; use cpu")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device {device!r}: this machine has {count} CUDA GPU(s), numbered 0 to {count - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: Apple's MPS is not available here; use cpu")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {device!r}: {_DEVICE_HELP}")
    return dev


# Sentences of third-party messages that advise an unsafe load (torch's "re-run with weights_only=False", numpy's
# "allow_pickle"): following them runs whatever code the file holds, so our messages never pass them on.
_UNSAFE = re.compile(
    r"weights_only`?\s*(=|set to|argument)|allow_pickle|arbitrary code|trusted source|"
    r"torch\.load to learn|file an issue|weights only load failed",
    re.IGNORECASE,
)


def one_line(message: object, limit: int = 600) -> str:
    """``message`` (text or an exception) as one line of at most ``limit`` characters, unsafe advice removed."""
    text = str(message) if not isinstance(message, BaseException) else (str(message) or type(message).__name__)
    if isinstance(message, KeyError) and len(message.args) == 1:
        text = f"missing key {message.args[0]!r}"  # str(KeyError) is just the repr of the key
    sentences = re.split(r"(?<=[.!?])\s+|\n+", text)
    kept = [s.strip() for s in sentences if s.strip() and not _UNSAFE.search(s)]
    line = re.sub(r"\s+", " ", " ".join(kept)).strip() or "unreadable input"
    return line if len(line) <= limit else line[: limit - 3] + "..."


# What each annotation of a config dataclass field accepts: (test, what the message says it must be). A YAML typo
# (use_context: "no", epochs: "3") must not reach a model or a training loop.
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_float(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_widths(value: object) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and all(_is_int(v) and v >= 1 for v in value)


_ANNOTATION_CHECKS = {
    "int": (_is_int, "an integer"),
    "float": (_is_float, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a name (text)"),
    "dict": (lambda v: isinstance(v, dict), "a mapping of options"),
    "tuple[int, ...]": (_is_widths, "a non-empty list of integers >= 1"),
}


def check_config_fields(cls: type, values: dict, prefix: str) -> dict:
    """``values`` of fields of the dataclass ``cls``, each checked against its annotation and normalized.

    int, float, bool, str, dict and ``tuple[int, ...]`` fields are checked (numpy scalars become Python numbers,
    ints in a float field floats, lists in a tuple field tuples); other annotations pass unchecked. ValueError
    ``"{prefix}{name} must be {what}, got {value!r}"`` for the first value that does not fit. The one validator
    of SearchMorphConfig, VoxelMorphConfig and TrainConfig, and of a model config read from a file.
    """
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    out = dict(values)
    for name, value in values.items():
        kind = types.get(name)
        if kind not in _ANNOTATION_CHECKS:
            continue
        if isinstance(value, np.generic) and kind in ("int", "float", "bool"):  # numpy scalars from a notebook
            value = value.item()
        ok, what = _ANNOTATION_CHECKS[kind]
        if not ok(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ValueError(f"{prefix}{name} must be {what}, got {shown!r}")
        if kind == "float":
            value = float(value)
        elif kind == "tuple[int, ...]":
            value = tuple(value)
        out[name] = value
    return out


def set_checked_fields(config: object, prefix: str) -> None:
    """Check every field of the frozen dataclass instance ``config`` (:func:`check_config_fields`) and store the
    normalized values in it: what each config's ``__post_init__`` calls first."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for name, value in check_config_fields(type(config), values, prefix).items():
        object.__setattr__(config, name, value)
