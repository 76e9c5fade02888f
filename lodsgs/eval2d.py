"""``lodsgs eval --2d``: 2D generation and editing on the shapes world, scored against truth renders.

Generation is scored like the prior's own sanity check (``lodsgs prior sanity``): each image against the
caption's truth from 48 generation cameras (nearest-view MSE), its dominant colour, purity and saturation excess
(as in the 3D eval); the prior's own DDIM samples are the reference row (``ddim``). Editing starts from a truth
render at a generation camera and is scored against the target caption's truth from the same camera: PSNR,
silhouette IoU with the target and with the source (a colour edit must keep the silhouette), background error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import statistics
from pathlib import Path

import torch
from torch import Tensor

from lodsgs.cameras import sample_cameras
from lodsgs.config import Config
from lodsgs.errors import LodsgsError
from lodsgs.eval import chroma, purity
from lodsgs.files import write_text
from lodsgs.fit import psnr_db
from lodsgs.prior.shapes import world
from lodsgs.prior.shapes.sanity import border_color, dominant_color, nearest_color_name

TASKS = ("generate", "colour", "shape")
TRUTH_VIEWS = 48
REFERENCE = {"generate": "ddim", "colour": "source", "shape": "source"}  # rows that are not runs
GENERATE_VARIANTS = {  # name: (preset, section.key=value overrides); every variant runs on the shapes prior
    "ddim": ("image2d", []),  # the prior's own DDIM samples: only canvas.particles is read
    "sds-7.5": ("image2d", ["guidance.method=sds", "guidance.guidance_scale=7.5"]),
    "sds-100": ("image2d", ["guidance.method=sds", "guidance.guidance_scale=100"]),
    "lods-emb-paper": ("image2d_paper_embedding", []),
    "lods-emb": ("image2d_shapes", []),
    "lods-lora-paper": ("image2d_paper_lora", []),
    "lods-lora-1e-3": ("image2d_paper_lora", ["guidance.lora_lr=1e-3"]),
}
EDIT_VARIANTS = {
    "source": ("edit2d", []),  # the unedited image
    "sds": ("edit2d", ["guidance.method=sds"]),
    "dds": ("edit2d", ["guidance.method=dds"]),
    "lods": ("edit2d", ["guidance.method=lods-embedding"]),
    "lods-null": ("edit2d", ["guidance.method=lods-embedding", "canvas.alpha_from_source=false"]),
}
DEFAULT_PRESET = {"generate": "image2d_shapes", "colour": "edit2d", "shape": "edit2d"}  # a --variant's base


def object_mask(images: Tensor) -> Tensor:
    """Pixels that differ from the white background (the sanity check's rule): [N,H,W] bool."""
    return (images - torch.tensor(world.BACKGROUND)).abs().sum(-1) > 0.25


@functools.lru_cache(maxsize=64)
def truth_views(caption: str, n: int = TRUTH_VIEWS, seed: int = 0) -> Tensor:
    """The caption's truth from ``n`` generation cameras at the prior's 32² (supersampled ×2, as its data)."""
    g = torch.Generator().manual_seed(seed)
    cams = sample_cameras(world.SHAPES_CAMERAS, n, g)
    return render_truth(caption, cams)


def render_truth(caption: str, cams, size: int = 32, supersample: int = 2) -> Tensor:
    """[C,size,size,3] truth renders of ``caption`` at ``cams`` (rendered ×supersample, average-pooled)."""
    from lodsgs.splats.render import render
    cams.width = cams.height = size * supersample
    cams.Ks = cams.Ks * supersample
    cams.Ks[:, 2, 2] = 1.0
    with torch.no_grad():
        rgb = render(world.build_object(caption), cams, background=world.BACKGROUND).rgb.clamp(0, 1)
    return torch.nn.functional.avg_pool2d(rgb.permute(0, 3, 1, 2), supersample).permute(0, 2, 3, 1)


def generation_scores(images: Tensor, caption: str) -> dict:
    """Means over the images [N,H,W,3]: nearest-view MSE to the caption's truths (the nearest mode for an
    underspecified caption), colour match, purity, saturation excess (chroma minus the nearest truth view's),
    background error (border tint)."""
    images = images.float().cpu()
    best_mse, best_gt = None, None
    for mode in world.modes(caption):
        gt = truth_views(mode)
        mse = ((images[:, None] - gt[None]) ** 2).mean((2, 3, 4))  # [N, views]
        m, i = mse.min(1)
        if best_mse is None:
            best_mse, best_gt = m, gt[i]
        else:
            better = m < best_mse
            best_mse = torch.where(better, m, best_mse)
            best_gt = torch.where(better[:, None, None, None], gt[i], best_gt)
    allowed = {c for mode in world.modes(caption) for c, _ in world.parse(mode)}
    colors = [nearest_color_name(c) for c in dominant_color(images)]
    masks, gt_masks = object_mask(images), object_mask(best_gt)
    pur = [purity((images[k:k + 1], masks[k:k + 1])) for k in range(len(images))]
    sat = [chroma((images[k:k + 1], masks[k:k + 1])) - chroma((best_gt[k:k + 1], gt_masks[k:k + 1]))
           for k in range(len(images))]
    tint = (border_color(images) - torch.tensor(world.BACKGROUND)).abs().mean()
    return {"nearest_view_mse": float(best_mse.mean()), "color_match": sum(c in allowed for c in colors) / len(colors),
            "purity": statistics.mean(pur), "purity_min": min(pur), "saturation_excess": statistics.mean(sat),
            "background_error": float(tint), "per_image_mse": [round(float(x), 5) for x in best_mse]}


def edit_cases(task: str) -> list[tuple[str, str]]:
    """(source, target) for each of the 30 single objects: the next colour (colour edits) or the next shape
    (shape edits) in the world's order, cyclically."""
    colors, shapes = list(world.COLORS), list(world.SHAPES)
    cases = []
    for caption in world.captions():
        parts = world.parse(caption)
        if len(parts) != 1:
            continue
        color, shape = parts[0]
        if task == "colour":
            color = colors[(colors.index(color) + 1) % len(colors)]
        else:
            shape = shapes[(shapes.index(shape) + 1) % len(shapes)]
        cases.append((caption, f"{world.article(color)} {color} {shape}"))
    return cases


def edit_camera(source: str):
    """The generation camera an edit is drawn from (fixed per source caption)."""
    return sample_cameras(world.SHAPES_CAMERAS, 1, torch.Generator().manual_seed(world.captions().index(source)))


def edit_pair(source: str, target: str) -> tuple[Tensor, Tensor]:
    """The source's and the target's truth [H,W,3] from the same generation camera."""
    return render_truth(source, edit_camera(source))[0], render_truth(target, edit_camera(source))[0]


def edit_scores(edited: Tensor, src: Tensor, tgt: Tensor) -> dict:
    """PSNR to the target truth, silhouette IoU with the target's and with the source's, background error
    (mean |edited − white| outside both silhouettes)."""
    edited = edited.float().cpu()
    m, ms, mt = object_mask(edited[None])[0], object_mask(src[None])[0], object_mask(tgt[None])[0]

    def iou(a: Tensor, b: Tensor) -> float:
        return float((a & b).sum() / (a | b).sum().clamp(min=1))

    outside = ~(ms | mt)
    bg = (edited - torch.tensor(world.BACKGROUND)).abs().mean(-1)[outside].mean()
    return {"psnr": psnr_db(float(((edited - tgt) ** 2).mean())), "iou_target": iou(m, mt), "iou_source": iou(m, ms),
            "background_error": float(bg)}


# --- the runner -----------------------------------------------------------------------------------------

def run_eval2d(task: str, variants: dict[str, tuple[str, list]], out: Path, captions: list[str] | None = None,
               seeds: list[int] | None = None, steps: int | None = None, log=print) -> list[dict]:
    """Run every (caption, variant, seed) not yet in out/rows.jsonl with these settings, keep its row there, and
    write eval2d-TASK.md/json over the rows asked for (other rows stay in rows.jsonl for later tables)."""
    from lodsgs.image2d import save_png, side_by_side, slug
    from lodsgs.prior.diffusion import DiffusionPrior, resolve_model
    cases, seeds = task_cases(task, captions), seeds or [0]
    cfgs = {(seed, name): variant_config(task, name, preset, sets, steps, seed)
            for seed in seeds for name, (preset, sets) in variants.items()}  # every bad setting before any run
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / "rows.jsonl"
    text = rows_file.read_text() if rows_file.exists() else ""
    kept = {row_key(r): r for r in (json.loads(line) for line in text.splitlines() if line.strip())}
    prior = None
    for seed in seeds:
        for source, target in cases:  # caption-major: an interrupted eval already compares every method
            for name in variants:
                cfg = cfgs[(seed, name)]
                old = kept.get((task, name, source, seed))
                if old is not None and old.get("settings") == settings_hash(cfg):
                    continue
                prior = prior or DiffusionPrior.from_pretrained(resolve_model("shapes"))
                why = " (settings changed: running again)" if old is not None else ""
                log(f"[2d {task}] {name} {source!r}{'' if task == 'generate' else f' -> {target!r}'} seed {seed}{why}")
                row, images = run_case(prior, task, name, cfg, source, target)
                folder = out / "images" / task / name
                folder.mkdir(parents=True, exist_ok=True)
                save_png(folder / f"{slug(source)}-s{seed}.png", side_by_side(images))
                kept[row_key(row)] = row  # a changed variant's row replaces the old one in place
                write_text(rows_file, "".join(json.dumps(r) + "\n" for r in kept.values()))
    rows = [kept[(task, name, source, seed)] for seed in seeds for source, _ in cases for name in variants]
    (out / f"eval2d-{task}.md").write_text(markdown(task, rows))
    (out / f"eval2d-{task}.json").write_text(json.dumps({"rows": rows, "summary": summary(task, rows)}, indent=2))
    return rows


def task_cases(task: str, captions: list[str] | None) -> list[tuple[str, str]]:
    """(source, target) of each case: generation's single objects (source = target) or the task's edits, only
    ``captions`` when given (one line for a caption that is not a single shapes-world object)."""
    if task not in TASKS:
        raise LodsgsError(f"unknown 2D eval task {task!r}; valid: {', '.join(TASKS)}")
    cases = ([(c, c) for c in world.captions() if len(world.parse(c)) == 1] if task == "generate"
             else edit_cases(task))
    if captions:
        unknown = [c for c in captions if c not in {s for s, _ in cases}]
        if unknown:
            raise LodsgsError(f"not single-object shapes-world captions: {unknown}; see `lodsgs prior captions`")
        cases = [c for c in cases if c[0] in captions]
    return cases


def variant_config(task: str, name: str, preset: str, sets: list, steps: int | None, seed: int) -> Config:
    """A variant's settings: its preset and overrides, then --steps and the seed, on the shapes prior (the one
    every row runs on, so its settings say so); a bad one is one line naming the variant."""
    from lodsgs.image2d import load_2d_config
    extra = [f"run.steps={steps}"] if steps is not None else []
    try:
        return load_2d_config("image" if task == "generate" else "edit", preset,
                              [*sets, *extra, f"run.seed={seed}", ("prior.model", "shapes")], None)
    except LodsgsError as e:
        raise LodsgsError(f"variant {name!r}: {e}") from None


def run_case(prior, task: str, name: str, cfg: Config, source: str, target: str) -> tuple[dict, Tensor]:
    """One row (its scores and the run's diagnostics) and the images it scores; the reference rows (DDIM
    samples, the unedited source) run no optimization."""
    from lodsgs.image2d import edit, initial_particles, optimize
    seed = cfg.run.seed
    row = {"task": task, "variant": name, "caption": source, "target": target, "seed": seed,
           "settings": settings_hash(cfg)}
    seconds = 0.0
    if task == "generate":
        if name == REFERENCE[task]:
            images = prior.sample(source, n=cfg.canvas.particles, seed=seed)
        else:
            params = initial_particles(prior, cfg.canvas.particles, torch.Generator().manual_seed(seed))
            run = optimize(prior, source, cfg, params)
            images, seconds = run.images, run.seconds
            row |= diagnostics(run.log)
        row |= generation_scores(images, source)
    else:
        src, tgt = edit_pair(source, target)
        if name == REFERENCE[task]:
            images = src[None]
        else:
            run = edit(prior, src, source, target, cfg)
            images, seconds = run.images[:1], run.seconds
            row |= diagnostics(run.log)
        row |= edit_scores(images[0], src, tgt)
    row["seconds"] = round(seconds, 2)
    return row, images


def row_key(row: dict) -> tuple:
    return row["task"], row["variant"], row["caption"], row["seed"]


def settings_hash(cfg: Config) -> str:
    """12 hex digits of what decides a 2D run's images (``settings_2d(cfg, result_only=True)``): a kept row
    counts only if its variant still means the same run."""
    from lodsgs.image2d import settings_2d
    return hashlib.sha1(json.dumps(settings_2d(cfg, result_only=True), sort_keys=True).encode()).hexdigest()[:12]


def diagnostics(logs: list[dict]) -> dict:
    """The learned branch at the end (α's shift and cosine to the target caption, LoRA B norm) and the mean
    |ε_c − ε_u| over the last quarter of the log."""
    last = logs[-1] if logs else {}
    tail = logs[-max(1, len(logs) // 4):]
    gaps = [r["eps_gap"] for r in tail if r.get("eps_gap") is not None]
    return {**{k: last[k] for k in ("alpha_shift", "alpha_cos", "lora_b_norm") if last.get(k) is not None},
            "eps_gap_end": statistics.mean(gaps) if gaps else None}


METRICS = {"generate": ("nearest_view_mse", "color_match", "purity", "purity_min", "saturation_excess",
                        "background_error"),
           "colour": ("psnr", "iou_source", "iou_target", "background_error"),
           "shape": ("psnr", "iou_target", "iou_source", "background_error")}
DIAG = ("alpha_shift", "alpha_cos", "lora_b_norm", "eps_gap_end", "seconds")


def summary(task: str, rows: list[dict]) -> dict[str, dict]:
    """Per variant: mean of each metric over runs, sd across seeds of the per-seed means, and for generation
    the MSE ratio to the DDIM reference on the same captions and seeds."""
    out: dict[str, dict] = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        vr = [r for r in rows if r["variant"] == variant]
        seeds = list(dict.fromkeys(r["seed"] for r in vr))
        m = {"runs": len(vr), "captions": len({r["caption"] for r in vr}), "seeds": len(seeds)}
        for k in METRICS[task] + DIAG:
            vals = [r[k] for r in vr if r.get(k) is not None]
            m[k] = statistics.mean(vals) if vals else None
            per_seed = [statistics.mean(v) for s in seeds if (v := [r[k] for r in vr if r["seed"] == s
                                                                    and r.get(k) is not None])]
            m[f"{k}_sd"] = statistics.stdev(per_seed) if len(per_seed) > 1 else None
        if task == "generate":
            ref = {(r["caption"], r["seed"]): r["nearest_view_mse"] for r in rows if r["variant"] == REFERENCE[task]}
            pairs = [(r["nearest_view_mse"], ref[(r["caption"], r["seed"])]) for r in vr
                     if (r["caption"], r["seed"]) in ref]
            m["mse_ratio"] = (sum(a for a, _ in pairs) / sum(b for _, b in pairs)) if pairs else None
        out[variant] = m
    return out


def markdown(task: str, rows: list[dict]) -> str:
    """The variant table (mean ± sd across seeds), then the learned-branch diagnostics."""
    s = summary(task, rows)
    keys = (("mse_ratio",) if task == "generate" else ()) + METRICS[task]
    lines = ["| variant | runs | " + " | ".join(keys) + " | α shift | α cos(target) | LoRA B | ε gap (end) | s/run |",
             "|---|---|" + "---|" * (len(keys) + 5)]
    for variant, m in s.items():
        cells = [fmt(m, k) for k in keys] + [fmt(m, k, sd=False) for k in DIAG]
        lines.append(f"| {variant} | {m['runs']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def fmt(m: dict, key: str, sd: bool = True) -> str:
    v = m.get(key)
    if v is None:
        return "–"
    text = f"{v:.4f}" if abs(v) < 1 else f"{v:.2f}"
    return text + (f" ± {m[f'{key}_sd']:.4f}" if sd and m.get(f"{key}_sd") is not None else "")


def eval2d_cli(task: str, variant_specs: list[str] | None, out: Path, captions: list[str] | None,
               seeds: list[int], steps: int | None, log=print) -> str:
    """`lodsgs eval --2d`: parse ``NAME=section.key=value,...`` variants (key ``config`` picks the preset, default
    image2d_shapes for generation, edit2d for edits; ``preset`` is the same key), run, and return the table."""
    variants = dict(GENERATE_VARIANTS if task == "generate" else EDIT_VARIANTS)
    if variant_specs:
        variants = dict(parse_variant(spec, DEFAULT_PRESET.get(task, "edit2d")) for spec in variant_specs)
    rows = run_eval2d(task, variants, out, captions, seeds, steps, log)
    return markdown(task, rows) + f"\nwrote {out / f'eval2d-{task}.md'} and {out / f'eval2d-{task}.json'}"


def parse_variant(spec: str, default: str) -> tuple[str, tuple[str, list[str]]]:
    """``NAME=config=image2d,guidance.embedding_lr=1e-3`` -> (NAME, (preset, overrides)); commas inside
    [...] belong to a list value."""
    name, sep, body = spec.partition("=")
    if not sep or not name:
        raise LodsgsError(f"--variant expects NAME=section.key=value,... (e.g. "
                          f"lods-1e-3=guidance.embedding_lr=1e-3), got {spec!r}")
    items = [kv.strip() for kv in re.split(r",(?![^\[]*\])", body) if kv.strip()]
    chosen = [kv.split("=", 1)[1] for kv in items if kv.split("=", 1)[0] in ("config", "preset")]
    return name, (chosen[-1] if chosen else default,
                  [kv for kv in items if kv.split("=", 1)[0] not in ("config", "preset")])
