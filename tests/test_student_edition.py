"""The student edition (.ci/student_edition.py): it builds for every chapter, keeps every exercise and no solution,
and its check cells fail on the blank stubs and pass with the solutions.

The checks run in this process on a namespace built from the chapter's own cells: its setup (imports, parameters
with the spec's faster values, seed and device) and the few cells the spec names, not the whole chapter. Chapters
marked `slow` in .ci/student_exercises.yml (they load the shipped models and evaluate them) carry pytest's `slow`
marker, which the default run deselects (pyproject.toml): `-m slow` runs just those, as .ci/run does after the
library suite, and `-m ""` runs everything.
"""

from __future__ import annotations

import ast
import builtins
import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("student_edition", ROOT / ".ci" / "student_edition.py")
student_edition = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(student_edition)
SPEC = student_edition.load_spec()
CHAPTERS = sorted(SPEC)
# the slow chapters' checks carry the `slow` marker (deselected by default: pyproject.toml's addopts)
CHECKED = [pytest.param(name, marks=pytest.mark.slow) if SPEC[name].get("slow") else name for name in CHAPTERS]


def chapter(name: str) -> nbformat.NotebookNode:
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def tagged(nb: nbformat.NotebookNode, tag: str) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code" and tag in c.metadata.get("tags", [])]


def test_spec_has_every_chapter():
    assert sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")) == CHAPTERS


@pytest.mark.parametrize("name", CHAPTERS)
def test_student_edition_keeps_exercises_and_drops_solutions(name):
    original = chapter(name)
    nb = student_edition.student_notebook(original, SPEC, name)
    nbformat.validate(nb)
    text = "\n".join(c.source for c in nb.cells)
    assert "{dropdown}" not in text and "Solution" not in text
    cell = next(c.source for c in original.cells if c.cell_type == "markdown" and "## Exercises" in c.source)
    _, exercises, _ = student_edition.split_exercises(cell)
    markdown = [c.source for c in nb.cells if c.cell_type == "markdown"]
    for _, question in exercises:
        assert question in markdown
    graded = [e for e in SPEC[name]["exercises"] if "discussion" not in e]
    assert tagged(nb, "exercise-stub") == [e["stub"].rstrip("\n") for e in graded]
    assert tagged(nb, "exercise-check") == [e["check"].rstrip("\n") for e in graded]
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    key = student_edition.student_notebook(original, SPEC, name, with_solutions=True)
    assert tagged(key, "exercise-stub") == [e["solution"].rstrip("\n") for e in graded]


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def context_cells(nb: nbformat.NotebookNode, entry: dict) -> list[str]:
    """The chapter's setup cells (after the Colab install, through the cell after `parameters`), with the
    spec's parameter values appended to the parameters cell, then the cells the spec selects."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    first = next(i for i, c in enumerate(code) if "colab-install" not in c.metadata.get("tags", []))
    params = next(i for i, c in enumerate(code) if "parameters" in c.metadata.get("tags", []))
    values = entry.get("params", {}).items()
    overrides = "".join(f"{k} = {tuple(v) if isinstance(v, list) else v!r}\n" for k, v in values)
    setup = [c.source + ("\n" + overrides if i == params else "") for i, c in enumerate(code[: params + 2])]
    setup = setup[first:]
    wanted = [squeeze(w) for w in entry.get("cells", [])]  # blind to line breaks and spaces: reformatting-proof
    missing = [w for w in wanted if not any(w in squeeze(c.source) for c in code)]
    assert not missing, f"the chapter has no code cell containing {missing}"
    picked = [c.source for c in code[params + 2 :] if any(w in squeeze(c.source) for w in wanted)]
    return setup + picked + ([entry["extra"]] if entry.get("extra") else [])


@pytest.mark.parametrize("name", CHECKED)
def test_checks_fail_on_stubs_and_pass_with_solutions(name, monkeypatch):
    entry = SPEC[name]
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(ROOT / "notebooks")  # the chapters run from notebooks/
    nb = student_edition.student_notebook(chapter(name), SPEC, name)
    stubs, checks = tagged(nb, "exercise-stub"), tagged(nb, "exercise-check")
    solutions = [e["solution"] for e in entry["exercises"] if "discussion" not in e]
    replace = entry.get("test_replace", {})

    def shrink(src: str) -> str:
        for old, new in replace.items():
            src = src.replace(old, new)
        return src

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    problems = []
    try:
        with torch.random.fork_rng():
            base = {"__name__": "__main__", "display": lambda *a, **k: None}
            for src in context_cells(chapter(name), entry):
                exec(compile(src, f"{name} context", "exec"), base)
            for n, (stub, check, solution) in enumerate(zip(stubs, checks, solutions), 1):
                ns = dict(base)
                exec(compile(shrink(stub), f"{name} stub {n}", "exec"), ns)
                try:
                    exec(compile(check, f"{name} check {n}", "exec"), ns)
                    problems.append(f"check {n} passes on the blank stub")
                except (AssertionError, NotImplementedError):
                    pass
                ns = dict(base)
                exec(compile(shrink(solution), f"{name} solution {n}", "exec"), ns)
                try:
                    exec(compile(check, f"{name} check {n}", "exec"), ns)
                except Exception as err:  # noqa: BLE001 -- report every exercise, not only the first
                    problems.append(f"check {n} fails with the solution: {type(err).__name__}: {err}")
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        import matplotlib.pyplot as plt

        plt.close("all")
    assert not problems, f"{name}: " + "; ".join(problems)


IPYTHON_NAMES = {"display", "get_ipython"}  # defined by the kernel, not by a cell


def bound_names(tree: ast.AST) -> set[str]:
    """Every name a piece of code binds anywhere (assignments, loops, defs, arguments, imports): an
    over-approximation of what it defines, enough to find a name nothing defines."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


@pytest.mark.parametrize("name", CHAPTERS)
def test_stubs_and_solutions_use_only_names_the_chapter_defines(name):
    """A stub that reads a name the chapter never defines (chapter 10's `nn.Module`) raises NameError in the
    student's notebook before the student writes a line; the cell-subset test above cannot see it."""
    code = [c.source for c in chapter(name).cells if c.cell_type == "code"]
    defined = set().union(*(bound_names(ast.parse(squeeze_magics(src))) for src in code))
    defined |= set(dir(builtins)) | IPYTHON_NAMES
    problems = []
    for n, ex in enumerate(SPEC[name]["exercises"], 1):
        for part in ("stub", "solution", "check"):
            if part not in ex:
                continue
            tree = ast.parse(ex[part])
            own = bound_names(tree)
            if part == "check":  # runs after the stub: it may read what the stub defines, no more
                own |= bound_names(ast.parse(ex["stub"]))
            used = {x.id for x in ast.walk(tree) if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Load)}
            missing = sorted(used - own - defined)
            if missing:
                problems.append(f"exercise {n} {part}: {missing}")
    assert not problems, f"{name}: names no cell of the chapter defines: " + "; ".join(problems)


def squeeze_magics(src: str) -> str:
    """A code cell without IPython magics and shell lines (not Python)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines())


def test_teaching_page_exercise_counts_are_generated_from_the_spec():
    """book/teaching.md once typed "26 graded / 4 discussion" while the spec held 29 / 6."""
    text = student_edition.TEACHING.read_text()
    start = text.index(student_edition.COUNTS_START) + len(student_edition.COUNTS_START)
    block = text[start : text.index(student_edition.COUNTS_END)].strip()
    assert block == student_edition.counts_paragraph(SPEC), (
        "stale: run python .ci/student_edition.py --out student --write-counts"
    )
