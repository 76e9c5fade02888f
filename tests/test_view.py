"""Export between formats and `lodsgs view` / `--view` without a browser (the browser sees them in test_browser.py)."""

from __future__ import annotations

import gzip

import browser
import pytest
import torch
from typer.testing import CliRunner

from lodsgs import api
from lodsgs.cli import app
from lodsgs.errors import LodsgsError
from lodsgs.splats.io import load_splats, write_ply
from lodsgs.splats.model import Splats
from lodsgs.view import LiveView, Viewer, checkpoint_splats, load_target

runner = CliRunner()


def random_splats(n: int = 400, degree: int = 1, seed: int = 0) -> Splats:
    g = torch.Generator().manual_seed(seed)
    s = Splats.random_ball(n, radius=0.8, seed=seed, sh_degree=degree)
    s.params["shN"].data = torch.rand(s.params["shN"].shape, generator=g) - 0.5
    s.params["scales"].data = torch.rand(n, 3, generator=g) * 5 - 6
    s.params["opacities"].data = torch.rand(n, generator=g) * 8 - 4
    s.params["sh0"].data = torch.rand(n, 1, 3, generator=g) * 3 - 1.5
    s.params["quats"].data = torch.randn(n, 4, generator=g) * 2  # unnormalized, every orientation
    return s


def test_export_cli_converts_between_every_format(tmp_path):
    s = random_splats(degree=0)
    write_ply(s, tmp_path / "a.ply")
    for args, target in ((["--format", "spz"], "a.spz"), (["-f", "splat"], "a.splat"),
                         (["-f", "ply", "-o", str(tmp_path / "b.ply")], "b.ply"),
                         (["-f", "spz-v2", "-o", str(tmp_path / "v2.spz")], "v2.spz")):
        src = tmp_path / ("a.spz" if target == "b.ply" else "a.ply")
        result = runner.invoke(app, ["export", str(src), *args])
        assert result.exit_code == 0, result.output
        back = load_splats(tmp_path / target)
        assert back.num == s.num
    assert (load_splats(tmp_path / "b.ply").means - s.means).abs().max() < 1e-3
    assert (tmp_path / "a.spz").read_bytes()[:8] == b"NGSP\x04\0\0\0"  # spz: version 4
    assert gzip.decompress((tmp_path / "v2.spz").read_bytes())[:8] == b"NGSP\x02\0\0\0"  # spz-v2: version 2, gzip
    result = runner.invoke(app, ["export", str(tmp_path / "a.spz"), "-f", "spz"])
    assert result.exit_code == 2 and "is the input; give --out" in result.output


@pytest.fixture
def tiny_cfg(tiny_config):
    return tiny_config("latent", "run.view_every=2", "run.checkpoint_every=2", "run.keep_checkpoints=true")


def counted_pushes(viewer: Viewer, monkeypatch) -> list[int]:
    """The number of splat counts ``viewer.show`` was given, one per push to the browser."""
    pushed: list[int] = []
    real = viewer.show
    monkeypatch.setattr(viewer, "show", lambda splats: (pushed.append(splats.num), real(splats))[1])
    return pushed


def test_live_view_gets_the_splats_every_n_steps(tiny_cfg, tmp_path, monkeypatch):
    viewer = Viewer("127.0.0.1", browser.free_port(), tiny_cfg.camera)
    pushed = counted_pushes(viewer, monkeypatch)
    try:
        live = LiveView(viewer, tiny_cfg.run.view_every)
        run = api.run("a corgi", tiny_cfg, tmp_path, quiet=True, on_step=live).run_dir
        assert len(pushed) == 6 // 2 + 1  # steps 2, 4, 6, and the final splats
        assert "done" in viewer.panel.content and "6 / 6" in viewer.panel.content
    finally:
        viewer.close()
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.pt")) == ["step_00002.pt", "step_00004.pt"]
    assert (run / "splats.spz").read_bytes()[:8] == b"NGSP\x04\0\0\0"  # a run writes .spz version 4


def test_batch_live_view_shows_each_prompt(tiny_cfg, tmp_path, monkeypatch):
    from lodsgs.batch import run_batch

    viewer = Viewer("127.0.0.1", browser.free_port(), tiny_cfg.camera)
    pushed = counted_pushes(viewer, monkeypatch)
    try:
        result = run_batch(["a corgi", "a cat"], tiny_cfg, tmp_path,
                           on_step=LiveView(viewer, tiny_cfg.run.view_every))
        assert result.done == 2 and len(pushed) == 2 * (6 // 2 + 1)
        assert viewer.panel.content.startswith("**a cat**")  # the prompt running (here: the last one)
    finally:
        viewer.close()


def test_view_loads_runs_files_and_unfinished_runs(tiny_cfg, tmp_path, monkeypatch):
    run = api.run("a corgi", tiny_cfg, tmp_path, quiet=True).run_dir
    t = load_target(run)
    assert t.title == "a corgi" and t.facts["steps"] == 6 and len(t.checkpoints) == 2
    assert t.camera.eval_radius == tiny_cfg.camera.eval_radius and t.background == tuple(tiny_cfg.render.background)
    for name in ("splats.ply", "splats.splat", "splats.spz"):
        assert load_target(run / name).splats.num == t.splats.num
    viewer = Viewer("127.0.0.1", browser.free_port(), t.camera)
    pushed = counted_pushes(viewer, monkeypatch)
    try:
        slider = viewer.add_checkpoints(t.checkpoints, t.splats)
        slider.value = 0  # as when the user drags it: the step-2 splats are pushed
        assert pushed == [checkpoint_splats(t.checkpoints[0]).num]
        assert viewer.checkpoint_label.content == "showing: step 2"
    finally:
        viewer.close()
    for name in ("splats.ply", "metrics.json"):  # an interrupted run: its last checkpoint is shown
        (run / name).unlink()
    assert load_target(run).facts == {"status": "unfinished"}
    with pytest.raises(LodsgsError, match="not a run folder"):
        load_target(tmp_path)
    result = runner.invoke(app, ["view", str(tmp_path / "nothing.ply")])
    assert result.exit_code == 2 and "no such file" in result.output
    (tmp_path / "x.txt").write_text("hi")
    result = runner.invoke(app, ["view", str(tmp_path / "x.txt")])
    assert result.exit_code == 2 and "not a splat file" in result.output
