"""Write the per-chapter execution times of a CI run into the "Times measured in CI" table of book/teaching.md.

Usage: python .ci/fill_times.py [_build/notebook_times.tsv] [book/teaching.md]

Reads the TSV that .ci/book.sh writes (notebook, seconds, status) and replaces everything between the markers
<!-- times-measured-in-ci:start --> and <!-- times-measured-in-ci:end --> with a Markdown table, rounded to whole
seconds, plus the total. Run it after `bash .ci/book.sh` and commit the page.
"""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

START, END = "<!-- times-measured-in-ci:start -->", "<!-- times-measured-in-ci:end -->"


def table(rows: list[dict]) -> str:
    lines = ["| Chapter | Seconds (CPU, CI scale) |", "| --- | ---: |"]
    total = 0.0
    for row in rows:
        name = Path(row["notebook"]).stem
        secs = float(row["seconds"])
        total += secs
        note = "" if row.get("status", "ok") == "ok" else f" ({row['status']})"
        lines.append(f"| [{name}](../notebooks/{name}.ipynb) | {secs:.0f}{note} |")
    lines.append(f"| **all chapters** | **{total:.0f}** |")
    return "\n".join(lines)


def main() -> int:
    tsv = Path(sys.argv[1] if len(sys.argv) > 1 else "_build/notebook_times.tsv")
    page = Path(sys.argv[2] if len(sys.argv) > 2 else "book/teaching.md")
    with tsv.open() as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    text = page.read_text()
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), flags=re.S)
    if not pattern.search(text):
        print(f"{page}: markers {START} ... {END} not found")
        return 1
    page.write_text(pattern.sub(lambda _: f"{START}\n{table(rows)}\n{END}", text))
    print(f"{page}: wrote {len(rows)} chapter times from {tsv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
