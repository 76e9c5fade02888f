"""Schedules follow the run's length: every shipped preset, run short and long on a tiny prior, densifies and
anneals t_max inside the run (seen in its log), and its own step count puts every window inside the run."""

from __future__ import annotations

import os

import numpy as np
import pytest

from lodsgs.config import at_step, load_config, presets
from lodsgs.names import SHAPES_DIR

PRESETS_3D = [p for p in presets() if not p.startswith(("image2d", "edit2d"))]
SMALL = ["run.batch=1", "camera.width=16", "camera.height=16", "init.num=64", "densify.max_gaussians=256",
         "run.log_every=5", "run.turntable_frames=2", "run.turntable_size=16"]


def preset_config(name: str, prior_dir: str, tmp_path, *extra: str):
    """A shipped preset (or the shapes prior's own profile, as a file) on the tiny prior, small and cheap; an
    image preset gets a reference picture."""
    config = str(SHAPES_DIR / "lodsgs.yaml") if name == "shapes-profile" else name
    sets = [f"prior.model={prior_dir}", *SMALL, *extra]
    if name == "image_lods":
        import imageio.v2 as imageio
        picture = np.zeros((32, 32, 4), np.uint8)
        picture[8:24, 8:24] = (220, 30, 30, 255)
        imageio.imwrite(tmp_path / "ref.png", picture)
        sets += [f"image.path={tmp_path / 'ref.png'}", "init.kind=image"]
    return load_config(config, sets)


def test_the_shipped_presets_are_the_ones_checked():
    assert set(PRESETS_3D) == {"fast", "image_lods", "lods_embedding", "lods_lora", "sds"}


@pytest.mark.parametrize("name", [*PRESETS_3D, "shapes-profile"])
def test_every_window_of_a_preset_lies_inside_its_own_run(name, tiny_prior_dirs, tmp_path):
    """At the preset's own step count (2,500 for the paper's): the refines and the t_max anneal fall inside."""
    from lodsgs.splats.densify import strategy_for

    cfg = preset_config(name, tiny_prior_dirs["pixel"], tmp_path)
    steps = cfg.run.steps
    strategy = strategy_for(cfg.densify, steps)
    refines = [s for s in range(1, steps + 1) if strategy.is_refine(s)]
    assert refines and refines[-1] <= steps, (name, steps)
    assert 0 < at_step(cfg.guidance.anneal_at, steps) <= steps


@pytest.mark.slow
@pytest.mark.parametrize("steps", [60, 300])
@pytest.mark.parametrize("name", [*PRESETS_3D, "shapes-profile"])
def test_a_shortened_run_keeps_its_schedule(name, steps, tiny_prior_dirs, tmp_path):
    """``--steps N`` keeps the preset's shape: the log shows refines and a falling t_max within N steps."""
    from lodsgs.api import run
    from lodsgs.splats.densify import strategy_for

    cfg = preset_config(name, tiny_prior_dirs["pixel"], tmp_path, f"run.steps={steps}")
    log = run("a red cube", cfg, None, quiet=True).log
    strategy = strategy_for(cfg.densify, steps)
    assert log[-1]["step"] == steps
    assert log[-1]["refines"] == sum(strategy.is_refine(s) for s in range(1, steps + 1)) > 0, log[-1]
    assert log[-1]["t_max"] < log[0]["t_max"], [r["t_max"] for r in log]


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("LODSGS_EXHAUSTIVE"), reason="make test-claims: every preset's own count")
@pytest.mark.parametrize("name", [*PRESETS_3D, "shapes-profile"])
def test_a_preset_at_its_own_step_count_densifies_and_anneals(name, tiny_prior_dirs, tmp_path):
    from lodsgs.api import run

    cfg = preset_config(name, tiny_prior_dirs["pixel"], tmp_path)
    log = run("a red cube", cfg, None, quiet=True).log
    assert log[-1]["refines"] > 0 and log[-1]["t_max"] < log[0]["t_max"]
