"""Look at splats in the browser, built on viser (its web client ships in the wheel): ``lodsgs view`` for a
run folder or a splat file, and the live view that ``generate --view`` updates while it optimizes.

The scene is shown in lodsgs's own y-up world (no file-convention flip: the splats are read back through
the same readers), from the run's evaluation camera. viser draws each Gaussian with its degree-0 colour.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci

from lodsgs.cameras import CameraConfig, orbit_position
from lodsgs.errors import LodsgsError
from lodsgs.splats.model import Splats

if TYPE_CHECKING:
    from lodsgs.trainer import StepReport


def splat_arrays(splats: Splats) -> dict[str, np.ndarray]:
    """viser's inputs: centres, 3D covariances R S² Rᵀ (gsplat's reference, as the CPU rasterizer), colours in
    [0, 1] and opacities [N, 1]."""
    with torch.no_grad():
        covars, _ = _quat_scale_to_covar_preci(splats.quats.detach().cpu(), splats.scales.detach().cpu(),
                                               compute_preci=False, triu=False)
        return {"centers": splats.means.detach().cpu().numpy(), "covariances": covars.numpy(),
                "rgbs": splats.rgb.detach().cpu().clamp(0, 1).numpy(),
                "opacities": splats.opacities.detach().cpu()[:, None].numpy()}


def eval_camera_pose(cam: CameraConfig) -> tuple[tuple[float, float, float], float]:
    """Position of the run's evaluation camera (azimuth 0, looking at the origin) and its vertical fov in radians."""
    pos = orbit_position(torch.tensor([cam.eval_elevation]), torch.tensor([0.0]), torch.tensor([cam.eval_radius]))
    return tuple(pos[0].tolist()), math.radians(cam.eval_fovy)


@dataclass
class Target:
    """What ``lodsgs view`` shows: the splats, a title and facts for the panel, and a run's checkpoints."""

    splats: Splats
    title: str
    facts: dict[str, Any] = field(default_factory=dict)
    camera: CameraConfig = field(default_factory=CameraConfig)
    checkpoints: list[Path] = field(default_factory=list)
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)


def load_target(path: Path) -> Target:
    """A run folder (its splats.ply, or its last checkpoint if it never finished) or a splat file (.ply, .splat,
    .spz, or a glTF splats .glb: load_splats)."""
    from lodsgs.config import load_config
    from lodsgs.splats.io import load_splats

    path = Path(path)
    if not path.exists():
        raise LodsgsError(f"cannot view {str(path)!r}: no such file or folder")
    if not path.is_dir():
        return Target(load_splats(path), path.name, {"Gaussians": None})
    checkpoints = kept_checkpoints(path / "checkpoints")
    last = path / "checkpoints" / "last.pt"
    if (path / "splats.ply").is_file():
        splats = load_splats(path / "splats.ply")
    elif last.is_file():
        splats = checkpoint_splats(last)
    else:
        raise LodsgsError(f"cannot view {str(path)!r}: no splats.ply and no checkpoint in it (not a run folder?)")
    cfg = load_config(str(path / "config.yaml")) if (path / "config.yaml").is_file() else None
    prompt = (path / "prompt.txt").read_text(encoding="utf-8").strip() if (path / "prompt.txt").is_file() else path.name
    if cfg is None:
        return Target(splats, prompt, run_facts(path), checkpoints=checkpoints)
    return Target(splats, prompt, run_facts(path), cfg.camera, checkpoints, tuple(cfg.render.background))


def kept_checkpoints(folder: Path) -> list[Path]:
    """The run's kept checkpoints (step_XXXXX.pt, run.keep_checkpoints) in step order; other names are ignored."""
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := re.fullmatch(r"step_(\d+)\.pt", p.name))]
    return [p for _, p in sorted(found)]


def run_facts(run_dir: Path) -> dict[str, Any]:
    """Method, steps, time and final loss from a run's metrics.json, for the side panel."""
    try:
        m = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {"status": "unfinished"}
    return {"method": m.get("method"), "steps": m.get("steps"), "seconds": m.get("seconds"),
            "loss": m.get("final", {}).get("loss")}


def checkpoint_splats(path: Path) -> Splats:
    """The splats of a training checkpoint (read on the CPU)."""
    from lodsgs.files import safe_load

    ck = safe_load(path)
    try:
        return Splats(ck["splats"], sh_degree=ck["sh_degree"])
    except Exception:  # a foreign file: another program's checkpoint, or a lodsgs one altered
        raise LodsgsError(f"cannot read checkpoint {str(path)!r}: it is not a lodsgs checkpoint (it holds no splats "
                          "in lodsgs's layout); delete it or view the run's splats.ply") from None


class Viewer:
    """A viser server showing one set of splats, with a side panel; ``show`` replaces the splats in place."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, camera: CameraConfig | None = None,
                 background: tuple[float, float, float] = (1.0, 1.0, 1.0)):
        import viser

        check_address(host, port)
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        self.server.scene.set_up_direction("+y")
        self.server.scene.world_axes.visible = False
        self.server.gui.configure_theme(show_logo=False, show_share_button=False)
        self.server.scene.set_background_image(np.full((2, 2, 3), np.asarray(background) * 255, np.uint8))
        position, fov = eval_camera_pose(camera or CameraConfig())
        self.server.initial_camera.position = position
        self.server.initial_camera.look_at = (0.0, 0.0, 0.0)
        self.server.initial_camera.fov = fov
        self.panel = self.server.gui.add_markdown("")
        self.checkpoint_label = None

    @property
    def url(self) -> str:
        return f"http://{self.server.get_host()}:{self.server.get_port()}"

    def show(self, splats: Splats) -> None:
        self.server.scene.add_gaussian_splats("/splats", **splat_arrays(splats))

    def describe(self, title: str, facts: dict[str, Any]) -> None:
        rows = "\n".join(f"| {k} | {_fmt(v)} |" for k, v in facts.items() if v is not None)
        self.panel.content = f"**{title}**\n\n| | |\n|---|---|\n{rows}" if rows else f"**{title}**"

    def add_checkpoints(self, checkpoints: list[Path], final: Splats):
        """A slider over the run's kept checkpoints (step_XXXXX.pt) and its final splats; returns the slider."""
        steps = [int(p.stem.removeprefix("step_")) for p in checkpoints]
        slider = self.server.gui.add_slider("checkpoint", min=0, max=len(steps), step=1, initial_value=len(steps))
        label = self.server.gui.add_markdown(f"showing: final ({len(steps)} checkpoints kept)")

        @slider.on_update
        def _(_event) -> None:
            i = int(slider.value)
            self.show(final if i == len(steps) else checkpoint_splats(checkpoints[i]))
            label.content = "showing: final" if i == len(steps) else f"showing: step {steps[i]}"

        self.checkpoint_label = label
        return slider

    def close(self) -> None:
        self.server.stop()


def check_address(host: str, port: int) -> None:
    """A host this machine can bind and a port in 1..65535, checked before the server starts (viser would
    otherwise hang on an address it cannot resolve, or fail in a thread)."""
    if not 1 <= port <= 65535:
        raise LodsgsError(f"--port {port} is not a TCP port; give 1..65535 (8080 by default)")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        raise LodsgsError(f"--host {host!r} is not an address this machine knows; give 127.0.0.1 (this machine) or "
                          "0.0.0.0 (every network interface)") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((address[0], 0))  # the address only: a taken port is viser's to skip
        except OSError as e:
            raise LodsgsError(f"--host {host!r}: cannot serve on it ({e.strerror}); give 127.0.0.1 or 0.0.0.0, or "
                              "an address of this machine") from None


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class LiveView:
    """The ``on_step`` callback of ``generate --view``: push the splats every ``every`` steps and when done, with
    step, loss, t and count; a new prompt (the next of a batch) moves the camera to its run's evaluation view."""

    def __init__(self, viewer: Viewer, every: int):
        self.viewer, self.every = viewer, every
        self.prompt: str | None = None

    def start(self, prompt: str, camera: CameraConfig) -> None:
        self.prompt = prompt
        position, fov = eval_camera_pose(camera)
        self.viewer.server.initial_camera.position = position
        self.viewer.server.initial_camera.fov = fov
        self.viewer.describe(prompt, {"status": "starting"})

    def __call__(self, report: StepReport) -> None:
        if report.prompt != self.prompt:
            self.start(report.prompt, report.camera)
        if report.step % self.every and not report.done:
            return
        self.viewer.show(report.splats)
        self.viewer.describe(report.prompt, {"status": "done" if report.done else "running",
                                             "step": f"{report.step} / {report.steps}",
                                             "loss": report.logs.get("loss"), "t": report.logs.get("t"),
                                             "Gaussians": report.splats.num})


def serve_until_interrupted(viewer: Viewer, message: str) -> None:
    """Print the URL and keep the server up until Ctrl-C."""
    print(f"{message}: {viewer.url}  (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.close()
