"""Brute-force references: loops you can read, used to check the library's vectorized code.

The tests compare every vectorized function against these, and the chapters show them (chapter 05 prints
:func:`cost_volume_naive` and checks the library against it), so the book and the tests prove the same thing.
They are slow on purpose: use them on small tensors only.
"""

from __future__ import annotations

import math

import torch


def bilinear_at(image2d: torch.Tensor, y: float, x: float) -> float:
    """Bilinear value of a 2D tensor at (row y, column x), zero outside the grid (eq. 8 written out)."""
    h, w = image2d.shape
    y0, x0 = math.floor(y), math.floor(x)
    total = 0.0
    for yy in (y0, y0 + 1):  # the 4 neighbours q of (y, x); those outside the grid add 0
        for xx in (x0, x0 + 1):
            if 0 <= yy < h and 0 <= xx < w:  # weight: prod over axes of (1 - |p_d - q_d|)
                total += float(image2d[yy, xx]) * (1 - abs(y - yy)) * (1 - abs(x - xx))
    return total


def warp_naive(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """warp() with loops: out[b, c, i, j] = bilinear(image[b, c]) at (i + flow0, j + flow1)."""
    out = torch.zeros_like(image)
    b, c, h, w = image.shape
    for n in range(b):
        for i in range(h):
            for j in range(w):
                y = i + float(flow[n, 0, i, j])  # p^w = p + phi(p), rows then columns
                x = j + float(flow[n, 1, i, j])
                for ch in range(c):
                    out[n, ch, i, j] = bilinear_at(image[n, ch], y, x)
    return out


def cost_volume_naive(h_m: torch.Tensor, h_f: torch.Tensor) -> torch.Tensor:
    """Cost volume (B, H, W, H, W) of two feature maps (B, D, H, W), with four loops (eq. 1).

    C[b, i, j, k, l] = sum_d h_m[b, d, i, j] * h_f[b, d, k, l]
    """
    b, d, h, w = h_m.shape
    out = torch.zeros(b, h, w, h, w, dtype=h_m.dtype)
    for i in range(h):
        for j in range(w):
            for k in range(h):
                for l in range(w):  # noqa: E741 -- the paper's index name
                    out[:, i, j, k, l] = (h_m[:, :, i, j] * h_f[:, :, k, l]).sum(dim=1)
    return out


def pool_naive(vol: torch.Tensor, level: int) -> torch.Tensor:
    """Average the last two axes of (B, H, W, h, w) over 2^level blocks, dropping remainders, with loops."""
    s = 2**level
    b, h, w, hh, ww = vol.shape
    out = torch.zeros(b, h, w, hh // s, ww // s, dtype=vol.dtype)
    for k in range(hh // s):
        for l in range(ww // s):
            out[..., k, l] = vol[..., k * s : (k + 1) * s, l * s : (l + 1) * s].mean(dim=(-1, -2))
    return out


def diamond_naive(radius: int) -> set[tuple[int, int]]:
    """All integer 2D offsets with |dy| + |dx| <= radius."""
    return {
        (dy, dx)
        for dy in range(-radius, radius + 1)
        for dx in range(-radius, radius + 1)
        if abs(dy) + abs(dx) <= radius
    }


def search_naive(pyramid: list[torch.Tensor], flow: torch.Tensor, offsets: list[tuple[int, int]]) -> torch.Tensor:
    """Eq. 3 with loops: for pixel p, level l, offset d: bilinear sample of level l's map of p at (p+flow)/2^l + d."""
    b, _, h, w = flow.shape
    out = torch.zeros(b, len(pyramid) * len(offsets), h, w, dtype=flow.dtype)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                for lev, vol in enumerate(pyramid):
                    cy = (i + float(flow[n, 0, i, j])) / 2**lev
                    cx = (j + float(flow[n, 1, i, j])) / 2**lev
                    for k, (dy, dx) in enumerate(offsets):
                        out[n, lev * len(offsets) + k, i, j] = bilinear_at(vol[n, i, j], cy + dy, cx + dx)
    return out


def local_ncc_naive(a: torch.Tensor, b: torch.Tensor, window: int, eps: float = 1e-5) -> torch.Tensor:
    """Squared local NCC map of 2D images (B, 1, H, W) by explicit windows (zero padding)."""
    r = window // 2
    ap = torch.nn.functional.pad(a, (r, r, r, r))
    bp = torch.nn.functional.pad(b, (r, r, r, r))
    out = torch.zeros_like(a)
    _, _, h, w = a.shape
    for n in range(a.shape[0]):
        for i in range(h):
            for j in range(w):
                pa = ap[n, 0, i : i + window, j : j + window]
                pb = bp[n, 0, i : i + window, j : j + window]
                da, db = pa - pa.mean(), pb - pb.mean()
                cross = (da * db).sum()
                out[n, 0, i, j] = cross * cross / ((da * da).sum() * (db * db).sum() + eps)
    return out


def jacobian_naive(flow: torch.Tensor) -> torch.Tensor:
    """det(I + grad u) per pixel of a 2D field with central differences inside, one-sided on borders."""
    b, _, h, w = flow.shape
    out = torch.zeros(b, h, w, dtype=flow.dtype)

    def d(f: torch.Tensor, i: int, j: int, axis: int) -> float:
        n = f.shape[axis]
        idx = i if axis == 0 else j
        lo, hi = max(idx - 1, 0), min(idx + 1, n - 1)
        if axis == 0:
            return float(f[hi, j] - f[lo, j]) / (hi - lo)
        return float(f[i, hi] - f[i, lo]) / (hi - lo)

    for n in range(b):
        for i in range(h):
            for j in range(w):
                a = 1 + d(flow[n, 0], i, j, 0)
                bb = d(flow[n, 0], i, j, 1)
                c = d(flow[n, 1], i, j, 0)
                dd = 1 + d(flow[n, 1], i, j, 1)
                out[n, i, j] = a * dd - bb * c
    return out


def dice_naive(a: torch.Tensor, b: torch.Tensor, label: int) -> float:
    """Dice of one label between two label maps, NaN when the label is in neither."""
    x = a == label
    y = b == label
    total = int(x.sum() + y.sum())
    return float("nan") if total == 0 else 2 * int((x & y).sum()) / total


def trilinear_at(volume: torch.Tensor, z: float, y: float, x: float) -> float:
    """Trilinear value of a 3D tensor at (z, y, x) in array order, zero outside the grid (eq. 8 in 3D)."""
    d, h, w = volume.shape
    z0, y0, x0 = math.floor(z), math.floor(y), math.floor(x)
    total = 0.0
    for zz in (z0, z0 + 1):
        for yy in (y0, y0 + 1):
            for xx in (x0, x0 + 1):
                if 0 <= zz < d and 0 <= yy < h and 0 <= xx < w:
                    weight = (1 - abs(z - zz)) * (1 - abs(y - yy)) * (1 - abs(x - xx))
                    total += float(volume[zz, yy, xx]) * weight
    return total


def warp_naive_3d(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """3D warp() with loops: out[b, c, p] = trilinear(image[b, c]) at p + flow[b, :, p]."""
    out = torch.zeros_like(image)
    b, c, d, h, w = image.shape
    for n in range(b):
        for i in range(d):
            for j in range(h):
                for k in range(w):
                    z, y, x = (float(flow[n, a, i, j, k]) + p for a, p in enumerate((i, j, k)))
                    for ch in range(c):
                        out[n, ch, i, j, k] = trilinear_at(image[n, ch], z, y, x)
    return out
