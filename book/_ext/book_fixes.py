"""Two work-arounds for upstream bugs, loaded by jupyter-book as a Sphinx extension (_config.yml) and by
.ci/run_notebook.py.

1. Duplicate inline scripts. jupyter-book 1.0.4 (sphinx-thebe, sphinx-togglebutton with Sphinx 7.4) puts some
   inline <script> blocks twice in every page, even in `jupyter-book create`'s template book; the second
   `const THEBE_JS_URL = ...` is a SyntaxError in the browser console. `html-page-context` drops exact duplicates.

2. A lost wake-up in jupyter_client's asyncio channels, which stalls notebook execution.

Symptom (seen here with nbclient 0.11, jupyter_client 8.10, pyzmq 27, ipykernel 7, mostly in cells that display
ipywidgets): a cell has finished, its reply is waiting in the shell socket, but the asyncio poll on that socket is
never woken, so papermill / myst-nb sit idle until the cell timeout; pyzmq's final check at the timeout then finds
the reply and execution carries on as if nothing happened (a 2-second cell reported as taking 300 s).

Fix: AsyncZMQSocketChannel.get_msg polls in slices of at most SLICE seconds. Each slice ends with pyzmq's
non-blocking check, so a missed wake-up costs at most SLICE seconds; timeouts keep their meaning.

`apply()` patches jupyter_client; .ci/run_notebook.py calls it for the CI's papermill runs, and the Sphinx
extension for the notebooks jupyter-book executes itself.
"""

from __future__ import annotations

import time
from queue import Empty

SLICE = 0.5  # seconds


def apply() -> None:
    """Patch jupyter_client's AsyncZMQSocketChannel.get_msg once (idempotent)."""
    from jupyter_client.channels import AsyncZMQSocketChannel

    if getattr(AsyncZMQSocketChannel.get_msg, "_sliced", False):
        return
    original = AsyncZMQSocketChannel.get_msg

    async def get_msg(self, timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = SLICE if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                return await original(self, timeout=min(SLICE, left))
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    get_msg._sliced = True
    AsyncZMQSocketChannel.get_msg = get_msg


def dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    """Drop <script> entries that repeat an earlier one exactly (same file or body, same attributes)."""
    seen, unique = set(), []
    for js in context.get("script_files", []):
        # The repeats differ only in filename None vs "" (inline scripts), so compare filename-or-"" and attributes.
        filename = str(getattr(js, "filename", js) or "")
        key = (filename, tuple(sorted((k, str(v)) for k, v in getattr(js, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(js)
    context["script_files"] = unique


def setup(app):  # Sphinx extension entry point
    apply()
    app.connect("html-page-context", dedupe_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
