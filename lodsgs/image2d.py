"""2D score distillation with the same prior: generate images from noise (``lodsgs image``) or edit one
(``lodsgs edit``), optimizing the diffusion model's x0 directly: sigmoid-parametrized pixels for a pixel-space
prior (the shapes prior, 32²), the latent for Stable Diffusion (VAE-decoded at the end), as in the official
LODS 2D playgrounds (yangxiaofeng/LODS ``2dplayground_embedding.py`` / ``2dplayground_lora.py``).

The gradient is ``Guidance``'s: SDS, LODS-embedding, LODS-LoRA; editing adds DDS (``Guidance.distill`` with a
source branch) and LODS editing, whose learned α starts at the source caption (or the null text) and is trained
on the current image, so ε(x_t; α) keeps describing what the image is while the target text pulls it on.

Settings are the one ``Config`` (presets configs/image2d*.yaml, edit2d.yaml); a 2D run reads run.steps, seed,
log_every and device, and the prior, guidance and canvas sections. torch is imported inside the functions that
use it, so loading and checking a 2D config (the CLI's error paths) loads no torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from lodsgs.config import Config, GuidanceConfig, load_config, settings_overrides, to_dict
from lodsgs.errors import LodsgsError
from lodsgs.preflight import check_prior
from lodsgs.prompts import slug

if TYPE_CHECKING:
    import torch
    from torch import Tensor

Kind = Literal["image", "edit"]
METHODS: dict[str, tuple[str, ...]] = {"image": ("sds", "lods-embedding", "lods-lora"),
                                       "edit": ("sds", "dds", "lods-embedding", "lods-lora")}
PRESETS = {"image": "image2d", "edit": "edit2d"}  # each kind's default; `lodsgs image --prior shapes`: image2d_shapes
# what a 2D run reads of a Config: these run keys and the whole prior, guidance and canvas sections (the others
# are 3D's); log_every and device do not change the images, so a result's hash leaves them out
RUN_KEYS, SECTIONS, NOT_IN_RESULT = ("steps", "seed", "log_every", "device"), ("prior", "guidance", "canvas"), (
    "log_every", "device")
OUTPUTS = {"image": ("image.png", "progress.png", "log.jsonl", "metrics.json"),
           "edit": ("edited.png", "before_after.png", "progress.png", "log.jsonl", "metrics.json")}
UPSCALE_TO = 128  # pictures of the 32² prior are drawn at least this big (nearest neighbour)


# --- settings -------------------------------------------------------------------------------------------

def load_2d_config(kind: Kind, config: str | None, overrides: list | None, prior: str | None) -> Config:
    """A 2D run's settings: the preset ``config`` names (else the kind's default: image2d, image2d_shapes with
    ``prior`` "shapes", edit2d), a user YAML file, ``prior`` (taken literally), then ``overrides``; every value
    range-checked, and the method one the kind can run. No prior profile: those hold 3D settings."""
    if kind not in PRESETS:
        raise LodsgsError(f"unknown 2D run kind {kind!r}; valid: {', '.join(PRESETS)}")
    default = "image2d_shapes" if kind == "image" and prior == "shapes" else PRESETS[kind]
    items = [("prior.model", prior)] if prior else []
    cfg = load_config(config, [*items, *(overrides or [])], default=default, profile=False, kind="2d")
    check_method(kind, cfg)
    return cfg


def check_method(kind: Kind, cfg: Config) -> None:
    """One line when guidance.method is not one ``kind`` runs (dds needs a source image: edit only)."""
    valid = METHODS[kind]
    if cfg.guidance.method not in valid:
        raise LodsgsError(f"guidance.method {cfg.guidance.method!r} is not for `lodsgs {kind}`; valid: "
                          f"{', '.join(valid)}")


def shortcut_overrides(particles: int | None = None, method: str | None = None, seed: int | None = None,
                       steps: int | None = None, device: str | None = None) -> list:
    """The 2D commands' shortcut options as overrides (given before --set, so --set wins): canvas.particles,
    guidance.method (``lods``: lods-embedding, the old name), run.seed, run.steps, run.device."""
    method = "lods-embedding" if method == "lods" else method
    pairs = (("canvas.particles", particles), ("guidance.method", method))
    return [(key, value) for key, value in pairs if value is not None] + settings_overrides(None, steps, seed, device)


def settings_2d(cfg: Config, result_only: bool = False) -> dict:
    """The settings a 2D run reads, as plain dicts by section (metrics.json keeps them); ``result_only`` leaves
    out what changes no image (log_every, device), for eval2d's settings hash."""
    d = to_dict(cfg)
    run = {k: d["run"][k] for k in RUN_KEYS if not (result_only and k in NOT_IN_RESULT)}
    return {"run": run, **{s: d[s] for s in SECTIONS}}


def guidance_config(cfg: Config, source_caption: str | None = None) -> GuidanceConfig:
    """``Guidance``'s settings for a 2D run: dds is SDS plus a source branch (optimize adds it); in a LODS edit
    the learned branch starts at the source caption when canvas.alpha_from_source."""
    g = cfg.guidance
    g = dataclasses.replace(g, method="sds" if g.method == "dds" else g.method)
    if source_caption is not None and g.method != "sds" and cfg.canvas.alpha_from_source:
        g.negative_prompt = source_caption
    return g


# --- particles: the parameters, their x0 and their pictures ---------------------------------------------

def initial_particles(prior, n: int, generator: torch.Generator) -> Tensor:
    """Random start: pixel logits ~ N(0, 1) (a grey-ish noise image), or latents ~ U[-1, 1] (the playgrounds')."""
    import torch
    c, s = prior.unet.config.in_channels, prior.unet.config.sample_size
    if prior.vae is None:
        return torch.randn(n, c, s, s, generator=generator)
    return torch.rand(n, c, s, s, generator=generator) * 2 - 1


def particles_from_image(prior, image: Tensor, n: int) -> Tensor:
    """Parameters that reproduce ``image`` [H,W,3] in [0,1]: logits of its pixels, or its VAE latent (mean)."""
    import torch
    with torch.no_grad():
        x0 = prior.encode_images(image[None].to(prior.device)).float()
    if prior.vae is None:
        p = ((x0 + 1) / 2).clamp(1e-3, 1 - 1e-3)
        x0 = torch.log(p / (1 - p))
    return x0.repeat(n, 1, 1, 1).cpu()


def to_x0(prior, params: Tensor) -> Tensor:
    """The diffusion model's x0 of the particles: sigmoid pixels mapped to [-1, 1], or the latent itself."""
    return params.sigmoid() * 2 - 1 if prior.vae is None else params


def to_images(prior, params: Tensor) -> Tensor:
    """Pictures [N,H,W,3] in [0,1]: the pixels, or the VAE-decoded latents."""
    import torch
    with torch.no_grad():
        if prior.vae is None:
            return params.sigmoid().permute(0, 2, 3, 1).float().cpu()
        x = prior.vae.decode((params / prior.vae.config.scaling_factor).to(prior.dtype)).sample.float()
        return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu()


# --- the loop -------------------------------------------------------------------------------------------

@dataclass
class Result2D:
    """A finished 2D run: the final pictures [N,H,W,3] in [0,1], the snapshots along the run (``strip``, each
    [N,H,W,3]), the log records (every run.log_every steps and the last), its time, its steps, and its run folder
    (None when nothing was written)."""

    images: Tensor
    strip: list[Tensor]
    log: list[dict]
    seconds: float
    steps: int
    run_dir: Path | None = None


def optimize(prior, prompt: str, cfg: Config, params: Tensor, source: tuple[str, Tensor] | None = None,
             log_file: Path | None = None, quiet: bool = True) -> Result2D:
    """Optimize ``params`` toward ``prompt`` with guidance.method; ``source`` = (caption, x0) for editing
    (DDS's reference branch; LODS's α start). Writes nothing but ``log_file`` (when given)."""
    import torch

    from lodsgs.prior.guidance import Guidance

    run, c = cfg.run, cfg.canvas
    torch.manual_seed(run.seed)  # LoRA's A matrices are drawn from the global generator (peft): seed them
    prior.use_bf16(cfg.prior.bf16)
    guidance = Guidance(prior, guidance_config(cfg, source[0] if source else None), prompt, seed=run.seed,
                        steps=run.steps)
    gen = torch.Generator().manual_seed(run.seed + 1)
    params = torch.nn.Parameter(params.to(prior.device).float().clone())
    opt = torch.optim.Adam([{"params": [params], "lr": c.lr, "betas": (0.9, 0.99), "eps": 1e-15},
                            *guidance.param_groups()])
    dds = dds_branch(prior, cfg, source)
    marks = {round(i * (run.steps - 1) / max(c.snapshots - 1, 1)) for i in range(c.snapshots)}
    strip, log, start = [], [], time.perf_counter()
    from lodsgs.progress import StepProgress

    with (open(log_file, "w", encoding="utf-8") if log_file else contextlib.nullcontext()) as out, \
            StepProgress(run.steps, quiet=quiet, label=prompt) as bar:
        for step in range(run.steps):
            if step in marks:
                strip.append(to_images(prior, params.detach()))
            idx = torch.randperm(c.particles, generator=gen)[:c.batch].to(prior.device)
            x0 = to_x0(prior, params[idx])
            src = None if dds is None else (dds[0].expand(len(idx), -1, -1, -1), dds[1].expand(len(idx), -1, -1))
            res = guidance.distill(x0, ["front"] * len(idx), step, source=src)
            opt.zero_grad(set_to_none=True)
            (res.loss + res.prior_loss).backward()
            opt.step()
            bar.update(step + 1, loss=res.logs.get("sds", float("nan")), gaussians=c.particles)
            if (run.log_every and step % run.log_every == 0) or step == run.steps - 1:
                log.append(record(step, res.logs, time.perf_counter() - start))
                if out is not None:
                    out.write(json.dumps(log[-1]) + "\n")
                    out.flush()
    images = to_images(prior, params.detach())
    strip.append(images)
    return Result2D(images, strip, log, time.perf_counter() - start, run.steps)


def record(step: int, logs: dict, seconds: float) -> dict:
    """One log.jsonl record: the step, the guidance's numbers (the keys a 3D run logs), the time so far."""
    from lodsgs.runlog import GUIDANCE_KEYS
    return {"step": step, **{k: logs[k] for k in GUIDANCE_KEYS if k in logs}, "seconds": round(seconds, 4)}


def dds_branch(prior, cfg: Config, source: tuple[str, Tensor] | None) -> tuple[Tensor, Tensor] | None:
    """DDS's source branch (x0 of the source, its caption's embedding); None for the other methods."""
    if cfg.guidance.method != "dds":
        return None
    if source is None:
        raise LodsgsError("guidance.method 'dds' needs a source image and caption: use `lodsgs edit`")
    return source[1].to(prior.device).float(), prior.encode_text(source[0])


def edit(prior, image: Tensor, source: str, target: str, cfg: Config, log_file: Path | None = None,
         quiet: bool = True) -> Result2D:
    """One edit run from ``image`` [H,W,3] in [0,1]: canvas.particles copies of it moved from ``source`` to
    ``target`` (no files unless ``log_file``)."""
    import torch
    params = particles_from_image(prior, image, cfg.canvas.particles)
    with torch.no_grad():
        x0_src = to_x0(prior, params[:1].to(prior.device))
    return optimize(prior, target, cfg, params, source=(source, x0_src), log_file=log_file, quiet=quiet)


# --- files ----------------------------------------------------------------------------------------------

def as_uint8(images: Tensor) -> np.ndarray:
    """[N,H,W,3] in [0,1] -> uint8, upscaled (nearest) so the side is at least UPSCALE_TO."""
    k = max(1, -(-UPSCALE_TO // images.shape[1]))
    arr = (images.clamp(0, 1) * 255).round().byte().numpy()
    return arr.repeat(k, axis=1).repeat(k, axis=2)


def side_by_side(images: Tensor) -> np.ndarray:
    """Images [N,H,W,3] in a row (uint8, upscaled), 2-pixel white gaps."""
    arr = as_uint8(images)
    n, h, w, _ = arr.shape
    canvas = np.full((h, n * w + (n - 1) * 2, 3), 255, np.uint8)
    for i in range(n):
        canvas[:, i * (w + 2):i * (w + 2) + w] = arr[i]
    return canvas


def progress_strip(strip: list[Tensor]) -> np.ndarray:
    """Rows: particles; columns: snapshots along the run."""
    import torch
    return np.concatenate([side_by_side(torch.stack([s[i] for s in strip])) for i in range(len(strip[0]))], 0)


def save_png(path: Path, array: np.ndarray) -> None:
    import imageio.v2 as imageio

    from lodsgs.files import atomic_path
    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, array)


def read_rgb(path: Path) -> np.ndarray:
    """An RGB image [H,W,3] float32 in [0,1] (alpha composited on white), or one LodsgsError line."""
    from lodsgs.pictures import read_picture
    arr = read_picture(Path(path), "image")
    if arr.shape[-1] == 4:
        arr = arr[..., :3] * arr[..., 3:] + (1 - arr[..., 3:])
    return np.ascontiguousarray(arr)


def write_metrics(run_dir: Path, prompt: str, cfg: Config, run: Result2D, **extra) -> dict:
    """metrics.json: the caption(s), the effective 2D settings, time, speed and the learned branch's end state."""
    import torch

    from lodsgs.files import write_text
    last = run.log[-1] if run.log else {}
    metrics = {"prompt": prompt, **extra, "prior": cfg.prior.model, "config": settings_2d(cfg), "steps": run.steps,
               "seconds": round(run.seconds, 2), "steps_per_second": round(run.steps / max(run.seconds, 1e-9), 2),
               "threads": torch.get_num_threads(),
               **{k: last[k] for k in ("alpha_shift", "alpha_cos", "lora_b_norm", "eps_gap") if k in last}}
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


# --- the commands ---------------------------------------------------------------------------------------

def run_folder(out: Path | None, kind: Kind, caption: str, seed: int, overwrite: bool) -> Path | None:
    """``out/<kind>-<slug>-<seed>`` (None without ``out``), refused in one line when ``out`` is a file or a run is
    in the way (unless ``overwrite``). Creates nothing."""
    if out is None:
        return None
    out = Path(out)
    run_dir = out / f"{kind}-{slug(caption)}-{seed}"
    if out.exists() and not out.is_dir():
        raise LodsgsError(f"--out {str(out)!r} is a file; give a folder for the run folders")
    if run_dir.exists() and not run_dir.is_dir():
        raise LodsgsError(f"run folder {str(run_dir)!r} is a file; move it or give another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not overwrite:
        raise LodsgsError(f"run folder {str(run_dir)!r} already exists; pass --overwrite to start again")
    return run_dir


def open_folder(run_dir: Path, kind: Kind) -> None:
    """Create the run folder (one line if it cannot be written) and clear an overwritten run's outputs, so none
    of them stays beside a new run that fails."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS[kind]:
            (run_dir / name).unlink(missing_ok=True)
    except OSError as e:
        raise LodsgsError(f"cannot write to output folder {str(run_dir)!r}: {e.strerror}") from None


def generate_image(prompt: str, cfg: Config, out: Path | None = None, overwrite: bool = False,
                   prior=None, quiet: bool = True) -> Result2D:
    """``lodsgs image``: canvas.particles images from noise toward ``prompt``. ``out`` None: nothing is written;
    else the run folder ``out/image-<slug>-<seed>`` gets image.png (the particles side by side), progress.png,
    log.jsonl and metrics.json. ``prior``: an already loaded prior (else cfg.prior's, on run.device)."""
    check_method("image", cfg)
    check_prior(cfg, prompt)
    run_dir = run_folder(out, "image", prompt, cfg.run.seed, overwrite)
    # every refusal (words, prior folder, run folder) before torch is imported and anything is written
    import torch

    from lodsgs.prior.diffusion import load_prior, resolve_device
    prior = prior or load_prior(cfg, resolve_device(cfg.run.device))
    params = initial_particles(prior, cfg.canvas.particles, torch.Generator().manual_seed(cfg.run.seed))
    if run_dir is None:
        return optimize(prior, prompt, cfg, params, quiet=quiet)
    open_folder(run_dir, "image")
    result = optimize(prior, prompt, cfg, params, log_file=run_dir / "log.jsonl", quiet=quiet)
    save_png(run_dir / "image.png", side_by_side(result.images))
    save_png(run_dir / "progress.png", progress_strip(result.strip))
    write_metrics(run_dir, prompt, cfg, result)
    return dataclasses.replace(result, run_dir=run_dir)


def edit_image(image: Path, source: str, target: str, cfg: Config, out: Path | None = None, overwrite: bool = False,
               prior=None, quiet: bool = True) -> Result2D:
    """``lodsgs edit``: move ``image`` from the ``source`` caption to ``target``. ``out`` None: nothing is
    written; else the run folder ``out/edit-<target slug>-<seed>`` gets edited.png, before_after.png,
    progress.png, log.jsonl and metrics.json."""
    check_method("edit", cfg)
    if source.strip() == target.strip():
        raise LodsgsError(f"--source and --target are the same ({source!r}); the target caption must describe the "
                          "edit, e.g. --source 'a red cube' --target 'a blue cube'")
    picture = read_rgb(image)
    check_prior(cfg, source, target)
    run_dir = run_folder(out, "edit", target, cfg.run.seed, overwrite)
    import torch  # every refusal above ran without it

    from lodsgs.prior.diffusion import load_prior, resolve_device
    picture = torch.from_numpy(picture)
    prior = prior or load_prior(cfg, resolve_device(cfg.run.device))
    if run_dir is None:
        return edit(prior, picture, source, target, cfg, quiet=quiet)
    open_folder(run_dir, "edit")
    result = edit(prior, picture, source, target, cfg, log_file=run_dir / "log.jsonl", quiet=quiet)
    before = to_images(prior, particles_from_image(prior, picture, 1).to(prior.device))
    save_png(run_dir / "edited.png", as_uint8(result.images[:1])[0])
    save_png(run_dir / "before_after.png", side_by_side(torch.cat([before, result.images[:1]])))
    save_png(run_dir / "progress.png", progress_strip(result.strip))
    write_metrics(run_dir, target, cfg, result, source=source, image=str(image))
    return dataclasses.replace(result, run_dir=run_dir)
