"""render(splats, cameras): gsplat's CUDA rasterizer when the splats are on a GPU, ours (raster_torch) on CPU.

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
    if splats.means.is_cuda:
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
