"""Write the student edition of the book's chapters: solutions removed, each exercise graded in the notebook.

    python .ci/student_edition.py --out student                        # every chapter
    python .ci/student_edition.py --out student_key --with-solutions   # the teacher's answer key (stubs filled)
    python .ci/student_edition.py --out student notebooks/02_warping.ipynb
    python .ci/student_edition.py --out student --write-counts          # book/teaching.md's exercise counts

For each notebooks/NN_*.ipynb: the outputs are cleared, every folded solution (a MyST ``{dropdown} Solution``
block of the "## Exercises" cell) is removed, and each exercise is followed by a "your code here" cell and a check
cell that grades it with the chapter's own objects and the library (asserts with a hint; "Exercise N: correct"
when it passes). Exercises whose answer is an argument or a rerun of the chapter get an answer cell and say so.
Write it next to notebooks/ (chapter 10 reads ../configs/); ruff skips student/ and student_key/.
The stubs, checks and solutions are in .ci/student_exercises.yml; a chapter whose exercises and that file
disagree (count, a solution left behind) is an error. tests/test_student_edition.py runs the stub and check cells:
the checks fail on the blank stubs and pass with the solutions.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / ".ci" / "student_exercises.yml"
# A dropdown fence of 3 or more backticks or colons; it closes at a line that is the same fence alone.
DROPDOWN = re.compile(r"^(?P<fence>`{3,}|:{3,})\{dropdown\}[^\n]*\n.*?^(?P=fence)[ \t]*(\n|\Z)", re.S | re.M)
ITEM = re.compile(r"^(\d+)\. ", re.M)
NOTE = (
    "> **Student edition.** The solutions are removed. Each exercise has a cell for your code and a check cell "
    "below it: run the check; it says what is wrong until your answer is right, then prints "
    '"Exercise N: correct". Run the chapter from the top first: the checks use its variables.'
)


def load_spec(path: Path = SPEC) -> dict:
    """The exercise spec: {chapter stem: {"exercises": [...], ...}}."""
    return yaml.safe_load(path.read_text())


def split_exercises(source: str) -> tuple[str, list[tuple[int, str]], str]:
    """(head, [(number, text without its solution)], tail) of an "## Exercises" Markdown cell."""
    start = source.index("## Exercises")
    head, body = source[:start], source[start:]
    tail_at = body.find("\n## ", len("## Exercises"))  # e.g. "## What we built" in the same cell
    body, tail = (body, "") if tail_at < 0 else (body[:tail_at], body[tail_at + 1 :])
    items = list(ITEM.finditer(body))
    intro = body[: items[0].start()] if items else body
    exercises = []
    for i, m in enumerate(items):
        text = body[m.start() : items[i + 1].start() if i + 1 < len(items) else len(body)]
        exercises.append((int(m.group(1)), DROPDOWN.sub("", text).strip()))
    return head + intro.strip(), exercises, tail.strip()


def _code(source: str, tag: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source.rstrip("\n"), metadata={"tags": [tag]})


def student_notebook(nb: nbformat.NotebookNode, spec: dict, name: str, with_solutions: bool = False):
    """The student edition of one chapter (a new notebook; ``nb`` is not modified)."""
    nb = nbformat.from_dict(nbformat.reads(nbformat.writes(nb), as_version=4))
    entry = spec.get(name)
    if entry is None:
        raise SystemExit(f"{name}: no entry in {SPEC.name}")
    cells = []
    found = False
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)
        if cell.cell_type != "markdown" or "## Exercises" not in cell.source:
            cells.append(cell)
            continue
        found = True
        head, exercises, tail = split_exercises(cell.source)
        if [n for n, _ in exercises] != list(range(1, len(entry["exercises"]) + 1)):
            raise SystemExit(
                f"{name}: the chapter has exercises {[n for n, _ in exercises]}, "
                f"{SPEC.name} has {len(entry['exercises'])}"
            )
        cells.append(nbformat.v4.new_markdown_cell(head))
        for (n, text), ex in zip(exercises, entry["exercises"]):
            cells.append(nbformat.v4.new_markdown_cell(text))
            if "discussion" in ex:
                cells.append(
                    nbformat.v4.new_markdown_cell(
                        f"*Your answer to exercise {n} here.* (Not graded automatically: {ex['discussion']}.)"
                    )
                )
                continue
            cells.append(_code(ex["solution"] if with_solutions else ex["stub"], "exercise-stub"))
            cells.append(_code(ex["check"], "exercise-check"))
        if tail:
            cells.append(nbformat.v4.new_markdown_cell(tail))
    if not found:
        raise SystemExit(f"{name}: no '## Exercises' cell")
    leftover = [c.source for c in cells if c.cell_type == "markdown" and "{dropdown}" in c.source]
    if leftover:
        raise SystemExit(f"{name}: a dropdown is left in the student edition: {leftover[0][:200]!r}")
    title = cells[0]
    head, _, rest = title.source.partition("\n")
    title.source = f"{head}\n\n{NOTE}\n{rest}"
    for i, cell in enumerate(cells):  # ids unique and stable
        if "id" not in cell or any(c.get("id") == cell.get("id") for c in cells[:i]):
            cell["id"] = f"student-{i}"
    nb.cells = cells
    return nb


TEACHING = ROOT / "book" / "teaching.md"
COUNTS_START, COUNTS_END = "<!-- student-edition-counts:start -->", "<!-- student-edition-counts:end -->"


def counts_paragraph(spec: dict) -> str:
    """The teaching page's paragraph on graded and discussion-only exercises, generated from the spec."""
    graded, discussion = [], []
    for name in sorted(spec):
        for n, ex in enumerate(spec[name]["exercises"], 1):
            (discussion if "discussion" in ex else graded).append((name[:2], n, ex.get("discussion")))
    listed = "\n".join(f"- {ch} ex. {n}: {why}" for ch, n, why in discussion)
    return (
        f"{len(graded)} exercises in {len(spec)} chapters are graded by a check cell; {len(discussion)} are "
        f"discussion-only and get an answer cell instead:\n\n{listed}"
    )


def write_counts(page: Path = TEACHING, spec: dict | None = None) -> bool:
    """Rewrite the generated paragraph between the markers of ``page``; True when it changed."""
    text = page.read_text()
    start, end = text.index(COUNTS_START) + len(COUNTS_START), text.index(COUNTS_END)
    new = text[:start] + "\n" + counts_paragraph(spec or load_spec()) + "\n" + text[end:]
    if new != text:
        page.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for the student notebooks")
    parser.add_argument("--with-solutions", action="store_true", help="fill the stubs (the teacher's answer key)")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    parser.add_argument(
        "--write-counts", action="store_true", help="only rewrite the exercise counts of book/teaching.md"
    )
    args = parser.parse_args(argv)
    spec = load_spec()
    if args.write_counts:
        print("book/teaching.md:", "updated" if write_counts(TEACHING, spec) else "up to date")
        return 0
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    args.out.mkdir(parents=True, exist_ok=True)
    graded = discussion = 0
    for path in paths:
        nb = student_notebook(nbformat.read(path, as_version=4), spec, path.stem, args.with_solutions)
        nbformat.validate(nb)
        nbformat.write(nb, args.out / path.name)
        exs = spec[path.stem]["exercises"]
        graded += sum("discussion" not in e for e in exs)
        discussion += sum("discussion" in e for e in exs)
    kind = "answer key" if args.with_solutions else "student edition"
    print(f"{kind}: {len(paths)} chapters in {args.out}, {graded} graded exercises, {discussion} discussion-only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
