"""No dead end when CUDA parts fail, checked on the CPU: a gsplat CUDA build that raises (or finds no toolkit, or
kernels that cannot run) makes CUDA runs render with raster_torch, decided once with one line; raster_torch makes
every tensor on the splats' device; the fused kernel's failed build is one line; info --system names both."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from typer.testing import CliRunner

from lodsgs.cameras import CameraConfig, eval_cameras
from lodsgs.prior import fused
from lodsgs.splats import raster_torch
from lodsgs.splats import render as render_mod
from lodsgs.splats.model import Splats
from lodsgs.splats.render import render


class BrokenBuild(types.ModuleType):
    """Stands for ``gsplat.cuda._backend`` whose import-time JIT build raises (``from ... import _C`` fails)."""

    def __getattr__(self, name: str):
        raise RuntimeError("Error building extension 'gsplat_cuda': nvcc fatal : Unsupported gpu architecture\n"
                           "[1/20] c++ -MMD ... (the whole compiler log)")


@pytest.fixture
def fresh_choice(monkeypatch):
    """A process that has not decided yet, on a torch built for CUDA 12.1 (the fix names its toolkit and wheel)."""
    monkeypatch.setattr(render_mod, "_cuda_choice", None)
    monkeypatch.setattr(torch.version, "cuda", "12.1")
    monkeypatch.setattr(torch, "__version__", "2.4.1+cu121")


def gsplat_backend(monkeypatch, module: types.ModuleType) -> None:
    """What importing gsplat's CUDA backend gives (never the real one here: it would compile for minutes)."""
    monkeypatch.setitem(sys.modules, "gsplat.cuda._backend", module)


def scene(n: int = 400):
    return Splats.random_ball(n, radius=0.5, seed=0), eval_cameras(CameraConfig(eval_radius=2.5, eval_fovy=45.0),
                                                                   2, 32, 32)


def rendered(splats: Splats, cams) -> dict[str, torch.Tensor]:
    """Colour, alpha and every gradient of one render."""
    for p in splats.params.values():
        p.grad = None
    out = render(splats, cams, background=(1.0, 1.0, 1.0))
    (out.rgb.mean() + out.alpha.mean()).backward()
    return {"rgb": out.rgb.detach(), "alpha": out.alpha.detach(),
            **{k: p.grad.clone() for k, p in splats.params.items() if p.grad is not None}}


def test_a_failed_gsplat_build_falls_back_once_with_one_line(fresh_choice, monkeypatch, capsys):
    gsplat_backend(monkeypatch, BrokenBuild("gsplat.cuda._backend"))
    cuda = torch.device("cuda")
    assert render_mod.rasterizer_for(cuda) == "raster_torch"
    assert render_mod.rasterizer_for(cuda) == "raster_torch"  # decided once: no second build, no second line
    err = capsys.readouterr().err.splitlines()
    assert err == ["lodsgs: note: gsplat's CUDA rasterizer is unavailable: its CUDA extension failed to build "
                   "(RuntimeError: Error building extension 'gsplat_cuda': nvcc fatal : Unsupported gpu architecture); "
                   "rendering with lodsgs's PyTorch rasterizer on the GPU instead (same images, slower); to fix: set "
                   "CUDA_HOME to a CUDA 12.1 toolkit, the CUDA torch was built with (with nvcc in CUDA_HOME/bin), or "
                   "install a prebuilt gsplat wheel: pip install gsplat --index-url "
                   "https://docs.gsplat.studio/whl/pt24cu121"]
    assert render_mod.rasterizer_for(torch.device("cpu")) == "raster_torch"


def test_the_fallback_renders_the_same_image_and_gradients(fresh_choice, monkeypatch, capsys):
    """CPU splats sent down the CUDA branch with gsplat broken get raster_torch: the same numbers as the CPU path."""
    splats, cams = scene()
    want = rendered(splats, cams)
    gsplat_backend(monkeypatch, BrokenBuild("gsplat.cuda._backend"))
    real = render_mod.rasterizer_for
    monkeypatch.setattr(render_mod, "rasterizer_for", lambda device: real(torch.device("cuda")))
    got = rendered(splats, cams)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_no_toolkit_and_kernels_that_cannot_run_fall_back_too(fresh_choice, monkeypatch):
    no_toolkit = types.ModuleType("gsplat.cuda._backend")
    no_toolkit._C = None  # gsplat's own "No CUDA toolkit found. gsplat will be disabled."
    gsplat_backend(monkeypatch, no_toolkit)
    choice = render_mod.cuda_rasterizer(announce=False)
    assert choice == render_mod.Rasterizer("raster_torch", "gsplat found no CUDA toolkit (nvcc) to build its CUDA "
                                                           "extension")
    built = types.ModuleType("gsplat.cuda._backend")
    built._C = object()
    gsplat_backend(monkeypatch, built)
    monkeypatch.setattr(render_mod, "_cuda_choice", None)

    def wrong_architecture() -> None:
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    monkeypatch.setattr(render_mod, "_render_one_gaussian", wrong_architecture)
    assert render_mod.cuda_rasterizer(announce=False).why == (
        "its CUDA kernels failed to run (RuntimeError: CUDA error: no kernel image is available for execution on "
        "the device)")
    monkeypatch.setattr(render_mod, "_cuda_choice", None)
    monkeypatch.setattr(render_mod, "_render_one_gaussian", lambda: None)
    assert render_mod.cuda_rasterizer().name == "gsplat"


def test_raster_torch_makes_every_tensor_on_the_splats_device(monkeypatch):
    """With the default device set to ``meta``, a tensor made without an explicit device would be a meta tensor
    and the render would fail or differ: it is identical, forward and backward, and across pair chunks."""
    monkeypatch.setattr(raster_torch, "PAIR_CHUNK", 256)  # several chunks
    splats, cams = scene()
    want = rendered(splats, cams)
    with torch.device("meta"):
        got = rendered(splats, cams)
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert all(v.device.type == "cpu" for v in got.values())


def test_a_failed_kernel_build_is_one_line_once_and_info_names_both_fallbacks(fresh_choice, monkeypatch, capsys):
    """On a (pretended) CUDA machine whose builds fail: info --system says which rasterizer and guidance op a run
    uses, why, and how to fix them; the kernel's own fallback line comes once."""
    import torch.utils.cpp_extension

    from lodsgs.cli import app

    def broken_build(**kwargs):
        raise OSError("CUDA_HOME environment variable is not set. Please set it to your CUDA install root.")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken_build)
    for name, value in (("_ext", None), ("_ext_failed", False), ("_ext_problem", "")):
        monkeypatch.setattr(fused, name, value)
    gsplat_backend(monkeypatch, BrokenBuild("gsplat.cuda._backend"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Pretend GPU")
    result = CliRunner().invoke(app, ["info", "--system"])
    assert result.exit_code == 0, result.output
    lines = {line.split(" ", 1)[0]: line for line in result.output.splitlines()}
    assert lines["rasterizer"].split(None, 1)[1] == (
        "lodsgs's PyTorch rasterizer (raster_torch) on the GPU: its CUDA extension failed to build (RuntimeError: "
        "Error building extension 'gsplat_cuda': nvcc fatal : Unsupported gpu architecture); to fix: set CUDA_HOME "
        "to a CUDA 12.1 toolkit, the CUDA torch was built with (with nvcc in CUDA_HOME/bin), or install a prebuilt "
        "gsplat wheel: pip install gsplat --index-url https://docs.gsplat.studio/whl/pt24cu121")
    guidance = next(line for line in result.output.splitlines() if line.startswith("guidance op"))
    assert guidance.split(None, 2)[2] == (
        "PyTorch expression (its build failed (OSError: CUDA_HOME environment variable is not set. Please set it to "
        "your CUDA install root.); to fix: set CUDA_HOME to a CUDA 12.1 toolkit, the CUDA torch was built with (with "
        "nvcc in CUDA_HOME/bin))")
    assert "lodsgs: note" not in result.output  # info reports; it does not announce
    capsys.readouterr()
    assert fused.load_extension() is None and fused.load_extension() is None  # decided: no second build
    assert capsys.readouterr().err == ""  # info decided it already, quietly


def test_info_system_on_a_machine_without_cuda_names_the_cpu_paths():
    from lodsgs.system import system_report

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    report = system_report()
    assert report["rasterizer"].startswith("lodsgs's PyTorch rasterizer (raster_torch) on the CPU")
    assert report["guidance op"] == "PyTorch expression (no CUDA GPU: the kernel is CUDA only)"
