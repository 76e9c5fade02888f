"""The fused guidance op: reference vs autograd of the explicit formula; CUDA kernel vs reference; nvcc."""

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from lodsgs.prior.fused import guidance_grad, guidance_grad_reference, guidance_loss

CU = Path(__file__).resolve().parents[1] / "cuda_ext" / "guidance_kernel.cu"


def inputs(dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    c, u, e = (torch.randn(3, 4, 8, 8, generator=g).to(device, dtype) for _ in range(3))
    return c, u, e, torch.tensor([0.1, 0.5, 0.97], device=device)


@pytest.mark.parametrize("normalized", [False, True])
def test_backward_equals_autograd_of_the_threestudio_loss(normalized):
    c, u, e, w = inputs()
    omega = 100.0
    x = torch.randn(3, 4, 8, 8, requires_grad=True)
    loss = guidance_loss(x, c, u, e, w, omega, normalized)
    (got,) = torch.autograd.grad(loss, x)
    # explicit formula, differentiated by autograd: 0.5·Σ(x − sg(x − g))² / B
    grad = w.view(-1, 1, 1, 1) * (u + omega * (c - u) - e) / (omega if normalized else 1.0)
    x2 = x.detach().clone().requires_grad_(True)
    ref_loss = 0.5 * ((x2 - (x2 - grad).detach()) ** 2).sum() / 3
    (want,) = torch.autograd.grad(ref_loss, x2)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
    assert torch.isclose(loss, ref_loss, rtol=1e-5)


def test_nan_becomes_zero():
    c, u, e, w = inputs()
    c[0, 0, 0, 0] = float("nan")
    u[1, 0, 0, 0] = float("inf")
    g = guidance_grad_reference(c, u, e, w, 1000.0, True)
    assert torch.isfinite(g).all() and g[0, 0, 0, 0] == 0 and g[1, 0, 0, 0] == 0


@pytest.mark.parametrize("normalized", [False, True])
def test_cpu_path_is_the_formula_without_the_kernel(normalized, monkeypatch):
    """On CPU tensors: w·(ε_u + ω(ε_c − ε_u) − ε) (÷ω for LODS), by hand and in float64; no kernel build tried."""
    from lodsgs.prior import fused

    monkeypatch.setattr(fused, "load_extension", lambda: pytest.fail("the CPU path tried to build the CUDA kernel"))
    one = torch.ones(1, 1, 1, 1)
    got = guidance_grad(one, 0.5 * one, 0.25 * one, torch.tensor([0.5]), 3.0, normalized)
    assert got.item() == pytest.approx(0.875 / (3.0 if normalized else 1.0))  # 0.5·(0.5 + 3·0.5 − 0.25)
    c, u, e, w = inputs()
    want = w.double().view(-1, 1, 1, 1) * ((1 - 7.5) * u.double() + 7.5 * c.double() - e.double())
    want = want / (7.5 if normalized else 1.0)
    assert torch.allclose(guidance_grad(c, u, e, w, 7.5, normalized).double(), want, rtol=1e-5, atol=1e-6)


def test_fp16_inputs_give_fp32_reference_and_x0_dtype_grad():
    c, u, e, w = inputs(torch.float16)
    assert guidance_grad(c, u, e, w, 100.0, True).dtype == torch.float32
    x = torch.zeros(3, 4, 8, 8, dtype=torch.float16, requires_grad=True)
    (got,) = torch.autograd.grad(guidance_loss(x, c, u, e, w, 100.0, True), x)
    assert got.dtype == torch.float16
    want = guidance_grad_reference(c.float(), u.float(), e.float(), w, 100.0, True) / 3
    assert torch.allclose(got.float(), want, rtol=1e-3, atol=1e-3 * want.abs().max().item())  # fp16 rounding


def test_failed_build_falls_back_with_one_line_once(monkeypatch, capsys):
    import torch.utils.cpp_extension

    from lodsgs.prior import fused

    monkeypatch.setattr(fused, "_ext", None)
    monkeypatch.setattr(fused, "_ext_failed", False)
    monkeypatch.setattr(torch.version, "cuda", "12.1")

    def broken_build(**kwargs):
        raise RuntimeError("nvcc fatal: unsupported gpu architecture\nmore detail")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", broken_build)
    assert fused.load_extension() is None
    assert fused.load_extension() is None  # decided once: no second build, no second line
    assert capsys.readouterr().err.splitlines() == [
        "lodsgs: note: the fused CUDA guidance kernel is unavailable: its build failed (RuntimeError: nvcc fatal: "
        "unsupported gpu architecture); using its PyTorch expression on the GPU instead (same gradient, slower); to "
        "fix: set CUDA_HOME to a CUDA 12.1 toolkit, the CUDA torch was built with (with nvcc in CUDA_HOME/bin)"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA kernel needs a CUDA GPU; none here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cuda_kernel_matches_reference(dtype):
    from lodsgs.prior.fused import load_extension

    assert load_extension() is not None, "the CUDA extension did not build"
    c, u, e, w = inputs(dtype, "cuda")
    for normalized in (False, True):
        got = guidance_grad(c, u, e, w, 1000.0, normalized).float()
        want = guidance_grad_reference(c, u, e, w, 1000.0, normalized)
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        assert torch.allclose(got, want, rtol=tol, atol=tol * want.abs().max().item())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_kernel_compiles_with_nvcc(tmp_path):
    result = subprocess.run(["nvcc", "-c", str(CU), "-o", str(tmp_path / "k.o"), "-arch=sm_80"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "k.o").stat().st_size > 0


def test_info_system_reports_the_kernel_and_cuda():
    from typer.testing import CliRunner

    from lodsgs.cli import app

    result = CliRunner().invoke(app, ["info", "--system"])
    assert result.exit_code == 0, result.output
    for key in ("torch", "CUDA GPU", "nvcc", "fused guidance kernel", "gsplat"):
        assert key in result.output
    assert "sources in" in result.output  # the checkout's cuda_ext/ (an installed wheel: lodsgs/_cuda/)
    if not torch.cuda.is_available():
        assert "none: generation runs on the CPU path" in result.output
