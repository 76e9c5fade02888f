"""The loop's guards on the CPU: a diverging run stops in one line and writes nothing from the broken state, a step
out of memory is one line naming the settings that shrink it with a checkpoint saved first, log-scales are capped."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

import lodsgs.trainer as gen
from lodsgs import api
from lodsgs.cli import app
from lodsgs.errors import Diverged, OutOfMemory
from lodsgs.files import safe_load
from lodsgs.guards import FINITE_EVERY, check_step, nonfinite_state
from lodsgs.prior.guidance import Guidance
from lodsgs.splats.io import read_ply
from lodsgs.splats.model import Splats

WRITTEN_FROM_A_FINISHED_RUN = ("splats.ply", "splats.splat", "splats.spz", "metrics.json", "turntable.gif",
                               "turntable.mp4", "preview.png", "mesh.glb")


def run_folder(out: Path) -> Path:
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    return folder


def assert_whole_checkpoint(path: Path, step: int) -> None:
    ck = safe_load(path)
    assert ck["step"] == step
    for name, value in ck["splats"].items():
        assert torch.isfinite(value).all(), name
    assert ck["splats"]["scales"].abs().max() <= 30


def test_a_diverging_run_stops_in_one_line_and_keeps_the_last_good_checkpoint(tiny_sets, tmp_path):
    """optim.scales=10 (the range allows up to 10) drives log-scales past e^±30 within the tiny run: the check before
    the step-6 outputs stops it; the step-3 checkpoint stays, and nothing of a finished run is written."""
    result = CliRunner().invoke(app, ["generate", "a red cube", "--config", "fast", *tiny_sets("latent"), "--set",
                                      "optim.scales=10", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("lodsgs")]
    assert len(lines) == 1, result.output
    folder = run_folder(tmp_path)
    ckpt = folder / "checkpoints" / "last.pt"
    assert lines[0] == (f"lodsgs: error: diverged at step 6: splat scales ({lines[0].split('(')[1].split(')')[0]}); "
                        f"the last good checkpoint is {str(ckpt)!r}; try a lower optim.* lr")
    assert "non-finite or beyond e^±30" in lines[0]
    assert_whole_checkpoint(ckpt, 3)
    assert not [name for name in WRITTEN_FROM_A_FINISHED_RUN if (folder / name).exists()]
    assert not (folder / "progress").exists()


def test_diverging_in_memory_raises_the_same_error(tiny_config):
    cfg = tiny_config("latent", "optim.scales=10")
    with pytest.raises(Diverged, match=r"^diverged at step 6: splat scales .*; the last good checkpoint is none; "
                                       r"try a lower optim\.\* lr$") as e:
        api.run("a red cube", cfg, None, quiet=True)
    assert e.value.step == 6 and e.value.checkpoint is None


def test_a_non_finite_loss_stops_at_that_step(tiny_config, monkeypatch):
    """The logged loss is checked every step (it is already a float): step 2's NaN ends the run at step 2."""
    real = gen.train_step

    def nan_at_two(cfg, s, device):
        logs = real(cfg, s, device)
        return {**logs, "loss": math.nan} if s.step == 2 else logs

    monkeypatch.setattr(gen, "train_step", nan_at_two)
    with pytest.raises(Diverged, match=r"^diverged at step 2: loss = nan; the last good checkpoint is none"):
        api.run("a red cube", tiny_config("latent"), None, quiet=True)


def fake_state(n: int = 10, step: int = 1) -> SimpleNamespace:
    """What the guards read of a State: the splats and a guidance without learned parameters."""
    splats = Splats.random_ball(n, seed=0)
    return SimpleNamespace(splats=splats, step=step, guidance=SimpleNamespace(embedding=None, param_groups=lambda: []))


def test_the_state_check_names_what_went_wrong_and_is_due_every_few_steps():
    s = fake_state()
    assert nonfinite_state(s) is None
    with torch.no_grad():
        s.splats.params["sh0"][3] = math.inf
        s.splats.params["means"][0, 0] = 2e6  # finite, but beyond what a splat file holds
    s.splats.params["opacities"].grad = torch.full_like(s.splats.params["opacities"], math.nan)
    what = nonfinite_state(s)
    assert "splat means (1 of 30 values non-finite or beyond ±1e6 units)" in what
    assert "splat sh0 (3 of 30 values non-finite)" in what
    assert "the gradient of splat opacities (10 of 10 values non-finite)" in what
    cfg = SimpleNamespace(run=SimpleNamespace(steps=100))
    s.step = FINITE_EVERY - 1
    check_step(cfg, s, {"loss": 0.5})  # not due: the parameters are not read
    s.step = FINITE_EVERY
    with pytest.raises(Diverged, match=f"^diverged at step {FINITE_EVERY}: splat means"):
        check_step(cfg, s, {"loss": 0.5})


def test_max_scale_caps_every_log_scale_after_each_step():
    from lodsgs.config import DensifyConfig
    from lodsgs.splats.densify import Densifier

    s = fake_state(50)
    with torch.no_grad():
        s.splats.params["scales"][:5] = 40.0
    Densifier(DensifyConfig(max_scale=0.0), 10).cap_scales(s.splats)  # 0: off
    assert s.splats.params["scales"].max() == 40.0
    Densifier(DensifyConfig(max_scale=0.5, scene_scale=2.0), 10).cap_scales(s.splats)
    assert torch.allclose(s.splats.params["scales"].max(), torch.tensor(0.0))  # log(0.5 × 2)
    assert (s.splats.params["scales"][5:] < 0).all()  # the others untouched


def test_a_step_out_of_memory_is_one_line_and_a_checkpoint_that_resumes_exactly(tiny_sets, tiny_config, tmp_path,
                                                                                 monkeypatch):
    """The OOM hits step 5 inside the guidance, after the step drew its cameras, t and noise: those draws are put
    back, the state of step 4 is saved, and --resume then ends where an uninterrupted run ends."""
    cfg = tiny_config("latent")
    full = api.run("a red cube", cfg, tmp_path / "full", quiet=True).run_dir
    real = Guidance.forward

    def oom_at_step_five(self, x0, views, step, *args, **kwargs):
        out = real(self, x0, views, step, *args, **kwargs)
        if step == 4:  # the 0-based step under way: step 5
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 15.77 GiB total)")
        return out

    monkeypatch.setattr(Guidance, "forward", oom_at_step_five)
    result = CliRunner().invoke(app, ["generate", "a red cube", "--config", "fast", *tiny_sets("latent"),
                                      "--out", str(tmp_path / "cut"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("lodsgs")]
    folder = run_folder(tmp_path / "cut")
    ckpt = folder / "checkpoints" / "last.pt"
    assert lines == [f"lodsgs: error: out of memory in step 5 (CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0;"
                     " 15.77 GiB total)); shrink the step: run.batch (views per step, now 2), camera.width / "
                     "camera.height (now 32 × 32), densify.max_gaussians (now 200000; the splats have "
                     f"{safe_load(ckpt)['splats']['means'].shape[0]}); the checkpoint of step 4 is saved to "
                     f"{str(ckpt)!r} (--resume continues it with these settings where more memory is free; smaller "
                     "settings start a new run)"]
    assert_whole_checkpoint(ckpt, 4)
    assert not [name for name in WRITTEN_FROM_A_FINISHED_RUN if (folder / name).exists()]
    monkeypatch.setattr(Guidance, "forward", real)
    resumed = api.run("a red cube", cfg, tmp_path / "cut", resume=True, quiet=True).run_dir
    a, b = read_ply(full / "splats.ply"), read_ply(resumed / "splats.ply")
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)


def test_out_of_memory_in_memory_and_after_the_splats_changed(tiny_config, monkeypatch):
    """Without a run folder nothing is saved; an OOM after the optimizer step (in densification) saves nothing
    from the half-done step; one on a state gone non-finite is a divergence (GaussianDreamer #50)."""
    cfg = tiny_config("latent")
    real = gen.train_step

    def oom_in_densify(cfg, s, device):
        if s.step == 3:
            with torch.no_grad():
                s.splats.params["means"].add_(0.0)  # the optimizer step had begun
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return real(cfg, s, device)

    monkeypatch.setattr(gen, "train_step", oom_in_densify)
    with pytest.raises(OutOfMemory, match=r"^out of memory in step 4 \(CUDA .*\); shrink the step: run\.batch .*; "
                                          r"nothing was saved \(no run folder\)$") as e:
        api.run("a red cube", cfg, None, quiet=True)
    assert e.value.whole is False

    def oom_on_broken_splats(cfg, s, device):
        if s.step == 2:
            with torch.no_grad():
                s.splats.params["scales"].fill_(math.inf)
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 130141.69 GiB")
        return real(cfg, s, device)

    monkeypatch.setattr(gen, "train_step", oom_on_broken_splats)
    with pytest.raises(Diverged, match=r"^diverged at step 2: splat scales"):
        api.run("a red cube", cfg, None, quiet=True)
