"""Execute one notebook with papermill, as `papermill IN OUT -k python3 --cwd DIR ...` does, with the kernel-poll fix.

Usage: python .ci/run_notebook.py IN.ipynb OUT.ipynb --cwd notebooks [--timeout 600] [-p name value ...]

The fix (book/_ext/book_fixes.py, part 2) keeps a lost wake-up of jupyter_client's asyncio poll from stalling a
finished cell until its timeout. Exits 1 when a cell fails (papermill's PapermillExecutionError), as the CLI does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
import book_fixes  # noqa: E402


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
    args = parser.parse_args()

    import papermill
    import yaml

    book_fixes.apply()
    params = {name: yaml.safe_load(value) for name, value in args.parameter}
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
