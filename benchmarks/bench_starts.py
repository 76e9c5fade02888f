"""The mesh start against the shapes profile's own start (layout), scored by the eval (lodsgs/eval.py).

Each caption starts from its truth's mesh (the truth splats written to a .ply and meshed by `lodsgs export`'s
own code, lodsgs.export.export) and from a deliberately coarse mesh in the caption's flat colour: a 12-sided
cylinder for the cone (a cylinder, not a cone), an 8 × 4-segment torus, a 12-triangle cube. Both meshes are in
the world's units already (init.mesh_fit=false); every run is the shapes profile's (`--prior shapes`) but for
the start. The table gives each start's scores before any step (the start alone, best yaw) and after the run.

Usage: nice -n 10 env OMP_NUM_THREADS=1 python -m benchmarks.bench_starts --out runs/starts [--seeds 0,1,2]
  [--caption "a red torus" ...]; rerunning continues: finished runs are reused (eval's own rule).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from lodsgs.eval import EvalResult, EvalViews, parse_seeds, run_eval, score_caption
from lodsgs.prior.shapes import world

CAPTIONS = ["a red torus", "a green cube", "a blue cone"]


def coarse_mesh(caption: str):
    """The caption's coarse stand-in (trimesh), upright in the world's axes, in its flat palette colour."""
    import trimesh
    color, shape = world.parse(caption)[0]
    if shape == "cone":  # a cylinder as wide and tall as the cone: right size, wrong shape
        mesh = trimesh.creation.cylinder(radius=0.48, height=1.0, sections=12)
        mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))  # z axis -> y
    elif shape == "torus":  # the truth's radii, axis along z (facing the front), as world._torus
        mesh = trimesh.creation.torus(major_radius=0.38, minor_radius=0.15, major_sections=8, minor_sections=4)
    elif shape == "cube":
        mesh = trimesh.creation.box(extents=[0.84] * 3)
    else:
        raise ValueError(f"no coarse mesh for {caption!r}")
    mesh.metadata["rgb"] = np.tile(np.asarray(world.COLORS[color]), (len(mesh.vertices), 1))
    return mesh


def make_meshes(folder: Path, caption: str) -> dict[str, Path]:
    """The caption's truth mesh (exported from its truth splats) and coarse mesh as GLB files, made once."""
    from lodsgs.export import export
    from lodsgs.splats.io import write_ply
    from lodsgs.splats.mesh import write_mesh

    slug = caption.replace(" ", "-")
    truth, coarse = folder / f"{slug}-truth.glb", folder / f"{slug}-coarse.glb"
    folder.mkdir(parents=True, exist_ok=True)
    if not truth.exists():
        write_ply(world.build_object(caption), folder / f"{slug}-truth.ply")
        export(folder / f"{slug}-truth.ply", "glb", truth)
    if not coarse.exists():
        write_mesh(coarse_mesh(caption), coarse, "glb")
    return {"truth-mesh": truth, "coarse-mesh": coarse}


def start_scores(caption: str, variants: dict[str, list[str]], seeds: list[int]) -> dict[str, dict]:
    """Each start's mean PSNR and IoU before any step (the same scoring, best yaw), over the seeds."""
    from lodsgs.config import load_config
    from lodsgs.starts import init_splats
    from lodsgs.trainer import load_prior, resolve_device

    out: dict[str, dict] = {}
    prior = None
    for name, sets in variants.items():
        rows = []
        for seed in seeds:
            cfg = load_config(None, ["prior.model=shapes", f"run.seed={seed}", *sets])
            prior = prior or load_prior(cfg, resolve_device("cpu"))
            rows.append(score_caption(init_splats(cfg, caption, prior), caption, EvalViews(), world.BACKGROUND))
        out[name] = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "iou")}
    return out


def spread(values: np.ndarray, fmt: str) -> str:
    """The mean, with the sample sd across seeds when there are several."""
    return f"{values.mean():{fmt}}" + (f" ± {values.std(ddof=1):{fmt}}" if len(values) > 1 else "")


def table(result: EvalResult, starts: dict[str, dict[str, dict]]) -> str:
    """Per caption and start: PSNR / IoU of the start alone, then after the run (mean ± sd over seeds)."""
    lines = ["| caption | start | start alone: PSNR / IoU | after the run: PSNR (dB) | IoU |", "|---|---|---|---|---|"]
    for caption, by_start in starts.items():
        for name, alone in by_start.items():
            rows = [r for r in result.rows if r["caption"] == caption and r["variant"] == name]
            psnr, iou = (np.array([r[k] for r in rows]) for k in ("psnr", "iou"))
            lines.append(f"| {caption} | {name} | {alone['psnr']:.1f} / {alone['iou']:.2f} | "
                         f"{spread(psnr, '.2f')} | {spread(iou, '.3f')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/starts"))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--caption", action="append")
    args = ap.parse_args()
    seeds, result, starts = parse_seeds(args.seeds), EvalResult(), {}
    for caption in args.caption or CAPTIONS:
        meshes = make_meshes(args.out / "meshes", caption)
        variants = {"layout": [], **{name: ["init.kind=mesh", f"init.path={path}", "init.mesh_fit=false"]
                                     for name, path in meshes.items()}}
        result.rows += run_eval([caption], variants, [], args.out, seeds=seeds).rows
        starts[caption] = start_scores(caption, variants, seeds)
        text = table(result, starts)
        (args.out / "starts.md").write_text(f"{text}\nwritten {time.strftime('%Y-%m-%d %H:%M')}\n")
        print(text, flush=True)


if __name__ == "__main__":
    main()
