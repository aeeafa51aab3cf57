"""Turn a finished training run into a shipped pretrained model and rewrite the model card.

``python training/ship_pretrained.py --run training/brain2d_searchmorph --name brain2d --hardware "..."``
reads ``<run>/checkpoint.pt`` (written by ``train``), drops the optimizer state, adds the model card entries
(data, image size, training pairs, epochs, batch, wall time, hardware, validation history, test metrics measured
here on the dataset's test split) and writes ``searchmorph_lite/pretrained/<name>.pt`` atomically. Then it
rewrites ``searchmorph_lite/pretrained/MODEL_CARD.md`` from the metadata of every shipped file.
``--card-only`` only rewrites the card.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import searchmorph_lite as sm  # noqa: E402
from searchmorph_lite.data import dataset_frame, load_dataset  # noqa: E402
from searchmorph_lite.data.common import atomic_write_text  # noqa: E402
from searchmorph_lite.pretrained import PRETRAINED, pretrained_path  # noqa: E402
from searchmorph_lite.train import TrainConfig, evaluate  # noqa: E402

DATA_TEXT = {
    "brain2d": "brain2d: axial slices of the MNI152 2009a template (nilearn) warped by random smooth fields, "
    "GM/WM/CSF labels",
    "echo2d-synthetic": "echo2d-synthetic: synthetic apical 2-, 3- and 4-chamber echo sequences with blood-pool and "
    "myocardium labels",
    "brain2d-subjects": "brain2d-subjects: virtual subjects from every axial MNI152 slice (both images deformed, T1 "
    "or synthetic per-tissue contrast, bias, blur, noise), GM/WM/CSF labels; val/test slabs 3 mm from training",
    "brain3d": "brain3d: 3D virtual subjects from the MNI152 2 mm template (both volumes deformed, T1 or synthetic "
    "contrast, bias, blur, noise), GM/WM/CSF labels; test deformations on control grids training never used",
}


def pairs_seen(history: dict, epoch_pairs: int) -> int | None:
    """Training pairs the run stepped through: the per-epoch record, where an epoch has one.

    Runs resumed across the version that began recording (``history["pairs"]``) hold None for their earlier
    epochs. Those were whole epochs (only a run's last epoch can stop early, at its CPU budget, and the last one
    is recorded), so each saw the epoch's ``epoch_pairs`` (with fresh_pairs, new ones; without, the same again).
    None when no epoch recorded its pairs.
    """
    recorded = history.get("pairs") or []
    if not recorded or all(p is None for p in recorded):
        return None
    return int(sum(epoch_pairs if p is None else p for p in recorded))


def describe_run(ckpt: dict, hardware: str) -> dict:
    """Model card entries of a training checkpoint: data, budget, wall time, hardware, validation history."""
    tc = ckpt["metadata"]["train_config"]
    cfg = TrainConfig(**tc)
    train_set = load_dataset(cfg.dataset, "train", **cfg.dataset_options)
    epochs = int(ckpt["epoch"])
    history = ckpt["history"]
    return {
        "data": DATA_TEXT.get(cfg.dataset, cfg.dataset),
        "dataset": cfg.dataset,
        "dataset_options": dict(cfg.dataset_options),
        "image_size": list(train_set[0]["moving"].shape[1:]),
        "train_pairs": len(train_set),  # per epoch; new ones every epoch when fresh_pairs
        "fresh_pairs": cfg.fresh_pairs,
        "train_cpu_seconds": float(sum(history.get("cpu_seconds", []))),
        # the clock of max_seconds / max_cpu_seconds (train.budget_clock); runs from before GPUs used CPU seconds
        "budget_clock": ckpt["metadata"].get("budget_clock", "CPU seconds"),
        "pairs_seen": pairs_seen(history, len(train_set)),
        "epochs": epochs,
        "batch_size": cfg.batch_size,
        "loss": f"{cfg.similarity.upper()} + {cfg.alpha:g} * L2 gradient"
        + (f" + {cfg.fold_weight:g} * folding barrier" if cfg.fold_weight else "")
        + (" (eq. 9 + mean(relu(0.1 - det J)))" if cfg.fold_weight else " (eq. 9)")
        + f", iteration weight {cfg.iteration_weight:g}"
        + (f", {'-'.join(map(str, cfg.train_iterations))} iterations per step" if cfg.train_iterations else ""),
        "config_changes": list(ckpt["metadata"].get("config_changes") or []),
        "optimizer": f"Adam, lr {cfg.lr:g}",
        "train_config": {**tc, "epochs": epochs},
        "history": history,
        "wall_time_s": float(sum(history["seconds"])),
        "hardware": hardware,
        "shipped": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
    }


# training's dataset options that the test split takes too: those that shape the images, and brain3d's residual
# affine (the part of the affine jitter that `searchmorph register`'s affine stage leaves: what the network is fed)
TEST_OPTIONS = ("image_size", "voxel_mm", "residual_affine")


def test_options(options: dict | None) -> dict:
    """The training's dataset ``options`` that apply to the test split (TEST_OPTIONS); the rest (num_pairs, seed,
    contrast, ...) keep the test split's defaults."""
    return {k: v for k, v in (options or {}).items() if k in TEST_OPTIONS}


def residual_words(md: dict) -> str:
    """How the test split's affine was set for a model trained on a residual affine ("" for the others)."""
    residual = md.get("dataset_options", {}).get("residual_affine")
    if residual is None:
        return ""
    return (
        f", under the training's residual affine ({residual:g} of the default jitter, what the affine stage of "
        "`searchmorph register` leaves; the volumes benchmark runs the whole pipeline from NIfTI files)"
    )


def test_metrics(model: torch.nn.Module, dataset: str, options: dict | None = None) -> dict:
    """Mean Dice (std over pairs), % folding and NCC of ``model`` on the whole test split of ``dataset``, with the
    training's :func:`test_options`."""
    test_set = load_dataset(dataset, "test", **test_options(options))
    m = evaluate(model, test_set, device="cpu")
    per_pair = np.nanmean(np.array(m["dice"], dtype=float), axis=1)
    return {
        "test_pairs": len(test_set),
        "test_dice_mean": float(per_pair.mean()),
        "test_dice_std": float(per_pair.std()),
        "test_folding_percent": float(np.mean(m["folding"])),
        "test_ncc_before": float(np.mean(m["ncc_before"])),
        "test_ncc_after": float(np.mean(m["ncc_after"])),
    }


def refined_test_metrics(model: torch.nn.Module, dataset: str, options: dict, steps: int) -> dict:
    """Mean Dice and % folding of ``register(..., refine_steps=steps)`` on the test split (labelled data only)."""
    test_set = load_dataset(dataset, "test", **test_options(options))
    dices, folds = [], []
    for i in range(len(test_set)):
        item = test_set[i]
        if "moving_labels" not in item:
            return {}
        _, flow = sm.register(item["moving"][0], item["fixed"][0], model, normalize=False, refine_steps=steps)
        f = torch.from_numpy(flow)[None].float()
        lab = sm.warp(item["moving_labels"][None].float(), f, mode="nearest").round().long()
        labels = sorted(int(v) for v in torch.unique(item["fixed_labels"]) if v != 0)
        dices.append(float(torch.nanmean(sm.dice(lab, item["fixed_labels"][None], labels)[0])))
        folds.append(float(sm.folding_ratio(f)[0]))
    return {"test_dice_refined": float(np.mean(dices)), "test_folding_refined": float(np.mean(folds))}


def ship(
    run: Path,
    name: str,
    hardware: str,
    refine_steps: int = 0,
    note: str = "",
    refine_lr: float | None = None,
    refinement: Path | None = None,
) -> Path:
    """Write ``searchmorph_lite/pretrained/<name>.pt`` from ``run/checkpoint.pt``; return its path.

    ``refine_steps`` > 0 is the refinement recommended for the model (``metadata["refine_steps"]``, which
    ``register(..., refine_steps="auto")`` and ``--refine auto`` use); its test metrics are measured too.
    ``refine_lr`` (pixels per Adam step; default 2) is recorded as ``metadata["refine_lr"]``, which refinement
    uses for this model. ``refinement``, a table written by ``training/choose_refinement.py``, gives all three
    (lr, levels, steps) from its choice and records how they were chosen (``metadata["refine_choice"]``)."""
    choice = None
    if refinement is not None:
        table = json.loads(Path(refinement).read_text())
        choice = table["choice"]
        refine_steps, refine_lr = int(choice["steps"]), float(choice["lr"])
    if refine_lr is not None and not (refine_lr > 0 and refine_steps):
        raise ValueError(f"--refine-lr {refine_lr}: needs --refine-steps > 0 and a positive rate")
    ckpt = sm.read_checkpoint(run / "checkpoint.pt")
    if ckpt["model"] != PRETRAINED[name]:
        raise ValueError(f"{run} holds a {ckpt['model']}, but {name!r} must be a {PRETRAINED[name]}")
    model = sm.build_model(ckpt["model"], ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    meta = describe_run(ckpt, hardware)
    meta.update(test_metrics(model, meta["dataset"], meta["dataset_options"]))
    if refine_steps:
        model.metadata = {"train_config": meta["train_config"]}  # refinement reads the loss from it
        if refine_lr is not None:
            model.metadata["refine_lr"] = meta["refine_lr"] = float(refine_lr)
        if choice is not None:
            meta.update(refinement_metadata(table))
            model.metadata["refine_levels"] = meta["refine_levels"]
        meta["refine_steps"] = int(refine_steps)
        meta.update(refined_test_metrics(model, meta["dataset"], meta["dataset_options"], refine_steps))
    frame = dataset_frame(meta["dataset"], meta["dataset_options"])
    if frame is not None:  # the grid `searchmorph register` brings real images onto (the pipeline reads it)
        meta["frame"] = frame
    meta["name"] = name
    if note:
        meta["note"] = note.rstrip(".")
    out = pretrained_path(name)
    sm.save_checkpoint(out, model, metadata=meta)
    sm.load_pretrained(name, device="cpu")  # the shipped file must load with weights_only=True
    return out


def refinement_metadata(table: dict) -> dict:
    """Metadata entries of a choose_refinement.py table: refine_lr, refine_levels, refine_steps, refine_choice."""
    choice = table["choice"]
    return {
        "refine_lr": float(choice["lr"]),
        "refine_levels": int(choice["levels"]),
        "refine_steps": int(choice["steps"]),
        "refine_choice": {
            "sets": table["sets"],
            "network_dice": table["network"]["dice"],
            "dice": choice["dice"],
            "folding": choice["folding"],
            "settings_tried": len(table["settings"]),
            "command": table["command"],
            "files": bool(table.get("files", False)),
        },
    }


def update_refinement(name: str, refinement: Path) -> Path:
    """Re-save the shipped model ``name`` (weights unchanged) with the refinement a choose_refinement.py table chose,
    its refined test metrics and the model's frame: for a model whose training run folder is not kept."""
    path = pretrained_path(name)
    ckpt = sm.read_checkpoint(path)
    model = sm.build_model(ckpt["model"], ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    meta = dict(ckpt["metadata"])
    meta.update(refinement_metadata(json.loads(Path(refinement).read_text())))
    model.metadata = {k: meta[k] for k in ("train_config", "refine_lr", "refine_levels")}
    meta.update(refined_test_metrics(model, meta["dataset"], meta["dataset_options"], meta["refine_steps"]))
    frame = dataset_frame(meta["dataset"], meta["dataset_options"])
    if frame is not None:
        meta["frame"] = frame
    sm.save_checkpoint(path, model, metadata=meta)
    sm.load_pretrained(name, device="cpu")
    return path


def _sets(sets: dict) -> str:
    return ", ".join(f"{name}: {n} pairs" for name, n in sets.items())


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


PAPER_EPOCHS = 1500  # the paper's training budget (Sec. IV), on a GPU


def shipped_checkpoints() -> dict[str, dict]:
    """{name: checkpoint dict} of every shipped model present, in PRETRAINED's order."""
    return {n: sm.read_checkpoint(pretrained_path(n)) for n in PRETRAINED if pretrained_path(n).is_file()}


def _machines(checkpoints: dict[str, dict]) -> str:
    """Where the shipped models trained, from the first part of each one's hardware entry ("x86_64 CPU, 2 cores")."""
    machines = sorted({ck["metadata"]["hardware"].split(";")[0].split(", torch")[0] for ck in checkpoints.values()})
    if len(machines) == 1:
        return f"Every model was trained on one machine ({machines[0]})"
    return f"The models were trained on {len(machines)} machines ({'; '.join(machines)}; each entry names its own)"


def model_card_text(checkpoints: dict[str, dict] | None = None) -> str:
    """MODEL_CARD.md's text (Markdown) from the metadata of the shipped ``checkpoints`` (default: all present)."""
    import inspect

    from searchmorph_lite.losses import local_ncc

    checkpoints = shipped_checkpoints() if checkpoints is None else checkpoints
    window = inspect.signature(local_ncc).parameters["window"].default
    lines = [
        "# Model card: searchmorph_lite pretrained models",
        "",
        "Written by `python training/ship_pretrained.py` (or `python .ci/book_numbers.py`) from the files' own "
        "metadata (`model.metadata`); load a model with `searchmorph_lite.load_pretrained(name)`. "
        f"{_machines(checkpoints)}, with `python -m searchmorph_lite train --config configs/<file>.yaml`; the budget "
        f"is a small fraction of the paper's ({PAPER_EPOCHS} epochs on a GPU), so these are teaching models, not the "
        "paper's.",
        "",
        "Test metrics are measured on the whole test split of the training dataset (pairs never seen in training or "
        "validation). Dice is the mean over labels per pair, then mean (std) over pairs; folding is the % of pixels "
        "with Jacobian determinant <= 0; NCC is the local NCC of the pair before and after registration (square "
        f"root of the mean squared {window} x {window} window correlation, as `train.evaluate` reports it).",
        "",
        "| name | model | data | size | pairs x epochs (batch) | loss | wall time | test Dice | % folding "
        "| NCC before -> after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    details = []
    for name, ckpt in checkpoints.items():
        md = ckpt["metadata"]
        size = " x ".join(str(n) for n in md["image_size"])
        switches = md["train_config"]["model_config"]
        lines.append(
            f"| `{name}` | {ckpt['model']} {switches or ''} | {md['dataset']} | {size} | {md['train_pairs']} x "
            f"{md['epochs']} ({md['batch_size']}) | {md['loss'].split(' (')[0]} | {md['wall_time_s'] / 60:.0f} min | "
            f"{_fmt(md['test_dice_mean'])} ({_fmt(md['test_dice_std'])}) | {_fmt(md['test_folding_percent'])} | "
            f"{_fmt(md['test_ncc_before'])} -> {_fmt(md['test_ncc_after'])} |"
        )
        val = ", ".join(_fmt(v) for v in md["history"]["val_dice"])
        fresh = " (new ones every epoch)" if md.get("fresh_pairs") else ""
        details += [
            f"## `{name}`",
            "",
            f"- Data: {md['data']}; {md['train_pairs']} training pairs of {size}{fresh}; test split of "
            f"{md['test_pairs']} pairs{residual_words(md)}.",
            f"- Model: {ckpt['model']}, config `{ckpt['config']}`.",
            f"- Training: {md['loss']}; {md['optimizer']}; {md['epochs']} epochs, batch {md['batch_size']}, seed "
            f"{md['train_config']['seed']}; config `{md['train_config']}`.",
            f"- Validation Dice per epoch (first {md['train_config']['val_pairs']} val pairs): {val}.",
            *([f"- Pairs seen in training: {md['pairs_seen']:,}."] if md.get("pairs_seen") else []),
            *(
                [
                    "- Settings changed on resume: "
                    + "; ".join(
                        f"from epoch {c['from_epoch']}, "
                        + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in c["changes"].items())
                        for c in md["config_changes"]
                    )
                    + "."
                ]
                if md.get("config_changes")
                else []
            ),
            *(
                [
                    f"- Recommended test-time refinement: {md['refine_steps']} steps"
                    + (f" of {md['refine_lr']:g} px" if md.get("refine_lr") else "")
                    + (
                        f" on {md['refine_levels']} pyramid level{'s' if md['refine_levels'] != 1 else ''}"
                        if md.get("refine_levels")
                        else ""
                    )
                    + f' (`register(..., refine_steps="auto")`, `--refine auto`); test Dice with it '
                    f"{_fmt(md.get('test_dice_refined'))}, % folding {_fmt(md.get('test_folding_refined'))}."
                ]
                + (
                    [
                        f"- How the refinement was chosen: {md['refine_choice']['settings_tried']} settings of lr, "
                        f"levels and steps scored on validation sets ({_sets(md['refine_choice']['sets'])}"
                        + (
                            "; each pair written as NIfTI files, registered by `register_images` and scored on the "
                            "fixed image's 2 mm grid"
                            if md["refine_choice"].get("files")
                            else ""
                        )
                        + "); the "
                        f"choice has the highest mean Dice over the sets ({_fmt(md['refine_choice']['dice'])}, the "
                        f"network alone {_fmt(md['refine_choice']['network_dice'])}) with mean folding "
                        f"{_fmt(md['refine_choice']['folding'])} %: `{md['refine_choice']['command']}`."
                    ]
                    if md.get("refine_choice")
                    else []
                )
                if md.get("refine_steps")
                else []
            ),
            *(
                [
                    f"- Frame (`searchmorph register` brings both images onto it): axes "
                    f"{', '.join(md['frame']['axcodes'])} (the direction each array index runs towards), "
                    f"{' x '.join(f'{v:g}' for v in md['frame']['voxel_mm'])} mm voxels, "
                    f"{' x '.join(str(n) for n in md['frame']['shape'])} voxels centred on the fixed image's "
                    "foreground."
                ]
                if md.get("frame")
                else []
            ),
            f"- Wall time of the training loop: {md['wall_time_s']:.0f} s"
            + (f"; CPU seconds of its steps: {md['train_cpu_seconds']:.0f}" if md.get("train_cpu_seconds") else "")
            + f". Hardware: {md['hardware']}.",
            f"- Shipped: {md['shipped']}.",
            *([f"- Note: {md['note']}."] if md.get("note") else []),
            "",
        ]
    lines += [
        "",
        "Limits: trained on slices or volumes of one template (brain) or on synthetic sequences (echo); on other "
        "data (real inter-subject MR, real echo) expect lower accuracy than on these test splits; chapters "
        "11-14 of the book measure them.",
        "",
    ] + details
    return "\n".join(lines)


MODEL_CARD = Path(pretrained_path("brain2d")).with_name("MODEL_CARD.md")


def write_model_card() -> Path:
    """Rewrite MODEL_CARD.md from the metadata of every shipped checkpoint (:func:`model_card_text`)."""
    return atomic_write_text(MODEL_CARD, model_card_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="training run folder holding checkpoint.pt")
    parser.add_argument("--name", choices=sorted(PRETRAINED))
    parser.add_argument("--hardware", help="how the run was trained: CPU, threads, what shared the machine")
    parser.add_argument("--card-only", action="store_true")
    parser.add_argument("--refine-steps", type=int, default=0, help="refinement steps recommended for the model")
    what = "refinement step size in pixels recorded for the model (default: refinement's 2)"
    parser.add_argument("--refine-lr", type=float, default=None, help=what)
    parser.add_argument(
        "--refinement", type=Path, help="a training/choose_refinement.py table: lr, levels and steps from its choice"
    )
    parser.add_argument("--note", default="", help="a sentence for the model card (how the model is used)")
    parser.add_argument(
        "--refinement-only",
        action="store_true",
        help="with --name and --refinement: re-save the shipped model with that refinement (no run folder needed)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.refinement_only:
        if not (args.name and args.refinement):
            parser.error("--refinement-only needs --name and --refinement")
        print("wrote", update_refinement(args.name, args.refinement))
    elif not args.card_only:
        if not (args.run and args.name and args.hardware):
            parser.error("--run, --name and --hardware are required unless --card-only")
        base = f"{platform.machine()} CPU, {os.cpu_count()} cores, torch {torch.__version__}"
        hardware = f"{base}; {args.hardware}"
        print("wrote", ship(args.run, args.name, hardware, args.refine_steps, args.note, args.refine_lr,
                            args.refinement))  # fmt: skip
    print("wrote", write_model_card())


if __name__ == "__main__":
    main()
