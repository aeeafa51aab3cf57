"""Memory, measured in one place: the all-pairs correlation volume (eq. 1-2) by formula against the lean search's
measured peak (eq. 3), a forward pass's peak, and a process's peak for the suites that time in subprocesses.

For features at 1/``stride`` resolution with N = prod(S / stride) positions, the all-pairs volume holds N^2 values
and its pyramid levels 1..L-1 pool the searched axes by 2^l, adding N * prod(S / stride / 2^l) each:

    bytes = 4 * N * sum_{l=0}^{L-1} prod(S / stride / 2^l)  ~=  4 * N^2 * (1 + 2^-ndim + 4^-ndim + ...)

(float32). The lean path's peak is measured, not computed: ``search_features`` runs on random features of the
model's real shape under :class:`LiveTensorBytes`, which counts the bytes of tensor storages alive at once, on any
device (CPU RSS would also count the allocator's caches; ``torch.cuda`` is not needed). A process's peak (the
inference suite's methods and ``correlation.py``'s two paths, each in its own process) is the rise of its peak RSS
on a CPU, ``torch.cuda.max_memory_allocated`` on a GPU.

The ``memory`` suite (``python -m benchmarks --suite memory``, or ``python benchmarks/memory3d.py``): 3D volumes
(stride 2, the paper's) up to 160 x 192 x 160 (about 1.5 TB all-pairs), and 2D 192 x 160 at stride 1 and 2.
Writes benchmarks/memory3d.json and benchmarks/memory3d.md. Smoke run: ``--sizes 32x32x32 --out /tmp/m``.
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import HERE, write_results  # noqa: E402
from searchmorph_lite.correlation import all_pairs_bytes  # noqa: E402  (the formula, as the chapters use it)

DEFAULT_SIZES = ("64x64x64", "96x96x96", "128x128x128", "160x192x160", "192x160@1", "192x160@2")
MAX_REAL_VOLUME_BYTES = 512 * 2**20  # build the all-pairs volume for real (to check the formula) below this
MB = 2**20


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages alive at once among those created inside the ``with`` block.

    Every aten op's outputs are seen; a storage counts from its first output until no tensor viewing it is alive.
    Views of tensors made outside the block (the inputs) are not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._nbytes: dict[int, int] = {}
        self._refs: dict[int, list[weakref.ref]] = {}

    def _release(self, key: int) -> None:
        if key in self._refs and not any(r() is not None for r in self._refs[key]):
            self.live -= self._nbytes.pop(key)
            del self._refs[key]

    def __torch_dispatch__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage()._cdata
            if key not in self._refs:
                if key in inputs:
                    continue  # a view of (or in-place write to) a tensor from outside
                self._nbytes[key] = t.untyped_storage().nbytes()
                self._refs[key] = []
                self.live += self._nbytes[key]
                self.peak = max(self.peak, self.live)
            self._refs[key].append(weakref.ref(t, lambda _, key=key: self._release(key)))
        return out


# ---------------------------------------------------------------------------------------------------------------
# Formulas, from the tensors' shapes


def search_map_bytes(features: tuple[int, ...], levels: int, k: int, element_size: int = 4) -> int:
    """Bytes of the search map (1, L*K, *features) that both paths hand to the iterator (eq. 3)."""
    return element_size * levels * k * math.prod(features)


def distinct_storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes actually held by ``tensors``, counting storages shared by views once."""
    return sum({t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}.values())


def check_bytes(what: str, measured: int, formula: int, size: tuple[int, ...]) -> None:
    """Raise RuntimeError when a shape formula disagrees with the real tensors."""
    if measured != formula:
        size_text = "x".join(map(str, size))
        raise RuntimeError(f"{what} at {size_text}: formula says {formula} bytes, real tensors hold {measured}")


# ---------------------------------------------------------------------------------------------------------------
# Measurements: tensors alive during one computation, and a process's peak


def search_peak_bytes(
    h_f: torch.Tensor, h_m: torch.Tensor, radius: int, levels: int, normalize: bool
) -> tuple[int, int]:
    """(peak bytes alive while ``search_features`` builds one search map from features (1, D, *S) with a zero
    field, the bytes of the search map it returns)."""
    import searchmorph_lite as sm

    flow = torch.zeros(1, h_f.ndim - 2, *h_f.shape[2:], device=h_f.device)
    with torch.no_grad():
        meter = LiveTensorBytes()
        with meter:
            out = sm.search_features(h_f, h_m, flow, radius, levels, normalize=normalize)
        nbytes = out.numel() * out.element_size()
        del out
    return meter.peak, nbytes


def random_features(shape: tuple[int, ...], device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded random feature maps of ``shape`` (1, D, *S): h(F), h(M)."""
    gen = torch.Generator(device=device).manual_seed(0)
    return (torch.randn(shape, generator=gen, device=device), torch.randn(shape, generator=gen, device=device))


def peak_forward_bytes(model, shape: tuple[int, ...]) -> int:
    """Peak bytes of tensors alive during one no-grad forward pass on a (1, 1, *shape) pair."""
    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        meter = LiveTensorBytes()
        with meter:
            out = model(x, x.flip(-1))
        del out
    return meter.peak


def max_rss_bytes() -> int:
    """Peak resident set size of this process so far, in bytes (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def memory_baseline(device: torch.device) -> int:
    """Reference for :func:`peak_memory_mb`: peak RSS now (CPU), or 0 after resetting CUDA's peak counter."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return 0
    return max_rss_bytes()


def peak_memory_mb(device: torch.device, baseline: int) -> float:
    """MB: CUDA's max_memory_allocated since the baseline, or the rise of peak RSS over it (CPU and others)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    return (max_rss_bytes() - baseline) / MB


# ---------------------------------------------------------------------------------------------------------------
# Table rows: the inference suite's (a model's real features, formulas checked) and this suite's (any size)


def memory_row(model, size: tuple[int, int], device: torch.device) -> dict:
    """All-pairs vs lean correlation bytes for one image size (B=1), from the model's real feature maps' shape;
    the formulas are checked against real tensors where the volume is under MAX_REAL_VOLUME_BYTES."""
    import searchmorph_lite as sm

    cfg = model.config
    levels, k = model.levels, sm.diamond_offsets(cfg.radius).shape[0]
    image = torch.zeros(1, cfg.in_channels, *size, device=device)
    with torch.no_grad():
        _, h_f, _ = model.encoder(image, image)  # h(F): (1, D, h, w), the encoder's output resolution
    h_f, h_m = random_features(tuple(h_f.shape), device)
    _, d, h, w = h_f.shape
    itemsize = h_f.element_size()
    row: dict[str, Any] = {
        "image": list(size),
        "features": [d, h, w],
        "levels": levels,
        "search_points": k,
        "all_pairs_bytes": all_pairs_bytes((h, w), levels, itemsize),
        "search_map_bytes": search_map_bytes((h, w), levels, k, itemsize),
        "all_pairs_checked": False,
    }
    row["lean_peak_bytes"], held = search_peak_bytes(h_f, h_m, cfg.radius, levels, cfg.normalize_correlation)
    check_bytes("search map", held, row["search_map_bytes"], size)
    if itemsize * (h * w) ** 2 < MAX_REAL_VOLUME_BYTES:
        with torch.no_grad():
            meter = LiveTensorBytes()
            with meter:
                volume = sm.cost_volume(h_f, h_m, normalize=cfg.normalize_correlation)
                pyramid = sm.correlation_pyramid(volume, levels)
            check_bytes("volume + pyramid", distinct_storage_bytes([volume, *pyramid]), row["all_pairs_bytes"], size)
        row["all_pairs_checked"] = True
        row["all_pairs_peak_bytes"] = meter.peak  # includes transients such as the un-normalized volume
        del volume, pyramid
    row["ratio"] = row["all_pairs_bytes"] / row["lean_peak_bytes"]
    row["ratio_search_map"] = row["all_pairs_bytes"] / row["search_map_bytes"]
    return row


def parse_size(text: str) -> tuple[tuple[int, ...], int]:
    """((spatial sizes), stride) from "DxHxW" or "HxW", with an optional "@stride" (default 2)."""
    shape, _, stride = text.partition("@")
    return tuple(int(n) for n in shape.split("x")), int(stride or 2)


def row(size: tuple[int, ...], stride: int, measure: bool) -> dict:
    """One table row: image size, stride, feature grid, all-pairs bytes (formula), lean peak bytes (measured)."""
    import searchmorph_lite as sm

    config = sm.SearchMorphConfig(ndim=len(size), feature_stride=stride)
    features = tuple(s // stride for s in size)
    out = {"image": list(size), "stride": stride, "features": list(features), "levels": config.levels,
           "all_pairs_bytes": all_pairs_bytes(features, config.levels)}  # fmt: skip
    out["lean_peak_bytes"] = None
    if measure:
        h_f, h_m = random_features((1, config.feature_dim, *features))
        out["lean_peak_bytes"] = search_peak_bytes(h_f, h_m, config.radius, config.levels, normalize=True)[0]
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
    parser.add_argument("--out", default=str(HERE / "memory3d"))
    parser.add_argument("--no-measure", action="store_true", help="formulas only (no search is run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [row(*parse_size(s), measure=not args.no_measure) for s in args.sizes]
    write_results(args.out, {"rows": rows, "torch": torch.__version__}, markdown(rows))
    print(markdown(rows))
    return rows


if __name__ == "__main__":
    main()
