"""Atomic file writes: write to a temporary name beside the target, then rename, so an interrupted or failed
write (Ctrl-C, disk full) never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path with the target's suffix; on success rename it over ``path``, else delete it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:  # report the file the user asked for, not the temporary name
        raise OSError(e.errno, e.strerror, str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


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

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LodsgsError(f"refused to open {what} {str(path)!r}: it holds pickled Python objects, which could run "
                          f"code; a lodsgs {what} holds only tensors, numbers and strings, so this one was not made "
                          "by lodsgs or was altered; delete it, or rerun without it") from None
    except Exception as e:  # a truncated or foreign file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LodsgsError(f"cannot read {what} {str(path)!r}: {first}") from None
