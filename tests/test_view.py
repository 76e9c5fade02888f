"""`.spz` export and `lodsgs view` / `--view` without a browser (the browser sees them in test_browser.py)."""

from __future__ import annotations

import gzip
import struct

import browser
import pytest
import torch
from typer.testing import CliRunner

from lodsgs import api
from lodsgs.cli import app
from lodsgs.errors import LodsgsError
from lodsgs.splats.convention import flip_yz
from lodsgs.splats.io import load_splats, write_ply
from lodsgs.splats.model import Splats
from lodsgs.splats.spz import encode_spz, read_spz, write_spz
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


def test_spz_round_trip_within_stated_error(tmp_path):
    s = random_splats()
    write_spz(s, tmp_path / "a.spz")
    r = read_spz(tmp_path / "a.spz")
    assert r.sh_degree == 1 and r.num == s.num
    err = {k: (s.params[k] - r.params[k]).abs().max().item() for k in ("means", "scales", "sh0", "shN")}
    assert err["means"] <= 2**-13 + 1e-6
    assert err["scales"] <= 1 / 32 + 1e-5
    assert (s.rgb - r.rgb).abs().max() <= 0.0037
    assert err["shN"] <= 1 / 256 + 1e-5
    assert (torch.sigmoid(s.params["opacities"]) - torch.sigmoid(r.params["opacities"])).abs().max() <= 1 / 510 + 1e-5
    err_xyz, err_w = quaternion_errors(s, r)
    assert err_xyz.max() <= 1 / 255 + 1e-6 and err_w.max() <= W_BOUND
    write_ply(s, tmp_path / "a.ply")
    assert (tmp_path / "a.spz").stat().st_size < 0.25 * (tmp_path / "a.ply").stat().st_size  # even random data


# the file stores x, y, z of the unit quaternion (w >= 0) at round(127.5·c + 127.5), so each is off by at most half a
# step, 1/255; w is rebuilt as sqrt(1 − x² − y² − z²), whose error |x|² − |x'|² ≤ 2·√3·(1/255) + 3/255² reaches
# sqrt of that near w = 0 (the rebuilt w clips at 0): ≈ 0.117
W_BOUND = (2 * 3**0.5 / 255 + 3 / 255**2) ** 0.5


def quaternion_errors(original: Splats, decoded: Splats) -> tuple[torch.Tensor, torch.Tensor]:
    """Per Gaussian: the largest x/y/z error and the w error, in the file's frame, up to the quaternion's sign."""
    def in_file(s: Splats) -> torch.Tensor:
        return flip_yz({k: v.detach() for k, v in s.params.items()})["quats"]
    a, b = torch.nn.functional.normalize(in_file(original), dim=-1), in_file(decoded)
    a = a * torch.where(a[:, :1] < 0, -1.0, 1.0)  # the file keeps w >= 0
    return (a[:, 1:] - b[:, 1:]).abs().amax(-1), (a[:, 0] - b[:, 0]).abs()


def test_spz_quaternion_bound_is_tight(tmp_path):
    """A quaternion whose x, y, z bytes sit just past half a step (195.5, 200.5, 205.5) and whose w is just
    above 0 after rounding up: its w comes back 0.116 off, near W_BOUND; no random quaternion gets there."""
    xyz = (torch.tensor([195.5, 200.5, 205.5], dtype=torch.float64) + 1e-4) / 127.5 - 1
    w = (1 - xyz.square().sum()).sqrt()
    wf, xf, yf, zf = w.item(), *xyz.tolist()
    quats = torch.tensor([[xf, -wf, zf, -yf], [1.0, 0.0, 0.0, 0.0]])  # world quaternion of file (w, x, y, z)
    s = Splats({"means": torch.zeros(2, 3), "scales": torch.zeros(2, 3), "opacities": torch.zeros(2), "quats": quats,
                "sh0": torch.zeros(2, 1, 3)})
    write_spz(s, tmp_path / "q.spz")
    err_xyz, err_w = quaternion_errors(s, read_spz(tmp_path / "q.spz"))
    assert err_xyz.max() <= 1 / 255 + 1e-6
    assert 0.115 < err_w[0] <= W_BOUND and err_w[1] < 1e-6, err_w


@pytest.mark.parametrize("degree, ply_bytes, spz_bytes", [(0, 68, 19), (3, 248, 19 + 45)])
def test_bytes_a_gaussian_in_each_file(tmp_path, degree, ply_bytes, spz_bytes):
    """.ply: 17 float32 (position, normal, DC colour, opacity, scale, rotation) + 45 at SH degree 3; .spz before
    gzip: 9 position + 1 alpha + 3 colour + 3 scale + 3 rotation bytes + 1 byte a higher SH coefficient."""
    s = random_splats(n=100, degree=degree)
    write_ply(s, tmp_path / "a.ply")
    data = (tmp_path / "a.ply").read_bytes()
    assert len(data) - (data.index(b"end_header\n") + len(b"end_header\n")) == 100 * ply_bytes
    assert len(gzip.decompress(encode_spz(s))) == 16 + 100 * spz_bytes


def test_spz_header_is_version_2_and_bytes_are_stable():
    s = random_splats(n=10, degree=0)
    data = encode_spz(s)
    assert data == encode_spz(s)  # gzip without a timestamp: same splats, same file
    magic, version, n, degree, frac, flags, _ = struct.unpack_from("<IIIBBBB", gzip.decompress(data))
    assert (magic, version, n, degree, frac, flags) == (0x5053474E, 2, 10, 0, 12, 0)
    assert len(gzip.decompress(data)) == 16 + 10 * (9 + 1 + 3 + 3 + 3)


def test_spz_in_file_convention_like_the_ply(tmp_path):
    """The .spz stores the same y-down positions as the .ply, so one viewer fix serves both."""
    s = Splats({"means": torch.tensor([[0.25, 0.5, 0.75]]), "scales": torch.zeros(1, 3), "opacities": torch.zeros(1),
                "quats": torch.tensor([[1.0, 0, 0, 0]]), "sh0": torch.zeros(1, 1, 3)})
    raw = gzip.decompress(encode_spz(s))
    xyz = [int.from_bytes(raw[16 + 3 * i: 19 + 3 * i], "little", signed=True) / 4096 for i in range(3)]
    assert xyz == [0.25, -0.5, -0.75]


def test_spz_refuses_other_versions_and_damage(tmp_path):
    s = random_splats(n=5, degree=0)
    raw = bytearray(gzip.decompress(encode_spz(s)))
    (tmp_path / "v3.spz").write_bytes(gzip.compress(bytes(raw[:4]) + bytes([3]) + bytes(raw[5:])))
    with pytest.raises(LodsgsError, match="not an .spz of version 2"):
        read_spz(tmp_path / "v3.spz")
    (tmp_path / "cut.spz").write_bytes(gzip.compress(bytes(raw[:-3])))
    with pytest.raises(LodsgsError, match="does not hold the 5 splats"):
        read_spz(tmp_path / "cut.spz")
    (tmp_path / "plain.spz").write_bytes(b"NGSP....")
    with pytest.raises(LodsgsError, match="not a gzip stream"):
        read_spz(tmp_path / "plain.spz")


def test_export_cli_converts_between_every_format(tmp_path):
    s = random_splats(degree=0)
    write_ply(s, tmp_path / "a.ply")
    for args, target in ((["--format", "spz"], "a.spz"), (["-f", "splat"], "a.splat"),
                         (["-f", "ply", "-o", str(tmp_path / "b.ply")], "b.ply")):
        src = tmp_path / ("a.spz" if target == "b.ply" else "a.ply")
        result = runner.invoke(app, ["export", str(src), *args])
        assert result.exit_code == 0, result.output
        back = load_splats(tmp_path / target)
        assert back.num == s.num
    assert (load_splats(tmp_path / "b.ply").means - s.means).abs().max() < 1e-3
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
    assert (run / "splats.spz").is_file()


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
