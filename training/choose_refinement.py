"""Choose a model's test-time refinement (step size, pyramid levels, steps) on in- and out-of-distribution
validation sets, never on a test set.

Test-time refinement (``searchmorph_lite.refine.refine_flow``) minimises the model's own loss from the network's
field with Adam steps of about ``lr`` pixels on a ``levels``-level pyramid. A setting chosen on the training
distribution alone can fail elsewhere: the first ``brain2d`` recommended 2 px (chosen for echo), which left real
brain pairs where the network put them. This script scores every (lr, levels, steps) on the validation split of
the model's training data and on validation sets built to lie outside it (2D brain: inverted contrast, twice the
deformation, far slices; 3D brain: twice the deformation, the full affine jitter instead of the residual one, one
contrast at a time; echo: the standard display settings instead of the wide ones, and another pixel size), each
set weighted equally, and recommends the setting of
highest mean Dice whose mean folding stays at most ``--max-folding`` % (ties: fewer steps). It writes the table to
``--out`` (JSON), which ``ship_pretrained.py --refinement`` records on the model card.

Example: ``python training/choose_refinement.py --checkpoint searchmorph_lite/pretrained/brain2d.pt --out
training/refinement_brain2d.json``. No timing here: ``benchmarks/refine_time.py`` times the choice against SyN.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
    "brain3d": {
        "2x deformation": {"max_displacement": 5.0},
        "full affine jitter": {"residual_affine": 1.0},
        "T1 only": {"contrast": "t1"},
        "synthetic contrast only": {"contrast": "synthetic"},
    },
}


def validation_sets(train_config: dict, pairs: int) -> dict[str, list[dict]]:
    """{set name: pairs} for a run's validation split and its out-of-distribution variants."""
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.train import validation_options

    dataset = train_config["dataset"]
    base = validation_options(train_config.get("dataset_options", {}), train_config.get("val_options", {}))
    sets = {"validation (in distribution)": base}
    for name, extra in OOD_SETS.get(dataset, {}).items():
        sets[name] = {**base, **extra}
    out = {}
    for name, options in sets.items():
        data = load_dataset(dataset, "val", **{**options, "num_pairs": pairs})
        out[name] = [data[i] for i in range(min(pairs, len(data)))]
    return out


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
    parser.add_argument("--out", help="JSON file for the table and the choice")
    args = parser.parse_args(argv)
    if args.pairs < 1 or min(args.steps) < 1 or min(args.lrs) <= 0 or min(args.levels) < 1:
        parser.error("--pairs, --steps and --levels must be >= 1 and every lr > 0")
    torch.set_num_threads(args.threads)
    import searchmorph_lite as sm
    from searchmorph_lite.scoring import score_flow

    model = sm.load_checkpoint(args.checkpoint, device="cpu")
    tc = model.metadata["train_config"]
    sets = validation_sets(tc, args.pairs)
    start = time.perf_counter()

    def scores(**register_kwargs) -> dict:
        row = {}
        for name, pairs in sets.items():
            rows = []
            for p in pairs:
                _, flow = sm.register(p["moving"][0], p["fixed"][0], model, normalize=False, **register_kwargs)
                rows.append(score_flow(p, flow))
            row[name] = {k: float(np.nanmean([r[k] for r in rows])) for k in ("dice", "folding")}
        row["dice"] = float(np.mean([row[n]["dice"] for n in sets]))
        row["folding"] = float(np.mean([row[n]["folding"] for n in sets]))
        return row

    saved = {k: model.metadata.get(k) for k in ("refine_lr", "refine_levels")}
    network = scores()
    settings = []
    for lr, levels, steps in itertools.product(args.lrs, args.levels, args.steps):
        model.metadata["refine_lr"], model.metadata["refine_levels"] = lr, levels
        row = {"lr": lr, "levels": levels, "steps": steps, **scores(refine_steps=steps)}
        settings.append(row)
        print(f"lr {lr:g} px, {levels} levels, {steps:3d} steps: mean Dice {row['dice']:.4f} (network "
              f"{network['dice']:.4f}), % folding {row['folding']:.3f}", flush=True)  # fmt: skip
    model.metadata.update(saved)
    allowed = [s for s in settings if s["folding"] <= args.max_folding] or settings
    choice = max(allowed, key=lambda s: (round(s["dice"], 4), -s["steps"]))
    table = {
        "checkpoint": str(args.checkpoint),
        "dataset": tc["dataset"],
        "sets": {name: len(pairs) for name, pairs in sets.items()},
        "set_options": {name: OOD_SETS.get(tc["dataset"], {}).get(name, {}) for name in sets},
        "network": network,
        "settings": settings,
        "max_folding": args.max_folding,
        "choice": {k: choice[k] for k in ("lr", "levels", "steps", "dice", "folding")},
        "command": " ".join(["python training/choose_refinement.py", *(argv if argv is not None else sys.argv[1:])]),
        "threads": args.threads,
        "seconds": time.perf_counter() - start,
    }
    print(f"choice: lr {choice['lr']:g} px, {choice['levels']} levels, {choice['steps']} steps: mean Dice "
          f"{choice['dice']:.4f} over {len(sets)} validation sets ({', '.join(sets)}); the network alone "
          f"{network['dice']:.4f}")  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
