"""`make gpu-check`: what any CUDA machine must confirm before SD runs, unattended; writes gpu-check.json and
gpu-check.md. Without a GPU the CUDA-only checks say "skipped" and the rest (resume) runs on the CPU.

1. gsplat's CUDA rasterizer vs lodsgs's CPU rasterizer on one scene: max |Δ| of colour, alpha and gradients;
2. the fused guidance kernel vs the PyTorch reference, fp32 and fp16: max |Δ| and µs per call vs the unfused
   torch expression;
3. generate -> Ctrl-C (a real SIGINT) -> --resume equal to an uninterrupted run, on the device;
4. one SD-2.1-sized guidance step per method at batch 8 in fp16: time split and peak memory (bench_sd).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from pathlib import Path

import torch


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a − b| (0 for empty tensors, inf for different shapes)."""
    if a.shape != b.shape:
        return float("inf")
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max()) if a.numel() else 0.0


def render_check(device: torch.device) -> dict:
    """gsplat (CUDA) vs raster_torch (CPU) on the same random scene and cameras, forward and backward."""
    if device.type != "cuda":
        return {"skipped": "no CUDA GPU: gsplat's rasterizer cannot run"}
    from lodsgs.cameras import CameraConfig, eval_cameras
    from lodsgs.splats.model import Splats
    from lodsgs.splats.render import render

    cams = eval_cameras(CameraConfig(eval_radius=2.5, eval_fovy=45.0), 4, 128, 128)
    results = {}
    for dev in ("cpu", "cuda"):
        splats = Splats.random_ball(2000, radius=0.5, seed=0).to(dev)
        out = render(splats, cams, background=torch.ones(3))
        (out.rgb.mean() + out.alpha.mean()).backward()
        results[dev] = {"rgb": out.rgb.detach().cpu(), "alpha": out.alpha.detach().cpu(),
                        **{f"grad_{k}": p.grad.detach().cpu() for k, p in splats.params.items() if p.grad is not None}}
    return {k: max_abs_diff(results["cpu"][k], results["cuda"][k]) for k in results["cpu"]}


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
              "generate -> SIGINT -> --resume": resume_check(device)}
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
