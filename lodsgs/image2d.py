"""2D score distillation with the same prior: generate images from noise (``lodsgs image``) or edit one
(``lodsgs edit``), optimizing the diffusion model's x0 directly: sigmoid-parametrized pixels for a pixel-space
prior (the shapes prior, 32²), the latent for Stable Diffusion (VAE-decoded at the end), as in the official
LODS 2D playgrounds (yangxiaofeng/LODS ``2dplayground_embedding.py`` / ``2dplayground_lora.py``).

The gradient is ``Guidance``'s: SDS, LODS-embedding, LODS-LoRA; editing adds DDS (``Guidance.distill`` with a
source branch) and LODS editing, whose learned α starts at the source caption (or the null text) and is trained
on the current image, so ε(x_t; α) keeps describing what the image is while the target text pulls it on.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lodsgs.errors import LodsgsError

GENERATE_METHODS = ("sds", "lods-embedding", "lods-lora")
EDIT_METHODS = ("sds", "dds", "lods", "lods-lora")
UPSCALE_TO = 128  # pictures of the 32² prior are drawn at least this big (nearest neighbour)


@dataclass
class Image2DConfig:
    """One 2D run. Defaults: the ``default`` preset for generation on the shapes prior."""

    method: str = "lods-embedding"  # generate: sds | lods-embedding | lods-lora; edit: sds | dds | lods | lods-lora
    particles: int = 4  # images optimized together (edit: copies of the source)
    batch: int = 4  # particles per step, drawn without replacement
    steps: int = 200
    lr: float = 3e-2  # Adam on the pixel logits / the latent (the official playgrounds' image lr)
    guidance_scale: float = 100.0  # ω
    embedding_lr: float = 1e-2  # α's Adam lr
    lora_lr: float = 1e-5  # ψ's Adam lr
    negative_prompt: str = ""  # the unconditional text; LODS editing: "" starts α at the null text
    alpha_from_source: bool = True  # LODS editing: α starts at the source caption's embedding
    t_min: float = 0.02
    t_max: float = 0.98  # at step 0; falls linearly to t_max_end at the last step
    t_max_end: float = 0.2
    seed: int = 0
    log_every: int = 10
    snapshots: int = 8  # columns of the progress strip


# the paper's 2D settings (the official 2dplayground_embedding.py / 2dplayground_lora.py) and ours
PRESETS: dict[str, dict] = {
    "default": {},
    # the shapes prior's own CFG (its DDIM samples' and the 3D profile's), image lr 0.3, t_max 0.98 -> 0.5.
    # Probed on 4 captions (seed 0; docs/2d.md): nearest-view MSE vs DDIM 6.0x at lr 3e-2 with t_max -> 0.2, 3.3x
    # at lr 0.1, 0.92x at lr 0.3 with t_max held at 0.98. Over the 30 single objects, t_max held at 0.98 gives
    # 0.95x but 6 captions with a particle of purity < 0.5 (two colours); t_max -> 0.7 1.45x (4); -> 0.5 1.69x
    # and none (every particle one colour, purity 0.97), so it falls to 0.5.
    "shapes": {"guidance_scale": 3.0, "lr": 0.3, "t_max_end": 0.5},
    "sds-7.5": {"method": "sds", "guidance_scale": 7.5},
    "sds-100": {"method": "sds", "guidance_scale": 100.0},
    "paper-embedding": {"method": "lods-embedding", "guidance_scale": 100.0, "embedding_lr": 1e-4},
    "paper-lora": {"method": "lods-lora", "guidance_scale": 1e6, "lora_lr": 1e-5},
    # LODS editing at the prior's own CFG with t in [0.05, 0.5]: a colour edit keeps the layout, high t only
    # redraws it. Probed on colour edits (seed 0; docs/2d.md): on red sphere, green cube, blue cone PSNR 25.4 dB vs
    # 23.1 for omega 7.5 with t up to 0.95 (omega 100: 20.2; alpha lr 1e-3: 18.0); 27.8 dB on those plus yellow
    # cylinder and purple torus.
    "edit": {"method": "lods", "guidance_scale": 3.0, "t_min": 0.05, "t_max": 0.5, "t_max_end": 0.5,
             "particles": 1, "batch": 1, "steps": 200},
}


def make_config(preset: str = "default", sets: list[str] | None = None, **options) -> Image2DConfig:
    """A preset, then ``key=value`` overrides, then explicit options (None ones skipped), checked."""
    if preset not in PRESETS:
        raise LodsgsError(f"unknown 2D preset {preset!r}; valid: {', '.join(PRESETS)}")
    cfg = dataclasses.replace(Image2DConfig(), **PRESETS[preset])
    fields = {f.name: f for f in dataclasses.fields(Image2DConfig)}
    for item in sets or []:
        key, sep, value = item.partition("=")
        if not sep or key not in fields:
            raise LodsgsError(f"--set expects KEY=VALUE with KEY among {', '.join(fields)}, got {item!r}")
        options.setdefault(key, _parse(value, type(getattr(cfg, key)), key))
    cfg = dataclasses.replace(cfg, **{k: v for k, v in options.items() if v is not None})
    cfg.batch = min(cfg.batch, cfg.particles)  # fewer particles than the preset's batch: all of them each step
    if cfg.particles < 1 or cfg.batch < 1:
        raise LodsgsError(f"need particles >= 1 and 1 <= batch <= particles, got {cfg.particles} / {cfg.batch}")
    if cfg.steps < 1:
        raise LodsgsError(f"steps must be >= 1, got {cfg.steps}")
    return cfg


def _parse(value: str, kind: type, key: str):
    """A ``--set`` value as the field's type."""
    try:
        return value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    except ValueError:
        raise LodsgsError(f"--set {key}= expects a {kind.__name__}, got {value!r}") from None


def guidance_config(cfg: Image2DConfig, steps: int):
    """GuidanceConfig for a 2D run: no view suffix, t_max linear from t_max to t_max_end over the run."""
    from lodsgs.prior.guidance import GuidanceConfig

    method = {"dds": "sds", "lods": "lods-embedding"}.get(cfg.method, cfg.method)
    return GuidanceConfig(method=method, guidance_scale=cfg.guidance_scale, negative_prompt=cfg.negative_prompt,
                          view_dependent=False, min_step_percent=cfg.t_min, max_step_percent=cfg.t_max,
                          anneal="linear", anneal_after_step=steps, max_step_percent_after=cfg.t_max_end,
                          embedding_lr=cfg.embedding_lr, lora_lr=cfg.lora_lr)


# --- particles: the parameters, their x0 and their pictures ---------------------------------------------

def initial_particles(prior, n: int, generator: torch.Generator) -> Tensor:
    """Random start: pixel logits ~ N(0, 1) (a grey-ish noise image), or latents ~ U[-1, 1] (the playgrounds')."""
    c, s = prior.unet.config.in_channels, prior.unet.config.sample_size
    if prior.vae is None:
        return torch.randn(n, c, s, s, generator=generator)
    return torch.rand(n, c, s, s, generator=generator) * 2 - 1


def particles_from_image(prior, image: Tensor, n: int) -> Tensor:
    """Parameters that reproduce ``image`` [H,W,3] in [0,1]: logits of its pixels, or its VAE latent (mean)."""
    with torch.no_grad():
        x0 = prior.encode_images(image[None].to(prior.device)).float()
    if prior.vae is None:
        p = ((x0 + 1) / 2).clamp(1e-3, 1 - 1e-3)
        x0 = torch.log(p / (1 - p))
    return x0.repeat(n, 1, 1, 1).cpu()


def to_x0(prior, params: Tensor) -> Tensor:
    """The diffusion model's x0 of the particles: sigmoid pixels mapped to [-1, 1], or the latent itself."""
    return torch.sigmoid(params) * 2 - 1 if prior.vae is None else params


@torch.no_grad()
def to_images(prior, params: Tensor) -> Tensor:
    """Pictures [N,H,W,3] in [0,1]: the pixels, or the VAE-decoded latents."""
    if prior.vae is None:
        return torch.sigmoid(params).permute(0, 2, 3, 1).float().cpu()
    x = prior.vae.decode((params / prior.vae.config.scaling_factor).to(prior.dtype)).sample.float()
    return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu()


# --- the loop -------------------------------------------------------------------------------------------

@dataclass
class Run2D:
    images: Tensor  # [N,H,W,3] final pictures
    strip: list[Tensor]  # snapshots [N,H,W,3] along the run
    logs: list[dict]  # every logged record
    seconds: float
    steps: int


def optimize(prior, prompt: str, cfg: Image2DConfig, params: Tensor, source: tuple[str, Tensor] | None = None,
             log_file: Path | None = None) -> Run2D:
    """Optimize ``params`` toward ``prompt`` with cfg.method; ``source`` = (caption, x0) for editing
    (DDS's reference branch; LODS's α start)."""
    from lodsgs.prior.guidance import Guidance
    from lodsgs.runlog import GUIDANCE_KEYS

    gcfg = guidance_config(cfg, cfg.steps)
    if cfg.method in ("lods", "lods-lora") and source is not None and cfg.alpha_from_source:
        gcfg.negative_prompt = source[0]  # the learned branch starts at the source caption
    guidance = Guidance(prior, gcfg, prompt, seed=cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    params = torch.nn.Parameter(params.to(prior.device).float().clone())
    opt = torch.optim.Adam([{"params": [params], "lr": cfg.lr, "betas": (0.9, 0.99), "eps": 1e-15},
                            *guidance.param_groups()])
    dds = None
    if cfg.method == "dds":
        if source is None:
            raise LodsgsError("dds needs a source image and caption: use `lodsgs edit`")
        dds = (source[1].to(prior.device).float(), prior.encode_text(source[0]))
    marks = {round(i * (cfg.steps - 1) / max(cfg.snapshots - 1, 1)) for i in range(cfg.snapshots)}
    strip, logs, start = [], [], time.perf_counter()
    out = open(log_file, "w", encoding="utf-8") if log_file else None
    try:
        for step in range(cfg.steps):
            if step in marks:
                strip.append(to_images(prior, params.detach()))
            idx = torch.randperm(cfg.particles, generator=gen)[:cfg.batch].to(prior.device)
            x0 = to_x0(prior, params[idx])
            src = None if dds is None else (dds[0].expand(len(idx), -1, -1, -1), dds[1].expand(len(idx), -1, -1))
            res = guidance.distill(x0, ["front"] * len(idx), step, source=src)
            opt.zero_grad(set_to_none=True)
            (res.loss + res.prior_loss).backward()
            opt.step()
            if step % cfg.log_every == 0 or step == cfg.steps - 1:
                rec = {"step": step, **{k: res.logs[k] for k in GUIDANCE_KEYS if k in res.logs},
                       "seconds": round(time.perf_counter() - start, 4)}
                logs.append(rec)
                if out:
                    out.write(json.dumps(rec) + "\n")
                    out.flush()
    finally:
        if out:
            out.close()
    images = to_images(prior, params.detach())
    strip.append(images)
    return Run2D(images, strip, logs, time.perf_counter() - start, cfg.steps)


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
    return np.concatenate([side_by_side(torch.stack([s[i] for s in strip])) for i in range(len(strip[0]))], 0)


def save_png(path: Path, array: np.ndarray) -> None:
    import imageio.v2 as imageio

    from lodsgs.files import atomic_path
    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, array)


def load_image(path: Path) -> Tensor:
    """An RGB image [H,W,3] in [0,1] (alpha composited on white), or one LodsgsError line."""
    import imageio.v2 as imageio
    path = Path(path)
    if not path.is_file():
        raise LodsgsError(f"image {str(path)!r} does not exist; give a PNG or JPEG file")
    try:
        arr = np.asarray(imageio.imread(path)).astype(np.float32)
    except Exception as e:  # not an image, truncated, unknown format
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LodsgsError(f"cannot read image {str(path)!r} ({first}); give a PNG or JPEG file") from None
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, -1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise LodsgsError(f"image {str(path)!r} has shape {arr.shape}; expected H×W×3 (RGB) or H×W×4 (RGBA)")
    arr = arr / (65535.0 if arr.max() > 255 else 255.0)
    if arr.shape[-1] == 4:
        arr = arr[..., :3] * arr[..., 3:] + (1 - arr[..., 3:])
    return torch.from_numpy(np.ascontiguousarray(arr))


def write_metrics(run_dir: Path, prompt: str, cfg: Image2DConfig, run: Run2D, **extra) -> dict:
    from lodsgs.files import write_text
    last = run.logs[-1] if run.logs else {}
    metrics = {"prompt": prompt, **extra, "config": asdict(cfg), "steps": run.steps,
               "seconds": round(run.seconds, 2), "steps_per_second": round(run.steps / max(run.seconds, 1e-9), 2),
               "threads": torch.get_num_threads(),
               **{k: last[k] for k in ("alpha_shift", "alpha_cos", "lora_b_norm", "eps_gap") if k in last}}
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def check_text(prior_path: str, name: str, *texts: str) -> None:
    """Every caption known to a closed-vocabulary prior (one line otherwise)."""
    from lodsgs.generate import check_prompt
    for text in texts:
        check_prompt(text, prior_path, name)


def generate_image(prompt: str, cfg: Image2DConfig, out: Path, prior_name: str = "sd21", prior=None,
                   device: str = "cpu") -> Path:
    """``lodsgs image``: particles from noise toward ``prompt``; writes image.png, progress.png, log.jsonl,
    metrics.json into ``out``."""
    from lodsgs.prior.diffusion import DiffusionPrior, resolve_model
    if cfg.method not in GENERATE_METHODS:
        raise LodsgsError(f"unknown method {cfg.method!r} for `lodsgs image`; valid: {', '.join(GENERATE_METHODS)}")
    path = resolve_model(prior_name)
    check_text(path, prior_name, prompt)
    prior = prior or DiffusionPrior.from_pretrained(path, device=device)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = initial_particles(prior, cfg.particles, gen)
    out.mkdir(parents=True, exist_ok=True)
    run = optimize(prior, prompt, cfg, params, log_file=out / "log.jsonl")
    save_png(out / "image.png", side_by_side(run.images))
    save_png(out / "progress.png", progress_strip(run.strip))
    write_metrics(out, prompt, cfg, run, prior=prior_name)
    return out


def edit_image(image_path: Path, source: str, target: str, cfg: Image2DConfig, out: Path,
               prior_name: str = "sd21", prior=None, device: str = "cpu") -> Path:
    """``lodsgs edit``: move the image from ``source`` to ``target``; writes edited.png, before_after.png,
    progress.png, log.jsonl, metrics.json."""
    from lodsgs.prior.diffusion import DiffusionPrior, resolve_model
    if cfg.method not in EDIT_METHODS:
        raise LodsgsError(f"unknown method {cfg.method!r} for `lodsgs edit`; valid: {', '.join(EDIT_METHODS)}")
    if source.strip() == target.strip():
        raise LodsgsError(f"--source and --target are the same ({source!r}); the target caption must describe the "
                          "edit, e.g. --source 'a red cube' --target 'a blue cube'")
    image = load_image(image_path)
    path = resolve_model(prior_name)
    check_text(path, prior_name, source, target)
    prior = prior or DiffusionPrior.from_pretrained(path, device=device)
    out.mkdir(parents=True, exist_ok=True)
    run = edit(prior, image, source, target, cfg, log_file=out / "log.jsonl")
    before = to_images(prior, particles_from_image(prior, image, 1).to(prior.device))
    save_png(out / "edited.png", as_uint8(run.images[:1])[0])
    save_png(out / "before_after.png", side_by_side(torch.cat([before, run.images[:1]])))
    save_png(out / "progress.png", progress_strip(run.strip))
    write_metrics(out, target, cfg, run, source=source, image=str(image_path), prior=prior_name)
    return out


def edit(prior, image: Tensor, source: str, target: str, cfg: Image2DConfig, log_file: Path | None = None) -> Run2D:
    """One edit run from ``image`` [H,W,3] in [0,1] (no files unless ``log_file``)."""
    params = particles_from_image(prior, image, cfg.particles)
    with torch.no_grad():
        x0_src = to_x0(prior, params[:1].to(prior.device))
    return optimize(prior, target, cfg, params, source=(source, x0_src), log_file=log_file)


def slug(text: str) -> str:
    """A filesystem-safe short name of a caption."""
    import re
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "prompt"
