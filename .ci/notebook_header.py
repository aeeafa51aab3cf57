"""Write every chapter's Colab badge and Colab install cell from _config.yml (the project's home, in one place).

    python .ci/notebook_header.py            # rewrite the headers of notebooks/NN_*.ipynb and their .py pairs
    python .ci/notebook_header.py --check    # exit 1 if any header differs from what _config.yml gives

Sources, all in _config.yml: ``repository.url`` and ``repository.branch`` (the badge's Colab link and the
install's git fallback), ``html.baseurl`` (the book's site, which ships the package wheel) and
``searchmorph.colab_extras`` (extra pip packages per chapter). The install cell is the first code cell, tagged
``colab-install``. On Colab it reads ``<book>/_static/wheels/LATEST`` (the wheel's file name, written by the book
build), installs ``<book>/_static/wheels/<name>``, and falls back to ``pip install git+<repository>``; the
environment variable SEARCHMORPH_BOOK_URL replaces ``<book>`` (CI points it at a locally served book). The
library's loose dependencies (``torch>=2.1``) keep Colab's torch. Outside Colab the cell does nothing.

Idempotent: a second run changes nothing. It edits the .ipynb (outputs kept) and writes the .py pair from it
with jupytext, so a .py edited after its notebook must be synced first (``jupytext --sync``); it refuses otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
TAG = "colab-install"
BADGE = re.compile(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)")
CELL = """\
# Colab only: install the book's library (written by .ci/notebook_header.py)
import os
import subprocess
import sys
import urllib.request

BOOK_URL = "{book}"
REPOSITORY = "{repository}"
if "google.colab" in sys.modules:  # the library's loose dependencies keep Colab's torch
    book = os.environ.get("SEARCHMORPH_BOOK_URL", BOOK_URL).rstrip("/")
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    try:  # the wheel on the book's own site; _static/wheels/LATEST holds its file name
        with urllib.request.urlopen(f"{{book}}/_static/wheels/LATEST", timeout=60) as r:
            wheel = r.read().decode().strip()
        subprocess.run([*pip, f"{{book}}/_static/wheels/{{wheel}}"], check=True)
    except Exception as err:  # no site or no wheel: install from the repository
        print(f"no wheel from {{book}} ({{err}}); installing from {{REPOSITORY}}")
        subprocess.run([*pip, f"git+{{REPOSITORY}}"], check=True)
"""
# The hand-written install that the generated cell replaced (removed from the setup cell on the first run).
OLD_INSTALL = re.compile(r'\Aimport sys, subprocess\nif "google\.colab" in sys\.modules:.*?check=True\)\n+', re.S)
EXTRAS = "    subprocess.run([*pip, {packages}], check=True)  # also needed by this chapter\n"


def settings(config_path: Path = ROOT / "_config.yml") -> dict:
    """The header's inputs from _config.yml: repository URL, branch, book URL, extras per chapter."""
    cfg = yaml.safe_load(config_path.read_text())
    repo = cfg["repository"]["url"].rstrip("/")
    book = (cfg.get("html", {}).get("baseurl") or "").rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repo):
        raise SystemExit(f"_config.yml repository.url must be https://github.com/<owner>/<name>, got {repo!r}")
    if not book.startswith("https://"):
        raise SystemExit(f"_config.yml html.baseurl must be the book's https URL, got {book!r}")
    extras = (cfg.get("searchmorph") or {}).get("colab_extras") or {}
    return {"repository": repo, "branch": cfg["repository"].get("branch", "main"), "book": book, "extras": extras}


def badge(s: dict, notebook: Path) -> str:
    """The Colab badge (Markdown) that opens this notebook from the repository's branch."""
    slug = s["repository"].removeprefix("https://github.com/")
    link = f"https://colab.research.google.com/github/{slug}/blob/{s['branch']}/notebooks/{notebook.name}"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({link})"


def install_source(s: dict, notebook: Path) -> str:
    """The install cell's code for this notebook."""
    src = CELL.format(book=s["book"], repository=s["repository"])
    packages = s["extras"].get(notebook.stem, [])
    if packages:
        src += EXTRAS.format(packages=", ".join(f'"{p}"' for p in packages))
    return src.rstrip("\n")


def with_header(nb: nbformat.NotebookNode, s: dict, notebook: Path) -> nbformat.NotebookNode:
    """The notebook with its badge and install cell as _config.yml says (the input is not modified)."""
    nb = nbformat.from_dict(nbformat.reads(nbformat.writes(nb), as_version=4))
    title = nb.cells[0]
    if title.cell_type != "markdown" or not title.source.startswith("# "):
        raise SystemExit(f"{notebook}: the first cell must be the Markdown title")
    if BADGE.search(title.source):
        title.source = BADGE.sub(lambda _: badge(s, notebook), title.source)
    else:
        head, _, rest = title.source.partition("\n")
        title.source = f"{head}\n\n{badge(s, notebook)}\n{rest}"
    cells = [c for c in nb.cells if c.cell_type == "code"]
    cell = next((c for c in cells if TAG in c.metadata.get("tags", [])), None)
    if cell is None:  # first run: a new cell before the first code cell
        cell = nbformat.v4.new_code_cell(metadata={"tags": [TAG, "hide-input"]})
        cell.id = f"{TAG}"
        nb.cells.insert(nb.cells.index(cells[0]), cell)
        cells[0].source = OLD_INSTALL.sub("", cells[0].source, count=1)
    cell.source = install_source(s, notebook)  # its outputs, if executed, stay (outside Colab: none)
    return nb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale headers; exit 1 if any")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: notebooks/NN_*.ipynb")
    args = parser.parse_args(argv)
    s = settings()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    stale = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        pair = path.with_suffix(".py")
        py_now = pair.read_text() if pair.exists() else None
        if py_now is not None and jupytext.writes(nb, fmt="py:percent") != py_now:
            if args.check:
                stale.append(f"{path.name}: .ipynb and .py differ (jupytext --sync {path})")
                continue
            raise SystemExit(f"{path}: its .py pair differs; run `jupytext --sync {path}` first")
        new = with_header(nb, s, path)
        py_new = jupytext.writes(new, fmt="py:percent")
        if nbformat.writes(new) == nbformat.writes(nb) and py_new == py_now:
            continue
        if args.check:
            stale.append(f"{path.name}: header differs from _config.yml")
            continue
        nbformat.write(new, path)
        pair.write_text(py_new)
        print(f"header written: {path.relative_to(ROOT)} (+ .py)")
    for line in stale:
        print("stale:", line, file=sys.stderr)
    if stale:
        print("run: python .ci/notebook_header.py", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
