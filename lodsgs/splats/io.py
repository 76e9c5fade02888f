"""Splat files: INRIA 3DGS ``.ply`` (write + exact read) and antimatter15 ``.splat``.

Inside lodsgs the world is y-up. Files use the INRIA/COLMAP convention (y down) that web viewers
assume (SuperSplat turns every splat 180° about z to show captures upright), so writing rotates the
scene 180° about x: p' = (x, -y, -z), q' = (0,1,0,0) ⊗ q, and SH coefficients of the bands that are odd
under (y, z) -> (-y, -z) change sign. Reading undoes it, so a round trip is exact.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from lodsgs.errors import LodsgsError
from lodsgs.splats.model import SH_C0, Splats, num_sh_bases

# sign of each non-DC SH basis (gsplat / 3DGS order) under the 180° rotation about x: (x, y, z) -> (x, -y, -z)
SH_FLIP = torch.tensor([-1, -1, 1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1, -1, 1], dtype=torch.float32)
QUAT_FLIP = torch.tensor([0.0, 1.0, 0.0, 0.0])  # 180° about x, wxyz


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of wxyz quaternions."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)


def flip_yz(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rotate raw splat parameters 180° about x (its own inverse up to the quaternion sign)."""
    out = dict(params)
    out["means"] = params["means"] * torch.tensor([1.0, -1.0, -1.0])
    out["quats"] = quat_multiply(QUAT_FLIP.expand_as(params["quats"]), params["quats"])
    k = params["shN"].shape[1]
    out["shN"] = params["shN"] * SH_FLIP[:k, None]
    return out


def unflip_yz(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = flip_yz(params)
    out["quats"] = -out["quats"]  # (0,1,0,0)² = -1: undo exactly, keeping the original sign
    return out


def _properties(k_rest: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * k_rest)]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


def write_ply(splats: Splats, path: Path, sh_degree: int | None = None) -> None:
    """INRIA layout, binary little endian, float32; ``sh_degree`` above the splats' pads zero bands."""
    degree = splats.sh_degree if sh_degree is None else sh_degree
    if degree < splats.sh_degree:
        raise ValueError(f"cannot write SH degree {degree} for splats of degree {splats.sh_degree}")
    p = flip_yz({k: v.detach().cpu().float() for k, v in splats.params.items()})
    n, k_rest = splats.num, num_sh_bases(degree) - 1
    rest = torch.zeros(n, k_rest, 3)
    rest[:, : p["shN"].shape[1]] = p["shN"]
    columns = [p["means"], torch.zeros(n, 3), p["sh0"][:, 0], rest.transpose(1, 2).reshape(n, -1),
               p["opacities"][:, None], p["scales"], p["quats"]]
    values = torch.cat(columns, dim=1).numpy().astype("<f4")
    names = _properties(k_rest)
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = values[:, i]
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(path))


def read_ply(path: Path) -> Splats:
    """Read a splat .ply written in the INRIA layout (any SH degree), or a plain point cloud (x y z [rgb])."""
    path = Path(path)
    if not path.is_file():
        raise LodsgsError(f"cannot read {str(path)!r}: no such file")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"].data
    except Exception as e:  # plyfile raises many types for truncated / foreign files
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LodsgsError(f"cannot read {str(path)!r}: not a valid PLY file ({reason})") from None
    names = set(vertex.dtype.names or ())
    if not {"x", "y", "z"} <= names:
        raise LodsgsError(f"cannot read {str(path)!r}: the vertex element has no x, y, z properties")
    if len(vertex) == 0:
        raise LodsgsError(f"cannot read {str(path)!r}: it holds no vertices")

    def col(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(vertex[name], dtype=np.float32).copy())

    xyz = torch.stack([col(c) for c in "xyz"], -1)
    splat_props = {"f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
                   "rot_0", "rot_1", "rot_2", "rot_3"}
    if not splat_props & names:
        return _point_cloud(path, vertex, xyz, names)
    missing = sorted(splat_props - names)
    if missing:
        raise LodsgsError(f"cannot read {str(path)!r}: splat properties missing: {', '.join(missing)}")
    n_rest = len([n for n in names if n.startswith("f_rest_")])
    degrees = {0: 0, 9: 1, 24: 2, 45: 3}
    if n_rest not in degrees:
        raise LodsgsError(f"cannot read {str(path)!r}: {n_rest} f_rest properties (expected 0, 9, 24 or 45)")
    k_rest = n_rest // 3
    rest = torch.stack([col(f"f_rest_{i}") for i in range(n_rest)], -1) if n_rest else torch.zeros(len(xyz), 0)
    params = {
        "means": xyz,
        "sh0": torch.stack([col(f"f_dc_{i}") for i in range(3)], -1)[:, None, :],
        "shN": rest.reshape(len(xyz), 3, k_rest).transpose(1, 2),
        "opacities": col("opacity"),
        "scales": torch.stack([col(f"scale_{i}") for i in range(3)], -1),
        "quats": torch.stack([col(f"rot_{i}") for i in range(4)], -1),
    }
    params = unflip_yz(params)
    if not all(torch.isfinite(v).all() for v in params.values()):
        raise LodsgsError(f"cannot read {str(path)!r}: it holds NaN or infinite values")
    return Splats(params, sh_degree=degrees[n_rest])


def _point_cloud(path: Path, vertex, xyz: torch.Tensor, names: set[str]) -> Splats:
    """A point cloud PLY (e.g. from a mesh or a scanner) as initial splats; colours if present."""
    rgb = None
    for keys in (("red", "green", "blue"), ("r", "g", "b")):
        if set(keys) <= names:
            raw = np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], -1)
            scale = 255.0 if vertex[keys[0]].dtype.kind in "ui" or raw.max() > 1.0 else 1.0
            rgb = torch.from_numpy(raw / scale)
    xyz = xyz * torch.tensor([1.0, -1.0, -1.0])  # files are y-down
    if not torch.isfinite(xyz).all():
        raise LodsgsError(f"cannot read {str(path)!r}: it holds NaN or infinite positions")
    return Splats.from_points(xyz, rgb)


SPLAT_DTYPE = np.dtype([("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])


def write_splat(splats: Splats, path: Path) -> None:
    """antimatter15 .splat: 32 bytes a splat, no SH, sorted by size × opacity (largest first) as viewers do."""
    p = flip_yz({k: v.detach().cpu().float() for k, v in splats.params.items()})
    opacity = torch.sigmoid(p["opacities"])
    order = torch.argsort(-(p["scales"].sum(-1).exp() * opacity), stable=True)
    rgb = (0.5 + SH_C0 * p["sh0"][:, 0]).clamp(0, 1)
    rgba = torch.cat([rgb, opacity[:, None]], -1)
    q = torch.nn.functional.normalize(p["quats"], dim=-1)
    out = np.empty(splats.num, dtype=SPLAT_DTYPE)
    out["pos"] = p["means"][order].numpy()
    out["scale"] = p["scales"][order].exp().numpy()
    out["rgba"] = (rgba[order] * 255).round().clamp(0, 255).byte().numpy()
    out["rot"] = (q[order] * 128 + 128).round().clamp(0, 255).byte().numpy()
    out.tofile(str(path))


def read_splat(path: Path) -> dict[str, np.ndarray]:
    """Decode a .splat file (file convention, y down): positions, scales, rgba in [0,1], unit-ish quats."""
    raw = Path(path).read_bytes()
    if len(raw) % SPLAT_DTYPE.itemsize:
        raise LodsgsError(f"cannot read {str(path)!r}: size is not a multiple of 32 bytes")
    data = np.frombuffer(raw, dtype=SPLAT_DTYPE)
    return {"means": data["pos"].copy(), "scales": data["scale"].copy(), "rgba": data["rgba"] / 255.0,
            "quats": (data["rot"].astype(np.float32) - 128) / 128}
