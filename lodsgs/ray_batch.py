"""``lodsgs batch --ray``: the same batch spread over a Ray cluster (or a local Ray on one machine).

One actor per worker slot loads the prior once and runs prompts one after another (Ray tasks that need a
GPU get a fresh process per call by default, which would reload Stable Diffusion for every prompt). Ray's
actor restarts re-send the prompt of a process that died (killed, out of host memory) up to
``--max-retries`` times, and the retried prompt resumes from its last checkpoint; when those retries run
out first (a lost node is declared dead only after missed heartbeats), the driver sends the prompt again on a
new actor, up to ``--max-retries`` times as well. An actor with nothing left to run is released, so one
restarting after its node was lost finds a slot. A prompt that fails inside lodsgs (a bad prompt, CUDA out of
memory) comes back as a failed record and is not retried. The driver writes the same ``manifest.jsonl`` as
the local batch, so either can resume the other's work.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

from lodsgs.batch import BatchResult, already_done, append_manifest, failure, read_manifest
from lodsgs.config import Config, config_hash
from lodsgs.errors import LodsgsError


def require_ray():
    try:
        import ray
    except ImportError:
        raise LodsgsError("--ray needs Ray, an optional extra: pip install 'lodsgs[ray]'") from None
    return ray


class PromptWorker:
    """Runs prompts on one worker slot; the prior is loaded on the first prompt and kept."""

    def __init__(self, cfg: Config, out: str, image_cfg: Config | None = None):
        self.cfg, self.out, self.prior, self.image_cfg = cfg, Path(out), None, image_cfg

    def run(self, prompt: str) -> dict[str, Any]:
        """Generate one prompt; every lodsgs failure is returned as a record (never retried by Ray)."""
        import ray

        from lodsgs.api import run_or_resume
        from lodsgs.batch import split_entry
        from lodsgs.trainer import Interrupted, load_prior, resolve_device

        start = time.perf_counter()
        record: dict[str, Any] = {"node": ray.util.get_node_ip_address()}
        try:
            if self.prior is None:
                self.prior = load_prior(self.cfg, resolve_device(self.cfg.run.device))
            text, cfg = split_entry(prompt, self.cfg, self.image_cfg)  # "ref.png<TAB>prompt": image-to-3D
            run_dir, how = run_or_resume(text, cfg, self.out, quiet=True, prior=self.prior,
                                         should_stop=ray.get_runtime_context().is_canceled)
            record.update(status="done", run_dir=str(run_dir), ply=str(run_dir / "splats.ply"),
                          resumed=how == "resumed")
        except Interrupted as e:
            record.update(status="interrupted", error=str(e))
        except Exception as e:  # isolate every failure, out-of-memory included
            record.update(failure(e))
        record["seconds"] = round(time.perf_counter() - start, 2)
        return record


def connect(ray, address: str) -> bool:
    """Join the cluster at ``address`` ('auto': the one `ray start` made here) or start a local Ray ('local');
    returns whether this call started Ray (and so should shut it down)."""
    if ray.is_initialized():
        return False
    if address not in ("local", "auto") and not address.startswith("ray://"):
        reachable(address)  # Ray itself keeps retrying an address where nothing listens
    try:
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except ConnectionError as e:
        raise LodsgsError(f"cannot reach a Ray cluster at {address!r} ({e}); start one with `ray start --head`, "
                          "or use --ray alone for a local Ray") from None
    return True


def reachable(address: str, timeout_s: float = 5.0) -> None:
    """A one-line error unless something accepts TCP connections at HOST:PORT."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise LodsgsError(f"cannot reach a Ray cluster at {address!r} ({getattr(e, 'strerror', None) or e}); "
                          "start one with `ray start --head`, or use --ray alone for a local Ray") from None


def slots(ray, gpus_per_run: float, cpus_per_run: float) -> int:
    """How many prompts the cluster can run at once with these resources per run."""
    total = ray.cluster_resources()
    if gpus_per_run > 0 and total.get("GPU", 0) < gpus_per_run:
        raise LodsgsError(f"--gpus-per-run {gpus_per_run:g} but the Ray cluster has {total.get('GPU', 0):g} GPUs; "
                          "use --gpus-per-run 0 to run on CPUs")
    by_cpu = int(total.get("CPU", 0) // cpus_per_run) if cpus_per_run > 0 else 10**6
    by_gpu = int(total.get("GPU", 0) // gpus_per_run) if gpus_per_run > 0 else 10**6
    return max(1, min(by_cpu, by_gpu))


def run_batch_ray(prompts: list[str], cfg: Config, out: Path, address: str = "local",
                  gpus_per_run: float | None = None, cpus_per_run: float = 1.0, max_retries: int = 2,
                  log=print, progress: bool = True, image_cfg: Config | None = None) -> BatchResult:
    """Every prompt not already done with these settings, one actor per slot; the manifest as in `batch`."""
    ray = require_ray()
    if out.exists() and not out.is_dir():
        raise LodsgsError(f"--out {str(out)!r} is a file; give a folder for the batch")
    out.mkdir(parents=True, exist_ok=True)
    manifest, digest = out / "manifest.jsonl", config_hash(cfg)
    records = read_manifest(manifest)
    result = BatchResult()
    todo = []
    for prompt in prompts:
        if already_done(records.get(prompt, {}), digest):
            result.skipped += 1
            log(f"skip (done): {prompt}")
        else:
            todo.append(prompt)
    if not todo:
        return result
    from lodsgs.prior.diffusion import locate, resolve_model

    # once, up front (cached or downloaded here): a prior that cannot be found fails the batch in one line
    locate(resolve_model(cfg.prior.model), cfg.prior.revision)
    started = connect(ray, address)
    actors: list = []
    pending: dict = {}  # object ref -> (prompt, actor, start time)
    try:
        if gpus_per_run is None:
            gpus_per_run = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        n = min(slots(ray, gpus_per_run, cpus_per_run), len(todo))
        worker = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_restarts=max_retries,
                            max_task_retries=max_retries)(PromptWorker)

        def new_actor():
            actors.append(worker.remote(cfg, str(out), image_cfg))
            return actors[-1]

        log(f"Ray: {n} workers ({cpus_per_run:g} CPU, {gpus_per_run:g} GPU each) for {len(todo)} prompts")
        _drive(ray, [new_actor() for _ in range(n)], new_actor, pending, deque(todo), cfg, digest, manifest, result,
               log, progress, max_retries)
    except KeyboardInterrupt:
        from lodsgs.trainer import Interrupted
        saved = stop_running(ray, pending, log)
        raise Interrupted(f"batch interrupted ({result.done} done this time, {saved} running prompts checkpointed); "
                          "rerun the same command to continue: finished prompts are skipped, the others resume "
                          "from their last checkpoint") from None
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()
    return result


def stop_running(ray, pending: dict, log, timeout_s: float = 60.0) -> int:
    """Ask every running prompt to stop as Ctrl-C would (it saves a checkpoint first) and wait up to
    ``timeout_s``; returns how many stopped in time (a second Ctrl-C stops waiting)."""
    if not pending:
        return 0
    log(f"stopping {len(pending)} running prompts (each saves a checkpoint first; Ctrl-C again to kill them)")
    for ref in pending:
        ray.cancel(ref)
    deadline, done = time.monotonic() + timeout_s, []
    while len(done) < len(pending) and time.monotonic() < deadline:
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
    return len(done)


def _drive(ray, actors: list, new_actor, pending: dict, queue: deque, cfg: Config, digest: str, manifest: Path,
           result: BatchResult, log, progress: bool, max_retries: int) -> None:
    """Keep every actor busy until the queue is empty, recording each prompt as it finishes; an actor that
    died more often than its restarts allow is replaced, and its prompt sent again up to ``max_retries``
    times (it resumes from its checkpoint) before it counts as failed."""
    from lodsgs.progress import BatchProgress

    def submit(actor) -> None:
        if queue:
            prompt = queue.popleft()
            pending[actor.run.remote(prompt)] = (prompt, actor, time.perf_counter())
        else:  # an idle actor keeps its CPUs/GPU: free them for an actor restarting after its node was lost
            ray.kill(actor, no_restart=True)

    lost: dict[str, int] = {}  # prompt -> times its worker was lost and the driver sent it again
    for actor in actors:
        submit(actor)
    with BatchProgress(len(queue) + len(pending), quiet=not progress) as bar:
        while pending:
            bar.update(result.done, len(pending), result.failed)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # short: Ctrl-C is seen between waits
            if not ready:
                continue
            ref = ready[0]
            prompt, actor, start = pending.pop(ref)
            base = {"prompt": prompt, "seed": cfg.run.seed, "method": cfg.guidance.method, "config_hash": digest}
            try:
                record = {**base, **ray.get(ref)}
            except ray.exceptions.RayError as e:  # the worker died more often than Ray's own retries allow
                ray.kill(actor, no_restart=True)
                if lost.get(prompt, 0) < max_retries:  # e.g. its node is gone: Ray's retries run out before the
                    lost[prompt] = lost.get(prompt, 0) + 1  # node is declared dead, so run it again on a new actor
                    queue.appendleft(prompt)
                    log(f"worker lost ({type(e).__name__}): {prompt}; again from its last checkpoint")
                    submit(new_actor())
                    continue
                record = {**base, "status": "failed", "error": f"worker lost: {type(e).__name__}",
                          "seconds": round(time.perf_counter() - start, 2)}
                actor = new_actor() if queue else actor
            if record["status"] == "done":
                result.done += 1
                log(f"done: {prompt} ({record['seconds']:.0f} s on {record.get('node')})")
            elif record["status"] == "failed":
                result.failed += 1
                log(f"failed: {prompt}: {record['error']}")
            append_manifest(manifest, record)
            submit(actor)
        bar.update(result.done, 0, result.failed)
