"""``lodsgs eval``: generate shapes-world captions with several methods and score them against truth.

A text prompt does not fix the object's rotation about the vertical axis, so each result is compared
with the ground truth at the yaw offset (searched in ``yaw_steps`` steps) that gives the best PSNR.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lodsgs.cameras import orbit_cameras
from lodsgs.errors import LodsgsError
from lodsgs.splats.model import Splats
from lodsgs.splats.render import render

DEFAULT_VARIANTS = {  # "init" scores the unoptimized starting splats (same seed), as a floor
    "init": [],
    "sds-cfg100": ["guidance.method=sds", "guidance.guidance_scale=100"],
    "sds-cfg7.5": ["guidance.method=sds", "guidance.guidance_scale=7.5"],
    "lods-embedding": ["guidance.method=lods-embedding"],
    "lods-lora": ["guidance.method=lods-lora"],
}


@dataclass
class EvalViews:
    """Held-out views: ``n`` azimuths at two elevations, fixed radius and fov."""

    n: int = 8
    elevations: tuple[float, ...] = (0.0, 30.0)
    radius: float = 3.0
    fovy: float = 45.0
    size: int = 64
    yaw_steps: int = 36


def eval_cameras(v: EvalViews, yaw: float = 0.0):
    az = torch.arange(v.n, dtype=torch.float32) * 360.0 / v.n
    el = torch.tensor(v.elevations, dtype=torch.float32)
    az, el = (x.reshape(-1) for x in torch.meshgrid(az, el, indexing="ij"))
    return orbit_cameras(el, az + yaw, v.radius, v.fovy, v.size, v.size)


@torch.no_grad()
def score(result: Splats, truth: Splats, views: EvalViews, background: tuple[float, float, float]) -> dict:
    """PSNR, silhouette IoU (alpha > 0.5) and mean colour error inside the true silhouette, best yaw."""
    bg = torch.tensor(background, dtype=torch.float32)
    gt = render(truth, eval_cameras(views), background=bg)
    gt_mask = gt.alpha[..., 0] > 0.5
    best = None
    for k in range(views.yaw_steps):
        yaw = 360.0 * k / views.yaw_steps
        out = render(result, eval_cameras(views, yaw), background=bg)
        mse = (out.rgb - gt.rgb).pow(2).mean().item()
        if best is None or mse < best[0]:
            best = (mse, yaw, out)
    mse, yaw, out = best
    mask = out.alpha[..., 0] > 0.5
    iou = ((mask & gt_mask).sum() / (mask | gt_mask).sum().clamp(min=1)).item()
    inside = (out.rgb - gt.rgb).abs()[gt_mask].mean().item() if gt_mask.any() else float("nan")
    return {"psnr": -10.0 * torch.log10(torch.tensor(max(mse, 1e-12))).item(), "iou": iou,
            "color_error": inside, "yaw": yaw}


@dataclass
class EvalResult:
    rows: list[dict] = field(default_factory=list)

    def summary(self) -> dict[str, dict]:
        """Per-variant means of each metric and of the time."""
        out: dict[str, dict] = {}
        for variant in dict.fromkeys(r["variant"] for r in self.rows):
            rows = [r for r in self.rows if r["variant"] == variant]
            out[variant] = {k: sum(r[k] for r in rows) / len(rows) for k in ("psnr", "iou", "color_error", "seconds")}
            out[variant]["n"] = len(rows)
        return out

    def markdown(self) -> str:
        lines = ["| method | captions | PSNR (dB) ↑ | silhouette IoU ↑ | colour error ↓ | s / run |",
                 "|---|---|---|---|---|---|"]
        for variant, m in self.summary().items():
            lines.append(f"| {variant} | {m['n']} | {m['psnr']:.2f} | {m['iou']:.3f} | {m['color_error']:.3f} "
                         f"| {m['seconds']:.0f} |")
        lines += ["", "| caption | " + " | ".join(self.summary()) + " |",
                  "|---|" + "---|" * len(self.summary())]
        for caption in dict.fromkeys(r["caption"] for r in self.rows):
            cells = []
            for variant in self.summary():
                r = next((r for r in self.rows if r["caption"] == caption and r["variant"] == variant), None)
                cells.append(f"{r['psnr']:.1f} dB / {r['iou']:.2f}" if r else "–")
            lines.append(f"| {caption} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def run_eval(
    captions: list[str] | None,
    variants: dict[str, list[str]],
    base_overrides: list[str],
    out: Path,
    config: str | None = None,
    views: EvalViews | None = None,
    log=print,
) -> EvalResult:
    """Generate each caption with each variant (resuming finished runs) and score against ground truth."""
    from lodsgs.config import load_config
    from lodsgs.generate import generate, init_splats, load_prior, resolve_device, run_name
    from lodsgs.prior.shapes import world
    from lodsgs.splats.io import read_ply

    views = views or EvalViews()
    known = world.captions()
    captions = captions or known
    unknown = [c for c in captions if c not in known]
    if unknown:
        raise LodsgsError(f"not shapes-world captions: {unknown}; see `lodsgs prior captions`")
    result = EvalResult()
    out.mkdir(parents=True, exist_ok=True)
    cfgs = {v: load_config(config, ["prior.model=shapes", *base_overrides, *o]) for v, o in variants.items()}
    prior = None
    for caption in captions:  # caption-major, so an interrupted eval already compares every method
        truth = world.build_object(caption)
        for variant, cfg in cfgs.items():
            if variant == "init":  # the starting splats, unoptimized: the floor every method must beat
                s = score(init_splats(cfg), truth, views, world.BACKGROUND)
                result.rows.append({"variant": variant, "caption": caption, **s, "seconds": 0.0, "steps": 0,
                                    "seed": cfg.run.seed})
                continue
            folder = out / variant
            run_dir = folder / run_name(caption, cfg.run.seed)
            if not (run_dir / "metrics.json").exists():
                prior = prior or load_prior(cfg, resolve_device(cfg.run.device))
                log(f"[{variant}] {caption}")
                generate(caption, cfg, folder, overwrite=True, quiet=True, prior=prior)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            s = score(read_ply(run_dir / "splats.ply"), truth, views, world.BACKGROUND)
            result.rows.append({"variant": variant, "caption": caption, **s, "seconds": metrics["seconds"],
                                "steps": metrics["steps"], "seed": cfg.run.seed})
    (out / "eval.json").write_text(json.dumps({"rows": result.rows, "summary": result.summary(),
                                               "written": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    (out / "eval.md").write_text(result.markdown())
    return result
