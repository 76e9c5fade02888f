"""``lodsgs plot-log``: curves of run logs side by side, e.g. |ε_c − ε_u| and α's distance, SDS vs LODS.

Each run's ``log.jsonl`` gives one line per panel; noisy keys (``eps_gap`` varies with each step's random t)
are smoothed with a moving average so the trend shows.
"""

from __future__ import annotations

from pathlib import Path

from lodsgs.errors import LodsgsError
from lodsgs.runlog import LOG_NAME, read_records

TITLES = {
    "eps_gap": "|ε_c − ε_u| (RMS)",
    "alpha_shift": "α's distance from its start / |α₀|",
    "alpha_cos": "cosine(α, the caption's embedding)",
    "lora_b_norm": "LoRA: norm of the B matrices",
    "prior_loss": "prior loss (ε-MSE of the learned branch)",
    "sds": "guidance loss",
}


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over up to ``window`` values."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v - (values[i - window] if i >= window else 0.0)
        out.append(acc / min(i + 1, window))
    return out


def curves(run_dir: Path, key: str, window: int) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key`` in a run's log, smoothed."""
    log = Path(run_dir) / LOG_NAME
    if not log.exists():
        raise LodsgsError(f"{str(run_dir)!r} has no {LOG_NAME}; is it a run folder made with run.log_every > 0?")
    rows = [(r["step"], r[key]) for r in read_records(log) if r.get(key) is not None]
    return [s for s, _ in rows], smooth([v for _, v in rows], window)


def plot_logs(runs: dict[str, Path], keys: list[str], out: Path, window: int = 10) -> Path:
    """One panel per key, one line per run (label -> run folder); runs without the key are left out of it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (label, run) in enumerate(runs.items()):
            steps, values = curves(run, key, window)
            if steps:  # one colour per run across panels
                ax.plot(steps, values, label=label, color=f"C{i % 10}")
        ax.set_title(TITLES.get(key, key), fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
