"""Shared fixtures: tiny random priors in the diffusers layout (built once per session), the tiny run settings
every end-to-end test uses, Ctrl-C at a chosen step, and a guard that fails any test reaching off the machine."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable

os.environ["HF_HUB_OFFLINE"] = "1"  # no test reaches the Hugging Face Hub (read when huggingface_hub is imported)

import pytest  # noqa: E402
import torch  # noqa: E402

from lodsgs.prior.tiny import build_tiny_prior  # noqa: E402

# one torch thread: "over 3 s" (what earns the `slow` marker) means the same on every machine; a test already
# marked slow gets the machine's threads back (slow_threads below), so the whole suite stays within its budget.
# Under pytest-xdist (`make test`: -n 2) the cores are shared out among the workers: two workers at two threads
# each on two cores would time OpenMP's barriers, not the tests.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
ONE_THREAD, ALL_THREADS = 1, max(1, torch.get_num_threads() // WORKERS)
if WORKERS > 1:  # the subprocesses a test starts (the CLI, benchmarks, Ray's workers) share out the cores too
    os.environ.setdefault("OMP_NUM_THREADS", str(ALL_THREADS))
torch.set_num_threads(ONE_THREAD)


@pytest.fixture(autouse=True)
def slow_threads(request):
    """Tests marked slow run on every core; the others on one, as their timing was judged."""
    if request.node.get_closest_marker("slow") is None:
        yield
        return
    torch.set_num_threads(ALL_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(ONE_THREAD)

# a run of a few steps at 32 px that still passes through checkpoints, densification and the annealing step
TINY = ("run.steps=6", "run.batch=2", "run.checkpoint_every=3", "run.turntable_frames=4", "run.turntable_size=32",
        "camera.width=32", "camera.height=32", "init.num=300", "densify.start=0.34", "densify.every=0.34",
        "densify.stop=0.84", "guidance.anneal_at=0.5")  # 6 steps: refines at step 4, t_max drops after step 3


@pytest.fixture(scope="session")
def tiny_prior_dirs(tmp_path_factory) -> dict[str, str]:
    """The tiny priors, each with a profile (lodsgs.yaml) that starts from a ball: the SD presets start from
    Shap-E, whose hub weights no test has (tests/test_starts.py runs that start on a tiny Shap-E)."""
    root = tmp_path_factory.mktemp("priors")
    dirs = {kind: build_tiny_prior(root / kind, kind) for kind in ("latent", "pixel")}
    for folder in dirs.values():
        (folder / "lodsgs.yaml").write_text("init:\n  kind: ball\n")
    return {kind: str(folder) for kind, folder in dirs.items()}


@pytest.fixture(scope="session")
def tiny_sets(tiny_prior_dirs) -> Callable[..., list[str]]:
    """``tiny_sets(kind, *extra, without=())``: the CLI's ``--set`` pairs for a TINY run on that tiny prior
    (``extra`` settings after TINY's, so they win; ``without`` drops TINY's settings of those keys)."""
    def sets(kind: str = "latent", *extra: str, without: tuple[str, ...] = ()) -> list[str]:
        chosen = [s for s in TINY if s.split("=")[0] not in without]
        return [arg for s in (f"prior.model={tiny_prior_dirs[kind]}", *chosen, *extra) for arg in ("--set", s)]
    return sets


@pytest.fixture(scope="session")
def tiny_config(tiny_prior_dirs) -> Callable:
    """``tiny_config(kind, *extra)``: the ``fast`` profile with TINY (then ``extra``) on that tiny prior."""
    from lodsgs.config import load_config

    def make(kind: str = "latent", *extra: str):
        return load_config("fast", [f"prior.model={tiny_prior_dirs[kind]}", *TINY, *extra])
    return make


@pytest.fixture
def sigint_at(monkeypatch):
    """``sigint_at(n)``: the next generate() receives a real SIGINT right after its step n, as from Ctrl-C."""
    import os
    import signal

    import lodsgs.trainer as gen

    def arm(step: int) -> None:
        real = gen.train_step

        def step_then_signal(cfg, s, device):
            logs = real(cfg, s, device)
            if s.step == step:
                os.kill(os.getpid(), signal.SIGINT)
            return logs
        monkeypatch.setattr(gen, "train_step", step_then_signal)
    return arm


# --- no network ------------------------------------------------------------------------------------

class NetworkBlocked(OSError):
    """What a test gets for reaching off the machine (an OSError, so callers fail as if offline)."""


def _own_addresses() -> set[str]:
    """This machine's interface addresses: traffic to them never leaves it (Ray binds the node's address)."""
    import psutil

    own = {socket.gethostname(), "localhost"}
    for addresses in psutil.net_if_addrs().values():
        own.update(a.address.split("%")[0] for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6))
    return own


OWN = _own_addresses()


def _is_address(host) -> bool:
    try:
        ipaddress.ip_address(str(host.decode() if isinstance(host, bytes) else host).split("%")[0])
    except ValueError:
        return False
    return True


def _on_machine(host) -> bool:
    """Whether ``host`` (a name or an address) is this machine; any other name would need a DNS lookup."""
    host = host.decode() if isinstance(host, bytes) else host
    if not host or host in OWN:
        return True
    try:
        ip = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Fail the test that connects, or looks up a name, off this machine (loopback and the machine's own
    addresses stay allowed: Ray, the viewer and the browser tests use them). The call raises NetworkBlocked,
    and the test fails at teardown even if the code under test caught it. Subprocesses are not covered."""
    attempts: list[str] = []

    def refuse(what: str):
        attempts.append(what)
        raise NetworkBlocked(f"tests must not use the network: {what} (only loopback and this machine's addresses)")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _on_machine(address[0]):
            refuse(f"connect to {address!r}")
        return real_connect(self, address)

    def connect_ex(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _on_machine(address[0]):
            refuse(f"connect_ex to {address!r}")
        return real_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        if not _on_machine(host) and not _is_address(host):  # an address is checked where it is connected to
            refuse(f"name lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts  # a test of the guard itself clears it
    if attempts:
        pytest.fail(f"the test tried to use the network: {'; '.join(attempts)}", pytrace=False)
