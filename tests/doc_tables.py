"""The docs' generated blocks, made from the code so that they cannot drift from it.

A block lies between ``<!-- generated: NAME -->`` and ``<!-- /generated -->`` in one of ``FILES``; NAME picks its
generator in ``GENERATORS``. ``python -m tests.doc_tables --write`` rewrites every block; without ``--write`` it
lists the stale files and exits 1. tests/test_docs.py fails while a file differs from what this renders.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "docs" / "configuration.md", ROOT / "docs" / "settings.md"]
BLOCK = re.compile(r"(?P<start><!-- generated: (?P<name>[\w-]+) -->\n).*?(?P<end><!-- /generated -->)", re.S)


def cell(text: str) -> str:
    """``text`` fit for a Markdown table cell: one line, pipes escaped, reST's double backticks made single."""
    return " ".join(text.replace("``", "`").split()).replace("|", "\\|")


def paragraph(doc: str | None) -> str:
    """The first paragraph of a docstring or help text, on one line ('' for none)."""
    return " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split())


def number(value: Any) -> str:
    """A setting's value as one writes it in YAML: ``true``, ``null``, ``[a, b]``, ``5e-7``, ``1e7``."""
    if value is None or isinstance(value, bool):
        return "null" if value is None else str(value).lower()
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(number(v) for v in value) + "]"
    if isinstance(value, float):
        text = f"{value:.12g}"
        if value.is_integer() and abs(value) >= 1e5 and float(f"{value:.0e}") == value:
            text = f"{value:.0e}"
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m.group(1).replace("+", "") + m.group(2), text)
    if isinstance(value, str):
        return f'"{value}"' if value == "" else value
    return str(value)


# --- commands ------------------------------------------------------------------------------------------

def commands(command: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(``lodsgs sub …``, click command) for a command and every visible sub-command below it, in creation order.
    Duck-typed on ``commands``: typer ships its own copy of click, whose Group is not ``click.Group``."""
    for name, sub in (getattr(command, "commands", None) or {}).items():
        if not getattr(sub, "hidden", False):
            yield f"{path} {name}", sub
            yield from commands(sub, f"{path} {name}")


def usage(path: str, command: Any) -> str:
    """The command line with its positional arguments: ``lodsgs view TARGET``, ``lodsgs plot-log [RUNS]…``."""
    words = [path]
    for p in command.params:
        if p.param_type_name == "argument":
            word = (p.metavar or p.name.upper()) + ("…" if p.nargs == -1 else "")
            words.append(word if p.required else f"[{word}]")
    return " ".join(words) + (" …" if getattr(command, "commands", None) else "")


def options(command: Any) -> str:
    """The command's visible options by their long names."""
    names = [next((o for o in p.opts if o.startswith("--")), p.opts[0]) for p in command.params
             if p.param_type_name == "option" and not getattr(p, "hidden", False)]
    return " ".join(f"`{n}`" for n in names)


def commands_table() -> str:
    """Every command and sub-command of ``lodsgs.cli.app``: its arguments, options and the first paragraph of its
    help."""
    import typer.main

    from lodsgs.cli import app

    rows = ["| command | what it does | options |", "|---|---|---|"]
    for path, command in commands(typer.main.get_command(app), "lodsgs"):
        rows.append(f"| `{cell(usage(path, command))}` | {cell(paragraph(command.help))} | {options(command)} |")
    return "\n".join(rows)


# --- presets -------------------------------------------------------------------------------------------

def leading_comment(path: Path) -> str:
    """The first sentence of the comment a YAML file opens with, on one line."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z`])", " ".join(lines), maxsplit=1)[0]


def presets_table() -> str:
    """Every preset of ``lodsgs.config.PRESET_DIR``: what it runs (its settings over the defaults, no prior
    profile, not validated: 2D presets may name a 2D-only method) and the first sentence of its opening comment."""
    from lodsgs.config import DEFAULT_PRESET, PRESET_DIR, merged, presets, read_yaml

    rows = ["| preset | method | steps | description |", "|---|---|---|---|"]
    for name in presets():
        cfg = merged([read_yaml(PRESET_DIR / f"{name}.yaml")])
        label = f"`{name}`" + (" (default)" if name == DEFAULT_PRESET else "")
        about = cell(leading_comment(PRESET_DIR / f"{name}.yaml"))
        rows.append(f"| {label} | {cfg.guidance.method} | {cfg.run.steps:,} | {about} |")
    return "\n".join(rows)


# --- the run's identity --------------------------------------------------------------------------------

def hash_exclusions() -> str:
    """The settings ``lodsgs.config.NOT_IN_HASH`` leaves out of a run's identity hash, as a list."""
    from lodsgs.config import NOT_IN_HASH

    whole = sorted(s for s, keys in NOT_IN_HASH.items() if keys is None)
    lines = [f"- the whole `{s}` section" for s in whole]
    lines += [f"- `{s}.{k}`" for s, keys in sorted(NOT_IN_HASH.items()) if keys is not None for k in sorted(keys)]
    return "\n".join(lines)


# --- the settings reference ----------------------------------------------------------------------------

def type_name(tp: Any) -> str:
    """An annotation as a reader wants it: ``int``, ``"auto" | "cpu"``, ``[float, float]``, ``float | null``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin in (tuple, list):
        return "[" + ", ".join("…" if a is Ellipsis else type_name(a) for a in args) + "]"
    return getattr(tp, "__name__", str(tp))


def bounds(spec: tuple[float | None, float | None, bool] | None) -> str:
    """A field's ``range`` metadata (lo, hi, open_lo) as ``[0, 1]``, ``(0, 1e3]``, ``≥ 1``; '' for none."""
    if spec is None:
        return ""
    lo, hi, open_lo = spec
    if lo is not None and hi is not None:
        return f"{'(' if open_lo else '['}{number(lo)}, {number(hi)}]"
    if lo is not None:
        return f"{'>' if open_lo else '≥'} {number(lo)}"
    return "" if hi is None else f"≤ {number(hi)}"


def section_doc(cls: type) -> str:
    """A section class's own docstring ('' for the signature that dataclass writes when there is none)."""
    doc = cls.__doc__ or ""
    return "" if doc.startswith(f"{cls.__name__}(") else " ".join(inspect.cleandoc(doc).split())


def settings_reference() -> str:
    """Each section of ``lodsgs.config.Config``: its docstring and a table of its fields' types, defaults and
    ranges."""
    from lodsgs.config import Config

    parts = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory  # type: ignore[misc]  # every section is a dataclass made by its factory
        hints = typing.get_type_hints(cls)
        rows = [f"## {section.name}", ""] + ([section_doc(cls).replace("``", "`"), ""] if section_doc(cls) else [])
        rows += ["| setting | type | default | range |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            rows.append(f"| `{section.name}.{f.name}` | {cell(type_name(hints[f.name]))} | `{number(f.default)}` | "
                        f"{bounds(f.metadata.get('range'))} |")
        parts.append("\n".join(rows))
    return "\n\n".join(parts)


GENERATORS: dict[str, Callable[[], str]] = {
    "commands": commands_table, "presets": presets_table, "not-in-hash": hash_exclusions,
    "settings": settings_reference}


def fill(text: str) -> str:
    """``text`` with every generated block's body rewritten; an unknown block name is an error."""
    def body(m: re.Match) -> str:
        if m.group("name") not in GENERATORS:
            raise KeyError(f"no generator for block {m.group('name')!r}; known: {', '.join(GENERATORS)}")
        return f"{m.group('start')}\n{GENERATORS[m.group('name')]()}\n\n{m.group('end')}"
    return BLOCK.sub(body, text)


def rendered() -> dict[Path, str]:
    """Each of ``FILES`` as it should read, its generated blocks filled in from the code."""
    return {path: fill(path.read_text(encoding="utf-8")) for path in FILES}


def main(argv: list[str]) -> int:
    """``--write``: rewrite the stale files; otherwise name them and return 1 when there are any."""
    stale = {p: t for p, t in rendered().items() if p.read_text(encoding="utf-8") != t}
    for path, text in stale.items():
        if "--write" in argv:
            path.write_text(text, encoding="utf-8")
        print(f"{'rewrote' if '--write' in argv else 'stale'}: {path.relative_to(ROOT)}")
    return 1 if stale and "--write" not in argv else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
