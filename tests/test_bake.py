"""Textured meshes: the checkerboard sphere's colours survive into the texture, no texel a triangle samples is
background, the textured GLB and OBJ as files, mesh.texture=0 keeps vertex colours, and the projection the
colours rely on matches the splat renderer's."""

from __future__ import annotations

import dataclasses
import json
import struct

import numpy as np
import pytest
import torch

from benchmarks.bench_bake import (
    background_texels,
    checker_sphere,
    error_at_gaussians,
    sampled_texels,
    striped_cube,
)
from lodsgs.splats.mesh import MeshConfig, load_mesh, mesh_summary, splats_to_mesh, write_mesh

pytest.importorskip("skimage")
pytest.importorskip("trimesh")
pytest.importorskip("xatlas")
SMALL = MeshConfig(resolution=48, faces=3000, views=3, view_size=96, texture=256)


@pytest.fixture(scope="module")
def cube():
    """A striped cube of 6,000 Gaussians, meshed small and textured at 256²."""
    splats = striped_cube(stripes=6, n=6000, scale=0.02)
    return splats, splats_to_mesh(splats, SMALL)


def glb_document(path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<I", raw[12:16])[0]
    return json.loads(raw[20:20 + n]), raw[20 + n + 8:]


@pytest.mark.slow
def test_checkerboard_sphere_keeps_its_pattern_in_the_texture():
    """40,000 small Gaussians in a 16 × 32 checkerboard: the default export's colour at each Gaussian's centre is
    its own (vertex colours erred 0.14 there, chance is 0.25)."""
    splats = checker_sphere()
    mesh = splats_to_mesh(splats, MeshConfig())
    s = mesh_summary(mesh)
    assert s["watertight"] and s["genus"] == 0 and s["texture"] == (1024, 1024), s
    assert error_at_gaussians(mesh, splats) <= 0.05
    assert background_texels(mesh) == 0


def test_no_texel_a_triangle_samples_is_background(cube):
    splats, mesh = cube
    uv, faces, image = mesh.metadata["uv"], np.asarray(mesh.faces), mesh.metadata["texture"]
    sampled = sampled_texels(uv, faces, image.shape[0])
    covered = sampled_texels(uv, faces, image.shape[0], fine=1, grow=False)  # the texels coloured from the views
    assert (sampled & ~covered).sum() > 0.05 * covered.sum()  # seams: sampled, coloured by the gutter fill
    assert background_texels(mesh) == 0
    assert error_at_gaussians(mesh, splats) <= 0.1  # the stripes are there (chance: 0.25)


def test_textured_glb_is_unlit_with_texcoords_a_png_and_a_linear_clamped_sampler(cube, tmp_path):
    _, mesh = cube
    write_mesh(mesh, tmp_path / "m.glb", "glb")
    doc, blob = glb_document(tmp_path / "m.glb")
    primitive = doc["meshes"][0]["primitives"][0]
    assert set(primitive["attributes"]) == {"POSITION", "NORMAL", "TEXCOORD_0"}
    uv = doc["accessors"][primitive["attributes"]["TEXCOORD_0"]]
    assert (uv["componentType"], uv["type"], uv["count"]) == (5126, "VEC2", len(mesh.vertices))
    material = doc["materials"][primitive["material"]]
    assert material["extensions"] == {"KHR_materials_unlit": {}} and "KHR_materials_unlit" in doc["extensionsUsed"]
    texture = doc["textures"][material["pbrMetallicRoughness"]["baseColorTexture"]["index"]]
    assert doc["samplers"][texture["sampler"]] == {"magFilter": 9729, "minFilter": 9729, "wrapS": 33071,
                                                   "wrapT": 33071}
    image = doc["images"][texture["source"]]
    view = doc["bufferViews"][image["bufferView"]]
    png = blob[view["byteOffset"]:view["byteOffset"] + view["byteLength"]]
    assert image["mimeType"] == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n"
    written = doc["bufferViews"][uv["bufferView"]]
    stored = np.frombuffer(blob[written["byteOffset"]:written["byteOffset"] + written["byteLength"]], "<f4")
    assert np.allclose(stored.reshape(-1, 2), mesh.metadata["uv"], atol=1e-6)
    back = load_mesh(tmp_path / "m.glb")  # trimesh's glTF reader: v flipped to its own convention, same image
    assert np.allclose(back.visual.uv, mesh.metadata["uv"] * [1, -1] + [0, 1], atol=1e-6)
    assert mesh_summary(back)["texture"] == (256, 256) and mesh_summary(back)["watertight"]


def test_textured_obj_writes_obj_mtl_and_png_that_trimesh_loads(cube, tmp_path):
    import trimesh
    from trimesh.visual.color import uv_to_interpolated_color
    _, mesh = cube
    write_mesh(mesh, tmp_path / "m.obj", "obj")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.mtl", "m.obj", "m.png"]
    mtl = (tmp_path / "m.mtl").read_text()
    assert "map_Kd m.png" in mtl and "Kd 1.00000000 1.00000000 1.00000000" in mtl
    back = trimesh.load(tmp_path / "m.obj", process=False)
    assert back.visual.material.image.size == (256, 256) and len(back.faces) == len(mesh.faces)
    ours = mesh.visual.material.image
    theirs = uv_to_interpolated_color(back.visual.uv, back.visual.material.image)
    assert np.abs(theirs.astype(int) - uv_to_interpolated_color(mesh.visual.uv, ours).astype(int)).max() <= 1


def test_mesh_start_reads_the_textured_glb(cube, tmp_path):
    """init.kind=mesh samples an exported textured GLB's colours where the splats have them."""
    from scipy.spatial import cKDTree

    from lodsgs.splats.surface import read_surface, sample_surface
    splats, mesh = cube
    write_mesh(mesh, tmp_path / "m.glb", "glb")
    points, rgb = sample_surface(read_surface(tmp_path / "m.glb"), 2000, seed=0)
    _, nearest = cKDTree(splats.means.detach().numpy()).query(points)
    assert np.abs(rgb - splats.rgb.detach().numpy()[nearest]).mean() <= 0.1  # stripes kept (chance: 0.25)


def test_texture_zero_keeps_vertex_colours(tmp_path):
    splats = striped_cube(stripes=6, n=3000, scale=0.03)
    mesh = splats_to_mesh(splats, dataclasses.replace(SMALL, texture=0))
    assert mesh.visual.kind == "vertex" and mesh.metadata["rgb"].shape == (len(mesh.vertices), 3)
    assert "texture" not in mesh.metadata and mesh_summary(mesh)["texture"] is None
    write_mesh(mesh, tmp_path / "m.glb", "glb")
    doc, _ = glb_document(tmp_path / "m.glb")
    assert set(doc["meshes"][0]["primitives"][0]["attributes"]) == {"POSITION", "NORMAL", "COLOR_0"}
    assert "images" not in doc and "textures" not in doc


def test_unwrap_splits_vertices_only_along_seams():
    """The UV-mapped mesh is the watertight mesh with vertices copied along seams: merged back, it is closed, and
    every UV lies in the texture."""
    import trimesh

    from lodsgs.splats.bake import unwrap
    ball = trimesh.creation.icosphere(subdivisions=4)  # 5,120 faces: cut into pieces before xatlas
    source, faces, uv = unwrap(np.asarray(ball.vertices), np.asarray(ball.faces), 512)
    assert len(faces) == len(ball.faces) and (uv >= 0).all() and (uv <= 1).all()
    split = trimesh.Trimesh(ball.vertices[source], faces, process=False)
    assert not split.is_watertight and len(source) > len(ball.vertices)
    split.merge_vertices()
    assert split.is_watertight and np.isclose(split.area, ball.area)


def test_mesh_projection_matches_the_splat_renderer():
    """The colours are read where ``project`` puts a point in the splat renderer's image: a small Gaussian's
    rendered centroid is within 0.02 px of it in every colour view (no half-pixel or y-flip offset)."""
    from lodsgs.splats.bake import colour_cameras
    from lodsgs.splats.mesh_render import project
    from lodsgs.splats.model import Splats
    from lodsgs.splats.render import render
    points = torch.tensor([[0.3, 0.2, 0.1], [-0.25, -0.3, 0.2], [0.1, 0.35, -0.3]])
    splats = Splats.from_points(points, torch.ones(3, 3), scale=0.004, opacity=0.99)
    cams = colour_cameras(torch.zeros(3), 0.6, 3, 96)
    alpha = render(splats, cams).alpha[..., 0]
    uv, _ = project(points, cams)
    ys, xs = torch.meshgrid(torch.arange(96) + 0.5, torch.arange(96) + 0.5, indexing="ij")
    for c in range(len(cams)):
        for k in range(len(points)):
            w = alpha[c] * ((xs - uv[c, k, 0]).abs() < 4) * ((ys - uv[c, k, 1]).abs() < 4)
            centroid = torch.stack([(w * xs).sum(), (w * ys).sum()]) / w.sum()
            assert (centroid - uv[c, k]).abs().max() < 0.02


def test_render_mesh_reads_the_texture_with_v_down():
    """A square facing the camera, its texture's top half red and bottom half blue: drawn red above, blue below."""
    from lodsgs.cameras import orbit_cameras
    from lodsgs.splats.mesh_render import render_mesh
    verts = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.5, 0.5, 0.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    uv = torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]])  # glTF: v = 0 is the image's top row
    texture = torch.zeros(8, 8, 3)
    texture[:4, :, 0], texture[4:, :, 2] = 1.0, 1.0
    out = render_mesh(verts, faces, None, orbit_cameras(0.0, 0.0, 2.0, 40.0, 32, 32), uv=uv, texture=texture)
    assert torch.allclose(out.rgb[0, 10, 16], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(out.rgb[0, 22, 16], torch.tensor([0.0, 0.0, 1.0]))
