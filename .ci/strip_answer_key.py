"""Turn an executed answer-key chapter back into the chapter's own cells, keeping this run's outputs.

Usage: python .ci/strip_answer_key.py EXECUTED_KEY.ipynb OUT.ipynb

.ci/book.sh executes the answer-key edition of every chapter (`.ci/student_edition.py --with-solutions`: the
chapter top to bottom, then each exercise's solution and its check), so a solution that breaks after Run All fails
CI. The book shows the chapter itself: this drops the exercise cells (tagged exercise-stub / exercise-check), so
OUT's code cells are the chapter's, in order, with the outputs of the executed key, and .ci/cache_executed.py and
.ci/browser_check.py read it as they read a plain papermill copy.
"""

from __future__ import annotations

import sys

import nbformat

EXERCISE_TAGS = {"exercise-stub", "exercise-check"}


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """``nb`` without its exercise code cells (a new notebook)."""
    out = nbformat.from_dict(nbformat.reads(nbformat.writes(nb), as_version=4))
    out.cells = [c for c in out.cells if not EXERCISE_TAGS & set(c.metadata.get("tags", []))]
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    nbformat.write(strip(nbformat.read(argv[0], as_version=4)), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
