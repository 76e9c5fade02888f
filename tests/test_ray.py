"""`lodsgs batch --ray` on a local Ray (2 CPUs) with the shapes prior and a few steps: failures isolated, a
killed worker retried from its checkpoint, reruns skip, results match the local batch. A two-node cluster is
in test_ray_cluster.py."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch
from raytools import SHORT, freeze_mid_prompt, manifest, sets, wait_for
from typer.testing import CliRunner

from lodsgs.batch import run_batch
from lodsgs.cli import app, optional_ray_address
from lodsgs.config import load_config
from lodsgs.preflight import run_name
from lodsgs.splats.io import read_ply

ray = pytest.importorskip("ray")
runner = CliRunner()


def test_unreachable_cluster_is_one_line(tmp_path):
    (tmp_path / "p.txt").write_text("a red cube\n")
    result = runner.invoke(app, ["batch", str(tmp_path / "p.txt"), "--out", str(tmp_path), "--ray", "127.0.0.1:9",
                                 "--set", "prior.model=shapes"])
    assert result.exit_code == 2 and "cannot reach a Ray cluster at '127.0.0.1:9'" in result.output


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_batch_isolates_bad_prompts_skips_done_and_matches_local(local_ray, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\na purple dragon\na blue torus\na red cube\n")
    out = tmp_path / "ray"
    args = ["batch", str(prompts), "--out", str(out), "--ray", "local", *sets(SHORT)]
    first = runner.invoke(app, args)
    assert first.exit_code == 1, first.output  # one prompt failed
    m = manifest(out)
    assert {p: r["status"] for p, r in m.items()} == {"a red cube": "done", "a blue torus": "done",
                                                       "a purple dragon": "failed"}
    assert "purple" in m["a purple dragon"]["error"] and m["a purple dragon"]["node"]  # failed in a worker
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 3  # the duplicate ran once, no retries
    second = runner.invoke(app, args)
    assert "skip (done): a red cube" in second.output and "skip (done): a blue torus" in second.output
    # the same prompts through the local batch give the same splats
    cfg = load_config(None, SHORT)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a Ray worker runs (one CPU each): the same arithmetic, so the same splats
    try:
        run_batch(["a red cube", "a blue torus"], cfg, tmp_path / "local")
    finally:
        torch.set_num_threads(threads)
    for prompt in ("a red cube", "a blue torus"):
        a = read_ply(out / run_name(prompt, 0) / "splats.ply").means.detach().numpy()
        b = read_ply(tmp_path / "local" / run_name(prompt, 0) / "splats.ply").means.detach().numpy()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_killed_worker_is_retried_from_its_checkpoint(local_ray, tmp_path):
    import psutil

    from lodsgs.ray_batch import run_batch_ray

    cfg = load_config(None, [*SHORT, "run.steps=60", "run.checkpoint_every=5"])
    out = tmp_path / "ray"
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=run_batch_ray(["a green cone"], cfg, out, "local",
                                                                           0, 1, 2, log=print, progress=False)))
    thread.start()
    worker, run_dir = freeze_mid_prompt(psutil.Process(), timeout_s=300)  # ray.init started Ray under this process
    assert run_dir.name == run_name("a green cone", 0)
    worker.kill()  # as the OOM killer or a lost node would; frozen until now, so it had not finished
    thread.join(timeout=300)
    assert not thread.is_alive(), "the batch did not finish within 300 s of the kill"
    assert result["r"].done == 1 and result["r"].failed == 0
    record = manifest(out)["a green cone"]
    assert record["status"] == "done" and record["resumed"] is True
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 60


def test_ray_flag_without_address_means_local():
    assert optional_ray_address(["batch", "p.txt", "--ray"]) == ["batch", "p.txt", "--ray", "local"]
    assert optional_ray_address(["batch", "--ray", "p.txt"]) == ["batch", "--ray", "local", "p.txt"]
    assert optional_ray_address(["batch", "p.txt", "--ray", "auto"]) == ["batch", "p.txt", "--ray", "auto"]
    assert optional_ray_address(["batch", "p.txt", "--ray", "10.0.0.1:6379"])[-1] == "10.0.0.1:6379"


@pytest.mark.slow
def test_ctrl_c_on_the_driver_checkpoints_running_prompts(tmp_path):
    """A real SIGINT to `lodsgs batch --ray`: exit 130, and the running prompt saved a checkpoint though its
    periodic one was far away."""
    import os
    import signal
    import subprocess
    import sys

    import torch

    (tmp_path / "p.txt").write_text("a red cube\n")
    out = tmp_path / "out"
    settings = [*SHORT, "run.steps=5000", "run.checkpoint_every=4000", "run.log_every=5"]
    cmd = [sys.executable, "-m", "lodsgs", "batch", str(tmp_path / "p.txt"), "--ray", "--out", str(out),
           *sets(settings)]
    # a shell's background job starts with SIGINT ignored, which its children inherit: restore the default
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "200"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = out / run_name("a red cube", 0) / "log.jsonl"
    try:
        wait_for(lambda: log.exists() and len(log.read_text().splitlines()) >= 2, 180, "the prompt to start running")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert "running prompts checkpointed" in output and "rerun the same command" in output
    ckpt = torch.load(log.parent / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert 10 <= ckpt["step"] < 4000
