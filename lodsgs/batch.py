"""Prompt lists: one run folder per prompt, a manifest, resumable, sharded, failures isolated."""

from __future__ import annotations

import copy
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lodsgs.config import Config
from lodsgs.errors import LodsgsError

if TYPE_CHECKING:
    from lodsgs.trainer import StepReport


def read_prompts(path: Path) -> list[str]:
    """Prompts one per line (or ``ref.png<TAB>prompt`` for image-to-3D); blank lines and ``#`` comments skipped;
    duplicates kept once, in order."""
    try:  # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first line
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LodsgsError(f"cannot read prompt list {str(path)!r}: {getattr(e, 'strerror', None) or e}") from None
    seen: dict[str, None] = {}
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            seen.setdefault(text, None)
    if not seen:
        raise LodsgsError(f"prompt list {str(path)!r} holds no prompt (only blank lines and # comments); write "
                          "one prompt per line")
    return list(seen)


def run_list(prompts: Path, cfg: Config, out: Path, shard_spec: str = "0/1", ray: str | None = None,
             gpus_per_run: float | None = None, cpus_per_run: float = 1.0, max_retries: int = 2, quiet: bool = True,
             log=print, on_step: Callable[[StepReport], None] | None = None, view: bool = False,
             image_cfg: Config | None = None) -> BatchResult:
    """``lodsgs batch``: this shard of the prompt list, in this process or spread over Ray; ``image_cfg``: the
    settings of the list's image lines (see split_entry)."""
    i, n = parse_shard(shard_spec)
    todo = shard(read_prompts(prompts), i, n)
    if ray is None:
        return run_batch(todo, cfg, out, quiet=quiet, log=log, on_step=on_step, image_cfg=image_cfg)
    if view:
        raise LodsgsError("--view shows one process's run; it does not combine with --ray")
    if cpus_per_run < 0 or (gpus_per_run or 0) < 0 or max_retries < 0:
        raise LodsgsError("--cpus-per-run, --gpus-per-run and --max-retries must be >= 0")
    from lodsgs.ray_batch import run_batch_ray
    return run_batch_ray(todo, cfg, out, ray, gpus_per_run, cpus_per_run, max_retries, log=log, progress=not quiet,
                         image_cfg=image_cfg)


def split_entry(entry: str, cfg: Config, image_cfg: Config | None = None) -> tuple[str, Config]:
    """A prompt-list line as (prompt, its config): ``ref.png<TAB>a red cube`` is image-to-3D with that reference
    (relative paths from the working folder). ``image_cfg``: the settings ``generate --image`` would resolve
    (the lifted reference as the start unless --init or --set init.kind chose another); without it, the lifted
    reference unless init.kind is ply."""
    image, tab, prompt = entry.partition("\t")
    if not tab:
        return entry, cfg
    cfg = copy.deepcopy(image_cfg if image_cfg is not None else cfg)
    cfg.image.path = image.strip()
    if image_cfg is None and cfg.init.kind != "ply":
        cfg.init.kind = "image"
    return prompt.strip(), cfg


def parse_shard(text: str) -> tuple[int, int]:
    """``i/n`` with 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise LodsgsError(f"--shard expects i/n such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise LodsgsError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def shard(prompts: list[str], i: int, n: int) -> list[str]:
    """Deterministic round-robin split: every prompt lands in exactly one shard."""
    return prompts[i::n]


def read_manifest(path: Path) -> dict[str, dict]:
    """Latest record per prompt (later lines win); tolerates a torn last line."""
    records: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            records[rec["prompt"]] = rec
    return records


def append_manifest(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def already_done(record: dict, digest: str) -> bool:
    """A manifest record of a prompt finished with the settings whose config hash is ``digest``."""
    return record.get("status") == "done" and record.get("config_hash") == digest


def failure(e: Exception) -> dict:
    """A failed prompt's manifest fields: lodsgs errors as their one line, anything else with a short traceback."""
    message = str(e) if isinstance(e, LodsgsError) else f"{type(e).__name__}: {e}"
    return {"status": "failed", "error": message,
            "traceback": None if isinstance(e, LodsgsError) else traceback.format_exc(limit=5)}


@dataclass
class BatchResult:
    done: int = 0
    skipped: int = 0
    failed: int = 0


def run_batch(prompts: list[str], cfg: Config, out: Path, quiet: bool = True, log=print,
              on_step: Callable[[StepReport], None] | None = None, image_cfg: Config | None = None) -> BatchResult:
    """Generate every prompt not already done with these settings; one failure (even OOM) is recorded and the
    rest go on. A prompt done with other settings (another config hash) is generated again. ``on_step`` is passed
    to every prompt's run (the CLI's live view)."""
    from lodsgs.api import run_or_resume
    from lodsgs.config import config_hash
    from lodsgs.trainer import Interrupted, load_prior, resolve_device

    if out.exists() and not out.is_dir():
        raise LodsgsError(f"--out {str(out)!r} is a file; give a folder for the batch")
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.jsonl"
    digest = config_hash(cfg)
    records = read_manifest(manifest)
    result = BatchResult()
    todo = [p for p in prompts if not already_done(records.get(p, {}), digest)]
    # once, up front: a prior that cannot load fails the batch in one line, not once per prompt
    prior = load_prior(cfg, resolve_device(cfg.run.device)) if todo else None
    for k, prompt in enumerate(prompts, 1):
        old = records.get(prompt, {})
        if already_done(old, digest):
            result.skipped += 1
            log(f"[{k}/{len(prompts)}] skip (done): {prompt}")
            continue
        changed = " (settings changed since it was done: generating again)" if old.get("status") == "done" else ""
        log(f"[{k}/{len(prompts)}] generate: {prompt}{changed}")
        start = time.perf_counter()
        record = {"prompt": prompt, "seed": cfg.run.seed, "method": cfg.guidance.method, "config_hash": digest}
        try:
            text, run_cfg = split_entry(prompt, cfg, image_cfg)
            run_dir, _ = run_or_resume(text, run_cfg, out, quiet=quiet, prior=prior, on_step=on_step)
            record.update(status="done", run_dir=str(run_dir), ply=str(run_dir / "splats.ply"))
            result.done += 1
        except (KeyboardInterrupt, Interrupted):  # the user stopped the whole batch: rerun resumes it
            raise Interrupted(f"batch interrupted at prompt {k}/{len(prompts)} ({prompt!r}); rerun the same "
                              "command to continue: finished prompts are skipped, this one resumes from its "
                              "checkpoint") from None
        except Exception as e:  # isolate every failure, out-of-memory included
            record.update(failure(e))
            result.failed += 1
            log(f"    failed: {record['error']}")
        record["seconds"] = round(time.perf_counter() - start, 2)
        append_manifest(manifest, record)
    return result
