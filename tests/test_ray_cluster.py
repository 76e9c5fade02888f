"""`lodsgs batch --ray ADDRESS` against a two-node Ray cluster on this machine (ray.cluster_utils.Cluster, one
CPU a node, so one worker a node), and the batch finishing after one node is lost mid-prompt."""

from __future__ import annotations

import json

import psutil
import pytest
from raytools import SHORT, freeze_mid_prompt, manifest, sets
from typer.testing import CliRunner

from lodsgs.cli import app
from lodsgs.config import load_config
from lodsgs.preflight import run_name

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow
FAST = [*SHORT, "init.kind=ball"]  # no prior samples at the start: the nodes' time goes to the steps


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node, 1 CPU and a small object store each; yields (cluster, worker node)."""
    from ray.cluster_utils import Cluster

    small = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**small, "include_dashboard": False})
    worker = cluster.add_node(**small)
    cluster.wait_for_nodes()
    yield cluster, worker
    cluster.shutdown()


def raylet(node) -> psutil.Process:
    from ray._private import ray_constants

    return psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)


def test_batch_through_the_cluster_address_uses_both_nodes(two_nodes, tmp_path):
    cluster, _ = two_nodes
    (tmp_path / "p.txt").write_text("a red cube\na blue torus\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["batch", str(tmp_path / "p.txt"), "--out", str(out), "--ray", cluster.address,
                                      *sets(FAST)])
    assert result.exit_code == 0, result.output
    assert "Ray: 2 workers (1 CPU, 0 GPU each) for 2 prompts" in result.output  # 1 CPU a node: one on each
    assert {p: r["status"] for p, r in manifest(out).items()} == {"a red cube": "done", "a blue torus": "done"}
    assert not ray.is_initialized()  # the batch joined the cluster and left it; the cluster itself stays up


def test_a_node_lost_mid_prompt_resumes_that_prompt_on_the_other(two_nodes, tmp_path):
    """The worker node dies (SIGKILL to its raylet, then to its frozen worker: no goodbye) while its prompt is
    past a checkpoint. Ray's own retries run out before the node is declared dead, so the driver sends the
    prompt again on a new actor, placed on the head once the head's worker is idle and released, and the
    prompt resumes there from its checkpoint. Frozen before the kill, it cannot have finished first."""
    import threading

    from lodsgs.ray_batch import run_batch_ray

    cluster, worker = two_nodes
    prompts = ["a red cube", "a blue torus", "a green cone"]
    cfg = load_config(None, [*FAST, "run.steps=40", "run.checkpoint_every=5"])
    out, result = tmp_path / "out", {}
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:  # joined here, in the main thread; the batch in the thread then uses this connection
        thread = threading.Thread(target=lambda: result.update(r=run_batch_ray(
            prompts, cfg, out, cluster.address, 0, 1, 2, log=print, progress=False)))
        thread.start()
        frozen, run_dir = freeze_mid_prompt(raylet(worker), timeout_s=300)
        cluster.remove_node(worker, allow_graceful=False)
        frozen.kill()  # the node's last process: it would never run again
        thread.join(timeout=600)
        assert not thread.is_alive(), "the batch did not finish within 600 s of losing the node"
    finally:
        ray.shutdown()
    assert (result["r"].done, result["r"].failed) == (3, 0)
    records = manifest(out)
    lost = next(p for p in prompts if run_name(p, 0) == run_dir.name)
    assert {p: (r["status"], r["resumed"]) for p, r in records.items()} == {
        p: ("done", p == lost) for p in prompts}  # only the lost node's prompt resumed
    assert all(json.loads((out / run_name(p, 0) / "metrics.json").read_text())["steps"] == 40 for p in prompts)
