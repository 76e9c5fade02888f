"""Hostile files and absurd numbers: each input ends in one line ``lodsgs: error: ...`` naming the problem (exit
2), writes nothing, and never a traceback, garbage or a hang. Run in one process through the CLI where it can."""

from __future__ import annotations

import gzip
import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from plyfile import PlyData, PlyElement
from typer.testing import CliRunner

from lodsgs.cli import app
from lodsgs.errors import LodsgsError
from lodsgs.splats.gltf import gltf_splats_bytes, write_gltf_splats
from lodsgs.splats.io import ply_properties, write_ply
from lodsgs.splats.model import Splats

runner = CliRunner()


def one_line(args: list[str], fragment: str, folder: Path | None = None) -> None:
    """The command fails with exit 2 and one stderr line holding ``fragment``; ``folder`` is left as it was."""
    before = sorted(p.name for p in folder.iterdir()) if folder else None
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("lodsgs: error:") and fragment in lines[0], result.output
    if folder is not None:
        assert sorted(p.name for p in folder.iterdir()) == before


def raw_ply(path: Path, means: np.ndarray) -> Path:
    """A splat .ply written by hand (no lodsgs writer makes a bad one): ``means`` [N,3], the rest neutral."""
    vertex = np.zeros(len(means), dtype=[(name, "<f4") for name in ply_properties(0)])
    for i, axis in enumerate("xyz"):
        vertex[axis] = means[:, i]
    vertex["rot_0"] = 1.0
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(path))
    return path


def splat_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make, fragment", [
    (lambda d: raw_ply(d / "zero.ply", np.zeros((0, 3), np.float32)), "holds no Gaussians"),
    (lambda d: splat_file(d, "empty.splat", b""), "holds no Gaussians"),
    (lambda d: splat_file(d, "noise.splat", np.random.default_rng(0).bytes(32_000)), "cannot read"),
    (lambda d: raw_ply(d / "far.ply", np.array([[1e30, 0, 0]], np.float32)), "positions reach 1e+30"),
    (lambda d: raw_ply(d / "nan.ply", np.array([[np.nan, 0, 0]], np.float32)), "NaN or infinite"),
    (lambda d: splat_file(d, "zeros.spz", b"NGSP" + bytes(40)), "an uncompressed .spz header of version 0"),
    (lambda d: splat_file(d, "notgzip.spz", b"\x1f\x8b" + bytes(40)), "not a gzip stream"),
    (lambda d: splat_file(d, "cut.glb", gltf_splats_bytes(Splats.random_ball(4, seed=0))[:-8]), "header says"),
])
@pytest.mark.parametrize("command", ["info", "export"])
def test_a_bad_splat_file_is_one_line_in_every_reader(make, fragment, command, tmp_path):
    path = make(tmp_path)
    args = [command, str(path)] + (["--format", "ply" if path.suffix != ".ply" else "splat"] if command == "export"
                                   else [])
    one_line(args, fragment, tmp_path)


def test_a_gzip_bomb_spz_is_refused_without_inflating_it(tmp_path):
    """A header declaring 5 splats on a stream that inflates to 64 MB (a 2 GiB one reads the same way): refused
    after reading one byte more than the 5 splats; a header declaring billions is refused from the header."""
    from lodsgs.splats.spz import HEADER, MAGIC

    bomb = tmp_path / "bomb.spz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        f.write(HEADER.pack(MAGIC, 2, 5, 0, 12, 0, 0))
        zeros = bytes(1 << 20)
        for _ in range(64):
            f.write(zeros)
    start = time.perf_counter()
    one_line(["info", str(bomb)], "does not hold the 5 splats", tmp_path)
    assert time.perf_counter() - start < 5
    huge = tmp_path / "huge.spz"
    huge.write_bytes(gzip.compress(HEADER.pack(MAGIC, 2, 2**31, 0, 12, 0, 0)))
    one_line(["info", str(huge)], "declares 2147483648 Gaussians", tmp_path)


def v4_spz(n: int = 100) -> bytearray:
    """A valid version-4 .spz of ``n`` Gaussians at SH degree 0 (5 streams) to damage."""
    from lodsgs.splats.spz import encode_spz

    return bytearray(encode_spz(Splats.random_ball(n, seed=0)))


def toc(data: bytearray, stream: int, packed: int | None = None, unpacked: int | None = None) -> bytearray:
    """``data`` with one table-of-contents entry (compressed, uncompressed u64 at byte 32 + 16·stream) rewritten."""
    old = struct.unpack_from("<QQ", data, 32 + 16 * stream)
    struct.pack_into("<QQ", data, 32 + 16 * stream, old[0] if packed is None else packed,
                     old[1] if unpacked is None else unpacked)
    return data


def header(data: bytearray, fmt: str, offset: int, value: int) -> bytearray:
    struct.pack_into(fmt, data, offset, value)
    return data


def new_positions(data: bytearray, frame: bytes) -> bytearray:
    """``data`` with its positions stream (the first frame, after the 5-entry table) replaced by ``frame``."""
    packed = struct.unpack_from("<Q", data, 32)[0]
    start = 32 + 16 * 5
    return toc(bytearray(data[:start] + frame + data[start + packed:]), 0, packed=len(frame))


@pytest.mark.parametrize("name, make, fragment", [
    ("cut.spz", lambda: v4_spz()[:-10], "truncated or damaged"),
    ("short.spz", lambda: v4_spz()[:20], "too short for an .spz header (20 of 32 bytes)"),
    ("lying-toc.spz", lambda: toc(v4_spz(), 0, unpacked=1 << 40), "gives the positions stream 1099511627776 bytes"),
    ("huge-frame.spz", lambda: toc(v4_spz(), 2, packed=1 << 40), "colours stream a 1099511627776-byte zstd frame"),
    ("long-frame.spz", lambda: toc(v4_spz(), 1, packed=900), "truncated or damaged"),
    ("streams.spz", lambda: header(v4_spz(), "<B", 15, 6), "declares 6 streams; 100 Gaussians of SH degree 0 take 5"),
    ("toc.spz", lambda: header(v4_spz(), "<I", 16, 1 << 31), "table of contents (bytes 2147483648-"),
    ("count.spz", lambda: header(v4_spz(), "<I", 8, 2**31), "declares 2147483648 Gaussians"),
    ("ratio.spz", lambda: header(v4_spz(), "<I", 8, 5_000_000), "declares 5000000 Gaussians, more than"),
    ("degree.spz", lambda: header(v4_spz(), "<B", 12, 4), "its SH degree is 4; lodsgs reads degrees 0 to 3"),
    ("v5.spz", lambda: header(v4_spz(), "<I", 4, 5), "header of version 5; lodsgs reads version 4"),
    ("garbage.spz", lambda: new_positions(v4_spz(), b"\x55" * 200), "its positions stream is not a zstd frame"),
    ("other-size.spz", lambda: new_positions(v4_spz(), zstandard.ZstdCompressor().compress(bytes(901))),
     "positions stream's zstd frame declares 901 bytes; the header's count implies 900"),
    ("v1.spz", lambda: gzip.compress(struct.pack("<IIIBBBB", 0x5053474E, 1, 5, 0, 12, 0, 0)), "version 1"),
    ("noise.spz", lambda: np.random.default_rng(0).bytes(1000), "not an .spz"),
])
def test_a_damaged_v4_spz_is_one_line(name, make, fragment, tmp_path):
    one_line(["info", str(splat_file(tmp_path, name, bytes(make())))], fragment, tmp_path)


@pytest.mark.parametrize("declared", [True, False])
def test_a_zstd_bomb_spz_is_refused_without_inflating_it(declared, tmp_path):
    """A 100-splat file whose positions frame inflates to 32 MB (a 2 GiB one reads the same way) in 1 kB: a frame
    declaring its size is refused unread; one that does not is stopped 900 bytes in."""
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=declared)
    writer = compressor.compressobj(size=32 << 20 if declared else -1)
    frame = b"".join(writer.compress(bytes(1 << 20)) for _ in range(32)) + writer.flush()
    assert len(frame) < 2000
    path = splat_file(tmp_path, "bomb.spz", bytes(new_positions(v4_spz(), frame)))
    start = time.perf_counter()
    one_line(["info", str(path)], "declares 33554432 bytes" if declared else "does not inflate to 900 bytes",
             tmp_path)
    assert time.perf_counter() - start < 5


def test_nothing_non_finite_or_out_of_range_is_written(tmp_path):
    from lodsgs.splats.spz import write_spz

    splats = Splats.random_ball(4, seed=0)
    splats.params["means"].data[0, 0] = 1e5  # within what a scene can hold, beyond .spz's 24-bit fixed point
    with pytest.raises(LodsgsError, match="positions must lie within"):
        write_spz(splats, tmp_path / "a.spz")
    splats.params["means"].data[0, 0] = float("inf")
    for write in (write_ply, write_spz, write_gltf_splats):
        with pytest.raises(LodsgsError, match="NaN or infinite"):
            write(splats, tmp_path / "a.ply")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["generate", "a cube", "--set", "optim.means=.inf"], "a finite number"),
    (["generate", "a cube", "--set", "guidance.guidance_scale=.nan"], "a finite number"),
    (["image", "a red cube", "--prior", "shapes", "--set", "guidance.guidance_scale=.nan"], "a finite number"),
    (["generate", "a cube", "--set", "run.steps=1e30"], "expected an integer"),
    (["generate", "a cube", "--set", "run.steps=100000000"], "'run.steps': must be >= 1 and <= 1000000"),
    (["generate", "a cube", "--seed", "1180591620717411303424"], "Invalid value for '--seed'"),
    (["generate", "a cube", "--prior", "shapes", "--steps", "1", "--set", "run.seed=-1"], "'run.seed'"),
    (["view", "a-run", "--port", "-1"], "Invalid value for '--port'"),
    (["generate", "x" * 10_000, "--prior", "shapes"], "the prompt is 10,000 characters"),
])
def test_absurd_numbers_and_names_are_one_line(args, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    one_line(args, fragment, tmp_path)
    result = runner.invoke(app, args)
    assert len(result.output) < 400  # a 10,000-character prompt is not echoed whole


def test_view_checks_its_host_before_serving(tmp_path, monkeypatch):
    """An address the resolver does not know, or one not on this machine: one line, no server, no hang."""
    import socket

    def resolver(host, *args, **kwargs):  # the machine's resolver, without asking a DNS server (tests are offline)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    one_line(["view", "a-run", "--host", "no such host!"], "--host 'no such host!' is not an address", tmp_path)


def test_a_binary_config_and_a_broken_prior_profile_are_one_line(tiny_prior_dirs, tmp_path):
    binary = splat_file(tmp_path, "mine.yaml", bytes(range(256)) * 4)
    one_line(["generate", "a cube", "--config", str(binary)], "is not text", tmp_path)
    for name, text in (("broken", "run: [unclosed\n"), ("tagged", "run: !!python/object/apply:os.system [echo]\n")):
        prior = Path(shutil.copytree(tiny_prior_dirs["pixel"], tmp_path / name))
        (prior / "lodsgs.yaml").write_text(text)
        one_line(["generate", "a cube", "--prior", str(prior), "--out", str(tmp_path / "runs")], "is not valid YAML")
    assert not (tmp_path / "runs").exists()


def test_a_pickled_bin_in_a_prior_folder_is_refused(tiny_prior_dirs, tmp_path):
    prior = Path(shutil.copytree(tiny_prior_dirs["pixel"], tmp_path / "prior"))
    for weights in (prior / "unet").glob("*.safetensors"):
        weights.unlink()
    torch.save({"weight": torch.zeros(1)}, prior / "unet" / "diffusion_pytorch_model.bin")
    one_line(["generate", "a cube", "--prior", str(prior), "--out", str(tmp_path / "runs")], "pickled .bin weights")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("content, fragment", [
    (b"", "the file is empty"),
    (np.random.default_rng(1).bytes(32_000), "not a PyTorch file"),
])
def test_a_damaged_checkpoint_says_what_it_is(content, fragment, tmp_path):
    from lodsgs.files import safe_load

    path = splat_file(tmp_path, "last.pt", content)
    with pytest.raises(LodsgsError, match=fragment):
        safe_load(path)


def test_view_ignores_odd_checkpoint_names_and_names_a_foreign_one(tmp_path):
    from lodsgs.view import checkpoint_splats, kept_checkpoints, load_target

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_ply(Splats.random_ball(8, seed=0), run / "splats.ply")
    for name in ("step_00020.pt", "step_00010.pt", "step_final.pt", "step_.pt"):
        torch.save({"splats": Splats.random_ball(8, seed=0).detached(), "sh_degree": 0}, run / "checkpoints" / name)
    assert [p.name for p in kept_checkpoints(run / "checkpoints")] == ["step_00010.pt", "step_00020.pt"]
    assert len(load_target(run).checkpoints) == 2
    torch.save({"model": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(LodsgsError, match="not a lodsgs checkpoint"):
        checkpoint_splats(tmp_path / "foreign.pt")


def test_a_failed_write_names_the_file_and_the_free_space(tmp_path, monkeypatch):
    from lodsgs.files import atomic_path
    from lodsgs.rundir import save_checkpoint

    with pytest.raises(LodsgsError) as err, atomic_path(tmp_path / "splats.splat") as tmp:
        tmp.write_bytes(b"x" * 100)
        raise OSError("100 requested and 0 written")  # numpy's tofile: an OSError with no errno
    assert "cannot write" in str(err.value) and "splats.splat" in str(err.value) and "free there" in str(err.value)

    def failing_save(obj, f, *a, **k):  # what torch.save raises when the disk fills mid-checkpoint
        Path(f).write_bytes(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr("lodsgs.rundir.checkpoint_payload", lambda s, cfg: {})
    with pytest.raises(LodsgsError, match="cannot write .*last.pt"):
        save_checkpoint(None, None, tmp_path / "checkpoints" / "last.pt")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoints"]


@pytest.mark.parametrize("mode", ["CMYK", "I;16", "LA", "P"])
def test_every_picture_mode_reads_as_what_it_shows(mode, tmp_path):
    """A red square on white, saved in each mode: read back as red on white (RGB), or with its alpha."""
    from PIL import Image

    from lodsgs.pictures import read_picture

    rgba = np.full((16, 16, 4), 255, np.uint8)
    rgba[4:12, 4:12, :3] = (230, 20, 20)
    base = Image.fromarray(rgba, "RGBA")
    if mode == "CMYK":
        base.convert("RGB").convert("CMYK").save(tmp_path / "p.jpg", quality=100)
        path = tmp_path / "p.jpg"
    elif mode == "I;16":
        grey = (np.asarray(base.convert("L"), np.uint16) * 257)
        Image.fromarray(grey).save(tmp_path / "p.png")  # uint16: mode I;16
        path = tmp_path / "p.png"
    elif mode == "LA":
        base.convert("LA").save(tmp_path / "p.png")
        path = tmp_path / "p.png"
    else:
        base.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png",
                                                                                         transparency=0)
        path = tmp_path / "p.png"
    assert Image.open(path).mode == mode
    picture = read_picture(path)
    assert picture.dtype == np.float32 and picture.shape[:2] == (16, 16) and picture.shape[2] in (3, 4)
    centre, corner = picture[8, 8, :3], picture[0, 0, :3]
    if mode == "CMYK":
        assert centre[0] > 0.8 and centre[1] < 0.2 and corner.min() > 0.9
    else:  # grey modes: the red square is darker than the white frame
        assert centre.mean() < corner.mean() or picture.shape[2] == 4


def test_a_folder_as_a_picture_and_a_cmyk_reference_are_named(tmp_path):
    from lodsgs.pictures import read_picture

    with pytest.raises(LodsgsError, match="is a folder"):
        read_picture(tmp_path)


def test_prompt_lists_strip_a_bom_and_refuse_to_be_empty(tmp_path):
    from lodsgs.batch import read_prompts

    listed = tmp_path / "prompts.txt"
    listed.write_bytes("\ufeff# my prompts\na red cube\n".encode())
    assert read_prompts(listed) == ["a red cube"]
    listed.write_bytes("\ufeffa red cube\n".encode())
    assert read_prompts(listed) == ["a red cube"]
    empty = splat_file(tmp_path, "empty.txt", b"# nothing here\n\n")
    one_line(["batch", str(empty), "--prior", "shapes", "--out", str(tmp_path / "out")], "holds no prompt")
    assert not (tmp_path / "out").exists()


def test_render_reads_every_splat_format(tmp_path):
    from lodsgs.splats.spz import write_spz

    write_spz(Splats.random_ball(16, seed=0), tmp_path / "a.spz")
    result = runner.invoke(app, ["render", str(tmp_path / "a.spz"), "--frames", "1", "--size", "16"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "turntable.gif").is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_an_unwritable_folder_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    write_ply(Splats.random_ball(4, seed=0), tmp_path / "a.ply")
    one_line(["export", str(tmp_path / "a.ply"), "--out", str(locked / "a.splat")], "cannot write")


def test_spz_header_layout_is_what_the_bomb_test_forges():
    from lodsgs.splats.spz import HEADER
    assert HEADER.size == struct.calcsize("<IIIBBBB") == 16
