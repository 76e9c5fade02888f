"""Splats to a watertight triangle mesh on the CPU, textured or vertex-coloured: GLB (glTF 2.0), OBJ or PLY.

The path, one function a step: the opacity density sum_i o_i exp(-1/2 d^T S_i^-1 d) of the Gaussians on a grid
around them (as DreamGaussian's extraction, each Gaussian added over the voxels near it only); the inside of
closed surfaces filled (splats of a surface are a shell with a hollow inside); struts thinner than two cells
dropped (stray Gaussians' bridges, which add handles the renders do not show); marching cubes (scikit-image's
Lewiner variant, which resolves the ambiguous cube cases so the surface is closed and manifold); clean-up with
trimesh (merge vertices, drop small pieces); optional quadric decimation (fast-simplification); colours taken
from the splats' own renders (bake.py): a UV atlas and its texture, or one colour a vertex. Axes are lodsgs's
world: y up, the front facing +z, one unit one metre, which is glTF's convention, so no transform is applied.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lodsgs.config import MeshConfig, need_mesh_libraries  # noqa: F401  (re-exported: the mesh API)
from lodsgs.errors import LodsgsError
from lodsgs.splats.bake import Texture, bake_texture, view_colours
from lodsgs.splats.glb import ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER, add_accessor, glb_json_bytes, pack_glb
from lodsgs.splats.model import Splats

SEAL = 8  # cells: the shell is thickened by this much to find its inside (pinholes up to 2·SEAL cells)
STRUT = 1  # cells: solid parts thinner than 2·STRUT cells (bridges of stray Gaussians) are dropped
MARGIN = SEAL + 2  # empty cells around the splats, so the closing and the surface never touch the grid's edge
BLUR = 0.5  # cells: every Gaussian is widened by this std
TAIL = 0.01  # contributions o·exp(-m²/2) below this are left out of the density


@dataclass
class Grid:
    origin: Tensor  # [3] world position of voxel (0, 0, 0)
    voxel: float  # cell size, world units
    shape: tuple[int, int, int]


def covariances(splats: Splats, blur: float) -> tuple[Tensor, Tensor]:
    """Covariances and their inverses [N,3,3] of the Gaussians widened by an isotropic ``blur`` (std, world
    units): a surface's splats are flat, often thinner than a cell, and unwidened they would be missed between
    grid points. Opacities are kept, so a sheet of opaque splats is dense whatever its thickness."""
    from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
    wide = (splats.scales.detach().pow(2) + blur**2).sqrt()
    return _quat_scale_to_covar_preci(splats.quats.detach(), wide, compute_covar=True, compute_preci=True)


def grid_box(splats: Splats, resolution: int) -> Grid:
    """A cubic-celled grid around the Gaussians (3 sigma), ``resolution`` cells along the longest side, with
    MARGIN empty cells around them so the surface closes."""
    means = splats.means.detach()
    reach = 3 * splats.scales.detach().amax(-1, keepdim=True)
    lo, hi = (means - reach).amin(0), (means + reach).amax(0)
    voxel = float((hi - lo).max()) / resolution
    shape = tuple(int(n) + 1 + 2 * MARGIN for n in ((hi - lo) / voxel).ceil().tolist())
    return Grid(lo - MARGIN * voxel, voxel, shape)


@torch.no_grad()
def density_grid(splats: Splats, grid: Grid, chunk: int = 4_000_000) -> Tensor:
    """The opacity density at every grid point, each Gaussian added over the box of cells its tail reaches
    (Gaussians grouped by that box's size, a chunk of them at a time)."""
    covar, inv = covariances(splats, BLUR * grid.voxel)
    opacity = splats.opacities.detach()
    live = opacity > TAIL
    covar, inv, opacity, means = covar[live], inv[live], opacity[live], splats.means.detach()[live]
    reach = (2 * (opacity / TAIL).log()).sqrt()  # Mahalanobis radius where the contribution falls to TAIL
    extent = reach[:, None] * covar.diagonal(dim1=1, dim2=2).sqrt()  # axis-aligned half-sizes
    cells = (extent / grid.voxel).ceil().clamp(1, max(grid.shape)).long()
    # half-sides in cells: an axis the Gaussian is thin along keeps its own (1-3), the others take the largest,
    # so there are few distinct boxes (one vectorized pass each) and flat axis-aligned Gaussians stay cheap
    box = torch.where(cells <= 3, cells, cells.amax(-1, keepdim=True))
    flat = torch.zeros(math.prod(grid.shape))
    dims = torch.tensor(grid.shape)
    strides = torch.tensor([grid.shape[1] * grid.shape[2], grid.shape[2], 1])
    for half in box.unique(dim=0).tolist():  # Gaussians with the same box: one vectorized pass
        idx = (box == torch.tensor(half)).all(-1).nonzero()[:, 0]
        axes = [torch.arange(-h, h + 1) for h in half]
        offsets = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        step = max(1, chunk // len(offsets))
        for i in range(0, len(idx), step):
            j = idx[i:i + step]
            centre = ((means[j] - grid.origin) / grid.voxel).round().long()
            at = centre[:, None] + offsets[None]  # [n,K,3]
            d = grid.origin + at * grid.voxel - means[j][:, None]
            m2 = quadratic_form(d, inv[j])
            val = opacity[j][:, None] * torch.exp(-0.5 * m2)
            ok = (m2 < reach[j, None] ** 2) & ((at >= 0) & (at < dims)).all(-1)
            flat.index_add_(0, (at[ok] * strides).sum(-1), val[ok])
    return flat.reshape(grid.shape)


def quadratic_form(d: Tensor, A: Tensor) -> Tensor:
    """d^T A d for d [n,K,3] and symmetric A [n,3,3], as six products (faster than a batched matmul)."""
    a = A[:, None]
    x, y, z = d.unbind(-1)
    return (a[..., 0, 0] * x * x + a[..., 1, 1] * y * y + a[..., 2, 2] * z * z
            + 2 * (a[..., 0, 1] * x * y + a[..., 0, 2] * x * z + a[..., 1, 2] * y * z))


def fill_inside(field: np.ndarray, threshold: float, seal: int = SEAL) -> np.ndarray:
    """The field raised above ``threshold`` inside closed surfaces: splats cover a surface, so the density of a
    closed object is a shell with a hollow inside; filling it leaves one surface, the outer one. The shell is
    thickened by ``seal`` cells before its inside is filled (a one-cell sheet leaks between diagonal cells, and
    randomly placed Gaussians leave pinholes), then the filled solid is thinned back by as much (a closing), so
    pinholes up to 2·``seal`` cells wide are shut and the outside keeps its shape."""
    from scipy.ndimage import binary_dilation, binary_erosion, binary_fill_holes
    solid = binary_erosion(binary_fill_holes(binary_dilation(field > threshold, iterations=seal)), iterations=seal)
    out = field.copy()
    out[solid] = np.maximum(out[solid], 2 * threshold)
    return out


def drop_struts(field: np.ndarray, threshold: float, cells: int = STRUT) -> np.ndarray:
    """The field lowered below ``threshold`` where the solid is thinner than 2·``cells`` cells (a morphological
    opening): stray Gaussians between parts leave thin bridges that would add handles (genus) the renders
    do not show."""
    from scipy.ndimage import binary_dilation, binary_erosion
    solid = field > threshold
    keep = binary_dilation(binary_erosion(solid, iterations=cells), iterations=cells)
    out = field.copy()
    out[solid & ~keep] = 0.5 * threshold
    return out


def surface(field: np.ndarray, grid: Grid, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes (scikit-image, Lewiner) at ``threshold``: vertices in world units and faces."""
    from skimage.measure import marching_cubes
    peak = float(field.max())
    if peak <= threshold:
        raise LodsgsError(f"no surface at mesh.threshold={threshold:g}: the splats' density peaks at {peak:.3g}; "
                          "set a lower mesh.threshold")
    verts, faces, _, _ = marching_cubes(field, level=threshold, spacing=(grid.voxel,) * 3, allow_degenerate=False)
    return verts + grid.origin.numpy(), faces


def clean(verts: np.ndarray, faces: np.ndarray, min_component: float):
    """A trimesh with close vertices merged, degenerate faces dropped, pieces under ``min_component`` of the
    largest piece's faces dropped, and every piece wound outwards (counter-clockwise seen from outside)."""
    import trimesh
    mesh = trimesh.Trimesh(verts, faces, process=True, validate=True)
    pieces = mesh.split(only_watertight=False)
    if len(pieces) > 1:
        largest = max(len(p.faces) for p in pieces)
        mesh = trimesh.util.concatenate([p for p in pieces if len(p.faces) >= min_component * largest])
    trimesh.repair.fix_normals(mesh, multibody=True)
    return mesh


def decimate(mesh, faces: int, min_component: float):
    """Quadric decimation (fast-simplification through trimesh) to about ``faces`` faces, cleaned again (it
    leaves stray two-face slivers behind); unchanged if the mesh already has fewer. A watertight mesh stays
    watertight: a target whose collapses pinch an edge is retried at ±10 % faces, else the mesh is kept whole."""
    if faces <= 0 or len(mesh.faces) <= faces:
        return mesh
    need_mesh_libraries(decimate=True)
    for target in (faces, int(faces * 0.9), int(faces * 1.1)):  # a collapse can pinch an edge onto 4 faces
        out = mesh.simplify_quadric_decimation(face_count=target)
        out = clean(out.vertices, out.faces, min_component)
        if out.is_watertight or not mesh.is_watertight:
            return out
    return mesh  # every try broke a watertight surface: keep it undecimated


def splats_to_mesh(splats: Splats, cfg: MeshConfig | None = None):
    """The whole path: a trimesh.Trimesh, textured when ``cfg.texture`` > 0 (its vertices split along the UV
    atlas's seams; ``metadata["uv"]`` [V,2] in glTF's convention and ``metadata["texture"]`` [S,S,3] float sRGB,
    also as trimesh's ``visual``), else with sRGB vertex colours (``visual.vertex_colors``, uint8, and the float
    colours in ``metadata["rgb"]``); a one-line LodsgsError for empty, transparent or surfaceless splats."""
    cfg = cfg or MeshConfig()
    need_mesh_libraries(decimate=cfg.faces > 0, texture=cfg.texture > 0)
    if splats.num == 0 or float(splats.opacities.detach().max()) <= TAIL:
        raise LodsgsError("the splats are empty or fully transparent: there is no surface to mesh")
    grid = grid_box(splats, cfg.resolution)
    field = drop_struts(fill_inside(density_grid(splats, grid).numpy(), cfg.threshold), cfg.threshold)
    mesh = decimate(clean(*surface(field, grid, cfg.threshold), cfg.min_component), cfg.faces, cfg.min_component)
    verts, faces, normals = (np.asarray(a) for a in (mesh.vertices, mesh.faces, mesh.vertex_normals))
    if cfg.texture > 0:
        return textured(verts, normals, bake_texture(verts, faces, normals, splats, cfg, tolerance=2 * grid.voxel))
    v = torch.tensor(verts, dtype=torch.float32)
    rgb = view_colours(v, torch.tensor(normals, dtype=torch.float32), v, torch.tensor(faces), splats, cfg.views,
                       cfg.view_size, tolerance=2 * grid.voxel).numpy()
    mesh.visual.vertex_colors = np.concatenate([np.round(rgb * 255), np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
    mesh.metadata["rgb"] = rgb
    return mesh


def textured(verts: np.ndarray, normals: np.ndarray, tex: Texture):
    """The UV-mapped trimesh of a baked texture: vertices copied from the watertight mesh's (normals too, so
    shading stays smooth across seams), trimesh's TextureVisuals (its uv has v up) and lodsgs's metadata."""
    import trimesh
    from PIL import Image
    mesh = trimesh.Trimesh(verts[tex.source], tex.faces, process=False)
    mesh.vertex_normals = normals[tex.source]
    material = trimesh.visual.material.SimpleMaterial(image=Image.fromarray(to_uint8(tex.image)),
                                                      diffuse=(255, 255, 255, 255), specular=(0, 0, 0, 255))
    mesh.visual = trimesh.visual.TextureVisuals(uv=tex.uv * [1, -1] + [0, 1], material=material)
    mesh.metadata.update(uv=tex.uv, texture=tex.image)
    return mesh


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function undone (IEC 61966-2-1): glTF vertex colours are linear."""
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


# glTF's unlit material (KHR_materials_unlit): a viewer shows COLOR_0 or the texture as it is, unchanged by lights
UNLIT_MATERIAL = {"pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                           "roughnessFactor": 1.0},
                  "extensions": {"KHR_materials_unlit": {}}}
LINEAR, CLAMP_TO_EDGE = 9729, 33071  # glTF sampler filter and wrap modes


def glb_bytes(verts: np.ndarray, normals: np.ndarray, faces: np.ndarray, rgb: np.ndarray | None = None, *,
              uv: np.ndarray | None = None, png: bytes | None = None) -> bytes:
    """A binary glTF 2.0 file of one unlit (KHR_materials_unlit) mesh, so a viewer shows the splats' sRGB colours
    unchanged by lighting: textured (TEXCOORD_0 ``uv`` [V,2] and the sRGB ``png`` as baseColorTexture, filtered
    linearly and clamped at the edges) or vertex-coloured (float linear COLOR_0 from sRGB ``rgb`` [V,3]).
    trimesh's writer has neither unlit materials nor float colours (it stores uint8, whose steps are 0.05 in
    dark sRGB once linear)."""
    material = copy.deepcopy(UNLIT_MATERIAL)
    colour = "TEXCOORD_0" if png is not None else "COLOR_0"
    blob, doc = bytearray(), {"asset": {"version": "2.0", "generator": "lodsgs"},
                              "extensionsUsed": ["KHR_materials_unlit"], "scene": 0, "scenes": [{"nodes": [0]}],
                              "nodes": [{"mesh": 0, "name": "splats"}],
                              "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1, colour: 2},
                                                          "indices": 3, "material": 0, "mode": 4}]}],
                              "materials": [material], "buffers": [], "bufferViews": [], "accessors": []}
    add_accessor(blob, doc, np.asarray(verts, "<f4"), 5126, "VEC3", ARRAY_BUFFER, bounds=True)
    add_accessor(blob, doc, np.asarray(normals, "<f4"), 5126, "VEC3", ARRAY_BUFFER)
    if png is not None:
        add_accessor(blob, doc, np.asarray(uv, "<f4"), 5126, "VEC2", ARRAY_BUFFER)
    else:
        add_accessor(blob, doc, srgb_to_linear(np.asarray(rgb, np.float64)).astype("<f4"), 5126, "VEC3", ARRAY_BUFFER)
    add_accessor(blob, doc, np.asarray(faces, "<u4").reshape(-1), 5125, "SCALAR", ELEMENT_ARRAY_BUFFER)
    if png is not None:  # the PNG as one more bufferView (no target: not vertex data), then its image and texture
        doc["bufferViews"].append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(png)})
        blob += png + b"\0" * (-len(png) % 4)
        doc |= {"images": [{"bufferView": len(doc["bufferViews"]) - 1, "mimeType": "image/png"}],
                "samplers": [{"magFilter": LINEAR, "minFilter": LINEAR, "wrapS": CLAMP_TO_EDGE,
                              "wrapT": CLAMP_TO_EDGE}],
                "textures": [{"sampler": 0, "source": 0}]}
        material["pbrMetallicRoughness"]["baseColorTexture"] = {"index": 0}
    doc["buffers"] = [{"byteLength": len(blob)}]
    return pack_glb(doc, blob)


def png_bytes(image: np.ndarray) -> bytes:
    """An sRGB image [H,W,3] in [0, 1] as PNG bytes."""
    import io

    from PIL import Image
    out = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(out, format="PNG")
    return out.getvalue()


def write_mesh(mesh, path: Path, fmt: str) -> None:
    """Write ``mesh`` as ``glb``, ``obj`` or ``mesh-ply`` (uchar vertex colours), atomically; y up in every
    format. A textured OBJ is three files: PATH, its .mtl and its .png beside it (the .obj written last, so an
    .obj on disk has its material); a vertex-coloured one writes 'v x y z r g b'."""
    from lodsgs.files import atomic_path
    path = Path(path)
    textured = "texture" in mesh.metadata
    if fmt == "obj" and textured:
        from trimesh.exchange.obj import export_obj
        mesh.visual.material.name = path.stem
        text, files = export_obj(mesh, include_normals=True, return_texture=True, mtl_name=f"{path.stem}.mtl",
                                 header="lodsgs")
        for name, data in sorted(files.items(), key=lambda item: item[0].endswith(".mtl")):  # .png, then .mtl
            with atomic_path(path.with_name(name)) as tmp:
                tmp.write_bytes(data)
    with atomic_path(path) as tmp:
        if fmt == "glb" and textured:
            tmp.write_bytes(glb_bytes(mesh.vertices, mesh.vertex_normals, mesh.faces, uv=mesh.metadata["uv"],
                                      png=png_bytes(mesh.metadata["texture"])))
        elif fmt == "glb":
            tmp.write_bytes(glb_bytes(mesh.vertices, mesh.vertex_normals, mesh.faces, mesh.metadata["rgb"]))
        elif fmt == "obj" and textured:
            tmp.write_text(text)
        else:
            mesh.export(str(tmp), file_type={"obj": "obj", "mesh-ply": "ply"}[fmt])


def load_mesh(path: Path):
    """A mesh file (.glb, .gltf, .obj, .ply with faces) as one trimesh.Trimesh, or a one-line LodsgsError."""
    need_mesh_libraries()
    import trimesh
    try:
        mesh = trimesh.load(str(path), force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for foreign or truncated files
        raise LodsgsError(f"cannot read {str(path)!r} as a mesh: {str(e).splitlines()[0] if str(e) else e}") from None
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise LodsgsError(f"cannot read {str(path)!r} as a mesh: it has no faces")
    mesh.metadata["colours"] = mesh.visual.kind == "vertex" or (
        Path(path).suffix.lower() == ".glb" and "COLOR_0" in glb_json(Path(path)).decode(errors="replace"))
    return mesh


def texture_size(mesh) -> tuple[int, int] | None:
    """(width, height) of the colour texture a mesh's UVs map (a glTF baseColorTexture, an OBJ map_Kd), else None."""
    from lodsgs.splats.surface import image_of
    image = image_of(getattr(mesh.visual, "material", None))
    return tuple(image.size) if image is not None and getattr(mesh.visual, "uv", None) is not None else None


def glb_json(path: Path) -> bytes:
    """The JSON chunk of a binary glTF file (trimesh keeps no COLOR_0 beside a material, so ``info`` reads it)."""
    return glb_json_bytes(path)


def mesh_summary(mesh) -> dict:
    """Vertices, faces, pieces, watertight, Euler number, genus (total over pieces, when watertight), bounds,
    vertex colours or not, texture size (or None)."""
    merged = mesh.copy()
    merged.merge_vertices(merge_tex=True, merge_norm=True)  # split at UV seams or by readers; topology: shared
    pieces = len(merged.split(only_watertight=False))
    watertight = bool(merged.is_watertight)
    euler = int(merged.euler_number)
    return {"vertices": len(mesh.vertices), "faces": len(mesh.faces), "pieces": pieces, "watertight": watertight,
            "euler": euler, "genus": (2 * pieces - euler) // 2 if watertight else None,
            "bounds": np.round(mesh.bounds, 3).tolist(),
            "colours": mesh.metadata.get("colours", mesh.visual.kind == "vertex"), "texture": texture_size(mesh)}
