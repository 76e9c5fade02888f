"""Dense brute-force splat renderer: every Gaussian against every pixel. A test and benchmark oracle only.

It shares nothing with ``raster_torch`` but gsplat's torch projection and the alpha rules (gsplat's CUDA
kernel: alpha = min(0.999, o·exp(-sigma)), skip sigma < 0 or alpha < 1/255, stop before T <= 1e-4, pixel
centres at +0.5): no radii, no bounding boxes, no pair lists, a plain cumprod over depth-sorted Gaussians.
Memory is O(N·H·W) per camera, so keep scenes tiny (or render strips by shifting the principal point).
"""

from __future__ import annotations

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics
from torch import Tensor


def render_dense(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3] activated
    opacities: Tensor,  # [N] activated
    sh: Tensor,  # [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    sh_degree: int,
    background: Tensor | None = None,  # [C, 3]
    near_plane: float = 0.01,
) -> tuple[Tensor, Tensor, Tensor]:
    """rgb [C,H,W,3], alpha [C,H,W,1], expected depth [C,H,W,1], one camera at a time."""
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_covar=True, compute_preci=False)
    _, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=0.3, near_plane=near_plane, far_plane=1e10)
    campos = torch.linalg.inv(viewmats)[:, :3, 3]
    k = (sh_degree + 1) ** 2
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pixels = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)  # [HW, 2]
    outs = []
    for i in range(len(viewmats)):
        colors = torch.clamp_min(_spherical_harmonics(sh_degree, means - campos[i], sh[:, :k]) + 0.5, 0.0)
        order = torch.argsort(depths[i])
        d = means2d[i, order, None, :] - pixels[None]  # [N, HW, 2]
        a, b, c = conics[i, order].unbind(-1)
        dx, dy = d[..., 0], d[..., 1]
        sigma = 0.5 * (a[:, None] * dx * dx + c[:, None] * dy * dy) + b[:, None] * dx * dy
        alpha = torch.clamp_max(opacities[order, None] * torch.exp(-sigma), 0.999)
        z = depths[i, order]
        valid = (z > near_plane)[:, None] & (sigma >= 0) & (alpha >= 1.0 / 255.0)
        alpha = torch.where(valid, alpha, 0.0)
        t_incl = torch.cumprod(1.0 - alpha.double(), dim=0)  # [N, HW]
        t_excl = torch.cat([torch.ones_like(t_incl[:1]), t_incl[:-1]], dim=0)
        w = torch.where(t_incl.detach() > 1e-4, alpha * t_excl.float(), 0.0)  # [N, HW]
        feats = torch.cat([colors[order], z[:, None], torch.ones_like(z[:, None])], -1)  # [N, 5]
        outs.append((w.T @ feats).reshape(height, width, 5))
    out = torch.stack(outs)
    rgb, alpha_img = out[..., :3], out[..., 4:5]
    if background is not None:
        rgb = rgb + (1.0 - alpha_img) * background[:, None, None, :]
    return rgb, alpha_img, out[..., 3:4] / alpha_img.clamp_min(1e-10)
