"""Splat files: exact PLY round trip, INRIA property layout, .splat quantization, orientation, bad files."""

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _spherical_harmonics
from plyfile import PlyData

from lodsgs.cameras import orbit_cameras
from lodsgs.errors import LodsgsError
from lodsgs.splats.io import SH_FLIP, flip_yz, read_ply, read_splat, write_ply, write_splat
from lodsgs.splats.model import Splats
from lodsgs.splats.render import render


def random_splats(n=50, degree=0, seed=0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return Splats({"means": torch.randn(n, 3, generator=g) * 0.3, "scales": torch.randn(n, 3, generator=g) - 3,
                   "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g),
                   "sh0": torch.randn(n, 1, 3, generator=g) * 0.5, "shN": torch.randn(n, k, 3, generator=g) * 0.2},
                  sh_degree=degree)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_round_trip_is_exact(tmp_path, degree):
    s = random_splats(degree=degree)
    write_ply(s, tmp_path / "a.ply")
    back = read_ply(tmp_path / "a.ply")
    assert back.sh_degree == degree
    for key in s.params:
        assert torch.equal(s.params[key], back.params[key]), key


def test_ply_layout_matches_inria(tmp_path):
    s = random_splats(n=7, degree=1)
    write_ply(s, tmp_path / "a.ply")
    s.requires_grad_(False)
    ply = PlyData.read(str(tmp_path / "a.ply"))
    assert ply.header.splitlines()[1] == "format binary_little_endian 1.0"
    names = [p.name for p in ply["vertex"].properties]
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected
    assert all(p.val_dtype in ("f4", "float32", "float") for p in ply["vertex"].properties)
    v = ply["vertex"]
    # file is y-down: position (x, -y, -z); raw opacity logit and log scale stored as is
    assert np.allclose(v["x"], s.params["means"][:, 0].numpy()) and np.allclose(v["y"], -s.params["means"][:, 1].numpy())
    assert np.allclose(v["opacity"], s.params["opacities"].numpy())
    assert np.allclose(v["scale_2"], s.params["scales"][:, 2].numpy())
    # f_rest is channel-major: the R coefficients of bands 1..3 first (with their flip signs)
    assert np.allclose(v["f_rest_0"], s.params["shN"][:, 0, 0].numpy() * SH_FLIP[0].item())
    assert np.allclose(v["f_rest_3"], s.params["shN"][:, 0, 1].numpy() * SH_FLIP[0].item())
    assert np.allclose(v["f_rest_1"], s.params["shN"][:, 1, 0].numpy() * SH_FLIP[1].item())


def test_sh3_padding(tmp_path):
    s = random_splats(degree=0)
    write_ply(s, tmp_path / "a.ply", sh_degree=3)
    names = [p.name for p in PlyData.read(str(tmp_path / "a.ply"))["vertex"].properties]
    assert sum(n.startswith("f_rest_") for n in names) == 45
    back = read_ply(tmp_path / "a.ply")
    assert back.sh_degree == 3 and torch.count_nonzero(back.params["shN"]) == 0
    assert torch.equal(back.params["sh0"], s.params["sh0"])


def test_sh_sign_flips_match_the_rotation():
    """Colour seen along d with the original SH == colour along the rotated d with the flipped SH."""
    s = random_splats(n=20, degree=3)
    flipped = flip_yz({k: v.detach() for k, v in s.params.items()})
    dirs = torch.nn.functional.normalize(torch.randn(20, 3), dim=-1)
    rot = dirs * torch.tensor([1.0, -1.0, -1.0])
    a = _spherical_harmonics(3, dirs, s.sh.detach())
    b = _spherical_harmonics(3, rot, torch.cat([flipped["sh0"], flipped["shN"]], 1))
    assert torch.allclose(a, b, atol=1e-5)


def test_flipped_scene_renders_like_the_original_from_the_flipped_camera():
    s = random_splats(n=200, degree=3)
    cams = orbit_cameras(torch.tensor([20.0]), torch.tensor([40.0]), 2.5, 50.0, 24, 24)
    flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
    flipped_cams = orbit_cameras(torch.tensor([20.0]), torch.tensor([40.0]), 2.5, 50.0, 24, 24)
    flipped_cams.viewmats = cams.viewmats @ flip  # world point p' = F p  ->  camera sees the same thing
    f = Splats(flip_yz({k: v.detach() for k, v in s.params.items()}), sh_degree=3)
    with torch.no_grad():
        a, b = render(s, cams).rgb, render(f, flipped_cams).rgb
    assert (a - b).abs().max() < 1e-4


def test_splat_file_decodes_within_quantization(tmp_path):
    s = random_splats(n=64)
    write_splat(s, tmp_path / "a.splat")
    assert (tmp_path / "a.splat").stat().st_size == 64 * 32
    d = read_splat(tmp_path / "a.splat")
    p = flip_yz({k: v.detach() for k, v in s.params.items()})
    size = (p["scales"].sum(-1).exp() * torch.sigmoid(p["opacities"])).numpy()
    order = np.argsort(-size, kind="stable")
    assert np.all(np.diff(size[order]) <= 0)  # largest × most opaque first
    assert np.allclose(d["means"], p["means"].numpy()[order], atol=1e-6)
    assert np.allclose(d["scales"], p["scales"].exp().numpy()[order], rtol=1e-5)
    rgb = np.clip(0.5 + 0.28209479177387814 * p["sh0"][:, 0].numpy(), 0, 1)[order]
    assert np.abs(d["rgba"][:, :3] - rgb).max() <= 0.5 / 255 + 1e-6
    assert np.abs(d["rgba"][:, 3] - torch.sigmoid(p["opacities"]).numpy()[order]).max() <= 0.5 / 255 + 1e-6
    q = torch.nn.functional.normalize(p["quats"], dim=-1).numpy()[order]
    assert np.abs(d["quats"] - q).max() <= 1 / 128 + 1e-6  # u8 = q·128 + 128, clipped at 255


def test_point_cloud_ply_initializes_splats(tmp_path):
    pts = np.zeros(30, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    pts["x"], pts["y"] = np.linspace(-1, 1, 30), np.linspace(0, 1, 30)
    pts["red"] = 255
    from plyfile import PlyElement
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(tmp_path / "pc.ply"))
    s = read_ply(tmp_path / "pc.ply")
    assert s.num == 30 and torch.allclose(s.rgb[:, 0], torch.ones(30), atol=1e-5)
    assert torch.allclose(s.means[:, 1], -torch.from_numpy(np.ascontiguousarray(pts["y"])))  # y-down file -> y-up inside


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"hello, not a ply", "not a valid PLY"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nproperty float y\n"
     b"property float z\nend_header\n" + b"\0" * 20, "not a valid PLY"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.ply"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LodsgsError) as err:
        read_ply(path)
    assert "bad.ply" in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def test_ply_missing_splat_properties(tmp_path):
    s = random_splats(n=5)
    write_ply(s, tmp_path / "a.ply")
    ply = PlyData.read(str(tmp_path / "a.ply"))
    data = ply["vertex"].data
    keep = [n for n in data.dtype.names if n not in ("opacity", "rot_3")]
    partial = np.empty(len(data), dtype=[(n, "f4") for n in keep])
    for n in keep:
        partial[n] = data[n]
    from plyfile import PlyElement
    PlyData([PlyElement.describe(partial, "vertex")]).write(str(tmp_path / "partial.ply"))
    with pytest.raises(LodsgsError, match="partial.ply.*missing: opacity, rot_3"):
        read_ply(tmp_path / "partial.ply")
