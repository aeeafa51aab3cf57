"""Command line: ``python -m searchmorph_lite train|evaluate|register``.

Every error a user can cause (a missing, damaged or foreign file, a bad value or flag, an output that would
overwrite an input or another output) is one line on stderr, ``error: ...``, naming the file, flag or value,
with exit code 2; no traceback, and nothing is written. Output paths are checked before any work starts. An
unexpected error (a bug) is one line too, with exit code 1; SEARCHMORPH_TRACEBACK=1 shows its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from ._checks import check_device, check_iterations, check_positive, one_line
from ._files import atomic_write_json, atomic_write_many, check_output_paths, json_text

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def _load_nifti(path: str, ndim: int, label: str = "image"):
    """(float64 array (*S) with ``ndim`` axes, nibabel image) from a NIfTI file; ValueError / FileNotFoundError
    naming ``label`` and the file when it is a folder, missing, unreadable, complex, too small, of another
    dimension, or holds NaN, inf or values too large for float32."""
    import nibabel as nib

    from .inference import FLOAT32_MAX

    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{label} {path} is a folder, not a NIfTI file")
    if not p.is_file():
        raise FileNotFoundError(f"{label} {path}: no such file")
    try:
        img = nib.load(str(p))
        dtype = img.get_data_dtype()
    except Exception as err:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise ValueError(f"cannot read NIfTI {path}: {one_line(err, 200)}") from None
    if dtype.kind == "c":
        raise ValueError(f"{label} {path} is complex-valued ({dtype}); register a real image, e.g. its magnitude")
    if dtype.fields is not None:
        raise ValueError(f"{label} {path} holds {dtype} voxels (colour?); convert it to one grey value per voxel")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.asarray(img.get_fdata(dtype=np.float64))
    except Exception as err:
        raise ValueError(f"cannot read NIfTI {path}: {one_line(err, 200)}") from None
    shape = tuple(int(n) for n in data.shape)
    what = {2: "a 2D image", 3: "a 3D volume"}[ndim]
    long_axes = [n for n in shape if n > 1]
    if len(shape) >= ndim and all(n == 1 for n in shape[ndim:]):
        spatial = shape[:ndim]
    elif len(long_axes) == ndim:
        spatial = tuple(long_axes)
    else:
        raise ValueError(
            f"{label} {path} is not {what} (the model is {ndim}D): shape {shape} has {len(long_axes)} axes longer "
            f"than 1"
        )
    if min(spatial) < 2:
        size = " x ".join(str(n) for n in spatial)
        raise ValueError(f"{label} {path} is {size} voxels: too small to register (at least 2 along every axis)")
    data = data.reshape(spatial)
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise ValueError(f"{label} {path} contains NaN or inf values ({bad} of {data.size} voxels)")
    largest = float(np.abs(data).max())
    if largest > FLOAT32_MAX:
        raise ValueError(
            f"{label} {path} has values too large to register (largest |value| {largest:.3g}, float32 holds up "
            f"to {FLOAT32_MAX:.3g}); rescale it"
        )
    return data, img


def _grid_differences(moving, fixed, m_img, f_img, ndim: int) -> list[str]:
    """What differs between the two images' voxel grids: shape, voxel spacing, axis directions (empty: same)."""
    diffs = []
    if moving.shape != fixed.shape:
        diffs.append(f"shape {moving.shape} vs {fixed.shape}")
    m_lin, f_lin = m_img.affine[:3, :ndim], f_img.affine[:3, :ndim]
    m_sp, f_sp = np.linalg.norm(m_lin, axis=0), np.linalg.norm(f_lin, axis=0)
    if not np.allclose(m_sp, f_sp, rtol=1e-4, atol=1e-6):
        fmt = lambda sp: "(" + ", ".join(f"{v:.4g}" for v in sp) + ")"  # noqa: E731
        diffs.append(f"voxel spacing {fmt(m_sp)} vs {fmt(f_sp)} mm")
    elif not np.allclose(m_lin / np.maximum(m_sp, 1e-12), f_lin / np.maximum(f_sp, 1e-12), atol=1e-4):
        diffs.append("axis directions (orientation)")
    return diffs


def _resample_onto(moving, m_img, fixed, f_img):
    """``moving`` resampled onto the fixed image's voxel grid through both affines (nibabel, linear, 0 outside)."""
    import nibabel as nib
    from nibabel.processing import resample_from_to

    pad = (1,) * max(0, 3 - moving.ndim)  # nibabel resamples 3D images; a 2D one is a single slice
    source = nib.Nifti1Image(moving.reshape(*moving.shape, *pad).astype(np.float32), m_img.affine)
    target = (tuple(fixed.shape) + (1,) * max(0, 3 - fixed.ndim), f_img.affine)
    out = resample_from_to(source, target, order=1, mode="constant", cval=0.0)
    return np.asarray(out.get_fdata(dtype=np.float64)).reshape(fixed.shape)


def _checkpoint_spec(spec: str) -> tuple[str, Path | None]:
    """("pretrained", None) when ``spec`` is a bare pretrained name, else ("file", the checkpoint file).

    A bare pretrained name ("brain2d") always means the shipped model, whatever the working folder holds, so
    the same command gives the same model everywhere; a local file or folder of that name is reached as
    ``./brain2d`` (a note says so when one exists). A training run folder means its ``checkpoint.pt``.
    """
    from .checkpoint import checkpoint_file
    from .pretrained import PRETRAINED

    if not spec.strip():
        raise ValueError("--checkpoint is empty; give a checkpoint file, a run folder or a pretrained name")
    if spec in PRETRAINED:
        if Path(spec).exists():
            print(
                f"note: --checkpoint {spec} is the pretrained model; write ./{spec} for the local one", file=sys.stderr
            )
        return "pretrained", None
    if not Path(spec).exists() and not Path(spec).is_symlink():
        raise FileNotFoundError(f"checkpoint not found: {spec!r} (pretrained names: {', '.join(PRETRAINED)})")
    return "file", checkpoint_file(spec)


def _load_model(spec: str, device: str | None):
    """A model from a checkpoint file, a training run folder, or a pretrained name ("brain2d", "echo2d", ...)."""
    from .checkpoint import load_checkpoint
    from .pretrained import load_pretrained

    kind, path = _checkpoint_spec(spec)  # which prints the note when a local file shadows a pretrained name
    if kind == "pretrained":
        return load_pretrained(spec, device=device)
    return load_checkpoint(path, device=device)


def _input_file(spec: str) -> Path | None:
    """The checkpoint file ``--checkpoint`` names, when it is a local one (for the output collision check)."""
    try:
        return _checkpoint_spec(spec)[1]
    except (FileNotFoundError, ValueError):
        return None


def _refine_steps(text: str) -> int | str:
    """--refine's value: "auto" or a whole number of steps >= 0 (argparse turns a ValueError into one line)."""
    if text == "auto":
        return text
    if not (text.isascii() and text.isdigit()):  # "²".isdigit() is True, but int("²") fails
        raise argparse.ArgumentTypeError(f"--refine takes a number of steps (0, 30, 100, ...) or auto, got {text!r}")
    return int(text)


def cmd_register(args: argparse.Namespace) -> None:
    """Register --moving to --fixed and write --out (and --flow): the checks run before any work."""
    import nibabel as nib

    from .inference import register

    if args.iterations is not None:
        check_iterations(args.iterations, "--iterations")
    check_output_paths(
        {"--out": args.out, "--flow": args.flow},
        {"--moving": args.moving, "--fixed": args.fixed, "--checkpoint": _input_file(args.checkpoint)},
        suffixes=NIFTI_SUFFIXES,
    )
    device = check_device(args.device)
    model = _load_model(args.checkpoint, device)
    moving, m_img = _load_nifti(args.moving, model.ndim, "--moving")
    fixed, fixed_img = _load_nifti(args.fixed, model.ndim, "--fixed")
    diffs = _grid_differences(moving, fixed, m_img, fixed_img, model.ndim)
    if diffs and not args.resample:
        raise ValueError(
            f"--moving and --fixed lie on different voxel grids ({'; '.join(diffs)}); pass --resample to resample "
            f"the moving image onto the fixed image's grid through both NIfTI affines"
        )
    if args.resample and (diffs or not np.allclose(m_img.affine, fixed_img.affine, atol=1e-4)):
        moving = _resample_onto(moving, m_img, fixed, fixed_img)
        print(
            f"resampled --moving {args.moving} {m_img.shape[: model.ndim]} onto the --fixed grid {fixed.shape} "
            f"through both affines (nibabel.processing.resample_from_to, linear, 0 outside the moving image)"
        )
    elif not np.allclose(m_img.affine, fixed_img.affine, atol=1e-4):
        shift = float(np.linalg.norm(m_img.affine[:3, 3] - fixed_img.affine[:3, 3]))
        print(
            f"note: the affines of --moving and --fixed differ (origins {shift:.3g} mm apart); registered voxel to "
            f"voxel (--resample aligns them through their affines first)",
            file=sys.stderr,
        )
    warped, flow = register(moving, fixed, model, iterations=args.iterations, refine_steps=args.refine)
    shape = fixed_img.shape
    items = [(args.out, nib.Nifti1Image(warped.reshape(shape).astype(np.float32), fixed_img.affine))]
    if args.flow:
        # (*S, [1,] ndim): component k is the displacement in voxels along array axis k
        vec = np.moveaxis(flow, 0, -1).reshape(*shape, model.ndim).astype(np.float32)
        flow_img = nib.Nifti1Image(vec, fixed_img.affine)
        flow_img.header.set_intent("vector")
        items.append((args.flow, flow_img))
    atomic_write_many([(path, partial(nib.save, img)) for path, img in items])
    print(f"wrote {args.out}" + (f" and {args.flow}" if args.flow else ""))


def cmd_train(args: argparse.Namespace) -> None:
    """Train from --config into --out (or continue it with --resume); prints the last epoch's history as JSON.

    Under torchrun every process runs this command (DistributedDataParallel, see :mod:`.distributed`); rank 0
    prints the history.
    """
    from .distributed import env_world
    from .train import TrainConfig, check_run_folder, train

    rank = env_world()[0]  # a malformed torchrun environment is one line, before any work
    device = check_device(args.device)
    if args.max_steps is not None:
        check_positive(args.max_steps, "--max-steps")
    if args.epochs is not None:
        check_positive(args.epochs, "--epochs")
    cfg = TrainConfig.from_file(args.config, epochs=args.epochs)
    check_run_folder(args.out, args.resume)
    history = train(
        cfg,
        args.out,
        resume=args.resume,
        device=device,
        max_steps=args.max_steps,
        allow_config_change=args.allow_config_change,
    )
    if rank == 0:
        print(json_text({k: v[-1] for k, v in history.items() if v}))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Evaluate --checkpoint on --dataset/--split; prints a JSON summary, writes per-pair JSON to --out."""
    from .data import dataset_options, load_dataset
    from .train import evaluate

    if args.max_pairs is not None:
        check_positive(args.max_pairs, "--max-pairs")
    if args.iterations is not None:
        check_iterations(args.iterations, "--iterations")
    check_output_paths({"--out": args.out}, {"--checkpoint": _input_file(args.checkpoint)}, suffixes=(".json",))
    dataset_options(args.dataset)  # an unknown name fails before the model loads
    device = check_device(args.device)
    model = _load_model(args.checkpoint, device)
    if args.iterations is not None and not hasattr(model.config, "iterations"):
        raise ValueError(
            f"--iterations is for models that iterate (SearchMorph); --checkpoint {args.checkpoint!r} holds a "
            f"{type(model).__name__}, which does not"
        )
    dataset = load_dataset(args.dataset, args.split)
    metrics = evaluate(model, dataset, max_pairs=args.max_pairs, iterations=args.iterations)
    summary = {k: metrics[k] for k in ("dice_mean", "folding_mean", "labels") if k in metrics}
    summary["pairs"] = len(metrics["folding"])
    print(json_text(summary))
    if args.out:
        atomic_write_json(args.out, metrics)


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line (argparse prints the usage block first)."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the three sub-commands."""
    parser = _Parser(prog="python -m searchmorph_lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "train",
        help="train a model from a config file (.yaml or .json); under torchrun --nproc_per_node=N, on N processes",
    )
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt is written there every epoch")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: run a config that differs from the checkpoint's (recorded in its metadata)",
    )
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--max-steps", type=int, help="at most this many batches per epoch (smoke runs)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: cuda when present)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="Dice and folding of a checkpoint on a dataset split")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, run folder, or a pretrained name (brain2d)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--max-pairs", type=int)
    p.add_argument("--iterations", type=int, help="override the model's iterations (1 to 1000)")
    p.add_argument("--out", help="write per-pair metrics as JSON here (.json)")
    p.add_argument("--device")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("register", help="register two NIfTI images (2D, or 3D with a 3D model) with a checkpoint")
    p.add_argument("--moving", required=True)
    p.add_argument("--fixed", required=True)
    p.add_argument("--checkpoint", required=True, help="checkpoint file, run folder, or a pretrained name (brain2d)")
    p.add_argument("--out", required=True, help="warped moving image (.nii.gz), with the fixed image's affine")
    p.add_argument("--flow", help="also write the displacement field (*S, ndim) in voxels")
    p.add_argument(
        "--resample",
        action="store_true",
        help="resample the moving image onto the fixed image's grid through both affines (other size or spacing)",
    )
    p.add_argument("--iterations", type=int, help="override the model's iterations (1 to 1000)")
    p.add_argument(
        "--refine",
        type=_refine_steps,
        default=0,
        metavar="N|auto",
        help="refine the network's field on this pair for N Adam steps of its training loss (auto: the model's "
        "recommended count; default 0, the network alone)",
    )
    p.add_argument("--device")
    p.set_defaults(func=cmd_register)
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {one_line(message)}", file=sys.stderr if file is None else file)


class _LogLine(logging.Handler):
    """A library's log record (nibabel's header fixes, torch's notices) as one ``warning: <library>: ...`` line."""

    def emit(self, record: logging.LogRecord) -> None:
        library = record.name.split(".")[0] or "log"
        print(f"warning: {one_line(f'{library}: {record.getMessage()}')}", file=sys.stderr)


# Loggers that print on their own (nibabel.global has its own stderr handler) and the root, which reaches the rest
_LOGGERS = ("nibabel.global", "torch", "")


@contextlib.contextmanager
def _library_logs_as_lines() -> Iterator[None]:
    """Route library log records through :class:`_LogLine` for the ``with`` block, then restore the handlers."""
    handler = _LogLine(logging.WARNING)
    saved = []
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [handler]
        logger.propagate = not name  # the root has no parent; the others must not print twice through it
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


# torch, numpy and the C allocator each word an exhausted memory differently
_OUT_OF_MEMORY = re.compile(r"out of memory|can'?t allocate memory|not enough memory|unable to allocate", re.I)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 on a readable error, 1 on an unexpected one, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    previous = warnings.showwarning
    warnings.showwarning = _warning_line  # a library warning is one line too, never a code excerpt
    try:
        with _library_logs_as_lines():
            args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted (every output is written whole or not at all)", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:
        if os.environ.get("SEARCHMORPH_TRACEBACK"):
            raise
        if isinstance(err, MemoryError) or _OUT_OF_MEMORY.search(str(err)):
            print(f"error: out of memory: {one_line(err, 300)}; use a smaller image or batch", file=sys.stderr)
            return 2
        print(
            f"error: unexpected {type(err).__name__}: {one_line(err, 300)} (a bug in searchmorph_lite; please report "
            f"it; SEARCHMORPH_TRACEBACK=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1
    finally:
        warnings.showwarning = previous
    return 0
