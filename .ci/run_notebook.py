"""Execute one notebook with papermill, as `papermill IN OUT -k python3 --cwd DIR ...` does, with the kernel-poll fix.

Usage: python .ci/run_notebook.py IN.ipynb OUT.ipynb --cwd notebooks [--timeout 600] [-p name value ...]
       [-f configs/book_gpu.yaml [--section full|short]]

-f reads a parameters file as papermill -f does; a file whose top level has sections of chapters (the book's
configs/book_gpu.yaml) gives IN's chapter (its file stem) of --section (default "full"), nothing when the chapter
is not listed. -p values override the file's.

The fix (book/_ext/book_fixes.py, part 2) keeps a lost wake-up of jupyter_client's asyncio poll from stalling a
finished cell until its timeout. Exits 1 when a cell fails (papermill's PapermillExecutionError), as the CLI does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
import book_fixes  # noqa: E402


def file_parameters(path: str, section: str, chapter: str) -> dict:
    """The parameters a YAML file sets for ``chapter``: a flat mapping as it is, or ``data[section][chapter]``."""
    import yaml

    data = yaml.safe_load(Path(path).read_text()) or {}
    if section not in data:  # a flat papermill parameters file
        return dict(data)
    return dict((data[section] or {}).get(chapter) or {})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--cwd", default=None)
    parser.add_argument("--kernel", "-k", default="python3")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a cell may run")
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="as papermill -p: the value is parsed as YAML (numbers, lists, strings)",
    )
    parser.add_argument("-f", "--parameters-file", default=None, help="YAML parameters (papermill -f)")
    parser.add_argument("--section", default="full", help="the section of a per-chapter parameters file")
    args = parser.parse_args()

    import papermill
    import yaml

    book_fixes.apply()
    params = file_parameters(args.parameters_file, args.section, Path(args.input).stem) if args.parameters_file else {}
    params.update({name: yaml.safe_load(value) for name, value in args.parameter})
    try:
        papermill.execute_notebook(
            args.input,
            args.output,
            parameters=params or None,
            kernel_name=args.kernel,
            cwd=args.cwd,
            progress_bar=False,
            execution_timeout=args.timeout,
        )
    except papermill.PapermillExecutionError as exc:
        print(f"{args.input}: cell {exc.exec_count} raised {exc.ename}: {exc.evalue}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
