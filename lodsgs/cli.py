"""The ``lodsgs`` command line: generate, batch, render, export, info, eval, priors."""

from __future__ import annotations

import enum
import functools
import sys
from pathlib import Path
from typing import Annotated

import typer

try:  # typer 0.2x carries its own copy of click; older typer uses click itself
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import NoArgsIsHelpError, UsageError

from lodsgs.errors import Interrupted, LodsgsError


class OneLineErrors(typer.core.TyperGroup):
    """The app's group: every usage error (unknown option, missing argument, a bad value) is one line
    ``lodsgs: error: ...`` with exit code 2, as the commands' own errors are, not Click's framed box."""

    def main(self, args=None, prog_name=None, standalone_mode: bool = True, **extra):
        try:
            code = super().main(args=args, prog_name="lodsgs", standalone_mode=False, **extra)
        except NoArgsIsHelpError as e:  # `lodsgs` alone, `lodsgs prior`: the help
            typer.echo(e.ctx.get_help())
            code = 0
        except UsageError as e:
            command = e.ctx.command_path if e.ctx is not None else "lodsgs"
            typer.echo(f"lodsgs: error: {e.format_message()} (see `{command} --help`)", err=True)
            code = 2
        except typer.Abort:  # Ctrl-C outside a run
            code = 130
        except LodsgsError as e:  # raised outside a command body
            typer.echo(f"lodsgs: error: {e}", err=True)
            code = 2
        code = code if isinstance(code, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, rich_markup_mode="markdown",
                  help="Text-to-3D Gaussian splatting under a diffusion prior with LODS.")
prior_app = typer.Typer(no_args_is_help=True, help="Diffusion priors: list them, train the offline shapes prior.")
app.add_typer(prior_app, name="prior")


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="Preset name (see docs/configuration.md) or "
                                                                     "your own YAML file (applied over the prior's "
                                                                     "profile).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override: section.key=value (repeatable).")]
PriorOpt = Annotated[str | None, typer.Option("--prior", help="Prior: sd21 (the default), sd15, shapes (offline), "
                                                               "a hub id or a folder.")]
RunsOpt = Annotated[Path, typer.Option("--out", "-o", help="Where the run folders are written (a parent folder).")]
SeedOpt = Annotated[int | None, typer.Option("--seed", min=0, max=2**63 - 1, help="Random seed (run.seed).")]
StepsOpt = Annotated[int | None, typer.Option("--steps", min=1, help="Optimization steps (run.steps); the "
                                                                     "schedules keep their shape.")]
DeviceOpt = Annotated[Device | None, typer.Option("--device", help="Where to run (run.device).", show_default=False)]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Start again in an existing run folder.")]
ViewOpt = Annotated[bool, typer.Option("--view", help="Watch it in the browser: serve a viewer and push the "
                                                     "splats every run.view_every steps.")]
PortOpt = Annotated[int, typer.Option("--port", min=1, max=65535, help="Viewer port (the next free one if taken).")]
HostOpt = Annotated[str, typer.Option("--host", help="Viewer address; 0.0.0.0 to reach it from other machines.")]


def friendly(fn):
    """Turn LodsgsError into a one-line message and exit code 2; Ctrl-C into exit code 130. Imports nothing
    heavy: an error path prints its line without loading torch."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
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


def build_config(config, sets, prior=None, seed=None, steps=None, device=None, init=None, image=None, **kwargs):
    """The shortcuts (--prior, --seed, --steps, --device, --init, --image), then --set, through load_config."""
    from lodsgs.config import load_config, settings_overrides
    items = settings_overrides(prior, steps, seed, device.value if device else None, image, init)
    return load_config(config, items + list(sets or []), **kwargs)


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
    run_dir: Annotated[Path, typer.Argument(help="A run folder or a splat file (.ply, .splat, .spz).")],
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

    lodsgs export runs/x --out x.glb                         # a vertex-coloured mesh (pip install 'lodsgs[mesh]')

    lodsgs export runs/x/splats.spz --format mesh-ply --set mesh.faces=20000
""")
@friendly
def export(
    file: Annotated[Path, typer.Argument(help="A splat file (.ply, .splat, .spz) or a run folder.")],
    format: Annotated[str | None, typer.Option(
        "--format", "-f", help="splat, spz, ply or ply-sh3 (splats); glb, obj or mesh-ply (a mesh). Default: from "
                               "--out's extension, else splat.", show_default=False)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The file written (default: beside the input, "
                                             "with the format's extension).")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", "-s", help="Mesh setting: mesh.key=value "
                                                   "(repeatable; see docs/mesh.md).")] = None,
) -> None:
    """Convert splats to antimatter15 .splat, Niantic .spz (version 2), INRIA .ply, a .ply with SH degree 3, or a
    vertex-coloured watertight mesh (.glb, .obj, .ply)."""
    from lodsgs.export import export as convert
    typer.echo(f"wrote {convert(file, format, out, sets)}")


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
    if system:
        from lodsgs.system import system_report
        for key, value in system_report().items():
            typer.echo(f"{key:22s} {value}")
        if path is None:
            return
    if path is None:
        raise LodsgsError("give a run folder or a .ply, .splat or .spz file, or --system")
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


@prior_app.command("list")
@friendly
def prior_list() -> None:
    """Named priors and whether their weights are here: shipped, in the Hugging Face cache, or to download."""
    from lodsgs.prior.hub import prior_table
    typer.echo(prior_table())


@prior_app.command("download", epilog="""**Examples**

    lodsgs prior download sd21                         # into the Hugging Face cache

    lodsgs prior download sd15 --out /mnt/priors/sd15 # a folder a cluster shares; then --prior /mnt/priors/sd15
""")
@friendly
def prior_download(
    name: Annotated[str, typer.Argument(help="sd21, sd15 or a hub id.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The folder written, instead of the Hugging Face "
                                             "cache.")] = None,
    revision: Annotated[str, typer.Option("--revision", help="A commit to pin (prior.revision).")] = "",
    fp16: Annotated[bool | None, typer.Option("--fp16/--fp32", help="The fp16 files (half the bytes) when the "
                                              "repository has them; default: fp16 on a CUDA machine.",
                                              show_default=False)] = None,
) -> None:
    """Prefetch a Stable Diffusion prior (its diffusers components only), with progress; an interrupted
    download resumes where it stopped."""
    from lodsgs.prior.hub import download_prior
    folder = download_prior(name, revision, fp16, out)
    typer.echo(folder + (f"\nuse it with --prior {out}" if out else ""))


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
    train.train(train.TrainOptions(out=out, steps=steps, minutes=minutes, resume=resume, seed=seed, init=init,
                                   lr=lr, batch=batch, weighting=weighting, underspecified=underspecified))


@prior_app.command("sanity", epilog="**Example**\n\n    lodsgs prior sanity --caption 'a red cube' --out sanity.json")
@friendly
def prior_sanity(
    caption: Annotated[list[str] | None, typer.Option("--caption", help="Caption (repeatable); default the 40 full "
                                                      "captions; underspecified ones ('a cube') also count the "
                                                      "samples' colours and shapes.")] = None,
    prior: Annotated[str, typer.Option("--prior", help="The shapes prior, or a folder of one.")] = "shapes",
    samples: Annotated[int, typer.Option("--samples", min=1, help="Samples per caption.")] = 4,
    guidance_scale: Annotated[float, typer.Option("--guidance-scale", min=0.0, help="Classifier-free guidance "
                                                  "scale of the DDIM samples.")] = 3.0,
    json_out: Annotated[Path | None, typer.Option("--out", "-o", help="Also write the rows to this JSON file.")
                        ] = None,
) -> None:
    """Sample the shapes prior itself (DDIM + CFG) and score samples against ground-truth renders."""
    from lodsgs.prior.shapes.sanity import sanity_cli
    typer.echo(sanity_cli(caption, prior, samples, guidance_scale, json_out))


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
