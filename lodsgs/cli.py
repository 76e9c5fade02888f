"""The ``lodsgs`` command line: generate, batch, render, export, info, eval, priors."""

from __future__ import annotations

import functools
import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from lodsgs.errors import LodsgsError

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Text-to-3D Gaussian splatting under a diffusion prior with LODS.")
prior_app = typer.Typer(no_args_is_help=True, help="Diffusion priors: list them, train the offline shapes prior.")
app.add_typer(prior_app, name="prior")

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="Preset name or YAML file.")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")]
PriorOpt = Annotated[str | None, typer.Option("--prior", help="Prior: sd21 (the default), sd15, shapes (offline), "
                                                               "a hub id or a folder.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Parent folder for run folders.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (run.seed).")]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Optimization steps (run.steps).")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda (run.device).")]
ViewOpt = Annotated[bool, typer.Option("--view", help="Watch it in the browser: serve a viewer and push the "
                                                     "splats every run.view_every steps.")]
PortOpt = Annotated[int, typer.Option("--port", help="Viewer port (the next free one if taken).")]
HostOpt = Annotated[str, typer.Option("--host", help="Viewer address; 0.0.0.0 to reach it from other machines.")]


def friendly(fn):
    """Turn LodsgsError into a one-line message and exit code 2; Ctrl-C into exit code 130."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from lodsgs.generate import Interrupted
        try:
            return fn(*args, **kwargs)
        except Interrupted as e:
            typer.echo(f"lodsgs: {e}", err=True)
            raise typer.Exit(130) from None
        except LodsgsError as e:
            typer.echo(f"lodsgs: error: {e}", err=True)
            raise typer.Exit(2) from None
        except OSError as e:  # disk full, permission denied, a read-only or vanished folder
            where = f" ({e.filename})" if e.filename else ""
            typer.echo(f"lodsgs: error: {e.strerror or e}{where}; files finished before this are kept, none is "
                       "left half-written; free space or fix the folder, then rerun (--resume continues a run "
                       "from its last checkpoint)", err=True)
            raise typer.Exit(2) from None
    return wrapper


def build_config(config, sets, prior=None, seed=None, steps=None, device=None, init=None, image=None):
    """Preset, then the prior's recommended settings, then explicit options and --set."""
    from lodsgs.config import load_config
    overrides: list = []
    if prior:  # names and paths are taken literally (a folder may hold '#', '[' or ':'), not parsed as YAML
        overrides.append(("prior.model", prior))
    if seed is not None:
        overrides.append(f"run.seed={seed}")
    if steps is not None:
        overrides.append(f"run.steps={steps}")
    if device is not None:
        overrides.append(f"run.device={device}")
    if init is not None:
        overrides += ["init.kind=ply", ("init.path", str(init))]
    if image is not None:  # image-to-3D; the reference lifted is the start unless --init or --set init.kind says
        overrides += [("image.path", str(image))] + ([] if init is not None else ["init.kind=image"])
    return load_config(config, overrides + list(sets or []))


@app.command(epilog="""**Examples**

    lodsgs generate "a red cube" --prior shapes            # offline, CPU, minutes

    lodsgs generate "a corgi" --config lods_lora --steps 2500 --device cuda

    lodsgs generate "a red cube" --prior shapes --image ref.png   # image-to-3D (docs/image-to-3d.md)

    lodsgs generate "a corgi" --set guidance.guidance_scale=500 --set run.batch=4 --resume
""")
@friendly
def generate(
    prompt: Annotated[str, typer.Argument(help="What to generate.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    prior: PriorOpt = None,
    out: OutOpt = Path("runs"),
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    device: DeviceOpt = None,
    init: Annotated[Path | None, typer.Option("--init", help="Start from a .ply (splats or point cloud).")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Image-to-3D: a reference picture (RGBA PNG, or RGB "
                                               "on a plain background) seen from the front.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start again in an existing run folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    view: ViewOpt = False,
    port: PortOpt = 8080,
    host: HostOpt = "127.0.0.1",
) -> None:
    """Optimize Gaussian splats for PROMPT and write splats.ply, .splat, .spz, turntable and metrics."""
    from lodsgs.generate import generate as run
    cfg = build_config(config, sets, prior, seed, steps, device, init, image)
    live = _live_view(cfg, host, port) if view else None
    try:
        run_dir = run(prompt, cfg, out, resume=resume, overwrite=overwrite, quiet=quiet, on_step=live)
        typer.echo(f"wrote {run_dir}")
    except BaseException:
        if live:
            live.viewer.close()
        raise
    if live:
        from lodsgs.view import serve_until_interrupted
        serve_until_interrupted(live.viewer, "done; the viewer stays at")


def _live_view(cfg, host: str, port: int):
    from lodsgs.view import LiveView, Viewer
    viewer = Viewer(host, port, cfg.camera, cfg.render.background)
    typer.echo(f"live view: {viewer.url}")
    return LiveView(viewer, cfg.run.view_every)


@app.command(epilog="""**Examples**

    lodsgs batch prompts.txt --prior shapes --out runs/batch1

    lodsgs batch prompts.txt --shard 0/4 --out runs/batch1     # on four machines: 0/4 .. 3/4

    lodsgs batch prompts.txt --ray --out runs/batch1           # a local Ray: one worker per CPU

    lodsgs batch prompts.txt --ray auto --out /mnt/nfs/batch1   # the cluster `ray start` joined
""")
@friendly
def batch(
    prompts: Annotated[Path, typer.Argument(help="Text file: one prompt per line, # comments; a line "
                                               "ref.png<TAB>prompt is image-to-3D.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    prior: PriorOpt = None,
    out: OutOpt = Path("runs"),
    shard: Annotated[str, typer.Option("--shard", help="Run only shard i of n, as i/n.")] = "0/1",
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    device: DeviceOpt = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    view: ViewOpt = False,
    port: PortOpt = 8080,
    host: HostOpt = "127.0.0.1",
    ray: Annotated[str | None, typer.Option("--ray", help="Spread the prompts over Ray: `--ray` alone starts a "
                                             "local Ray, `--ray auto` joins the cluster of `ray start`, or an "
                                             "address.", show_default=False)] = None,
    gpus_per_run: Annotated[float | None, typer.Option("--gpus-per-run", help="With --ray: GPUs per prompt "
                                                       "(default 1 if the cluster has GPUs, else 0).")] = None,
    cpus_per_run: Annotated[float, typer.Option("--cpus-per-run", help="With --ray: CPUs per prompt.")] = 1.0,
    max_retries: Annotated[int, typer.Option("--max-retries", help="With --ray: times a prompt is retried "
                                             "after its worker died (bad prompts are never retried).")] = 2,
) -> None:
    """Generate every prompt of a list; rerunning the same command skips finished prompts."""
    from lodsgs import batch as b
    cfg = build_config(config, sets, prior, seed, steps, device)
    i, n = b.parse_shard(shard)
    todo = b.shard(b.read_prompts(prompts), i, n)
    if ray is not None:
        from lodsgs.ray_batch import run_batch_ray
        if view:
            raise LodsgsError("--view shows one process's run; it does not combine with --ray")
        if cpus_per_run < 0 or (gpus_per_run or 0) < 0 or max_retries < 0:
            raise LodsgsError("--cpus-per-run, --gpus-per-run and --max-retries must be >= 0")
        result = run_batch_ray(todo, cfg, out, ray, gpus_per_run, cpus_per_run, max_retries, log=typer.echo,
                               progress=not quiet)
        typer.echo(f"done {result.done}, skipped {result.skipped}, failed {result.failed} "
                   f"(manifest: {out / 'manifest.jsonl'})")
        raise typer.Exit(1 if result.failed else 0)
    live = _live_view(cfg, host, port) if view else None
    try:
        result = b.run_batch(todo, cfg, out, quiet=quiet, log=typer.echo, on_step=live)
    finally:
        if live:
            live.viewer.close()
    typer.echo(f"done {result.done}, skipped {result.skipped}, failed {result.failed} "
               f"(manifest: {out / 'manifest.jsonl'})")
    if result.failed:
        raise typer.Exit(1)


@app.command(epilog="**Example**\n\n    lodsgs render runs/a-red-cube-1a2b3c4d --frames 60 --size 512")
@friendly
def render(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (or a .ply file).")],
    frames: Annotated[int, typer.Option(help="Turntable frames.")] = 36,
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 256,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output .gif (default: in the run).")] = None,
) -> None:
    """Render a turntable GIF (and MP4 if ffmpeg is installed) of a run or a .ply."""
    from lodsgs.media import save_gif, save_mp4, turntable
    if frames < 1 or size < 8:
        raise LodsgsError(f"--frames must be >= 1 and --size >= 8 pixels; got --frames {frames} --size {size}")
    if out is not None and out.suffix.lower() != ".gif":
        raise LodsgsError(f"--out {str(out)!r} must end in .gif")
    cfg, splats, folder = _load_run(run_dir)
    gif = out or folder / "turntable.gif"
    images = turntable(splats, cfg.camera, frames, size, cfg.render.background)
    save_gif(images, gif)
    save_mp4(images, gif.with_suffix(".mp4"))
    typer.echo(f"wrote {gif}")


@app.command(epilog="""**Examples**

    lodsgs export runs/x/splats.ply --format splat

    lodsgs export runs/x/splats.ply --format ply-sh3 --out x_sh3.ply

    lodsgs export runs/x --out x.glb                         # a vertex-coloured mesh (pip install 'lodsgs[mesh]')

    lodsgs export runs/x/splats.spz --format mesh-ply --set mesh.faces=20000
""")
@friendly
def export(
    file: Annotated[Path, typer.Argument(help="A splat file (.ply, .splat, .spz) or a run folder.")],
    format: Annotated[str | None, typer.Option(
        "--format", "-f", help="splat, spz, ply or ply-sh3 (splats); glb, obj or mesh-ply (a mesh). Default: from "
                               "--out's extension, else splat.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output path.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", "-s", help="Mesh setting: mesh.key=value "
                                                   "(repeatable; see docs/mesh.md).")] = None,
) -> None:
    """Convert splats to antimatter15 .splat, Niantic .spz (version 2), INRIA .ply, a .ply with SH degree 3, or a
    vertex-coloured watertight mesh (.glb, .obj, .ply)."""
    from lodsgs.splats.io import load_splats, write_ply, write_splat
    from lodsgs.splats.mesh import MESH_FORMATS
    from lodsgs.splats.spz import write_spz
    writers = {"splat": (".splat", write_splat), "spz": (".spz", write_spz), "ply": (".ply", write_ply)}
    fmt = format or export_format(out)
    if fmt not in (*writers, "ply-sh3", *MESH_FORMATS):
        raise LodsgsError(f"unknown --format {fmt!r}; choose splat, spz, ply or ply-sh3 (splats), glb, obj or "
                          "mesh-ply (a mesh)")
    suffix = {**{k: v[0] for k, v in writers.items()}, "ply-sh3": ".ply", **MESH_FORMATS}[fmt]
    if out is not None and out.suffix.lower() != suffix:
        raise LodsgsError(f"--out {str(out)!r} does not end in {suffix}, the --format {fmt} extension")
    if sets and fmt not in MESH_FORMATS:
        raise LodsgsError("--set applies to the mesh formats (glb, obj, mesh-ply) only")
    cfg, file = (export_source(file, sets or []))
    splats = load_splats(file)
    if fmt in MESH_FORMATS:
        from lodsgs.splats.mesh import splats_to_mesh, write_mesh
        target = out or file.with_suffix(suffix)
        if target.resolve() == file.resolve():
            raise LodsgsError(f"{str(file)!r} is the splats; give --out for the mesh")
        write_mesh(splats_to_mesh(splats, cfg.mesh), target, fmt)
    elif fmt in writers:
        suffix, write = writers[fmt]
        target = out or file.with_suffix(suffix)
        if target.resolve() == file.resolve():
            raise LodsgsError(f"{str(file)!r} is already a {suffix} file; give --out for the copy")
        write(splats, target)
    else:
        target = out or file.with_name(file.stem + "_sh3.ply")
        write_ply(splats, target, sh_degree=3)
    typer.echo(f"wrote {target}")


def export_format(out: Path | None) -> str:
    """The export format --out's extension names; .ply is splats or a mesh, so it needs --format."""
    if out is None:
        return "splat"
    by_suffix = {".splat": "splat", ".spz": "spz", ".glb": "glb", ".obj": "obj"}
    if out.suffix.lower() == ".ply":
        raise LodsgsError(f"--out {str(out)!r}: a .ply holds splats or a mesh; give --format ply (splats) or "
                          "--format mesh-ply")
    if out.suffix.lower() not in by_suffix:
        raise LodsgsError(f"--out {str(out)!r}: unknown extension {out.suffix or '(none)'!r}; use .splat, .spz, "
                          ".ply, .glb or .obj, or give --format")
    return by_suffix[out.suffix.lower()]


def export_source(path: Path, sets: list[str]):
    """The config (a run folder's own, else the defaults; then ``--set mesh.*``) and the splat file to export."""
    from lodsgs.config import load_config
    bad = [s for s in sets if not s.startswith("mesh.")]
    if bad:
        raise LodsgsError(f"--set takes mesh settings (mesh.key=value) only; got {bad[0]!r}")
    if path.is_dir():
        ply = path / "splats.ply"
        if not ply.exists():
            raise LodsgsError(f"{str(path)!r} has no splats.ply; is it a finished run folder?")
        cfg_file = path / "config.yaml"
        return load_config(str(cfg_file) if cfg_file.exists() else None, sets), ply
    return load_config(None, sets), path


@app.command(epilog="""**Examples**

    lodsgs view runs/a-red-cube-1a2b3c4d

    lodsgs view scene.spz --port 9000 --host 0.0.0.0
""")
@friendly
def view(
    target: Annotated[Path, typer.Argument(help="A run folder, or a .ply, .splat or .spz file.")],
    port: PortOpt = 8080,
    host: HostOpt = "127.0.0.1",
) -> None:
    """Open splats in the browser (viser): orbit camera from the run's eval view, prompt and metrics beside it."""
    from lodsgs.view import Viewer, load_target, serve_until_interrupted
    t = load_target(target)
    viewer = Viewer(host, port, t.camera, t.background)
    viewer.show(t.splats)
    viewer.describe(t.title, {**t.facts, "Gaussians": t.splats.num})
    if t.checkpoints:
        viewer.add_checkpoints(t.checkpoints, t.splats)
    serve_until_interrupted(viewer, f"viewing {target}")


@app.command(epilog="**Examples**\n\n    lodsgs info runs/a-red-cube-1a2b3c4d\n\n    lodsgs info --system")
@friendly
def info(
    path: Annotated[Path | None, typer.Argument(help="A run folder, a .ply, .splat or .spz file, or a mesh "
                                                     "(.glb, .obj, or a .ply with faces).")] = None,
    system: Annotated[bool, typer.Option("--system", help="What this machine can run: torch, CUDA, gsplat, "
                                                          "nvcc, the fused kernel.")] = False,
) -> None:
    """Summarize a run (prompt, method, steps, time, Gaussians; its log.jsonl if any), a splat file, or a mesh
    (vertices, faces, watertight, genus, bounds)."""
    from lodsgs.splats.io import load_splats
    if system:
        from lodsgs.system import system_report
        for key, value in system_report().items():
            typer.echo(f"{key:22s} {value}")
        if path is None:
            return
    if path is None:
        raise LodsgsError("give a run folder or a .ply, .splat or .spz file, or --system")
    if path.is_dir():
        metrics = path / "metrics.json"
        if metrics.exists():
            try:
                typer.echo(json.dumps(json.loads(metrics.read_text()), indent=2))
            except ValueError:
                raise LodsgsError(f"{str(metrics)!r} is not valid JSON (a damaged run folder?); rerun the "
                                  "run with --overwrite, or delete the file") from None
        else:
            ckpt = path / "checkpoints" / "last.pt"
            state = "unfinished (resumable)" if ckpt.exists() else "empty"
            typer.echo(f"{path}: no metrics.json; run is {state}")
        log = path / "log.jsonl"
        if log.exists():
            from lodsgs.runlog import format_summary, summarize
            typer.echo(format_summary(summarize(log)))
        return
    if is_mesh_file(path):
        from lodsgs.splats.mesh import load_mesh, mesh_summary
        m = mesh_summary(load_mesh(path))
        genus = f", genus {m['genus']}" if m["genus"] is not None else ""
        typer.echo(f"{path}: mesh, {m['vertices']} vertices, {m['faces']} faces, {m['pieces']} piece(s), "
                   f"{'watertight' if m['watertight'] else 'not watertight'}, Euler number {m['euler']}{genus}, "
                   f"{'vertex colours' if m['colours'] else 'no vertex colours'}, bounds {m['bounds'][0]} .. "
                   f"{m['bounds'][1]} (y-up)")
        return
    splats = load_splats(path)
    lo, hi = splats.means.min(0).values.tolist(), splats.means.max(0).values.tolist()
    typer.echo(f"{path}: {splats.num} Gaussians, SH degree {splats.sh_degree}, "
               f"bounds {[round(v, 3) for v in lo]} .. {[round(v, 3) for v in hi]} (y-up)")


@app.command("plot-log", epilog="""**Example**

    lodsgs plot-log sds=runs/sds/a-cube-1a2b3c4d lods=runs/lods/a-cube-1a2b3c4d --out diag.png
""")
@friendly
def plot_log(
    runs: Annotated[list[str], typer.Argument(help="LABEL=RUN_DIR (or RUN_DIR: labelled by its folder name).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("log.png"),
    keys: Annotated[str, typer.Option(help="Comma-separated log keys, one panel each.")] = "eps_gap,alpha_shift",
    window: Annotated[int, typer.Option(help="Moving-average window in records.")] = 10,
) -> None:
    """Plot run logs side by side: by default |ε_c − ε_u| and α's distance from its start (moving averages)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LodsgsError("plot-log needs matplotlib: pip install 'lodsgs[plot]'") from None
    from lodsgs.plot import plot_logs
    labelled = dict(r.split("=", 1) if "=" in r else (Path(r).name, r) for r in runs)
    typer.echo(f"wrote {plot_logs({k: Path(v) for k, v in labelled.items()}, keys.split(','), out, window)}")


def is_mesh_file(path: Path) -> bool:
    """A .glb / .gltf / .obj, or a .ply with a face element (a splat .ply has vertices only)."""
    suffix = path.suffix.lower()
    if suffix in (".glb", ".gltf", ".obj"):
        return True
    if suffix != ".ply" or not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4096).split(b"end_header")[0]
    return b"element face" in head


def _load_run(path: Path):
    from lodsgs.config import Config, load_config
    from lodsgs.splats.io import read_ply
    if path.is_dir():
        ply = path / "splats.ply"
        cfg_file = path / "config.yaml"
        cfg = load_config(str(cfg_file)) if cfg_file.exists() else Config()
        if not ply.exists():
            raise LodsgsError(f"{str(path)!r} has no splats.ply; is it a finished run folder?")
        return cfg, read_ply(ply), path
    return Config(), read_ply(path), path.parent


@prior_app.command("list")
@friendly
def prior_list() -> None:
    """Named priors and whether their weights are here: shipped, in the Hugging Face cache, or to download."""
    from lodsgs.prior.diffusion import resolve_model
    from lodsgs.prior.hub import cache_dir, cached_priors, folder_size, human_size
    try:
        typer.echo(f"{'shapes':52s} shipped: {resolve_model('shapes')}")
    except LodsgsError as e:
        typer.echo(f"{'shapes':52s} unavailable: {e}")
    for name, repo, folder in cached_priors():
        label = f"{name} ({repo})" if name != repo else f"{repo} (legacy id)"
        if folder:
            typer.echo(f"{label:52s} cached, {human_size(folder_size(folder))}: {folder}")
        elif name == repo:
            typer.echo(f"{label:52s} not cached (its mirror is used)")
        else:
            typer.echo(f"{label:52s} not cached: `lodsgs prior download {name}`")
    typer.echo(f"Hugging Face cache: {cache_dir()}")


@prior_app.command("download", epilog="""**Examples**

    lodsgs prior download sd21                         # into the Hugging Face cache

    lodsgs prior download sd15 --to /mnt/priors/sd15 # a folder a cluster shares; then --prior /mnt/priors/sd15
""")
@friendly
def prior_download(
    name: Annotated[str, typer.Argument(help="sd21, sd15 or a hub id.")],
    to: Annotated[Path | None, typer.Option("--to", help="Download into this folder instead of the cache.")] = None,
    revision: Annotated[str, typer.Option("--revision", help="A commit to pin (prior.revision).")] = "",
    fp16: Annotated[bool | None, typer.Option("--fp16/--fp32", help="The fp16 files (half the bytes) when the "
                                              "repository has them; default: fp16 on a CUDA machine.",
                                              show_default=False)] = None,
) -> None:
    """Prefetch a Stable Diffusion prior (its diffusers components only), with progress; an interrupted
    download resumes where it stopped."""
    import torch

    from lodsgs.prior.diffusion import _looks_like_path, resolve_model
    from lodsgs.prior.hub import LEGACY, download, folder_size, human_size
    repo = resolve_model(name)
    if name == "shapes" or _looks_like_path(repo):
        raise LodsgsError(f"{name!r} is not a hub id; `prior download` takes sd21, sd15 or an owner/name hub id")
    repo = LEGACY.get(repo, repo)
    half = torch.cuda.is_available() if fp16 is None else fp16
    folder = download(repo, revision or None, half, str(to) if to else None)
    typer.echo(f"{repo}: {human_size(folder_size(folder))} in {folder}")
    if to:
        typer.echo(f"use it with --prior {to}")


@prior_app.command("captions")
def prior_captions() -> None:
    """Every caption of the shapes world (what `--prior shapes` knows): the 30 objects, the 10 scenes, then the
    underspecified ones ("a cube": any colour; "a red shape": any shape)."""
    from lodsgs.prior.shapes import world
    for caption in world.all_captions():
        typer.echo(caption)


@prior_app.command("train-shapes", epilog="""**Examples**

    lodsgs prior train-shapes --out my_shapes --steps 7000

    lodsgs prior train-shapes --out my_shapes --steps 7700 --lr 2e-4 --init lodsgs/prior/shapes/weights
""")
@friendly
def prior_train_shapes(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (diffusers layout).")] = Path("shapes_prior"),
    steps: Annotated[int, typer.Option(help="Optimizer steps in all; the learning-rate schedule follows the step, "
                                            "so the same arguments give the same prior.")] = 7000,
    minutes: Annotated[float | None, typer.Option(help="NOT reproducible: train for this wall-clock budget instead "
                                                  "of --steps (schedule by elapsed time).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the folder's checkpoint.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    init: Annotated[Path | None, typer.Option(help="Warm-start from an exported prior folder.")] = None,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 4e-4,
    batch: Annotated[int, typer.Option(help="Images per step.")] = 32,
    weighting: Annotated[str, typer.Option(help="Loss weight per sample: v = min(1/ᾱ_t, 20), eps = 1.")] = "v",
    underspecified: Annotated[float, typer.Option(
        help="Share of single-object samples captioned by shape alone ('a cube'), and again by colour alone "
             "('a red shape'); 0 = full captions only.")] = 0.15,
) -> None:
    """Train the offline shapes prior on the procedural world (7,000 steps: about an hour on 2 CPU cores)."""
    from lodsgs.prior.shapes import train
    if weighting not in ("v", "eps"):
        raise LodsgsError(f"--weighting must be v or eps, got {weighting!r}")
    if steps < 1 or (minutes is not None and minutes <= 0) or lr <= 0 or batch < 1:
        raise LodsgsError("--steps and --batch must be >= 1, --minutes and --lr > 0")
    if not 0 <= underspecified <= 0.5:
        raise LodsgsError(f"--underspecified is a probability per kind, 0 to 0.5; got {underspecified}")
    argv = ["--out", str(out), "--steps", str(steps), "--seed", str(seed), "--lr", str(lr), "--batch", str(batch),
            "--weighting", weighting, "--underspecified", str(underspecified)] + (["--resume"] if resume else [])
    argv += ["--minutes", str(minutes)] if minutes is not None else []
    train.main(argv + (["--init", str(init)] if init else []))


@prior_app.command("sanity", epilog="**Example**\n\n    lodsgs prior sanity --caption 'a red cube' --json sanity.json")
@friendly
def prior_sanity(
    caption: Annotated[list[str] | None, typer.Option("--caption", help="Caption (repeatable); default the 40 full "
                                                      "captions; underspecified ones ('a cube') also count the "
                                                      "samples' colours and shapes.")] = None,
    model: Annotated[str, typer.Option(help="Prior name or folder.")] = "shapes",
    n: Annotated[int, typer.Option(help="Samples per caption.")] = 4,
    cfg: Annotated[float, typer.Option(help="Classifier-free guidance scale of the DDIM samples.")] = 3.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the rows as JSON.")] = None,
) -> None:
    """Sample the shapes prior itself (DDIM + CFG) and score samples against ground-truth renders."""
    import json

    from lodsgs.prior.diffusion import DiffusionPrior, resolve_model
    from lodsgs.prior.shapes import world
    from lodsgs.prior.shapes.sanity import sanity_report
    unknown = [c for c in caption or [] if c not in world.all_captions()]
    if unknown:
        raise LodsgsError(f"not shapes-world captions: {unknown}; see `lodsgs prior captions`")
    prior = DiffusionPrior.from_pretrained(resolve_model(model))
    rows = sanity_report(prior, caption or None, n=n, cfg=cfg)
    keys = ("nearest_view_mse", "color_match", "background_error")
    typer.echo("| caption | nearest-view MSE | colour match | background error | samples' colours / shapes |\n"
               "|---|---|---|---|---|")
    for r in rows:
        modes = "; ".join(", ".join(f"{k} {v}" for k, v in r[h].items()) for h in ("colors", "shapes") if h in r)
        typer.echo(f"| {r['caption']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + f" | {modes or '–'} |")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    typer.echo(f"| **mean of {len(rows)}** | " + " | ".join(f"{mean[k]:.3f}" for k in keys) + " | |")
    if json_out:
        json_out.write_text(json.dumps({"rows": rows, "mean": mean, "n": n, "cfg": cfg}, indent=2))


Set2DOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="2D setting KEY=VALUE (repeatable), e.g. "
                                                                     "guidance_scale=100, embedding_lr=1e-3.")]
Preset2DOpt = Annotated[str | None, typer.Option("--preset", help="2D preset: default (shapes with --prior "
                                                                  "shapes), sds-7.5, sds-100, paper-embedding, "
                                                                  "paper-lora, edit.")]


@app.command("image", epilog="""**Examples**

    lodsgs image "a red cube" --prior shapes                      # 4 particles, 32², CPU, about a minute

    lodsgs image "a red cube" --prior shapes --preset paper-embedding --particles 6

    lodsgs image "an astronaut riding a horse" --preset paper-lora --device cuda   # SD latents, VAE-decoded
""")
@friendly
def image_cmd(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    particles: Annotated[int | None, typer.Option("--particles", help="Images optimized together.")] = None,
    method: Annotated[str | None, typer.Option("--method", help="sds, lods-embedding or lods-lora.")] = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default runs/image-<prompt>-<seed>).")
                   ] = None,
    prior: PriorOpt = None,
    preset: Preset2DOpt = None,
    sets: Set2DOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Optimize images directly with the prior's distillation loss; writes image.png (the particles side by side),
    progress.png, log.jsonl and metrics.json."""
    from lodsgs.generate import resolve_device
    from lodsgs.image2d import generate_image, make_config, slug
    cfg = make_config(preset or ("shapes" if prior == "shapes" else "default"), sets, particles=particles,
                      method=method, seed=seed, steps=steps)
    run_dir = out or Path("runs") / f"image-{slug(prompt)}-{cfg.seed}"
    generate_image(prompt, cfg, run_dir, prior or "sd21", device=resolve_device(device or "auto"))
    typer.echo(f"wrote {run_dir}")


@app.command("edit", epilog="""**Examples**

    lodsgs edit red-cube.png --source "a red cube" --target "a blue cube" --prior shapes

    lodsgs edit red-cube.png --source "a red cube" --target "a blue cube" --prior shapes --method dds
""")
@friendly
def edit_cmd(
    image: Annotated[Path, typer.Argument(help="The image to edit (PNG or JPEG).")],
    source: Annotated[str, typer.Option("--source", help="Caption of the image as it is.")],
    target: Annotated[str, typer.Option("--target", help="Caption of the image as it should become.")],
    method: Annotated[str | None, typer.Option(
        "--method", help="lods (default: LODS-embedding, α from the source caption), sds, dds or lods-lora.")] = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run folder (default runs/edit-<target>-<seed>).")
                   ] = None,
    prior: PriorOpt = None,
    preset: Preset2DOpt = None,
    sets: Set2DOpt = None,
    device: DeviceOpt = None,
) -> None:
    """Move IMAGE from the --source caption to the --target one, keeping what the edit does not ask to change;
    writes edited.png, before_after.png, progress.png, log.jsonl and metrics.json."""
    from lodsgs.generate import resolve_device
    from lodsgs.image2d import edit_image, make_config, slug
    cfg = make_config(preset or "edit", sets, method=method, seed=seed, steps=steps)
    run_dir = out or Path("runs") / f"edit-{slug(target)}-{cfg.seed}"
    edit_image(image, source, target, cfg, run_dir, prior or "sd21", device=resolve_device(device or "auto"))
    typer.echo(f"wrote {run_dir}")


@app.command("eval", epilog="""**Examples**

    lodsgs eval --out runs/eval                         # every caption, every default method

    lodsgs eval --caption "a red cube" --caption "a blue torus" --steps 200

    lodsgs eval --variant "lods-lr1e-2=guidance.method=lods-embedding,guidance.embedding_lr=0.01"

    lodsgs eval --seeds 0,1,2 --caption "a red cube" --caption "a blue torus"   # mean ± sd across seeds
""")
@friendly
def eval_cmd(
    out: OutOpt = Path("runs/eval"),
    caption: Annotated[list[str] | None, typer.Option("--caption", help="Caption to evaluate (repeatable).")] = None,
    variant: Annotated[list[str] | None, typer.Option(
        "--variant", help="NAME=key=value,... (repeatable; NAME 'init' scores the unoptimized start); "
                         "default: init, SDS CFG 100 + 7.5, LODS-emb (prior's ω and ω 1000), LODS-LoRA.")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    seed: SeedOpt = None,
    seeds: Annotated[str | None, typer.Option(
        "--seeds", help="Comma-separated seeds, e.g. 0,1,2: one run per caption, method and seed; the tables "
                        "give mean ± sd across seeds. Default: the config's seed.")] = None,
    steps: StepsOpt = None,
    two_d: Annotated[bool, typer.Option("--2d", help="2D instead: `lodsgs image` / `lodsgs edit` runs scored "
                                                     "against truth renders (see --task).")] = False,
    task: Annotated[str, typer.Option("--task", help="With --2d: generate, colour (edits) or shape (edits).")
                    ] = "generate",
    image: Annotated[bool, typer.Option("--image", help="Image-to-3D: each caption's truth seen by the reference "
                                        "camera is the input; methods image, reference-only, text-only; scores "
                                        "also the back half (views >= 90 degrees from the reference).")] = False,
) -> None:
    """Generate shapes-world captions with each method and score them against ground-truth renders: PSNR,
    silhouette IoU, colour error, and shape / colour R-precision (R@1) for single-object captions."""
    from lodsgs.eval import DEFAULT_VARIANTS, IMAGE_VARIANTS, parse_seeds, run_eval
    if seeds is not None and seed is not None:
        raise LodsgsError("give --seed or --seeds, not both")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    if two_d:
        from lodsgs.eval2d import eval2d_cli
        typer.echo(eval2d_cli(task, variant, out, caption, seed_list or [seed or 0], steps, log=typer.echo))
        return
    variants = dict(IMAGE_VARIANTS if image else DEFAULT_VARIANTS)
    if variant:
        variants = {}
        for v in variant:
            name, sep, body = v.partition("=")
            if not sep or not name:
                raise LodsgsError(f"--variant expects NAME=key=value,... (or NAME= for the preset as is), got {v!r}")
            # commas inside [...] belong to a list value: "init.color=[0.5,0.5,0.5],run.steps=10"
            variants[name] = [kv.strip() for kv in re.split(r",(?![^\[]*\])", body) if kv.strip()]
    base = list(sets or [])
    if seed is not None:
        base.append(f"run.seed={seed}")
    if steps is not None:
        base.append(f"run.steps={steps}")
    result = run_eval(caption, variants, base, out, config=config, log=typer.echo, seeds=seed_list, image=image)
    typer.echo(result.markdown())
    typer.echo(f"wrote {out / 'eval.json'} and {out / 'eval.md'}")


def optional_ray_address(argv: list[str]) -> list[str]:
    """``--ray`` may come without an address (a local Ray): insert ``local`` unless an address follows."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if arg == "--ray" and not (following in ("auto", "local") or ":" in following):
            out.append("local")
    return out


def main() -> None:
    try:
        app(args=optional_ray_address(sys.argv[1:]))
    except LodsgsError as e:  # raised outside a command body
        print(f"lodsgs: error: {e}", file=sys.stderr)
        sys.exit(2)
