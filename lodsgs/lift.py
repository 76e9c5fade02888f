"""Start from the prior's own picture: a DDIM sample of the prompt, lifted into the scene.

A ball start is symmetric, so a caption with two objects side by side has to break that symmetry while it
is optimised, and views that pull towards different layouts leave one merged blob. A sample has already
chosen a layout. ``layout`` finds where the sample's separate objects are (one centre per region);
``lift`` fills the whole sample: each foreground region inflated by its distance to the silhouette's edge
(a disc becomes a sphere, as in sketch-based modelling: Igarashi et al., "Teddy", SIGGRAPH 1999) and
coloured by the sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from lodsgs.cameras import Cameras

MAX_SIDE = 64  # images are lifted at most at 64² (an SD sample is 512²)


def foreground(image: Tensor, background: tuple[float, float, float], threshold: float = 0.15) -> Tensor:
    """Pixels [H,W] (bool) whose colour differs from the background by more than ``threshold`` in a channel."""
    bg = torch.tensor(background, dtype=image.dtype, device=image.device)
    return (image - bg).abs().amax(-1) > threshold


def inside_distance(mask: Tensor) -> Tensor:
    """Euclidean distance [H,W] from each foreground pixel to the nearest background pixel, the image's edge
    counting as background (0 on the background)."""
    h, w = mask.shape
    padded = F.pad(mask, (1, 1, 1, 1), value=False).flatten()
    yy, xx = torch.meshgrid(torch.arange(h + 2.0), torch.arange(w + 2.0), indexing="ij")
    yx = torch.stack([yy.flatten(), xx.flatten()], -1)
    dist = torch.zeros(padded.shape)
    dist[padded] = torch.cdist(yx[padded], yx[~padded]).min(1).values
    return dist.view(h + 2, w + 2)[1:-1, 1:-1]


def region_max(values: Tensor, mask: Tensor) -> Tensor:
    """Each foreground pixel gets the largest value of its 8-connected region: flood the maximum."""
    m = mask.float()[None, None]
    out = values[None, None] * m
    while True:
        grown = F.max_pool2d(out, 3, stride=1, padding=1) * m
        if torch.equal(grown, out):
            return out[0, 0]
        out = grown


def half_depth(mask: Tensor) -> Tensor:
    """Half the thickness [H,W], in pixels, of the inflated silhouette: √(d·(2R−d)) for a pixel at distance
    d from the rim of a region whose deepest pixel is at R, so a disc of radius R becomes a sphere."""
    d = inside_distance(mask) - 0.5
    r = region_max(d, mask)
    return (d * (2 * r - d)).clamp_min(0).sqrt() * mask


def coarse(image: Tensor) -> Tensor:
    """The image at most MAX_SIDE² (area-averaged): a coarse silhouette is enough, and keeps distances cheap."""
    if max(image.shape[:2]) <= MAX_SIDE:
        return image
    return F.interpolate(image.permute(2, 0, 1)[None], size=(MAX_SIDE, MAX_SIDE), mode="area")[0].permute(1, 2, 0)


def unproject(u: Tensor, v: Tensor, offset: Tensor, camera: Cameras, height: int, width: int) -> Tensor:
    """World points [N,3] at pixel coordinates (u, v) of a ``height``×``width`` image seen by ``camera`` (an
    orbit camera looking at the origin), ``offset`` world units beyond the plane through the origin."""
    K = camera.Ks[0].clone()
    K[:2] *= torch.tensor([width / camera.width, height / camera.height])[:, None]
    R, t = camera.viewmats[0, :3, :3], camera.viewmats[0, :3, 3]
    centre = -(R.T @ t)
    z = centre.norm() + offset  # the camera looks at the origin, so the origin's depth is the orbit radius
    x = (u - K[0, 2]) / K[0, 0] * z
    y = (v - K[1, 2]) / K[1, 1] * z
    return (R.T @ torch.stack([x, y, z])).T + centre


def lift(image: Tensor, camera: Cameras, num: int, background: tuple[float, float, float],
         seed: int = 0) -> tuple[Tensor, Tensor]:
    """``num`` points [num,3] and colours [num,3] filling the inflated foreground of ``image`` [H,W,3], seen by
    ``camera``."""
    image = coarse(image)
    mask = foreground(image, background)
    if not mask.any():
        raise ValueError("the sample has no foreground: every pixel is the background colour")
    h, w = mask.shape
    depth = half_depth(mask)
    g = torch.Generator().manual_seed(seed)
    pixel = torch.multinomial(depth.flatten() + mask.flatten() * 1e-3, num, replacement=True, generator=g)
    v, u = pixel // w, pixel % w
    world_per_pixel = camera.positions[0].norm() * camera.height / (camera.Ks[0, 1, 1] * h)
    offset = (2 * torch.rand(num, generator=g) - 1) * depth[v, u] * world_per_pixel
    points = unproject(u + torch.rand(num, generator=g), v + torch.rand(num, generator=g), offset, camera, h, w)
    return points, image[v, u]


def layout(image: Tensor, camera: Cameras, background: tuple[float, float, float],
           min_share: float = 0.1) -> tuple[Tensor, Tensor]:
    """Where the sample puts its objects: centres [k,3] and shares of the foreground [k] of its separate
    (8-connected) regions that hold at least ``min_share`` of it, lifted to the plane through the origin
    and re-centred on it (one region: the origin)."""
    image = coarse(image)
    mask = foreground(image, background)
    if not mask.any():
        raise ValueError("the sample has no foreground: every pixel is the background colour")
    h, w = mask.shape
    labels = region_max(torch.arange(1.0, h * w + 1).view(h, w), mask)
    ids, counts = labels[mask].unique(return_counts=True)
    keep = counts >= min_share * counts.sum()
    ids, shares = ids[keep], counts[keep] / counts[keep].sum()
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    centroids = torch.stack([torch.stack([u[labels == i].mean(), v[labels == i].mean()]) for i in ids])
    centres = unproject(centroids[:, 0], centroids[:, 1], torch.zeros(len(ids)), camera, h, w)
    return centres - centres.mean(0), shares
