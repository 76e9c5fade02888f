"""Bad input and failed writes: one `lodsgs: error:` line and exit code 2, never a traceback; nothing written
to a run folder before its inputs are validated; no stale or half-written result left behind."""

import errno
import json

import pytest
import torch
from typer.testing import CliRunner

from lodsgs import api
from lodsgs.cli import app, build_config
from lodsgs.preflight import run_name
from lodsgs.splats.io import write_ply
from lodsgs.splats.model import Splats

runner = CliRunner()

def one_error_line(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lodsgs: error:"), result.output
    assert fragment in result.output, result.output
    assert "Traceback" not in result.output


@pytest.fixture
def ply(tmp_path):
    path = tmp_path / "ball.ply"
    write_ply(Splats.random_ball(50, radius=0.3, seed=0), path)
    return path


@pytest.mark.parametrize("extra, fragment", [
    (["--set", "run.batch=0"], "'run.batch'"),
    (["--set", "run.checkpoint_every=0"], "'run.checkpoint_every'"),
    (["--set", "guidance.min_step_percent=0.9", "--set", "guidance.max_step_percent=0.1"], "min_step_percent"),
    (["--set", "guidance.max_step_percent=1.5"], "'guidance.max_step_percent'"),
    (["--set", "guidance.guidance_scale=0"], "'guidance.guidance_scale': must be > 0"),
    (["--set", "camera.width=0"], "'camera.width': must be >= 8"),
    (["--set", "init.sh_degree=7"], "'init.sh_degree': must be >= 0 and <= 3"),
    (["--set", "init.num=0"], "'init.num'"),
    (["--set", "optim.means=-1"], "'optim.means'"),
    (["--set", "run.turntable_frames=0"], "'run.turntable_frames'"),
    (["--set", "render.random_background=2"], "'render.random_background'"),
    (["--set", "camera.width=[64"], "not valid YAML"),
    (["--steps", "-3"], "Invalid value for '--steps'"),
    (["--set", "run.steps=0"], "'run.steps': must be >= 1"),
    (["--init", "[1].ply"], "[1].ply"),
])
def test_bad_settings_fail_before_anything_is_written(tiny_sets, tmp_path, extra, fragment):
    out = tmp_path / "runs"
    sets = tiny_sets("pixel", without=("run.steps",) if "--steps" in extra else ())
    result = runner.invoke(app, ["generate", "a cube", "--out", str(out), *sets, *extra])
    one_error_line(result, fragment)
    assert not out.exists()  # validation happens before any folder is made


@pytest.mark.parametrize("prompt, fragment", [
    ("🎲🎲", "has no words"),
    ("a rouge cubé", "cubé"),  # accented words whole, not as fragments
])
def test_prompts_outside_a_closed_vocabulary(tmp_path, prompt, fragment):
    result = runner.invoke(app, ["generate", prompt, "--prior", "shapes", "--out", str(tmp_path / "r")])
    one_error_line(result, fragment)
    assert "'shapes' prior" in result.output  # the prior by its name, not its folder's ('weights')


def test_path_options_are_taken_literally():
    cfg = build_config(None, [], prior="shapes", init="scan #2.ply")
    assert cfg.init.path == "scan #2.ply" and cfg.init.kind == "ply"  # YAML would read 'scan' (' #' a comment)
    assert build_config(None, [], init="[1].ply").init.path == "[1].ply"


def test_unknown_hub_id_is_one_line(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never the real Hub, whatever the env
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    result = runner.invoke(app, ["generate", "a cube", "--prior", "nobody/no-such-model", "--out", str(tmp_path)])
    one_error_line(result, "'nobody/no-such-model' is not in the Hugging Face cache")


@pytest.mark.parametrize("args, fragment", [
    (["--frames", "0"], "--frames must be 1..3600"),
    (["--size", "-5"], "--size 8..4096"),
    (["--out", "/proc/lodsgs-x.gif"], "/proc/lodsgs-x"),
    (["--out", "x.png"], "must end in .gif"),
])
def test_render_bad_options(ply, args, fragment):
    one_error_line(runner.invoke(app, ["render", str(ply), *args]), fragment)


def test_batch_out_is_a_file(tiny_sets, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cube\n")
    one_error_line(runner.invoke(app, ["batch", str(prompts), "--out", str(prompts),
                                       *tiny_sets("pixel")]), "is a file")


def test_info_on_a_corrupt_metrics_file(tmp_path):
    (tmp_path / "metrics.json").write_text("{not json")
    one_error_line(runner.invoke(app, ["info", str(tmp_path)]), "not valid JSON")


def test_resume_from_a_foreign_checkpoint(tiny_sets, tmp_path):
    ckpt = tmp_path / run_name("a cube", 0) / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"weights": torch.zeros(3)}, ckpt)
    result = runner.invoke(app, ["generate", "a cube", "--resume", "--out", str(tmp_path),
                                 *tiny_sets("pixel")])
    one_error_line(result, "not a lodsgs checkpoint")


def test_disk_full_leaves_no_half_written_file(tiny_sets, tmp_path, monkeypatch):
    import lodsgs.media as media

    def full_disk(file, *a, **k):
        file.write(b"\x89PNG trunc")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(media.imageio, "imwrite", full_disk)
    result = runner.invoke(app, ["generate", "a cube", "--quiet", "--out", str(tmp_path),
                                 *tiny_sets("pixel")])
    one_error_line(result, "no space left on its disk")
    run = tmp_path / run_name("a cube", 0)
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "splats.ply").is_file()  # what finished is kept
    assert not (run / "preview.png").exists() and not list(run.glob(".*partial*"))  # nothing half-written


def test_start_that_fails_validation_writes_nothing(tiny_sets, tmp_path):
    result = runner.invoke(app, ["generate", "a cube", "--out", str(tmp_path), "--init", str(tmp_path / "none.ply"),
                                 *tiny_sets("pixel")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / run_name("a cube", 0)).exists()  # no stub folder blocks the corrected rerun
    ok = runner.invoke(app, ["generate", "a cube", "--out", str(tmp_path), *tiny_sets("pixel")])
    assert ok.exit_code == 0, ok.output


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rejected_resume_and_failed_overwrite(tiny_sets, tmp_path, monkeypatch):
    import lodsgs.trainer as gen

    args = ["generate", "a cube", "--out", str(tmp_path), *tiny_sets("pixel")]
    assert runner.invoke(app, args).exit_code == 0
    run = tmp_path / run_name("a cube", 0)
    before = snapshot(run)
    rejected = runner.invoke(app, [*args, "--resume", "--config", "sds"])
    one_error_line(rejected, "other settings (guidance.")
    assert snapshot(run) == before  # a rejected --resume changes nothing on disk

    def boom(*a, **k):
        raise RuntimeError("simulated crash mid-run")
    monkeypatch.setattr(gen, "train_step", boom)
    with pytest.raises(RuntimeError):
        api.run("a cube", build_config("sds", tiny_sets("pixel")[1::2]), tmp_path, overwrite=True, quiet=True)
    left = {p.name for p in run.iterdir()}
    assert "config.yaml" in left and not left & {"splats.ply", "splats.splat", "metrics.json", "turntable.gif",
                                                  "preview.png", "checkpoints"}
    assert "method: sds" in (run / "config.yaml").read_text()


def test_batch_reruns_when_settings_change(tiny_sets, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cube\n")
    base = ["batch", str(prompts), "--out", str(tmp_path / "b"), *tiny_sets("pixel")]
    assert runner.invoke(app, base).exit_code == 0
    same = runner.invoke(app, base)
    assert "skip (done): a cube" in same.output
    for extra in (["--set", "run.steps=3"], ["--config", "sds", "--set", "run.steps=3"]):
        again = runner.invoke(app, [*base, *extra])
        assert again.exit_code == 0 and "settings changed" in again.output, again.output
    metrics = json.loads((tmp_path / "b" / run_name("a cube", 0) / "metrics.json").read_text())
    assert (metrics["method"], metrics["steps"]) == ("sds", 3)


def test_batch_interrupt_names_no_missing_option(tiny_sets, tmp_path, sigint_at):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cube\n")
    sigint_at(2)
    result = runner.invoke(app, ["batch", str(prompts), "--out", str(tmp_path / "b"),
                                 *tiny_sets("pixel")])
    assert result.exit_code == 130 and "rerun the same command" in result.output and "--resume" not in result.output
