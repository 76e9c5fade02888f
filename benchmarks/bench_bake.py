"""Colour detail of exported meshes: textured (``mesh.texture``, the default) against vertex-coloured
(``mesh.texture=0``), on splats whose colours change faster than a mesh's faces, on the shapes world's truths and
on generated runs.

Per object and colouring: the mean colour error at the Gaussians' centres (each Gaussian's own colour against
the mesh's colour at the closest point of its surface: UV → bilinear texel, or the vertex colours interpolated),
the silhouette IoU and colour error of the mesh's renders against the splats' at 16 views at 256²
(``bench_mesh.score_mesh``), the texels that the triangles' bilinear lookups read and that hold the colour views'
background (black), and the CPU seconds of the export (mesh,
colours and the GLB file, on one thread).

The pattern objects are built from the splat format, as a user would: 40,000 small opaque Gaussians on the unit
sphere coloured by a latitude/longitude checkerboard (16 × 32 and 32 × 64 cells), and Gaussians on the faces of a
unit cube in diagonal stripes. Their two colours differ by 0.5 on average, so a coin flip between them errs by
0.25 (chance).

Usage: python -m benchmarks.bench_bake [--patterns] [--truths] [--runs DIR ...] [--set mesh.key=value ...]
                                       [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_mesh import mesh_config, score_mesh
from lodsgs.prior.shapes import world
from lodsgs.splats.mesh import MeshConfig, splats_to_mesh, write_mesh
from lodsgs.splats.mesh_render import fragments, sample_texture
from lodsgs.splats.model import Splats

PAIR = torch.tensor([[0.9, 0.4, 0.15], [0.15, 0.4, 0.9]])  # mean |a - b| = 0.5: a coin flip between them errs 0.25


def unit_vectors(n: int, seed: int) -> torch.Tensor:
    d = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    return d / d.norm(dim=-1, keepdim=True)


def checker(points: torch.Tensor, lat: int, lon: int) -> torch.Tensor:
    """0 or 1 [P] of a ``lat`` × ``lon`` latitude/longitude checkerboard (y up) at the points' directions."""
    p = torch.nn.functional.normalize(torch.as_tensor(points, dtype=torch.float32), dim=-1)
    theta = torch.acos(p[:, 1].clamp(-1, 1))  # 0 at the top
    phi = torch.atan2(p[:, 0], p[:, 2]) + math.pi
    return ((theta / math.pi * lat).floor() + (phi / (2 * math.pi) * lon).floor()).long() % 2


def checker_sphere(lat: int = 16, lon: int = 32, n: int = 40_000, scale: float = 0.01, seed: int = 0) -> Splats:
    """``n`` small opaque Gaussians (std ``scale``, about 0.56 of their spacing) on the unit sphere, coloured by
    a ``lat`` × ``lon`` checkerboard of PAIR."""
    d = unit_vectors(n, seed)
    return Splats.from_points(d, PAIR[checker(d, lat, lon)], scale=scale, opacity=0.99)


def striped_cube(stripes: int = 12, n: int = 19_000, scale: float = 0.01, seed: int = 0) -> Splats:
    """``n`` small opaque Gaussians uniform on the faces of a unit cube (the sphere's density), in ``stripes``
    diagonal stripes of PAIR across x + y + z, so every face and edge crosses stripes."""
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(n, 3, generator=g) - 0.5
    axis = torch.randint(0, 3, (n,), generator=g)
    p[torch.arange(n), axis] = torch.where(torch.rand(n, generator=g) < 0.5, -0.5, 0.5)
    band = ((p.sum(-1) + 1.5) * stripes / 3).floor().long() % 2
    return Splats.from_points(p, PAIR[band], scale=scale, opacity=0.99)


PATTERNS: dict[str, Callable[[], Splats]] = {
    "checkerboard sphere 16×32": lambda: checker_sphere(16, 32),
    "checkerboard sphere 32×64": lambda: checker_sphere(32, 64),
    "striped cube": striped_cube,
}


def closest_faces(mesh, points: np.ndarray, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Face [P] and barycentric coordinates [P,3] of each point's closest surface point, among the ``k`` faces
    with the nearest centres (trimesh's own closest_point needs rtree)."""
    import trimesh
    from scipy.spatial import cKDTree
    _, near = cKDTree(mesh.triangles_center).query(points, k)
    at = trimesh.triangles.closest_point(mesh.triangles[near.ravel()], np.repeat(points, k, 0)).reshape(-1, k, 3)
    best = np.linalg.norm(at - points[:, None], axis=-1).argmin(1)
    rows = np.arange(len(points))
    face = near[rows, best]
    return face, trimesh.triangles.points_to_barycentric(mesh.triangles[face], at[rows, best])


def surface_colours(mesh, points: np.ndarray) -> np.ndarray:
    """sRGB colours [P,3] of the mesh at each point's closest surface point: its texture (bilinear, at the
    interpolated UV) or its vertex colours interpolated."""
    face, bary = closest_faces(mesh, points)
    corners = np.asarray(mesh.faces)[face]
    if "texture" in mesh.metadata:
        uv = (bary[..., None] * mesh.metadata["uv"][corners]).sum(1)
        return sample_texture(torch.tensor(mesh.metadata["texture"]), torch.tensor(uv)).numpy()
    return (bary[..., None] * mesh.metadata["rgb"][corners]).sum(1)


def error_at_gaussians(mesh, splats: Splats) -> float:
    """Mean |mesh colour - Gaussian colour| at the Gaussians' centres (each Gaussian's own sRGB colour)."""
    own = splats.rgb.detach().clamp(0, 1).numpy()
    return float(np.abs(surface_colours(mesh, splats.means.detach().numpy()) - own).mean())


def sampled_texels(uv: np.ndarray, faces: np.ndarray, size: int, fine: int = 4, grow: bool = True) -> np.ndarray:
    """[S,S] bool: the texels the triangles' bilinear lookups read, i.e. those under a triangle in UV space
    (rasterized at ``fine`` times the texture's resolution, so slivers thinner than a texel count) grown by one
    (``grow``; fine=1 without it: the texels whose centres a triangle covers, those the bake colours)."""
    from scipy.ndimage import binary_dilation
    side = size * fine
    pix, _, _, _ = fragments(torch.tensor(uv * side, dtype=torch.float32)[None], torch.ones(1, len(uv)),
                             torch.tensor(faces), side, side)
    under = np.zeros((size, size), bool)
    under[pix.numpy() // side // fine, pix.numpy() % side // fine] = True
    return binary_dilation(under, np.ones((3, 3), bool)) if grow else under


def background_texels(mesh) -> int:
    """Sampled texels whose colour is within 1/255 of black: the background of the colour views (they are
    rendered over black) and the bake's value for a texel nothing coloured. (Not white, the eval's background:
    generated splats hold white Gaussians of their own, e.g. 20 in a layout-start torus.)"""
    image = mesh.metadata["texture"]
    sampled = sampled_texels(mesh.metadata["uv"], np.asarray(mesh.faces), image.shape[0])
    return int((sampled & (np.abs(image).max(-1) <= 1 / 255)).sum())


def export_seconds(splats: Splats, cfg: MeshConfig) -> tuple[object, float]:
    """The mesh and the CPU seconds of making it and writing it as GLB."""
    start = time.process_time()
    mesh = splats_to_mesh(splats, cfg)
    with tempfile.TemporaryDirectory() as folder:
        write_mesh(mesh, Path(folder) / "mesh.glb", "glb")
    return mesh, time.process_time() - start


def measure(name: str, splats: Splats, cfg: MeshConfig) -> dict:
    """Both colourings of one object: ``cfg`` textured (1024² if it says 0) and vertex-coloured."""
    row: dict = {"name": name}
    kinds = {"texture": dataclasses.replace(cfg, texture=cfg.texture or 1024),
             "vertex": dataclasses.replace(cfg, texture=0)}
    for kind, c in kinds.items():
        mesh, seconds = export_seconds(splats, c)
        scores = score_mesh(splats, mesh)
        row |= {f"{kind}_at_gaussians": error_at_gaussians(mesh, splats), f"{kind}_iou": scores["iou"],
                f"{kind}_colour_error": scores["color_error"], f"{kind}_cpu_seconds": seconds}
        if kind == "texture":
            row["background_texels"] = background_texels(mesh)
    return row


def table(rows: list[dict]) -> list[str]:
    def pair(r: dict, key: str, digits: int = 3) -> str:
        return f"{r['texture_' + key]:.{digits}f} / {r['vertex_' + key]:.{digits}f}"
    lines = ["| splats | error at the Gaussians ↓ | IoU ↑ | colour error ↓ | background texels | CPU s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {pair(r, 'at_gaussians')} | {pair(r, 'iou')} | {pair(r, 'colour_error')} "
              f"| {r['background_texels']} | {pair(r, 'cpu_seconds', 1)} |" for r in rows]
    if len(rows) > 1:
        mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k != "name"}
        lines.append(f"| **mean of {len(rows)}** | {pair(mean, 'at_gaussians')} | {pair(mean, 'iou')} "
                     f"| {pair(mean, 'colour_error')} | {max(r['background_texels'] for r in rows)} (max) "
                     f"| {pair(mean, 'cpu_seconds', 1)} (max {max(r['texture_cpu_seconds'] for r in rows):.1f} "
                     "textured) |")
    return lines


def objects(patterns: bool, truths: bool, runs: list[Path]) -> list[tuple[str, Callable[[], Splats]]]:
    """(name, builder) of every object asked for: the patterns, the 30 single-object truths, the runs' splats."""
    from lodsgs.splats.io import read_ply
    out = list(PATTERNS.items()) if patterns else []
    if truths:
        out += [(c, lambda c=c: world.build_object(c)) for c in world.captions()[:30]]
    for folder in runs:
        for ply in sorted(folder.glob("*/splats.ply")):
            out.append((f"{folder.name}/{ply.parent.name}", lambda ply=ply: read_ply(ply)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patterns", action="store_true")
    ap.add_argument("--truths", action="store_true")
    ap.add_argument("--runs", type=Path, action="append", default=[])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="mesh.key=value")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)  # seconds on one thread, as docs/mesh.md states them
    cfg = mesh_config(a.sets)
    rows = []
    for name, build in objects(a.patterns or not (a.truths or a.runs), a.truths, a.runs):
        rows.append(measure(name, build(), cfg))
        print(table(rows[-1:])[2], flush=True)
    print(f"\n(texture / vertex colours; mesh settings {cfg})\n" + "\n".join(table(rows)))
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
