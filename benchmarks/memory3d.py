"""The memory table (all-pairs volume by formula against the lean search's measured peak, 3D and 2D): the
``memory`` suite, kept under this name for the book and the README. See benchmarks/memory.py.

``python benchmarks/memory3d.py`` is ``python -m benchmarks --suite memory``; smoke run:
``python benchmarks/memory3d.py --sizes 32x32x32 --out /tmp/m``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.memory import main  # noqa: E402

if __name__ == "__main__":
    main()
