"""Splats: the raw Gaussian parameters in gsplat's layout, their activations and initialisers."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SH_C0 = 0.28209479177387814


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """Colour in [0, 1] -> degree-0 SH coefficient (INRIA convention: rgb = 0.5 + C0 * sh0)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


class Splats(nn.Module):
    """Gaussian splat parameters, stored raw as gsplat's strategies expect.

    Keys of ``params`` (an ``nn.ParameterDict``):
    ``means`` [N,3], ``scales`` [N,3] (log), ``quats`` [N,4] (wxyz, unnormalised),
    ``opacities`` [N] (logit), ``sh0`` [N,1,3], ``shN`` [N,K-1,3] with K = (sh_degree+1)^2.
    Densification replaces these Parameters in place, so always read them through ``params``.
    """

    def __init__(self, params: dict[str, Tensor], sh_degree: int = 0):
        super().__init__()
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be 0..3, got {sh_degree}")
        k = num_sh_bases(sh_degree) - 1
        n = params["means"].shape[0]
        if "shN" not in params:
            params = {**params, "shN": torch.zeros(n, k, 3, device=params["means"].device)}
        expected = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,),
                    "sh0": (n, 1, 3), "shN": (n, k, 3)}
        for key, shape in expected.items():
            if tuple(params[key].shape) != shape:
                raise ValueError(f"splat parameter {key!r} has shape {tuple(params[key].shape)}, expected {shape}")
        self.sh_degree = sh_degree
        self.params = nn.ParameterDict(
            {key: nn.Parameter(params[key].detach().float().clone()) for key in expected}
        )

    # --- activations -------------------------------------------------------------------------
    @property
    def num(self) -> int:
        return self.params["means"].shape[0]

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    @property
    def means(self) -> Tensor:
        return self.params["means"]

    @property
    def scales(self) -> Tensor:
        """Activated scales exp(log-scale), [N,3]."""
        return torch.exp(self.params["scales"])

    @property
    def quats(self) -> Tensor:
        """Unit quaternions wxyz, [N,4]."""
        return nn.functional.normalize(self.params["quats"], dim=-1)

    @property
    def opacities(self) -> Tensor:
        """Activated opacities sigmoid(logit), [N]."""
        return torch.sigmoid(self.params["opacities"])

    @property
    def sh(self) -> Tensor:
        """All SH coefficients [N,K,3], degree-0 band first."""
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    @property
    def rgb(self) -> Tensor:
        """View-independent base colour from the DC band, [N,3] (not clamped)."""
        return sh0_to_rgb(self.params["sh0"][:, 0])

    def detached(self) -> dict[str, Tensor]:
        """A detached copy of the raw parameters, for checkpoints and export."""
        return {k: v.detach().clone() for k, v in self.params.items()}

    # --- initialisers ------------------------------------------------------------------------
    @classmethod
    def from_points(
        cls,
        xyz: Tensor,
        rgb: Tensor | None = None,
        sh_degree: int = 0,
        opacity: float = 0.1,
        scale: float | None = None,
    ) -> Splats:
        """Splats at given points and colours (rgb in [0,1]); scale from 3-nearest-neighbour distance."""
        xyz = xyz.float()
        n = xyz.shape[0]
        if n == 0:
            raise ValueError("cannot build splats from an empty point cloud")
        rgb = torch.full((n, 3), 0.5) if rgb is None else rgb.float().clamp(0, 1)
        if scale is None:
            dist = knn_mean_distance(xyz, k=3).clamp_min(1e-4)
            log_scales = torch.log(dist)[:, None].repeat(1, 3)
        else:
            log_scales = torch.full((n, 3), math.log(scale))
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        params = {
            "means": xyz,
            "scales": log_scales,
            "quats": quats,
            "opacities": torch.logit(torch.full((n,), opacity)),
            "sh0": rgb_to_sh0(rgb)[:, None, :],
        }
        return cls(params, sh_degree=sh_degree)

    @classmethod
    def random_ball(cls, n: int, radius: float = 0.5, seed: int = 0, **kw) -> Splats:
        """Points uniform in a ball of ``radius``, random colours: the usual text-to-3D start."""
        g = torch.Generator().manual_seed(seed)
        d = torch.randn(n, 3, generator=g)
        d = d / d.norm(dim=-1, keepdim=True)
        r = radius * torch.rand(n, 1, generator=g) ** (1 / 3)
        rgb = torch.rand(n, 3, generator=g)
        return cls.from_points(d * r, rgb, **kw)

    @classmethod
    def sphere_shell(cls, n: int, radius: float = 0.5, thickness: float = 0.05, seed: int = 0, **kw) -> Splats:
        """Points on a spherical shell of ``radius`` (± thickness/2), random colours."""
        g = torch.Generator().manual_seed(seed)
        d = torch.randn(n, 3, generator=g)
        d = d / d.norm(dim=-1, keepdim=True)
        r = radius + thickness * (torch.rand(n, 1, generator=g) - 0.5)
        rgb = torch.rand(n, 3, generator=g)
        return cls.from_points(d * r, rgb, **kw)


def knn_mean_distance(xyz: Tensor, k: int = 3, chunk: int = 2048) -> Tensor:
    """sqrt of the mean squared distance to the k nearest neighbours (3DGS init scale), chunked."""
    n = xyz.shape[0]
    if n <= 1:
        return torch.full((n,), 0.01)
    k = min(k, n - 1)
    out = []
    for i in range(0, n, chunk):
        d2 = torch.cdist(xyz[i : i + chunk], xyz).pow(2)
        d2 = d2.topk(k + 1, dim=1, largest=False).values[:, 1:]
        out.append(d2.mean(dim=1).sqrt())
    return torch.cat(out)


def make_optimizers(splats: Splats, lrs: dict[str, float], eps: float = 1e-15) -> dict[str, torch.optim.Adam]:
    """One Adam per parameter key (gsplat strategies need exactly one param group per optimizer)."""
    missing = set(splats.params) - set(lrs)
    if missing:
        raise ValueError(f"no learning rate given for splat parameters {sorted(missing)}")
    return {
        key: torch.optim.Adam([{"params": [p], "lr": lrs[key], "name": key}], eps=eps)
        for key, p in splats.params.items()
    }
