"""A mesh file's surface as coloured points, for the ``mesh`` start: area-weighted samples with the mesh's own
colours, in lodsgs's world (y up).

Colours, in order: a texture image sampled at each point's interpolated UV (sRGB, as glTF and OBJ store
textures); else the vertex colours interpolated (glTF COLOR_0 is linear, so it is turned into sRGB; OBJ and
PLY colours are taken as sRGB, what `lodsgs export` writes); else a material's flat base colour; else grey.
trimesh keeps a glTF COLOR_0 beside a material only as a vertex attribute, which it drops when a scene is
flattened, so glTF colours are turned into plain vertex colours per geometry first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lodsgs.errors import LodsgsError
from lodsgs.preflight import check_mesh_file
from lodsgs.settings import need_mesh_libraries

GREY = 0.5
GLTF = (".glb", ".gltf")


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function (IEC 61966-2-1) on linear values in [0, 1]."""
    c = np.clip(c, 0, 1)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def read_surface(path: Path):
    """A mesh file as one trimesh.Trimesh (scene graph transforms applied), glTF colours made sRGB vertex
    colours; a one-line LodsgsError for a missing, unreadable, empty or face-less file."""
    need_mesh_libraries(what="init.kind mesh", names=("trimesh",))
    import trimesh
    path = check_mesh_file(path)
    try:
        loaded = trimesh.load(str(path), process=False)
        if isinstance(loaded, trimesh.Scene):
            for geometry in loaded.geometry.values():
                if path.suffix.lower() in GLTF and isinstance(geometry, trimesh.Trimesh):
                    gltf_colours(geometry)
            loaded = loaded.to_mesh() if loaded.geometry else None
    except Exception as e:  # trimesh raises many types for foreign or truncated files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LodsgsError(f"cannot read {str(path)!r} as a mesh: {first}") from None
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0 or loaded.area <= 0:
        raise LodsgsError(f"cannot read {str(path)!r} as a mesh: it has no faces with an area (a point cloud? "
                          "use init.kind=ply for points)")
    return loaded


def gltf_colours(mesh) -> None:
    """A glTF geometry's linear colours (COLOR_0, else the material's base colour factor) as sRGB vertex colours,
    unless a texture image colours it."""
    from trimesh.visual import ColorVisuals
    visual = mesh.visual
    material = getattr(visual, "material", None)
    if image_of(material) is not None and getattr(visual, "uv", None) is not None:
        return
    linear = None
    if "color" in getattr(visual, "vertex_attributes", {}):  # COLOR_0 beside a material
        linear = np.asarray(visual.vertex_attributes["color"], np.float64)[:, :3]
    elif visual.kind == "vertex":  # COLOR_0 alone: trimesh stored it as uint8
        linear = np.asarray(visual.vertex_colors, np.float64)[:, :3] / 255
    elif getattr(material, "baseColorFactor", None) is not None:
        linear = np.tile(np.asarray(material.baseColorFactor, np.float64)[:3] / 255, (len(mesh.vertices), 1))
    if linear is not None:
        rgb = np.round(linear_to_srgb(linear) * 255)  # uint8: trimesh reads float colours as 0..1
        rgba = np.concatenate([rgb, np.full((len(rgb), 1), 255)], 1).astype(np.uint8)
        mesh.visual = ColorVisuals(mesh, vertex_colors=rgba)


def image_of(material):
    """A material's colour texture (PIL image), or None."""
    return getattr(material, "baseColorTexture", None) or getattr(material, "image", None)


def sample_surface(mesh, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform over the surface by area (seeded) and their sRGB colours in [0, 1], [n,3] each."""
    import trimesh
    points, faces, bary = trimesh.sample.sample_surface(mesh, n, return_barycentric=True, seed=seed)
    return np.asarray(points), point_colours(mesh, faces, bary)


def point_colours(mesh, faces: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """sRGB colours [n,3] of points given by face index and barycentric coordinates (see the module's order)."""
    from trimesh.visual.color import uv_to_interpolated_color
    visual = mesh.visual
    corners = mesh.faces[faces]  # [n,3] vertex indices
    image = image_of(getattr(visual, "material", None))
    if image is not None and getattr(visual, "uv", None) is not None:
        uv = (np.asarray(visual.uv)[corners] * bary[..., None]).sum(1)
        return uv_to_interpolated_color(uv, image)[:, :3] / 255.0
    if visual.kind == "vertex":
        rgb = np.asarray(visual.vertex_colors, np.float64)[:, :3] / 255.0
        return (rgb[corners] * bary[..., None]).sum(1)
    if visual.kind == "face":
        return np.asarray(visual.face_colors, np.float64)[faces, :3] / 255.0
    material = getattr(visual, "material", None)
    flat = getattr(material, "diffuse", None) if material is not None else None
    rgb = np.asarray(flat, np.float64)[:3] / 255.0 if flat is not None else np.full(3, GREY)
    return np.tile(rgb, (len(faces), 1))


def z_up_to_y_up(points: np.ndarray) -> np.ndarray:
    """(x, y, z) -> (x, z, -y): a z-up world (Blender's, Shap-E's; front towards -y) into lodsgs's (y up, front
    towards +z); the rotation by -90° about x that Blender's glTF exporter applies."""
    return np.stack([points[:, 0], points[:, 2], -points[:, 1]], -1)


def fit_sphere(points: np.ndarray, vertices: np.ndarray, radius: float) -> np.ndarray:
    """``points`` moved so the middle of the vertices' bounding box is the origin and scaled so the farthest
    vertex from it lies at ``radius``: the bounding sphere of the ball start."""
    centre = (vertices.min(0) + vertices.max(0)) / 2
    reach = float(np.linalg.norm(vertices - centre, axis=1).max())
    return (points - centre) * (radius / reach if reach > 0 else 1.0)
