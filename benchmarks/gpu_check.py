"""`make gpu-check`: what any CUDA machine must confirm before SD runs, unattended; writes gpu-check.json and
gpu-check.md. Without a GPU the CUDA-only checks say "skipped" and the rest (resume) runs on the CPU.

1. gsplat's CUDA rasterizer vs lodsgs's CPU rasterizer on one scene: max |Δ| of colour, alpha and gradients;
2. the fused guidance kernel vs the PyTorch reference, fp32 and fp16: max |Δ| and µs per call vs the unfused
   torch expression;
3. generate -> Ctrl-C (a real SIGINT) -> --resume equal to an uninterrupted run, on the device;
4. the fallback paths forced on CUDA (as when gsplat or the kernel cannot build): raster_torch and the PyTorch
   guidance op on CUDA tensors against the CPU, and a few tiny-prior steps with both: finite;
5. peak memory of one render at the Gaussian cap (densify.max_gaussians) and the SD presets' step size, with
   the usual scales and with every Gaussian at the scale cap (densify.max_scale), gsplat and raster_torch;
6. the shap-e start on CUDA (a tiny random Shap-E): its mesh against the CPU's, and a few steps from it;
7. one SD-2.1-sized guidance step per method at batch 8 in fp16: time split and peak memory (bench_sd).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| (0 for empty tensors, inf for different shapes)."""
    if a.shape != b.shape:
        return float("inf")
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max()) if a.numel() else 0.0


def render_cpu_vs_cuda() -> dict:
    """The CUDA path of render() (whichever rasterizer this process chose) vs raster_torch on the CPU on one random
    scene, forward and backward: max |Δ| of colour, alpha and every gradient, and ms per CUDA render+backward."""
    from lodsgs.cameras import CameraConfig, eval_cameras
    from lodsgs.splats.model import Splats
    from lodsgs.splats.render import render

    cams = eval_cameras(CameraConfig(eval_radius=2.5, eval_fovy=45.0), 4, 128, 128)
    results, ms = {}, 0.0
    for dev in ("cpu", "cuda"):
        splats = Splats.random_ball(2000, radius=0.5, seed=0).to(dev)
        start = time.perf_counter()
        out = render(splats, cams, background=torch.ones(3))
        (out.rgb.mean() + out.alpha.mean()).backward()
        if dev == "cuda":
            torch.cuda.synchronize()
            ms = (time.perf_counter() - start) * 1e3  # includes the first call's one-time costs
        results[dev] = {"rgb": out.rgb.detach().cpu(), "alpha": out.alpha.detach().cpu(),
                        **{f"grad_{k}": p.grad.detach().cpu() for k, p in splats.params.items() if p.grad is not None}}
    return {**{k: max_abs_diff(results["cpu"][k], results["cuda"][k]) for k in results["cpu"]}, "cuda_ms": ms}


def render_check(device: torch.device) -> dict:
    """gsplat (CUDA) vs raster_torch (CPU) on the same random scene and cameras, forward and backward."""
    if device.type != "cuda":
        return {"skipped": "no CUDA GPU: gsplat's rasterizer cannot run"}
    from lodsgs.splats.render import cuda_rasterizer

    choice = cuda_rasterizer()
    if choice.name != "gsplat":
        return {"error": f"gsplat's CUDA rasterizer is unavailable: {choice.why}"}
    return render_cpu_vs_cuda()


def kernel_check(device: torch.device, reps: int = 200) -> dict:
    """The fused CUDA kernel vs the PyTorch reference at an SD-sized batch (8×4×64×64)."""
    if device.type != "cuda":
        return {"skipped": "no CUDA GPU: the kernel cannot run"}
    from lodsgs.prior.fused import guidance_grad, guidance_grad_reference, load_extension

    if load_extension() is None:
        return {"error": "the fused kernel did not build (see the warning above)"}
    out = {}
    for dtype in (torch.float32, torch.float16):
        c, u, e = (torch.randn(8, 4, 64, 64, device=device, dtype=dtype) for _ in range(3))
        w = torch.rand(8, device=device)
        got = guidance_grad(c, u, e, w, 1000.0, True).float()
        want = guidance_grad_reference(c, u, e, w, 1000.0, True)
        name = str(dtype).split(".")[-1]
        out[f"{name}_max_abs_diff"] = max_abs_diff(got, want)
        for label, fn in (("fused", guidance_grad), ("torch", guidance_grad_reference)):
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(reps):
                fn(c, u, e, w, 1000.0, True)
            torch.cuda.synchronize()
            out[f"{name}_{label}_us"] = (time.perf_counter() - start) / reps * 1e6
    return out


def resume_check(device: torch.device) -> dict:
    """A tiny-prior run interrupted by a real SIGINT at step 4 and resumed equals the uninterrupted run."""
    import lodsgs.trainer as gen
    from lodsgs import api
    from lodsgs.config import load_config
    from lodsgs.errors import LodsgsError
    from lodsgs.prior.tiny import build_tiny_prior
    from lodsgs.splats.io import read_ply

    with tempfile.TemporaryDirectory() as d:
        prior_dir = build_tiny_prior(Path(d) / "prior", "latent")
        cfg = load_config("fast", [f"prior.model={prior_dir}", f"run.device={device.type}", "run.steps=8",
                                   "run.batch=2", "camera.width=32", "camera.height=32", "init.num=300",
                                   "densify.start=0.25", "densify.every=0.25", "densify.stop=0.875",
                                   "run.turntable_frames=2", "run.turntable_size=16"])
        full = api.run("a red cube", cfg, Path(d) / "full", quiet=True).run_dir
        real = gen.train_step

        def interrupted_step(cfg, s, dev):
            logs = real(cfg, s, dev)
            if s.step == 4:
                os.kill(os.getpid(), signal.SIGINT)
            return logs
        gen.train_step = interrupted_step
        try:
            api.run("a red cube", cfg, Path(d) / "cut", quiet=True)
        except LodsgsError:  # Interrupted, after the checkpoint
            pass
        finally:
            gen.train_step = real
        resumed = api.run("a red cube", cfg, Path(d) / "cut", quiet=True, resume=True).run_dir
        a, b = read_ply(full / "splats.ply"), read_ply(resumed / "splats.ply")
        diffs = {k: max_abs_diff(a.params[k], b.params[k]) for k in a.params}
        return {"device": device.type, "equal": all(v == 0.0 for v in diffs.values()), "max_abs_diff": diffs}


@contextmanager
def forced_fallbacks():
    """This process renders CUDA splats with raster_torch and computes the guidance gradient with the PyTorch
    expression, as when gsplat's CUDA build and the fused kernel's fail."""
    from lodsgs.prior import fused
    from lodsgs.splats import render as render_mod

    saved = render_mod._cuda_choice, fused._ext, fused._ext_failed
    render_mod._cuda_choice = render_mod.Rasterizer("raster_torch", "forced by gpu-check")
    fused._ext, fused._ext_failed = None, True
    try:
        yield
    finally:
        render_mod._cuda_choice, fused._ext, fused._ext_failed = saved


def tiny_steps(device: torch.device, *extra: str, steps: int = 4) -> dict:
    """A few steps of a tiny-prior run in memory on ``device``: whether they end with finite splats."""
    from lodsgs import api
    from lodsgs.config import load_config
    from lodsgs.errors import LodsgsError
    from lodsgs.prior.tiny import build_tiny_prior

    with tempfile.TemporaryDirectory() as d:
        cfg = load_config("fast", [f"prior.model={build_tiny_prior(Path(d) / 'prior', 'latent')}", "init.kind=ball",
                                   f"run.device={device.type}", f"run.steps={steps}", "run.batch=2",
                                   "camera.width=32", "camera.height=32", "init.num=300", *extra])
        try:
            result = api.run("a red cube", cfg, None, quiet=True)
        except LodsgsError as e:
            return {"error": str(e)}
        finite = all(bool(torch.isfinite(p).all()) for p in result.splats.params.values())
        return {"steps": result.metrics["steps"], "gaussians": result.splats.num, "finite": finite}


def fallback_check(device: torch.device) -> dict:
    """The fallback paths forced on CUDA tensors: raster_torch against the CPU, the PyTorch guidance op against
    the reference on the CPU, and a few tiny-prior steps with both."""
    if device.type != "cuda":
        return {"skipped": "no CUDA GPU: here the fallback paths are the CPU paths (tests/test_fallback.py)"}
    from lodsgs.prior.fused import guidance_grad, guidance_grad_reference

    with forced_fallbacks():
        out = {f"raster_torch {k}": v for k, v in render_cpu_vs_cuda().items()}
        c, u, e = (torch.randn(8, 4, 64, 64) for _ in range(3))
        w = torch.rand(8)
        got = guidance_grad(*(x.to(device) for x in (c, u, e, w)), 1000.0, True)
        out["torch guidance op max_abs_diff"] = max_abs_diff(got, guidance_grad_reference(c, u, e, w, 1000.0, True))
        return {**out, **{f"tiny run {k}": v for k, v in tiny_steps(device).items()}}


def cap_memory_check(device: torch.device) -> dict:
    """Peak memory (GiB) and ms of one render+backward of densify.max_gaussians Gaussians at the lods_embedding
    preset's run.batch views and camera size: usual scales, and every Gaussian at the scale cap; gsplat and
    raster_torch. An out-of-memory is recorded, not raised."""
    if device.type != "cuda":
        return {"skipped": "no CUDA GPU"}
    from lodsgs.cameras import sample_cameras
    from lodsgs.config import load_config
    from lodsgs.splats import render as render_mod
    from lodsgs.splats.model import Splats

    cfg = load_config("lods_embedding", ["init.kind=ball"], profile=False)
    d = cfg.densify
    cams = sample_cameras(cfg.camera, cfg.run.batch, torch.Generator().manual_seed(0))
    out: dict = {"setting": f"{d.max_gaussians} Gaussians, {cfg.run.batch} views of {cfg.camera.width}²"}
    saved = render_mod._cuda_choice
    try:
        for name in ("gsplat", "raster_torch"):
            render_mod._cuda_choice = render_mod.Rasterizer(name, "chosen by gpu-check")
            for scales in ("usual scales", "every scale at max_scale"):
                splats = Splats.random_ball(d.max_gaussians, radius=0.5, seed=0).to(device)
                if scales != "usual scales":
                    with torch.no_grad():
                        splats.params["scales"].fill_(math.log(d.max_scale * d.scene_scale))
                out[f"{name}, {scales}"] = peak_of_render(splats, cams)
    finally:
        render_mod._cuda_choice = saved
    return out


def peak_of_render(splats, cams) -> str:
    """'x.xx GiB peak, y ms' for one render+backward, or the out-of-memory's first line."""
    from lodsgs.splats.render import render

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        r = render(splats, cams)
        (r.rgb.mean() + r.alpha.mean()).backward()
        torch.cuda.synchronize()
    except torch.OutOfMemoryError as e:
        return f"out of memory ({str(e).splitlines()[0][:120]})"
    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB peak, {(time.perf_counter() - start) * 1e3:.0f} ms"


def shap_e_check(device: torch.device) -> dict:
    """The shap-e start on CUDA from a tiny random Shap-E (a 16³ grid, as its CPU tests): the mesh against the
    CPU's (Shap-E's latents come from a CPU generator, so they should agree), then a few steps from it."""
    if device.type != "cuda":
        return {"skipped": "no CUDA GPU (tests/test_starts.py runs the shap-e start on the CPU)"}
    try:
        from lodsgs.prior import shap_e
        from lodsgs.prior.tiny_shap_e import build_tiny_shap_e
    except ImportError:
        return {"skipped": "needs build_tiny_shap_e (lodsgs/prior/tiny_shap_e.py), the tiny Shap-E builder"}
    grid, shap_e.GRID = shap_e.GRID, 16
    try:
        with tempfile.TemporaryDirectory() as d:
            model = str(build_tiny_shap_e(Path(d) / "shap-e"))
            meshes = {dev: shap_e.shap_e_mesh(model, "a red cube", 15.0, 2, 0, device=dev) for dev in ("cpu", "cuda")}
            (vc, cc), (vg, cg) = meshes["cpu"], meshes["cuda"]
            out = {"vertices cpu / cuda": f"{len(vc)} / {len(vg)}"}
            if vc.shape == vg.shape:
                out["max_abs_diff vertices"] = float(abs(vc - vg).max())
                out["max_abs_diff colours"] = float(abs(cc - cg).max())
            run = tiny_steps(device, "init.kind=shap-e", f"init.shap_e_model={model}", "init.shap_e_steps=2")
            return {**out, **{f"run {k}": v for k, v in run.items()}}
    finally:
        shap_e.GRID = grid


def sd_check(device: torch.device, quick: bool) -> dict:
    if device.type != "cuda":
        return {"skipped": "no CUDA GPU: `make bench-sd` measures the CPU step"}
    from benchmarks import bench_sd
    return {"lines": bench_sd.run(quick=quick)}


def markdown(report: dict) -> str:
    lines = [f"# lodsgs gpu-check ({report['device']}, {report['written']})", ""]
    for name, result in report["checks"].items():
        lines.append(f"## {name}")
        for key, value in result.items():
            if key == "lines":
                lines += [f"    {v}" for v in value]
            else:
                lines.append(f"- {key}: {value:.3g}" if isinstance(value, float) else f"- {key}: {value}")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."), help="folder for gpu-check.json and gpu-check.md")
    ap.add_argument("--quick", action="store_true", help="SD step: lods-embedding only")
    ap.add_argument("--skip-sd", action="store_true", help="leave out the SD-sized step (minutes on a CPU)")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (no CUDA GPU)"
    checks = {"render: gsplat CUDA vs CPU rasterizer": render_check(device),
              "fused kernel vs PyTorch reference": kernel_check(device),
              "generate -> SIGINT -> --resume": resume_check(device),
              "fallbacks forced on CUDA: raster_torch, PyTorch guidance op": fallback_check(device),
              "peak memory at the Gaussian cap": cap_memory_check(device),
              "shap-e start on CUDA": shap_e_check(device)}
    if not args.skip_sd:
        checks["SD-2.1-sized step, batch 8, fp16"] = sd_check(device, args.quick)
    report = {"device": name, "torch": torch.__version__, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
              "checks": checks}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=2))
    (args.out / "gpu-check.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
