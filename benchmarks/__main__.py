"""One entry point for the benchmark suites: ``python -m benchmarks --suite NAME [the suite's options]``.

Run it from the repository's root. ``python -m benchmarks --suite NAME --help`` lists a suite's options; every
suite writes its results next to this file unless given ``--out``. Time only on an idle machine.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# suite -> (module, the question it answers)
SUITES = {
    "transfer": ("transfer", "in- and out-of-distribution pairs: networks, refinement, VoxelMorph, ANTs SyN"),
    "beyond": ("beyond", "the 3D table, the diffeomorphic comparison and the stride table"),
    "refine": ("refine_time", "refinement steps against ANTs SyN, paired (training/choose_refinement.py tunes)"),
    "inference": ("inference", "inference and training time and memory on brain2d; the correlation memory table"),
    "volumes": ("volumes", "3D registration of NIfTI files against ANTs (issue 21's targets)"),
    "cost3d": ("cost3d", "3D cost per pair with and without the oneDNN convolution path"),
    "memory": ("memory", "all-pairs volume (formula) against the lean search's measured peak, 2D and 3D"),
    "correlation": ("correlation", "training step time and peak memory, all-pairs volume against the lean search"),
}


def main(argv: list[str] | None = None) -> object:
    """The chosen suite's ``main`` on the remaining arguments (``--help`` with a suite: that suite's help)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.splitlines()[0],
        epilog="suites: " + "; ".join(f"{name}: {what}" for name, (_, what) in SUITES.items()),
        add_help=False,
    )
    parser.add_argument("--suite", choices=SUITES)
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    if args.suite is None:
        if args.help:
            parser.print_help()
            return None
        parser.error("--suite is required")
    module = importlib.import_module(f"benchmarks.{SUITES[args.suite][0]}")
    return module.main([*rest, "--help"] if args.help else rest)


if __name__ == "__main__":
    main(sys.argv[1:])
