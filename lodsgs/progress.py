"""A rich progress bar for optimization loops: step, loss, Gaussian count, it/s and ETA; quiet for logs."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class StepProgress:
    """Context manager: ``bar.update(step, loss=..., gaussians=...)``; prints nothing when quiet."""

    def __init__(self, total: int, start: int = 0, quiet: bool = False, label: str = ""):
        self.quiet = quiet
        self.progress = None if quiet else Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4g}  gaussians {task.fields[gaussians]}"),
            TextColumn("{task.fields[rate]:.2f} it/s"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=Console(stderr=True),  # stdout stays the command's result
        )
        self.total, self.start, self.label = total, start, label[:40]

    def __enter__(self) -> StepProgress:
        if self.progress:
            self.progress.start()
            self.task = self.progress.add_task(self.label, total=self.total, completed=self.start,
                                               loss=float("nan"), gaussians=0, rate=0.0)
        return self

    def update(self, step: int, **fields) -> None:
        if self.progress:
            task = self.progress.tasks[0]
            rate = task.speed or 0.0
            self.progress.update(self.task, completed=step, rate=rate, **fields)

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()


class BatchProgress:
    """Context manager for a batch spread over workers: ``bar.update(done, running, failed)`` with ETA."""

    def __init__(self, total: int, quiet: bool = False):
        self.progress = None if quiet else Progress(
            TextColumn("[bold]prompts"), BarColumn(), MofNCompleteColumn(),
            TextColumn("running {task.fields[running]}  failed {task.fields[failed]}"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True),
        )
        self.total = total

    def __enter__(self) -> BatchProgress:
        if self.progress:
            self.progress.start()
            self.task = self.progress.add_task("prompts", total=self.total, running=0, failed=0)
        return self

    def update(self, done: int, running: int, failed: int) -> None:
        if self.progress:
            self.progress.update(self.task, completed=done + failed, running=running, failed=failed)

    def __exit__(self, *exc) -> None:
        if self.progress:
            self.progress.stop()
