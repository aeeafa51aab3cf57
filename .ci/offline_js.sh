#!/usr/bin/env bash
# Fetch the third-party JavaScript the book's pages load, from the npm registry, into DEST (default
# _build/offline_js, git-ignored with _build). _config.yml lists DEST in html_static_path, so the build copies it to
# _build/html/_static and the pages load it from there: widgets and equations render offline, no page requests a
# CDN, and no third-party code is committed.
#   - @jupyter-widgets/html-manager: renders saved ipywidgets 8 state (embed-amd.js defines base 6, controls 5,
#     output 6, which is what ipywidgets 8.1 / jupyterlab_widgets 3.0 speak); myst-nb adds it to widget pages.
#   - requirejs: the AMD loader embed-amd.js needs.
#   - mathjax 3: Sphinx's math renderer (mathjax_path), es5 bundle with its fonts.
# Usage: bash .ci/offline_js.sh [DEST]. Re-running is cheap: nothing is fetched when DEST holds these versions.
set -euo pipefail
cd "$(dirname "$0")/.."

HTML_MANAGER_VERSION=1.0.15
REQUIREJS_VERSION=2.3.8
MATHJAX_VERSION=3.2.2
DEST=${1:-_build/offline_js}

want="html-manager=$HTML_MANAGER_VERSION requirejs=$REQUIREJS_VERSION mathjax=$MATHJAX_VERSION glue=3"
if [ -f "$DEST/VERSIONS" ] && [ "$(cat "$DEST/VERSIONS")" = "$want" ]; then
  echo "offline JS: $want already in $DEST"
  exit 0
fi
command -v npm >/dev/null || { echo "offline JS: npm is needed (apt-get install -y npm)" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# npm pack downloads the registry tarball and checks it against the registry's integrity hash.
(cd "$tmp" && npm pack --silent --loglevel=error \
  "@jupyter-widgets/html-manager@$HTML_MANAGER_VERSION" "requirejs@$REQUIREJS_VERSION" "mathjax@$MATHJAX_VERSION" \
  >/dev/null)
for name in html-manager requirejs mathjax; do mkdir -p "$tmp/$name"; done
tar -xzf "$tmp"/jupyter-widgets-html-manager-"$HTML_MANAGER_VERSION".tgz -C "$tmp/html-manager"
tar -xzf "$tmp"/requirejs-"$REQUIREJS_VERSION".tgz -C "$tmp/requirejs"
tar -xzf "$tmp"/mathjax-"$MATHJAX_VERSION".tgz -C "$tmp/mathjax"

rm -rf "$DEST"
mkdir -p "$DEST/html-manager" "$DEST/requirejs" "$DEST/mathjax"
# embed-amd.js and the fonts/images its CSS references (webpack emits them next to it); no source maps.
find "$tmp/html-manager/package/dist" -maxdepth 1 -type f ! -name '*.map' ! -name 'embed.js*' ! -name 'libembed-amd.js' \
  -exec cp {} "$DEST/html-manager/" \;
cp "$tmp/requirejs/package/require.js" "$DEST/requirejs/require.js"
cp -r "$tmp/mathjax/package/es5/." "$DEST/mathjax/"
for lic in html-manager/package/LICENSE requirejs/package/LICENSE mathjax/package/LICENSE; do
  [ -f "$tmp/$lic" ] && cp "$tmp/$lic" "$DEST/${lic%%/*}/LICENSE"
done
# Our own glue for widget pages (myst-nb loads it after require.js, before embed-amd.js; see _config.yml):
# 1. embed-amd.js locates its fonts from require.js's path of its own modules, by default relative to the page
#    (<page dir>/@jupyter-widgets/html-manager/dist/): point that module id at _static/html-manager.
# 2. ipywidgets typesets widget labels with MathJax 2's MathJax.Hub.Queue, which MathJax 3 (the book's) lacks: a
#    TypeError in the console and untypeset labels. Bridge Hub.Queue to MathJax 3's typesetPromise.
cat > "$DEST/requirejs/require-config.js" <<'JS'
(function () {
  var src = document.currentScript.src; // <root>/_static/requirejs/require-config.js?v=...
  var staticRoot = src.slice(0, src.lastIndexOf("/requirejs/"));
  require.config({ paths: { "@jupyter-widgets/html-manager/dist": staticRoot + "/html-manager" } });

  var pending = [];
  function queue(job) { // MathJax 2 style job: ["Typeset", MathJax.Hub, element]
    var element = job && job[2];
    if (!element) return;
    if (window.MathJax && window.MathJax.typesetPromise) window.MathJax.typesetPromise([element]);
    else pending.push(element);
  }
  var config = (window.MathJax = window.MathJax || {}); // still the configuration object: MathJax 3 loads deferred
  config.Hub = { Queue: queue };
  config.startup = config.startup || {};
  var ready = config.startup.ready;
  config.startup.ready = function () {
    if (ready) ready(); else window.MathJax.startup.defaultReady();
    window.MathJax.Hub = { Queue: queue };
    window.MathJax.startup.promise.then(function () {
      if (pending.length) window.MathJax.typesetPromise(pending.splice(0));
    });
  };
})();
JS
test -s "$DEST/html-manager/embed-amd.js" && test -s "$DEST/requirejs/require.js" && test -s "$DEST/mathjax/tex-mml-chtml.js"
echo "$want" > "$DEST/VERSIONS"
echo "offline JS: fetched $want into $DEST ($(du -sh "$DEST" | cut -f1))"
