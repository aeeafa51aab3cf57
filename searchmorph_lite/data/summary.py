"""Counts, sizes and label fractions of every dataset split: ``python -m searchmorph_lite.data.summary [names...]``.

Label fractions are over every labelled frame the split holds: moving images of brain2d and lpba40 (plus the
fixed atlas once), every frame of every sequence for echo2d-synthetic and camus. Prepared datasets that are
absent are reported as such.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
import torch.nn.functional as F

from . import DATASETS, load_dataset


def summarize(name: str, split: str, **options: Any) -> dict[str, Any]:
    """Dict with "pairs", "sequences" (or None), "size" (H, W), "label_fractions" (list or None) of one split."""
    ds = load_dataset(name, split, **options)
    first = ds[0]
    size = tuple(first["moving"].shape[-2:])
    counts = torch.zeros(0, dtype=torch.float64)

    def add(labels: torch.Tensor) -> None:
        nonlocal counts
        c = torch.bincount(labels.flatten()).double()
        n = max(len(c), len(counts))
        counts = F.pad(counts, (0, n - len(counts))) + F.pad(c, (0, n - len(c)))

    if hasattr(ds, "sequence"):
        n_seq = ds.num_sequences
        for i in range(n_seq):
            seq = ds.sequence(i)
            if "labels" in seq:
                add(seq["labels"])
    else:
        n_seq = None
        if "fixed_labels" in first:
            add(first["fixed_labels"])
            for i in range(len(ds)):
                add(ds[i]["moving_labels"])
    fractions = None if not len(counts) else [round(float(v), 4) for v in counts / counts.sum()]
    return {"pairs": len(ds), "sequences": n_seq, "size": size, "label_fractions": fractions}


def main(argv: list[str] | None = None) -> int:
    """Print one line per dataset split; exit status 0."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=list(DATASETS), help=f"datasets (default all: {DATASETS})")
    args = parser.parse_args(argv)
    for name in args.names:
        splits = ("test",) if name == "echo2d-clip" else ("train", "val", "test")
        for split in splits:
            try:
                s = summarize(name, split)
            except FileNotFoundError:
                print(f"{name:17s} {split:5s} not prepared")
                break
            seq = "" if s["sequences"] is None else f" sequences={s['sequences']}"
            print(
                f"{name:17s} {split:5s} pairs={s['pairs']}{seq} size={s['size'][0]}x{s['size'][1]} "
                f"label_fractions={s['label_fractions']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
