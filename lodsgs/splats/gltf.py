"""glTF splats: the ``KHR_gaussian_splatting`` extension (Khronos, release candidate), written and read as .glb.

From the specification (KhronosGroup/glTF, extensions/2.0/Khronos/KHR_gaussian_splatting/README.md and
schema/mesh.primitive.KHR_gaussian_splatting.schema.json): one mesh primitive of mode POINTS (0) whose
``extensions.KHR_gaussian_splatting`` object names the required ``kernel`` ("ellipse") and ``colorSpace``, with
the attributes POSITION (the mean), ``KHR_gaussian_splatting:ROTATION`` (a unit quaternion in glTF's x, y, z, w
order), ``:SCALE`` (linear, not log), ``:OPACITY`` (in [0, 1], after the sigmoid) and
``:SH_DEGREE_l_COEF_n``: the raw SH coefficients, RGB in each VEC3, n = 0..2l from m = -l up (gsplat's order),
the diffuse colour being SH_DEGREE_0_COEF_0 · 0.2820948 + 0.5 (the 3DGS convention, as lodsgs renders).

What lodsgs writes: float32 attributes, POSITION's min and max (glTF requires them), SH up to the splats' degree,
colour space "srgb_rec709_display" (lodsgs's renders are display sRGB), a COLOR_0 fallback (the spec's MAY: the
linear diffuse colour and the opacity, so a viewer without the extension shows a coloured point cloud) and an
unlit material for that fallback (the spec: splat renderers ignore the material; the colour is display-referred
"similar to KHR_materials_unlit"). ``extensionsRequired`` stays empty: the spec has the base extension fall back
to points and lets only extensions built on it (compression) require it. No transform and no y flip: lodsgs's
world is glTF's (y up, front +z, metres), unlike its y-down .ply/.splat/.spz (convention.py).

Readers checked for how they interpret it: three.js ``examples/jsm/loaders/GLTFGaussianSplatLoaderExtension.js``
and Babylon.js ``packages/dev/loaders/src/glTF/2.0/Extensions/KHR_gaussian_splatting.pure.ts`` both take the
rotation as x, y, z, w, the scale as linear, the opacity as is and the colour as 0.5 + C0 · SH0; both ignore
``colorSpace``'s value. Both (three.js 0.187.0, Babylon.js 9.28.0) and the PlayCanvas engine (2.23.3) draw these
files with SH bands 1-3 in tests/test_browser.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from lodsgs.errors import LodsgsError
from lodsgs.splats.convention import check_splats, world_params, write_atomic
from lodsgs.splats.glb import ARRAY_BUFFER, add_accessor, glb_json_bytes, pack_glb, read_glb
from lodsgs.splats.mesh import UNLIT_MATERIAL, srgb_to_linear
from lodsgs.splats.model import SH_C0, Splats
from lodsgs.splats.spz import MAX_SPZ_GAUSSIANS

EXT = "KHR_gaussian_splatting"
ROTATION, SCALE, OPACITY = f"{EXT}:ROTATION", f"{EXT}:SCALE", f"{EXT}:OPACITY"
COLOR_SPACE = "srgb_rec709_display"
FLOAT, BYTE, UBYTE, SHORT, USHORT = 5126, 5120, 5121, 5122, 5123
MAX_GAUSSIANS = MAX_SPZ_GAUSSIANS  # more in one file is a damaged or hostile one
MIN_SCALE = 1e-12  # a zero scale (a flat Gaussian, which the spec allows) is read as this, so its log is finite


def sh_name(degree: int, n: int) -> str:
    """The attribute of SH band ``degree``'s coefficient n (m = n - degree)."""
    return f"{EXT}:SH_DEGREE_{degree}_COEF_{n}"


def gltf_splats_bytes(splats: Splats, path: Path | str = "the .glb file") -> bytes:
    """The .glb of ``splats`` (same splats, same bytes); activations computed in float64, stored as float32."""
    p = {k: v.double() for k, v in world_params(splats, path).items()}
    quats = torch.nn.functional.normalize(p["quats"], dim=-1)[:, [1, 2, 3, 0]]  # wxyz -> glTF's xyzw
    opacity = torch.sigmoid(p["opacities"])
    sh = torch.cat([p["sh0"], p["shN"]], 1)  # [N,K,3], gsplat order: band l's m = -l..l at l² + l + m
    rgb = (sh[:, 0] * SH_C0 + 0.5).clamp(0, 1).numpy()
    columns = {"POSITION": (p["means"], "VEC3"), ROTATION: (quats, "VEC4"), SCALE: (p["scales"].exp(), "VEC3"),
               OPACITY: (opacity, "SCALAR")}
    for l in range(splats.sh_degree + 1):
        columns |= {sh_name(l, n): (sh[:, l * l + n], "VEC3") for n in range(2 * l + 1)}
    columns["COLOR_0"] = (np.concatenate([srgb_to_linear(rgb), opacity[:, None].numpy()], 1), "VEC4")
    blob, doc = bytearray(), splats_document()
    attributes = doc["meshes"][0]["primitives"][0]["attributes"]
    for name, (values, kind) in columns.items():
        array = np.asarray(values, "<f4")
        attributes[name] = add_accessor(blob, doc, array, FLOAT, kind, ARRAY_BUFFER, bounds=name == "POSITION")
    doc["buffers"] = [{"byteLength": len(blob)}]
    return pack_glb(doc, blob)


def splats_document() -> dict:
    """The glTF JSON around the attributes: one node, one POINTS primitive with the extension object (its
    optional projection and sortingMethod written out at their defaults) and the unlit fallback material."""
    extension = {"kernel": "ellipse", "colorSpace": COLOR_SPACE, "projection": "perspective",
                 "sortingMethod": "cameraDistance"}
    primitive = {"attributes": {}, "material": 0, "mode": 0, "extensions": {EXT: extension}}
    return {"asset": {"version": "2.0", "generator": "lodsgs"}, "extensionsUsed": [EXT, "KHR_materials_unlit"],
            "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "splats"}],
            "meshes": [{"name": "splats", "primitives": [primitive]}], "materials": [UNLIT_MATERIAL],
            "buffers": [], "bufferViews": [], "accessors": []}


def write_gltf_splats(splats: Splats, path: Path | str) -> None:
    """Write ``splats`` as a KHR_gaussian_splatting .glb, atomically."""
    data = gltf_splats_bytes(splats, path)
    write_atomic(path, lambda f: Path(f).write_bytes(data))


def is_gltf_splats(path: Path | str) -> bool:
    """Whether a .glb mentions KHR_gaussian_splatting (splats, read by ``read_gltf_splats``) rather than being a
    mesh; a cheap look at its JSON chunk that never fails, so a damaged splat file still reaches the reader."""
    return EXT.encode() in glb_json_bytes(Path(path))


# --- reading ---------------------------------------------------------------------------------------------------
# (accessor type, allowed (componentType, normalized) pairs), from the spec's attribute table
LAYOUTS = {ROTATION: ("VEC4", {(FLOAT, False), (BYTE, True), (SHORT, True)}),
           SCALE: ("VEC3", {(FLOAT, False), (UBYTE, False), (UBYTE, True), (USHORT, False), (USHORT, True)}),
           OPACITY: ("SCALAR", {(FLOAT, False), (UBYTE, True), (USHORT, True)}),
           "POSITION": ("VEC3", {(FLOAT, False)}), "SH": ("VEC3", {(FLOAT, False)})}
QUANTIZED = {(c, norm) for c in (BYTE, UBYTE, SHORT, USHORT) for norm in (False, True)}  # KHR_mesh_quantization
DTYPES = {BYTE: "<i1", UBYTE: "<u1", SHORT: "<i2", USHORT: "<u2", FLOAT: "<f4"}
WIDTHS = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
KNOWN_REQUIRED = {EXT, "KHR_materials_unlit", "KHR_mesh_quantization"}


@dataclass
class GltfFile:
    """A parsed .glb and the lookups that check every index, type and length against it before use."""

    doc: dict
    blob: bytes
    path: Path

    def fail(self, problem: str) -> NoReturn:
        raise LodsgsError(f"cannot read {str(self.path)!r}: {problem}")

    def item(self, key: str, index: object, what: str) -> dict:
        """``doc[key][index]``, a JSON object, or one line naming ``what`` referred to it."""
        items = self.doc.get(key)
        if (not isinstance(items, list) or not _is_uint(index) or index >= len(items)
                or not isinstance(items[index], dict)):
            self.fail(f"{what} refers to {key}[{_short(index)}], which the file does not hold")
        return items[index]

    def uint(self, value: object, what: str) -> int:
        if not _is_uint(value):
            self.fail(f"{what} is {_short(value)}, not a non-negative integer")
        return value

    def accessor(self, index: object, semantic: str) -> np.ndarray:
        """The accessor of attribute ``semantic`` as float64 [count, width], normalized integers scaled to
        [0, 1] or [-1, 1] as glTF defines; its type, component type and every byte range checked first."""
        what = f"its {semantic} accessor"
        acc = self.item("accessors", index, f"attribute {semantic}")
        kind, allowed = LAYOUTS["SH" if ":SH_DEGREE_" in semantic else semantic]
        if semantic == "POSITION" and "KHR_mesh_quantization" in _strings(self.doc.get("extensionsUsed")):
            allowed = allowed | QUANTIZED
        ctype, normalized = acc.get("componentType"), acc.get("normalized", False)
        known = isinstance(ctype, int) and isinstance(normalized, bool) and (ctype, normalized) in allowed
        if acc.get("type") != kind or not known:
            self.fail(f"{what} is {_short(acc.get('type'))} of componentType {_short(ctype)}"
                      f"{' normalized' * (normalized is True)}; KHR_gaussian_splatting allows {kind} of "
                      f"{_names(allowed)}")
        if "sparse" in acc or "bufferView" not in acc:
            self.fail(f"{what} has no plain bufferView (sparse, zero-filled or compressed data, which lodsgs does "
                      "not read)")
        count = self.uint(acc.get("count"), f"{what}'s count")
        if not 0 < count <= MAX_GAUSSIANS:
            self.fail(f"{what} holds {count} elements; lodsgs reads 1 to {MAX_GAUSSIANS:,} Gaussians")
        view = self.item("bufferViews", acc["bufferView"], what)
        start, length = self.view_range(view, what)
        dtype, width = np.dtype(DTYPES[ctype]), WIDTHS[kind]
        size = dtype.itemsize * width
        stride = self.uint(view.get("byteStride", size), f"{what}'s byteStride")
        offset = self.uint(acc.get("byteOffset", 0), f"{what}'s byteOffset")
        if stride < size or offset + (count - 1) * stride + size > length:
            self.fail(f"{what}'s {count} elements of {size} bytes (stride {stride}, from byte {offset}) do not fit "
                      f"its bufferView of {length} bytes")
        raw = np.frombuffer(self.blob, np.uint8, (count - 1) * stride + size, start + offset)
        rows = np.lib.stride_tricks.as_strided(raw, (count, size), (stride, 1), writeable=False)
        values = np.ascontiguousarray(rows).view(dtype).reshape(count, width).astype(np.float64)
        if normalized:
            values = np.maximum(values / np.iinfo(dtype).max, -1.0)
        return values

    def view_range(self, view: dict, what: str) -> tuple[int, int]:
        """(start in the BIN chunk, length) of a bufferView, within buffer 0, within the BIN chunk."""
        buffer = self.item("buffers", view.get("buffer"), f"the bufferView of {what}")
        if "uri" in buffer or view.get("buffer") != 0:
            self.fail(f"{what} is in a buffer outside the .glb (an external file or a data: URI); lodsgs reads "
                      "self-contained .glb files only and fetches nothing")
        declared = self.uint(buffer.get("byteLength"), "buffer 0's byteLength")
        if declared > len(self.blob):
            self.fail(f"buffer 0 claims {declared} bytes but the BIN chunk holds {len(self.blob)}")
        start = self.uint(view.get("byteOffset", 0), f"the bufferView of {what}'s byteOffset")
        length = self.uint(view.get("byteLength"), f"the bufferView of {what}'s byteLength")
        if start + length > declared:
            self.fail(f"the bufferView of {what} (bytes {start}..{start + length}) runs past buffer 0's "
                      f"{declared} bytes")
        return start, length


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: object) -> str:
    """A file's value in a message: its repr, cut short (a hostile file's strings can be megabytes)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _names(allowed: set[tuple[int, bool]]) -> str:
    names = {FLOAT: "float", BYTE: "byte", UBYTE: "unsigned byte", SHORT: "short", USHORT: "unsigned short"}
    return ", ".join(f"{names[c]}{' normalized' * norm}" for c, norm in sorted(allowed))


def read_gltf_splats(path: Path | str) -> Splats:
    """A KHR_gaussian_splatting .glb as splats in lodsgs's world (glTF's axes, nothing flipped): every splat
    primitive the scene shows, placed by its node (rotation, translation and uniform scale; SH bands rotated
    with it), of the highest SH degree among them. Anything else, a mesh .glb included, is one LodsgsError."""
    arrays = read_gltf_arrays(path)
    degree = int(round(arrays["sh"].shape[1] ** 0.5)) - 1
    with np.errstate(divide="ignore", invalid="ignore"):  # non-finite values stay so: check_splats names them
        opacity = np.clip(arrays["opacities"], 1e-30, np.nextafter(1.0, 0.0))
        params = {"means": arrays["means"], "scales": np.log(np.maximum(arrays["scales"], MIN_SCALE)),
                  "quats": arrays["quats"][:, [3, 0, 1, 2]], "opacities": np.log(opacity) - np.log1p(-opacity),
                  "sh0": arrays["sh"][:, :1], "shN": arrays["sh"][:, 1:]}
    params = {k: torch.from_numpy(v.astype(np.float32)) for k, v in params.items()}
    check_splats(params, path)
    return Splats(params, sh_degree=degree)


def read_gltf_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """The splats of a .glb as glTF stores them, float64 (exactly the file's float32 values when no node moves
    them): means [N,3], quats [N,4] (x, y, z, w), scales [N,3] (linear), opacities [N] and sh [N,K,3]."""
    f = GltfFile(*read_glb(Path(path)), Path(path))
    unknown = sorted(set(_strings(f.doc.get("extensionsRequired"))) - KNOWN_REQUIRED)
    if unknown:
        f.fail(f"it requires {', '.join(unknown)}, which lodsgs does not read (a compressed splat file?); "
               "decompress it with the tool that wrote it")
    placed = splat_primitives(f)
    if _shown_count(f, placed) > MAX_GAUSSIANS:  # before anything is decoded: nodes can show a primitive many times
        f.fail(f"its scene shows more than the {MAX_GAUSSIANS:,} Gaussians lodsgs reads")
    parts = [_place(f, read_primitive(f, prim), matrix) for prim, matrix in placed]
    k = max(p["sh"].shape[1] for p in parts)
    for p in parts:  # primitives of lower SH degree get zero bands
        p["sh"] = np.concatenate([p["sh"], np.zeros((len(p["sh"]), k - p["sh"].shape[1], 3))], 1)
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def _shown_count(f: GltfFile, placed: list[tuple[dict, np.ndarray]]) -> int:
    """The Gaussians the scene shows, from the POSITION accessors' counts (those that resolve; read_primitive
    names the others)."""
    accessors, total = _list(f.doc.get("accessors")), 0
    for prim, _ in placed:
        i = _dict(prim.get("attributes")).get("POSITION")
        if _is_uint(i) and i < len(accessors) and _is_uint(_dict(accessors[i]).get("count")):
            total += accessors[i]["count"]
    return total


def _strings(value: object) -> list[str]:
    return [v for v in _list(value) if isinstance(v, str)]


def _dicts(value: object) -> list[dict]:
    return [v for v in _list(value) if isinstance(v, dict)]


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def splat_primitives(f: GltfFile) -> list[tuple[dict, np.ndarray]]:
    """(primitive, its node's global 4x4 matrix) for every KHR_gaussian_splatting primitive the default scene
    shows (each primitive of a file without nodes, at identity); a file without one says what it is instead."""
    primitives = [p for m in _dicts(f.doc.get("meshes")) for p in _dicts(m.get("primitives"))]
    if not any(_is_splat(p) for p in primitives):
        if primitives:
            f.fail(f"it is a mesh glTF, not splats ({EXT}); `lodsgs info` describes a mesh, and `lodsgs export "
                   "--format gltf-splats` writes splats as .glb")
        f.fail(f"it holds no mesh primitives, so no splats ({EXT})")
    if not isinstance(f.doc.get("nodes"), list) or not f.doc["nodes"]:
        return [(p, np.eye(4)) for p in primitives if _is_splat(p)]
    found = []
    for node, matrix in _node_matrices(f):
        if "mesh" in node:
            mesh = f.item("meshes", node["mesh"], "a node")
            found += [(p, matrix) for p in _dicts(mesh.get("primitives")) if _is_splat(p)]
    if not found:
        f.fail(f"its {EXT} primitives are in no node of its scene, so nothing shows them")
    return found


def _is_splat(primitive: dict) -> bool:
    return isinstance(primitive.get("extensions"), dict) and EXT in primitive["extensions"]


def _node_matrices(f: GltfFile) -> list[tuple[dict, np.ndarray]]:
    """Every node of the default scene (else of every root) with its global matrix; a node met twice (glTF
    node graphs are trees) is refused, so a cyclic file cannot loop."""
    nodes = f.doc["nodes"]
    if isinstance(f.doc.get("scenes"), list) and f.doc["scenes"]:
        roots = _list(f.item("scenes", f.doc.get("scene", 0), "the document").get("nodes"))
    else:
        children = {c for n in _dicts(nodes) for c in _list(n.get("children")) if _is_uint(c)}
        roots = [i for i in range(len(nodes)) if i not in children]
    stack, seen, out = [(r, np.eye(4)) for r in roots], set(), []
    while stack:
        index, parent = stack.pop()
        node = f.item("nodes", index, "the scene graph")
        if index in seen:
            f.fail(f"node {index} appears twice in its scene graph (glTF's node graph must be a tree)")
        seen.add(index)
        matrix = parent @ _local_matrix(f, node, index)
        out.append((node, matrix))
        stack += [(c, matrix) for c in _list(node.get("children"))]
    return out


def _local_matrix(f: GltfFile, node: dict, index: int) -> np.ndarray:
    """A node's matrix: ``matrix`` (column-major), else translation · rotation (x, y, z, w) · scale."""
    def numbers(key: str, default: list[float]) -> np.ndarray:
        value = node.get(key, default)
        ok = isinstance(value, list) and len(value) == len(default)
        ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        if not ok or not np.isfinite(np.asarray(value, np.float64)).all():
            f.fail(f"node {index}'s {key} is not {len(default)} finite numbers")
        return np.asarray(value, np.float64)
    if "matrix" in node:
        return numbers("matrix", [0.0] * 16).reshape(4, 4).T
    m = np.eye(4)
    m[:3, :3] = quat_to_matrix(numbers("rotation", [0.0, 0.0, 0.0, 1.0])) * numbers("scale", [1.0] * 3)
    m[:3, 3] = numbers("translation", [0.0] * 3)
    return m


def read_primitive(f: GltfFile, prim: dict) -> dict[str, np.ndarray]:
    """One splat primitive's attributes (read_gltf_arrays' keys), its mode, extension object, attribute set,
    SH bands and value ranges checked against the spec, the DC colour brought to sRGB if it is linear."""
    ext = prim["extensions"][EXT]
    if not (isinstance(ext, dict) and isinstance(ext.get("kernel"), str) and isinstance(ext.get("colorSpace"), str)):
        f.fail(f"its {EXT} object lacks the required kernel and colorSpace strings")
    if ext["colorSpace"] not in (COLOR_SPACE, "lin_rec709_display"):
        f.fail(f"its splats' colorSpace is {_short(ext['colorSpace'])}; lodsgs reads {COLOR_SPACE} and "
               "lin_rec709_display")
    if prim.get("mode", 4) != 0:  # glTF's default mode is 4, triangles
        f.fail(f"its {EXT} primitive has mode {_short(prim.get('mode', 4))}; the spec requires POINTS (0)")
    attrs = _dict(prim.get("attributes"))
    missing = [s for s in ("POSITION", ROTATION, SCALE, OPACITY, sh_name(0, 0)) if s not in attrs]
    if missing:
        f.fail(f"its splat primitive lacks the required attribute(s) {', '.join(missing)}")
    bands = [sh_name(0, 0)]
    for degree in (1, 2, 3):
        names = [sh_name(degree, n) for n in range(2 * degree + 1)]
        present = [name in attrs for name in names]
        if any(present) and (not all(present) or len(bands) != degree ** 2):
            f.fail(f"its SH degree {degree} is partly defined or lacks a lower degree (the spec requires whole "
                   "degrees, each lower degree present)")
        bands += names if all(present) else []
    out = {"means": f.accessor(attrs["POSITION"], "POSITION"), "quats": f.accessor(attrs[ROTATION], ROTATION),
           "scales": f.accessor(attrs[SCALE], SCALE), "opacities": f.accessor(attrs[OPACITY], OPACITY)[:, 0],
           "sh": np.stack([f.accessor(attrs[name], name) for name in bands], 1)}
    if len({len(v) for v in out.values()}) != 1:
        f.fail("its splat attributes hold different numbers of elements")
    _check_values(f, out)
    if ext["colorSpace"] != COLOR_SPACE:
        out["sh"][:, 0] = (linear_to_srgb(out["sh"][:, 0] * SH_C0 + 0.5) - 0.5) / SH_C0
    return out


def _check_values(f: GltfFile, a: dict[str, np.ndarray]) -> None:
    """What the spec forbids: negative scales, opacities outside [0, 1], rotations that are no quaternion (zero
    length); NaN passes here and check_splats names it."""
    if (a["scales"] < 0).any():
        f.fail("it holds negative Gaussian scales, which the spec forbids")
    if ((a["opacities"] < 0) | (a["opacities"] > 1)).any():
        f.fail("it holds opacities outside [0, 1], which the spec forbids")
    if (np.linalg.norm(a["quats"], axis=1) < 1e-6).any():
        f.fail("it holds rotations of length 0, which are no unit quaternions")


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """The sRGB transfer function (IEC 61966-2-1), extended past [0, 1] as the curve goes (SH colours may leave
    it): lin_rec709_display splats' DC colour in lodsgs's display sRGB. Higher SH bands are kept as they are,
    so their view-dependent part is approximate."""
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.abs(c) ** (1 / 2.4) - 0.055)


def _place(f: GltfFile, a: dict[str, np.ndarray], matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Splats moved by their node's global matrix, which must be a rotation, a translation and a uniform positive
    scale: the spec's covariance M·C·Cᵀ·Mᵀ is then the same rotated Gaussian, scaled. An identity leaves the
    values untouched (bit-exact)."""
    if np.array_equal(matrix, np.eye(4)):
        return a
    linear = matrix[:3, :3]
    s = np.linalg.norm(linear, axis=0)
    rot = linear / np.where(s > 0, s, 1.0)
    if not (s.min() > 0 and np.ptp(s) <= 1e-5 * s.max() and np.abs(rot.T @ rot - np.eye(3)).max() < 1e-5
            and np.linalg.det(rot) > 0 and np.array_equal(matrix[3], [0, 0, 0, 1])):
        f.fail("a node scales its splats unevenly, shears or mirrors them; lodsgs reads splats under rotations, "
               "translations and uniform scales only")
    sh = a["sh"].copy()
    sh[:, 1:] = np.einsum("jk,nkc->njc", sh_rotation(rot, sh.shape[1])[1:, 1:], sh[:, 1:])
    return {"means": a["means"] @ linear.T + matrix[:3, 3], "quats": quat_multiply(matrix_to_quat(rot), a["quats"]),
            "scales": a["scales"] * s.mean(), "opacities": a["opacities"], "sh": sh}


def sh_rotation(rot: np.ndarray, k: int) -> np.ndarray:
    """[K,K] T with T·c the SH coefficients of the colour c(Rᵀd), i.e. the splat's view-dependent colour turned
    with it (the spec's "SHOULD be transformed by the rotation", usually Wigner-D matrices): a least-squares fit
    on gsplat's SH basis at 64 fixed directions, exact to float64 rounding since the bands span rotations."""
    from gsplat.cuda._torch_impl import _eval_sh_bases_fast
    dirs = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    before = _eval_sh_bases_fast(k, dirs)  # [64,K]
    after = _eval_sh_bases_fast(k, dirs @ torch.from_numpy(rot))  # the basis at Rᵀd (rows: dᵀR)
    return torch.linalg.lstsq(before, after).solution.numpy()


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """3x3 rotation of a quaternion in glTF's x, y, z, w order (normalized first)."""
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def matrix_to_quat(r: np.ndarray) -> np.ndarray:
    """The unit quaternion (x, y, z, w) of a rotation matrix: the top eigenvector of Bar-Itzhack's symmetric 4x4
    matrix, which stays accurate for any angle."""
    k = np.array([[r[0, 0] - r[1, 1] - r[2, 2], r[1, 0] + r[0, 1], r[2, 0] + r[0, 2], r[2, 1] - r[1, 2]],
                  [r[1, 0] + r[0, 1], r[1, 1] - r[0, 0] - r[2, 2], r[2, 1] + r[1, 2], r[0, 2] - r[2, 0]],
                  [r[2, 0] + r[0, 2], r[2, 1] + r[1, 2], r[2, 2] - r[0, 0] - r[1, 1], r[1, 0] - r[0, 1]],
                  [r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1], r[0, 0] + r[1, 1] + r[2, 2]]]) / 3
    return np.linalg.eigh(k)[1][:, -1]


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a ⊗ b of x, y, z, w quaternions (broadcast): rotating by b, then by a."""
    av, aw, bv, bw = a[..., :3], a[..., 3:], b[..., :3], b[..., 3:]
    return np.concatenate([aw * bv + bw * av + np.cross(av, bv), aw * bw - (av * bv).sum(-1, keepdims=True)], -1)
