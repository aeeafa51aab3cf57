"""Memory table: the all-pairs correlation volume (eq. 1-2) versus the lean search's peak (eq. 3), by volume size.

For features at 1/``stride`` resolution with N = prod(S / stride) positions, the all-pairs volume holds N^2 values
and its pyramid levels 1..L-1 pool the searched axes by 2^l, adding N * prod(S / stride / 2^l) each:

    bytes = 4 * N * sum_{l=0}^{L-1} prod(S / stride / 2^l)  ~=  4 * N^2 * (1 + 2^-ndim + 4^-ndim + ...)

(float32). The lean path's peak is measured, not computed: ``search_features`` runs on random features of the
model's real shape under ``LiveTensorBytes`` (benchmarks/inference.py), which counts the bytes of tensor storages
alive at once, on any device (CPU RSS would also count the allocator's caches; ``torch.cuda`` is not needed).
Rows: 3D volumes (stride 2, the paper's) up to 160 x 192 x 160 (about 1.5 TB all-pairs), and 2D 192 x 160 at
stride 1 and 2. Writes benchmarks/memory3d.json and benchmarks/memory3d.md. Smoke run:
``python benchmarks/memory3d.py --sizes 32x32x32 --out /tmp/m``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import LiveTensorBytes  # noqa: E402  (one measurement approach for both benchmarks)

import searchmorph_lite as sm  # noqa: E402

DEFAULT_SIZES = ("64x64x64", "96x96x96", "128x128x128", "160x192x160", "192x160@1", "192x160@2")


def parse_size(text: str) -> tuple[tuple[int, ...], int]:
    """((spatial sizes), stride) from "DxHxW" or "HxW", with an optional "@stride" (default 2)."""
    shape, _, stride = text.partition("@")
    return tuple(int(n) for n in shape.split("x")), int(stride or 2)


def all_pairs_bytes(features: tuple[int, ...], levels: int, element_size: int = 4) -> int:
    """Bytes of the all-pairs volume over ``features`` (the feature grid) plus pyramid levels 1..L-1 (eq. 1-2)."""
    n = math.prod(features)
    return element_size * n * sum(math.prod(s >> level for s in features) for level in range(levels))


def lean_peak_bytes(features: tuple[int, ...], config: sm.SearchMorphConfig) -> int:
    """Measured peak bytes alive while ``search_features`` builds one search map (B=1) on a ``features`` grid."""
    gen = torch.Generator().manual_seed(0)
    h_f = torch.randn(1, config.feature_dim, *features, generator=gen)
    h_m = torch.randn(1, config.feature_dim, *features, generator=gen)
    flow = torch.zeros(1, len(features), *features)
    with torch.no_grad():
        meter = LiveTensorBytes()
        with meter:
            out = sm.search_features(h_f, h_m, flow, config.radius, config.levels, normalize=True)
        del out
    return meter.peak


def row(size: tuple[int, ...], stride: int, measure: bool) -> dict:
    """One table row: image size, stride, feature grid, all-pairs bytes (formula), lean peak bytes (measured)."""
    config = sm.SearchMorphConfig(ndim=len(size), feature_stride=stride)
    features = tuple(s // stride for s in size)
    out = {"image": list(size), "stride": stride, "features": list(features), "levels": config.levels,
           "all_pairs_bytes": all_pairs_bytes(features, config.levels)}  # fmt: skip
    out["lean_peak_bytes"] = lean_peak_bytes(features, config) if measure else None
    if out["lean_peak_bytes"]:
        out["ratio"] = out["all_pairs_bytes"] / out["lean_peak_bytes"]
    return out


def human(n: float | None) -> str:
    """Bytes as B / KB / MB / GB / TB (powers of 1000)."""
    if n is None:
        return "not measured"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return ""


def markdown(rows: list[dict]) -> str:
    """The table as Markdown."""
    lines = ["| image | stride | features | all-pairs (formula) | lean peak (measured) | ratio |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        ratio = f"{r['ratio']:.0f}x" if r.get("ratio") else ""
        lines.append(f"| {'x'.join(map(str, r['image']))} | {r['stride']} | {'x'.join(map(str, r['features']))} | "
                     f"{human(r['all_pairs_bytes'])} | {human(r['lean_peak_bytes'])} | {ratio} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    """Rows written to ``--out``.json and .md (default benchmarks/memory3d)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), help="DxHxW or HxW, optional @stride")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "memory3d"))
    parser.add_argument("--no-measure", action="store_true", help="formulas only (no search is run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [row(*parse_size(s), measure=not args.no_measure) for s in args.sizes]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"rows": rows, "torch": torch.__version__}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(rows))
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
