"""Orbit cameras around the origin: sampling, OpenCV view matrices and intrinsics, view labels.

World axes are y-up (objects stand along +y, their front faces +z at azimuth 0). View matrices are
world-to-camera in the OpenCV convention (x right, y down, z forward), as gsplat expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lodsgs.config import CameraConfig


@dataclass
class Cameras:
    """A batch of C pinhole cameras; per-camera orbit parameters are kept for view labels."""

    viewmats: Tensor  # [C,4,4] world-to-camera, OpenCV
    Ks: Tensor  # [C,3,3] pixel intrinsics
    width: int
    height: int
    elevation: Tensor = field(default_factory=lambda: torch.zeros(0))  # [C] degrees
    azimuth: Tensor = field(default_factory=lambda: torch.zeros(0))  # [C] degrees in [-180,180)

    def __len__(self) -> int:
        return self.viewmats.shape[0]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(self.viewmats.to(device), self.Ks.to(device), self.width, self.height,
                       self.elevation, self.azimuth)

    @property
    def device(self) -> torch.device:
        return self.viewmats.device

    @property
    def positions(self) -> Tensor:
        """Camera centres in world space, [C,3]."""
        R, t = self.viewmats[:, :3, :3], self.viewmats[:, :3, 3]
        return -(R.transpose(1, 2) @ t[:, :, None])[:, :, 0]

    def __getitem__(self, idx) -> Cameras:
        idx = torch.as_tensor(idx).reshape(-1)
        return Cameras(self.viewmats[idx], self.Ks[idx], self.width, self.height,
                       self.elevation[idx] if len(self.elevation) else self.elevation,
                       self.azimuth[idx] if len(self.azimuth) else self.azimuth)


def look_at(positions: Tensor, targets: Tensor, up: tuple[float, float, float] = (0.0, 1.0, 0.0)) -> Tensor:
    """World-to-camera matrices [C,4,4] (OpenCV axes) for cameras at ``positions`` looking at ``targets``."""
    up_t = torch.tensor(up, dtype=positions.dtype, device=positions.device).expand_as(positions)
    forward = torch.nn.functional.normalize(targets - positions, dim=-1)
    right = torch.linalg.cross(forward, up_t)
    # looking straight up or down: fall back to a fixed right vector
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    right = torch.where(degenerate, torch.tensor([1.0, 0.0, 0.0], device=positions.device), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    down = torch.linalg.cross(forward, right)
    R = torch.stack([right, down, forward], dim=1)  # rows are camera axes in world coordinates
    viewmats = torch.eye(4, dtype=positions.dtype, device=positions.device).repeat(len(positions), 1, 1)
    viewmats[:, :3, :3] = R
    viewmats[:, :3, 3] = -(R @ positions[:, :, None])[:, :, 0]
    return viewmats


def intrinsics(fovy_deg: Tensor, width: int, height: int) -> Tensor:
    """Pinhole intrinsics [C,3,3] with square pixels and the principal point at the image centre."""
    fy = 0.5 * height / torch.tan(torch.deg2rad(fovy_deg) / 2)
    K = torch.zeros(len(fovy_deg), 3, 3, dtype=fovy_deg.dtype)
    K[:, 0, 0], K[:, 1, 1] = fy, fy
    K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = width / 2, height / 2, 1.0
    return K


def orbit_position(elevation: Tensor, azimuth: Tensor, radius: Tensor) -> Tensor:
    """Point on the orbit sphere, [C,3]: azimuth 0 is +z (the front), 90 is +x, elevation towards +y."""
    e, a = torch.deg2rad(elevation), torch.deg2rad(azimuth)
    return torch.stack([radius * torch.cos(e) * torch.sin(a), radius * torch.sin(e),
                        radius * torch.cos(e) * torch.cos(a)], dim=-1)


def orbit_cameras(
    elevation: Tensor, azimuth: Tensor, radius: Tensor, fovy: Tensor, width: int, height: int,
    targets: Tensor | None = None,
) -> Cameras:
    """Cameras on an orbit around the origin (or ``targets``), all angles in degrees."""
    elevation, azimuth, radius, fovy = (torch.as_tensor(x, dtype=torch.float32).reshape(-1)
                                        for x in torch.broadcast_tensors(
                                            *(torch.as_tensor(v, dtype=torch.float32)
                                              for v in (elevation, azimuth, radius, fovy))))
    pos = orbit_position(elevation, azimuth, radius)
    targets = torch.zeros_like(pos) if targets is None else targets
    azimuth = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    return Cameras(look_at(pos + targets, targets), intrinsics(fovy, width, height), width, height,
                   elevation, azimuth)


def sample_cameras(cfg: CameraConfig, batch: int, generator: torch.Generator | None = None) -> Cameras:
    """Random orbit cameras: elevation half uniform in degrees, half uniform on the sphere (threestudio),
    azimuth stratified over the batch so every batch sees all sides, radius and fov uniform."""
    g = generator

    def uniform(lo_hi: tuple[float, float], n: int) -> Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(n, generator=g)

    e_lo, e_hi = cfg.elevation
    if torch.rand(1, generator=g).item() < 0.5:
        elevation = uniform(cfg.elevation, batch)
    else:  # uniform on the sphere band: sin(elevation) uniform
        s = uniform((math.sin(math.radians(e_lo)), math.sin(math.radians(e_hi))), batch)
        elevation = torch.rad2deg(torch.asin(s))
    a_lo, a_hi = cfg.azimuth
    azimuth = a_lo + (a_hi - a_lo) * (torch.arange(batch) + torch.rand(batch, generator=g)) / batch
    radius = uniform(cfg.radius, batch)
    fovy = uniform(cfg.fovy, batch)
    targets = cfg.jitter * torch.randn(batch, 3, generator=g) if cfg.jitter > 0 else None
    return orbit_cameras(elevation, azimuth, radius, fovy, cfg.width, cfg.height, targets)


def eval_cameras(cfg: CameraConfig, n: int, width: int | None = None, height: int | None = None,
                 elevation: float | tuple[float, ...] | None = None, yaw: float = 0.0) -> Cameras:
    """``n`` cameras evenly spaced in azimuth (turned by ``yaw`` degrees) at the evaluation radius and fov, at
    the evaluation elevation or at each of ``elevation`` (n per elevation): turntables and held-out views."""
    elevations = [cfg.eval_elevation] if elevation is None else (
        [float(elevation)] if isinstance(elevation, (int, float)) else [float(e) for e in elevation])
    azimuth = (torch.arange(n, dtype=torch.float32) * 360.0 / n + yaw).repeat(len(elevations))
    elev = torch.tensor(elevations, dtype=torch.float32).repeat_interleave(n)
    m = len(azimuth)
    return orbit_cameras(elev, azimuth, torch.full((m,), cfg.eval_radius), torch.full((m,), cfg.eval_fovy),
                         width or cfg.width, height or cfg.height)


def view_label(elevation: float, azimuth: float, cfg: CameraConfig | None = None) -> str:
    """front / side / back / overhead, as used for view-dependent prompts (threestudio thresholds)."""
    cfg = cfg or CameraConfig()
    a = (azimuth + 180.0) % 360.0 - 180.0
    if elevation > cfg.overhead_threshold:
        return "overhead"
    if abs(a) < cfg.front_threshold:
        return "front"
    if abs(a) > 180.0 - cfg.back_threshold:
        return "back"
    return "side"


def view_labels(cameras: Cameras, cfg: CameraConfig | None = None) -> list[str]:
    return [view_label(float(e), float(a), cfg) for e, a in zip(cameras.elevation, cameras.azimuth)]
