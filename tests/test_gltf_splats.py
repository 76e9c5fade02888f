"""glTF splats (KHR_gaussian_splatting .glb): float32 round trip, the file checked against the spec by hand (not
through the reader), node transforms, renders, the CLI, and hostile files."""

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci, _quat_to_rotmat, _spherical_harmonics
from typer.testing import CliRunner

from lodsgs.cameras import orbit_cameras
from lodsgs.cli import app
from lodsgs.errors import LodsgsError
from lodsgs.export import export_format
from lodsgs.splats import glb
from lodsgs.splats.gltf import gltf_splats_bytes, read_gltf_arrays, read_gltf_splats, write_gltf_splats
from lodsgs.splats.io import load_splats, write_ply
from lodsgs.splats.mesh import glb_bytes
from lodsgs.splats.model import Splats
from lodsgs.splats.render import render
from lodsgs.view import load_target

runner = CliRunner()
EXT = "KHR_gaussian_splatting"


def random_splats(n=40, degree=0, seed=0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2 - 1
    return Splats({"means": torch.randn(n, 3, generator=g) * 0.3, "scales": torch.randn(n, 3, generator=g) - 3,
                   "quats": torch.randn(n, 4, generator=g), "opacities": torch.randn(n, generator=g) * 3,
                   "sh0": torch.randn(n, 1, 3, generator=g) * 0.5, "shN": torch.randn(n, k, 3, generator=g) * 0.2},
                  sh_degree=degree)


def split(raw: bytes) -> tuple[dict, bytes]:
    """(JSON, BIN) of a GLB, parsed by hand from the glTF 2.0 GLB layout (independent of lodsgs's reader)."""
    magic, version, total = struct.unpack_from("<4sII", raw)
    assert (magic, version, total) == (b"glTF", 2, len(raw))
    n, kind = struct.unpack_from("<I4s", raw, 12)
    assert kind == b"JSON" and n % 4 == 0
    m, kind = struct.unpack_from("<I4s", raw, 20 + n)
    assert kind == b"BIN\0" and m % 4 == 0 and 28 + n + m == len(raw)
    return json.loads(raw[20:20 + n]), raw[28 + n:]


def attribute(doc: dict, blob: bytes, semantic: str) -> np.ndarray:
    """A float32 attribute [count, width] read by hand: no stride, offsets as written."""
    acc = doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"][semantic]]
    view = doc["bufferViews"][acc["bufferView"]]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(blob, "<f4", acc["count"] * width, start).reshape(-1, width)


def max_ulp(a, b) -> int:
    a, b = (np.asarray(x, np.float32).view(np.int32).astype(np.int64) for x in (a, b))
    return int(np.abs(a - b).max())


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_round_trip_is_float32_exact(tmp_path, degree):
    s = random_splats(degree=degree)
    write_gltf_splats(s, tmp_path / "a.glb")
    stored = read_gltf_arrays(tmp_path / "a.glb")
    p = {k: v.detach().double() for k, v in s.params.items()}
    expected = {"means": p["means"], "quats": torch.nn.functional.normalize(p["quats"], dim=-1)[:, [1, 2, 3, 0]],
                "scales": p["scales"].exp(), "opacities": p["opacities"].sigmoid(),
                "sh": torch.cat([p["sh0"], p["shN"]], 1)}
    for key, value in expected.items():  # the file holds the float64 activations rounded once to float32
        assert np.array_equal(stored[key], value.float().numpy()), key
    back = read_gltf_splats(tmp_path / "a.glb")
    assert back.sh_degree == degree
    assert torch.equal(back.means, s.means) and torch.equal(back.sh, s.sh)  # bit for bit
    # lodsgs's float32 activations of what it read: within an ulp or two of the originals' (exp/log, sigmoid/logit)
    assert max_ulp(back.scales.detach(), s.scales.detach()) <= 2
    assert max_ulp(back.opacities.detach(), s.opacities.detach()) <= 4
    assert max_ulp(back.quats.detach(), s.quats.detach()) <= 4
    assert gltf_splats_bytes(s) == (tmp_path / "a.glb").read_bytes()  # same splats, same bytes


def test_file_follows_the_spec(tmp_path):
    s = random_splats(n=9, degree=2)
    write_gltf_splats(s, tmp_path / "a.glb")
    doc, blob = split((tmp_path / "a.glb").read_bytes())
    assert EXT in doc["extensionsUsed"] and "extensionsRequired" not in doc  # the spec's fallback: points
    prim = doc["meshes"][0]["primitives"][0]
    assert prim["mode"] == 0  # POINTS
    assert prim["extensions"][EXT]["kernel"] == "ellipse" and prim["extensions"][EXT]["colorSpace"] == \
        "srgb_rec709_display"
    sh_names = [f"{EXT}:SH_DEGREE_{l}_COEF_{n}" for l in range(3) for n in range(2 * l + 1)]
    assert set(prim["attributes"]) == {"POSITION", f"{EXT}:ROTATION", f"{EXT}:SCALE", f"{EXT}:OPACITY", "COLOR_0",
                                       *sh_names}
    for acc in doc["accessors"]:
        assert acc["componentType"] == 5126 and "normalized" not in acc
        assert doc["bufferViews"][acc["bufferView"]]["byteOffset"] % 4 == 0
    mat = doc["materials"][prim["material"]]
    assert mat["extensions"] == {"KHR_materials_unlit": {}} and "KHR_materials_unlit" in doc["extensionsUsed"]
    raw = {k: v.detach().numpy().astype(np.float64) for k, v in s.params.items()}
    pos = attribute(doc, blob, "POSITION")
    acc = doc["accessors"][prim["attributes"]["POSITION"]]
    assert acc["min"] == pos.min(0).tolist() and acc["max"] == pos.max(0).tolist()
    assert np.array_equal(pos, raw["means"].astype(np.float32))  # y up as lodsgs's world: no flip
    w, x, y, z = (raw["quats"] / np.linalg.norm(raw["quats"], axis=1, keepdims=True)).T
    assert np.allclose(attribute(doc, blob, f"{EXT}:ROTATION"), np.stack([x, y, z, w], 1), atol=1e-7)  # xyzw
    assert np.allclose(attribute(doc, blob, f"{EXT}:SCALE"), np.exp(raw["scales"]), rtol=1e-6)  # linear
    opacity = 1 / (1 + np.exp(-raw["opacities"]))
    assert np.allclose(attribute(doc, blob, f"{EXT}:OPACITY")[:, 0], opacity, rtol=1e-6)  # after the sigmoid
    dc = attribute(doc, blob, f"{EXT}:SH_DEGREE_0_COEF_0")
    assert np.array_equal(dc, raw["sh0"][:, 0].astype(np.float32))  # the raw DC coefficient
    assert np.array_equal(attribute(doc, blob, f"{EXT}:SH_DEGREE_2_COEF_3"), raw["shN"][:, 6].astype(np.float32))
    # COLOR_0 as the spec's fallback note says: clamp(SH0 * 0.282095 + 0.5), sRGB decoded to linear; alpha opacity
    srgb = np.clip(dc * 0.2820947917738781 + 0.5, 0, 1)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)
    colour = attribute(doc, blob, "COLOR_0")
    assert np.allclose(colour[:, :3], linear, atol=1e-6) and np.allclose(colour[:, 3], opacity, rtol=1e-6)


def spec_colour(sh: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The spec's "Calculating color from Spherical Harmonics" formula, its constants as printed; sh [N,16,3] in
    SH_DEGREE_l_COEF_n order, d [3] a unit direction from the camera to the splat."""
    x, y, z = d
    basis = [0.2820947917738781,
             -0.4886025119029199 * y, 0.4886025119029199 * z, -0.4886025119029199 * x,
             1.092548430592079 * x * y, -1.092548430592079 * y * z, 0.3153915652525200 * (2 * z * z - x * x - y * y),
             -1.092548430592079 * x * z, 0.5462742152960395 * (x * x - y * y),
             -0.5900435899266435 * y * (3 * x * x - y * y), 2.890611442640554 * x * y * z,
             -0.4570457994644657 * y * (4 * z * z - x * x - y * y),
             0.3731763325901154 * z * (2 * z * z - 3 * x * x - 3 * y * y),
             -0.4570457994644657 * x * (4 * z * z - x * x - y * y), 1.445305721320277 * z * (x * x - y * y),
             -0.5900435899266435 * x * (x * x - 3 * y * y)]
    return (np.asarray(basis)[None, :, None] * sh).sum(1) + 0.5


def test_sh_attributes_give_the_colour_the_spec_formula_gives(tmp_path):
    s = random_splats(n=12, degree=3)
    write_gltf_splats(s, tmp_path / "a.glb")
    doc, blob = split((tmp_path / "a.glb").read_bytes())
    names = [f"{EXT}:SH_DEGREE_{l}_COEF_{n}" for l in range(4) for n in range(2 * l + 1)]
    sh = np.stack([attribute(doc, blob, name) for name in names], 1).astype(np.float64)  # [N,16,3]
    for d in np.random.default_rng(0).normal(size=(5, 3)):
        d = d / np.linalg.norm(d)
        ours = _spherical_harmonics(3, torch.tensor(d).expand(12, 3), s.sh.detach().double()) + 0.5  # as rendered
        assert np.allclose(spec_colour(sh, d), ours.numpy(), atol=1e-6)


def test_read_back_splats_render_as_the_originals(tmp_path):
    s = random_splats(n=60, degree=1)
    write_gltf_splats(s, tmp_path / "a.glb")
    cams = orbit_cameras(torch.tensor([20.0, -10.0]), torch.tensor([0.0, 130.0]), 2.0, 45.0, 24, 24)
    with torch.no_grad():
        a, b = render(s, cams), render(read_gltf_splats(tmp_path / "a.glb"), cams)
    assert a.alpha.max() > 0.5
    assert (a.rgb - b.rgb).abs().max() < 1e-5 and (a.alpha - b.alpha).abs().max() < 1e-5


def rewrite(path: Path, edit) -> Path:
    """The .glb at ``path`` with ``edit(doc, blob)`` applied (blob: a bytearray it may change), packed again."""
    doc, raw = split(path.read_bytes())
    blob = bytearray(raw)
    edit(doc, blob)
    doc["buffers"][0]["byteLength"] = len(blob)
    path.write_bytes(glb.pack_glb(doc, bytes(blob)))
    return path


def test_node_transform_moves_the_splats_and_turns_their_sh(tmp_path):
    s = random_splats(n=10, degree=2)
    write_gltf_splats(s, tmp_path / "a.glb")
    half = math.radians(70) / 2
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    turn = [*(axis * math.sin(half)), math.cos(half)]  # x, y, z, w

    def place(doc, blob):  # a parent scaling by 2 and moving, a child turning
        doc["nodes"] = [{"children": [1], "scale": [2.0, 2.0, 2.0], "translation": [0.1, -0.2, 0.3]},
                        {"mesh": 0, "rotation": turn}]
        doc["scenes"] = [{"nodes": [0]}]
    back = read_gltf_splats(rewrite(tmp_path / "a.glb", place))
    r = _quat_to_rotmat(torch.tensor([turn[3], *turn[:3]], dtype=torch.float64)[None])[0]
    means = s.means.detach().double()
    assert torch.allclose(back.means.double(), 2 * means @ r.T + torch.tensor([0.1, -0.2, 0.3]), atol=1e-6)
    cov = _quat_scale_to_covar_preci(s.quats.detach().double(), s.scales.detach().double(), True, False)[0]
    cov_back = _quat_scale_to_covar_preci(back.quats.double(), back.scales.double(), True, False)[0]
    assert torch.allclose(cov_back, 4 * r @ cov @ r.T, rtol=1e-4, atol=1e-12)
    dirs = torch.nn.functional.normalize(torch.randn(10, 3, dtype=torch.float64), dim=-1)
    turned = _spherical_harmonics(2, dirs, back.sh.detach().double())
    original = _spherical_harmonics(2, dirs @ r, s.sh.detach().double())  # the colour seen from Rᵀd before
    assert torch.allclose(turned, original, atol=1e-6)


def test_node_that_stretches_the_splats_is_refused(tmp_path):
    write_gltf_splats(random_splats(), tmp_path / "a.glb")
    path = rewrite(tmp_path / "a.glb", lambda doc, blob: doc["nodes"][0].update(scale=[1.0, 2.0, 1.0]))
    with pytest.raises(LodsgsError, match="scales its splats unevenly"):
        read_gltf_splats(path)


def test_other_writers_component_types_and_strides_are_read(tmp_path):
    s = random_splats(n=20)
    write_gltf_splats(s, tmp_path / "a.glb")
    exact = read_gltf_arrays(tmp_path / "a.glb")

    def quantize(doc, blob):
        attrs = doc["meshes"][0]["primitives"][0]["attributes"]
        rows = [(f"{EXT}:ROTATION", np.round(exact["quats"] * 32767).astype("<i2"), 5122),
                (f"{EXT}:OPACITY", np.round(exact["opacities"][:, None] * 255).astype("<u1"), 5121),
                (f"{EXT}:SCALE", np.round(exact["scales"] / exact["scales"].max() * 65535).astype("<u2"), 5123)]
        for name, values, ctype in rows:
            doc["bufferViews"].append({"buffer": 0, "byteOffset": len(blob), "byteLength": values.nbytes})
            blob += values.tobytes() + b"\0" * (-values.nbytes % 4)
            doc["accessors"][attrs[name]].update(bufferView=len(doc["bufferViews"]) - 1, componentType=ctype,
                                                 normalized=True)
        strided = np.zeros((20, 4), "<f4")  # POSITION interleaved with a padding float: byteStride 16
        strided[:, :3] = exact["means"]
        doc["bufferViews"].append({"buffer": 0, "byteOffset": len(blob), "byteLength": strided.nbytes - 4,
                                   "byteStride": 16})
        blob += strided.tobytes()
        doc["accessors"][attrs["POSITION"]]["bufferView"] = len(doc["bufferViews"]) - 1
    got = read_gltf_arrays(rewrite(tmp_path / "a.glb", quantize))
    assert np.array_equal(got["means"], exact["means"])
    assert np.abs(got["quats"] - exact["quats"]).max() <= 0.5 / 32767 + 1e-12
    assert np.abs(got["opacities"] - exact["opacities"]).max() <= 0.5 / 255 + 1e-12
    # normalized scales are read as [0, 1] (the spec defines no dequantization; a node's scale gives the size)
    assert np.abs(got["scales"] - exact["scales"] / exact["scales"].max()).max() <= 0.5 / 65535 + 1e-12


def test_linear_colour_space_is_read_as_display_srgb(tmp_path):
    s = random_splats(n=5)
    linear = s.rgb.detach().double().clamp(0.01, 1.0)  # the file's colours, taken as linear
    with torch.no_grad():
        s.params["sh0"][:, 0] = ((linear - 0.5) / 0.2820947917738781).float()
    write_gltf_splats(s, tmp_path / "a.glb")
    path = rewrite(tmp_path / "a.glb", lambda doc, blob: doc["meshes"][0]["primitives"][0]["extensions"][EXT].update(
        colorSpace="lin_rec709_display"))
    srgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    assert torch.allclose(read_gltf_splats(path).rgb.double(), srgb, atol=1e-5)


def test_cli_exports_gltf_splats_and_info_and_load_read_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = random_splats(degree=1)
    write_ply(s, tmp_path / "s.ply")
    result = runner.invoke(app, ["export", "s.ply", "--format", "gltf-splats", "--out", "x.glb"])
    assert result.exit_code == 0, result.output
    assert torch.allclose(load_splats(tmp_path / "x.glb").means, s.means, atol=0)  # .ply -> .glb: the same world
    info = runner.invoke(app, ["info", "x.glb"])
    assert info.exit_code == 0 and "40 Gaussians, SH degree 1" in info.output, info.output
    assert runner.invoke(app, ["export", "s.ply", "--format", "gltf-splats"]).exit_code == 0
    assert (tmp_path / "s_splats.glb").is_file()  # the default name is never the mesh's s.glb
    back = runner.invoke(app, ["export", "x.glb", "--format", "spz"])  # a splats .glb converts like any splat file
    assert back.exit_code == 0 and (tmp_path / "x.spz").is_file(), back.output
    assert export_format(Path("m.glb")) == "glb"  # a .glb by extension alone is still the mesh
    assert load_target(tmp_path / "x.glb").splats.num == 40  # what `lodsgs view x.glb` shows


def test_a_mesh_glb_where_splats_are_expected_says_so(tmp_path):
    (tmp_path / "m.glb").write_bytes(glb_bytes(np.eye(3), np.eye(3), np.array([[0, 1, 2]]), np.full((3, 3), 0.5)))
    with pytest.raises(LodsgsError, match=r"is a mesh glTF, not splats \(KHR_gaussian_splatting\); "):
        load_splats(tmp_path / "m.glb")
    result = runner.invoke(app, ["export", str(tmp_path / "m.glb"), "--format", "ply", "--out",
                                 str(tmp_path / "x.ply")])
    assert result.exit_code == 2 and "is a mesh glTF" in result.output
    assert len(result.output.strip().splitlines()) == 1
    pytest.importorskip("trimesh")
    info = runner.invoke(app, ["info", str(tmp_path / "m.glb")])  # info tells the two .glb kinds apart
    assert info.exit_code == 0 and ": mesh, 3 vertices, 1 faces" in info.output, info.output


def _accessor(doc, semantic):
    return doc["accessors"][doc["meshes"][0]["primitives"][0]["attributes"][semantic]]


def _put(semantic, row, values):
    """An edit writing float32 ``values`` into row ``row`` of ``semantic``'s data."""
    def edit(doc, blob):
        acc = _accessor(doc, semantic)
        start = doc["bufferViews"][acc["bufferView"]]["byteOffset"] + 4 * len(values) * row
        blob[start:start + 4 * len(values)] = np.asarray(values, "<f4").tobytes()
    return edit


def _set(semantic, **fields):
    return lambda doc, blob: _accessor(doc, semantic).update(fields)


def _prim(**fields):
    return lambda doc, blob: doc["meshes"][0]["primitives"][0].update(fields)


def _ext(**fields):
    """An edit replacing the primitive's KHR_gaussian_splatting object by ``fields``."""
    return lambda doc, blob: doc["meshes"][0]["primitives"][0]["extensions"].update({EXT: fields})


def _drop(semantic):
    return lambda doc, blob: doc["meshes"][0]["primitives"][0]["attributes"].pop(semantic)


HOSTILE = {  # an edit of a good file -> the problem the one-line message must name
    "external buffer": (lambda doc, blob: doc["buffers"][0].update(uri="https://example.com/x.bin"),
                        "outside the .glb"),
    "data uri": (lambda doc, blob: doc["buffers"][0].update(uri="data:application/octet-stream;base64,AAAA"),
                 "outside the .glb"),
    "count too large": (_set("POSITION", count=10**8), "more than the 10,000,000 Gaussians"),
    "opacity count too large": (_set(f"{EXT}:OPACITY", count=10**8), "lodsgs reads 1 to 10,000,000"),
    "accessor past its view": (_set("POSITION", count=41), "do not fit its bufferView"),
    "view past the buffer": (lambda doc, blob: doc["bufferViews"][0].update(byteLength=10**9), "runs past buffer 0"),
    "sh as bytes": (_set(f"{EXT}:SH_DEGREE_0_COEF_0", componentType=5121, normalized=True), "allows VEC3 of float"),
    "scale as uint32": (_set(f"{EXT}:SCALE", componentType=5125), "allows VEC3 of"),
    "rotation as vec3": (_set(f"{EXT}:ROTATION", type="VEC3"), "allows VEC4 of"),
    "index out of range": (lambda doc, blob: doc["meshes"][0]["primitives"][0]["attributes"].update(POSITION=99),
                           "accessors[99], which the file does not hold"),
    "index a string": (lambda doc, blob: doc["meshes"][0]["primitives"][0]["attributes"].update(POSITION="0"),
                       "which the file does not hold"),
    "index a bool": (lambda doc, blob: doc["meshes"][0]["primitives"][0]["attributes"].update(POSITION=True),
                     "which the file does not hold"),
    "count a string": (_set("POSITION", count="40"), "not a non-negative integer"),
    "negative offset": (_set("POSITION", byteOffset=-4), "not a non-negative integer"),
    "sparse": (_set("POSITION", sparse={"count": 1}), "no plain bufferView"),
    "counts differ": (_set(f"{EXT}:OPACITY", count=39), "different numbers of elements"),
    "nan position": (_put("POSITION", 3, [float("nan"), 0, 0]), "NaN or infinite"),
    "infinite sh": (_put(f"{EXT}:SH_DEGREE_0_COEF_0", 0, [float("inf"), 0, 0]), "NaN or infinite"),
    "negative scale": (_put(f"{EXT}:SCALE", 2, [-1.0, 1, 1]), "negative Gaussian scales"),
    "opacity above one": (_put(f"{EXT}:OPACITY", 1, [1.5]), "outside [0, 1]"),
    "zero rotation": (_put(f"{EXT}:ROTATION", 0, [0, 0, 0, 0]), "length 0"),
    "no mode": (lambda doc, blob: doc["meshes"][0]["primitives"][0].pop("mode"), "mode 4"),
    "triangles": (_prim(mode=4), "requires POINTS (0)"),
    "no kernel": (_ext(colorSpace="srgb_rec709_display"), "lacks the required kernel and colorSpace"),
    "unknown colour space": (_ext(kernel="ellipse", colorSpace="acescg"), "colorSpace is 'acescg'"),
    "missing opacity": (_drop(f"{EXT}:OPACITY"), "lacks the required attribute(s) KHR_gaussian_splatting:OPACITY"),
    "partial sh": (_drop(f"{EXT}:SH_DEGREE_1_COEF_2"), "partly defined"),
    "compressed": (lambda doc, blob: doc.update(extensionsRequired=[EXT, "KHR_gaussian_splatting_compression_spz_2"]),
                   "requires KHR_gaussian_splatting_compression_spz_2"),
    "node cycle": (lambda doc, blob: doc["nodes"].__setitem__(0, {"mesh": 0, "children": [0]}), "appears twice"),
    "bad node matrix": (lambda doc, blob: doc["nodes"][0].update(matrix=[1.0] * 15), "matrix is not 16 finite"),
    "no meshes": (lambda doc, blob: doc.pop("meshes"), "holds no mesh primitives"),
    "component type a list": (_set(f"{EXT}:SCALE", componentType=[5126]), "allows VEC3 of"),
    "normalized a dict": (_set(f"{EXT}:OPACITY", normalized={}), "allows SCALAR of"),
    "a megabyte type": (_set("POSITION", type="V" * 10**6), "is 'VVVVV"),
    "missing position": (_drop("POSITION"), "lacks the required attribute(s) POSITION"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_file_is_one_line_naming_the_file_and_problem(tmp_path, case):
    edit, problem = HOSTILE[case]
    write_gltf_splats(random_splats(degree=1), tmp_path / "h.glb")
    path = rewrite(tmp_path / "h.glb", edit)
    with pytest.raises(LodsgsError) as info:
        read_gltf_splats(path)
    message = str(info.value)
    assert problem in message and str(path) in message and "\n" not in message, message
    assert len(message) < 400 + len(str(path))  # the file's own strings are cut short


def test_instances_count_against_the_cap_before_anything_is_decoded(tmp_path, monkeypatch):
    write_gltf_splats(random_splats(), tmp_path / "a.glb")  # 40 Gaussians, shown by three nodes: 120

    def instance(doc, blob):
        doc["nodes"] = [{"mesh": 0}, {"mesh": 0}, {"mesh": 0}]
        doc["scenes"] = [{"nodes": [0, 1, 2]}]
    path = rewrite(tmp_path / "a.glb", instance)
    assert len(read_gltf_arrays(path)["means"]) == 120
    monkeypatch.setattr("lodsgs.splats.gltf.MAX_GAUSSIANS", 100)
    monkeypatch.setattr("lodsgs.splats.gltf.GltfFile.accessor", lambda *a: pytest.fail("decoded"))
    with pytest.raises(LodsgsError, match="shows more than the 100 Gaussians"):
        read_gltf_arrays(path)


def test_odd_but_harmless_json_is_read(tmp_path):
    s = random_splats()
    write_gltf_splats(s, tmp_path / "a.glb")

    def odd(doc, blob):  # no scenes (roots are the nodes nobody lists as a child), junk children lists
        doc.pop("scenes"), doc.pop("scene")
        doc["nodes"] = [{"mesh": 0, "children": 5}, {"children": "x"}]
    assert torch.equal(read_gltf_splats(rewrite(tmp_path / "a.glb", odd)).means, s.means)


def _bytes_cases(good: bytes) -> dict[str, tuple[bytes, str]]:
    """Damaged containers: (bytes, the problem the message names)."""
    n = struct.unpack_from("<I", good, 12)[0]
    claim_json = good[:12] + struct.pack("<I", 10**6) + good[16:]
    claim_bin = good[:20 + n] + struct.pack("<I", 10**6) + good[24 + n:]
    bad_json = good[:20] + b"{not json" + b" " * (n - 9) + good[20 + n:]
    array_json = good[:20] + b"[1]" + b" " * (n - 3) + good[20 + n:]
    return {"not glb": (b"hello, this is not a glb file", "not a binary glTF"),
            "truncated": (good[:-8], "header says"),
            "version 1": (good[:4] + struct.pack("<I", 1) + good[8:], "glTF version 1"),
            "json past the end": (claim_json, "not a JSON chunk within the file"),
            "bin past the end": (claim_bin, "beyond the end of the file"),
            "bad json": (bad_json, "not valid JSON"),
            "json array": (array_json, "not a glTF document"),
            "no bin": (struct.pack("<4sII", b"glTF", 2, 20 + n) + good[12:20 + n], "buffer 0 claims")}


@pytest.mark.parametrize("case", ["not glb", "truncated", "version 1", "json past the end", "bin past the end",
                                  "bad json", "json array", "no bin"])
def test_damaged_container_is_one_line(tmp_path, case):
    good = gltf_splats_bytes(random_splats())
    raw, problem = _bytes_cases(good)[case]
    (tmp_path / "d.glb").write_bytes(raw)
    with pytest.raises(LodsgsError) as info:
        read_gltf_splats(tmp_path / "d.glb")
    assert problem in str(info.value) and "d.glb" in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_json_chunk_is_capped(tmp_path, monkeypatch):
    write_gltf_splats(random_splats(), tmp_path / "a.glb")
    monkeypatch.setattr(glb, "MAX_JSON_BYTES", 256)
    with pytest.raises(LodsgsError, match="JSON chunk is .* bytes, more than the 256"):
        read_gltf_splats(tmp_path / "a.glb")
