"""Fit splats to posed images by photometric (L1) loss with densification: the 3DGS optimizer, no prior.

It proves the core (renderer gradients, densification, per-key optimizers) converges on a known scene
(tests/test_fit.py) and can reconstruct splats from renders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from lodsgs.cameras import Cameras
from lodsgs.progress import StepProgress
from lodsgs.splats.densify import Densifier, DensifyConfig
from lodsgs.splats.model import Splats, make_optimizers
from lodsgs.splats.render import render


@dataclass
class FitConfig:
    """Defaults fit a few hundred Gaussians seen at 32² from 8-16 views in ~10 s on 2 CPU cores."""

    steps: int = 150
    batch: int = 2  # views per step, drawn without replacement
    seed: int = 0  # initial splats, view order and split sampling
    init_points: int = 300  # random-ball start when no init is given
    init_radius: float = 0.6
    lrs: dict[str, float] = field(default_factory=lambda: {
        "means": 5e-3, "scales": 1e-2, "quats": 2e-3, "opacities": 1e-1, "sh0": 5e-2, "shN": 2.5e-3})
    # fractions of steps: at 150 steps statistics up to step 105, refines at steps 60 and 90
    densify: DensifyConfig = field(default_factory=lambda: DensifyConfig(
        start=0.2, stop=0.7, every=0.2, scene_scale=1.0))


def fit(
    images: Tensor,  # [V, H, W, 3] in [0, 1]
    cameras: Cameras,  # V cameras, width W, height H
    cfg: FitConfig,
    init: Splats | None = None,
    background: tuple[float, float, float] | Tensor = (0.0, 0.0, 0.0),
    quiet: bool = True,
) -> tuple[Splats, dict[str, list]]:
    """Optimize splats (``init``, changed in place, or a random ball) so their renders over ``background`` match
    ``images``; returns the splats and per-step logs (loss, gaussians). Deterministic for a seed."""
    if images.shape != (len(cameras), cameras.height, cameras.width, 3):
        raise ValueError(f"images must be [V, H, W, 3] = {[len(cameras), cameras.height, cameras.width, 3]} "
                         f"for these cameras, got {list(images.shape)}")
    torch.manual_seed(cfg.seed)  # gsplat's split samples new means with the global generator
    g = torch.Generator().manual_seed(cfg.seed)
    if init is None:
        init = Splats.random_ball(cfg.init_points, radius=cfg.init_radius, seed=cfg.seed, opacity=0.3)
    splats = init
    images = images.to(splats.device)
    optimizers = make_optimizers(splats, cfg.lrs)
    densifier = Densifier(cfg.densify, cfg.steps)
    logs: dict[str, list] = {"loss": [], "gaussians": [splats.num]}
    with StepProgress(cfg.steps, quiet=quiet, label="fit") as bar:
        for step in range(cfg.steps):
            idx = torch.randperm(len(cameras), generator=g)[: cfg.batch]
            out = render(splats, cameras[idx], background=background)
            densifier.step_pre_backward(splats, optimizers, out.meta, step)
            loss = F.l1_loss(out.rgb, images[idx.to(images.device)])
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            loss.backward()
            for opt in optimizers.values():
                opt.step()
            densifier.step_post_backward(splats, optimizers, out.meta, step)
            logs["loss"].append(loss.item())
            logs["gaussians"].append(splats.num)
            bar.update(step + 1, loss=loss.item(), gaussians=splats.num)
    return splats, logs


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    return psnr_db(F.mse_loss(a.float(), b.float()).item())


def psnr_db(mse: float) -> float:
    """PSNR in dB of a mean squared error of [0, 1] images (floored at 1e-12: identical images give 120 dB)."""
    return -10.0 * math.log10(max(mse, 1e-12))
