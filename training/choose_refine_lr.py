"""Choose a model's refinement step size on validation pairs: loss, Dice, NCC and folding after N steps per lr.

Test-time refinement (``searchmorph_lite.refine.refine_flow``) minimises the model's own loss (similarity +
alpha * smoothness + the folding barrier) from the network's field, with Adam steps of about ``lr`` pixels. A step
that is too large for a model whose fields are already close never lowers the loss, and refinement then (rightly)
keeps the network's field. This script scores ``--lrs`` after ``--steps`` steps on the validation split of the
model's own training data (its validation options, as the trainer uses them), never on a test set, and prints
which lr left the lowest mean loss; ``ship_pretrained.py --refine-lr`` records the choice. No timing: run
``benchmarks/refine_time.py`` on an idle machine for that.

Example: ``python training/choose_refine_lr.py --checkpoint training/echo2d_wide_searchmorph/checkpoint.pt``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> dict[float, dict[str, float]]:
    """{lr: {"loss", "dice", "ncc", "folding"}} means over the pairs (the network alone under lr 0)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint (or a shipped .pt)")
    parser.add_argument("--pairs", type=int, default=12, help="validation pairs")
    parser.add_argument("--steps", type=int, default=30, help="refinement steps")
    parser.add_argument("--lrs", type=float, nargs="+", default=[2.0, 1.0, 0.5, 0.25, 0.125])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.pairs < 1 or args.steps < 1 or min(args.lrs) <= 0:
        parser.error("--pairs and --steps must be >= 1 and every lr > 0")
    torch.set_num_threads(args.threads)
    import searchmorph_lite as sm
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.refine import refine_flow, refinement_loss
    from searchmorph_lite.scoring import score_flow
    from searchmorph_lite.train import validation_options

    model = sm.load_checkpoint(args.checkpoint, device="cpu")
    tc = model.metadata["train_config"]
    options = validation_options(tc.get("dataset_options", {}), tc.get("val_options", {}))
    data = load_dataset(tc["dataset"], "val", **{**options, "num_pairs": args.pairs})
    pairs = [data[i] for i in range(min(args.pairs, len(data)))]
    similarity, alpha = tc.get("similarity", "lncc"), float(tc.get("alpha", 2.0))

    barrier = inspect.signature(refine_flow).parameters["fold_weight"].default  # what refinement minimises

    def loss(m: torch.Tensor, f: torch.Tensor, flow: torch.Tensor) -> float:
        return refinement_loss(m, f, flow, similarity, alpha, barrier).item()

    start = []
    for p in pairs:
        m, f = p["moving"][None], p["fixed"][None]
        with torch.no_grad():
            start.append((m, f, model(m, f).flow))
    rows: dict[float, dict[str, float]] = {}
    for lr in [0.0, *args.lrs]:
        scores = []
        for p, (m, f, flow) in zip(pairs, start):
            field = flow if lr == 0 else refine_flow(m, f, flow, args.steps, similarity=similarity, alpha=alpha, lr=lr)
            s = score_flow(p, field[0].numpy())
            scores.append((loss(m, f, field), s.get("dice", np.nan), s["ncc"], s["folding"]))
        a = np.array(scores)
        rows[lr] = dict(zip(("loss", "dice", "ncc", "folding"), a.mean(axis=0).tolist()))
        name = "network alone" if lr == 0 else f"lr {lr:g} px, {args.steps} steps"
        print(f"{name:<22} loss {rows[lr]['loss']:.5f}  Dice {rows[lr]['dice']:.4f}  NCC {rows[lr]['ncc']:.4f}"
              f"  % folding {rows[lr]['folding']:.3f}", flush=True)  # fmt: skip
    best = min(args.lrs, key=lambda lr: rows[lr]["loss"])
    print(f"lowest validation loss after {args.steps} steps: lr {best:g} ({len(pairs)} pairs of {tc['dataset']} val)")
    return rows


if __name__ == "__main__":
    main()
