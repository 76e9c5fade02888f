"""The library's front door: ``lodsgs.generate`` / ``lodsgs.image`` / ``lodsgs.edit`` return results in memory
(like a diffusers pipeline's output); ``out=`` opts into a run folder (checkpoints, outputs, resume). ``run`` and
``run_or_resume`` are what the CLI, batch, Ray and eval call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lodsgs.clock import Laps
from lodsgs.config import Config, load_config, settings_overrides
from lodsgs.errors import Diverged, OutOfMemory
from lodsgs.preflight import LAST_CHECKPOINT, check_generate, run_name
from lodsgs.prior.diffusion import DiffusionPrior
from lodsgs.rundir import RunFolder, finished, open_run_dir, read_checkpoint, resumable, write_outputs
from lodsgs.splats.model import Splats
from lodsgs.trainer import (
    Interrupted,
    State,
    StepReport,
    build_state,
    load_checkpoint,
    load_prior,
    peak_memory_mb,
    resolve_device,
    train,
)


@dataclass
class GenerateOutput:
    """A finished generation: the splats, the log records (as log.jsonl holds them: every run.log_every steps
    and the last), its metrics, the settings it ran with, and its run folder (None when nothing was written)."""

    splats: Splats
    log: list[dict]
    metrics: dict
    config: Config
    run_dir: Path | None = None


def generate(prompt: str, prior: str | None = None, steps: int | None = None, seed: int | None = None,
             image: str | Path | None = None, out: str | Path | None = None, config: str | None = None,
             device: str | None = None, quiet: bool = True, **sections: dict[str, Any]) -> GenerateOutput:
    """Generate splats for ``prompt`` and return them. ``prior``: ``shapes`` (offline), ``sd21`` (the default),
    a hub id or a folder; ``config``: a preset name or YAML file; ``sections``: settings by section, e.g.
    ``guidance={"guidance_scale": 500}``. With ``out`` (a parent folder) the run is written as ``lodsgs generate
    --out`` writes it; without, nothing is written anywhere."""
    cfg = load_config(config, settings_overrides(prior, steps, seed, device, image, **sections))
    return run(prompt, cfg, Path(out) if out is not None else None, quiet=quiet)


def image(prompt: str, prior: str | None = None, steps: int | None = None, seed: int | None = None,
          particles: int | None = None, method: str | None = None, out: str | Path | None = None,
          config: str | None = None, device: str | None = None, quiet: bool = True, **sections: dict[str, Any]):
    """2D generation (``lodsgs image``): ``canvas.particles`` images toward ``prompt``, returned as a Result2D
    (``images`` [N,H,W,3] in [0, 1], ``strip``, ``log``, ``run_dir``); with ``out`` (a parent folder) also
    written as the command writes them."""
    from lodsgs.image2d import generate_image, load_2d_config, shortcut_overrides
    items = shortcut_overrides(particles, method, seed, steps, device) + settings_overrides(**sections)
    cfg = load_2d_config("image", config, items, prior)
    return generate_image(prompt, cfg, Path(out) if out is not None else None, prior=None, quiet=quiet)


def edit(picture: str | Path, source: str, target: str, prior: str | None = None, steps: int | None = None,
         seed: int | None = None, method: str | None = None, out: str | Path | None = None, config: str | None = None,
         device: str | None = None, quiet: bool = True, **sections: dict[str, Any]):
    """2D editing (``lodsgs edit``): ``picture`` moved from the ``source`` caption to ``target``, returned as a
    Result2D (``images[0]`` is the edit); with ``out`` also written as the command writes it."""
    from lodsgs.image2d import edit_image, load_2d_config, shortcut_overrides
    items = shortcut_overrides(None, method, seed, steps, device) + settings_overrides(**sections)
    cfg = load_2d_config("edit", config, items, prior)
    return edit_image(Path(picture), source, target, cfg, Path(out) if out is not None else None, quiet=quiet)


def run(prompt: str, cfg: Config, out: Path | None = None, resume: bool = False, overwrite: bool = False,
        quiet: bool = False, prior: DiffusionPrior | None = None, on_step: Callable[[StepReport], None] | None = None,
        should_stop: Callable[[], bool] | None = None) -> GenerateOutput:
    """Run one prompt to completion (or to an interrupt). ``out`` None: in memory only. Else ``out/<run name>``
    gets checkpoints on schedule (Interrupted saves one first), then the outputs; everything that can refuse the
    inputs (prompt, prior, init file, checkpoint) runs before the folder is touched. ``on_step`` (the CLI's live
    view) gets a StepReport after every step and once more when done; ``should_stop`` (a Ray batch's
    cancellation flag) stops the run like Ctrl-C."""
    laps = Laps(since_start=prior is None)  # a prior loaded here: the imports before count with its load
    run_dir = check_generate(prompt, cfg, out, resume, overwrite)  # what the CLI checked before importing torch
    device = resolve_device(cfg.run.device)
    saved = read_checkpoint(run_dir / LAST_CHECKPOINT, cfg) if run_dir is not None and resume else None
    prior = prior or load_prior(cfg, device)
    laps.lap("imports_and_prior")
    s = start_state(cfg, prompt, prior, device, saved)
    laps.lap("start")
    if run_dir is None:
        log = train(cfg, s, device, prompt, quiet, on_step, should_stop)
        laps.lap("loop")
        metrics = {"prompt": prompt, "steps": s.step, "seconds": round(s.seconds, 3), "gaussians": s.splats.num,
                   "peak_memory_mb": peak_memory_mb(device), "wall_seconds": laps.seconds}
    else:
        log, metrics = run_in_folder(cfg, s, run_dir, prompt, device, resume, quiet, on_step, should_stop, laps)
    if on_step is not None:
        on_step(StepReport(prompt, s.step, cfg.run.steps, s.splats, s.logs, cfg.camera, done=True, state=s))
    return GenerateOutput(s.splats, log, metrics, cfg, run_dir)


def run_in_folder(cfg: Config, s: State, run_dir: Path, prompt: str, device: torch.device, resume: bool,
                  quiet: bool, on_step: Callable[[StepReport], None] | None,
                  should_stop: Callable[[], bool] | None, laps: Laps) -> tuple[list[dict], dict]:
    """The trainer with the run folder's persistence; the outputs once it finishes. Returns (log, metrics)."""
    open_run_dir(run_dir, cfg, prompt, fresh=not resume)
    if s.reference is not None:
        from lodsgs.media import save_png, to_uint8
        save_png(to_uint8(s.reference.rgb), run_dir / "reference.png")
    with RunFolder(run_dir, cfg, resume_step=s.step if resume else None) as folder:
        def persist_then(report: StepReport) -> None:
            folder(report)
            if on_step is not None:
                on_step(report)
        try:
            log = train(cfg, s, device, prompt, quiet, persist_then, should_stop)
        except Interrupted:
            raise Interrupted(folder.interrupted(s)) from None
        except Diverged as e:  # no outputs from a non-finite state; the last finite checkpoint stays
            raise Diverged(e.step, e.what, folder.last_good(), e.hint) from None
        except OutOfMemory as e:  # a whole state (the last finished step's) is saved first (Diverged if not finite)
            saved = str(folder.save(s)) if e.whole else folder.last_good()
            raise OutOfMemory(e.step, e.detail, e.shrink, e.whole, saved, in_folder=True) from None
    laps.lap("loop")
    return log, write_outputs(s, cfg, run_dir, prompt, device, s.logs, laps)


def start_state(cfg: Config, prompt: str, prior: DiffusionPrior, device: torch.device,
                saved: dict | None) -> State:
    """A fresh run's state, or with ``saved`` (a read_checkpoint() payload) the state it was saved in."""
    start = Splats(saved["splats"], sh_degree=saved["sh_degree"]) if saved is not None else None
    s = build_state(cfg, prompt, prior, device, start)
    if saved is not None:
        load_checkpoint(s, saved, cfg, device)
    return s


def run_or_resume(prompt: str, cfg: Config, out: Path, **kwargs: Any) -> tuple[Path, str]:
    """The one "skip, resume or start" of batch, Ray and eval: a folder holding a finished run of these settings
    (config hash) is kept; an interrupted one is resumed; else the run starts again. Returns the run folder and
    "finished", "resumed" or "started"."""
    run_dir = out / run_name(prompt, cfg.run.seed, cfg.image.path)
    if finished(run_dir, cfg):
        return run_dir, "finished"
    resume = resumable(run_dir, cfg)
    run(prompt, cfg, out, resume=resume, overwrite=True, **kwargs)
    return run_dir, "resumed" if resume else "started"
