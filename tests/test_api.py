"""The library from Python (``lodsgs.generate`` in memory) and the CLI's fast, one-line error paths."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "diffusers", "gsplat", "transformers")


def run_python(code: str, cwd, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def test_import_lodsgs_loads_no_torch(tmp_path):
    code = ("import sys, lodsgs; assert callable(lodsgs.__getattr__); "
            f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}); assert not loaded, loaded")
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["info", "no-such-run"], "no such file or folder: 'no-such-run'"),
    (["export", "no-such.ply", "--format", "splat"], "no such file or folder"),
    (["render", "no-such-run"], "no such file or folder"),
    (["generate", "a red cube", "--set", "bogus.key=1"], "unknown config key 'bogus'"),
    (["generate", "a red cube", "--set", "guidance.guidance_scale=.nan"], "a finite number"),
    (["generate", "a red cube", "--bogus"], "No such option: --bogus"),
    (["generate"], "Missing argument 'prompt'"),
    (["generate", "a red cube", "--device", "tpu"], "Invalid value for '--device'"),
    (["generate", "a red cube", "--seed", "1180591620717411303424"], "Invalid value for '--seed'"),
    (["view", "a-run", "--port", "99999"], "Invalid value for '--port'"),
])
def test_an_error_is_one_line_exit_2_without_torch(args, fragment, tmp_path):
    """Every error path prints one ``lodsgs: error:`` line, exits 2, imports no torch and writes nothing."""
    result, seconds = cli_without_torch(args, tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lodsgs: error:") and fragment in lines[0], result.stderr
    assert "EXIT 2 HEAVY []" in result.stdout, result.stdout
    assert not list(tmp_path.iterdir())
    assert seconds < 10  # the point is well under a second; a loaded CI box gets slack, torch alone takes ~3 s


def cli_without_torch(args: list[str], cwd) -> tuple[subprocess.CompletedProcess, float]:
    """``lodsgs ARGS`` in a fresh interpreter; prints its exit code and which heavy packages it imported."""
    code = ("import sys\nfrom lodsgs.cli import app\n"
            f"try:\n    app(args={args!r}, prog_name='lodsgs')\nexcept SystemExit as e:\n    code = e.code\n"
            f"loaded = sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})\n"
            "print('EXIT', code, 'HEAVY', loaded)")
    start = time.perf_counter()
    result = run_python(code, cwd)
    return result, time.perf_counter() - start


CUBE = ["a red cube", "--prior", "shapes"]


@pytest.mark.parametrize("args, fragment", [
    (["generate", "a red dragon", "--prior", "shapes"], "does not know the word(s) dragon"),
    (["generate", *CUBE, "--image", "missing.png"], "reference image 'missing.png' not found"),
    (["generate", *CUBE, "--image", "junk.png"], "cannot read reference image 'junk.png'"),
    (["generate", *CUBE, "--init", "missing.ply"], "'missing.ply': no such file"),
    (["generate", *CUBE, "--init", "junk.ply"], "'junk.ply': not a valid PLY file"),
    (["generate", *CUBE, "--set", "init.kind=mesh", "--set", "init.path=none.glb"], "'none.glb' not found"),
    (["generate", "a red cube", "--prior", "./nowhere"], "'./nowhere' does not exist"),
    (["generate", *CUBE, "--resume"], "nothing to resume"),
    (["generate", *CUBE], "already exists; pass --resume"),
    (["image", "a red dragon", "--prior", "shapes"], "does not know the word(s) dragon"),
    (["image", *CUBE], "already exists; pass --overwrite"),
    (["edit", "junk.png", "--source", "a red cube", "--target", "a red cube"], "are the same"),
    (["edit", "missing.png", "--source", "a red cube", "--target", "a blue cube"], "'missing.png' not found"),
    (["edit", "junk.png", "--source", "a red cube", "--target", "a blue dragon"], "cannot read image"),
])
def test_bad_inputs_are_refused_before_torch_loads(args, fragment, tmp_path):
    """A run's inputs (caption, prior folder, pictures, --init, run folder) are checked without torch, so a bad
    one costs a fraction of a second, not the ~3 s of importing torch and diffusers; nothing is written."""
    from lodsgs.preflight import run_name
    (tmp_path / "junk.png").write_text("not a picture")
    (tmp_path / "junk.ply").write_text("not a ply")
    for run in (tmp_path / "runs" / run_name("a red cube", 0), tmp_path / "runs" / "image-a-red-cube-0"):
        run.mkdir(parents=True)
        (run / "metrics.json").write_text("{}")  # a finished run in the way of the same command
    before = sorted(tmp_path.rglob("*"))
    result, seconds = cli_without_torch(args, tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lodsgs: error:") and fragment in lines[0], result.stderr
    assert "EXIT 2 HEAVY []" in result.stdout, result.stdout
    assert sorted(tmp_path.rglob("*")) == before
    assert seconds < 10  # the point is well under a second (0.2-0.3 s here); a loaded CI box gets slack


def test_generate_from_python_returns_splats_and_writes_nothing(tiny_prior_dirs, tmp_path):
    """``lodsgs.generate(...)`` in memory: the splats, the log, no file anywhere in the working folder."""
    code = (f"import lodsgs\nout = lodsgs.generate('a red cube', prior={tiny_prior_dirs['pixel']!r}, steps=6, "
            "config='fast', run={'batch': 2}, camera={'width': 32, 'height': 32}, init={'num': 300}, "
            "guidance={'method': 'sds'})\n"
            "print(tuple(out.splats.means.shape), len(out.log), out.run_dir, out.log[-1]['step'])")
    result = run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    n, three = result.stdout.split()[0].strip("(,"), result.stdout.split()[1].strip(",)")
    assert int(n) > 0 and three == "3" and result.stdout.split()[2:] == ["1", "None", "6"]
    assert not list(tmp_path.iterdir())


def test_generate_from_python_with_out_writes_the_run_folder(tiny_prior_dirs, tmp_path):
    import lodsgs
    from lodsgs.errors import LodsgsError

    out = lodsgs.generate("a red cube", prior=tiny_prior_dirs["pixel"], steps=4, config="fast", out=tmp_path,
                          run={"batch": 2, "turntable_frames": 2, "turntable_size": 16},
                          camera={"width": 32, "height": 32}, init={"num": 200})
    assert out.run_dir.parent == tmp_path and (out.run_dir / "splats.ply").is_file()
    assert out.metrics["steps"] == 4 and out.splats.num == out.metrics["gaussians"]
    with pytest.raises(LodsgsError, match="give a section as a mapping"):
        lodsgs.generate("a red cube", prior=tiny_prior_dirs["pixel"], run=3)


def test_image_and_edit_from_python_write_nothing_without_out(tmp_path, monkeypatch):
    import lodsgs

    monkeypatch.chdir(tmp_path)
    made = lodsgs.image("a red cube", prior="shapes", steps=2, particles=2, canvas={"snapshots": 2})
    assert tuple(made.images.shape) == (2, 32, 32, 3) and made.run_dir is None and made.log[-1]["step"] == 1
    import imageio.v2 as imageio
    imageio.imwrite(tmp_path / "cube.png", (made.images[0].numpy() * 255).astype("uint8"))
    edited = lodsgs.edit(tmp_path / "cube.png", "a red cube", "a blue cube", prior="shapes", steps=2,
                         guidance={"method": "sds"})
    assert tuple(edited.images.shape[1:]) == (32, 32, 3) and edited.run_dir is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cube.png"]


@pytest.mark.slow
def test_the_example_in_docs_api_runs_and_writes_nothing(tmp_path):
    """docs/api.md's first Python block, as a user would paste it (the shipped shapes prior, 20 steps)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    example = text.split("```python\n", 1)[1].split("```", 1)[0]
    result = run_python(example, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("torch.Size([") and lines[0].endswith(", 3])") and lines[-1] == "None", lines
    assert not list(tmp_path.iterdir())
