"""A small z-buffer rasterizer for triangle meshes on the CPU (torch, vectorized over faces and pixels).

It draws vertex-coloured or textured meshes from the same OpenCV cameras as the splat renderer, so a mesh can be
compared with its splats pixel for pixel, and it gives the depth buffers that decide which surface points a view
sees.
Perspective-correct barycentrics; pixel centres at (i + 0.5, j + 0.5) as in the splat renderer; ``ssaa``
renders at a multiple of the size and averages (antialiased edges, as a browser draws them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lodsgs.cameras import Cameras

NEAR = 1e-3
FRAGMENTS_PER_CHUNK = 4_000_000


@dataclass
class MeshImages:
    rgb: Tensor  # [C,H,W,3] over the background
    alpha: Tensor  # [C,H,W] coverage in [0, 1] (0 or 1 without ssaa)
    depth: Tensor  # [C,H,W] camera depth of the nearest surface (inf where none; nearest sample with ssaa)


def project(verts: Tensor, cameras: Cameras, scale: int = 1) -> tuple[Tensor, Tensor]:
    """Pixel coordinates [C,V,2] and camera depth [C,V] of world points, at ``scale`` times the cameras' size."""
    R, t = cameras.viewmats[:, :3, :3].float(), cameras.viewmats[:, :3, 3].float()
    cam = torch.einsum("cij,vj->cvi", R, verts.float()) + t[:, None]
    z = cam[..., 2]
    K = cameras.Ks.float()
    uv = torch.stack([K[:, None, 0, 0] * cam[..., 0] / z.clamp_min(NEAR) + K[:, None, 0, 2],
                      K[:, None, 1, 1] * cam[..., 1] / z.clamp_min(NEAR) + K[:, None, 1, 2]], -1)
    return uv * scale, z


def fragments(uv: Tensor, z: Tensor, faces: Tensor, width: int, height: int) -> tuple[Tensor, ...]:
    """Every (pixel, face) pair whose pixel centre lies in the face: flat pixel index (camera-major), depth,
    face index and perspective-correct barycentrics [F,3]."""
    fu, fz = uv[:, faces], z[:, faces]  # [C,F,3,2], [C,F,3]
    lo = (fu.amin(2) - 0.5).ceil().long()
    hi = (fu.amax(2) - 0.5).floor().long()
    lo[..., 0].clamp_(min=0)
    lo[..., 1].clamp_(min=0)
    hi[..., 0].clamp_(max=width - 1)
    hi[..., 1].clamp_(max=height - 1)
    extent = (hi - lo + 1).amax(-1)  # [C,F] bounding-box side in pixels
    ok = (fz > NEAR).all(-1) & (extent > 0)
    out = []
    side = 1
    while True:  # faces grouped by bounding-box size: 1, 2, 4, ... pixels a side
        group = ok & (extent <= side) & (extent > side // 2 if side > 1 else extent >= 1)
        cams, fids = group.nonzero(as_tuple=True)
        chunk = max(1, FRAGMENTS_PER_CHUNK // (side * side))
        for i in range(0, len(cams), chunk):
            out.append(_cover(fu, fz, lo, hi, cams[i:i + chunk], fids[i:i + chunk], side, width, height))
        if side >= max(width, height) or not (ok & (extent > side)).any():
            break
        side *= 2
    if not out:
        empty = torch.zeros(0)
        return empty.long(), empty, empty.long(), torch.zeros(0, 3)
    pix, depth, fid, bary = (torch.cat(x) for x in zip(*out))
    return pix, depth, fid, bary


def _cover(fu, fz, lo, hi, cams, fids, side, width, height):
    """Fragments of the given (camera, face) pairs, testing the side x side pixels from each box corner."""
    oy, ox = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    px = lo[cams, fids, 0][:, None] + ox.reshape(1, -1)
    py = lo[cams, fids, 1][:, None] + oy.reshape(1, -1)
    inside_box = (px <= hi[cams, fids, 0][:, None]) & (py <= hi[cams, fids, 1][:, None])
    a, b, c = fu[cams, fids].unbind(1)  # [n,2] each
    cx, cy = px + 0.5, py + 0.5
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    w0 = (b[:, None, 0] - cx) * (c[:, None, 1] - cy) - (b[:, None, 1] - cy) * (c[:, None, 0] - cx)
    w1 = (c[:, None, 0] - cx) * (a[:, None, 1] - cy) - (c[:, None, 1] - cy) * (a[:, None, 0] - cx)
    solid = area.abs() > 1e-12  # a face seen edge-on covers nothing
    w = torch.stack([w0, w1, area[:, None] - w0 - w1], -1) / torch.where(solid, area, 1.0)[:, None, None]
    inside = inside_box & (w >= 0).all(-1) & solid[:, None]
    inv_z = 1.0 / fz[cams, fids]  # [n,3]
    persp = w * inv_z[:, None, :]
    zinv = persp.sum(-1)
    n_idx, k_idx = inside.nonzero(as_tuple=True)
    pix = cams[n_idx] * (width * height) + py[n_idx, k_idx] * width + px[n_idx, k_idx]
    z = 1.0 / zinv[n_idx, k_idx]
    bary = persp[n_idx, k_idx] / zinv[n_idx, k_idx, None]
    return pix, z, fids[n_idx], bary


@torch.no_grad()
def render_mesh(verts: Tensor, faces: Tensor, colors: Tensor | None, cameras: Cameras, background=(1.0, 1.0, 1.0),
                ssaa: int = 1, uv: Tensor | None = None, texture: Tensor | None = None) -> MeshImages:
    """Colour, coverage and depth of a mesh (verts [V,3], faces [F,3]) from every camera, over ``background``:
    vertex-coloured (colors [V,3]) or textured (uv [V,2] in glTF's convention, texture [S,S,3], sampled
    bilinearly as a viewer's linear filter does)."""
    verts, faces = torch.as_tensor(verts), torch.as_tensor(faces).long()
    C, W, H = len(cameras), cameras.width * ssaa, cameras.height * ssaa
    uv_px, z = project(verts, cameras, ssaa)
    pix, depth, fid, bary = fragments(uv_px, z, faces, W, H)
    zbuf = torch.full((C * H * W,), float("inf"))
    zbuf.scatter_reduce_(0, pix, depth, reduce="amin")
    win = depth <= zbuf[pix]
    rgb = torch.as_tensor(background, dtype=torch.float32).repeat(C * H * W, 1)
    alpha = torch.zeros(C * H * W)
    attribute = torch.as_tensor(colors if texture is None else uv).float()  # what is interpolated per pixel
    value = (bary[win, :, None] * attribute[faces[fid[win]]]).sum(1)
    rgb[pix[win]] = value if texture is None else sample_texture(torch.as_tensor(texture), value)
    alpha[pix[win]] = 1.0
    rgb, alpha, zbuf = rgb.reshape(C, H, W, 3), alpha.reshape(C, H, W), zbuf.reshape(C, H, W)
    if ssaa > 1:
        pool = torch.nn.functional.avg_pool2d
        rgb = pool(rgb.permute(0, 3, 1, 2), ssaa).permute(0, 2, 3, 1)
        alpha = pool(alpha[:, None], ssaa)[:, 0]
        zbuf = -torch.nn.functional.max_pool2d(-zbuf[:, None], ssaa)[:, 0]
    return MeshImages(rgb, alpha, zbuf)


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """Bilinear lookups [P,3] of a texture [S,S,3] at uv [P,2] (glTF's convention: texel centres at (i + 0.5) / S,
    v down from the top row), clamped at the edges, as a viewer's linear, clamp-to-edge sampler."""
    image = texture.float().permute(2, 0, 1)[None]
    grid = (uv.float() * 2 - 1)[None, :, None]  # [1,P,1,2]; align_corners=False puts -1 at the first texel's edge
    return torch.nn.functional.grid_sample(image, grid, align_corners=False, padding_mode="border")[0, :, :, 0].T
