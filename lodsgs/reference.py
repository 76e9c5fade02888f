"""Image-to-3D: the reference picture, its camera and the loss that fits the splats to it.

The recipe is DreamGaussian's (dreamgaussian/dreamgaussian ``process.py``, ``main.py``, ``configs/image.yaml``):
the object is cut out by its alpha (or a uniform background keyed out), optionally recentred (cropped to the
object, its longer side scaled to ``1 - border`` of the frame, padded), seen by a camera at azimuth 0, and fitted
every step with ``rgb_weight``·MSE(rgb) + ``mask_weight``·MSE(alpha, mask), both ramped in linearly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from lodsgs.cameras import Cameras, orbit_cameras
from lodsgs.config import Config, ImageConfig, at_step
from lodsgs.errors import LodsgsError

KEY_SPREAD = 0.04  # the frame's outer ring counts as a uniform background if no channel strays further
KEY_THRESHOLD = 0.1  # a pixel is the object if a channel differs from the keyed background by more than this


@dataclass
class Reference:
    """The processed reference: colour composited on the render background [H,W,3] and mask [H,W], in [0, 1]."""

    rgb: Tensor
    mask: Tensor

    def to(self, device: torch.device | str) -> Reference:
        return Reference(self.rgb.to(device), self.mask.to(device))


def read_rgba(path: Path) -> tuple[Tensor, Tensor]:
    """An image file as colour [H,W,3] and alpha [H,W] in [0, 1]: RGBA's alpha, or an RGB picture's uniform
    background keyed out; one line naming the fix otherwise."""
    from lodsgs.pictures import read_picture

    image = torch.from_numpy(read_picture(path, "reference image"))
    if image.shape[-1] == 4:
        return image[..., :3], image[..., 3]
    return image, key_out(image, path)


def outer_ring(image: Tensor) -> Tensor:
    """The frame's outermost pixels [N, ...]."""
    return torch.cat([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def key_out(rgb: Tensor, path: Path) -> Tensor:
    """The mask [H,W] of an RGB picture whose outer ring is one colour: pixels that differ from it."""
    ring = outer_ring(rgb)
    background = ring.median(0).values
    if (ring - background).abs().amax() > KEY_SPREAD:
        raise LodsgsError(f"{str(path)!r} is RGB without a plain background to key out; give an RGBA PNG whose "
                          "alpha is the object's mask (e.g. cut out with rembg)")
    return ((rgb - background).abs().amax(-1) > KEY_THRESHOLD).float()


def recenter(rgb: Tensor, mask: Tensor, size: int, border: float, background: Tensor) -> tuple[Tensor, Tensor]:
    """Crop to the mask's box, scale its longer side to round(size·(1 − border)), centre it in a size² frame
    (dreamgaussian/dreamgaussian process.py: ``border_ratio``)."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    h, w = y1 - y0, x1 - x0
    side = max(round(size * (1 - border)), 1)
    nh, nw = max(round(h * side / max(h, w)), 1), max(round(w * side / max(h, w)), 1)
    crop = torch.cat([rgb[y0:y1, x0:x1], mask[y0:y1, x0:x1, None]], -1)
    crop = resize(crop, nh, nw)
    out = torch.cat([background.expand(size, size, 3), torch.zeros(size, size, 1)], -1)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = crop
    return out[..., :3], out[..., 3]


def resize(image: Tensor, height: int, width: int) -> Tensor:
    """[H,W,C] to [height,width,C]: area averaging when shrinking (exact for integer factors), bilinear otherwise."""
    if image.shape[:2] == (height, width):
        return image
    shrink = height <= image.shape[0] and width <= image.shape[1]
    x = image.permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(height, width), mode="area") if shrink else \
        F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).clamp(0, 1)


def pad_square(rgb: Tensor, mask: Tensor, background: Tensor) -> tuple[Tensor, Tensor]:
    """Pad the shorter side, centred, so the picture is square (the reference camera's frame)."""
    h, w = mask.shape
    n = max(h, w)
    out = torch.cat([background.expand(n, n, 3), torch.zeros(n, n, 1)], -1).clone()
    top, left = (n - h) // 2, (n - w) // 2
    out[top:top + h, left:left + w] = torch.cat([rgb, mask[..., None]], -1)
    return out[..., :3], out[..., 3]


def load_reference(c: ImageConfig, size: int, background: tuple[float, float, float]) -> Reference:
    """The reference at size² for the reference camera: read, checked (an object, clear of the border),
    composited on ``background``, recentred when ``c.recenter`` (else padded square and resized)."""
    path = Path(c.path)
    rgb, mask = read_rgba(path)
    solid = mask > 0.5
    if not solid.any():
        raise LodsgsError(f"{str(path)!r} shows no object: its mask (alpha, or the keyed-out background) is empty")
    if outer_ring(solid).any():
        raise LodsgsError(f"the object in {str(path)!r} touches the image border, so part of it may be cut off; "
                          "pad the image or crop it with a margin around the object")
    bg = torch.tensor(background, dtype=torch.float32)
    rgb = rgb * mask[..., None] + bg * (1 - mask[..., None])
    if c.recenter:
        rgb, mask = recenter(rgb, mask, size, c.border, bg)
    else:
        rgb, mask = pad_square(rgb, mask, bg)
        both = resize(torch.cat([rgb, mask[..., None]], -1), size, size)
        rgb, mask = both[..., :3], both[..., 3]
    return Reference(rgb.contiguous(), mask.contiguous())


def reference_camera(cfg: Config) -> Cameras:
    """The camera the reference was taken from: azimuth 0, image.elevation, at image.radius / image.fovy (the
    prior's eval camera when unset), the training resolution."""
    c, cam = cfg.image, cfg.camera
    radius = c.radius if c.radius is not None else cam.eval_radius
    fovy = c.fovy if c.fovy is not None else cam.eval_fovy
    return orbit_cameras(c.elevation, 0.0, radius, fovy, cam.width, cam.height)


def append_camera(cams: Cameras, extra: Cameras) -> Cameras:
    """``cams`` followed by ``extra`` (same resolution): one render call covers the random and reference views."""
    return Cameras(torch.cat([cams.viewmats, extra.viewmats]), torch.cat([cams.Ks, extra.Ks.to(cams.Ks)]),
                   cams.width, cams.height, torch.cat([cams.elevation, extra.elevation]),
                   torch.cat([cams.azimuth, extra.azimuth]))


def ramp(c: ImageConfig, step: int, steps: int) -> float:
    """The weights' share at this step: linear from 1/n to 1 over the first n = ramp·steps steps (DreamGaussian's
    warm-up), 1 when off."""
    n = at_step(c.ramp, steps)
    return min((step + 1) / n, 1.0) if n > 0 else 1.0


def reference_loss(c: ImageConfig, rgb: Tensor, alpha: Tensor, ref: Reference, step: int,
                   steps: int) -> tuple[Tensor, dict]:
    """rgb_weight·MSE(rgb, ref.rgb) + mask_weight·MSE(alpha, ref.mask), ramped over the run's ``steps``; rgb
    [H,W,3], alpha [H,W]."""
    rgb_mse = F.mse_loss(rgb, ref.rgb)
    mask_mse = F.mse_loss(alpha, ref.mask)
    r = ramp(c, step, steps)
    loss = r * (c.rgb_weight * rgb_mse + c.mask_weight * mask_mse)
    return loss, {"ref_rgb_mse": rgb_mse, "ref_mask_mse": mask_mse}
