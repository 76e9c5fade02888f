"""The guidance-gradient op: grad = w(t)·(ε_u + ω(ε_c − ε_u) − ε), ÷ω when normalized (LODS), NaN -> 0.

``guidance_loss`` applies it as an autograd function: forward returns 0.5·||grad||²/B (the value of
threestudio's ``0.5·sum((x − sg(x − grad))²)/B``, for logging) and backward hands x0 exactly grad/B, the
same gradient as that reparameterized loss. On CUDA tensors the fused kernel in ``cuda_ext/`` does the
whole combine in one pass; elsewhere, and if the kernel cannot be built, the PyTorch reference runs. Whether it
builds is decided once per process; a CUDA run that falls back prints one line on stderr saying why and how to fix.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from lodsgs import cuda_fallback

# an installed package carries the sources in lodsgs/_cuda/ (setup.py copies them); a source checkout
# (editable install) reads the top-level cuda_ext/ they are copied from
_PACKAGED, _CHECKOUT = Path(__file__).resolve().parents[1] / "_cuda", Path(__file__).resolve().parents[2] / "cuda_ext"
GUIDANCE_INSTEAD = "using its PyTorch expression on the GPU instead (same gradient, slower)"
_ext = None
_ext_failed = False
_ext_problem = ""  # why the build failed (for info --system)


def guidance_grad_reference(eps_c: Tensor, eps_u: Tensor, eps: Tensor, w: Tensor, omega: float,
                            normalized: bool) -> Tensor:
    """PyTorch reference (CPU path and oracle), computed in fp32."""
    w = w.float().view(-1, *([1] * (eps_c.dim() - 1)))
    eps_c, eps_u, eps = eps_c.float(), eps_u.float(), eps.float()
    grad = w * (eps_u + omega * (eps_c - eps_u) - eps)
    if normalized:
        grad = grad / omega
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def cuda_sources() -> list[Path] | None:
    """The kernel's source files (binding.cpp, guidance_kernel.cu), packaged or from the checkout; None if absent."""
    for folder in (_PACKAGED, _CHECKOUT):
        files = [folder / "binding.cpp", folder / "guidance_kernel.cu"]
        if all(f.is_file() for f in files):
            return files
    return None


def load_extension(announce: bool = True):
    """Build (once per process; the binary is cached by torch) and return the CUDA extension, or None: then one
    line on stderr (``announce``), once, says why and how to fix it, and the PyTorch expression runs."""
    global _ext, _ext_failed, _ext_problem
    if _ext is None and not _ext_failed:
        try:
            from torch.utils.cpp_extension import load

            sources = cuda_sources()
            if sources is None:
                raise FileNotFoundError(f"kernel sources found neither in {_PACKAGED} nor in {_CHECKOUT}")
            _ext = load(name="lodsgs_guidance", sources=[str(f) for f in sources], extra_cflags=["-O3"],
                        extra_cuda_cflags=["-O3"], verbose=False)
        except Exception as e:  # no toolkit, CUDA_HOME unset, compiler or toolkit mismatch, ...
            _ext_failed, _ext_problem = True, f"its build failed ({cuda_fallback.first_line(e)})"
            if announce:
                cuda_fallback.announce("the fused CUDA guidance kernel", _ext_problem, GUIDANCE_INSTEAD, gsplat=False)
    return _ext


def guidance_op(cuda: bool) -> tuple[str, str]:
    """Which guidance-gradient op a run on this machine uses and why (``lodsgs info --system``); on a CUDA machine
    this builds the kernel (once)."""
    if not cuda:
        return "PyTorch expression", "no CUDA GPU: the kernel is CUDA only"
    if load_extension(announce=False) is not None:
        return "fused CUDA kernel", "built and loaded"
    return "PyTorch expression", _ext_problem


def guidance_grad(eps_c: Tensor, eps_u: Tensor, eps: Tensor, w: Tensor, omega: float, normalized: bool) -> Tensor:
    """The guidance gradient; the fused kernel on CUDA (fp16/fp32), the reference elsewhere (fp32 out)."""
    if eps_c.is_cuda and (ext := load_extension()) is not None:
        dtype = eps_c.dtype if eps_c.dtype in (torch.float16, torch.float32) else torch.float32
        args = [x.to(dtype).contiguous() for x in (eps_c, eps_u, eps)]
        return ext.guidance_grad(*args, w.float().contiguous(), float(omega), bool(normalized))
    return guidance_grad_reference(eps_c, eps_u, eps, w, omega, normalized)


class _GuidanceLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0: Tensor, eps_c: Tensor, eps_u: Tensor, eps: Tensor, w: Tensor, omega: float,
                normalized: bool) -> Tensor:
        grad = guidance_grad(eps_c, eps_u, eps, w, omega, normalized)
        ctx.save_for_backward(grad)
        ctx.x_dtype = x0.dtype
        return 0.5 * grad.float().pow(2).sum() / x0.shape[0]

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad_out * grad / grad.shape[0]).to(ctx.x_dtype), None, None, None, None, None, None


def guidance_loss(x0: Tensor, eps_c: Tensor, eps_u: Tensor, eps: Tensor, w: Tensor, omega: float,
                  normalized: bool) -> Tensor:
    """Scalar whose gradient w.r.t. x0 is guidance_grad(...)/B (B = batch size)."""
    return _GuidanceLoss.apply(x0, eps_c.detach(), eps_u.detach(), eps.detach(), w.detach(), omega, normalized)
