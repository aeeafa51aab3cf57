"""The correlation layer (eq. 1-2), the 4-level correlation pyramid and the diamond search module (eq. 3).

Two ways to compute the search map, equal to float precision:

* the paper's (``cost_volume`` -> ``correlation_pyramid`` -> ``search_pyramid``): builds the all-pairs
  (B, H, W, H, W) volume, clear but O((HW)^2) in memory;
* ``search_features``: never builds it. Average pooling over the fixed axes and bilinear sampling are linear,
  so each pyramid value is <query(p), bilinear sample of avg-pooled target>: O(HW * K * D) memory.

The query features live on the field's grid (the fixed image's), the target features are searched (the moving
image's): the same names in every function and lookup here.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import torch

from ._checks import check_flow, check_image, check_same_spatial
from ._nd import nd
from .sampling import _sample_around, identity_grid, sample_points
from .transform import warp


def cost_volume(query: torch.Tensor, target: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """All-pairs correlation (B, *S, *S) of two feature maps (B, D, *S): C[p, q] = <query(p), target(q)> (eq. 1).

    ``query`` holds the features on the field's grid (the fixed image's, h(F)) and ``target`` those searched (the
    moving image's, h(M)), as the lookups name them; the paper writes eq. 1 with h(M) first (see
    :class:`~searchmorph_lite.model.SearchMorph`). ``normalize=True`` divides by sqrt(D), as RAFT does, so that
    values do not grow with the feature width. The paper does not scale; we expose the choice and SearchMorph's
    config decides.
    """
    check_image(query, "query")
    check_image(target, "target")
    check_same_spatial(query, target, "query", "target")
    if query.shape[1] != target.shape[1]:
        raise ValueError(f"channel counts differ: {query.shape[1]} vs {target.shape[1]}")
    b, d = query.shape[:2]
    spatial = query.shape[2:]
    vol = torch.einsum("bdm,bdn->bmn", query.flatten(2), target.flatten(2))
    if normalize:
        vol.div_(math.sqrt(d))  # in place: never two full (HW)^2 volumes at once (einsum keeps no output)
    return vol.reshape(b, *spatial, *spatial)


def _pool(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Average of x (N, C, *S) over non-overlapping factor**ndim blocks, trailing remainders dropped."""
    if factor == 1:
        return x
    return nd(x.ndim - 2).avg_pool(x, kernel_size=factor, stride=factor)


def correlation_pyramid(volume: torch.Tensor, levels: int = 4) -> list[torch.Tensor]:
    """List of ``levels`` volumes (B, *S, *S / 2^l): level l averages the fixed axes over 2^l-wide blocks.

    Level 0 is the volume itself. Sizes that do not divide drop the trailing remainder (floor), as pooling does.
    """
    if not isinstance(volume, torch.Tensor) or volume.ndim not in (5, 7):
        shape = tuple(volume.shape) if isinstance(volume, torch.Tensor) else type(volume).__name__
        raise ValueError(f"volume must have shape (B, H, W, H, W) or (B, D, H, W, D, H, W), got {shape}")
    ndim = (volume.ndim - 1) // 2
    if volume.shape[1 : 1 + ndim] != volume.shape[1 + ndim :]:
        raise ValueError(f"volume's moving and fixed axes differ: {tuple(volume.shape)}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    spatial = volume.shape[1 + ndim :]
    if min(spatial) < 2 ** (levels - 1):
        raise ValueError(f"{levels} levels need fixed axes of at least {2 ** (levels - 1)}, got {tuple(spatial)}")
    b = volume.shape[0]
    moving = volume.shape[1 : 1 + ndim]
    flat = volume.reshape(b * math.prod(moving), 1, *spatial)
    pyramid = []
    for level in range(levels):
        pooled = _pool(flat, 2**level)
        pyramid.append(pooled.reshape(b, *moving, *pooled.shape[2:]))
    return pyramid


def all_pairs_bytes(features: tuple[int, ...], levels: int = 4, element_size: int = 4, batch: int = 1) -> int:
    """Bytes (an int) of the all-pairs volume (B, *S, *S) over a feature grid S plus its pyramid levels 1..L-1
    (eq. 1-2), ``element_size`` bytes per value: what ``correlation_pyramid(cost_volume(...))`` holds.

    Level 0 is the volume itself (a view), and level l has floor(S / 2^l) fixed positions per axis, so the total is
    element_size * B * prod(S) * sum_l prod(S >> l). The on-the-fly search never builds it (chapters 7, 14, 16).
    """
    n = math.prod(features)
    pooled = sum(math.prod(s >> level for s in features) for level in range(levels))
    return element_size * batch * n * pooled


@lru_cache(maxsize=32)
def _diamond_offsets(radius: int, ndim: int) -> tuple[tuple[int, ...], ...]:
    rng = range(-radius, radius + 1)
    return tuple(o for o in itertools.product(rng, repeat=ndim) if sum(abs(v) for v in o) <= radius)


def diamond_offsets(radius: int, ndim: int = 2) -> torch.Tensor:
    """Integer offsets (K, ndim) with L1 norm <= radius (eq. 3), K = 2r^2 + 2r + 1 in 2D.

    Column k is the offset along spatial axis k (rows first), in lexicographic order; ndim=3 gives the octahedron.
    """
    if int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius!r}")
    if ndim not in (1, 2, 3):
        raise ValueError(f"ndim must be 1, 2 or 3, got {ndim}")
    return torch.tensor(_diamond_offsets(int(radius), ndim), dtype=torch.long)


def _search_positions(flow: torch.Tensor, radius: int, level: int) -> torch.Tensor:
    """Positions (B, K, *S, ndim) on level ``level``: (p + flow(p)) / 2^level + each diamond offset."""
    ndim = flow.ndim - 2
    grid = identity_grid(tuple(flow.shape[2:]), device=flow.device, dtype=flow.dtype)
    centre = ((grid + flow) / 2**level).movedim(1, -1)  # (B, *S, ndim)
    offsets = diamond_offsets(radius, ndim).to(device=flow.device, dtype=flow.dtype)
    view = (1, offsets.shape[0]) + (1,) * ndim + (ndim,)
    return centre.unsqueeze(1) + offsets.reshape(view)


def search_pyramid(pyramid: list[torch.Tensor], flow: torch.Tensor, radius: int) -> torch.Tensor:
    """Search map (B, L*K, *S): pyramid values around each warped pixel (eq. 3), level-major.

    For moving-grid pixel p and level l, level l of p's correlation map is sampled bilinearly at
    (p + flow(p)) / 2^l + d for every diamond offset d (``diamond_offsets`` order), zero outside the map.
    Like RAFT, x / 2^l puts pooled block k at its first fine pixel, not its centre: level l reads
    (2^l - 1) / 2 fine pixels off, the same shift everywhere, which the network absorbs in training.
    """
    if not isinstance(pyramid, (list, tuple)) or len(pyramid) == 0:
        raise ValueError("pyramid must be a non-empty list of correlation volumes")
    check_flow(flow)
    ndim = flow.ndim - 2
    b = flow.shape[0]
    spatial = tuple(flow.shape[2:])
    for level, vol in enumerate(pyramid):
        if vol.ndim != 1 + 2 * ndim or vol.shape[0] != b or tuple(vol.shape[1 : 1 + ndim]) != spatial:
            raise ValueError(
                f"pyramid level {level} has shape {tuple(vol.shape)}, expected (B={b}, {spatial}, ...) "
                f"to match flow {tuple(flow.shape)}"
            )
    maps = []
    npix = math.prod(spatial)
    for level, vol in enumerate(pyramid):
        pos = _search_positions(flow, radius, level)  # (B, K, *S, ndim)
        k = pos.shape[1]
        # one correlation map per moving pixel: N = B * npix maps, each sampled at its K positions
        coords = pos.movedim(1, 1 + ndim).reshape(b * npix, k, ndim)
        values = vol.reshape(b * npix, 1, *vol.shape[1 + ndim :])
        sampled = sample_points(values, coords.to(vol.dtype)).reshape(b, *spatial, k)
        maps.append(sampled.movedim(-1, 1))
    return torch.cat(maps, dim=1)


def search_features(
    query: torch.Tensor,
    target: torch.Tensor,
    flow: torch.Tensor,
    radius: int,
    levels: int = 4,
    normalize: bool = False,
) -> torch.Tensor:
    """Search map (B, levels*K, *S) equal to ``search_pyramid(correlation_pyramid(cost_volume(...)))``.

    Never builds the all-pairs volume: level l's value at (p, q) is <query(p), avgpool_{2^l}(target)(q)>,
    and bilinear sampling at q commutes with the inner product, so we sample the pooled target features.
    """
    check_image(query, "query")
    check_image(target, "target")
    check_same_spatial(query, target, "query", "target")
    check_flow(flow)
    check_same_spatial(query, flow, "query", "flow")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if min(target.shape[2:]) < 2 ** (levels - 1):
        raise ValueError(f"{levels} levels need feature maps of at least {2 ** (levels - 1)} pixels per axis")
    scale = 1 / math.sqrt(query.shape[1]) if normalize else 1.0
    return _search_pooled(query, pool_levels(target, levels), flow, radius, scale)


def pool_levels(features: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Features (B, D, *S / 2^l) for l < ``levels``: average-pooled over 2^l-wide blocks, level 0 unchanged."""
    return [_pool(features, 2**level) for level in range(levels)]


def _search_pooled(
    query: torch.Tensor, pooled: list[torch.Tensor], flow: torch.Tensor, radius: int, scale: float
) -> torch.Tensor:
    """Search map (B, L*K, *S): <query(p), pooled[l] sampled at (p + flow(p)) / 2^l + d> * scale, level-major."""
    ndim = flow.ndim - 2
    grid = identity_grid(tuple(flow.shape[2:]), device=flow.device, dtype=flow.dtype)
    offsets = diamond_offsets(radius, ndim).to(device=flow.device, dtype=flow.dtype)
    query = query.unsqueeze(2)  # (B, D, 1, *S), broadcast over the K offsets
    maps = []
    for level, target in enumerate(pooled):
        centre = ((grid + flow) / 2**level).movedim(1, -1)  # (B, *S, ndim), as _search_positions
        sampled = _sample_around(target, centre, offsets)  # (B, D, K, *S)
        # D is small (4): a broadcast product summed over D beats einsum's bmm, which permutes both operands
        # into (B * prod S, K, D) copies forward and backward.
        maps.append((sampled * query).sum(1) * scale)
    return torch.cat(maps, dim=1)


# Correlation lookups (RAFT's CorrBlock / AlternateCorrBlock): built once per image pair from the query features
# (on the field's grid: the fixed image's) and the target features (searched: the moving image's), then called
# with the current field in every iteration. All three share one signature, so the model picks one in __init__.


class AllPairsLookup:
    """All-pairs lookup: the volume (eq. 1-2) and its pyramid built once; ``lookup(flow)`` -> (B, L*K, *S) (eq. 3).

    Memory O((prod S)^2): the paper's formulation, for teaching and for checking the on-the-fly lookup.
    """

    def __init__(self, query: torch.Tensor, target: torch.Tensor, radius: int, levels: int, normalize: bool) -> None:
        self.pyramid = correlation_pyramid(cost_volume(query, target, normalize=normalize), levels)
        self.radius = radius

    @staticmethod
    def channels(feature_dim: int, radius: int, levels: int, ndim: int) -> int:
        """Channels of the search map: levels * K diamond offsets."""
        return levels * diamond_offsets(radius, ndim).shape[0]

    def __call__(self, flow: torch.Tensor) -> torch.Tensor:
        return search_pyramid(self.pyramid, flow, self.radius)


class OnTheFlyLookup:
    """On-the-fly lookup: the same search map as :class:`AllPairsLookup` from pooled target features (B, L*K, *S).

    The target's pyramid of pooled features is built once; each call samples it at the diamond around
    p + flow(p) and takes inner products with the query (:func:`search_features`), memory O(prod S * K * D).
    """

    channels = AllPairsLookup.channels

    def __init__(self, query: torch.Tensor, target: torch.Tensor, radius: int, levels: int, normalize: bool) -> None:
        check_same_spatial(query, target, "query", "target")
        self.query = query
        self.pooled = pool_levels(target, levels)
        self.radius = radius
        self.scale = 1 / math.sqrt(query.shape[1]) if normalize else 1.0

    def __call__(self, flow: torch.Tensor) -> torch.Tensor:
        return _search_pooled(self.query, self.pooled, flow, self.radius, self.scale)


class WarpedFeaturesLookup:
    """Table III's "w/o search module": no correlation, the query and the warped target (B, 2D, *S) side by side."""

    def __init__(self, query: torch.Tensor, target: torch.Tensor, radius: int, levels: int, normalize: bool) -> None:
        self.query, self.target = query, target

    @staticmethod
    def channels(feature_dim: int, radius: int, levels: int, ndim: int) -> int:
        """Channels: both feature maps."""
        return 2 * feature_dim

    def __call__(self, flow: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.query, warp(self.target, flow)], dim=1)


LOOKUPS = {"all-pairs": AllPairsLookup, "on-the-fly": OnTheFlyLookup, "warped-features": WarpedFeaturesLookup}
