"""Shared fixtures: tiny random priors in the diffusers layout, built once per test session."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # no test reaches the Hugging Face Hub (read when huggingface_hub is imported)

import pytest  # noqa: E402

from lodsgs.prior.tiny import build_tiny_prior  # noqa: E402


@pytest.fixture(scope="session")
def tiny_prior_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("priors")
    return {kind: str(build_tiny_prior(root / kind, kind)) for kind in ("latent", "pixel")}


@pytest.fixture
def sigint_at(monkeypatch):
    """``sigint_at(n)``: the next generate() receives a real SIGINT right after its step n, as from Ctrl-C."""
    import os
    import signal

    import lodsgs.generate as gen

    def arm(step: int) -> None:
        real = gen.train_step

        def step_then_signal(cfg, s, device):
            logs = real(cfg, s, device)
            if s.step == step:
                os.kill(os.getpid(), signal.SIGINT)
            return logs
        monkeypatch.setattr(gen, "train_step", step_then_signal)
    return arm
