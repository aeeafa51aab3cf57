"""Which training-data choices matter? Short SearchMorph trainings on brain2d-subjects variants, scored on validation.

Each variant trains for the same budget of CPU seconds (one thread per run, so two runs share the 2-core machine
fairly), at a reduced image size so that the study fits a session, then is scored on validation pairs only
(never test): in-distribution (T1 contrast), and three out-of-distribution variants of the validation split
(inverted, T2-like contrast; twice the deformation; slices outside the training range). Results go to
``training/augmentation_study/<variant>.json``; ``--table`` prints the Markdown table of every finished variant.

    python training/augmentation_study.py --variant full --cpu-seconds 600      # one run (resumes if killed)
    python training/augmentation_study.py --table                               # the table
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import searchmorph_lite as sm  # noqa: E402
from searchmorph_lite._files import atomic_write_text  # noqa: E402
from searchmorph_lite.data import load_dataset  # noqa: E402
from searchmorph_lite.metrics import dice, folding_ratio  # noqa: E402
from searchmorph_lite.train import TrainConfig, registration_loss_all  # noqa: E402

OUT = HERE / "augmentation_study"
# Each variant adds one thing to the one before it.
VARIANTS = {
    "atlas-like": {"deform": "moving", "contrast": "t1", "artifacts": False},
    "two-subjects": {"deform": "both", "contrast": "t1", "artifacts": False},
    "+artifacts": {"deform": "both", "contrast": "t1", "artifacts": True},
    "+synthetic-contrast": {"deform": "both", "contrast": "mixed", "artifacts": True},
    "+iterations-4-to-8": {"deform": "both", "contrast": "mixed", "artifacts": True, "train_iterations": (4, 8)},
    "+alpha-4": {"deform": "both", "contrast": "mixed", "artifacts": True, "train_iterations": (4, 8), "alpha": 4.0},
}
EVALS = {
    "val T1": {},
    "val inverted": {"contrast": "inverted"},
    "val 2x deformation": {"max_displacement": 16.0},
    "val far slices": {"slices": "far"},
}


def run(variant: str, cpu_seconds: float, size: tuple[int, int], batch: int, seed: int, val_pairs: int) -> dict:
    """Train one variant for ``cpu_seconds`` of process CPU time; return its validation scores."""
    torch.set_num_threads(1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    spec = dict(VARIANTS[variant])
    lo, hi = spec.pop("train_iterations", (4, 4))
    alpha = spec.pop("alpha", 2.0)
    model = sm.SearchMorph(sm.SearchMorphConfig(radius=3, iterations=4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = TrainConfig(dataset="brain2d-subjects", similarity="lncc", alpha=alpha)
    rng = np.random.default_rng(seed)
    used, pairs, epoch, losses = 0.0, 0, 0, []
    while used < cpu_seconds:
        data = load_dataset("brain2d-subjects", "train", seed=seed + epoch, num_pairs=512, image_size=size, **spec)
        loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True)
        for item in loader:
            start = time.process_time()
            model.train()
            result = model(item["moving"], item["fixed"], iterations=int(rng.integers(lo, hi + 1)))
            loss = registration_loss_all(result, item["moving"], item["fixed"], cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            used += time.process_time() - start  # data generation is not counted
            pairs += len(item["moving"])
            losses.append(loss.item())
            if used >= cpu_seconds:
                break
        epoch += 1
    scores = {"variant": variant, "cpu_seconds": used, "pairs_seen": pairs, "image_size": list(size),
              "final_loss": float(np.mean(losses[-20:]))}  # fmt: skip
    model.eval()
    for name, options in EVALS.items():
        data = load_dataset("brain2d-subjects", "val", num_pairs=val_pairs, image_size=size, **options)
        items = [data[i] for i in range(len(data))]
        m, f = torch.stack([it["moving"] for it in items]), torch.stack([it["fixed"] for it in items])
        ml, fl = torch.stack([it["moving_labels"] for it in items]), torch.stack([it["fixed_labels"] for it in items])
        with torch.no_grad():
            flows = model(m, f, iterations=12).flows
        for n in (4, 8, 12):
            warped = sm.warp(ml.float(), flows[n - 1], mode="nearest").long()
            scores[f"{name} @{n}"] = {
                "dice": float(torch.nanmean(dice(warped, fl, [1, 2, 3]))),
                "folding": float(folding_ratio(flows[n - 1]).mean()),
            }
        scores[f"{name} identity"] = float(torch.nanmean(dice(ml, fl, [1, 2, 3])))
    return scores


def table() -> str:
    """Markdown table of every finished variant: validation Dice (folding %) at 4 iterations, and at 12."""
    rows = [json.loads((OUT / f"{v}.json").read_text()) for v in VARIANTS if (OUT / f"{v}.json").exists()]
    if not rows:
        return "no finished variant yet"
    head = "| variant | pairs seen | " + " | ".join(EVALS) + " | val T1 @12 iterations |"
    lines = [head, "|" + "---|" * (len(EVALS) + 3)]
    for r in rows:
        cells = [f"{r[f'{e} @4']['dice']:.3f} ({r[f'{e} @4']['folding']:.2f})" for e in EVALS]
        at12 = r["val T1 @12"]
        lines.append(
            f"| {r['variant']} | {r['pairs_seen']} | "
            + " | ".join(cells)
            + f" | {at12['dice']:.3f} ({at12['folding']:.2f}) |"
        )
    ident = " | ".join(f"{rows[0][f'{e} identity']:.3f}" for e in EVALS)
    lines.append(f"| identity | - | {ident} | - |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=list(VARIANTS))
    parser.add_argument("--cpu-seconds", type=float, default=600.0)
    parser.add_argument("--size", type=int, nargs=2, default=(96, 80))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-pairs", type=int, default=48)
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    if args.variant is None:
        parser.error("give --variant or --table")
    scores = run(args.variant, args.cpu_seconds, tuple(args.size), args.batch, args.seed, args.val_pairs)
    scores["command"] = " ".join(sys.argv)
    atomic_write_text(OUT / f"{args.variant}.json", json.dumps(scores, indent=1) + "\n")
    print(json.dumps({k: v for k, v in scores.items() if "@4" in k or k == "pairs_seen"}))


if __name__ == "__main__":
    main()
