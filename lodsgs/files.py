"""Atomic file writes: write to a temporary name beside the target, then rename, so an interrupted or failed
write (Ctrl-C, disk full) never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path with the target's suffix; on success rename it over ``path``, else delete it. A
    failed write (disk full, no permission), from any writer (numpy, torch.save, PIL, imageio), is one
    LodsgsError line naming the file the user asked for, the free space and how much the file needed."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise write_error(path, tmp, e.errno, e.strerror or str(e)) from None
    except RuntimeError as e:  # torch.save's zip writer: "... PytorchStreamWriter failed writing file ..."
        if "writ" not in str(e).lower():
            raise
        raise write_error(path, tmp, None, "the write failed") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_error(path: Path, tmp: Path, code: int | None, reason: str):
    """The one line for a failed write: why, the free space on the disk and what the file had taken so far."""
    import errno
    import shutil

    from lodsgs.errors import LodsgsError

    folder = next((p for p in (path.parent, *path.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(folder).free
    written = tmp.stat().st_size if tmp.exists() else 0
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return LodsgsError(f"cannot write {str(path)!r}: {reason}; choose a folder you can write (--out)")
    if code == errno.ENOSPC or free < max(written, 1 << 20):
        reason = "no space left on its disk"
    return LodsgsError(f"cannot write {str(path)!r}: {reason} ({human_bytes(free)} free there; the file took "
                       f"{human_bytes(written)} before it stopped, and needs more); free space or write to "
                       "another disk, then rerun the command (files finished before this one are kept)")


def human_bytes(n: int) -> str:
    return next(f"{n / k:.1f} {u}" for k, u in ((1 << 30, "GB"), (1 << 20, "MB"), (1 << 10, "kB"), (1, "B"))
                if n >= k or u == "B")


def write_text(path: Path, text: str) -> None:
    """``Path.write_text``, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def safe_load(path: Path, what: str = "checkpoint"):
    """``torch.load`` with ``weights_only=True``: tensors, numbers, strings, lists and dicts only. A file that
    holds other pickled objects (which could run code when unpickled) is refused in one line, unopened."""
    import pickle

    import torch

    from lodsgs.errors import LodsgsError

    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise LodsgsError(f"cannot read {what} {str(path)!r}: the file is empty (a write that never finished?); "
                          "delete it, or rerun without it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "unsupported global" in str(e).lower():  # a pickled object (a class or function) it would call
            raise LodsgsError(f"refused to open {what} {str(path)!r}: it holds pickled Python objects, which could "
                              f"run code; a lodsgs {what} holds only tensors, numbers and strings, so this one was "
                              "not made by lodsgs or was altered; delete it, or rerun without it") from None
        raise LodsgsError(f"cannot read {what} {str(path)!r}: not a PyTorch file (damaged, or another kind of "
                          "file); delete it, or rerun without it") from None
    except Exception as e:  # a truncated or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LodsgsError(f"cannot read {what} {str(path)!r}: {first[:200]}; delete it, or rerun without it") from None
