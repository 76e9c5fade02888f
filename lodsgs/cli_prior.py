"""``lodsgs prior ...``: which priors are here, fetch one, the shapes world (captions, sanity, training)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lodsgs.cli_shared import friendly
from lodsgs.errors import LodsgsError

prior_app = typer.Typer(no_args_is_help=True, help="Diffusion priors: list them, train the offline shapes prior.")


@prior_app.command("list")
@friendly
def prior_list() -> None:
    """Named priors and whether their weights are here: shipped, in the Hugging Face cache, or to download."""
    from lodsgs.prior.hub import prior_table
    typer.echo(prior_table())


@prior_app.command("download", epilog="""**Examples**

    lodsgs prior download sd21                         # into the Hugging Face cache

    lodsgs prior download sd15 --out /mnt/priors/sd15 # a folder a cluster shares; then --prior /mnt/priors/sd15

    lodsgs prior download shap-e                       # the shap-e start's Shap-E (openai/shap-e)
""")
@friendly
def prior_download(
    name: Annotated[str, typer.Argument(help="sd21, sd15, shap-e (the shap-e start's model) or a hub id.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="The folder written, instead of the Hugging Face "
                                             "cache.")] = None,
    revision: Annotated[str, typer.Option("--revision", help="A commit to pin (prior.revision).")] = "",
    fp16: Annotated[bool | None, typer.Option("--fp16/--fp32", help="The fp16 files (half the bytes) when the "
                                              "repository has them; default: fp16 on a CUDA machine.",
                                              show_default=False)] = None,
) -> None:
    """Prefetch a Stable Diffusion prior (its diffusers components only), or the shap-e start's Shap-E, with
    progress; an interrupted download resumes where it stopped."""
    from lodsgs.prior.hub import download_prior
    folder = download_prior(name, revision, fp16, out)
    use = f"--set init.shap_e_model={out}" if name in ("shap-e", "openai/shap-e") else f"--prior {out}"
    typer.echo(folder + (f"\nuse it with {use}" if out else ""))


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
