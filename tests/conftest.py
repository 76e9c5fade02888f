"""Shared fixtures: tiny random priors in the diffusers layout, built once per test session."""

import pytest

from lodsgs.prior.tiny import build_tiny_prior


@pytest.fixture(scope="session")
def tiny_prior_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("priors")
    return {kind: str(build_tiny_prior(root / kind, kind)) for kind in ("latent", "pixel")}
