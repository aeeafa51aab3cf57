"""Base class of the sequence datasets (echo2d-synthetic, echo2d-clip, camus): ED-to-frame-t pairs plus whole sequences.

The paper's multi-temporal setting registers the end-diastolic frame (frame 0) to every frame t of the same
sequence. Items are those pairs: "moving" is frame 0, "fixed" is frame t, so ``warp(moving, flow) ~ fixed`` with
``flow`` on frame t's grid, the library's convention.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .common import evenly_spaced


class SequencePairDataset(Dataset):
    """Pairs (frame 0 -> frame t, t >= 1) over sequences; items (1, H, W) tensors plus "view", "subject", "frame".

    Subclasses set ``name``, ``split``, ``has_labels``, ``_num_frames`` (list, frames per sequence) and
    implement ``_meta(i)`` and ``_frames(i, ts)``; ``num_pairs`` keeps at most that many pairs, evenly spread.
    """

    name = "sequences"
    has_labels = False
    label_names: tuple[str, ...] = ()

    def _init_pairs(self, num_pairs: int | None) -> None:
        pairs = [(i, t) for i, n in enumerate(self._num_frames) for t in range(1, n)]
        self._pairs = [pairs[k] for k in evenly_spaced(len(pairs), num_pairs)]

    @property
    def num_sequences(self) -> int:
        """Number of sequences in this split."""
        return len(self._num_frames)

    def __len__(self) -> int:
        return len(self._pairs)

    def _meta(self, i: int) -> dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _frames(self, i: int, ts: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:  # pragma: no cover
        raise NotImplementedError

    def _check_sequence(self, i: int) -> None:
        if not 0 <= i < self.num_sequences:
            raise IndexError(f"sequence {i} out of range for {self.name} {self.split} with {self.num_sequences}")

    def sequence(self, i: int) -> dict[str, Any]:
        """Sequence ``i``: "frames" (T, 1, H, W) in [0, 1], "labels" (T, 1, H, W) int64 if any, "view", "subject"."""
        self._check_sequence(i)
        frames, labels = self._frames(i, list(range(self._num_frames[i])))
        out = {"frames": frames, **self._meta(i)}
        if labels is not None:
            out["labels"] = labels
        return out

    def sequences(self) -> Iterator[dict[str, Any]]:
        """Every sequence of the split, in order, as :meth:`sequence` gives them."""
        for i in range(self.num_sequences):
            yield self.sequence(i)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self._pairs):
            raise IndexError(f"index {index} out of range for {self.name} {self.split} with {len(self)} pairs")
        i, t = self._pairs[index]
        frames, labels = self._frames(i, [0, t])
        meta = self._meta(i)
        item = {
            "moving": frames[0],
            "fixed": frames[1],
            "view": meta["view"],
            "subject": meta["subject"],
            "frame": int(t),
        }
        if labels is not None:
            item["moving_labels"] = labels[0]
            item["fixed_labels"] = labels[1]
        return item

    def pair_index(self) -> np.ndarray:
        """Array (N, 2) of (sequence, frame t) for every item, in item order."""
        return np.asarray(self._pairs, dtype=np.int64).reshape(-1, 2)
