"""The generation loop: cameras -> render -> guidance -> one joint step -> densify; checkpoints, outputs."""

from __future__ import annotations

import hashlib
import json
import math
import re
import resource
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from lodsgs.cameras import Cameras, eval_cameras, sample_cameras, view_labels
from lodsgs.config import CameraConfig, Config, config_diff, config_hash, image_digest, save_config, to_dict
from lodsgs.errors import LodsgsError
from lodsgs.files import atomic_path, safe_load, write_text
from lodsgs.lift import layout, lift
from lodsgs.prior.diffusion import DiffusionPrior, resolve_model
from lodsgs.prior.guidance import Guidance
from lodsgs.reference import Reference, append_camera, load_reference, reference_camera, reference_loss
from lodsgs.runlog import RunLog, make_record
from lodsgs.splats.densify import Densifier
from lodsgs.splats.io import read_ply, write_ply, write_splat
from lodsgs.splats.mesh import splats_to_mesh, write_mesh
from lodsgs.splats.model import Splats, make_optimizers, rgb_to_sh0
from lodsgs.splats.render import render
from lodsgs.splats.spz import write_spz


class Interrupted(LodsgsError):
    """Raised after Ctrl-C/SIGTERM once the checkpoint is safely written."""


def run_name(prompt: str, seed: int, image: str = "") -> str:
    """A filesystem-safe folder name: a short slug of the prompt plus a hash of prompt, seed (and the reference
    image's content, so the same picture under another path names the same run)."""
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:40].strip("-") or "prompt"
    digest = hashlib.sha1(f"{prompt}\0{seed}{chr(0) + image_digest(image) if image else ''}".encode()).hexdigest()[:8]
    return f"{slug}-{digest}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise LodsgsError("--device cuda was requested but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt, lower-cased and whole (accented letters included; digits and punctuation not)."""
    return re.findall(r"[^\W\d_]+", prompt.lower())


def unknown_words(prompt: str, vocabulary: set[str] | list[str]) -> list[str]:
    """The prompt's words a closed vocabulary lacks, in order."""
    known = set(vocabulary)
    return [w for w in prompt_words(prompt) if w not in known]


def check_prompt(prompt: str, model_path: str, name: str = "") -> None:
    """Reject empty prompts, and words a closed-vocabulary prior (one with vocabulary.json) never saw."""
    if not prompt or not prompt.strip():
        raise LodsgsError("the prompt is empty; give a text such as \"a red cube\"")
    vocab_file = Path(model_path) / "vocabulary.json"
    if vocab_file.is_file():
        known = json.loads(vocab_file.read_text())
        words = set(known["words"])
        examples = "; ".join(known.get("captions", [])[:6])
        found, unknown = prompt_words(prompt), unknown_words(prompt, words)
        if unknown or not found:
            what = f"the word(s) {', '.join(unknown)}" if unknown else f"the prompt {prompt!r} (it has no words)"
            raise LodsgsError(f"the {name or Path(model_path).name!r} prior does not know {what}; "
                              f"it knows: {', '.join(sorted(words))} (e.g. {examples})")


def resumable(run_dir: Path, cfg: Config) -> bool:
    """Whether ``run_dir`` holds a checkpoint that ``--resume`` with ``cfg`` would continue (same settings)."""
    ckpt = run_dir / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        return False
    try:
        read_checkpoint(ckpt, cfg)
    except LodsgsError:
        return False
    return True


def finished(run_dir: Path, cfg: Config) -> bool:
    """Whether ``run_dir`` holds a finished run made with ``cfg``'s result-deciding settings (its hash)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    return metrics.get("config_hash") == config_hash(cfg) and (run_dir / "splats.ply").is_file()


def init_splats(cfg: Config, prompt: str = "", prior: DiffusionPrior | None = None) -> Splats:
    """The starting splats; the ``sample`` and ``layout`` starts need the prompt and the prior."""
    c = cfg.init
    if c.kind == "ply":
        if not c.path:
            raise LodsgsError("init.kind is 'ply' but no path was given; use --init path.ply")
        splats = read_ply(Path(c.path))
        return splats
    if c.kind in ("sample", "layout"):
        return prior_start(cfg, prompt, prior)
    if c.kind == "image":
        return image_start(cfg)
    return ball_start(cfg)


def image_start(cfg: Config) -> Splats:
    """The reference image lifted through the reference camera (each silhouette inflated, coloured by the image)."""
    ref = load_reference(cfg.image, cfg.camera.width, cfg.render.background)
    points, rgb = lift(ref.rgb, reference_camera(cfg), cfg.init.num, cfg.render.background, cfg.run.seed)
    return Splats.from_points(points, rgb, sh_degree=cfg.init.sh_degree, opacity=cfg.init.opacity)


def ball_start(cfg: Config) -> Splats:
    """A random ball (the ``layout`` start's too) or sphere shell, in one colour when init.color is set."""
    c = cfg.init
    make = Splats.sphere_shell if c.kind == "shell" else Splats.random_ball
    splats = make(c.num, radius=c.radius, seed=cfg.run.seed, sh_degree=c.sh_degree, opacity=c.opacity)
    if c.color is not None:  # a flat start: what no view supervises keeps a neutral colour, not random specks
        splats.params["sh0"].data[:] = rgb_to_sh0(torch.tensor(c.color))
    return splats


def prior_start(cfg: Config, prompt: str, prior: DiffusionPrior) -> Splats:
    """The ``sample`` start (one sample lifted whole) or the ``layout`` start (the ball split where the sample
    puts its objects); a sample with no foreground is one line naming the fix."""
    try:
        if cfg.init.kind == "sample":
            image = front_samples(cfg, prompt, prior, 1)[0]
            points, rgb = lift(image, eval_cameras(cfg.camera, 1), cfg.init.num, cfg.render.background, cfg.run.seed)
            return Splats.from_points(points, rgb, sh_degree=cfg.init.sh_degree, opacity=cfg.init.opacity)
        centres, shares = most_objects(cfg, prompt, prior)
    except ValueError as e:
        raise LodsgsError(f"init.kind {cfg.init.kind!r}: {e} for {prompt!r}; try another --seed or "
                          "init.kind=ball") from None
    return split_ball(ball_start(cfg), centres, shares)


def front_samples(cfg: Config, prompt: str, prior: DiffusionPrior, n: int) -> torch.Tensor:
    """``n`` of the prior's DDIM samples [n,H,W,3] of the prompt's front view, seeded by run.seed."""
    text = prior.view_prompts(prompt, ["front"])[0] if cfg.guidance.view_dependent else prompt
    return prior.sample(text, n=n, guidance_scale=cfg.init.sample_scale, seed=cfg.run.seed,
                        negative_prompt=cfg.guidance.negative_prompt).float().cpu()


def most_objects(cfg: Config, prompt: str, prior: DiffusionPrior) -> tuple[torch.Tensor, torch.Tensor]:
    """The layout of the first of ``init.samples`` samples that shows the most separate objects: a sample
    whose objects overlap or touch carries no layout, one that shows them apart does."""
    camera, found = eval_cameras(cfg.camera, 1), []
    for image in front_samples(cfg, prompt, prior, cfg.init.samples):
        try:
            found.append(layout(image, camera, cfg.render.background))
        except ValueError:  # a blank sample: the others may still show something
            continue
    if not found:
        raise ValueError("no sample has a foreground: every pixel is the background colour")
    return max(found, key=lambda centres_shares: len(centres_shares[0]))  # the first of the most


def split_ball(ball: Splats, centres: torch.Tensor, shares: torch.Tensor) -> Splats:
    """The ball's Gaussians dealt out to one smaller ball per centre, each as wide as its region's share of the
    sample's foreground area (radius and scales × √share); one centre at the origin leaves the ball as it was."""
    params = ball.detached()
    ends = (shares.cumsum(0) * ball.num).round().long().tolist()
    start = 0
    for centre, share, end in zip(centres, shares, ends, strict=True):
        params["means"][start:end] = params["means"][start:end] * share.sqrt() + centre
        params["scales"][start:end] += 0.5 * share.log()
        start = end
    return Splats(params, sh_degree=ball.sh_degree)


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


def build_state(cfg: Config, prompt: str, prior: DiffusionPrior, device: torch.device,
                start: Splats | None = None) -> State:
    """A fresh run's state; ``start`` replaces init_splats (a resume passes its checkpoint's splats, so a
    start drawn from the prior's samples is not drawn again)."""
    torch.manual_seed(cfg.run.seed)
    reference = load_reference(cfg.image, cfg.camera.width, cfg.render.background) if cfg.image.path else None
    splats = (start if start is not None else init_splats(cfg, prompt, prior)).to(device)
    optimizers = make_optimizers(splats, lrs(cfg, 0))
    densifier = Densifier(cfg.densify)
    guidance = Guidance(prior, cfg.guidance, prompt, seed=cfg.run.seed)
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
        ref_term, ref_logs = reference_loss(cfg.image, out.rgb[B], out.alpha[B, ..., 0], s.reference, s.step)
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
    s.densifier.step_post_backward(s.splats, s.optimizers, out.meta, s.step)
    s.step += 1
    # the guidance already read its losses in the step's one device sync: no second .item() per loss here
    guided = {"loss": g.logs["sds"], **g.logs} if g is not None else {"loss": ref_term.item()}
    return {**guided, **{k: v.item() for k, v in ref_logs.items()},
            "grown": s.densifier.state["grown"], "pruned": s.densifier.state["pruned"]}


def _all_optimizers(s: State) -> list[torch.optim.Optimizer]:
    return list(s.optimizers.values()) + ([s.prior_optimizer] if s.prior_optimizer else [])


def lrs_used(cfg: Config, s: State) -> dict[str, float]:
    """The learning rates the step just taken used: the splats' schedule, plus the prior's when it learns."""
    used = lrs(cfg, s.step - 1)
    if s.prior_optimizer:
        used["prior"] = s.prior_optimizer.param_groups[0]["lr"]
    return used


# --- checkpoints ----------------------------------------------------------------------------------

def save_checkpoint(s: State, cfg: Config, path: Path) -> None:
    """Atomically write everything needed to continue exactly where this step left off."""
    payload = {
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


CHECKPOINT_KEYS = {"step", "seconds", "sh_degree", "splats", "optimizers", "densifier", "guidance",
                   "prior_optimizer", "camera_rng", "torch_rng", "config"}


def read_checkpoint(path: Path, cfg: Config) -> dict:
    """A checkpoint's payload, on the CPU, refused in one line if it is not a lodsgs checkpoint or was made
    with settings that decide a different result (a resume must continue the same run)."""
    ck = safe_load(path)
    if not isinstance(ck, dict) or not CHECKPOINT_KEYS <= ck.keys():
        raise LodsgsError(f"{str(path)!r} is not a lodsgs checkpoint; delete it, or rerun without --resume "
                          "(with --overwrite) to start again")
    diff = config_diff(ck["config"], to_dict(cfg))
    if diff:
        raise LodsgsError(f"the checkpoint was made with other settings ({'; '.join(diff[:4])}"
                          f"{'; ...' if len(diff) > 4 else ''}); resume with the original settings, or start "
                          "again with --overwrite")
    return ck


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


# --- the run --------------------------------------------------------------------------------------

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


def load_prior(cfg: Config, device: torch.device) -> DiffusionPrior:
    return DiffusionPrior.from_pretrained(resolve_model(cfg.prior.model), device=device, revision=cfg.prior.revision)


@dataclass
class StepReport:
    """What ``generate``'s ``on_step`` callback gets after each step, and once more (``done``) after the outputs."""

    prompt: str
    step: int
    steps: int  # the run's total, run.steps
    splats: Splats
    logs: dict[str, float]  # train_step's numbers (loss, t, grad_norm, ...); the last step's when done
    camera: CameraConfig
    done: bool = False


def generate(
    prompt: str,
    cfg: Config,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
    prior: DiffusionPrior | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Path:
    """Run one prompt to completion (or to an interrupt) and write its outputs; returns the run folder.
    ``on_step`` (the CLI's live view with ``--view``) gets a StepReport after every step; ``should_stop`` (a Ray
    batch's cancellation flag) stops the run like Ctrl-C, with a checkpoint."""
    check_prompt(prompt, resolve_model(cfg.prior.model), cfg.prior.model)
    device = resolve_device(cfg.run.device)
    run_dir = checked_run_dir(Path(out), run_name(prompt, cfg.run.seed, cfg.image.path), resume, overwrite)
    saved = read_checkpoint(run_dir / LAST_CHECKPOINT, cfg) if resume else None
    # everything that can refuse the inputs (prior, init .ply, checkpoint) runs before the folder is touched
    s = start_state(cfg, prompt, prior or load_prior(cfg, device), device, saved)
    open_run_dir(run_dir, cfg, prompt, fresh=not resume)
    if s.reference is not None:
        from lodsgs.media import save_png, to_uint8
        save_png(to_uint8(s.reference.rgb), run_dir / "reference.png")
    logs = optimize(cfg, s, run_dir, prompt, device, resume, quiet, on_step, should_stop)
    write_outputs(s, cfg, run_dir, prompt, device, logs)
    if on_step is not None:
        on_step(StepReport(prompt, s.step, cfg.run.steps, s.splats, logs, cfg.camera, done=True))
    return run_dir


LAST_CHECKPOINT = Path("checkpoints") / "last.pt"


def checked_run_dir(out: Path, name: str, resume: bool, overwrite: bool) -> Path:
    """``out/name``, refused in one line when --out is a file, there is nothing to resume, or a run is in the way."""
    run_dir = out / name
    ckpt = run_dir / LAST_CHECKPOINT
    if out.exists() and not out.is_dir():
        raise LodsgsError(f"--out {str(out)!r} is a file; give a folder for the run folders")
    if resume and not ckpt.exists():
        raise LodsgsError(f"nothing to resume: no checkpoint at {str(ckpt)!r}; run without --resume")
    if not resume and run_dir.exists() and any(run_dir.iterdir()) and not overwrite:
        raise LodsgsError(f"run folder {str(run_dir)!r} already exists; pass --resume to continue it "
                          "or --overwrite to start again")
    return run_dir


def start_state(cfg: Config, prompt: str, prior: DiffusionPrior, device: torch.device,
                saved: dict | None) -> State:
    """A fresh run's state, or with ``saved`` (a read_checkpoint() payload) the state it was saved in."""
    start = Splats(saved["splats"], sh_degree=saved["sh_degree"]) if saved is not None else None
    s = build_state(cfg, prompt, prior, device, start)
    if saved is not None:
        load_checkpoint(s, saved, cfg, device)
    return s


def open_run_dir(run_dir: Path, cfg: Config, prompt: str, fresh: bool) -> None:
    """Create the run folder (one line if it cannot be written), clear a previous run's outputs when ``fresh``,
    and write config.yaml and prompt.txt."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ".write-test").touch()
        (run_dir / ".write-test").unlink()
    except OSError as e:
        raise LodsgsError(f"cannot write to output folder {str(run_dir)!r}: {e.strerror}") from None
    if fresh:  # nothing of an overwritten run stays beside the new config
        clear_outputs(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    write_text(run_dir / "prompt.txt", prompt + "\n")


def optimize(cfg: Config, s: State, run_dir: Path, prompt: str, device: torch.device, resume: bool, quiet: bool,
             on_step: Callable[[StepReport], None] | None, should_stop: Callable[[], bool] | None) -> dict[str, float]:
    """Step until run.steps, logging, previewing and checkpointing on schedule; returns the last step's logs.
    Ctrl-C, SIGTERM or ``should_stop()`` end the step under way, save a checkpoint and raise Interrupted."""
    from lodsgs.media import write_progress
    from lodsgs.progress import StepProgress

    ckpt, logs = run_dir / LAST_CHECKPOINT, {}
    start = time.perf_counter() - s.seconds
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with (caught_signals() as caught,
          RunLog(run_dir, cfg.run.log_every, cfg.run.steps, resume_step=s.step if resume else None) as runlog,
          StepProgress(cfg.run.steps, start=s.step, quiet=quiet, label=prompt) as bar):
        first = s.step + 1
        while s.step < cfg.run.steps:
            logs = train_step(cfg, s, device)
            seconds, s.seconds = s.seconds, time.perf_counter() - start
            if s.step == first:  # once, from this machine's first measured step
                cpu_time_note(s.guidance.prior, device, s.seconds - seconds, cfg.run.steps - s.step)
            bar.update(s.step, loss=logs["loss"], gaussians=s.splats.num)
            if runlog.due(s.step):
                runlog.write(make_record(s.step, logs, s.splats.num, lrs_used(cfg, s), s.seconds))
            if cfg.run.preview_every > 0 and s.step % cfg.run.preview_every == 0:
                write_progress(s.splats, cfg, run_dir, s.step)
            if on_step is not None:
                on_step(StepReport(prompt, s.step, cfg.run.steps, s.splats, logs, cfg.camera))
            if caught or (should_stop is not None and should_stop()):
                save_checkpoint(s, cfg, ckpt)
                raise Interrupted(f"interrupted at step {s.step}; checkpoint saved to {str(ckpt)!r}; "
                                  "rerun the same command with --resume to continue")
            if s.step % cfg.run.checkpoint_every == 0 and s.step < cfg.run.steps:
                save_checkpoint(s, cfg, ckpt)
                if cfg.run.keep_checkpoints:
                    shutil.copyfile(ckpt, ckpt.with_name(f"step_{s.step:05d}.pt"))
    return logs


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


def write_outputs(s: State, cfg: Config, run_dir: Path, prompt: str, device: torch.device,
                  logs: dict[str, float]) -> None:
    """The finished run's checkpoint, splats (.ply, .splat, .spz), turntable and preview, and metrics.json."""
    from lodsgs.media import write_media

    save_checkpoint(s, cfg, run_dir / LAST_CHECKPOINT)
    write_ply(s.splats, run_dir / "splats.ply")
    write_splat(s.splats, run_dir / "splats.splat")
    if cfg.run.spz:
        write_spz(s.splats, run_dir / "splats.spz")
    write_media(s.splats, cfg, run_dir, inset=s.reference.rgb if s.reference is not None else None)
    if cfg.run.mesh:
        write_mesh(splats_to_mesh(s.splats, cfg.mesh), run_dir / "mesh.glb", "glb")
    metrics = {
        "prompt": prompt,
        "seed": cfg.run.seed,
        "method": cfg.guidance.method,
        "prior": cfg.prior.model,
        "device": str(device),
        "config_hash": config_hash(cfg),
        "steps": s.step,
        "seconds": round(s.seconds, 3),
        "steps_per_second": round(s.step / max(s.seconds, 1e-9), 3),
        "gaussians": s.splats.num,
        "peak_memory_mb": peak_memory_mb(device),
        "final": {k: round(v, 6) for k, v in logs.items()},
    }
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))


OUTPUTS = ("reference.png", "splats.ply", "splats.splat", "splats.spz", "turntable.gif", "turntable.mp4",
           "preview.png", "metrics.json", "mesh.glb", "log.jsonl", "config.yaml", "prompt.txt", "checkpoints",
           "progress", "eval-score.json")


def clear_outputs(run_dir: Path) -> None:
    """Delete what a previous run wrote in ``run_dir`` (its outputs, checkpoint, log and previews)."""
    for name in OUTPUTS:
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB
