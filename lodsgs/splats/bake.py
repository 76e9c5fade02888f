"""A mesh's colours from its splats' own renders: per vertex, or baked into a UV-mapped texture.

Both take the colour of a surface point the same way (``view_colours``): the splats are rendered by lodsgs's
renderer from orbit views framing the mesh (without the object's far side, ``front_renders``), the mesh's own
z-buffer (``mesh_render``) says which views see the point, and the point takes the mean of those views'
colours at its pixel, weighted by coverage and by how squarely each view faces it relative to the squarest.
A texture (``bake_texture``) does this for every texel: the mesh is unwrapped into a UV atlas by xatlas, the
atlas's triangles are rasterized in texture space to give each texel its 3D point and normal, and the texels
no triangle covers take their nearest covered texel's colour, so bilinear filtering across a chart's edge
never reads background. DreamGaussian's ``save_model`` (dreamgaussian/dreamgaussian main.py) bakes from views
in the same layout (8 azimuths at 0° and ±45°, top and bottom; 512 px), scattering each view's pixels into the
texture on a GPU; here each texel gathers its colour from the views, on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lodsgs.cameras import Cameras
from lodsgs.config import MeshConfig
from lodsgs.splats.model import Splats

PIECE_FACES = 500  # the mesh is cut into pieces of about this many faces before unwrapping (see ``unwrap``)
PADDING = 2  # atlas texels between charts, so bilinear filtering at a chart's edge stays inside the chart
POWER = 8  # views are weighted by (cos / the squarest view's cos)^POWER: 1 for the squarest, 0.89 at 10° more
FAR = 0.25  # Gaussians more than FAR × the mesh's bounding diameter behind its depth are left out of a view
CHUNK = 65536  # surface points projected into every view at a time


@dataclass
class Texture:
    """A UV-mapped mesh: vertices split along the atlas's seams (``source``: the input vertex each copies)."""

    source: np.ndarray  # [V'] int: index into the unwrapped mesh's vertices
    faces: np.ndarray  # [F,3] into the split vertices
    uv: np.ndarray  # [V',2] in [0,1], u to the right and v down from the image's top-left corner (glTF's)
    image: np.ndarray  # [S,S,3] float sRGB in [0,1]


def colour_cameras(centre: Tensor, radius: float, n: int, size: int) -> Cameras:
    """Orbit cameras around ``centre`` framing a sphere of ``radius``, seeing every side: n azimuths at 0° and
    ±45° elevation (the ±45° rings turned by half a step), plus top and bottom (DreamGaussian's rings)."""
    from lodsgs.cameras import orbit_cameras
    az = torch.arange(n) * 360.0 / n
    elev = torch.cat([torch.full((n,), 0.0), torch.full((n,), 45.0), torch.full((n,), -45.0),
                      torch.tensor([89.0, -89.0])])
    azim = torch.cat([az, az + 180.0 / n, az + 180.0 / n, torch.zeros(2)])
    fovy = 40.0
    distance = radius / math.sin(math.radians(fovy / 2)) * 1.05
    m = len(elev)
    return orbit_cameras(elev, azim, torch.full((m,), distance), torch.full((m,), fovy), size, size,
                         targets=centre.expand(m, 3))


@torch.no_grad()
def view_colours(points: Tensor, normals: Tensor, verts: Tensor, faces: Tensor, splats: Splats, views: int,
                 size: int, tolerance: float) -> Tensor:
    """sRGB colours [P,3] of surface points (with their normals [P,3]) on the mesh (verts, faces): the mean of
    the splats' renders at the points' pixels over the views whose mesh depth buffer shows the point (within
    ``tolerance``) facing the camera, weighted by alpha and by (cos / best view's cos)^POWER; points no view
    sees take their nearest Gaussians' colour."""
    from lodsgs.splats.mesh_render import render_mesh
    centre = (verts.amin(0) + verts.amax(0)) / 2
    radius = float((verts - centre).norm(dim=-1).max())
    cams = colour_cameras(centre, radius, views, size)
    zbuf = render_mesh(verts, faces, torch.zeros_like(verts), cams).depth  # [C,H,W]
    images = front_renders(splats, cams, zbuf, FAR * 2 * radius)  # [C,4,H,W]
    rgb, cover = torch.zeros(len(points), 3), torch.zeros(len(points))
    for i in range(0, len(points), CHUNK):
        rgb[i:i + CHUNK], cover[i:i + CHUNK] = gather(points[i:i + CHUNK], normals[i:i + CHUNK], cams, images,
                                                      zbuf, tolerance)
    rgb = rgb / cover.clamp_min(1e-12)[:, None]
    unseen = cover < 1e-3
    if unseen.any():
        rgb[unseen] = nearest_gaussian_colors(points[unseen], splats)
    return rgb.clamp(0, 1)


def front_renders(splats: Splats, cams: Cameras, zbuf: Tensor, depth: float) -> Tensor:
    """RGB (premultiplied, over black) and alpha [C,4,H,W] of each view, rendered by lodsgs's renderer without
    the Gaussians whose centres lie more than ``depth`` behind the mesh's depth there: the object's far side,
    which shows through the gaps between small Gaussians (a 40,000-Gaussian sphere's near half alone covers
    96 % of its silhouette at 256 px) and would tint each view with another part of the surface; the layers
    under the surface stay, as they colour the splats' own renders. It also saves work (fewer Gaussians)."""
    from lodsgs.splats.mesh_render import project
    from lodsgs.splats.render import render
    uv, z = project(splats.means.detach().cpu(), cams)  # [C,N,2], [C,N]
    px = uv.floor().long()
    on = ((px >= 0) & (px < zbuf.shape[-1])).all(-1)
    out = []
    for c in range(len(cams)):
        x, y = px[c, :, 0].clamp(0, zbuf.shape[2] - 1), px[c, :, 1].clamp(0, zbuf.shape[1] - 1)
        keep = ~on[c] | (z[c] <= zbuf[c, y, x] + depth)
        front = Splats({k: v.detach()[keep.to(v.device)] for k, v in splats.params.items()}, splats.sh_degree)
        shot = render(front, cams[[c]])
        out.append(torch.cat([shot.rgb, shot.alpha], -1)[0].permute(2, 0, 1).cpu())
    return torch.stack(out)


def gather(points: Tensor, normals: Tensor, cams: Cameras, images: Tensor, zbuf: Tensor,
           tolerance: float) -> tuple[Tensor, Tensor]:
    """Weighted sums of premultiplied colour [P,3] and of alpha [P] of the views at the points' pixels
    (bilinear: pixel centres at +0.5, as both renderers)."""
    from lodsgs.splats.mesh_render import project
    size = images.shape[-1]
    uv, z = project(points, cams)  # [C,P,2], [C,P]
    grid = (uv / size * 2 - 1)[:, :, None]  # [C,P,1,2] for grid_sample (align_corners=False: pixel centres)
    sampled = torch.nn.functional.grid_sample(images, grid, align_corners=False)[..., 0]  # [C,4,P]
    px = uv.floor().long().clamp(0, size - 1)
    nearest = zbuf[torch.arange(len(cams))[:, None], px[..., 1], px[..., 0]]
    seen = (z <= nearest + tolerance) & (uv >= 0).all(-1) & (uv < size).all(-1)
    towards = torch.nn.functional.normalize(cams.positions[:, None] - points[None], dim=-1)
    cos = (towards * normals[None]).sum(-1).clamp_min(0) * seen  # [C,P]
    weight = (cos / cos.amax(0).clamp_min(1e-6)) ** POWER  # the squarest view that sees the point: 1
    return (weight[:, None] * sampled[:, :3]).sum(0).T, (weight * sampled[:, 3]).sum(0)


def nearest_gaussian_colors(points: Tensor, splats: Splats, k: int = 8) -> Tensor:
    """Opacity- and inverse-distance-weighted colour of the ``k`` Gaussians nearest each point."""
    from scipy.spatial import cKDTree
    means = splats.means.detach().cpu().numpy()
    rgb, op = splats.rgb.detach().clamp(0, 1).cpu(), splats.opacities.detach().cpu()
    d, j = cKDTree(means).query(points.numpy(), min(k, len(means)))
    d, j = torch.tensor(d, dtype=torch.float32).reshape(len(points), -1), torch.tensor(j).reshape(len(points), -1)
    w = op[j] / (d + 1e-4)
    return (w[..., None] * rgb[j]).sum(1) / w.sum(1, keepdim=True)


def unwrap(verts: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xatlas's UV atlas of the mesh for a ``size``² texture: (source vertex [V'], faces [F,3], uv [V',2]).
    xatlas's chart growing takes time superlinear in a connected piece's faces (one thread, a 30k-face
    marching-cubes cube: 11-17 s whole, 1.6 s in 64 pieces), so the mesh is first cut into k³ pieces of about
    PIECE_FACES faces, k quantiles of the face centres along each axis; the cuts are seams like any other."""
    import xatlas
    centres = verts[faces].mean(1)
    k = max(1, round((len(faces) / PIECE_FACES) ** (1 / 3)))
    piece = np.zeros(len(faces), np.int64)
    for axis in range(3):
        cuts = np.quantile(centres[:, axis], np.linspace(0, 1, k + 1)[1:-1])
        piece = piece * k + np.searchsorted(cuts, centres[:, axis])
    atlas, used = xatlas.Atlas(), []
    for p in np.unique(piece):
        ids, local = np.unique(faces[piece == p], return_inverse=True)
        atlas.add_mesh(verts[ids].astype(np.float32), local.reshape(-1, 3).astype(np.uint32))
        used.append(ids)
    pack = xatlas.PackOptions()
    pack.padding, pack.bilinear = PADDING, True
    pack.texels_per_unit = 0.9 * size / math.sqrt(mesh_area(verts, faces))  # one atlas of about size² texels
    atlas.generate(xatlas.ChartOptions(), pack)
    source, out_faces, uvs, offset = [], [], [], 0
    for i, ids in enumerate(used):
        vmap, idx, uv = atlas[i]  # uv in [0, 1]: atlas texels over the atlas's width and height
        source.append(ids[vmap])
        out_faces.append(idx.astype(np.int64) + offset)
        uvs.append(uv)
        offset += len(vmap)
    return np.concatenate(source), np.concatenate(out_faces), np.concatenate(uvs).astype(np.float64)


def mesh_area(verts: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (verts[faces[:, i]] for i in range(3))
    return float(0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1).sum())


def texel_points(uv: np.ndarray, faces: np.ndarray, verts: np.ndarray, normals: np.ndarray,
                 size: int) -> tuple[Tensor, Tensor, Tensor]:
    """The texels whose centres the atlas's triangles cover: flat texel index [T], 3D point [T,3] and unit
    normal [T,3], by rasterizing the triangles in texture space (mesh_render's rasterizer at constant depth)."""
    from lodsgs.splats.mesh_render import fragments
    at = torch.tensor(uv * size, dtype=torch.float32)[None]
    pix, _, fid, bary = fragments(at, torch.ones(1, len(uv)), torch.tensor(faces), size, size)
    pix, first = np.unique(pix.numpy(), return_index=True)  # a texel centre on a shared edge: keep one face
    tri, w = torch.tensor(faces)[fid[first]], bary[first]
    v, n = torch.tensor(verts, dtype=torch.float32), torch.tensor(normals, dtype=torch.float32)
    points = (w[..., None] * v[tri]).sum(1)
    return torch.tensor(pix), points, torch.nn.functional.normalize((w[..., None] * n[tri]).sum(1), dim=-1)


def fill_gutters(image: np.ndarray, covered: np.ndarray) -> np.ndarray:
    """Every texel no triangle covers takes its nearest covered texel's colour (scipy's Euclidean distance
    transform), so no texel a triangle's bilinear lookup reads is background."""
    from scipy.ndimage import distance_transform_edt
    _, (iy, ix) = distance_transform_edt(~covered, return_indices=True)
    return image[iy, ix]


def bake_texture(verts: np.ndarray, faces: np.ndarray, normals: np.ndarray, splats: Splats, cfg: MeshConfig,
                 tolerance: float) -> Texture:
    """The mesh unwrapped and its ``cfg.texture``² texture taken from the splats' renders."""
    size = cfg.texture
    source, out_faces, uv = unwrap(verts, faces, size)
    pix, points, nrm = texel_points(uv, out_faces, verts[source], normals[source], size)
    v, f = torch.tensor(verts, dtype=torch.float32), torch.tensor(faces)
    rgb = view_colours(points, nrm, v, f, splats, cfg.views, cfg.view_size, tolerance)
    image = np.zeros((size * size, 3))
    image[pix.numpy()] = rgb.numpy()
    covered = np.zeros(size * size, bool)
    covered[pix.numpy()] = True
    image = fill_gutters(image.reshape(size, size, 3), covered.reshape(size, size))
    return Texture(source, out_faces, uv, image)
