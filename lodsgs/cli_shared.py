"""What every ``lodsgs`` command shares: one-line usage errors, the options that mean the same everywhere, the
error wrapper and the shortcut-to-config step. Imports no torch."""

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
            typer.echo(f"lodsgs: error: {e.strerror or str(e) or type(e).__name__}{where}; files finished before "
                       "this are kept, none is left half-written; free space or fix the folder, then rerun the "
                       "command", err=True)
            raise typer.Exit(2) from None
    return wrapper


def build_config(config, sets, prior=None, seed=None, steps=None, device=None, init=None, image=None, **kwargs):
    """The shortcuts (--prior, --seed, --steps, --device, --init, --image), then --set, through load_config."""
    from lodsgs.config import load_config, settings_overrides
    items = settings_overrides(prior, steps, seed, device.value if device else None, image, init)
    return load_config(config, items + list(sets or []), **kwargs)
