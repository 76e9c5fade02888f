"""render(splats, cameras): gsplat's CUDA rasterizer when the splats are on a GPU, ours (raster_torch) on CPU.

Whether gsplat's CUDA kernels work is decided once per process (``cuda_rasterizer``): if they cannot be built or
loaded (no nvcc, CUDA_HOME unset, a toolkit that does not match torch: the JIT build raises), CUDA splats are
rendered by raster_torch on the GPU and one line on stderr says why and how to fix it.

Both backends give the same outputs and a gsplat-style ``meta`` (packed=False) that
``gsplat.strategy.DefaultStrategy`` can consume: ``means2d`` [C,N,2] is the tensor the compositor used, so
``meta["means2d"].retain_grad()`` sees the screen-space gradients densification needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from gsplat import rasterization
from torch import Tensor

from lodsgs import cuda_fallback
from lodsgs.cameras import Cameras
from lodsgs.splats import raster_torch
from lodsgs.splats.model import Splats


@dataclass
class RenderOutput:
    rgb: Tensor  # [C, H, W, 3] composited over the background
    alpha: Tensor  # [C, H, W, 1] accumulated opacity
    depth: Tensor  # [C, H, W, 1] expected camera depth Σ w·z / alpha (about 0 where alpha is 0)
    meta: dict[str, Any] = field(default_factory=dict)  # means2d, radii, gaussian_ids, width, height, ...


def render(
    splats: Splats,
    cameras: Cameras,
    background: Sequence[float] | Tensor | None = None,
    sh_degree: int | None = None,
) -> RenderOutput:
    """Render every camera in one call; ``background`` is RGB [3] or [C,3] (None = black), ``sh_degree``
    defaults to the splats' own degree."""
    degree = splats.sh_degree if sh_degree is None else sh_degree
    if not 0 <= degree <= splats.sh_degree:
        raise ValueError(f"sh_degree must be in 0..{splats.sh_degree} for these splats, got {degree}")
    device = splats.device
    viewmats = cameras.viewmats.to(device=device, dtype=torch.float32)
    Ks = cameras.Ks.to(device=device, dtype=torch.float32)
    bg = _backgrounds(background, len(cameras), device)
    args = (splats.means, splats.quats, splats.scales, splats.opacities, splats.sh, viewmats, Ks,
            cameras.width, cameras.height)
    if rasterizer_for(device) == "gsplat":
        colors, alpha, meta = rasterization(*args, sh_degree=degree, packed=False, render_mode="RGB+ED",
                                            backgrounds=bg)
        meta["packed"] = False
        return RenderOutput(colors[..., :3], alpha, colors[..., 3:], meta)
    rgb, alpha, depth, meta = raster_torch.rasterize(*args, sh_degree=degree, background=bg)
    return RenderOutput(rgb, alpha, depth, meta)


def _backgrounds(
    background: Sequence[float] | Tensor | None, n_cameras: int, device: torch.device
) -> Tensor | None:
    """Background as [C,3] float on ``device`` (or None for black)."""
    if background is None:
        return None
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    if bg.shape == (3,):
        return bg.expand(n_cameras, 3)
    if bg.shape == (n_cameras, 3):
        return bg
    raise ValueError(f"background must be RGB [3] or [C,3] with C={n_cameras}, got shape {tuple(bg.shape)}")


@dataclass(frozen=True)
class Rasterizer:
    """The rasterizer CUDA splats get in this process: ``name`` "gsplat" or "raster_torch", and ``why``."""

    name: str
    why: str


RASTER_INSTEAD = "rendering with lodsgs's PyTorch rasterizer on the GPU instead (same images, slower)"
_cuda_choice: Rasterizer | None = None  # decided on the first CUDA render (or info --system), then kept


def rasterizer_for(device: torch.device) -> str:
    """"gsplat" or "raster_torch": the rasterizer for splats on ``device`` (gsplat only on CUDA, when it works)."""
    return cuda_rasterizer().name if device.type == "cuda" else "raster_torch"


def cuda_rasterizer(announce: bool = True) -> Rasterizer:
    """gsplat's CUDA rasterizer if it loads and renders, else raster_torch on the GPU; decided once per process.
    The fallback prints one line on stderr (``announce``), once."""
    global _cuda_choice
    if _cuda_choice is None:
        problem = gsplat_cuda_problem()
        if problem is None:
            _cuda_choice = Rasterizer("gsplat", "gsplat's CUDA kernels loaded")
        else:
            _cuda_choice = Rasterizer("raster_torch", problem)
            if announce:
                cuda_fallback.announce("gsplat's CUDA rasterizer", problem, RASTER_INSTEAD, gsplat=True)
    return _cuda_choice


def gsplat_cuda_problem() -> str | None:
    """Why gsplat's CUDA rasterizer cannot serve this process, or None when it can: its extension must import
    (a prebuilt wheel's, or a JIT build, which raises without nvcc / CUDA_HOME or with a toolkit that does not
    match torch) and render one Gaussian (a wheel built for another GPU architecture fails there)."""
    try:
        from gsplat.cuda._backend import _C
    except Exception as e:  # any failure of the build is a reason to fall back
        return f"its CUDA extension failed to build ({cuda_fallback.first_line(e)})"
    if _C is None:
        return "gsplat found no CUDA toolkit (nvcc) to build its CUDA extension"
    try:
        _render_one_gaussian()
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # e.g. "no kernel image is available for execution on the device"
        return f"its CUDA kernels failed to run ({cuda_fallback.first_line(e)})"
    return None


def _render_one_gaussian() -> None:
    """One Gaussian through gsplat's rasterization on the current CUDA device (the probe of its kernels)."""
    dev = torch.device("cuda")
    eye = torch.eye(4, device=dev)[None]
    eye[0, 2, 3] = 2.0
    K = torch.tensor([[[8.0, 0.0, 4.0], [0.0, 8.0, 4.0], [0.0, 0.0, 1.0]]], device=dev)
    rasterization(torch.zeros(1, 3, device=dev), torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=dev),
                  torch.full((1, 3), 0.1, device=dev), torch.ones(1, device=dev), torch.ones(1, 3, device=dev),
                  eye, K, 8, 8)
    torch.cuda.synchronize(dev)

