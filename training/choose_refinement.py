"""Choose a model's test-time refinement (step size, pyramid levels, steps) on in- and out-of-distribution
validation sets, never on a test set.

Test-time refinement (``searchmorph_lite.refine.refine_flow``) minimises the model's own loss from the network's
field with Adam steps of about ``lr`` pixels on a ``levels``-level pyramid. A setting chosen on the training
distribution alone can fail elsewhere: the first ``brain2d`` recommended 2 px (chosen for echo), which left real
brain pairs where the network put them. This script scores every (lr, levels, steps) on the validation split of
the model's training data and on validation sets built to lie outside it (2D brain: inverted contrast, twice the
deformation, far slices; 3D brain: twice the deformation, the full affine jitter instead of the residual one,
control grids neither training nor test uses, inverted contrast; echo: the standard display settings instead of
the wide ones, and another pixel size), each set weighted equally, and recommends the setting of highest mean Dice
whose mean folding stays at most ``--max-folding`` % (ties: fewer steps). It writes the table to
``--out`` (JSON), which ``ship_pretrained.py --refinement`` records on the model card.

``--files`` (models with a frame, brain3d): score every setting where ``searchmorph register`` uses it instead:
each validation pair written as NIfTI files as the volumes benchmark writes test pairs (fixed in RAS at 2 mm, moving
at 1.5 mm in a random axis order with flips, the full affine jitter), registered by
``searchmorph_lite.register_images`` (affine stage, the network and the refinement on the model's 4 mm grid) and
scored on the fixed image's 2 mm grid. On 2026-12-07 a setting chosen on the 4 mm arrays (3 levels) gained 0.05-0.07
Dice there and about nothing on the 2 mm files, where its coarse levels even cost Dice with fewer steps.

Example: ``python training/choose_refinement.py --checkpoint searchmorph_lite/pretrained/brain2d.pt --out
training/refinement_brain2d.json``. This is the tuner; ``benchmarks/refine_time.py`` (the ``refine`` suite of
``python -m benchmarks``) is only a report that times its refinement against SyN with the same methods and the same
scoring loop (:func:`score_sets`, on ``searchmorph_lite.scoring.run_methods``). No timing here.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import network  # noqa: E402  (the benchmarks' one normalize)

IN_DISTRIBUTION = "validation (in distribution)"
# validation sets per training dataset: name -> options on top of the run's validation options
OOD_SETS = {
    "brain2d-subjects": {
        "inverted contrast": {"contrast": "inverted"},
        "2x deformation": {"max_displacement": 16.0},
        "far slices": {"slices": "far"},
    },
    "echo2d-synthetic": {
        "standard display": {"variability": "standard"},
        "128 x 128 pixels": {"image_size": 128},
    },
    # brain3d's validation split is T1 (its default); training draws T1 or synthetic ("mixed"); neither set below
    # uses a test control grid
    "brain3d": {
        "2x deformation": {"max_displacement": 5.0},
        "full affine jitter": {"residual_affine": 1.0},
        "unseen control grids": {"grids": "unseen"},
        "inverted contrast": {"contrast": "inverted"},
    },
}


# --files: validation sets of NIfTI files at the dataset's own 2 mm, each with the full affine jitter (the pipeline's
# affine stage takes it); the same out-of-distribution variants as above, at 2 mm (max_displacement in 2 mm voxels)
FILE_SETS = {
    "brain3d": {
        "validation files": {},
        "2x deformation files": {"max_displacement": 10.0},
        "unseen control grids files": {"grids": "unseen"},
        "inverted contrast files": {"contrast": "inverted"},
    },
}
FILE_VOXEL_MM = 2
MOVING_MM = 1.5  # the moving file's voxel size (benchmarks/volumes.py's default)


def set_options(train_config: dict, out_of_distribution: bool = True) -> dict[str, dict]:
    """{set name: ``load_dataset`` options} for a run's validation split and (``out_of_distribution``) its
    out-of-distribution variants."""
    from searchmorph_lite.train import validation_options

    base = validation_options(train_config.get("dataset_options", {}), train_config.get("val_options", {}))
    sets = {IN_DISTRIBUTION: base}
    for name, extra in OOD_SETS.get(train_config["dataset"], {}).items() if out_of_distribution else ():
        sets[name] = {**base, **extra}
    return sets


def load_sets(dataset: str, options: dict[str, dict], pairs: int, split: str = "val") -> dict[str, list[dict]]:
    """{set name: the first ``pairs`` pairs of ``dataset``'s ``split`` with that set's options}."""
    from searchmorph_lite.data import load_dataset

    out = {}
    for name, opts in options.items():
        data = load_dataset(dataset, split, **{**opts, "num_pairs": pairs})
        out[name] = [data[i] for i in range(min(pairs, len(data)))]
    return out


def validation_sets(train_config: dict, pairs: int) -> dict[str, list[dict]]:
    """{set name: pairs} for a run's validation split and its out-of-distribution variants."""
    return load_sets(train_config["dataset"], set_options(train_config), pairs)


@contextlib.contextmanager
def refine_settings_of(model, lr: float | None, levels: int | None) -> Iterator[None]:
    """Within the block, ``model``'s refinement runs with ``lr`` and ``levels`` (None: its own): register reads them
    from the model's metadata, which is restored afterwards."""
    chosen = {k: v for k, v in (("refine_lr", lr), ("refine_levels", levels)) if v is not None}
    saved = {k: model.metadata[k] for k in chosen if k in model.metadata}
    model.metadata.update(chosen)
    try:
        yield
    finally:
        for k in chosen:
            model.metadata.pop(k)
        model.metadata.update(saved)


def refinement_method(model, steps: int, lr: float | None = None, levels: int | None = None) -> Callable:
    """method(moving, fixed) -> flow of ``model`` + ``steps`` refinement steps of about ``lr`` pixels on ``levels``
    pyramid levels (None: the model's own, from its metadata); 0 steps is the network alone."""
    run = network(model, refine_steps=steps)

    def method(moving: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        with refine_settings_of(model, lr, levels):
            return run(moving, fixed)

    return method


def file_sets(train_config: dict, pairs: int) -> dict[str, list[dict]]:
    """{set name: pairs} of :data:`FILE_SETS` for ``--files``: the dataset's validation split at 2 mm."""
    if train_config["dataset"] not in FILE_SETS:
        raise SystemExit(f"--files has validation sets for {', '.join(FILE_SETS)}, not {train_config['dataset']!r}")
    options = {name: {"voxel_mm": FILE_VOXEL_MM, **extra} for name, extra in FILE_SETS[train_config["dataset"]].items()}
    return load_sets(train_config["dataset"], options, pairs)


def score_files(model, settings: list[tuple], sets: dict[str, list[dict]], seed: int = 0) -> list[dict[str, dict]]:
    """For each (lr, levels, steps) of ``settings``: {set: {"per_pair": [{"dice", "folding"}]}}, every pair written
    as NIfTI files (``benchmarks.volumes.write_pair``), registered by ``register_images`` with that refinement and
    scored on the fixed image's grid (mean tissue Dice, % folding of the composed transform)."""
    import nibabel as nib

    from benchmarks.volumes import run_ours, tissue_dice, write_pair

    rng = np.random.default_rng(seed)
    out: list[dict[str, dict]] = [{name: {"per_pair": []} for name in sets} for _ in settings]
    for set_name, pairs in sets.items():
        with tempfile.TemporaryDirectory() as tmp:
            for index, item in enumerate(pairs):
                folder = Path(tmp) / str(index)
                folder.mkdir()
                paths = write_pair(item, folder, rng, MOVING_MM)
                reference = np.asarray(nib.load(paths["fixed_labels"]).dataobj)
                for k, (lr, levels, steps) in enumerate(settings):
                    with refine_settings_of(model, lr, levels):
                        labels, folding = run_ours(paths, model, "full", steps)
                    out[k][set_name]["per_pair"].append({"dice": tissue_dice(labels, reference), "folding": folding()})
        print(f"{set_name}: {len(settings)} methods on {len(pairs)} pairs scored (files)", flush=True)
    return out


def score_sets(methods: dict[str, Callable], sets: dict[str, list[dict]], warmup: bool = False) -> dict[str, dict]:
    """{method: {set: ``run_methods`` result}}: every method on every set's pairs, taking turns pair by pair (the
    timing report warms up first; the tuner needs no times)."""
    from searchmorph_lite.scoring import run_methods

    out: dict[str, dict] = {name: {} for name in methods}
    for set_name, pairs in sets.items():
        for name, result in run_methods(methods, pairs, warmup=warmup).items():
            out[name][set_name] = result
        print(f"{set_name}: {len(methods)} methods on {len(pairs)} pairs scored", flush=True)
    return out


def set_means(by_set: dict[str, dict]) -> dict:
    """{set: {"dice", "folding"} (means over its pairs), "dice", "folding" (means over the sets, each weighted
    equally)} of one method's :func:`score_sets` entry."""
    row = {
        name: {k: float(np.nanmean([r[k] for r in result["per_pair"]])) for k in ("dice", "folding")}
        for name, result in by_set.items()
    }
    row["dice"] = float(np.mean([row[n]["dice"] for n in by_set]))
    row["folding"] = float(np.mean([row[n]["folding"] for n in by_set]))
    return row


def main(argv: list[str] | None = None) -> dict:
    """The table ({"settings": [...], "choice": {...}, ...}) written to --out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint or a shipped .pt")
    parser.add_argument("--pairs", type=int, default=8, help="validation pairs per set")
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 100])
    parser.add_argument("--lrs", type=float, nargs="+", default=[2.0, 1.0, 0.5, 0.25])
    parser.add_argument("--levels", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--max-folding", type=float, default=0.05, help="% of pixels, mean over the sets")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--files", action="store_true", help="score through register_images on NIfTI files (3D)")
    parser.add_argument("--out", help="JSON file for the table and the choice")
    args = parser.parse_args(argv)
    if args.pairs < 1 or min(args.steps) < 1 or min(args.lrs) <= 0 or min(args.levels) < 1:
        parser.error("--pairs, --steps and --levels must be >= 1 and every lr > 0")
    torch.set_num_threads(args.threads)
    import searchmorph_lite as sm

    model = sm.load_checkpoint(args.checkpoint, device="cpu")
    tc = model.metadata["train_config"]
    sets = file_sets(tc, args.pairs) if args.files else validation_sets(tc, args.pairs)
    start = time.perf_counter()
    grid = list(dict.fromkeys(itertools.product(args.lrs, args.levels, args.steps)))  # each setting once
    names = [f"lr {lr:g} px, {levels} levels, {steps:3d} steps" for lr, levels, steps in grid]
    if args.files:
        network_scored, *setting_scored = score_files(model, [(None, None, 0), *grid], sets)
        scored = dict(zip(names, setting_scored))
    else:
        methods = {"network": refinement_method(model, 0)}
        methods.update({name: refinement_method(model, st, lr, lv) for name, (lr, lv, st) in zip(names, grid)})
        scored = score_sets(methods, sets)
        network_scored = scored.pop("network")
    network_row = set_means(network_scored)
    settings = []
    for (lr, levels, steps), name in zip(grid, scored):
        settings.append({"lr": lr, "levels": levels, "steps": steps, **set_means(scored[name])})
        print(f"{name}: mean Dice {settings[-1]['dice']:.4f} (network {network_row['dice']:.4f}), % folding "
              f"{settings[-1]['folding']:.3f}", flush=True)  # fmt: skip
    allowed = [s for s in settings if s["folding"] <= args.max_folding] or settings
    choice = max(allowed, key=lambda s: (round(s["dice"], 4), -s["steps"]))
    table = {
        "checkpoint": str(args.checkpoint),
        "dataset": tc["dataset"],
        "sets": {name: len(pairs) for name, pairs in sets.items()},
        "set_options": (
            {
                name: {"voxel_mm": FILE_VOXEL_MM, "moving_mm": MOVING_MM, **FILE_SETS[tc["dataset"]][name]}
                for name in sets
            }
            if args.files
            else {name: OOD_SETS.get(tc["dataset"], {}).get(name, {}) for name in sets}
        ),
        "files": args.files,
        "network": network_row,
        "settings": settings,
        "max_folding": args.max_folding,
        "choice": {k: choice[k] for k in ("lr", "levels", "steps", "dice", "folding")},
        "command": " ".join(["python training/choose_refinement.py", *(argv if argv is not None else sys.argv[1:])]),
        "threads": args.threads,
        "seconds": time.perf_counter() - start,
    }
    print(f"choice: lr {choice['lr']:g} px, {choice['levels']} levels, {choice['steps']} steps: mean Dice "
          f"{choice['dice']:.4f} over {len(sets)} validation sets ({', '.join(sets)}); the network alone "
          f"{network_row['dice']:.4f}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
