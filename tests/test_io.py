"""Splat files: exact PLY round trip, INRIA property layout, .splat quantization, orientation, bad files."""

import numpy as np
import pytest
import torch
from gsplat import export_splats
from gsplat.cuda._torch_impl import _quat_to_rotmat, _spherical_harmonics
from plyfile import PlyData, PlyElement

from lodsgs.cameras import orbit_cameras
from lodsgs.errors import LodsgsError
from lodsgs.splats.convention import SH_FLIP, flip_yz, unflip_yz
from lodsgs.splats.io import ply_properties, read_ply, read_splat, write_ply, write_splat
from lodsgs.splats.model import SH_C0, Splats
from lodsgs.splats.render import render


def random_splats(n=50, degree=0, seed=0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    s = Splats({"means": torch.randn(n, 3, generator=g) * 0.3, "scales": torch.randn(n, 3, generator=g) - 3,
                "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g),
                "sh0": torch.randn(n, 1, 3, generator=g) * 0.5, "shN": torch.randn(n, k, 3, generator=g) * 0.2},
               sh_degree=degree)
    with torch.no_grad():  # signed zeros must survive the sign flips too
        s.params["means"][0] = torch.tensor([-0.0, 0.0, -0.0])
        s.params["quats"][0] = torch.tensor([1.0, -0.0, 0.0, -0.0])
    return s


def raw(s: Splats) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in s.params.items()}


def as_written(s: Splats) -> Splats:
    """Splats whose file holds ``raw(s)`` as is (writing flips y and z; this undoes it first)."""
    return Splats(unflip_yz(raw(s)), sh_degree=s.sh_degree)


def hamilton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Independent Hamilton product of wxyz quaternions."""
    aw, av, bw, bv = a[..., :1], a[..., 1:], b[..., :1], b[..., 1:]
    return torch.cat([aw * bw - (av * bv).sum(-1, keepdim=True),
                      aw * bv + bw * av + torch.linalg.cross(av, bv)], -1)


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_round_trip_is_bit_exact(tmp_path, degree):
    s = random_splats(degree=degree)
    write_ply(s, tmp_path / "a.ply")
    back = read_ply(tmp_path / "a.ply")
    assert back.sh_degree == degree
    for key, value in s.params.items():  # compare bit patterns: -0.0 vs 0.0 would fail here
        assert torch.equal(value.detach().view(torch.int32), back.params[key].view(torch.int32)), key


def test_ply_layout_matches_inria_and_gsplat_exporter(tmp_path):
    s = random_splats(n=7, degree=2)
    write_ply(as_written(s), tmp_path / "ours.ply")
    ply = PlyData.read(str(tmp_path / "ours.ply"))
    assert ply.header.splitlines()[1] == "format binary_little_endian 1.0"
    assert [el.name for el in ply.elements] == ["vertex"]
    names = [p.name for p in ply["vertex"].properties]
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(24)]
                     + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert all(p.val_dtype == "f4" for p in ply["vertex"].properties)
    v, p = ply["vertex"], raw(s)
    # channel-major f_rest (f_rest_{c*K + k}), raw logit / log / wxyz values, zero normals
    assert np.array_equal(v["f_rest_1"], p["shN"][:, 1, 0].numpy())
    assert np.array_equal(v["f_rest_8"], p["shN"][:, 0, 1].numpy())
    assert np.array_equal(v["opacity"], p["opacities"].numpy())
    assert np.array_equal(v["rot_0"], p["quats"][:, 0].numpy())
    assert not v["nx"].any() and not v["nz"].any()
    # a second writer: gsplat's exporter (no normals) must agree on every column it writes
    (tmp_path / "gsplat.ply").write_bytes(export_splats(p["means"], p["scales"], p["quats"], p["opacities"],
                                                        p["sh0"], p["shN"], format="ply"))
    ref = PlyData.read(str(tmp_path / "gsplat.ply"))["vertex"]
    assert [q.name for q in ref.properties] == [n for n in names if n not in ("nx", "ny", "nz")]
    for q in ref.properties:
        assert np.array_equal(v[q.name], ref[q.name]), q.name


def test_file_is_y_down(tmp_path):
    s = random_splats(n=9, degree=1)
    write_ply(s, tmp_path / "a.ply")
    v, p = PlyData.read(str(tmp_path / "a.ply"))["vertex"], raw(s)
    assert np.array_equal(v["x"], p["means"][:, 0].numpy()) and np.array_equal(v["y"], -p["means"][:, 1].numpy())
    assert np.array_equal(v["z"], -p["means"][:, 2].numpy())
    q_file = torch.from_numpy(np.stack([v[f"rot_{i}"] for i in range(4)], -1))
    assert torch.allclose(q_file, hamilton(torch.tensor([0.0, 1.0, 0.0, 0.0]).expand(9, 4), p["quats"]))
    # orientation: R(q') = Rx(180°) R(q)
    rx = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    assert torch.allclose(_quat_to_rotmat(q_file), rx @ _quat_to_rotmat(p["quats"]), atol=1e-6)
    assert np.array_equal(v["f_rest_0"], -p["shN"][:, 0, 0].numpy())  # l=1 y basis flips
    assert np.array_equal(v["f_rest_2"], p["shN"][:, 2, 0].numpy())  # l=1 x basis does not


def test_sh3_padding(tmp_path):
    s = random_splats(degree=1)
    write_ply(s, tmp_path / "a.ply", sh_degree=3)
    names = [p.name for p in PlyData.read(str(tmp_path / "a.ply"))["vertex"].properties]
    assert names == ply_properties(15)
    back = read_ply(tmp_path / "a.ply")
    assert back.sh_degree == 3
    assert torch.equal(back.params["shN"][:, :3], s.params["shN"].detach())
    assert torch.count_nonzero(back.params["shN"][:, 3:]) == 0
    assert torch.equal(back.params["sh0"], s.params["sh0"].detach())
    with pytest.raises(ValueError, match="sh_degree"):
        write_ply(s, tmp_path / "b.ply", sh_degree=0)  # would drop bands


def test_sh_sign_flips_match_the_rotation():
    """Colour seen along d with the original SH == colour along d' = (dx, -dy, -dz) with the flipped SH."""
    s = random_splats(n=20, degree=3)
    flipped = flip_yz(raw(s))
    dirs = torch.nn.functional.normalize(torch.randn(20, 3), dim=-1)
    rot = dirs * torch.tensor([1.0, -1.0, -1.0])
    a = _spherical_harmonics(3, dirs, s.sh.detach())
    b = _spherical_harmonics(3, rot, torch.cat([flipped["sh0"], flipped["shN"]], 1))
    assert torch.allclose(a, b, atol=1e-5)
    # the test can fail: unflipped coefficients, or any single wrong sign, give other colours
    assert not torch.allclose(a, _spherical_harmonics(3, rot, s.sh.detach()), atol=1e-2)
    for i in range(15):
        wrong = flipped["shN"].clone()
        wrong[:, i] *= -1
        assert not torch.allclose(a, _spherical_harmonics(3, rot, torch.cat([flipped["sh0"], wrong], 1)), atol=1e-3)

def test_sh_flip_is_each_basis_parity_under_the_rotation():
    """SH_FLIP[i] = Y_i(x, -y, -z) / Y_i(x, y, z) for gsplat's own basis functions (not a copied table)."""
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    rot = dirs * torch.tensor([1.0, -1.0, -1.0])
    for i in range(1, 16):
        onehot = torch.zeros(64, 16, 3)
        onehot[:, i] = 1.0
        y, y_rot = _spherical_harmonics(3, dirs, onehot)[:, 0], _spherical_harmonics(3, rot, onehot)[:, 0]
        sign = float(torch.sign((y * y_rot).sum()))
        assert torch.allclose(y_rot, sign * y, atol=1e-5), i  # every basis is even or odd under the turn
        assert SH_FLIP[i - 1].item() == sign, f"basis {i}: SH_FLIP says {SH_FLIP[i - 1].item():+g}, gsplat {sign:+g}"


def test_flipped_scene_renders_like_the_original_from_the_flipped_camera():
    s = random_splats(n=200, degree=3)
    cams = orbit_cameras(torch.tensor([20.0]), torch.tensor([40.0]), 2.5, 50.0, 24, 24)
    flipped_cams = orbit_cameras(torch.tensor([20.0]), torch.tensor([40.0]), 2.5, 50.0, 24, 24)
    flipped_cams.viewmats = cams.viewmats @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))  # sees p' = F p
    f = Splats(flip_yz(raw(s)), sh_degree=3)
    with torch.no_grad():
        a, b = render(s, cams).rgb, render(f, flipped_cams).rgb
    assert a.std() > 0.05  # something is in view
    assert (a - b).abs().max() < 1e-4


def test_splat_file_decodes_within_quantization(tmp_path):
    s = random_splats(n=64)
    write_splat(s, tmp_path / "a.splat")
    assert (tmp_path / "a.splat").stat().st_size == 64 * 32
    d = read_splat(tmp_path / "a.splat")
    p = flip_yz(raw(s))
    size = (p["scales"].sum(-1).exp() * torch.sigmoid(p["opacities"])).numpy()
    order = np.argsort(-size, kind="stable")  # largest × most opaque first, as antimatter15's convert.py
    assert np.array_equal(d["means"], p["means"].numpy()[order])
    assert np.allclose(d["scales"], p["scales"].exp().numpy()[order], rtol=1e-6)
    # bounds: bytes are rounded, so colour and alpha are within 0.5/255; quats within 1/128 (255 clip at +1)
    rgb = np.clip(0.5 + SH_C0 * p["sh0"][:, 0].numpy(), 0, 1)[order]
    assert np.abs(d["rgba"][:, :3] - rgb).max() <= 0.5 / 255 + 1e-6
    assert np.abs(d["rgba"][:, 3] - torch.sigmoid(p["opacities"]).numpy()[order]).max() <= 0.5 / 255 + 1e-6
    q = torch.nn.functional.normalize(p["quats"], dim=-1).numpy()[order]
    assert np.abs(d["quats"] - q).max() <= 1 / 128 + 1e-6


def test_splat_file_agrees_with_gsplat_exporter(tmp_path):
    s = random_splats(n=40)
    write_splat(as_written(s), tmp_path / "a.splat")
    p = raw(s)
    (tmp_path / "g.splat").write_bytes(export_splats(p["means"], p["scales"], p["quats"], p["opacities"],
                                                     p["sh0"], p["shN"], format="splat"))
    ours, ref = read_splat(tmp_path / "a.splat"), read_splat(tmp_path / "g.splat")
    a, b = np.lexsort(ours["means"].T), np.lexsort(ref["means"].T)  # gsplat sorts by Morton code
    assert np.array_equal(ours["means"][a], ref["means"][b]) and np.array_equal(ours["scales"][a], ref["scales"][b])
    assert np.abs(ours["rgba"][a] - ref["rgba"][b]).max() <= 1 / 255 + 1e-6  # gsplat truncates, we round
    assert np.abs(ours["quats"][a] - ref["quats"][b]).max() <= 1 / 128 + 1e-6


def write_points(path, **columns):
    pts = np.zeros(len(next(iter(columns.values()))), dtype=[(k, v.dtype) for k, v in columns.items()])
    for k, v in columns.items():
        pts[k] = v
    PlyData([PlyElement.describe(pts, "vertex")], text=True).write(str(path))


@pytest.mark.parametrize("colour", ["u1", "f4", None])
def test_point_cloud_ply_initializes_splats(tmp_path, colour):
    n = 30
    cols = {"x": np.linspace(-1, 1, n, dtype="f4"), "y": np.linspace(0, 1, n, dtype="f4"), "z": np.zeros(n, "f4")}
    if colour:
        full = 255 if colour == "u1" else 1.0
        cols |= {"red": np.full(n, full, colour), "green": np.zeros(n, colour), "blue": np.full(n, full / 5, colour)}
    write_points(tmp_path / "pc.ply", **cols)
    s = read_ply(tmp_path / "pc.ply")
    assert s.num == n and s.sh_degree == 0
    expected = torch.tensor([1.0, 0.0, 0.2]) if colour else torch.tensor([0.5, 0.5, 0.5])
    assert torch.allclose(s.rgb, expected.expand(n, 3), atol=1e-5)
    assert torch.equal(s.means[:, 1].detach(), -torch.from_numpy(cols["y"]))  # y-down file -> y-up inside


def test_reading_undoes_the_file_convention_bit_for_bit(tmp_path):
    s = random_splats(n=5, degree=1)
    write_ply(as_written(s), tmp_path / "a.ply")
    assert np.array_equal(PlyData.read(str(tmp_path / "a.ply"))["vertex"]["y"], raw(s)["means"][:, 1].numpy())
    back = read_ply(tmp_path / "a.ply").params
    for key, value in unflip_yz(raw(s)).items():
        assert torch.equal(back[key].view(torch.int32), value.view(torch.int32)), key
    assert not torch.equal(back["quats"], raw(s)["quats"])


HEADER = b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nproperty float y\n" \
         b"property float z\nend_header\n"


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "not a valid PLY"),
    (b"hello, not a ply \x00\xff\x13" * 10, "not a valid PLY"),
    (HEADER + b"\0" * 20, "not a valid PLY"),  # truncated: 10 vertices need 120 bytes
    (b"ply\nformat ascii 1.0\nelement face 1\nproperty float a\nend_header\n1\n", "no vertex element"),
    (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float a\nend_header\n1\n", "no x, y, z"),
    (b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\nend_header\n",
     "holds no Gaussians"),
])
def test_bad_files_give_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.ply"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LodsgsError) as err:
        read_ply(path)
    assert "bad.ply" in str(err.value) and message in str(err.value) and "\n" not in str(err.value)


def rewrite(src, dst, drop=(), fill=None):
    """Copy a PLY's vertex element without the ``drop`` properties, optionally setting one to a value."""
    data = PlyData.read(str(src))["vertex"].data
    keep = [n for n in data.dtype.names if n not in drop]
    out = np.empty(len(data), dtype=[(n, "f4") for n in keep])
    for n in keep:
        out[n] = data[n]
    if fill:
        out[fill[0]][0] = fill[1]
    PlyData([PlyElement.describe(out, "vertex")]).write(str(dst))


def test_ply_with_missing_or_bad_splat_properties(tmp_path):
    write_ply(random_splats(n=5, degree=1), tmp_path / "a.ply")
    rewrite(tmp_path / "a.ply", tmp_path / "partial.ply", drop=("opacity", "rot_3"))
    with pytest.raises(LodsgsError, match=r"partial.ply.*missing: opacity, rot_3$"):
        read_ply(tmp_path / "partial.ply")
    rewrite(tmp_path / "a.ply", tmp_path / "rest.ply", drop=("f_rest_4",))
    with pytest.raises(LodsgsError, match=r"rest.ply.*found 8"):
        read_ply(tmp_path / "rest.ply")
    rewrite(tmp_path / "a.ply", tmp_path / "nan.ply", fill=("scale_1", np.nan))
    with pytest.raises(LodsgsError, match=r"nan.ply.*NaN"):
        read_ply(tmp_path / "nan.ply")


def test_bad_splat_files_and_destinations(tmp_path):
    with pytest.raises(LodsgsError, match="x.splat.*no such file"):
        read_splat(tmp_path / "x.splat")
    (tmp_path / "y.splat").write_bytes(b"\0" * 33)
    with pytest.raises(LodsgsError, match="y.splat.*multiple of 32"):
        read_splat(tmp_path / "y.splat")
    with pytest.raises(LodsgsError, match="cannot write .*nowhere"):
        write_ply(random_splats(n=2), tmp_path / "nowhere" / "a.ply")
    with pytest.raises(LodsgsError, match="cannot write .*nowhere"):
        write_splat(random_splats(n=2), tmp_path / "nowhere" / "a.splat")
