"""A run folder once it is checked (its name and the checks: lodsgs/preflight.py): checkpoint files, the
per-step persistence given to the trainer (log.jsonl, previews, checkpoints), the finished run's outputs, and
whether a folder holds a finished or resumable run of given settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from lodsgs.clock import Laps
from lodsgs.config import Config, config_diff, config_hash, save_config, to_dict
from lodsgs.errors import Diverged, LodsgsError
from lodsgs.files import atomic_path, safe_load, write_text
from lodsgs.guards import check_state
from lodsgs.preflight import LAST_CHECKPOINT
from lodsgs.runlog import RunLog
from lodsgs.splats.io import write_ply, write_splat
from lodsgs.splats.mesh import splats_to_mesh, write_mesh
from lodsgs.splats.spz import write_spz
from lodsgs.trainer import State, StepReport, checkpoint_payload, peak_memory_mb


def resumable(run_dir: Path, cfg: Config) -> bool:
    """Whether ``run_dir`` holds a checkpoint that ``--resume`` with ``cfg`` would continue (same settings)."""
    ckpt = run_dir / LAST_CHECKPOINT
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


def save_checkpoint(s: State, cfg: Config, path: Path) -> None:
    """Atomically write the state as a checkpoint file (a kill mid-write leaves the previous one whole)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(checkpoint_payload(s, cfg), tmp)


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


class RunFolder:
    """The trainer's ``on_step`` for a run folder: log.jsonl records, progress previews and checkpoints on
    schedule; ``interrupted`` saves the checkpoint a resume continues from. Close it (or use ``with``)."""

    def __init__(self, run_dir: Path, cfg: Config, resume_step: int | None):
        self.run_dir, self.cfg = run_dir, cfg
        self.log = RunLog(run_dir, cfg.run.log_every, cfg.run.steps, resume_step=resume_step)

    def __call__(self, report: StepReport) -> None:
        from lodsgs.media import write_progress

        cfg, step, ckpt = self.cfg, report.step, self.run_dir / LAST_CHECKPOINT
        if report.record is not None:
            self.log.write(report.record)
        preview = cfg.run.preview_every > 0 and step % cfg.run.preview_every == 0
        checkpoint = step % cfg.run.checkpoint_every == 0 and step < cfg.run.steps
        if preview or checkpoint:  # nothing is written from a non-finite state
            check_state(report.state)
        if preview:
            write_progress(report.splats, cfg, self.run_dir, step)
        if checkpoint:
            save_checkpoint(report.state, cfg, ckpt)
            if cfg.run.keep_checkpoints:
                shutil.copyfile(ckpt, ckpt.with_name(f"step_{step:05d}.pt"))

    def interrupted(self, s: State) -> str:
        """Save the checkpoint of an interrupted run; the line that tells the user how to continue."""
        ckpt = self.save(s)
        return (f"interrupted at step {s.step}; checkpoint saved to {str(ckpt)!r}; rerun the same command with "
                "--resume to continue")

    def save(self, s: State) -> Path:
        """Save ``s`` as the last checkpoint, after checking it is finite (Diverged if not); returns its path."""
        try:
            check_state(s)
        except Diverged as e:
            raise Diverged(e.step, e.what, self.last_good(), e.hint) from None
        ckpt = self.run_dir / LAST_CHECKPOINT
        save_checkpoint(s, self.cfg, ckpt)
        return ckpt

    def last_good(self) -> str | None:
        """The last checkpoint's path, if one was saved (only finite states are: ``save``, ``__call__``)."""
        ckpt = self.run_dir / LAST_CHECKPOINT
        return str(ckpt) if ckpt.is_file() else None

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.log.close()


def write_outputs(s: State, cfg: Config, run_dir: Path, prompt: str, device: torch.device,
                  logs: dict[str, float], laps: Laps | None = None) -> dict:
    """The finished run's checkpoint, splats (.ply, .splat, .spz of version 4), turntable and preview, and
    metrics.json (also returned). ``laps``: the run's wall time so far; the outputs' lap is added and the whole
    goes in the metrics."""
    laps = laps or Laps()
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
    laps.lap("outputs")
    metrics["wall_seconds"] = laps.seconds  # imports_and_prior, start, loop (this session's), outputs
    write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


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


