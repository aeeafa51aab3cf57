"""What every benchmark suite shares, written once: how a network sees the images, threads, the machine's
description, the results files, one training step, synchronised step timings.

The timing loop that methods share on pairs is the library's (:func:`searchmorph_lite.scoring.interleave` and
:func:`~searchmorph_lite.scoring.run_methods`: methods take turns pair by pair, after an untimed warm-up), so that
the book's chapters and the benchmarks time and score the same way. Memory is measured in :mod:`benchmarks.memory`.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:  # benchmark this checkout's library, installed or not (or installed from elsewhere)
    sys.path.insert(0, str(REPO))

# The datasets' images are scaled to [0, 1] already, as the networks saw them in training; register's own
# percentile rescaling (normalize=True, for a user's raw images) would stretch and clip them a second time.
NORMALIZE = False


def network(model, **register_kwargs) -> Callable:
    """method(moving, fixed) -> flow (ndim, *S) of ``model`` through ``register`` with the suites' one
    :data:`NORMALIZE` (keywords such as iterations and refine_steps pass on)."""
    from searchmorph_lite.scoring import network_method

    return network_method(model, normalize=NORMALIZE, **register_kwargs)


def load_model(name: str, checkpoint: str | os.PathLike | None = None):
    """The shipped model ``name`` on the CPU, or the training ``checkpoint`` when one is given."""
    import searchmorph_lite as sm

    return sm.load_checkpoint(checkpoint, device="cpu") if checkpoint else sm.load_pretrained(name, device="cpu")


def set_threads(threads: int) -> None:
    """Give torch and ANTs (ITK, read at its first registration) the same number of threads."""
    import torch

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def machine() -> str:
    """The processor and its core count, e.g. "x86_64, 2 cores" (no hostname)."""
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def command(script: str, argv: Sequence[str] | None) -> str:
    """The command line that reruns a suite: ``python benchmarks/<script> <argv>`` (argv default: sys.argv[1:])."""
    return shlex.join(["python", f"benchmarks/{script}", *(argv if argv is not None else sys.argv[1:])])


def write_results(out: str | os.PathLike, results: dict, markdown: str) -> None:
    """Write ``out``.json (``results``) and ``out``.md (``markdown``), each atomically, creating the folder."""
    from searchmorph_lite.data.common import atomic_write_text

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(f"{out}.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(f"{out}.md", markdown)


def training_step(
    model, moving, fixed, alpha: float = 2.0, fold_weight: float = 0.0, iteration_weight: float = 0.8
) -> Callable[[], None]:
    """step() -> None: one Adam step (lr 1e-3) of ``model`` on the batch ``moving``, ``fixed`` (B, C, *S).

    The loss is eq. 9 with LNCC (:func:`searchmorph_lite.losses.sequence_loss`): ``iteration_weight`` 0.8 weighs
    every iteration's field as training does, 0 scores the last field only; ``fold_weight`` adds the folding
    barrier."""
    import torch

    from searchmorph_lite.losses import sequence_loss

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        loss = sequence_loss(model(moving, fixed), moving, fixed, "lncc", alpha, fold_weight, iteration_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def timed_calls(step: Callable[[int], object], repeats: int, device) -> list[float]:
    """Wall seconds of ``step(i)`` for i = 1..repeats, the device synchronised around each, after the untimed
    warm-up ``step(0)``."""
    from searchmorph_lite.book import synced_times

    step(0)
    calls = iter(range(1, repeats + 1))
    return synced_times(lambda: step(next(calls)), device, repeats)
