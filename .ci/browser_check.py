"""Open every page of the built book in headless Chromium and check that it renders: the last step of .ci/book.sh.

Usage: python .ci/browser_check.py [_build/html] [--toc book/_toc.yml] [--executed _build/executed]
                                   [--screenshots _build/screenshots]

Serves the HTML folder on 127.0.0.1 (a thread of this process) and drives Debian's chromium through
/usr/bin/chromedriver (selenium). Chromium resolves no host but 127.0.0.1, so the check is offline by
construction and any request to another host is recorded, not sent. For each page of the table of contents:

- it loads, has a title and an <h1>;
- every <img> in the article has loaded (naturalWidth > 0), except images on other hosts (badges), which are
  listed as "external, not checked"; a chapter whose notebook has image outputs shows at least one of them;
- no cell error output: no traceback block, no "Traceback (most recent call last)" in an output, no red error text;
- widgets: when the notebook saved widget views, html-manager rendered them (.jupyter-widgets elements, no
  "Error displaying widget"), from the local copies of require.js and embed-amd.js;
- equations: when the page has math, MathJax (local copy) typeset it (mjx-container elements);
- no script, style sheet, font or data request left 127.0.0.1, the local server answered no request with an
  error (favicon aside), and the browser console logged no error (other than the skipped external images).

Saves a full-page screenshot per page in --screenshots, prints one line per page, exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import nbformat
import yaml
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LOCAL_HOSTS = {"127.0.0.1"}
IMAGE_MIMES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
# Console messages that are not failures: pydata-sphinx-theme logs this with console.error on the first visit of a
# fresh browser profile (no colour mode stored yet), then resets the mode to "auto" itself.
KNOWN_CONSOLE_NOISE = ("Got invalid theme mode",)
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static file handler that records (path, status) of every request instead of logging to stderr."""

    served: list[tuple[str, int]] = []
    lock = threading.Lock()

    def log_request(self, code="-", size="-"):
        with self.lock:
            self.served.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


def toc_files(toc_path: Path) -> list[str]:
    """Every file of a jb-book table of contents, root first, without suffix."""
    toc = yaml.safe_load(toc_path.read_text())
    files = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                files.append(entry["file"])
            walk(entry.get("sections"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return files


def notebook_expectations(path: Path) -> dict:
    """What the page of this notebook must show: number of image outputs and of widget views."""
    if not path.exists():
        return {"images": 0, "widget_views": 0, "found": False}
    nb = nbformat.read(path, as_version=4)
    images = views = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = out.get("data", {})
            images += any(m in data for m in IMAGE_MIMES)
            views += WIDGET_VIEW_MIME in data
    has_state = bool(nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state"))
    return {"images": images, "widget_views": views if has_state else 0, "found": True}


def make_driver(profile: str) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        # Offline by construction: every host but 127.0.0.1 fails to resolve at once (no hanging on a CDN).
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(90)
    driver.set_script_timeout(60)
    return driver


def wait_for(driver, script: str, timeout: float, interval: float = 0.25):
    """Poll a JS expression until it is truthy or timeout; returns its last value."""
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value or time.monotonic() > end:
            return value
        time.sleep(interval)


PAGE_STATE_JS = r"""
const art = document.querySelector('article') || document.querySelector('main') || document.body;
const imgs = Array.from(art.querySelectorAll('img'));
const local = (src) => { try { const u = new URL(src, location.href);
                                return ['data:', 'blob:'].includes(u.protocol) || u.hostname === '127.0.0.1'; }
                         catch (e) { return false; } };
const outputs = Array.from(art.querySelectorAll('.cell_output, .output'));
const outText = outputs.map(o => o.innerText || '').join('\n');
const redErrors = Array.from(art.querySelectorAll('.cell_output .ansi-red-fg, .cell_output .ansi-red-intense-fg'))
  .filter(e => /(Error|Exception|Traceback)/.test((e.closest('.output') || e).innerText || ''));
return {
  title: document.title,
  h1: (art.querySelector('h1') || {innerText: ''}).innerText.trim(),
  imgs_local: imgs.filter(i => local(i.currentSrc || i.src)).map(i => ({src: i.getAttribute('src'),
      ok: i.complete && i.naturalWidth > 0, output: !!i.closest('.cell_output')})),
  imgs_external: imgs.filter(i => !local(i.currentSrc || i.src)).map(i => i.getAttribute('src')),
  tracebacks: art.querySelectorAll('.output.traceback, .output.error, .traceback').length,
  traceback_text: /Traceback \(most recent call last\)/.test(outText),
  red_errors: redErrors.length,
  widget_scripts: document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length,
  widgets: art.querySelectorAll('.jupyter-widgets').length,
  widget_errors: /Error displaying widget|Error rendering/.test(art.innerText),
  math: art.querySelectorAll('.math').length,
  mathjax: art.querySelectorAll('mjx-container').length,
  scripts: Array.from(document.scripts).map(s => s.src).filter(s => s),
};
"""


def full_page_screenshot(driver, path: Path, width: int = 1280, max_height: int = 16000) -> None:
    """Screenshot of the whole page: the window is made as tall as the document, then restored."""
    height = driver.execute_script("return Math.ceil(document.documentElement.scrollHeight)")
    driver.set_window_size(width, min(max(height, 1000), max_height))
    time.sleep(0.3)  # let the layout settle at the new size
    driver.save_screenshot(str(path))
    driver.set_window_size(width, 1000)


def external_requests(perf_log: list[dict]) -> list[tuple[str, str]]:
    """(resource type, url) of every request the page made to a host other than 127.0.0.1."""
    found = []
    for entry in perf_log:
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") != "Network.requestWillBeSent":
            continue
        url = msg["params"]["request"]["url"]
        parsed = urlparse(url)
        if parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in LOCAL_HOSTS:
            found.append((msg["params"].get("type", "Other"), url))
    return found


def check_page(driver, base: str, html_root: Path, doc: str, executed: Path | None, shots: Path) -> list[str]:
    """Load one page, print what it saw, return the list of problems."""
    problems: list[str] = []
    page = html_root / f"{doc}.html"
    if not page.exists():
        print(f"FAIL {doc}: {page} was not built")
        return [f"{doc}: not built"]
    expect = {"images": 0, "widget_views": 0, "found": False}
    if doc.startswith("notebooks/"):
        name = Path(doc).name + ".ipynb"
        # The stored notebook and this run's papermill copy: a figure either of them has must be on the page.
        found = [notebook_expectations(c) for c in ([executed / name] if executed else []) + [Path(doc + ".ipynb")]]
        found = [f for f in found if f["found"]]
        if found:
            expect = {k: max(f[k] for f in found) for k in ("images", "widget_views")} | {"found": True}

    driver.get_log("performance")  # drop entries of earlier pages
    driver.get_log("browser")
    with QuietHandler.lock:
        QuietHandler.served.clear()
    t0 = time.monotonic()
    driver.get(f"{base}/{doc}.html")
    wait_for(driver, "return document.readyState === 'complete'", 60)
    # Let images decode, MathJax typeset and html-manager render (it loads 3.6 MB of AMD modules first).
    wait_for(driver, "return Array.from(document.images).every(i => i.complete)", 30)
    if expect["widget_views"]:
        wait_for(driver, "return document.querySelectorAll('article .jupyter-widgets').length > 0", 45)
    if driver.execute_script("return document.querySelectorAll('article .math').length"):
        wait_for(driver, "return document.querySelectorAll('article mjx-container').length > 0", 45)
    time.sleep(0.5)
    state = driver.execute_script(PAGE_STATE_JS)
    elapsed = time.monotonic() - t0

    shots.mkdir(parents=True, exist_ok=True)
    shot = shots / (doc.replace("/", "__") + ".png")
    full_page_screenshot(driver, shot)

    if not state["title"].strip() or not state["h1"]:
        problems.append(f"no title/h1 (title={state['title']!r}, h1={state['h1']!r})")
    broken = [i["src"] for i in state["imgs_local"] if not i["ok"]]
    if broken:
        problems.append(f"{len(broken)} image(s) not loaded: {broken[:3]}")
    figures = sum(1 for i in state["imgs_local"] if i["ok"] and i["output"])
    if expect["images"] and figures == 0:
        problems.append(f"the notebook has {expect['images']} image output(s) but the page shows no figure")
    if state["tracebacks"] or state["traceback_text"] or state["red_errors"]:
        problems.append(
            f"cell error output (traceback blocks {state['tracebacks']}, traceback text {state['traceback_text']},"
            f" red error text {state['red_errors']})"
        )
    if expect["widget_views"] and (state["widgets"] == 0 or state["widget_errors"]):
        problems.append(
            f"widgets not rendered ({expect['widget_views']} view(s) saved, {state['widgets']} rendered,"
            f" error text {state['widget_errors']})"
        )
    if state["math"] and not state["mathjax"]:
        problems.append(f"{state['math']} equation(s) not typeset by MathJax")

    ext = external_requests(driver.get_log("performance"))
    ext_images = sorted({u for t, u in ext if t == "Image"})
    ext_other = sorted({f"{t} {u}" for t, u in ext if t != "Image"})
    if ext_other:
        problems.append(f"requests to other hosts: {ext_other[:5]}")
    with QuietHandler.lock:
        local_errors = sorted({f"{s} {p}" for p, s in QuietHandler.served if s >= 400 and "favicon" not in p})
    if local_errors:
        problems.append(f"local server errors: {local_errors[:5]}")
    console = [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE"
        and "favicon" not in e["message"]
        and not any(noise in e["message"] for noise in KNOWN_CONSOLE_NOISE)
        and not any(u.split("?")[0] in e["message"] for u in ext_images)
    ]
    if console:
        problems.append(f"console errors: {console[:3]}")

    widget_js = [s for s in state["scripts"] if "embed-amd" in s or "require" in s]
    line = (
        f"{'PASS' if not problems else 'FAIL'} {doc}.html [{elapsed:.1f} s] title={state['h1'][:48]!r}"
        f" | figures {figures} (notebook {expect['images']}) images {len(state['imgs_local'])}"
        f" | widgets {state['widgets']} rendered (saved views {expect['widget_views']}"
        f"{', JS ' + ' + '.join(Path(urlparse(s).path).name for s in widget_js) if widget_js else ''})"
        f" | math {state['mathjax']}/{state['math']} typeset | errors {state['tracebacks'] + state['red_errors']}"
        f" | external images not checked {len(ext_images)} | other-host requests {len(ext_other)}"
        f" | screenshot {shot}"
    )
    print(line)
    for p in problems:
        print(f"     problem: {p}")
    return [f"{doc}: {p}" for p in problems]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", default="_build/html", type=Path)
    parser.add_argument("--toc", default="book/_toc.yml", type=Path)
    parser.add_argument(
        "--executed",
        default="_build/executed",
        type=Path,
        help="papermill outputs, to know which pages must show figures and widgets",
    )
    parser.add_argument("--screenshots", default="_build/screenshots", type=Path)
    args = parser.parse_args()
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).exists():
            print(f"{exe} not found: apt-get update && apt-get install -y chromium chromium-driver")
            return 1
    html_root = args.html.resolve()
    if not (html_root / "index.html").exists():
        print(f"{html_root}/index.html not found: build the book first")
        return 1

    handler = functools.partial(QuietHandler, directory=str(html_root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"serving {html_root} at {base}")

    problems: list[str] = []
    docs = toc_files(args.toc)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        driver = make_driver(profile)
        try:
            print("browser:", driver.capabilities.get("browserName"), driver.capabilities.get("browserVersion"))
            for doc in docs:
                try:
                    problems += check_page(driver, base, html_root, doc, args.executed, args.screenshots)
                except Exception as exc:  # a page that crashes the check is a failure, the others still run
                    print(f"FAIL {doc}.html: {type(exc).__name__}: {exc}")
                    problems.append(f"{doc}: {type(exc).__name__}")
        finally:
            driver.quit()
            server.shutdown()
    print(f"browser check: {len(docs) - len({p.split(':')[0] for p in problems})} of {len(docs)} pages passed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
