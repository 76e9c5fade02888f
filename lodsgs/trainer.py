"""The generation loop in memory: cameras -> render -> guidance -> one joint step -> densify, until run.steps.
Nothing here touches a run folder: persistence (checkpoint files, outputs, resume) is lodsgs/rundir.py, given to
the loop as an ``on_step`` callback."""

from __future__ import annotations

import math
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from lodsgs.cameras import Cameras, sample_cameras, view_labels
from lodsgs.config import CameraConfig, Config, to_dict
from lodsgs.errors import Interrupted
from lodsgs.guards import guarded_step
from lodsgs.prior.diffusion import DiffusionPrior, load_prior, resolve_device  # noqa: F401  (re-exported)
from lodsgs.prior.guidance import Guidance
from lodsgs.reference import Reference, append_camera, load_reference, reference_camera, reference_loss
from lodsgs.runlog import make_record
from lodsgs.splats.densify import Densifier
from lodsgs.splats.model import Splats, make_optimizers
from lodsgs.splats.render import render
from lodsgs.starts import init_splats


@dataclass
class State:
    """Everything a step changes; what a checkpoint holds."""

    splats: Splats
    optimizers: dict[str, torch.optim.Optimizer]
    densifier: Densifier
    guidance: Guidance
    prior_optimizer: torch.optim.Optimizer | None
    camera_rng: torch.Generator
    step: int = 0
    seconds: float = 0.0
    reference: Reference | None = None  # image-to-3D: the processed reference, fitted at reference_camera(cfg)
    reference_camera: Cameras | None = None  # that camera, on the run's device (built once, not every step)
    logs: dict[str, float] = field(default_factory=dict)  # the last step's numbers (loss, t, grown, ...)


def build_state(cfg: Config, prompt: str, prior: DiffusionPrior, device: torch.device,
                start: Splats | None = None) -> State:
    """A fresh run's state; ``start`` replaces init_splats (a resume passes its checkpoint's splats, so a
    start drawn from the prior's samples is not drawn again)."""
    torch.manual_seed(cfg.run.seed)
    prior.use_bf16(cfg.prior.bf16)  # per run: a prior shared by a batch follows each run's settings
    reference = load_reference(cfg.image, cfg.camera.width, cfg.render.background) if cfg.image.path else None
    splats = (start if start is not None else init_splats(cfg, prompt, prior)).to(device)
    optimizers = make_optimizers(splats, lrs(cfg, 0))
    densifier = Densifier(cfg.densify, cfg.run.steps)
    guidance = Guidance(prior, cfg.guidance, prompt, seed=cfg.run.seed, steps=cfg.run.steps)
    groups = guidance.param_groups()
    prior_optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15) if groups else None
    camera_rng = torch.Generator().manual_seed(cfg.run.seed)
    return State(splats, optimizers, densifier, guidance, prior_optimizer, camera_rng,
                 reference=reference.to(device) if reference is not None else None,
                 reference_camera=reference_camera(cfg).to(device) if reference is not None else None)


def lrs(cfg: Config, step: int) -> dict[str, float]:
    o = cfg.optim
    frac = min(step / max(cfg.run.steps, 1), 1.0)
    means = math.exp((1 - frac) * math.log(o.means) + frac * math.log(o.means_final))
    f = o.others_final ** frac
    return {"means": means, "scales": o.scales * f, "quats": o.quats * f, "opacities": o.opacities * f,
            "sh0": o.sh0 * f, "shN": o.shN * f}


def opaque_loss(alpha: torch.Tensor) -> torch.Tensor:
    """Binary entropy of the rendered alpha, summed per image (like the guidance loss): pushes every pixel to
    fully covered or empty, so silhouettes end crisp instead of a half-transparent halo (threestudio's
    DreamFusion ``lambda_opaque``)."""
    a = alpha.clamp(1e-4, 1 - 1e-4)
    return -(a * a.log() + (1 - a) * (1 - a).log()).sum() / alpha.shape[0]


def set_lrs(cfg: Config, s: State) -> None:
    """Put this step's scheduled learning rates into the splats' optimizers."""
    scheduled = lrs(cfg, s.step)
    for name, opt in s.optimizers.items():
        for group in opt.param_groups:
            group["lr"] = scheduled[name]


def opaque_term(cfg: Config, alpha: torch.Tensor) -> torch.Tensor | float:
    """The weighted opaque loss (0.0 when off: nothing added to the graph)."""
    return cfg.optim.opaque * opaque_loss(alpha) if cfg.optim.opaque > 0 else 0.0


def train_step(cfg: Config, s: State, device: torch.device) -> dict[str, float]:
    """One joint step of splats and the prior's learnable parameters, then densify/prune."""
    cams = sample_cameras(cfg.camera, cfg.run.batch, s.camera_rng).to(device)
    background = torch.tensor(cfg.render.background, dtype=torch.float32)
    if cfg.render.random_background > 0 and torch.rand(1, generator=s.camera_rng).item() < cfg.render.random_background:
        background = torch.rand(3, generator=s.camera_rng)
    set_lrs(cfg, s)
    B, labels, ref_term, ref_logs = len(cams), view_labels(cams, cfg.camera), 0.0, {}
    if s.reference is not None:  # the reference view rendered with the random ones, on the fixed background
        cams = append_camera(cams, s.reference_camera)
        background = torch.cat([background.expand(B, 3), torch.tensor([cfg.render.background])])
    out = render(s.splats, cams, background=background.to(device))
    s.densifier.step_pre_backward(s.splats, s.optimizers, out.meta, s.step)
    if s.reference is not None:
        ref_term, ref_logs = reference_loss(cfg.image, out.rgb[B], out.alpha[B, ..., 0], s.reference, s.step,
                                           cfg.run.steps)
    prior_weight = cfg.image.prior_weight if s.reference is not None else 1.0
    # image.prior_weight 0: the reference alone, and no UNet call for a loss that would be dropped
    g = s.guidance(out.rgb[:B], labels, s.step) if prior_weight > 0 else None
    for opt in _all_optimizers(s):
        opt.zero_grad(set_to_none=True)
    loss = ref_term + opaque_term(cfg, out.alpha)
    if g is not None:
        loss = loss + prior_weight * g.loss + g.prior_loss
    loss.backward()
    for opt in _all_optimizers(s):
        opt.step()
    s.densifier.cap_scales(s.splats)
    s.densifier.step_post_backward(s.splats, s.optimizers, out.meta, s.step)
    s.step += 1
    # the guidance already read its losses in the step's one device sync: no second .item() per loss here
    guided = {"loss": g.logs["sds"], **g.logs} if g is not None else {"loss": ref_term.item()}
    return {**guided, **{k: v.item() for k, v in ref_logs.items()},
            **{k: s.densifier.state[k] for k in ("grown", "pruned", "refines")}}


def _all_optimizers(s: State) -> list[torch.optim.Optimizer]:
    return list(s.optimizers.values()) + ([s.prior_optimizer] if s.prior_optimizer else [])


def lrs_used(cfg: Config, s: State) -> dict[str, float]:
    """The learning rates the step just taken used: the splats' schedule, plus the prior's when it learns."""
    used = lrs(cfg, s.step - 1)
    if s.prior_optimizer:
        used["prior"] = s.prior_optimizer.param_groups[0]["lr"]
    return used


# --- checkpoints (as data; the files are rundir.py's) ------------------------------------------------

def checkpoint_payload(s: State, cfg: Config) -> dict:
    """Everything needed to continue exactly where this step left off (what a checkpoint file holds)."""
    return {
        "step": s.step,
        "seconds": s.seconds,
        "sh_degree": s.splats.sh_degree,
        "splats": s.splats.detached(),
        "optimizers": {k: o.state_dict() for k, o in s.optimizers.items()},
        "densifier": s.densifier.state_dict(),
        "guidance": s.guidance.state_dict(),
        "prior_optimizer": s.prior_optimizer.state_dict() if s.prior_optimizer else None,
        "camera_rng": s.camera_rng.get_state(),
        "torch_rng": torch.get_rng_state(),
        # gsplat's split draws from the CUDA generator: without its state a CUDA resume is not exact
        "cuda_rng": torch.cuda.get_rng_state(s.splats.device) if s.splats.device.type == "cuda" else None,
        "config": to_dict(cfg),
    }


def load_checkpoint(s: State, ck: dict, cfg: Config, device: torch.device) -> None:
    """Restore a read_checkpoint() payload into ``s``: tensors to ``device``, RNG states from the CPU copies."""
    s.splats = Splats(ck["splats"], sh_degree=ck["sh_degree"]).to(device)
    s.optimizers = make_optimizers(s.splats, lrs(cfg, ck["step"]))
    for k, o in s.optimizers.items():
        o.load_state_dict(ck["optimizers"][k])  # Adam moves its state to its parameters' device
    s.densifier.load_state_dict({k: v.to(device) if isinstance(v, torch.Tensor) else v
                                 for k, v in ck["densifier"].items()})
    s.guidance.load_state_dict(ck["guidance"])
    if s.prior_optimizer and ck["prior_optimizer"]:
        s.prior_optimizer.load_state_dict(ck["prior_optimizer"])
    s.camera_rng.set_state(ck["camera_rng"])
    torch.set_rng_state(ck["torch_rng"])
    if ck.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(ck["cuda_rng"], device)
    s.step, s.seconds = ck["step"], ck["seconds"]


# --- the loop -------------------------------------------------------------------------------------

@dataclass
class StepReport:
    """What an ``on_step`` callback gets after each step, and once more (``done``) at the end."""

    prompt: str
    step: int
    steps: int  # the run's total, run.steps
    splats: Splats
    logs: dict[str, float]  # train_step's numbers (loss, t, grad_norm, ...); the last step's when done
    camera: CameraConfig
    done: bool = False
    record: dict | None = None  # the log record of this step when run.log_every says it gets one
    state: State | None = field(default=None, repr=False)  # the whole state (the run folder checkpoints it)


def log_due(cfg: Config, step: int) -> bool:
    """Whether ``step`` gets a log record: every run.log_every steps (0 = never) and the last step."""
    every = cfg.run.log_every
    return every > 0 and (step % every == 0 or step == cfg.run.steps)


def train(cfg: Config, s: State, device: torch.device, prompt: str = "", quiet: bool = False,
          on_step: Callable[[StepReport], None] | None = None,
          should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Step ``s`` until run.steps; returns the log records (every run.log_every steps and the last). After each
    step ``on_step`` gets a StepReport; Ctrl-C, SIGTERM or ``should_stop()`` end the run after the step under way
    with Interrupted (the state stays whole, so the caller can checkpoint it). Non-finite numbers end it with
    Diverged, a step out of memory with OutOfMemory (lodsgs/guards.py)."""
    from lodsgs.progress import StepProgress

    records: list[dict] = []
    start = time.perf_counter() - s.seconds
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with caught_signals() as caught, StepProgress(cfg.run.steps, start=s.step, quiet=quiet, label=prompt) as bar:
        first = s.step + 1
        while s.step < cfg.run.steps:
            logs = s.logs = guarded_step(train_step, cfg, s, device)  # Diverged / OutOfMemory in one line
            seconds, s.seconds = s.seconds, time.perf_counter() - start
            if s.step == first:  # once, from this machine's first measured step
                cpu_time_note(s.guidance.prior, device, s.seconds - seconds, cfg.run.steps - s.step)
            bar.update(s.step, loss=logs["loss"], gaussians=s.splats.num)
            record = make_record(s.step, logs, s.splats.num, lrs_used(cfg, s), s.seconds) \
                if log_due(cfg, s.step) else None
            if record is not None:
                records.append(record)
            if on_step is not None:
                on_step(StepReport(prompt, s.step, cfg.run.steps, s.splats, logs, cfg.camera, record=record, state=s))
            if caught or (should_stop is not None and should_stop()):
                raise Interrupted(f"interrupted at step {s.step}")
    return records


def cpu_time_note(prior: DiffusionPrior, device: torch.device, step_seconds: float, remaining: int) -> None:
    """On a CPU with a latent (Stable Diffusion) prior, print the rest of the run's expected time, measured on
    its first step, and how to shorten it; nothing when that is under a minute."""
    if device.type != "cpu" or prior.vae is None or step_seconds * remaining < 60:
        return
    total = step_seconds * remaining
    when = f"{total / 3600:.1f} h" if total >= 3600 else f"{total / 60:.0f} min"
    print(f"lodsgs: note: this CPU took {step_seconds:.1f} s for the first step: the other {remaining} steps take "
          f"about {when}; shorten with --steps N or a smaller run.batch, or run on a GPU with --device cuda",
          file=sys.stderr)


@contextmanager
def caught_signals() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM append to the yielded list instead of raising, so the loop stops between steps (signal
    handlers can only be set from the main thread; elsewhere, such as a Ray actor, nothing is caught)."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    handlers = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
