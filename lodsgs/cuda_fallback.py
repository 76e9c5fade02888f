"""The words of a CUDA fallback: when gsplat's rasterizer or the fused guidance kernel cannot be built or run, a
CUDA run goes on with lodsgs's PyTorch code on the GPU and prints one line, once, saying why and how to fix it.
Shared by ``splats/render.py`` and ``prior/fused.py`` (which must not import each other)."""

from __future__ import annotations

import sys


def first_line(e: BaseException) -> str:
    """``Type: first line of the message`` (a failed build's message is the whole compiler log)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def cuda_fix(gsplat: bool) -> str:
    """How to make a CUDA extension build: a toolkit matching torch's CUDA; for gsplat also a prebuilt wheel
    (gsplat publishes them per torch / CUDA pair at docs.gsplat.studio/whl, gsplat README)."""
    import torch

    cuda = torch.version.cuda
    if cuda is None:
        return "install a CUDA build of torch"
    fix = f"set CUDA_HOME to a CUDA {cuda} toolkit, the CUDA torch was built with (with nvcc in CUDA_HOME/bin)"
    if gsplat:
        pt = "".join(torch.__version__.split("+")[0].split(".")[:2])
        fix += (f", or install a prebuilt gsplat wheel: pip install gsplat --index-url "
                f"https://docs.gsplat.studio/whl/pt{pt}cu{cuda.replace('.', '')}")
    return fix


def announce(what: str, problem: str, instead: str, gsplat: bool) -> None:
    """Print the one fallback line on stderr: ``what`` is unavailable because ``problem``; ``instead`` runs."""
    print(f"lodsgs: note: {what} is unavailable: {problem}; {instead}; to fix: {cuda_fix(gsplat)}", file=sys.stderr)
