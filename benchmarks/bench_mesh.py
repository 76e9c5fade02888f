"""Meshes against their splats: each mesh drawn from the 16 eval views (lodsgs/eval.py: 8 azimuths at 0° and 30°
elevation, radius 3, fov 45°) beside the splats' own renders, scored by silhouette IoU and the mean colour error
inside the splats' silhouette (eval.metrics), with watertightness, genus, faces and seconds a mesh (wall clock,
and the process's CPU time: on 2 busy cores the wall clock measures the neighbours too).

Scores are at 256 x 256 pixels: the splat renderer adds a fixed 0.3 px² screen-space blur (gsplat's eps2d) that
widens every splat silhouette by about a pixel, so at the eval's 64 x 64 even the exact torus (trimesh.creation.torus
with the truth's radii) scores IoU 0.71 against its splats, and 0.89 at 256 x 256. The IoU at 64 x 64 is listed too.

Usage: python -m benchmarks.bench_mesh [--truths] [--runs DIR ...] [--set mesh.key=value ...] [--json FILE]
  --truths      the 30 single-object ground truths (world.build_object)
  --runs DIR    every run folder under DIR holding splats.ply (e.g. a `lodsgs batch` output)

The genus expected of a truth's mesh is its caption's (a torus 1, every other shape 0). A generated run's splats
may not be the caption's shape (a torus whose hole is covered by a film is a ball), so its mesh is expected to
have the genus its splats show: the through-holes of their front silhouette (`seen_holes`); the caption's genus
is listed beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lodsgs.eval import EvalViews, images, metrics, view_cameras
from lodsgs.prior.shapes import world
from lodsgs.splats.mesh import MeshConfig, mesh_summary, splats_to_mesh
from lodsgs.splats.mesh_render import render_mesh
from lodsgs.splats.model import Splats

GENUS = {"torus": 1}  # every other shape of the world is a sphere topologically
HOLE_PIXELS = 20  # background pieces under this (of 256²) inside the silhouette are speckle, not a hole


SCORE_VIEWS = EvalViews(size=256)


def score_mesh(splats: Splats, mesh, views: EvalViews = SCORE_VIEWS, ssaa: int = 2) -> dict:
    """Silhouette IoU and colour error of the mesh's renders (textured or vertex-coloured) against the splats' at
    the eval views."""
    background = world.BACKGROUND
    truth = images(splats, views, background)
    cams = view_cameras(views)
    verts, faces = torch.tensor(np.asarray(mesh.vertices), dtype=torch.float32), torch.tensor(np.asarray(mesh.faces))
    if "texture" in mesh.metadata:
        out = render_mesh(verts, faces, None, cams, background, ssaa, uv=torch.tensor(mesh.metadata["uv"]),
                          texture=torch.tensor(mesh.metadata["texture"]))
    else:
        out = render_mesh(verts, faces, torch.tensor(mesh.metadata["rgb"], dtype=torch.float32), cams, background,
                          ssaa)
    mse = (out.rgb - truth[0]).pow(2).mean().item()
    m = metrics(mse, 0.0, (out.rgb, out.alpha > 0.5), truth)
    return {"iou": m["iou"], "color_error": m["color_error"]}


@torch.no_grad()
def seen_holes(splats: Splats) -> int:
    """Through-holes the splats show from the front (azimuth 0, elevation 0; the world's torus faces it): the
    background pieces enclosed by the silhouette (alpha > 0.5) at 256². A generated torus whose hole is covered
    by a film shows none, and its right mesh has genus 0."""
    from scipy.ndimage import label

    from lodsgs.splats.render import render
    cams = view_cameras(EvalViews(n=1, elevations=(0.0,), size=256))
    alpha = render(splats, cams).alpha[0, ..., 0].numpy()
    pieces, n = label(alpha <= 0.5)
    border = set(np.unique(np.concatenate([pieces[0], pieces[-1], pieces[:, 0], pieces[:, -1]]))) - {0}
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    return sum(1 for i in range(1, n + 1) if i not in border and sizes[i] >= HOLE_PIXELS)


def measure(name: str, splats: Splats, cfg: MeshConfig, genus: int | None, caption_genus: int | None = None) -> dict:
    """Scores, topology and time of one mesh; ``genus`` is the one expected of it (``caption_genus``: what
    the caption names, when that differs from what the splats show)."""
    start, cpu = time.perf_counter(), time.process_time()
    mesh = splats_to_mesh(splats, cfg)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    s = mesh_summary(mesh)
    row = {"name": name, **score_mesh(splats, mesh), "iou64": score_mesh(splats, mesh, EvalViews())["iou"],
           "seconds": seconds, "cpu_seconds": cpu, "faces": s["faces"],
           "watertight": s["watertight"], "genus": s["genus"], "pieces": s["pieces"], "expected_genus": genus,
           "caption_genus": genus if caption_genus is None else caption_genus}
    row["genus_ok"] = genus is None or (s["watertight"] and s["genus"] == genus)
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| splats | IoU ↑ | colour error ↓ | IoU at 64² | watertight | genus (expected; caption's) | faces | s "
             "| CPU s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['iou']:.3f} | {r['color_error']:.3f} | {r['iou64']:.3f} | {r['watertight']} "
                     f"| {r['genus']} ({r['expected_genus']}; {r.get('caption_genus', r['expected_genus'])}) "
                     f"| {r['faces']} | {r['seconds']:.1f} "
                     f"| {r['cpu_seconds']:.1f} |")
    if rows:
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in ("iou", "color_error", "iou64", "seconds",
                                                                  "cpu_seconds")}
        lines.append(f"| **mean of {len(rows)}** (min IoU {min(r['iou'] for r in rows):.3f}, max colour error "
                     f"{max(r['color_error'] for r in rows):.3f}, max {max(r['seconds'] for r in rows):.1f} s) "
                     f"| {mean['iou']:.3f} | {mean['color_error']:.3f} | {mean['iou64']:.3f} | "
                     f"{sum(r['watertight'] for r in rows)}/{len(rows)} | "
                     f"{sum(r['genus_ok'] for r in rows)}/{len(rows)} right | | {mean['seconds']:.1f} | "
                     f"{mean['cpu_seconds']:.1f} |")
    return lines


def mesh_config(sets: list[str]) -> MeshConfig:
    from lodsgs.config import load_config
    return load_config(None, sets).mesh


def truth_rows(cfg: MeshConfig, captions: list[str], log=print) -> list[dict]:
    rows = []
    for caption in captions:
        rows.append(measure(caption, world.build_object(caption), cfg, GENUS.get(world.parse(caption)[0][1], 0)))
        log(table(rows[-1:])[2])
    return rows


def run_rows(cfg: MeshConfig, folder: Path, log=print) -> list[dict]:
    from lodsgs.splats.io import read_ply
    rows = []
    for ply in sorted(folder.glob("*/splats.ply")):
        prompt = (ply.parent / "prompt.txt").read_text().strip() if (ply.parent / "prompt.txt").exists() else None
        parts = world.parse(prompt) if prompt in world.captions() else []
        caption_genus = GENUS.get(parts[0][1], 0) if len(parts) == 1 else None
        splats = read_ply(ply)
        genus = None if caption_genus is None else seen_holes(splats)
        rows.append(measure(prompt or ply.parent.name, splats, cfg, genus, caption_genus))
        log(table(rows[-1:])[2])
    return rows


def run(quick: bool = False) -> list[str]:
    """`python -m benchmarks.run mesh`: the truths (three of them with --quick)."""
    captions = world.captions()[:30]
    return table(truth_rows(MeshConfig(), captions[::10] if quick else captions, log=lambda _: None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--truths", action="store_true")
    ap.add_argument("--runs", type=Path, action="append", default=[])
    ap.add_argument("--caption", action="append", help="only these truths (repeatable)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="mesh.key=value")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    cfg = mesh_config(a.sets)
    out = {}
    if a.truths or a.caption:
        out["truths"] = truth_rows(cfg, a.caption or world.captions()[:30])
    for folder in a.runs:
        out[str(folder)] = run_rows(cfg, folder)
    for name, rows in out.items():
        print(f"\n{name} (mesh settings {cfg})\n" + "\n".join(table(rows)))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
