"""The ``lodsgs`` command line: generate, batch, render, export, info, eval, priors."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lodsgs.cli_prior import prior_app
from lodsgs.cli_shared import (
    ConfigOpt,
    DeviceOpt,
    HostOpt,
    OneLineErrors,
    OverwriteOpt,
    PortOpt,
    PriorOpt,
    QuietOpt,
    RunsOpt,
    SeedOpt,
    SetOpt,
    StepsOpt,
    ViewOpt,
    build_config,
    friendly,
)
from lodsgs.errors import LodsgsError

app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Text-to-3D Gaussian splatting under a diffusion prior with LODS.")
app.add_typer(prior_app, name="prior")


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
    out: RunsOpt = Path("runs"),
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    device: DeviceOpt = None,
    init: Annotated[Path | None, typer.Option("--init", help="Start from a .ply (splats or point cloud).")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="Image-to-3D: a reference picture (RGBA PNG, or RGB "
                                               "on a plain background) seen from the front.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the run's last checkpoint.")] = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    view: ViewOpt = False,
    port: PortOpt = 8080,
    host: HostOpt = "127.0.0.1",
) -> None:
    """Optimize Gaussian splats for PROMPT and write splats.ply, .splat, .spz, turntable and metrics."""
    cfg = build_config(config, sets, prior, seed, steps, device, init, image)
    from lodsgs.preflight import check_generate
    check_generate(prompt, cfg, out, resume, overwrite)  # bad input refused before torch is imported
    from lodsgs.api import run
    live = _live_view(cfg, host, port) if view else None
    try:
        result = run(prompt, cfg, out, resume=resume, overwrite=overwrite, quiet=quiet, on_step=live)
        typer.echo(f"wrote {result.run_dir}")
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
                                               "`ref.png<TAB>prompt` is image-to-3D.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    prior: PriorOpt = None,
    out: RunsOpt = Path("runs"),
    shard: Annotated[str, typer.Option("--shard", help="Run only shard i of n, as i/n.")] = "0/1",
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
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
    cfg = build_config(config, sets, prior, seed, steps, device)
    image_cfg = build_config(config, sets, prior, seed, steps, device, image="ref.png")  # as `generate --image`
    from lodsgs.batch import run_list
    live = _live_view(cfg, host, port) if view and ray is None else None
    try:
        result = run_list(prompts, cfg, out, shard, ray, gpus_per_run, cpus_per_run, max_retries, quiet=quiet,
                          log=typer.echo, on_step=live, view=view, image_cfg=image_cfg)
    finally:
        if live:
            live.viewer.close()
    typer.echo(f"done {result.done}, skipped {result.skipped}, failed {result.failed} "
               f"(manifest: {out / 'manifest.jsonl'})")
    raise typer.Exit(1 if result.failed else 0)


@app.command(epilog="**Example**\n\n    lodsgs render runs/a-red-cube-1a2b3c4d --frames 60 --size 512")
@friendly
def render(
    run_dir: Annotated[Path, typer.Argument(help="A run folder or a splat file (.ply, .splat, .spz, glTF splats "
                                                 ".glb).")],
    frames: Annotated[int, typer.Option(help="Turntable frames.")] = 36,
    size: Annotated[int, typer.Option(help="Image size in pixels.")] = 256,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The .gif written (default: turntable.gif beside "
                                             "the splats).")] = None,
) -> None:
    """Render a turntable GIF (and MP4 if ffmpeg is installed) of a run or a splat file."""
    from lodsgs.summary import render_turntable
    typer.echo(f"wrote {render_turntable(run_dir, frames, size, out)}")


@app.command(epilog="""**Examples**

    lodsgs export runs/x/splats.ply --format splat

    lodsgs export runs/x/splats.ply --format ply-sh3 --out x_sh3.ply

    lodsgs export runs/x/splats.ply --format spz-v2          # .spz version 2, for viewers that read no later one

    lodsgs export runs/x --out x.glb                         # a textured mesh (pip install 'lodsgs[mesh]')

    lodsgs export runs/x --format gltf-splats --out x.glb    # the splats themselves, glTF KHR_gaussian_splatting

    lodsgs export runs/x/splats.spz --format mesh-ply --set mesh.faces=20000
""")
@friendly
def export(
    file: Annotated[Path, typer.Argument(help="A splat file (.ply, .splat, .spz, glTF splats .glb) or a run "
                                              "folder.")],
    format: Annotated[str | None, typer.Option(
        "--format", "-f", help="splat, spz (version 4), spz-v2 (version 2, for viewers that read no later .spz), "
                               "ply, ply-sh3 or gltf-splats (splats; gltf-splats is a .glb of glTF's "
                               "KHR_gaussian_splatting); glb, obj or mesh-ply (a mesh). Default: from --out's "
                               "extension (.spz: version 4; .glb: the mesh), else splat.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The file written (default: beside the input, "
                                             "with the format's extension).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", "-s", help="Mesh setting: mesh.key=value "
                                                   "(repeatable; see docs/mesh.md).")] = None,
) -> None:
    """Convert splats to antimatter15 .splat, Niantic .spz (version 4, or 2 with spz-v2), INRIA .ply, a .ply with SH
    degree 3, glTF splats (a .glb with KHR_gaussian_splatting), or a watertight mesh (.glb and .obj textured,
    .ply vertex-coloured)."""
    from lodsgs.export import export as convert
    typer.echo(f"wrote {convert(file, format, out, sets)}")


@app.command(epilog="""**Examples**

    lodsgs view runs/a-red-cube-1a2b3c4d

    lodsgs view scene.spz --port 9000 --host 0.0.0.0
""")
@friendly
def view(
    target: Annotated[Path, typer.Argument(help="A run folder, or a .ply, .splat, .spz or glTF splats .glb "
                                                "file.")],
    port: PortOpt = 8080,
    host: HostOpt = "127.0.0.1",
) -> None:
    """Open splats in the browser (viser): orbit camera from the run's eval view, prompt and metrics beside it."""
    from lodsgs.view import Viewer, check_address, load_target, serve_until_interrupted
    check_address(host, port)
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
    path: Annotated[Path | None, typer.Argument(help="A run folder, a .ply, .splat, .spz or glTF splats .glb "
                                                     "file, or a mesh (.glb, .obj, or a .ply with faces).")] = None,
    system: Annotated[bool, typer.Option("--system", help="What this machine can run: torch, CUDA, gsplat, "
                                                          "nvcc, the fused kernel.")] = False,
) -> None:
    """Summarize a run (prompt, method, steps, time, Gaussians; its log.jsonl if any), a splat file, or a mesh
    (vertices, faces, watertight, genus, bounds)."""
    if system:
        from lodsgs.system import system_report
        for key, value in system_report().items():
            typer.echo(f"{key:22s} {value}")
        if path is None:
            return
    if path is None:
        raise LodsgsError("give a run folder, a .ply, .splat, .spz or .glb file, or --system")
    from lodsgs.summary import describe
    typer.echo(describe(path))


@app.command("plot-log", epilog="""**Example**

    lodsgs plot-log sds=runs/sds/a-cube-1a2b3c4d lods=runs/lods/a-cube-1a2b3c4d --out diag.png
""")
@friendly
def plot_log(
    runs: Annotated[list[str], typer.Argument(help="LABEL=RUN_DIR (or RUN_DIR: labelled by its folder name).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("log.png"),
    keys: Annotated[str, typer.Option(help="Comma-separated log keys, one panel each.")] = "eps_gap,alpha_shift",
    window: Annotated[int, typer.Option(min=1, max=100_000, help="Moving-average window in records.")] = 10,
) -> None:
    """Plot run logs side by side: by default |ε_c − ε_u| and α's distance from its start (moving averages)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise LodsgsError("plot-log needs matplotlib: pip install 'lodsgs[plot]'") from None
    from lodsgs.plot import plot_logs
    labelled = dict(r.split("=", 1) if "=" in r else (Path(r).name, r) for r in runs)
    typer.echo(f"wrote {plot_logs({k: Path(v) for k, v in labelled.items()}, keys.split(','), out, window)}")


ParticlesOpt = Annotated[int | None, typer.Option("--particles", help="Images optimized together (canvas.particles).")]


@app.command("image", epilog="""**Examples**

    lodsgs image "a red cube" --prior shapes                      # 4 particles, 32², CPU, about a minute

    lodsgs image "a red cube" --prior shapes --config image2d_paper_embedding --particles 6

    lodsgs image "an astronaut riding a horse" --config image2d_paper_lora --device cuda   # SD latents, VAE-decoded

    lodsgs image "a red cube" --prior shapes --set guidance.guidance_scale=7.5 --set canvas.lr=0.1
""")
@friendly
def image_cmd(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    particles: ParticlesOpt = None,
    method: Annotated[str | None, typer.Option("--method", help="sds, lods-embedding or lods-lora "
                                                                "(guidance.method).")] = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    out: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    prior: PriorOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Optimize images directly with the prior's distillation loss (presets image2d, image2d_shapes, the default
    with --prior shapes, image2d_paper_embedding, image2d_paper_lora); writes OUT/image-PROMPT-SEED/ with
    image.png (the particles side by side), progress.png, log.jsonl and metrics.json."""
    from lodsgs.image2d import generate_image, load_2d_config, shortcut_overrides
    shortcuts = shortcut_overrides(particles, method, seed, steps, device.value if device else None)
    cfg = load_2d_config("image", config, [*shortcuts, *(sets or [])], prior)
    result = generate_image(prompt, cfg, out, overwrite=overwrite, quiet=quiet)
    typer.echo(f"wrote {result.run_dir}")


@app.command("edit", epilog="""**Examples**

    lodsgs edit red-cube.png --source "a red cube" --target "a blue cube" --prior shapes

    lodsgs edit red-cube.png --source "a red cube" --target "a blue cube" --prior shapes --method dds

    lodsgs edit red-cube.png --source "a red cube" --target "a blue cube" --prior shapes \\
        --set canvas.alpha_from_source=false
""")
@friendly
def edit_cmd(
    image: Annotated[Path, typer.Argument(help="The image to edit (PNG or JPEG).")],
    source: Annotated[str, typer.Option("--source", help="Caption of the image as it is.")],
    target: Annotated[str, typer.Option("--target", help="Caption of the image as it should become.")],
    config: ConfigOpt = None,
    sets: SetOpt = None,
    method: Annotated[str | None, typer.Option(
        "--method", help="lods-embedding (the default, `lods` for short: α from the source caption), sds, dds or "
                         "lods-lora (guidance.method).")] = None,
    seed: SeedOpt = None,
    steps: StepsOpt = None,
    out: RunsOpt = Path("runs"),
    overwrite: OverwriteOpt = False,
    prior: PriorOpt = None,
    device: DeviceOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Move IMAGE from the --source caption to the --target one, keeping what the edit does not ask to change
    (preset edit2d); writes OUT/edit-TARGET-SEED/ with edited.png, before_after.png, progress.png, log.jsonl
    and metrics.json."""
    from lodsgs.image2d import edit_image, load_2d_config, shortcut_overrides
    shortcuts = shortcut_overrides(None, method, seed, steps, device.value if device else None)
    cfg = load_2d_config("edit", config, [*shortcuts, *(sets or [])], prior)
    result = edit_image(image, source, target, cfg, out, overwrite=overwrite, quiet=quiet)
    typer.echo(f"wrote {result.run_dir}")


@app.command("eval", epilog="""**Examples**

    lodsgs eval --out runs/eval                         # every caption, every default method

    lodsgs eval --caption "a red cube" --caption "a blue torus" --steps 200

    lodsgs eval --variant "lods-lr1e-2=guidance.method=lods-embedding,guidance.embedding_lr=0.01"

    lodsgs eval --seeds 0,1,2 --caption "a red cube" --caption "a blue torus"   # mean ± sd across seeds
""")
@friendly
def eval_cmd(
    out: RunsOpt = Path("runs/eval"),
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
    quiet: QuietOpt = False,
) -> None:
    """Generate shapes-world captions with each method and score them against ground-truth renders: PSNR,
    silhouette IoU, colour error, and shape / colour R-precision (R@1) for single-object captions."""
    from lodsgs.eval import eval_cli
    typer.echo(eval_cli(out, caption, variant, config, sets, seed, seeds, steps, two_d, task, image, quiet=quiet,
                        log=typer.echo))


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
    """The ``lodsgs`` console script (``--ray`` alone means a local Ray)."""
    app(args=optional_ray_address(sys.argv[1:]), prog_name="lodsgs")
