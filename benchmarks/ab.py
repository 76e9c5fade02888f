"""Interleaved A/B wall time of one lodsgs command at two commits, on this machine, in one run.

    python -m benchmarks.ab BASE_COMMIT [--runs 3] [--head HEAD_COMMIT] [--json FILE] [-- lodsgs ARGS...]

The base commit (and ``--head``, else this checkout's working tree) is checked out into a temporary git worktree
and imported from there with ``PYTHONPATH``, so both sides run the same Python, packages and machine. The runs
alternate base, head, head, base, ... (each round swaps which goes first, so a machine that slows down or warms
up during the run charges both sides alike). Each run writes into its own empty temporary folder. Printed: every
run's seconds, each side's median, and the ratio head / base -- the number a speed claim is judged by. The
default command is the README's CPU demo, ``lodsgs generate "a red cube" --prior shapes``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["generate", "a red cube", "--prior", "shapes", "--quiet"]
# runs `lodsgs ARGS` with the lodsgs package found first on PYTHONPATH (the CLI's entry point, as the script does)
LAUNCH = "import sys; from lodsgs.cli import main; sys.argv = ['lodsgs', *sys.argv[1:]]; main()"


@contextlib.contextmanager
def checkout(commit: str) -> Iterator[Path]:
    """A detached temporary git worktree of ``commit``; removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix=f"lodsgs-ab-{commit[:8]}-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force", str(folder), commit],
                   check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder)], capture_output=True)


def timed_run(source: Path, args: list[str]) -> float:
    """Seconds of wall time of ``lodsgs ARGS --out TMP`` with the package of ``source``; raises if it fails."""
    with tempfile.TemporaryDirectory(prefix="lodsgs-ab-out-") as out:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", LAUNCH, *args, "--out", out], cwd=out,
                              env={**_env(), "PYTHONPATH": str(source)}, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        # the last line that says something (a usage error ends in the border of rich's box)
        said = [line.strip(" │╭╮╰╯─") for line in (done.stderr or done.stdout).splitlines()]
        tail = [line for line in said if any(ch.isalnum() for ch in line)][-1:] or ["(no output)"]
        raise SystemExit(f"benchmarks.ab: the run from {source} failed (exit {done.returncode}): {tail[0]}")
    return seconds


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def cpu_model() -> str:
    """lscpu's model name (the machine a timing belongs to)."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def interleave(base: Path, head: Path, args: list[str], runs: int) -> dict[str, list[float]]:
    """``runs`` timings of each side in ABBA order, printed as they come."""
    times: dict[str, list[float]] = {"base": [], "head": []}
    for i in range(runs):
        order = (("base", base), ("head", head)) if i % 2 == 0 else (("head", head), ("base", base))
        for side, source in order:
            times[side].append(timed_run(source, args))
            print(f"  round {i + 1} {side}: {times[side][-1]:.1f} s", flush=True)
    return times


def main(argv: list[str]) -> None:
    cut = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("base", help="the commit to compare against (e.g. fc5c848)")
    p.add_argument("--head", default="", help="a commit for the other side (default: this working tree)")
    p.add_argument("--runs", type=int, default=3, help="runs of each side (default 3)")
    p.add_argument("--json", type=Path, help="also write the timings here")
    opts = p.parse_args(argv[:cut])
    args = argv[cut + 1:] or DEFAULT
    if opts.runs < 1:
        p.error("--runs must be at least 1")
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    with checkout(opts.base) as base, (checkout(opts.head) if opts.head else contextlib.nullcontext(ROOT)) as head:
        print(f"benchmarks.ab: lodsgs {' '.join(args)}; base {opts.base}, head {opts.head or 'working tree'}; "
              f"{cpu_model()}; OMP_NUM_THREADS={threads}; {datetime.date.today()}", flush=True)
        times = interleave(base, head, args, opts.runs)
    med = {side: statistics.median(v) for side, v in times.items()}
    print(f"median base {med['base']:.1f} s, head {med['head']:.1f} s: head / base = {med['head'] / med['base']:.2f}")
    if opts.json:
        opts.json.write_text(json.dumps({"args": args, "base": opts.base, "head": opts.head or "working tree",
                                         "cpu": cpu_model(), "threads": threads,
                                         "date": str(datetime.date.today()), "times": times,
                                         "median": med, "ratio": med["head"] / med["base"]}, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
