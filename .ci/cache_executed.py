"""Put the notebooks papermill executed in this CI run into the book's jupyter-cache, so the build does not re-run them.

Usage: python .ci/cache_executed.py EXECUTED_DIR [--cache _build/.jupyter_cache] [--times _build/notebook_times.tsv]

myst-nb (execute_notebooks: cache in _config.yml) looks a source notebook up in the cache by a hash of its code
cells' sources and metadata and its kernelspec. Papermill's copy of a notebook has the same code but adds cell
metadata (durations, timestamps), so its hash differs. For each notebooks/NN_slug.ipynb with an executed copy
EXECUTED_DIR/NN_slug.ipynb this script therefore caches the *source* notebook with the executed copy's outputs,
execution counts and widget state: a cache entry whose hash matches the source and whose outputs are those of this
run. Copies whose code differs from the source (e.g. papermill injected parameters from BOOK_PARAMS) are not
cached: the build then executes that notebook itself, with its stored defaults, as a hand-made build would.
Prints one line per notebook; exits 1 if a source notebook then still has no match in the cache.
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
from pathlib import Path

import nbformat
from jupyter_cache import get_cache
from jupyter_cache.base import CacheBundleIn


def code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def merged(source: nbformat.NotebookNode, executed: nbformat.NotebookNode) -> nbformat.NotebookNode | None:
    """The source notebook with the executed copy's outputs, or None when their code cells differ."""
    src_cells, exe_cells = code_cells(source), code_cells(executed)
    if len(src_cells) != len(exe_cells) or any(a.source != b.source for a, b in zip(src_cells, exe_cells)):
        return None
    out = copy.deepcopy(source)
    for cell, done in zip(code_cells(out), exe_cells):
        cell.outputs = done.outputs
        cell.execution_count = done.execution_count
    for key in ("widgets", "language_info"):
        if key in executed.metadata:
            out.metadata[key] = executed.metadata[key]
        else:
            out.metadata.pop(key, None)  # no stale widget state from the committed copy
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("executed_dir", type=Path)
    parser.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    parser.add_argument("--cache", default="_build/.jupyter_cache")
    parser.add_argument("--times", type=Path, default=Path("_build/notebook_times.tsv"))
    args = parser.parse_args()

    seconds = {}
    if args.times.exists():
        with args.times.open() as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                seconds[row["notebook"]] = float(row["seconds"])
    cache = get_cache(args.cache)
    missing = 0
    for executed_path in sorted(args.executed_dir.glob("[0-9][0-9]_*.ipynb")):
        source_path = args.notebooks / executed_path.name
        if not source_path.exists():
            continue
        source = nbformat.read(source_path, as_version=4)
        nb = merged(source, nbformat.read(executed_path, as_version=4))
        if nb is None:
            print(f"cache: {source_path} NOT cached (code differs from the executed copy: parameters injected?)")
        else:
            data = {"execution_seconds": seconds.get(str(source_path))} if str(source_path) in seconds else {}
            cache.cache_notebook_bundle(
                CacheBundleIn(nb, str(source_path.resolve()), data=data), check_validity=False, overwrite=True
            )
        try:
            record = cache.match_cache_notebook(source)
            print(f"cache: {source_path} -> cache record {record.pk}")
        except KeyError:
            print(f"cache: {source_path} has no match in the cache; the build will execute it")
            missing += nb is not None  # a merged copy that does not match is a bug here, not an override
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
