"""The rendered chapters: code cells fit the page (88 columns, ruff E501 with notebooks/ruff.toml), the check
.ci/book.sh runs before building the book, here so that `pytest` finds an over-long line before CI does.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_chapter_code_lines_fit_the_rendered_page():
    notebooks = sorted(str(p) for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    assert notebooks, "no notebooks/NN_*.ipynb found"
    run = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--config", "notebooks/ruff.toml", "--select", "E501", *notebooks],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
