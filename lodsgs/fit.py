"""Fit splats to posed images by photometric loss with densification: the 3DGS optimizer, no prior.

It proves the core (renderer gradients, densification, optimizers) converges on a known scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from lodsgs.cameras import Cameras
from lodsgs.progress import StepProgress
from lodsgs.splats.densify import DensifyConfig, Densifier
from lodsgs.splats.model import Splats, make_optimizers
from lodsgs.splats.render import render


@dataclass
class FitConfig:
    steps: int = 300
    batch: int = 4  # views per step
    seed: int = 0
    init_points: int = 500
    init_radius: float = 0.6
    lrs: dict[str, float] = field(default_factory=lambda: {
        "means": 2e-3, "scales": 1e-2, "quats": 2e-3, "opacities": 5e-2, "sh0": 2e-2, "shN": 1e-3})
    densify: DensifyConfig = field(default_factory=lambda: DensifyConfig(
        refine_start=50, refine_stop=250, refine_every=50, grow_grad2d=2e-4, scene_scale=1.0))


def fit(images: Tensor, cameras: Cameras, cfg: FitConfig, init: Splats | None = None,
        background: tuple[float, float, float] = (0.0, 0.0, 0.0), quiet: bool = True) -> tuple[Splats, dict]:
    """Optimize splats so their renders match ``images`` [V,H,W,3] from ``cameras``; returns splats and logs."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    splats = init or Splats.random_ball(cfg.init_points, radius=cfg.init_radius, seed=cfg.seed, opacity=0.3)
    optimizers = make_optimizers(splats, cfg.lrs)
    densifier = Densifier(cfg.densify)
    counts, losses = [splats.num], []
    with StepProgress(cfg.steps, quiet=quiet, label="fit") as bar:
        for step in range(cfg.steps):
            idx = torch.randperm(len(cameras), generator=g)[: cfg.batch]
            out = render(splats, cameras[idx], background=background)
            densifier.step_pre_backward(splats, optimizers, out.meta, step)
            loss = F.l1_loss(out.rgb, images[idx])
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers.values():
                opt.step()
            densifier.step_post_backward(splats, optimizers, out.meta, step)
            losses.append(loss.item())
            counts.append(splats.num)
            bar.update(step + 1, loss=loss.item(), gaussians=splats.num)
    return splats, {"loss": losses, "gaussians": counts}


def psnr(a: Tensor, b: Tensor) -> float:
    return float(-10 * torch.log10(F.mse_loss(a, b).clamp_min(1e-12)))
