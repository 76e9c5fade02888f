"""Checkpoints are read with ``torch.load(weights_only=True)``: a file carrying a pickled object that would run
code when unpickled is refused in one line, and the code never runs."""

import os

import pytest
import torch
from typer.testing import CliRunner

from lodsgs.cli import app
from lodsgs.errors import LodsgsError
from lodsgs.files import safe_load
from lodsgs.generate import run_name
from lodsgs.view import checkpoint_splats

TINY = ["run.steps=4", "run.batch=2", "camera.width=16", "camera.height=16", "init.num=100"]


class WritesMarker:
    """Unpickling this calls ``os.makedirs(marker)``: what a malicious shared checkpoint could do instead."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def evil_checkpoint(path, marker) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "splats": {"means": torch.zeros(1, 3)}, "sh_degree": 0, "hook": WritesMarker(str(marker))},
               path)


def test_the_pickle_would_run_code_if_loaded_unsafely(tmp_path):
    evil_checkpoint(tmp_path / "x.pt", tmp_path / "marker")
    torch.load(tmp_path / "x.pt", weights_only=False)  # the test's own premise: unsafe loading runs it
    assert (tmp_path / "marker").exists()


def test_resume_refuses_a_checkpoint_that_would_run_code(tiny_prior_dirs, tmp_path):
    marker = tmp_path / "marker"
    evil_checkpoint(tmp_path / run_name("a cube", 0) / "checkpoints" / "last.pt", marker)
    sets = [x for s in [f"prior.model={tiny_prior_dirs['pixel']}", *TINY] for x in ("--set", s)]
    result = CliRunner().invoke(app, ["generate", "a cube", "--resume", "--out", str(tmp_path), *sets])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "holds pickled Python objects" in lines[0], result.output
    assert not marker.exists()


def test_view_refuses_a_checkpoint_that_would_run_code(tmp_path):
    marker = tmp_path / "marker"
    evil_checkpoint(tmp_path / "last.pt", marker)
    with pytest.raises(LodsgsError, match="refused to open checkpoint") as err:
        checkpoint_splats(tmp_path / "last.pt")
    assert "\n" not in str(err.value) and not marker.exists()


def test_a_truncated_checkpoint_is_one_line(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(LodsgsError, match="cannot read checkpoint") as err:
        safe_load(tmp_path / "last.pt")
    assert "\n" not in str(err.value)
