"""``lodsgs export``: splats to another splat format (.splat, .spz, .ply, .ply with SH degree 3, glTF splats) or to
a mesh (.glb, .obj, .ply with faces); the format from ``--format`` or the output's extension. ``spz`` is Niantic's
version 4 (zstd), ``spz-v2`` version 2 (gzip) for web viewers that read no later one; both end in .spz.

Two formats write .glb: ``glb`` is a triangle mesh (mesh.py), ``gltf-splats`` the splats themselves as glTF's
KHR_gaussian_splatting (gltf.py). An --out ending in .glb means the mesh, as before; the splats need
``--format gltf-splats``."""

from __future__ import annotations

from pathlib import Path

from lodsgs.config import Config, load_config
from lodsgs.errors import LodsgsError
from lodsgs.summary import must_exist

SPLAT_FORMATS = {"splat": ".splat", "spz": ".spz", "spz-v2": ".spz", "ply": ".ply", "ply-sh3": ".ply",
                 "gltf-splats": ".glb"}  # format -> extension
MESH_FORMATS = {"glb": ".glb", "obj": ".obj", "mesh-ply": ".ply"}


def export(file: Path, format: str | None = None, out: Path | None = None, sets: list[str] | None = None) -> Path:
    """Convert a splat file or a run folder's splats; returns the path written (beside the input unless
    ``out``). ``sets``: mesh settings (mesh.key=value) over the run's own config. Every check runs before the
    splats are read (and before torch is imported)."""
    fmt = format or export_format(out)
    suffix = {**SPLAT_FORMATS, **MESH_FORMATS}.get(fmt)
    if suffix is None:
        raise LodsgsError(f"unknown --format {fmt!r}; choose splat, spz, spz-v2, ply, ply-sh3 or gltf-splats (splats), "
                          "glb, obj or mesh-ply (a mesh)")
    if out is not None and out.suffix.lower() != suffix:
        raise LodsgsError(f"--out {str(out)!r} does not end in {suffix}, the --format {fmt} extension")
    if sets and fmt not in MESH_FORMATS:
        raise LodsgsError("--set applies to the mesh formats (glb, obj, mesh-ply) only")
    cfg, file = export_source(file, sets or [])
    tail = {"ply-sh3": "_sh3.ply", "gltf-splats": "_splats.glb"}.get(fmt)  # never the name another format takes
    default = file.with_name(file.stem + tail) if tail else file.with_suffix(suffix)
    target = out or default
    if target.resolve() == file.resolve():
        raise LodsgsError(f"{str(file)!r} is the input; give --out for the {fmt} file")
    write_export(file, fmt, target, cfg)
    return target


def write_export(file: Path, fmt: str, target: Path, cfg: Config) -> None:
    """Read the splats and write them to ``target`` as ``fmt``."""
    from lodsgs.splats.gltf import write_gltf_splats
    from lodsgs.splats.io import load_splats, write_ply, write_splat
    from lodsgs.splats.spz import write_spz

    splats = load_splats(file)
    if fmt in MESH_FORMATS:
        import dataclasses

        from lodsgs.splats.mesh import splats_to_mesh, write_mesh
        mesh_cfg = dataclasses.replace(cfg.mesh, texture=0) if fmt == "mesh-ply" else cfg.mesh  # PLY: no texture
        write_mesh(splats_to_mesh(splats, mesh_cfg), target, fmt)
    elif fmt == "ply-sh3":
        write_ply(splats, target, sh_degree=3)
    elif fmt == "spz-v2":
        write_spz(splats, target, version=2)
    else:
        writers = {"splat": write_splat, "spz": write_spz, "ply": write_ply, "gltf-splats": write_gltf_splats}
        writers[fmt](splats, target)


def export_format(out: Path | None) -> str:
    """The export format --out's extension names; .ply is splats or a mesh, so it needs --format; .glb is the mesh
    (``--format gltf-splats`` writes splats there)."""
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


def export_source(path: Path, sets: list[str]) -> tuple[Config, Path]:
    """The config (a run folder's own, else the defaults; then ``--set mesh.*``) and the splat file to export."""
    must_exist(path)
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


