"""Run configuration: the settings tree (lodsgs/settings.py) in layers: a YAML preset, the prior's profile,
the user's own file and ``--set section.key=value`` overrides; validation, and the hash that names a result.

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
from pathlib import Path
from typing import Any, Literal

import yaml

from lodsgs.errors import LodsgsError
from lodsgs.files import write_text
from lodsgs.names import prior_profile
from lodsgs.settings import (  # noqa: F401  (re-exported: the sections are imported from here)
    MAX_STEPS,
    CameraConfig,
    CanvasConfig,
    Config,
    DensifyConfig,
    GuidanceConfig,
    ImageConfig,
    InitConfig,
    MeshConfig,
    OptimConfig,
    PriorConfig,
    RenderConfig,
    RunConfig,
    at_step,
    bounded,
    fraction,
    need_mesh_libraries,
)

# an installed package carries the presets in lodsgs/configs/ (setup.py copies them); a source checkout (editable
# install) reads the top-level configs/ they are copied from
_PACKAGED, _CHECKOUT = Path(__file__).resolve().parent / "configs", Path(__file__).resolve().parents[1] / "configs"
PRESET_DIR = _PACKAGED if _PACKAGED.is_dir() else _CHECKOUT
DEFAULT_PRESET = "lods_embedding"
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
    check_camera_ranges(cfg.camera)
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
    if cfg.init.kind == "mesh":  # at load time, not after the prior has loaded
        if not cfg.init.path:
            raise LodsgsError("init.kind is 'mesh' but no mesh was given; --set init.path=FILE (.glb, .gltf, .obj "
                              "or a .ply with faces)")
        need_mesh_libraries(what="init.kind mesh", names=("trimesh",))
    if kind == "3d" and cfg.guidance.method == "dds":
        raise LodsgsError("guidance.method 'dds' edits an image (`lodsgs edit`); for generation use sds, "
                          "lods-embedding or lods-lora")
    if not all(0 <= v <= 1 for v in cfg.render.background):
        raise LodsgsError(f"render.background is an RGB triple in [0, 1]; got {list(cfg.render.background)}")
    if cfg.run.mesh:  # at load time, not after the run
        need_mesh_libraries(decimate=cfg.mesh.faces > 0, texture=cfg.mesh.texture > 0)


CAMERA_RANGES = {"elevation": (-90.0, 90.0), "azimuth": (-360.0, 360.0), "radius": (0.0, 1000.0),
                 "fovy": (0.0, 180.0)}  # degrees and world units; radius and fovy exclude their low end


def check_camera_ranges(c) -> None:
    """camera.elevation / azimuth / radius / fovy: [low, high] pairs inside their physical bounds."""
    for name, (floor, ceiling) in CAMERA_RANGES.items():
        lo, hi = getattr(c, name)
        if lo > hi:
            raise LodsgsError(f"camera.{name} is a [low, high] range; got [{lo}, {hi}]")
        open_floor = name in ("radius", "fovy")
        if (lo <= floor if open_floor else lo < floor) or hi > ceiling:
            bracket = "(" if open_floor else "["
            raise LodsgsError(f"camera.{name} must lie within {bracket}{floor:g}, {ceiling:g}]; got [{lo}, {hi}]")


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
