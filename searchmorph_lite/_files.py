"""Writing files so that a crash or a kill never leaves a half-written one: the library's single atomic writer.

Every file the library writes (checkpoints, NIfTI outputs, data caches, JSON) goes to a temporary file in the
target's folder, named ``.<target name>.<random>.tmp``, is flushed to disk, and is renamed onto the target
(``os.replace`` is atomic on one file system). A kill can leave such a temporary behind, never a broken target;
the next write of the same target removes the ones left by earlier writes (:func:`remove_stale_temporaries`).

It also holds the checks every command runs on its output paths before any work (:func:`check_output_paths`)
and the JSON writer that never writes NaN (:func:`json_text`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Writer = Callable[[str], None]  # writes the whole file at the path it is given


def readable_mode(path: str | os.PathLike) -> None:
    """Give a ``tempfile.mkstemp`` file (mode 0600) the permissions a normal new file gets under the umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _temp_suffix(name: str) -> str:
    for ext in (".nii.gz", ".nii"):  # nibabel picks the format from the extension
        if name.endswith(ext):
            return f".tmp{ext}"
    return ".tmp"


def _temp_beside(path: Path) -> str:
    suffix = _temp_suffix(path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    readable_mode(tmp)
    return tmp


def _flush_to_disk(tmp: str) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())


# A temporary older than this is stale: a live writer keeps its temporary's mtime fresh while it writes, and
# renames it within seconds after; only a killed writer leaves one untouched for minutes.
STALE_AFTER_S = 600.0
# tempfile.mkstemp's random part: 8 characters of "abcdefghijklmnopqrstuvwxyz0123456789_"
_RANDOM_PART = "[a-z0-9_]{8}"


def stale_temporaries(target: str | os.PathLike, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Temporaries (paths) that this writer left beside ``target`` and nobody has touched for ``older_than_s`` s.

    Only regular files named exactly as :func:`atomic_write_many` names its temporaries for this target's name,
    ``.<name>.<8 random characters>.tmp[.nii[.gz]]``, qualify: never another target's, never ``.foo.tmp`` or
    ``x.tmp``, never a link or a folder.
    """
    target = Path(target)
    pattern = re.compile(re.escape(f".{target.name}.") + _RANDOM_PART + re.escape(_temp_suffix(target.name)))
    try:
        entries = list(os.scandir(target.parent))
    except OSError:
        return []
    now = time.time()
    stale = []
    for entry in entries:
        if not pattern.fullmatch(entry.name):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and now - st.st_mtime > older_than_s:
            stale.append(Path(entry.path))
    return stale


def remove_stale_temporaries(target: str | os.PathLike, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Paths removed: the :func:`stale_temporaries` of ``target`` (a kill during an earlier write left them)."""
    removed = []
    for path in stale_temporaries(target, older_than_s):
        try:
            path.unlink()
            removed.append(path)
        except OSError:  # removed meanwhile by another writer, or not ours to remove: leave it
            pass
    return removed


class DiskFullError(OSError):
    """A write failed because the disk (or the user's quota) is full; the message names the file."""


def _disk_full(err: BaseException, folder: Path) -> bool:
    """True when ``err``, raised while writing into ``folder``, comes from a full disk or quota.

    torch's zip writer reports a full disk as a RuntimeError ("unexpected pos ..."), so besides ENOSPC and
    EDQUOT a write that failed on a file system with under 64 KiB left counts as one.
    """
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1 << 16


def atomic_write_many(items: Sequence[tuple[str | os.PathLike, Writer]]) -> list[Path]:
    """Paths written: each ``writer(temp)`` fills a temporary beside its target; only when all succeeded are
    they renamed onto their targets, so a failure leaves every target as it was."""
    targets = [Path(p) for p, _ in items]
    temps: list[str] = []
    try:
        for target, (_, writer) in zip(targets, items):
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(target)
            try:
                temps.append(_temp_beside(target))
                writer(temps[-1])
                _flush_to_disk(temps[-1])
            except (OSError, RuntimeError) as err:
                if not _disk_full(err, target.parent):
                    raise
                kept = "the existing file is unchanged" if target.exists() else "nothing was written"
                raise DiskFullError(
                    f"cannot write {target}: the disk is full (no space left in {target.parent}); {kept}, free some "
                    f"space and run again"
                ) from None
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


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None, numpy scalars and arrays by Python numbers and lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return json_safe(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj``: NaN and infinities become null (JSON has no NaN), never invalid JSON."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """Path written with :func:`json_text` of ``obj``, atomically."""
    return atomic_write_text(path, json_text(obj, indent=indent) + "\n")


def path_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file or folder, in words ("is a FIFO (named pipe), not a file", "is a
    symbolic link loop ..."), or None when it is a file, a folder, or does not exist."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as err:
        if err.errno != errno.ELOOP:
            return None  # missing, or a dangling link: the caller's "not found" says it
        if path.is_symlink():
            return "is a symbolic link loop (it leads back to itself)"
        loop = next((p for p in path.parents if p.is_symlink() and path_problem(p)), path.parent)
        return f"is inside {loop}, a symbolic link loop"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    return "is not a regular file"


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        return path.absolute()


def _same_file(a: Path, b: Path) -> bool:
    if _resolved(a) == _resolved(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def check_writable_folder(path: str | os.PathLike, label: str) -> None:
    """Raise ValueError unless ``path`` (to be written, with its missing parents) can be created by this user."""
    path = Path(path)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():  # a dangling link: mkdir would fail later
            problem = path_problem(parent)
            if problem:
                raise ValueError(f"{label} {path}: {parent} {problem}")
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise ValueError(f"{label} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{label} {path}: the folder {parent} is not writable")


def check_output_paths(
    outputs: Mapping[str, str | os.PathLike | None],
    inputs: Mapping[str, str | os.PathLike | None] | None = None,
    suffixes: Sequence[str] = (),
) -> None:
    """Raise ValueError, before any work, when an output path would lose data or fail after the work is done.

    ``outputs`` and ``inputs`` map a label (e.g. "--out") to a path (None entries are skipped). Refused: a wrong
    suffix (when ``suffixes`` is given), an existing folder, a parent that is a file or not writable, two outputs
    that are one file, an output that is an input (compared as resolved paths and by inode, so links count), and
    any input or output that is a symbolic link loop, a FIFO or a device (reading a FIFO would wait forever).
    An existing output file that is no input is replaced, as every command line tool does.
    """
    for label, p in outputs.items():
        if p is not None and not str(p).strip():
            raise ValueError(f"{label} is an empty path; give a file name")
    outs = {label: Path(p) for label, p in outputs.items() if p is not None}
    ins = {label: Path(p) for label, p in (inputs or {}).items() if p is not None and str(p).strip()}
    for label, path in {**ins, **outs}.items():
        problem = path_problem(path)
        if problem:
            raise ValueError(f"{label} {str(path)!r} {problem}")
    for label, path in outs.items():
        if path.is_dir():
            example = path / ("out" + (suffixes[0] if suffixes else ""))
            raise ValueError(f"{label} {path} is a folder; give a file name such as {example}")
        if suffixes and not any(path.name.endswith(s) for s in suffixes):
            raise ValueError(f"{label} {path} must end in {' or '.join(suffixes)}")
        check_writable_folder(path, label)
    labels = list(outs)
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            if _same_file(outs[a], outs[b]):
                raise ValueError(f"{a} and {b} are the same file ({outs[a]}): one would overwrite the other")
        for label, path in ins.items():
            if _same_file(outs[a], path):
                raise ValueError(f"{a} {outs[a]} is the {label} input: writing it would destroy the input")


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (``fcntl.flock``) for the ``with`` block; the file holds the
    holder's "pid N on HOST since TIME" and is removed on release.

    ValueError "``what`` is in use by pid N on HOST since TIME" when another process (or another ``with`` in this
    one) holds it. The operating system releases the lock of a killed process, so a kill never leaves a folder
    locked; a stale file without a holder is simply taken over. On a file system without locks (some network
    mounts) one warning says so and the block runs unlocked.
    """
    import fcntl
    import socket
    import warnings

    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise ValueError(f"{what} is in use by {holder}; wait for it to end, or use another folder") from None
        except OSError as err:  # ENOLCK, EOPNOTSUPP: no locks on this file system
            os.close(fd)
            warnings.warn(f"cannot lock {path} ({err.strerror}): nothing stops a second run in {what}", stacklevel=3)
            fd = None
            break
        try:  # the last holder may have removed the file between our open and flock: lock the one on disk
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    if fd is None:
        yield
        return
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it, so no one locks a file that is about to go
        os.close(fd)
