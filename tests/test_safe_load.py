"""Checkpoints are read with ``torch.load(weights_only=True)``: a file carrying a pickled object that would run
code when unpickled is refused in one line, and the code never runs."""

import os
import pickletools
import zipfile

import pytest
import torch
from typer.testing import CliRunner

from lodsgs.cli import app
from lodsgs.errors import LodsgsError
from lodsgs.files import safe_load
from lodsgs.preflight import run_name
from lodsgs.view import checkpoint_splats


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
    """The premise, without unpickling: the file's pickle calls os.makedirs, and that call makes the marker."""
    evil_checkpoint(tmp_path / "x.pt", tmp_path / "marker")
    with zipfile.ZipFile(tmp_path / "x.pt") as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    strings = [str(arg) for _, arg, _ in pickletools.genops(data)]
    assert any("makedirs" in s for s in strings) and "REDUCE" in [op.name for op, _, _ in pickletools.genops(data)]
    call, args = WritesMarker(str(tmp_path / "marker")).__reduce__()
    call(*args)
    assert (tmp_path / "marker").exists()


def test_resume_refuses_a_checkpoint_that_would_run_code(tiny_sets, tmp_path):
    marker = tmp_path / "marker"
    evil_checkpoint(tmp_path / run_name("a cube", 0) / "checkpoints" / "last.pt", marker)
    sets = tiny_sets("pixel")
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
