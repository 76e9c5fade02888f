"""Sanity of the shapes prior itself: sample each caption (DDIM + CFG) and compare with ground truth."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch

from lodsgs.cameras import sample_cameras
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.prior.shapes import world
from lodsgs.splats.render import render


def border_color(images: torch.Tensor) -> torch.Tensor:
    """Median colour of each image's outermost pixels [n,3]: the background a sample actually drew."""
    border = torch.cat([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], 1)
    return border.median(1).values


def dominant_color(images: torch.Tensor, background=None) -> torch.Tensor:
    """Mean colour of the pixels that differ from the background, per image [n,3].

    The background defaults to each image's own border (median of the outermost pixels), so a sample
    whose white background came out tinted is still judged by its object, not by the tint.
    """
    if background is None:
        bg = border_color(images)[:, None, None]
    else:
        bg = torch.tensor(background, dtype=images.dtype).expand(len(images), 1, 1, 3)
    diff = (images - bg).abs().sum(-1) > 0.25
    weights = diff.float()[..., None]
    return (images * weights).sum((1, 2)) / weights.sum((1, 2)).clamp_min(1)


def nearest_color_name(rgb: torch.Tensor) -> str:
    names = list(world.COLORS)
    ref = torch.tensor([world.COLORS[c] for c in names]) * 0.8  # shading darkens on average
    return names[int(((ref - rgb) ** 2).sum(-1).argmin())]


@torch.no_grad()
def sanity_report(prior: DiffusionPrior, captions: list[str] | None = None, n: int = 4, gt_views: int = 48,
                  seed: int = 0, cfg: float = 3.0) -> list[dict]:
    """Per caption: nearest-view MSE of samples against ground-truth renders, and dominant-colour match.

    An underspecified caption ("a cube", "a red shape") is scored against the nearest truth it allows, sample
    by sample, and its row also counts the samples' colours and (nearest) shapes: does the prior cover the modes?
    """
    rows = []
    g = torch.Generator().manual_seed(seed)
    cam_cfg = world.SHAPES_CAMERAS
    for caption in captions or world.captions():
        samples = prior.sample(caption, n=n, guidance_scale=cfg, seed=seed)
        cams = sample_cameras(cam_cfg, gt_views, g)
        modes = world.modes(caption)
        per_mode = []
        for mode in modes:
            gt = render(world.build_object(mode), cams, background=world.BACKGROUND).rgb.clamp(0, 1)
            per_mode.append(((samples[:, None] - gt[None]) ** 2).mean((2, 3, 4)).min(1).values)
        mse, nearest = torch.stack(per_mode).min(0)
        colors = [nearest_color_name(c) for c in dominant_color(samples)]
        allowed = {color for mode in modes for color, _ in world.parse(mode)}
        tint = (border_color(samples) - torch.tensor(world.BACKGROUND)).abs().mean()
        row = {"caption": caption, "nearest_view_mse": float(mse.mean()),
               "color_match": sum(c in allowed for c in colors) / n, "background_error": float(tint)}
        if len(modes) > 1:
            row["colors"] = dict(Counter(colors).most_common())
            row["shapes"] = dict(Counter(world.parse(modes[i])[0][1] for i in nearest.tolist()).most_common())
        rows.append(row)
    return rows


def sanity_cli(captions: list[str] | None, prior: str = "shapes", samples: int = 4, guidance_scale: float = 3.0,
               json_out: Path | None = None) -> str:
    """``lodsgs prior sanity``: the report as a Markdown table (and, with ``json_out``, as JSON)."""
    import json

    from lodsgs.errors import LodsgsError
    from lodsgs.files import write_text
    from lodsgs.names import resolve_model
    from lodsgs.prior.shapes import world

    unknown = [c for c in captions or [] if c not in world.all_captions()]
    if unknown:
        raise LodsgsError(f"not shapes-world captions: {unknown}; see `lodsgs prior captions`")
    rows = sanity_report(DiffusionPrior.from_pretrained(resolve_model(prior)), captions or None, n=samples,
                         cfg=guidance_scale)
    keys = ("nearest_view_mse", "color_match", "background_error")
    lines = ["| caption | nearest-view MSE | colour match | background error | samples' colours / shapes |",
             "|---|---|---|---|---|"]
    for r in rows:
        modes = "; ".join(", ".join(f"{k} {v}" for k, v in r[h].items()) for h in ("colors", "shapes") if h in r)
        lines.append(f"| {r['caption']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + f" | {modes or '–'} |")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    lines.append(f"| **mean of {len(rows)}** | " + " | ".join(f"{mean[k]:.3f}" for k in keys) + " | |")
    if json_out:
        write_text(json_out, json.dumps({"rows": rows, "mean": mean, "n": samples, "cfg": guidance_scale}, indent=2))
    return "\n".join(lines)
