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


def _checkpoint_spec(spec: str, note: bool = True) -> tuple[str, Path | None]:
    """("pretrained", None) when ``spec`` is a bare pretrained name, else ("file", the checkpoint file).

    A bare pretrained name ("brain2d") always means the shipped model, whatever the working folder holds, so
    the same command gives the same model everywhere; a local file or folder of that name is reached as
    ``./brain2d`` (a note says so when one exists, unless ``note`` is False: a command says it once, where it
    loads the model). A training run folder means its ``checkpoint.pt``.
    """
    from .checkpoint import checkpoint_file
    from .pretrained import PRETRAINED

    if not spec.strip():
        raise ValueError("--checkpoint is empty; give a checkpoint file, a run folder or a pretrained name")
    if spec in PRETRAINED:
        if note and Path(spec).exists():
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
        return _checkpoint_spec(spec, note=False)[1]
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
    """Register --moving to --fixed in physical space and write --out (and the optional outputs): every check on
    paths, images, labels and geometry runs before any work."""
    import nibabel as nib

    from .pipeline import as_image, check_label_map, check_same_grid, register_images, write_itk_displacement

    if args.iterations is not None:
        check_iterations(args.iterations, "--iterations")
    if (args.moving_labels is None) != (args.labels_out is None):
        given, missing = (
            ("--moving-labels", "--labels-out") if args.labels_out is None else ("--labels-out", "--moving-labels")
        )
        raise ValueError(f"{given} needs {missing}: the moving label map and where to write it go together")
    if args.stage != "affine" and args.checkpoint is None:
        raise ValueError(f"--stage {args.stage} needs --checkpoint (a model); --stage affine runs without one")
    check_output_paths(
        {
            "--out": args.out,
            "--flow": args.flow,
            "--transform-out": args.transform_out,
            "--labels-out": args.labels_out,
        },
        {
            "--moving": args.moving,
            "--fixed": args.fixed,
            "--moving-labels": args.moving_labels,
            "--checkpoint": _input_file(args.checkpoint) if args.checkpoint else None,
        },
        suffixes=NIFTI_SUFFIXES,
    )
    if args.resample:
        print("note: --resample is no longer needed: register always maps the images through their affines",
              file=sys.stderr)  # fmt: skip
    device = check_device(args.device)
    model = _load_model(args.checkpoint, device) if args.checkpoint else None
    ndim = model.ndim if model is not None else _file_ndim(args.fixed)
    fixed = as_image(args.fixed, ndim, "--fixed")
    moving = as_image(args.moving, ndim, "--moving", world_axes=fixed.world_axes)
    labels = None
    if args.moving_labels:
        labels = as_image(args.moving_labels, ndim, "--moving-labels", world_axes=fixed.world_axes)
        check_same_grid(labels, moving)
        check_label_map(labels)
    reg = register_images(moving, fixed, model, stage=args.stage, iterations=args.iterations, refine_steps=args.refine)
    items = [(args.out, reg.to_nifti(reg.apply()))]
    if labels is not None:
        label_dtype = labels.nifti.get_data_dtype() if labels.nifti is not None else np.int32
        items.append((args.labels_out, reg.to_nifti(reg.apply(labels, labels=True), label_dtype)))
    if args.flow:
        # (*S, [1,] ndim): component k is the displacement in fixed-image voxels along array axis k
        lin = fixed.affine[:ndim, :ndim]
        vox = np.linalg.solve(lin, reg.displacement.reshape(ndim, -1)).reshape(reg.displacement.shape)
        flow_img = reg.to_nifti(np.moveaxis(vox, 0, -1))
        flow_img.header.set_intent("vector")
        items.append((args.flow, flow_img))
    if args.transform_out:
        items.append((args.transform_out, write_itk_displacement(reg)))
    atomic_write_many([(path, partial(nib.save, img)) for path, img in items])
    print(f"wrote {', '.join(str(path) for path, _ in items)}")


def _file_ndim(path: str) -> int:
    """2 or 3: the number of axes longer than 1 among a NIfTI file's first three (for --stage affine)."""
    from .pipeline import spatial_axes

    return spatial_axes(path, "--fixed")


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
    cfg = TrainConfig.from_file(args.config, epochs=args.epochs, amp=args.amp)
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
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], help="override the config's mixed precision (CUDA only)")
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
    p = sub.add_parser(
        "register",
        help="register two NIfTI images (2D, or 3D with a 3D model) in physical space: affine, then the network",
    )
    p.add_argument("--moving", required=True, help="moving image (.nii/.nii.gz), any orientation and voxel size")
    p.add_argument("--fixed", required=True, help="fixed image: the outputs lie on its grid, with its header")
    p.add_argument(
        "--checkpoint", help="checkpoint file, run folder, or a pretrained name (brain3d, brain2d); not needed for "
        "--stage affine"
    )  # fmt: skip
    p.add_argument("--out", required=True, help="warped moving image (.nii.gz) on the fixed image's grid")
    p.add_argument(
        "--stage",
        choices=("full", "affine", "deform"),
        default="full",
        help="full: affine, then the network (default); affine: the affine alone; deform: the network alone, on images "
        "the NIfTI headers already align",
    )
    p.add_argument("--moving-labels", help="a label map on the moving image's grid, carried across (nearest)")
    p.add_argument("--labels-out", help="where to write the carried labels (.nii.gz, the label map's integer type)")
    p.add_argument(
        "--transform-out",
        help="write the transform as an ITK displacement field (world mm, LPS): antsApplyTransforms, "
        "ants.apply_transforms and 3D Slicer read it",
    )
    p.add_argument("--flow", help="also write the displacement field (*S, ndim) in fixed-image voxels")
    p.add_argument("--resample", action="store_true", help=argparse.SUPPRESS)  # kept for old scripts: now always
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
