"""Writing files so that a crash or a kill never leaves a half-written one: the library's single atomic writer.

Every file the library writes (checkpoints, NIfTI outputs, data caches, JSON) goes to a temporary file in the
target's folder, named ``.<target name>.<random>.tmp``, is flushed to disk, and is renamed onto the target
(``os.replace`` is atomic on one file system). A kill can leave such a temporary behind, never a broken target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

Writer = Callable[[str], None]  # writes the whole file at the path it is given


def readable_mode(path: str | os.PathLike) -> None:
    """Give a ``tempfile.mkstemp`` file (mode 0600) the permissions a normal new file gets under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _temp_beside(path: Path) -> str:
    suffix = ".tmp"
    for ext in (".nii.gz", ".nii"):  # nibabel picks the format from the extension
        if path.name.endswith(ext):
            suffix = f".tmp{ext}"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    readable_mode(tmp)
    return tmp


def _flush_to_disk(tmp: str) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_many(items: Sequence[tuple[str | os.PathLike, Writer]]) -> list[Path]:
    """Paths written: each ``writer(temp)`` fills a temporary beside its target; only when all succeeded are
    they renamed onto their targets, so a failure leaves every target as it was."""
    targets = [Path(p) for p, _ in items]
    temps: list[str] = []
    try:
        for target, (_, writer) in zip(targets, items):
            target.parent.mkdir(parents=True, exist_ok=True)
            temps.append(_temp_beside(target))
            writer(temps[-1])
            _flush_to_disk(temps[-1])
        for target, tmp in zip(targets, temps):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            Path(tmp).unlink(missing_ok=True)
    return targets


def atomic_write(path: str | os.PathLike, writer: Writer) -> Path:
    """Path written by ``writer(temp)`` through a temporary file and ``os.replace`` (never half-written)."""
    return atomic_write_many([(path, writer)])[0]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Path written with ``text`` (UTF-8), atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
