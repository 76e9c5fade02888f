"""Mesh export: the density-to-mesh path, the GLB writer, the CPU mesh rasterizer, the CLI and bad input."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lodsgs.cameras import orbit_cameras
from lodsgs.cli import app
from lodsgs.config import load_config
from lodsgs.errors import LodsgsError
from lodsgs.prior.shapes.world import build_object
from lodsgs.splats.io import write_ply
from lodsgs.splats.mesh import (
    MeshConfig,
    glb_bytes,
    load_mesh,
    mesh_summary,
    splats_to_mesh,
    srgb_to_linear,
    write_mesh,
)
from lodsgs.splats.mesh_render import render_mesh
from lodsgs.splats.model import Splats

pytest.importorskip("skimage")
pytest.importorskip("trimesh")
runner = CliRunner()
FAST = MeshConfig(resolution=64, views=4, view_size=64, texture=0)  # vertex colours: textures are tests/test_bake.py's


@pytest.fixture(scope="module")
def torus():
    splats = build_object("a red torus")
    return splats, splats_to_mesh(splats, FAST)


@pytest.mark.slow
def test_torus_mesh_is_watertight_with_one_hole_and_matches_its_splats(torus):
    from benchmarks.bench_mesh import score_mesh
    splats, mesh = torus
    s = mesh_summary(mesh)
    assert s["watertight"] and s["pieces"] == 1 and s["genus"] == 1, s
    lo, hi = np.asarray(s["bounds"])
    assert np.allclose(hi, [0.53, 0.53, 0.15], atol=0.04) and np.allclose(lo, -hi, atol=0.02), s  # standing, y up
    scores = score_mesh(splats, mesh)
    assert scores["iou"] >= 0.9 and scores["color_error"] <= 0.08, scores


def test_sphere_mesh_is_one_closed_surface_without_its_hollow_inside():
    mesh = splats_to_mesh(build_object("a green sphere"),
                          MeshConfig(resolution=32, views=2, view_size=32, faces=0, texture=0))
    s = mesh_summary(mesh)
    assert s["watertight"] and s["pieces"] == 1 and s["genus"] == 0, s
    r = np.linalg.norm(mesh.vertices, axis=1)  # splats on a radius-0.5 shell: no inner surface
    assert r.min() > 0.45 and r.max() < 0.58  # outwards by up to two cells (each Gaussian widened by half a cell)
    green = mesh.metadata["rgb"].mean(0)
    assert green[1] > 2 * green[0] and green[1] > 2 * green[2]


@pytest.mark.slow
def test_decimation_keeps_the_surface_closed(torus):
    pytest.importorskip("fast_simplification")
    mesh = splats_to_mesh(torus[0], MeshConfig(resolution=64, views=4, view_size=64, faces=4000, texture=0))
    s = mesh_summary(mesh)
    assert s["faces"] <= 4100 and s["watertight"] and s["genus"] == 1, s


def test_a_thin_strut_of_stray_gaussians_adds_no_handle():
    """A line of small Gaussians across the torus's hole would add a handle (genus 2); the mesh drops it."""
    from lodsgs.splats import mesh as M
    ring = build_object("a red torus")
    n = 60
    strut = Splats.from_points(torch.stack([torch.linspace(-0.3, 0.3, n), torch.zeros(n), torch.zeros(n)], -1),
                               torch.full((n, 3), 0.6), scale=0.004, opacity=0.99)
    splats = Splats({k: torch.cat([ring.params[k].detach(), strut.params[k].detach()]) for k in ring.params})
    cfg = MeshConfig(resolution=64, views=2, view_size=32, faces=0, texture=0)
    grid = M.grid_box(splats, cfg.resolution)
    field = M.fill_inside(M.density_grid(splats, grid).numpy(), cfg.threshold)
    kept = mesh_summary(M.clean(*M.surface(field, grid, cfg.threshold), cfg.min_component))
    assert kept["watertight"] and kept["genus"] == 2, kept  # the strut is there without the opening
    s = mesh_summary(splats_to_mesh(splats, cfg))
    assert s["watertight"] and s["pieces"] == 1 and s["genus"] == 1, s


def test_decimation_that_pinches_a_closed_surface_keeps_it_whole(monkeypatch):
    """fast-simplification can collapse an edge onto four faces; a watertight mesh is then kept undecimated."""
    import trimesh

    from lodsgs.splats.mesh import decimate
    pytest.importorskip("fast_simplification")
    ball = trimesh.creation.icosphere(subdivisions=4)
    opened = trimesh.Trimesh(ball.vertices, ball.faces[:-40], process=False)
    tries = []
    monkeypatch.setattr(trimesh.Trimesh, "simplify_quadric_decimation",
                        lambda self, face_count: tries.append(face_count) or opened)
    out = decimate(ball, 1000, 0.05)
    assert out is ball and len(tries) == 3


@pytest.mark.slow
def test_glb_is_unlit_with_linear_float_colours_and_loads_back(torus, tmp_path):
    _, mesh = torus
    write_mesh(mesh, tmp_path / "m.glb", "glb")
    raw = (tmp_path / "m.glb").read_bytes()
    magic, version, total = struct.unpack("<4sII", raw[:12])
    assert (magic, version, total) == (b"glTF", 2, len(raw))
    n = struct.unpack("<I", raw[12:16])[0]
    doc = json.loads(raw[20:20 + n])
    assert doc["materials"][0]["extensions"] == {"KHR_materials_unlit": {}}
    colour = doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"]["COLOR_0"]]
    assert colour["componentType"] == 5126 and colour["count"] == len(mesh.vertices)
    back = load_mesh(tmp_path / "m.glb")
    assert np.allclose(back.vertices, mesh.vertices, atol=1e-6) and (back.faces == mesh.faces).all()
    assert mesh_summary(back)["colours"]


def test_srgb_to_linear_matches_the_standard():
    assert np.allclose(srgb_to_linear(np.array([0.0, 0.04045, 0.5, 1.0])), [0.0, 0.0031308, 0.21404, 1.0], atol=1e-5)


def test_glb_writer_pads_chunks_to_four_bytes():
    raw = glb_bytes(np.eye(3), np.eye(3), np.array([[0, 1, 2]]), np.full((3, 3), 0.5))
    n = struct.unpack("<I", raw[12:16])[0]
    assert n % 4 == 0 and len(raw) % 4 == 0 and raw[20 + n + 4:20 + n + 8] == b"BIN\0"


def test_rasterizer_draws_a_cube_where_it_projects():
    import trimesh
    box = trimesh.creation.box((1.0, 1.0, 1.0))
    cams = orbit_cameras(0.0, 0.0, 3.0, 40.0, 64, 64)  # looking at the +z face, square on screen
    out = render_mesh(torch.tensor(box.vertices, dtype=torch.float32), torch.tensor(box.faces),
                      torch.full((len(box.vertices), 3), 0.2), cams)
    f = 32 / math.tan(math.radians(20))
    half = 0.5 * f / 2.5  # the front face at depth 2.5
    expected = (2 * half) ** 2
    assert abs(out.alpha.sum().item() - expected) < 4 * 2 * half  # within a pixel ring
    assert out.depth.min().item() == pytest.approx(2.5, abs=1e-3)
    assert torch.allclose(out.rgb[0, 32, 32], torch.tensor(0.2))
    assert torch.allclose(out.rgb[0, 0, 0], torch.tensor(1.0))


@pytest.mark.parametrize("case", ["empty", "transparent", pytest.param("threshold", marks=pytest.mark.slow)])
def test_bad_scene_is_one_line_and_writes_nothing(case, tmp_path):
    splats = build_object("a blue cube")
    sets = []
    if case == "empty":  # no writer makes a file without Gaussians: write one by hand, as a damaged one would be
        (tmp_path / "s.ply").write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                                        "property float z\nend_header\n")
    elif case == "transparent":
        splats.params["opacities"].data.fill_(-12.0)
    else:
        sets = ["--set", "mesh.threshold=1000"]
    if case != "empty":
        write_ply(splats, tmp_path / "s.ply")
    result = runner.invoke(app, ["export", str(tmp_path / "s.ply"), "--out", str(tmp_path / "m.glb"), *sets])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    want = {"threshold": "no surface", "transparent": "empty or fully transparent", "empty": "holds no Gaussians"}
    assert want[case] in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ply"]


@pytest.mark.parametrize("args, message", [
    (["--out", "m.xyz"], "unknown extension"),
    (["--out", "m.ply"], "give --format ply (splats) or --format mesh-ply"),
    (["--format", "glb", "--out", "m.obj"], "does not end in .glb"),
    (["--format", "stl"], "unknown --format"),
    (["--out", "m.glb", "--set", "run.steps=3"], "mesh settings"),
])
def test_bad_export_arguments_are_one_line_and_write_nothing(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_ply(build_object("a blue cube"), tmp_path / "s.ply")
    result = runner.invoke(app, ["export", "s.ply", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ply"]


@pytest.mark.slow
def test_export_from_a_run_folder_by_extension_then_info(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_ply(build_object("a purple torus"), run / "splats.ply")
    cfg = load_config(None, ["mesh.resolution=48", "mesh.views=4", "mesh.view_size=48", "mesh.texture=256"])
    from lodsgs.config import save_config
    save_config(cfg, run / "config.yaml")  # the run's own mesh settings are used
    for out, extra in (("m.glb", []), ("m.obj", []), ("m.ply", ["--format", "mesh-ply"])):
        result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / out), *extra])
        assert result.exit_code == 0, result.output
        info = runner.invoke(app, ["info", str(tmp_path / out)])
        assert info.exit_code == 0, info.output
        assert "not watertight" not in info.output and "watertight" in info.output and "genus 1" in info.output
        # GLB and OBJ carry the texture (OBJ: beside it, m.mtl and m.png); PLY has no texture: vertex colours
        assert ("vertex colours" if out == "m.ply" else "texture 256x256") in info.output, info.output
        assert "no vertex colours" not in info.output
    splat_info = runner.invoke(app, ["info", str(run / "splats.ply")])  # a splat .ply is still splats
    assert "Gaussians" in splat_info.output


def test_run_mesh_key_stays_out_of_the_result_hash():
    from lodsgs.config import config_hash
    base = load_config(None, [])
    assert config_hash(base) == config_hash(load_config(None, ["run.mesh=true", "mesh.resolution=64"]))
    with pytest.raises(LodsgsError, match="mesh.threshold"):
        load_config(None, ["mesh.threshold=0"])


@pytest.mark.slow
def test_generate_with_run_mesh_writes_mesh_glb(tiny_sets, tmp_path):
    from lodsgs.preflight import run_name
    result = runner.invoke(app, ["generate", "a corgi", "--out", str(tmp_path), "--quiet",
                                 *tiny_sets("latent", "run.mesh=true", "mesh.threshold=0.02", "mesh.resolution=32",
                                            "mesh.views=2", "mesh.view_size=32", "mesh.texture=256")])
    assert result.exit_code == 0, result.output
    mesh = load_mesh(tmp_path / run_name("a corgi", 0) / "mesh.glb")
    assert len(mesh.faces) > 0 and mesh_summary(mesh)["texture"] == (256, 256)  # run.mesh writes it textured


def test_missing_mesh_extra_is_one_line(monkeypatch):
    import importlib.util

    from lodsgs.splats.mesh import need_mesh_libraries
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skimage" else real(name, *a))
    with pytest.raises(LodsgsError, match=r"mesh export needs skimage: pip install 'lodsgs\[mesh\]'"):
        need_mesh_libraries()
    with pytest.raises(LodsgsError, match="lodsgs\\[mesh\\]"):
        load_config(None, ["run.mesh=true"])  # at load time, not after a run


def test_density_grid_matches_the_sum_over_every_gaussian():
    from lodsgs.splats.mesh import TAIL, covariances, density_grid, grid_box
    splats = Splats.random_ball(12, radius=0.4, seed=3, opacity=0.9)
    splats.params["scales"].data += torch.tensor([0.0, 1.0, -1.5])  # anisotropic, rotated below
    splats.params["quats"].data = torch.randn(12, 4, generator=torch.Generator().manual_seed(0))
    grid = grid_box(splats, 20)
    got = density_grid(splats, grid)
    _, inv = covariances(splats, grid.voxel / 2)
    idx = torch.stack(torch.meshgrid(*(torch.arange(n) for n in grid.shape), indexing="ij"), -1).reshape(-1, 3)
    d = (grid.origin + idx * grid.voxel)[:, None] - splats.means.detach()[None]
    want = (splats.opacities.detach() * torch.exp(-0.5 * torch.einsum("pni,nij,pnj->pn", d, inv, d))).sum(1)
    assert (got.reshape(-1) - want).abs().max() <= 12 * TAIL  # each Gaussian's tail below TAIL is left out
    assert got.max() > 0.5
