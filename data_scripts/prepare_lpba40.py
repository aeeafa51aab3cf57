#!/usr/bin/env python
"""Prepare LPBA40 for the book: slice 80 of every subject at 192 x 160, S01 as the atlas, train/val/test .npz files.

Input (--src): the LPBA40 "delineation space" release from LONI (LPBA40_Subjects_Delineation_Space_MRI_and_label_files),
unpacked so that these files exist somewhere below it (.hdr/.img, .img.gz, .nii or .nii.gz all work):

    LPBA40/delineation_space/S01/S01.delineation.skullstripped.hdr + .img.gz
    LPBA40/delineation_space/S01/S01.delineation.structure.label.hdr + .img.gz
    ... S02 ... S40

Output (--out, default $SEARCHMORPH_DATA or ~/.searchmorph/data): <out>/lpba40/{train,val,test}.npz and
manifest.json, each written to a temporary file and renamed, so a failed run leaves no half-written file.
Subjects: S01 atlas (fixed), S02-S30 train, S31-S34 val, S35-S40 test.

    python data_scripts/prepare_lpba40.py --src /path/to/LPBA40 [--out DIR] [--slice 80]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from searchmorph_lite.data import data_root
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from searchmorph_lite.data import data_root
from searchmorph_lite.data.lpba40 import prepare_lpba40


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when the dataset was written, 1 with a message naming the problem otherwise."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, type=Path, help="folder holding the unpacked LPBA40 release")
    parser.add_argument("--out", type=Path, default=None, help=f"data root to write into (default {data_root()})")
    parser.add_argument("--slice", type=int, default=80, help="axial slice of the 160x192x160 box (default 80)")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else data_root()
    try:
        manifest = prepare_lpba40(args.src, out, slice_index=args.slice)
    except (FileNotFoundError, ValueError) as err:
        print(f"prepare_lpba40: error: {err}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"wrote {out / 'lpba40'}: {counts} subjects, {manifest['num_labels']} labels (incl. background)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
