#!/usr/bin/env python
"""Prepare CAMUS for the book: 2CH and 4CH sequences (ED ... ES) at 160 x 160 with labels 1 blood pool, 2 myocardium.

Input (--src): the CAMUS public NIfTI release ("CAMUS_public") from CREATIS, unpacked as

    CAMUS_public/database_nifti/patient0001/patient0001_{2CH,4CH}_{ED,ES}.nii.gz
                                            patient0001_{2CH,4CH}_{ED,ES}_gt.nii.gz
                                            patient0001_{2CH,4CH}_half_sequence.nii.gz      (optional)
                                            patient0001_{2CH,4CH}_half_sequence_gt.nii.gz   (with the above)
    CAMUS_public/database_split/subgroup_{training,validation,testing}.txt                 (optional)

Without the half sequences a sequence is [ED, ES]; without the split files patients are split 80/10/10 (seed 0).
Left-atrium labels (3) become background. Frames are padded to square and resized to 160 x 160.

Output (--out, default $SEARCHMORPH_DATA or ~/.searchmorph/data): <out>/camus/{train,val,test}.npz and
manifest.json, each written to a temporary file and renamed, so a failed run leaves no half-written file.

    python data_scripts/prepare_camus.py --src /path/to/CAMUS_public [--out DIR]
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
from searchmorph_lite.data.camus import prepare_camus


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 when the dataset was written, 1 with a message naming the problem otherwise."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, type=Path, help="folder holding the unpacked CAMUS release")
    parser.add_argument("--out", type=Path, default=None, help=f"data root to write into (default {data_root()})")
    args = parser.parse_args(argv)
    out = args.out if args.out is not None else data_root()
    try:
        manifest = prepare_camus(args.src, out)
    except (FileNotFoundError, ValueError) as err:
        print(f"prepare_camus: error: {err}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{k} {v['patients']} patients/{v['frames']} frames" for k, v in manifest["counts"].items())
    print(f"wrote {out / 'camus'}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
