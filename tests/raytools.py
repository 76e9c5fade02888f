"""Helpers of the Ray tests: short shapes-prior settings, the manifest, waits that fail with a message, and
catching a PromptWorker process in the middle of a prompt (frozen, so it cannot finish before it is killed)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

SHORT = ["prior.model=shapes", "run.steps=8", "run.checkpoint_every=4", "run.turntable_frames=4",
         "run.turntable_size=32", "init.num=300", "run.spz=false"]


def sets(settings: list[str]) -> list[str]:
    return [arg for s in settings for arg in ("--set", s)]


def manifest(out: Path) -> dict[str, dict]:
    return {r["prompt"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.2):
    """``condition()``'s first truthy value, polled until ``timeout_s``; fails the test naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


def prompt_workers(root: psutil.Process) -> list[psutil.Process]:
    """PromptWorker actor processes (Ray titles them ``ray::PromptWorker``) under ``root``: only this test's
    Ray, never another Ray on the machine."""
    found = []
    for p in root.children(recursive=True):
        try:
            if "PromptWorker" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # it ended while we looked
            continue
    return found


def running_prompt(p: psutil.Process) -> Path | None:
    """The run folder whose log the process has open (a prompt in its loop) once it holds a checkpoint."""
    try:
        logs = [Path(f.path) for f in p.open_files() if f.path.endswith("log.jsonl")]
    except psutil.Error:
        return None
    for log in logs:
        if (log.parent / "checkpoints" / "last.pt").is_file() and not (log.parent / "metrics.json").exists():
            return log.parent
    return None


def freeze_mid_prompt(root: psutil.Process, timeout_s: float) -> tuple[psutil.Process, Path]:
    """A PromptWorker stopped (SIGSTOP) while its prompt is past a checkpoint and not finished, and that run
    folder: frozen first and checked after, so a prompt finishing in between is never mistaken for killed."""
    def caught():
        for p in prompt_workers(root):
            if running_prompt(p) is None:
                continue
            p.suspend()
            run_dir = running_prompt(p)
            if run_dir is not None:
                return p, run_dir
            p.resume()  # it finished its prompt between the two looks: try again
        return None
    return wait_for(caught, timeout_s, "a PromptWorker in the middle of a prompt, past a checkpoint")
