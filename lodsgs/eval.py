"""``lodsgs eval``: generate shapes-world captions with several methods and score them against truth.

A text prompt does not fix the object's rotation about the vertical axis, so each result is compared
with a ground truth at the yaw offset (searched in ``yaw_steps`` steps) that gives the best PSNR. Single-object
captions also get R-precision, the known world's analogue of CLIP R-precision: among the five shapes in the
captioned colour (and the six colours of the captioned shape), is the caption's truth the best match?
"""

from __future__ import annotations

import dataclasses
import functools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from lodsgs.cameras import CameraConfig, Cameras, eval_cameras, orbit_position
from lodsgs.errors import LodsgsError
from lodsgs.files import write_text
from lodsgs.fit import psnr_db
from lodsgs.prior.shapes import world
from lodsgs.splats.model import Splats
from lodsgs.splats.render import render

DEFAULT_VARIANTS = {  # "init" scores the unoptimized starting splats (same seed), as a floor
    "init": [],
    "sds-cfg100": ["guidance.method=sds", "guidance.guidance_scale=100"],
    "sds-cfg7.5": ["guidance.method=sds", "guidance.guidance_scale=7.5"],
    "sds": ["guidance.method=sds"],  # SDS at the prior's own ω: the same settings as the next row
    "lods-embedding": ["guidance.method=lods-embedding"],  # the default method with the prior's own ω
    "lods-embedding-w1000": ["guidance.method=lods-embedding", "guidance.guidance_scale=1000"],  # the paper's ω
    "lods-lora": ["guidance.method=lods-lora"],
}
# ``lodsgs eval --image``: each caption's truth rendered from the reference camera is the input (no recentring,
# so the scale is known). "image" is the default image method (LODS-embedding at the prior's settings plus the
# reference loss, the lifted reference as the start); "reference-only" drops the prior's loss; "text-only" is
# the text method as `lodsgs eval` runs it (its start included)
IMAGE_VARIANTS = {
    "image": [],
    "reference-only": ["image.prior_weight=0"],
    "text-only": ["image.path=", "init.kind=layout"],
}
Images = tuple[Tensor, Tensor]  # rgb [C,H,W,3] and silhouette (alpha > 0.5) [C,H,W] at the eval views
SCORE_VERSION = 1  # raise when score_caption's numbers change, so kept scores are recomputed
SPREAD = ("psnr", "iou", "shape_r1", "color_r1")  # metrics whose spread across seeds the summary gives


@dataclass(frozen=True)
class EvalViews:
    """Held-out views: ``n`` azimuths at two elevations, fixed radius and fov (frozen: a cache key)."""

    n: int = 8
    elevations: tuple[float, ...] = (0.0, 30.0)
    radius: float = 3.0
    fovy: float = 45.0
    size: int = 64
    yaw_steps: int = 36


def view_cameras(v: EvalViews, yaw: float = 0.0) -> Cameras:
    """The held-out views (turned by ``yaw`` degrees) as cameras."""
    cam = CameraConfig(eval_radius=v.radius, eval_fovy=v.fovy)
    return eval_cameras(cam, v.n, v.size, v.size, elevation=v.elevations, yaw=yaw)


@torch.no_grad()
def images(splats: Splats, views: EvalViews, background: tuple[float, float, float], yaw: float = 0.0) -> Images:
    """Colour and silhouette of ``splats`` at the eval views turned by ``yaw`` degrees."""
    out = render(splats, view_cameras(views, yaw), background=torch.tensor(background, dtype=torch.float32))
    return out.rgb, out.alpha[..., 0] > 0.5


@functools.lru_cache(maxsize=64)
def truth_images(caption: str, views: EvalViews, background: tuple[float, float, float]) -> Images:
    """A caption's ground truth at the eval views, rendered once per process: every run meets the same truths."""
    return images(world.build_object(caption), views, background)


def align(result: Splats, truths: dict[str, Images], views: EvalViews,
          background: tuple[float, float, float]) -> dict[str, tuple[float, float, Images]]:
    """Render the result once per yaw step; for each truth keep its own best (mse, yaw, result images)."""
    best: dict[str, tuple[float, float, Images]] = {}
    for k in range(views.yaw_steps):
        yaw = 360.0 * k / views.yaw_steps
        out = images(result, views, background, yaw)
        for name, (rgb, _) in truths.items():
            mse = (out[0] - rgb).pow(2).mean().item()
            if name not in best or mse < best[name][0]:
                best[name] = (mse, yaw, out)
    return best


def metrics(mse: float, yaw: float, out: Images, truth: Images) -> dict:
    """PSNR, silhouette IoU and mean colour error inside the true silhouette, at the chosen yaw."""
    (rgb, mask), (gt_rgb, gt_mask) = out, truth
    iou = ((mask & gt_mask).sum() / (mask | gt_mask).sum().clamp(min=1)).item()
    inside = (rgb - gt_rgb).abs()[gt_mask].mean().item() if gt_mask.any() else float("nan")
    return {"psnr": psnr_db(mse), "iou": iou,
            "color_error": inside, "yaw": yaw}


def score(result: Splats, truth: Splats, views: EvalViews, background: tuple[float, float, float]) -> dict:
    """PSNR, silhouette IoU (alpha > 0.5) and mean colour error inside the true silhouette, best yaw."""
    gt = images(truth, views, background)
    return metrics(*align(result, {"truth": gt}, views, background)["truth"], gt)


def rivals(caption: str) -> tuple[list[str], list[str]] | None:
    """R-precision candidates of a single-object caption (None for a scene): its colour's five shapes, its
    shape's six colours, each list including the caption itself."""
    parts = world.parse(caption)
    if len(parts) != 1:
        return None
    color, shape = parts[0]
    return ([f"{world.article(color)} {color} {s}" for s in world.SHAPES],
            [f"{world.article(c)} {c} {shape}" for c in world.COLORS])


PURITY_RADIUS = 0.085  # half the closest two palette colours' chromaticity distance (yellow-orange, 0.17)


def chromaticity(rgb: Tensor) -> Tensor:
    """rgb / (r + g + b): the colour without its brightness, so baked shading does not change it."""
    return rgb / rgb.sum(-1, keepdim=True).clamp_min(1e-6)


def interior(mask: Tensor) -> Tensor:
    """The silhouette less its outline (pixels whose four neighbours are all inside): edge pixels blend with
    the background and would read as a paler colour."""
    outside = (~mask).float()[:, None]
    return mask & (torch.nn.functional.max_pool2d(outside, 3, stride=1, padding=1)[:, 0] == 0)


def purity(out: Images) -> float:
    """Share of the object's interior pixels whose chromaticity lies within PURITY_RADIUS of the palette colour
    that most of them are nearest: one clean colour scores near 1, a mix of two or a muddy average low."""
    rgb, mask = out[0], interior(out[1])
    if not mask.any():
        return 0.0
    pix = chromaticity(rgb[mask])
    palette = chromaticity(torch.tensor(list(world.COLORS.values()), dtype=pix.dtype))
    dist = torch.cdist(pix, palette)
    dominant = int(dist.argmin(1).bincount(minlength=len(palette)).argmax())
    return (dist[:, dominant] < PURITY_RADIUS).float().mean().item()


def chroma(out: Images) -> float:
    """Mean chroma (max − min channel) of the object's interior pixels."""
    rgb, mask = out[0], interior(out[1])
    px = rgb[mask]
    return (px.max(-1).values - px.min(-1).values).mean().item() if len(px) else 0.0


def score_caption(result: Splats, caption: str, views: EvalViews, background: tuple[float, float, float],
                  ref_elevation: float | None = None) -> dict:
    """score() against the caption's truth, plus shape and colour R@1 (1.0/0.0) and 1-based ranks by yaw-aligned
    PSNR among rivals(caption), each candidate at its own best yaw; None for two-object scenes.

    An underspecified caption ("a cube", "a red shape") is scored against the nearest of the truths it allows
    (``mode``: the best yaw-aligned PSNR), and gets the R@1 of the attribute it names (shape for "a cube")
    with that mode as the caption. Single objects also get ``purity`` and ``saturation_excess`` (mean chroma
    minus the scored truth's: above 0 is over-saturated). With ``ref_elevation`` (an image run), also the scores
    of the back half, the views at least 90° from the reference."""
    modes = world.modes(caption)
    names = list(dict.fromkeys([*modes, *(c for m in modes for group in rivals(m) or () for c in group)]))
    truths = {c: truth_images(c, views, background) for c in names}
    best = align(result, truths, views, background)
    mode = min(modes, key=lambda m: best[m][0])
    s = metrics(*best[mode], truths[mode]) | {"mode": mode}
    if ref_elevation is not None:
        s |= back_half(best[mode][2], truths[mode], views, ref_elevation)
    cands = rivals(mode)
    if cands is None:
        return {**s, "shape_rank": None, "shape_r1": None, "color_rank": None, "color_r1": None,
                "purity": None, "saturation_excess": None}
    s |= {"purity": purity(best[mode][2]), "saturation_excess": chroma(best[mode][2]) - chroma(truths[mode])}
    for kind, part, group in (("shape", 1, cands[0]), ("color", 0, cands[1])):  # part: index in (colour, shape)
        named = len({world.parse(m)[0][part] for m in modes}) == 1  # the caption fixes this attribute
        rank = 1 + sum(best[c][0] < best[mode][0] for c in group)
        s |= {f"{kind}_rank": rank if named else None, f"{kind}_r1": float(rank == 1) if named else None}
    return s


def back_half(out: Images, truth: Images, views: EvalViews, ref_elevation: float) -> dict:
    """PSNR and IoU over the held-out views at least 90° from the reference view (azimuth 0): the views where only
    the prior can say what the object looks like."""
    cams = view_cameras(views)
    ref = orbit_position(torch.tensor([ref_elevation]), torch.zeros(1), torch.ones(1))[0]
    dirs = -cams.viewmats[:, 2, :3]  # each camera's position direction: minus its forward axis
    back = (dirs @ ref) <= 1e-6
    (rgb, mask), (gt_rgb, gt_mask) = out, truth
    iou = ((mask & gt_mask)[back].sum() / (mask | gt_mask)[back].sum().clamp(min=1)).item()
    return {"back_psnr": psnr_db((rgb[back] - gt_rgb[back]).pow(2).mean().item()), "back_iou": iou,
            "back_views": int(back.sum())}


def reference_input(caption: str, cfg, folder: Path) -> Path:
    """The caption's truth seen by the reference camera, as an RGBA PNG (straight colour: the render on black
    divided by its alpha, so compositing it on the background gives the render on the background)."""
    from lodsgs.media import save_png, to_uint8
    from lodsgs.preflight import run_name
    from lodsgs.reference import reference_camera

    out = render(world.build_object(caption), reference_camera(cfg), background=torch.zeros(3))
    alpha = out.alpha[0]
    path = folder / f"{run_name(caption, 0)}-e{cfg.image.elevation:g}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(to_uint8(torch.cat([out.rgb[0] / alpha.clamp_min(1e-6), alpha], -1)), path)
    return path


def mean(rows: list[dict], key: str) -> float | None:
    """Mean of ``key`` over the rows that have it (R@1 is None for scenes); None if none do."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    return sum(vals) / len(vals) if vals else None


@dataclass
class EvalResult:
    rows: list[dict] = field(default_factory=list)

    def summary(self) -> dict[str, dict]:
        """Per-variant means over all runs (R@1 over the ``r1_n`` single-object runs); with several seeds also
        ``<metric>_sd``, the sample sd across seeds of the per-seed means of psnr, iou and R@1."""
        out: dict[str, dict] = {}
        for variant in dict.fromkeys(r["variant"] for r in self.rows):
            rows = [r for r in self.rows if r["variant"] == variant]
            seeds = list(dict.fromkeys(r["seed"] for r in rows))
            m = {k: mean(rows, k) for k in ("psnr", "iou", "color_error", "shape_r1", "color_r1", "purity",
                                            "saturation_excess", "seconds", "back_psnr", "back_iou")}
            m |= {"n": len(rows), "r1_n": sum(r.get("shape_r1") is not None for r in rows), "seeds": len(seeds)}
            for k in SPREAD if len(seeds) > 1 else ():
                per_seed = [x for s in seeds if (x := mean([r for r in rows if r["seed"] == s], k)) is not None]
                m[f"{k}_sd"] = statistics.stdev(per_seed) if len(per_seed) > 1 else None
            out[variant] = m
        return out

    def markdown(self) -> str:
        """The method table (mean ± sd across seeds when several), then PSNR / IoU per caption and method."""
        summary = self.summary()
        back = any(m["back_psnr"] is not None for m in summary.values())  # an image eval: back half too
        back_head = "back-half PSNR ↑ | back-half IoU ↑ | " if back else ""
        lines = ["| method | runs | PSNR (dB) ↑ | silhouette IoU ↑ | " + back_head +
                 "colour error ↓ | shape R@1 ↑ | colour R@1 ↑ | purity ↑ | saturation excess | s / run |",
                 "|---|---|---|---|" + ("---|---|" if back else "") + "---|---|---|---|---|---|"]
        for variant, m in summary.items():
            cells = [cell(m, "psnr", ".2f"), cell(m, "iou", ".3f"),
                     *((cell(m, "back_psnr", ".2f"), cell(m, "back_iou", ".3f")) if back else ()),
                     cell(m, "color_error", ".3f"),
                     cell(m, "shape_r1", ".2f"), cell(m, "color_r1", ".2f"), cell(m, "purity", ".2f"),
                     cell(m, "saturation_excess", "+.3f"), f"{m['seconds']:.0f}"]
            lines.append(f"| {variant} | {m['n']} | " + " | ".join(cells) + " |")
        seeds = max(m["seeds"] for m in summary.values()) if summary else 1
        r1_n = "/".join(str(n) for n in dict.fromkeys(m["r1_n"] for m in summary.values()))
        if any(m["r1_n"] for m in summary.values()):  # no note for scenes-only tables
            lines += ["", f"R@1: share of the {r1_n} single-object runs whose captioned shape (colour) has the "
                      "best yaw-aligned PSNR among the 5 shapes in that colour (6 colours of that shape); an "
                      "underspecified caption (\"a cube\", \"a red shape\") is scored against the nearest truth it "
                      "allows and counts for the attribute it names. Purity: share of the object's pixels near one "
                      "palette colour; saturation excess: mean chroma minus the scored truth's"
                      + (f"; ± is the sd across {seeds} seeds of the per-seed means." if seeds > 1 else ".")]
        return "\n".join(lines + ["", *self.caption_table(list(summary), seeds)]) + "\n"

    def caption_table(self, variants: list[str], seeds: int) -> list[str]:
        """PSNR / IoU per caption and method (means over seeds when several)."""
        head = "caption" + (f" (mean of {seeds} seeds)" if seeds > 1 else "")
        lines = [f"| {head} | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants)]
        for caption in dict.fromkeys(r["caption"] for r in self.rows):
            cells = []
            for variant in variants:
                rows = [r for r in self.rows if r["caption"] == caption and r["variant"] == variant]
                cells.append(f"{mean(rows, 'psnr'):.1f} dB / {mean(rows, 'iou'):.2f}" if rows else "–")
            lines.append(f"| {caption} | " + " | ".join(cells) + " |")
        return lines


def cell(m: dict, key: str, fmt: str) -> str:
    """A summary value for the method table, with its sd across seeds when there is one; '–' when missing."""
    if m[key] is None:
        return "–"
    sd = m.get(f"{key}_sd")
    return f"{m[key]:{fmt}}" + (f" ± {sd:{fmt}}" if sd is not None else "")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``, refusing anything else in one line."""
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise LodsgsError(f"--seeds expects comma-separated integers such as 0,1,2, got {text!r}") from None
    if len(set(seeds)) < len(seeds):
        raise LodsgsError(f"--seeds repeats a seed: {text!r}")
    if any(not 0 <= s < 2**63 for s in seeds):
        raise LodsgsError(f"--seeds must be integers in 0..2^63-1, got {text!r}")
    return seeds


def with_reference(specs: dict, caption: str, config: str | None, out: Path) -> dict:
    """An image eval's configs for one caption: the caption's truth at the reference camera as image.path, not
    recentred, the lifted reference as the start, then the variant's own overrides (text-only clears the image)."""
    from lodsgs.config import load_config

    made, inputs = {}, {}
    for key, (common, own) in specs.items():
        if tuple(common) not in inputs:  # variants sharing the common settings share one rendered input
            inputs[tuple(common)] = reference_input(caption, load_config(config, common), out / "references")
        made[key] = load_config(config, [*common, ("image.path", str(inputs[tuple(common)])), "image.recenter=false",
                                         "init.kind=image", *own])
    return made


def result_splats(caption: str, variant: str, cfg, out: Path, prior: Callable, log,
                  quiet: bool = True) -> tuple[Splats, float, int, Path | None]:
    """One run's splats, seconds, steps and folder: the start for 'init' (no folder); else the run folder's
    result if it was made with these settings (config hash), else generated (resuming an interrupted run)."""
    from lodsgs.api import run_or_resume
    from lodsgs.preflight import run_name
    from lodsgs.rundir import finished, resumable
    from lodsgs.splats.io import read_ply
    from lodsgs.starts import init_splats

    if variant == "init":  # the starting splats, unoptimized: the floor every method must beat
        return init_splats(cfg, caption, prior(cfg)), 0.0, 0, None
    folder = out / variant
    run_dir = folder / run_name(caption, cfg.run.seed, cfg.image.path)
    if not finished(run_dir, cfg):
        resume = resumable(run_dir, cfg)
        why = " (resuming its checkpoint)" if resume else (
            " (settings changed: generating again)" if (run_dir / "metrics.json").exists() else "")
        log(f"[{variant}] {caption} (seed {cfg.run.seed}){why}")
        run_or_resume(caption, cfg, folder, quiet=quiet, prior=prior(cfg))
    done = json.loads((run_dir / "metrics.json").read_text())
    return read_ply(run_dir / "splats.ply"), done["seconds"], done["steps"], run_dir


def cached_score(run_dir: Path | None, key: dict, compute: Callable[[], dict]) -> dict:
    """A run's scores, kept in its folder (``eval-score.json``) under ``key`` plus the splats file's size and
    time, so that rerunning an eval (to add a method, a caption or a seed) does not render every run again."""
    if run_dir is None:
        return compute()
    ply = (run_dir / "splats.ply").stat()
    key = json.loads(json.dumps({**key, "version": SCORE_VERSION, "splats": [ply.st_size, ply.st_mtime_ns]}))
    file = run_dir / "eval-score.json"
    try:
        kept = json.loads(file.read_text())
        if kept["key"] == key:
            return kept["score"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    score = compute()
    write_text(file, json.dumps({"key": key, "score": score}))
    return score


def run_eval(
    captions: list[str] | None,
    variants: dict[str, list[str]],
    base_overrides: list[str],
    out: Path,
    config: str | None = None,
    views: EvalViews | None = None,
    log=print,
    seeds: list[int] | None = None,
    image: bool = False,
    quiet: bool = True,
) -> EvalResult:
    """Generate each caption with each variant and seed (resuming finished runs) and score against ground truth;
    ``seeds`` None means the config's seed. ``image``: image-to-3D, each caption's truth at the reference camera
    as the input, scored also on the back half (back_psnr, back_iou)."""
    from lodsgs.config import load_config
    from lodsgs.trainer import Interrupted, load_prior, resolve_device

    views = views or EvalViews()
    captions = captions or world.captions()
    unknown = [c for c in captions if c not in world.all_captions()]
    if unknown:
        raise LodsgsError(f"not shapes-world captions: {unknown}; see `lodsgs prior captions`")
    result = EvalResult()
    out.mkdir(parents=True, exist_ok=True)
    seed_sets = {s: [] if s is None else [f"run.seed={s}"] for s in seeds or [None]}
    specs = {(v, s): (["prior.model=shapes", *base_overrides, *ss], o)
             for s, ss in seed_sets.items() for v, o in variants.items()}
    cfgs = {key: load_config(config, [*common, *own]) for key, (common, own) in specs.items()}
    loaded: list = []

    def prior(cfg):  # one prior for every run, loaded when the first run needs generating
        loaded[:] = loaded or [load_prior(cfg, resolve_device(cfg.run.device))]
        return loaded[0]

    for caption in captions:  # caption-major, so an interrupted eval already compares every method
        for (variant, _), cfg in (with_reference(specs, caption, config, out) if image else cfgs).items():
            try:
                splats, seconds, steps, run_dir = result_splats(caption, variant, cfg, out, prior, log, quiet)
            except (KeyboardInterrupt, Interrupted):
                raise Interrupted(f"eval interrupted at {variant!r} / {caption!r}; rerun the same command to "
                                  "continue: finished runs are reused, this one resumes from its checkpoint") from None
            ref = cfg.image.elevation if image else None
            key = {"caption": caption, "views": dataclasses.asdict(views), "ref_elevation": ref}
            scorer = functools.partial(score_caption, splats, caption, views, world.BACKGROUND, ref)
            s = cached_score(run_dir, key, scorer)
            result.rows.append({"variant": variant, "caption": caption, "seed": cfg.run.seed, **s,
                                "seconds": seconds, "steps": steps})
    (out / "eval.json").write_text(json.dumps({"rows": result.rows, "summary": result.summary(),
                                               "written": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))
    (out / "eval.md").write_text(result.markdown())
    return result


def parse_variants(specs: list[str]) -> dict[str, list[str]]:
    """``NAME=key=value,...`` (repeatable) as {NAME: [key=value, ...]}; commas inside [...] belong to a list
    value: ``init.color=[0.5,0.5,0.5],run.steps=10``."""
    import re

    variants = {}
    for v in specs:
        name, sep, body = v.partition("=")
        if not sep or not name:
            raise LodsgsError(f"--variant expects NAME=key=value,... (or NAME= for the preset as is), got {v!r}")
        variants[name] = [kv.strip() for kv in re.split(r",(?![^\[]*\])", body) if kv.strip()]
    return variants


def eval_cli(out: Path, captions: list[str] | None, variant: list[str] | None, config: str | None,
             sets: list[str] | None, seed: int | None, seeds: str | None, steps: int | None, two_d: bool = False,
             task: str = "generate", image: bool = False, quiet: bool = True, log=print) -> str:
    """``lodsgs eval``: the 3D (text or image) or 2D eval from the command's options; returns the tables."""
    if seeds is not None and seed is not None:
        raise LodsgsError("give --seed or --seeds, not both")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if two_d:
        from lodsgs.eval2d import eval2d_cli
        return eval2d_cli(task, variant, out, captions, seed_list or [seed or 0], steps, log=log)
    variants = parse_variants(variant) if variant else dict(IMAGE_VARIANTS if image else DEFAULT_VARIANTS)
    base = list(sets or []) + [f"run.{k}={v}" for k, v in (("seed", seed), ("steps", steps)) if v is not None]
    result = run_eval(captions, variants, base, out, config=config, log=log, seeds=seed_list, image=image,
                      quiet=quiet)
    return f"{result.markdown()}\nwrote {out / 'eval.json'} and {out / 'eval.md'}"
