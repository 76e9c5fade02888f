"""Per-step run log: one JSON object per line in ``RUN_DIR/log.jsonl``, and a summary of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lodsgs.errors import LodsgsError
from lodsgs.files import write_text

LOG_NAME = "log.jsonl"
# grown/pruned/refines: run totals; eps_gap: RMS of ε_c − ε_u; alpha_*/lora_b_norm: where LODS's learned branch is
GUIDANCE_KEYS = ("t", "t_max", "sds", "grad_norm", "prior_loss", "eps_gap", "alpha_shift", "alpha_cos",
                 "lora_b_norm", "grown", "pruned", "refines")


class RunLog:
    """Appends records to ``RUN_DIR/log.jsonl``, flushed after each write.

    A fresh run (``resume_step=None``) starts an empty log; a resumed one keeps only steps <= resume_step.
    """

    def __init__(self, run_dir: Path, every: int, last: int, resume_step: int | None = None):
        self.path = Path(run_dir) / LOG_NAME
        self.every, self.last = every, last
        if resume_step is None:
            self.path.unlink(missing_ok=True)
        elif self.path.exists():
            _rewrite([r for r in read_records(self.path) if r.get("step", 0) <= resume_step], self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def due(self, step: int) -> bool:
        """Whether ``step`` gets a record: every ``every`` steps (0 = never) and the last step."""
        return self.every > 0 and (step % self.every == 0 or step == self.last)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record as a JSON line and flush it."""
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_record(step: int, logs: dict[str, float], gaussians: int, lr: dict[str, float],
                seconds: float) -> dict[str, Any]:
    """One log record from a step's guidance logs, the Gaussian count, learning rates and elapsed seconds."""
    return {"step": step, **{k: logs.get(k) for k in GUIDANCE_KEYS}, "gaussians": gaussians, "lr": lr,
            "seconds": round(seconds, 4)}


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a log; a truncated (unparseable) last line is skipped, a bad earlier one is an error."""
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise LodsgsError(f"{str(path)!r} line {i + 1} is not valid JSON") from None
    return records


def _rewrite(records: list[dict[str, Any]], path: Path) -> None:
    """Atomically replace ``path`` with ``records``."""
    write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def summarize(path: Path) -> dict[str, Any]:
    """Records, first/last step, Gaussians start/min/max/end, sds, prior loss and t_max start/end, s/step."""
    records = read_records(path)
    if not records:
        return {"records": 0}
    first, last = records[0], records[-1]
    counts = [r["gaussians"] for r in records if r.get("gaussians") is not None]
    summary: dict[str, Any] = {
        "records": len(records), "first_step": first.get("step"), "last_step": last.get("step"),
        "gaussians_start": first.get("gaussians"), "gaussians_min": min(counts, default=None),
        "gaussians_max": max(counts, default=None), "gaussians_end": last.get("gaussians"),
    }
    for key in ("sds", "t_max", "prior_loss"):
        summary[f"{key}_start"], summary[f"{key}_end"] = first.get(key), last.get(key)
    summary["grown"], summary["pruned"] = last.get("grown"), last.get("pruned")
    quarter = max(1, len(records) // 4)  # eps_gap varies with each step's random t: average a quarter of the run
    summary["eps_gap_start"] = _mean([r.get("eps_gap") for r in records[:quarter]])
    summary["eps_gap_end"] = _mean([r.get("eps_gap") for r in records[-quarter:]])
    for key in ("alpha_shift", "alpha_cos", "lora_b_norm"):
        summary[f"{key}_start"], summary[f"{key}_end"] = first.get(key), last.get(key)
    steps, seconds = last.get("step"), last.get("seconds")
    summary["seconds_per_step"] = seconds / steps if steps and seconds is not None else None
    return summary


def _mean(values: list[Any]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def format_summary(summary: dict[str, Any]) -> str:
    """One human line, e.g. ``log: 40 records, steps 10..400; gaussians 2000 -> ...; 0.25 s/step``."""
    if not summary.get("records"):
        return "log: empty"

    def num(v: Any) -> str:
        return "?" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    def span(key: str) -> str:
        return f"{num(summary[f'{key}_start'])} -> {num(summary[f'{key}_end'])}"

    parts = [f"log: {summary['records']} records, steps {summary['first_step']}..{summary['last_step']}",
             f"gaussians {num(summary['gaussians_start'])} -> min {num(summary['gaussians_min'])} / "
             f"max {num(summary['gaussians_max'])} -> {num(summary['gaussians_end'])}",
             f"sds loss {span('sds')}"]
    if summary.get("grown") is not None:
        parts.insert(2, f"densify grew {summary['grown']} / pruned {summary['pruned']}")
    if summary["prior_loss_start"] or summary["prior_loss_end"]:
        parts.append(f"prior loss {span('prior_loss')}")
    if summary.get("eps_gap_start") is not None:
        parts.append(f"|ε_c − ε_u| {span('eps_gap')} (first / last quarter)")
    if summary.get("alpha_shift_end") is not None:
        parts.append(f"α moved {num(summary['alpha_shift_end'])} of its norm, cosine to the caption "
                     f"{span('alpha_cos')}")
    if summary.get("lora_b_norm_end") is not None:
        parts.append(f"LoRA B norm {span('lora_b_norm')}")
    parts += [f"t_max {span('t_max')}", f"{num(summary['seconds_per_step'])} s/step"]
    return "; ".join(parts)
