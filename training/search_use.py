"""Does a trained SearchMorph use its search? Dice with the search map or the context zeroed at test time.

The diagnosis of the first SearchMorph-3D run (training/BRAIN3D_STATUS.md) found a GRU that no longer listened to the
search map. This script asks the question of any checkpoint, on the validation pairs of its own training data: it
registers each pair three times, with the model as trained, with every search map replaced by zeros (the GRU then sees
only its context and the field), and with the context replaced by zeros (``sm.zeroed_input``, through
``searchmorph_lite.scoring.input_use``), and reports the mean label Dice of each and how far each ablated field lies
from the full one. A model that uses its search loses Dice without it.

``python training/search_use.py --checkpoint training/brain3d_searchmorph/checkpoint.pt --pairs 8``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# the library's names (searchmorph_lite.scoring.input_use) -> this script's
NAMES = {"as trained": "full", "search zeroed": "no search", "context zeroed": "no context",
         "identity (no field)": "identity"}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    """{"full"|"no search"|"no context"|"identity": {"dice", "field_change"}} on the validation pairs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint or a shipped .pt")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import searchmorph_lite as sm
    from searchmorph_lite.data import load_dataset
    from searchmorph_lite.scoring import input_use
    from searchmorph_lite.train import validation_options

    model = sm.load_checkpoint(args.checkpoint, device="cpu").eval()
    if type(model).__name__ != "SearchMorph":
        parser.error(f"{args.checkpoint} holds a {type(model).__name__}: only SearchMorph has a search to ablate")
    tc = model.metadata["train_config"]
    history = model.metadata.get("history") or {}
    if history.get("epoch"):
        print(f"{args.checkpoint}: epoch {history['epoch'][-1]}, {sum(history.get('budget_seconds') or [0]):,.0f} "
              f"{model.metadata.get('budget_clock', 'CPU seconds')} of training")  # fmt: skip
    options = validation_options(tc.get("dataset_options", {}), tc.get("val_options", {}))
    data = load_dataset(tc["dataset"], "val", **{**options, "num_pairs": args.pairs})
    pairs = [data[i] for i in range(min(args.pairs, len(data)))]
    use = input_use(model, pairs)
    out = {NAMES[k]: v for k, v in use.items()}
    for name in ("full", "no search", "no context"):
        print(f"{name}: mean Dice {out[name]['dice']:.3f}, |field - full field| / |full field| "
              f"{out[name]['field_change']:.3f} ({len(pairs)} validation pairs)", flush=True)  # fmt: skip
    print(f"identity: mean Dice {out['identity']['dice']:.3f} (no registration)")
    return out


if __name__ == "__main__":
    main()
