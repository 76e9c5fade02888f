"""The mesh start (a mesh file's surface) and the shap-e start (Shap-E's mesh of the prompt, the official LODS
3DGS start), all offline: meshes made here, Shap-E as a tiny random ShapEPipeline in the diffusers layout."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lodsgs.cli import app
from lodsgs.config import load_config
from lodsgs.errors import LodsgsError
from lodsgs.prior import hub, shap_e
from lodsgs.prior.tiny_shap_e import build_tiny_shap_e, mc_table
from lodsgs.splats.mesh import glb_bytes
from lodsgs.splats.surface import z_up_to_y_up
from lodsgs.starts import SHAP_E_SCALE, init_splats

trimesh = pytest.importorskip("trimesh")
pytest.importorskip("skimage")  # the tiny Shap-E's marching-cubes table
runner = CliRunner()
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def one_line(args: list[str], fragment: str) -> None:
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and fragment in lines[0], result.output


def coloured_box(tmp_path, suffix: str = ".glb", offset=(2.0, 1.0, 0.0), size: float = 4.0):
    """A box off the origin, red on top (+y), blue below, written as lodsgs writes meshes; its trimesh too."""
    box = trimesh.creation.box(extents=[size, size / 2, size])
    box.apply_translation(offset)
    rgb = np.where(box.vertices[:, 1:2] > offset[1], [[0.9, 0.1, 0.1]], [[0.1, 0.2, 0.9]])
    path = tmp_path / f"box{suffix}"
    if suffix == ".glb":
        path.write_bytes(glb_bytes(box.vertices, box.vertex_normals, box.faces, rgb))  # linear COLOR_0 + material
    else:
        box.visual.vertex_colors = np.concatenate([np.round(rgb * 255), np.full((8, 1), 255)], 1).astype(np.uint8)
        box.export(str(path), file_type=suffix[1:])
    return path, box


def mesh_cfg(path, *extra: str):
    return load_config("fast", ["init.kind=mesh", f"init.path={path}", "init.num=600", *extra])


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_mesh_start_samples_the_surface_in_its_colours(tmp_path, suffix):
    path, box = coloured_box(tmp_path, suffix)
    splats = init_splats(mesh_cfg(path, "init.mesh_fit=false"))
    p = splats.means.detach().numpy()
    assert splats.num == 600
    lo, hi = box.bounds
    assert ((p > lo - 1e-5) & (p < hi + 1e-5)).all()  # in the file's units, and on a face:
    assert np.minimum(p - lo, hi - p).min(1).max() < 1e-4
    top = p[:, 1] > 1.0 + 0.99  # the top face (every vertex red): red, whatever the file's colour space
    assert np.allclose(splats.rgb.detach().numpy()[top], [0.9, 0.1, 0.1], atol=0.01)


def test_mesh_start_fits_the_ball_and_is_seeded(tmp_path):
    path, box = coloured_box(tmp_path)
    cfg = mesh_cfg(path, "init.radius=0.45")
    p = init_splats(cfg).means.detach()
    assert 0.4 < float(p.norm(dim=1).max()) <= 0.45 + 1e-5  # the box's corners (3 units out) on the ball's sphere
    assert float(p.mean(0).abs().max()) < 0.03 and float(p[:, 1].abs().max()) < 0.151  # centred; 1/3 as high
    assert torch.equal(p, init_splats(cfg).means.detach())
    assert not torch.equal(p, init_splats(mesh_cfg(path, "init.radius=0.45", "run.seed=1")).means.detach())


def test_mesh_start_turns_a_z_up_file_y_up(tmp_path):
    path, _ = coloured_box(tmp_path, offset=(0.0, 0.0, 3.0), size=1.0)  # the box 3 units along +z
    p = init_splats(mesh_cfg(path, "init.mesh_fit=false", "init.mesh_up=z")).means.detach()
    assert abs(float(p[:, 1].mean()) - 3.0) < 0.05 and abs(float(p[:, 2].mean())) < 0.05  # z-up +z is y-up +y
    assert np.allclose(z_up_to_y_up(np.array([[0.0, -1.0, 0.0]])), [[0.0, 0.0, 1.0]])  # the front (-y) faces +z


def test_mesh_start_reads_a_texture_through_the_uvs(tmp_path):
    from PIL import Image
    quad = trimesh.Trimesh([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], [[0, 1, 2], [0, 2, 3]], process=False)
    image = Image.new("RGB", (4, 1))
    for x in range(4):
        image.putpixel((x, 0), (255, 0, 0) if x < 2 else (0, 0, 255))
    quad.visual = trimesh.visual.TextureVisuals(uv=[[0, 0], [1, 0], [1, 1], [0, 1]], image=image)
    quad.export(str(tmp_path / "quad.glb"))
    splats = init_splats(mesh_cfg(tmp_path / "quad.glb", "init.mesh_fit=false"))
    x, rgb = splats.means.detach()[:, 0], splats.rgb.detach()
    assert (rgb[x < -0.6, 0] > 0.8).all() and (rgb[x > 0.6, 2] > 0.8).all()  # red left, blue right


def test_mesh_without_colours_starts_grey(tmp_path):
    trimesh.creation.icosphere(subdivisions=1).export(str(tmp_path / "plain.obj"))
    rgb = init_splats(mesh_cfg(tmp_path / "plain.obj")).rgb.detach()
    assert torch.allclose(rgb, torch.full_like(rgb, 0.5), atol=0.11)  # grey (a default material: 0.4)


def test_bad_mesh_files_are_one_line(tmp_path):
    base = ["generate", "a red cube", "--prior", "shapes", "--steps", "1", "--out", str(tmp_path / "runs"),
            "--set", "init.kind=mesh"]
    one_line(base, "no mesh was given")
    one_line([*base, "--set", f"init.path={tmp_path / 'none.glb'}"], "not found")
    (tmp_path / "empty.obj").write_text("")
    (tmp_path / "notes.glb").write_text("not a mesh")
    points = trimesh.PointCloud(np.random.default_rng(0).random((20, 3)))
    points.export(str(tmp_path / "cloud.ply"))
    for name in ("empty.obj", "notes.glb", "cloud.ply"):
        one_line([*base, "--set", f"init.path={tmp_path / name}"], "as a mesh")
    assert not (tmp_path / "runs").exists()


def test_mesh_start_without_trimesh_is_one_line(monkeypatch, tmp_path):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trimesh" else real(name, *a))
    with pytest.raises(LodsgsError, match=r"^init.kind mesh needs trimesh: pip install 'lodsgs\[mesh\]'$"):
        load_config(None, ["init.kind=mesh", f"init.path={tmp_path / 'x.glb'}"])


# --- shap-e --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_shap_e(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("shap-e")
    return {"plain": str(build_tiny_shap_e(root / "plain")), "hub": str(build_tiny_shap_e(root / "hub", like_hub=True))}


@pytest.fixture
def small_grid(monkeypatch):
    monkeypatch.setattr(shap_e, "GRID", 16)  # diffusers' 128³ grid: seconds a mesh on one core


def test_the_marching_cubes_table_closes_a_sphere():
    """The tiny renderer's table (built here) in diffusers' MeshDecoder: a sphere's SDF gives a closed sphere."""
    from diffusers.pipelines.shap_e.renderer import MeshDecoder
    decoder = MeshDecoder()
    decoder.cases, decoder.masks = mc_table()
    axis = torch.linspace(-1, 1, 24)
    grid = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1)
    out = decoder(0.6 - grid.norm(dim=-1), torch.full((3,), -1.0), torch.full((3,), 2.0))  # > 0 inside
    mesh = trimesh.Trimesh(out.verts.numpy(), out.faces.numpy())
    mesh.merge_vertices()
    assert mesh.is_watertight and np.allclose(np.linalg.norm(mesh.vertices, axis=1), 0.6, atol=0.02)


@pytest.mark.parametrize("layout", ["plain", "hub"])
def test_shap_e_start_points_lie_on_its_mesh(tiny_shap_e, small_grid, layout):
    model = tiny_shap_e[layout]
    verts, rgb = shap_e.shap_e_mesh(model, "a red cube", 15.0, 2, seed=0)
    cfg = load_config("fast", ["init.kind=shap-e", f"init.shap_e_model={model}", "init.shap_e_steps=2",
                               "init.num=300", "camera.eval_radius=2.5"])
    splats = init_splats(cfg, "a red cube")
    scale = 2.5 * SHAP_E_SCALE
    on = len(verts[::4])
    assert splats.num == 300 + on  # GaussianDreamer's vertices[::4], and init.num near them
    p = splats.means.detach().numpy().astype(np.float64)
    assert np.allclose(p[-on:], z_up_to_y_up(verts[::4]) * scale, atol=1e-5)  # y-up, scaled by the camera's radius
    shap_e_units = z_up_to_y_up(z_up_to_y_up(z_up_to_y_up(p / scale)))  # three quarter turns: back to z up
    nearest = torch.cdist(torch.tensor(shap_e_units), torch.tensor(verts[::4])).min(1).values
    assert float(nearest.max()) < shap_e.NEAR + 1e-6  # every point within 0.01 of a vertex of the mesh
    assert 0 <= rgb.min() and rgb.max() <= 1


def test_a_shap_e_latent_with_no_surface_is_one_line(tmp_path, small_grid):
    folder = str(build_tiny_shap_e(tmp_path / "shap-e"))
    last = shap_e.load_pipeline(shap_e.locate(folder)).shap_e_renderer.mlp.mlp[-1]
    with torch.no_grad():  # the SDF head (output 0) negative everywhere: all outside
        last.weight.zero_()
        last.bias.fill_(-10.0)
    with pytest.raises(LodsgsError, match="^Shap-E made no mesh for 'a red cube'; .*init.kind=ball$"):
        shap_e.shap_e_mesh(folder, "a red cube", 15.0, 2, seed=0)


def test_shap_e_start_then_a_generate_run(tiny_shap_e, small_grid, tiny_prior_dirs):
    from conftest import TINY

    from lodsgs.api import run
    cfg = load_config(None, [f"prior.model={tiny_prior_dirs['latent']}", *TINY, "init.kind=shap-e",
                             f"init.shap_e_model={tiny_shap_e['plain']}", "init.shap_e_steps=2", "init.num=100"])
    out = run("a red cube", cfg, None, quiet=True)
    assert out.log[-1]["step"] == 6 and bool(torch.isfinite(out.splats.means).all())
    assert out.log[0]["gaussians"] > 100  # the mesh's vertices[::4] beside init.num points


def place(cache, repo_id: str, folder) -> str:
    """``folder`` as ``repo_id``'s snapshot in a hub cache (refs/main -> commit)."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return str(repo / "snapshots" / COMMIT)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf-cache"


def test_shap_e_from_the_hub_cache_offline_or_one_line(hf_cache, tiny_shap_e, small_grid, tmp_path):
    cfg = load_config("fast", ["init.kind=shap-e", "init.shap_e_steps=2", "init.num=50"])
    assert cfg.init.shap_e_model == hub.SHAP_E == "openai/shap-e"
    with pytest.raises(LodsgsError) as caught:
        init_splats(cfg, "a red cube")
    text = str(caught.value)
    assert "\n" not in text and "'openai/shap-e'" in text and "--set init.kind=ball" in text
    assert "not cached: `lodsgs prior download shap-e`" in runner.invoke(app, ["prior", "list"]).output
    snap = place(hf_cache, hub.SHAP_E, tiny_shap_e["hub"])  # the repository's own files: fp16 + a renderer .bin
    assert init_splats(cfg, "a red cube").num > 50
    listed = [line for line in runner.invoke(app, ["prior", "list"]).output.splitlines() if line.startswith("shap-e")]
    assert "cached" in listed[0] and snap in listed[0]


def test_prior_download_shap_e_fetches_its_own_files(monkeypatch, tmp_path):
    import huggingface_hub
    seen = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: seen.append((repo_id, kw))
                        or str(tmp_path))
    result = runner.invoke(app, ["prior", "download", "shap-e", "--out", str(tmp_path / "se")])
    assert result.exit_code == 0, result.output
    assert seen[0][0] == hub.SHAP_E and seen[0][1]["allow_patterns"] == hub.SHAP_E_PATTERNS
    assert "shap_e_renderer/diffusion_pytorch_model.bin" in hub.SHAP_E_PATTERNS  # the hub has no safetensors of it
    assert f"--set init.shap_e_model={tmp_path / 'se'}" in result.output


def test_the_paper_presets_start_from_shap_e_and_the_shapes_profile_keeps_layout():
    for preset in ("lods_embedding", "lods_lora", "sds"):
        assert load_config(preset).init.kind == "shap-e"
        assert load_config(preset, ["prior.model=shapes"]).init.kind == "layout"  # the profile comes after
    assert load_config("fast").init.kind == "ball"
