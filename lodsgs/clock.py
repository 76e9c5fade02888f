"""Where a run's wall time goes (metrics.json's ``wall_seconds``): imports and the prior's load, the start, the
optimization loop, the outputs. A user waits for all four; the loop's steps/s alone hides the rest."""

from __future__ import annotations

import os
import time


def process_age() -> float:
    """Seconds since this process started (Linux: /proc/self/stat's start time against CLOCK_BOOTTIME, the clock
    it is counted on); 0.0 where that cannot be read, so the first lap starts at the Laps' creation instead."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, counted from after the command name
        return max(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


class Laps:
    """Consecutive named laps of wall time: ``lap(name)`` ends the lap under way and starts the next.
    ``since_start``: the first lap also holds the time the process ran before (interpreter, imports)."""

    def __init__(self, since_start: bool = False):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter() - (process_age() if since_start else 0.0)

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 3)
        self._last = now
        return self.seconds[name]
