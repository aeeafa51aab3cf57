"""Command line: ``python -m searchmorph_lite train|evaluate|register``."""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

from ._files import atomic_write_many, atomic_write_text


def _load_nifti(path: str, ndim: int = 2):
    """(float array with ``ndim`` axes, nibabel image) from a NIfTI file; ValueError when unreadable or not ndim-D."""
    import nibabel as nib

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        img = nib.load(path)
        data = np.asarray(img.get_fdata(), dtype=np.float64)
    except Exception as err:
        raise ValueError(f"cannot read NIfTI {path}: {err}") from None
    squeezed = np.squeeze(data)
    if squeezed.ndim != ndim:
        what = {2: "a 2D image", 3: "a 3D volume"}[ndim]
        raise ValueError(f"{path} is not {what} (the model is {ndim}D): shape {data.shape}")
    return squeezed, img


def _load_model(spec: str, device: str | None):
    """A model from a checkpoint file, or from a pretrained name ("brain2d", "echo2d", ...) when no such file exists."""
    from .checkpoint import load_checkpoint
    from .pretrained import PRETRAINED, load_pretrained

    if not Path(spec).exists() and spec in PRETRAINED:
        return load_pretrained(spec, device=device)
    if not Path(spec).exists():
        raise FileNotFoundError(f"checkpoint not found: {spec} (pretrained names: {', '.join(PRETRAINED)})")
    return load_checkpoint(spec, device=device)


def cmd_register(args: argparse.Namespace) -> None:
    import nibabel as nib

    from .inference import register

    for out in (args.out, args.flow):
        if out and not (out.endswith(".nii") or out.endswith(".nii.gz")):
            raise ValueError(f"output {out} must end in .nii or .nii.gz")
    model = _load_model(args.checkpoint, args.device)
    moving, _ = _load_nifti(args.moving, model.ndim)
    fixed, fixed_img = _load_nifti(args.fixed, model.ndim)
    if moving.shape != fixed.shape:
        raise ValueError(f"moving {moving.shape} and fixed {fixed.shape} differ in shape")
    warped, flow = register(moving, fixed, model, iterations=args.iterations)
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
    from .train import TrainConfig, train

    cfg = TrainConfig.from_file(args.config, epochs=args.epochs)
    history = train(cfg, args.out, resume=args.resume, device=args.device, max_steps=args.max_steps)
    print(json.dumps({k: v[-1] for k, v in history.items() if v}, indent=None))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .data import load_dataset
    from .train import evaluate

    model = _load_model(args.checkpoint, args.device)
    dataset = load_dataset(args.dataset, args.split)
    metrics = evaluate(model, dataset, max_pairs=args.max_pairs, iterations=args.iterations)
    summary = {k: metrics[k] for k in ("dice_mean", "folding_mean", "labels") if k in metrics}
    summary["pairs"] = len(metrics["folding"])
    print(json.dumps(summary))
    if args.out:
        atomic_write_text(args.out, json.dumps(metrics, indent=1))


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the three sub-commands."""
    parser = argparse.ArgumentParser(prog="python -m searchmorph_lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model from a config file (.yaml or .json)")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt is written there every epoch")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--max-steps", type=int, help="at most this many batches per epoch (smoke runs)")
    p.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("evaluate", help="Dice and folding of a checkpoint on a dataset split")
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or a pretrained name such as brain2d")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--max-pairs", type=int)
    p.add_argument("--iterations", type=int)
    p.add_argument("--out", help="write per-pair metrics as JSON here")
    p.add_argument("--device")
    p.set_defaults(func=cmd_evaluate)
    p = sub.add_parser("register", help="register two NIfTI images (2D, or 3D with a 3D model) with a checkpoint")
    p.add_argument("--moving", required=True)
    p.add_argument("--fixed", required=True)
    p.add_argument("--checkpoint", required=True, help="checkpoint file, or a pretrained name such as brain2d")
    p.add_argument("--out", required=True, help="warped moving image (.nii.gz), with the fixed image's affine")
    p.add_argument("--flow", help="also write the displacement field (*S, ndim) in voxels")
    p.add_argument("--iterations", type=int)
    p.add_argument("--device")
    p.set_defaults(func=cmd_register)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 2 on a readable error)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, OSError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
