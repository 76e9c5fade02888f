"""The loop's guards. A run whose loss, gradients or parameters go NaN or infinite (or beyond what a splat file
holds) stops with one line (Diverged) and nothing is written from that state; a step that runs out of device
memory is one line naming the settings that shrink a step (OutOfMemory), with the state put back to the last
finished step so a run folder can save it.

Cost: the logged numbers (the loss among them) are plain floats the step already synced, so checking them every
step is free; the parameters and their gradients are checked (one device sync) every ``FINITE_EVERY`` steps, on
the last step, when a logged number is not finite, and before anything is written from the state (a checkpoint,
a preview: ``rundir.RunFolder``). A divergence is therefore caught at most ``FINITE_EVERY`` - 1 steps late, and
never saved. The size guards are settings: ``densify.max_gaussians`` (growth stops there) and
``densify.max_scale`` (log-scales clamped after every step, ``Densifier.cap_scales``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

from lodsgs.cuda_fallback import first_line
from lodsgs.errors import Diverged, OutOfMemory
from lodsgs.splats.convention import MAX_COORD, MAX_LOG_SCALE

if TYPE_CHECKING:
    from lodsgs.config import Config
    from lodsgs.trainer import State

FINITE_EVERY = 10  # steps between two checks of the parameters and gradients
PRIOR_HINT = "try a lower guidance.embedding_lr / guidance.lora_lr (or optim.* lr)"


def nonfinite_logs(logs: dict[str, float]) -> str | None:
    """The step's logged numbers that are NaN or infinite ("loss = nan, prior_loss = inf"), or None."""
    bad = [f"{k} = {v}" for k, v in logs.items() if isinstance(v, float) and not math.isfinite(v)]
    return ", ".join(bad) or None


def _params(s: State) -> Iterator[tuple[str, torch.Tensor]]:
    """Every parameter a step changes (the splats', the prior's α or ψ), with a name for the message."""
    for name, p in s.splats.params.items():
        yield f"splat {name}", p
    prior = "α" if s.guidance.embedding is not None else "ψ"
    for group in s.guidance.param_groups():
        for p in group["params"]:
            yield f"the prior's {prior}", p


def _tensors(s: State) -> Iterator[tuple[str, torch.Tensor]]:
    """The parameters and their gradients (those that have one)."""
    for name, p in _params(s):
        yield name, p
        if p.grad is not None:
            yield f"the gradient of {name}", p.grad


# beyond these a splat file cannot hold the splats (splats/convention.py): a diverged run, caught here rather than
# when the outputs are written
LIMITS = {"splat means": (MAX_COORD, "beyond ±1e6 units"), "splat scales": (MAX_LOG_SCALE, "beyond e^±30")}


def _valid(name: str, t: torch.Tensor) -> torch.Tensor:
    """Elementwise: finite, and within the splat files' limits for means and log-scales."""
    limit = LIMITS.get(name)
    return t.abs() <= limit[0] if limit is not None else torch.isfinite(t)


@torch.no_grad()
def nonfinite_state(s: State) -> str | None:
    """What in the state is NaN, infinite or beyond what a splat file holds ("splat scales (12 of 900 values
    non-finite), ..."), or None: one device sync (the counts are only taken when something is wrong)."""
    named = [(name, t) for name, t in _tensors(s) if t.numel()]
    if not named:
        return None
    valid = torch.stack([_valid(name, t).all() for name, t in named]).tolist()
    bad = [(name, t) for (name, t), ok in zip(named, valid) if not ok]
    if not bad:
        return None
    parts = [f"{name} ({int((~_valid(name, t)).sum())} of {t.numel()} values non-finite"
             f"{' or ' + LIMITS[name][1] if name in LIMITS else ''})" for name, t in bad[:3]]
    return ", ".join(parts) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")


def diverged(s: State, what: str) -> Diverged:
    """Diverged at the state's step (no checkpoint named yet); the hint names the prior's rates if it went first."""
    return Diverged(s.step, what, hint=PRIOR_HINT) if "the prior's" in what else Diverged(s.step, what)


def check_state(s: State) -> None:
    """Raise Diverged if a parameter or gradient is not finite."""
    what = nonfinite_state(s)
    if what is not None:
        raise diverged(s, what)


def check_step(cfg: Config, s: State, logs: dict[str, float]) -> None:
    """After a step: the logged numbers always; the parameters and gradients when due (every FINITE_EVERY steps,
    the last step) or when a logged number is not finite."""
    bad_logs = nonfinite_logs(logs)
    if bad_logs is not None:
        what = nonfinite_state(s)
        raise diverged(s, bad_logs + (f"; non-finite: {what}" if what else ""))
    if s.step % FINITE_EVERY == 0 or s.step >= cfg.run.steps:
        check_state(s)


def shrink_settings(cfg: Config, s: State) -> str:
    """The settings that make a step smaller, with their values now."""
    return (f"run.batch (views per step, now {cfg.run.batch}), camera.width / camera.height (now {cfg.camera.width}"
            f" × {cfg.camera.height}), densify.max_gaussians (now {cfg.densify.max_gaussians}; the splats have "
            f"{s.splats.num})")


def guarded_step(step: Callable[[Config, State, torch.device], dict[str, float]], cfg: Config, s: State,
                 device: torch.device) -> dict[str, float]:
    """``step(cfg, s, device)`` under the guards: Diverged when it leaves something non-finite (``check_step``);
    OutOfMemory when it runs out of memory. If the step had not yet changed the parameters, the random generators
    it drew from are put back, so the state is the last finished step's. An allocation that fails on a broken
    state (GaussianDreamer #50: "Tried to allocate 130141 GiB") is reported as Diverged."""
    rngs, before = (s.camera_rng.get_state(), s.guidance.generator.get_state()), _versions(s)
    detail = None
    try:
        logs = step(cfg, s, device)
    except torch.OutOfMemoryError as e:  # handled below, once the failed step's tensors are released
        detail = (str(e).strip().splitlines() or [first_line(e)])[0][:300]
    if detail is None:
        check_step(cfg, s, logs)
        return logs
    whole = _versions(s) == before  # no optimizer step or densification had begun
    if whole:
        s.camera_rng.set_state(rngs[0])
        s.guidance.generator.set_state(rngs[1])
    for _, p in _params(s):  # the failed step's gradients: dropped (memory; a checkpoint holds none)
        p.grad = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
    check_state(s)
    raise OutOfMemory(s.step + 1, detail, shrink_settings(cfg, s), whole)


def _versions(s: State) -> tuple[tuple[int, int], ...]:
    """Which parameter objects the state holds and their in-place version counters: any optimizer step or
    densification changes this (an unchanged tuple means the step under way has not touched the state)."""
    return tuple((id(p), p._version) for _, p in _params(s))
