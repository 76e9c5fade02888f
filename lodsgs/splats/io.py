"""Splat files: INRIA 3DGS ``.ply`` (write + exact read) and antimatter15 ``.splat``; ``load_splats`` reads any
format lodsgs writes (``.spz`` through spz.py, glTF splats ``.glb`` through gltf.py).

Files are y down, the world y up (convention.py: a 180° rotation about x that reading undoes bit for bit).
Layouts: the INRIA 3DGS PLY (graphdeco-inria/gaussian-splatting) and antimatter15/splat's convert.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from torch import Tensor

from lodsgs.errors import LodsgsError
from lodsgs.preflight import check_ply_file
from lodsgs.splats.convention import check_splats, file_params, unflip_yz, write_atomic
from lodsgs.splats.model import SH_C0, Splats, num_sh_bases
from lodsgs.splats.spz import read_spz

SH_DEGREE_OF_REST = {0: 0, 9: 1, 24: 2, 45: 3}  # number of f_rest_* properties -> SH degree
SPLAT_PROPS = ("f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
               "rot_0", "rot_1", "rot_2", "rot_3")


def ply_properties(k_rest: int) -> list[str]:
    """INRIA vertex property names for ``k_rest`` non-DC SH bases, in file order."""
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * k_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_ply(splats: Splats, path: Path | str, sh_degree: int | None = None) -> None:
    """INRIA layout, binary little endian, all float32; ``sh_degree`` above the splats' pads zero bands
    (the "ply-sh3" export: some viewers reject degree-0 files)."""
    degree = splats.sh_degree if sh_degree is None else sh_degree
    if not splats.sh_degree <= degree <= 3:
        raise ValueError(f"sh_degree must be in {splats.sh_degree}..3 for these splats, got {degree}")
    p = file_params(splats, path)
    n, k_rest = splats.num, num_sh_bases(degree) - 1
    rest = torch.zeros(n, k_rest, 3)
    rest[:, : p["shN"].shape[1]] = p["shN"]
    columns = [p["means"], torch.zeros(n, 3), p["sh0"][:, 0],
               rest.transpose(1, 2).reshape(n, 3 * k_rest),  # channel-major: f_rest_{c*K + k}
               p["opacities"][:, None], p["scales"], p["quats"]]
    values = torch.cat(columns, dim=1).numpy()  # [N, 17 + 3K] float32
    vertex = np.empty(n, dtype=[(name, "<f4") for name in ply_properties(k_rest)])
    for i, name in enumerate(vertex.dtype.names):
        vertex[name] = values[:, i]
    write_atomic(path, lambda f: PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(f))


def read_ply(path: Path | str) -> Splats:
    """A splat .ply in the INRIA layout (SH degree from the f_rest count), or a plain point cloud
    (x y z, optional red green blue) as initial splats. Problems raise a one-line LodsgsError."""
    path = Path(path)
    vertex = _read_vertex(path)
    names = set(vertex.dtype.names)
    if not {"x", "y", "z"} <= names:
        raise LodsgsError(f"cannot read {str(path)!r}: its vertex element has no x, y, z properties")
    if not names & set(SPLAT_PROPS):
        return _point_cloud(path, vertex, names)
    missing = [name for name in SPLAT_PROPS if name not in names]
    if missing:
        raise LodsgsError(f"cannot read {str(path)!r}: splat properties missing: {', '.join(missing)}")
    n_rest = sum(name.startswith("f_rest_") for name in names)
    if n_rest not in SH_DEGREE_OF_REST or not {f"f_rest_{i}" for i in range(n_rest)} <= names:
        raise LodsgsError(f"cannot read {str(path)!r}: f_rest properties are not f_rest_0..f_rest_K-1 with "
                          f"K = 0, 9, 24 or 45 (found {n_rest})")
    n, k_rest = len(vertex), n_rest // 3

    def cols(*keys: str) -> Tensor:  # [N, len(keys)]
        return torch.from_numpy(np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], -1)
                                if keys else np.zeros((n, 0), np.float32))

    params = {
        "means": cols("x", "y", "z"),
        "scales": cols("scale_0", "scale_1", "scale_2"),
        "quats": cols("rot_0", "rot_1", "rot_2", "rot_3"),
        "opacities": cols("opacity")[:, 0],
        "sh0": cols("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        "shN": cols(*[f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k_rest).transpose(1, 2),
    }
    check_splats(params, path)
    return Splats(unflip_yz(params), sh_degree=SH_DEGREE_OF_REST[n_rest])


def _read_vertex(path: Path) -> np.ndarray:
    """The ``vertex`` element of a PLY file as a numpy structured array, or a one-line LodsgsError."""
    check_ply_file(path)  # the same one line the CLI gives before torch loads
    try:
        ply = PlyData.read(str(path), mmap=False)
    except Exception as e:  # plyfile raises several types for truncated or foreign files
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LodsgsError(f"cannot read {str(path)!r}: not a valid PLY file ({reason})") from None
    if "vertex" not in [el.name for el in ply.elements]:
        raise LodsgsError(f"cannot read {str(path)!r}: the PLY has no vertex element")
    vertex = ply["vertex"].data
    if vertex.dtype.names is None or any(vertex.dtype[k].shape or vertex.dtype[k].kind == "O"
                                         for k in vertex.dtype.names if k in ("x", "y", "z", *SPLAT_PROPS)):
        raise LodsgsError(f"cannot read {str(path)!r}: vertex properties must be scalars")
    return vertex


def _point_cloud(path: Path, vertex: np.ndarray, names: set[str]) -> Splats:
    """A point cloud PLY (a scan, a mesh's vertices) as initial splats, with its colours if present."""
    xyz = torch.from_numpy(np.stack([np.asarray(vertex[k], dtype=np.float32) for k in "xyz"], -1))
    check_splats({"means": xyz, "scales": torch.zeros(len(xyz), 3)}, path)
    xyz = xyz * torch.tensor([1.0, -1.0, -1.0])  # y-down file -> y-up world
    rgb = None
    for keys in (("red", "green", "blue"), ("r", "g", "b")):
        if set(keys) <= names:
            raw = np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], -1)
            integer = vertex[keys[0]].dtype.kind in "ui" or raw.max() > 1.0  # uchar 0..255, else float 0..1
            rgb = torch.from_numpy(raw / 255.0 if integer else raw)
            break
    return Splats.from_points(xyz, rgb)


SPLAT_DTYPE = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])  # 32 B


def write_splat(splats: Splats, path: Path | str) -> None:
    """antimatter15 .splat: 32 bytes a splat, no SH, largest exp(Σ log-scale)·opacity first as antimatter15's
    convert.py sorts. Bytes are rounded, so decoding is within 0.5/255 (colour, alpha), 1/128 (quat)."""
    p = file_params(splats, path)
    opacity = torch.sigmoid(p["opacities"])
    order = torch.argsort(-(p["scales"].sum(-1).exp() * opacity), stable=True)
    rgba = torch.cat([(0.5 + SH_C0 * p["sh0"][:, 0]), opacity[:, None]], -1)
    q = torch.nn.functional.normalize(p["quats"], dim=-1)
    out = np.empty(splats.num, dtype=SPLAT_DTYPE)
    out["pos"] = p["means"][order].numpy()
    out["scale"] = p["scales"][order].exp().numpy()
    out["rgba"] = (rgba[order] * 255).round().clamp(0, 255).byte().numpy()
    out["rot"] = (q[order] * 128 + 128).round().clamp(0, 255).byte().numpy()
    write_atomic(path, lambda f: out.tofile(f))


def read_splat(path: Path | str) -> dict[str, np.ndarray]:
    """Decode a .splat file as stored (file convention, y down): means, scales (linear), rgba in [0, 1],
    quats (wxyz, about unit)."""
    path = Path(path)
    if not path.is_file():
        raise LodsgsError(f"cannot read {str(path)!r}: no such file")
    raw = path.read_bytes()
    if len(raw) % SPLAT_DTYPE.itemsize:
        raise LodsgsError(f"cannot read {str(path)!r}: {len(raw)} bytes is not a multiple of 32 (not a .splat?)")
    data = np.frombuffer(raw, dtype=SPLAT_DTYPE)
    return {"means": data["pos"].copy(), "scales": data["scale"].copy(),
            "rgba": data["rgba"].astype(np.float32) / 255, "quats": (data["rot"].astype(np.float32) - 128) / 128}


def splat_file_splats(path: Path | str) -> Splats:
    """A .splat file as splats in lodsgs's y-up world (SH degree 0; opacity and colour within 0.5/255)."""
    d = read_splat(path)
    alpha = np.clip(d["rgba"][:, 3], 0.5 / 255, 1 - 0.5 / 255)
    with np.errstate(invalid="ignore"):  # a NaN scale stays NaN: check_splats names it below
        params = {"means": d["means"], "scales": np.log(np.maximum(d["scales"], 1e-12)), "quats": d["quats"],
                  "opacities": np.log(alpha / (1 - alpha)), "sh0": ((d["rgba"][:, :3] - 0.5) / SH_C0)[:, None, :],
                  "shN": np.zeros((len(alpha), 0, 3))}
    params = {k: torch.from_numpy(v.astype(np.float32)) for k, v in params.items()}
    check_splats(params, path)
    return Splats(unflip_yz(params))


SPLAT_SUFFIXES = (".ply", ".splat", ".spz", ".glb")


def load_splats(path: Path | str) -> Splats:
    """Any splat file lodsgs writes (.ply, .splat, .spz, and .glb with KHR_gaussian_splatting: gltf.py, which
    names a mesh .glb as such), by its suffix, in lodsgs's y-up world."""
    from lodsgs.splats.gltf import read_gltf_splats
    path = Path(path)
    readers = {".ply": read_ply, ".splat": splat_file_splats, ".spz": read_spz, ".glb": read_gltf_splats}
    if path.suffix.lower() not in readers:
        raise LodsgsError(f"cannot read {str(path)!r}: not a splat file; give a {', '.join(SPLAT_SUFFIXES)} file")
    return readers[path.suffix.lower()](path)
