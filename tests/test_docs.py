"""The docs cannot drift: every relative link and anchor in README.md and docs/*.md resolves, every backtick
reference to a doc names a file that exists, every setting named in code exists, and the generated blocks of the
docs (tests/doc_tables.py) equal what the code gives."""

from __future__ import annotations

import dataclasses
import difflib
import mimetypes
import re
from collections.abc import Iterator
from pathlib import Path

import doc_tables
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$", re.M)
DOC_NAME = re.compile(r"^(?:docs/[\w.-]+\.md|README\.md)$")
SETTING = re.compile(r"(?<![\w./-])([a-z]+)\.(\w+)(?![\w*(/-]|\.\w)")  # section.key, not a path or a.b.c


def prose(text: str) -> str:
    """``text`` with its fenced code blocks blanked (links and headings in code are not links or headings)."""
    return FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: the rendered text (no inline markup or link targets), lower-case,
    every character but letters, digits, spaces, ``-`` and ``_`` dropped, spaces turned into ``-``."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text, not its target
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML tags
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, repeated slugs numbered ``-1``, ``-2``, … as GitHub numbers them."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    for match in HEADING.finditer(prose(path.read_text(encoding="utf-8"))):
        base = slug(match.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def targets(text: str) -> Iterator[str]:
    """The targets of a Markdown text's inline and reference-style links (outside code)."""
    text = CODE_SPAN.sub("", prose(text))
    yield from (m.group(1) for m in LINK.finditer(text))
    yield from (m.group(1) for m in REFERENCE.finditer(text))


def broken_link(doc: Path, target: str) -> str | None:
    """Why a link of ``doc`` does not resolve; None when it does, or when it leaves the repository (a URL)."""
    if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
        return None
    path, _, anchor = target.partition("#")
    file = (doc.parent / path).resolve() if path else doc
    if not file.exists():
        return f"{target}: no file {path}"
    if anchor and file.suffix == ".md" and anchor not in anchors(file):
        return f"{target}: no heading #{anchor} in {file.name}"
    return None


def unknown_settings(text: str) -> list[str]:
    """The ``section.key`` names in a Markdown text's code (spans and fenced blocks) whose section is one of the
    config's but whose key is none of its settings; file names (``image.png``) and the placeholder ``key`` aside."""
    from lodsgs.config import Config

    keys = {f.name: {g.name for g in dataclasses.fields(f.default_factory)} for f in dataclasses.fields(Config)}
    code = [m.group(0) for m in FENCE.finditer(text)] + [m.group(2) for m in CODE_SPAN.finditer(prose(text))]
    return sorted({f"{s}.{k}" for c in code for s, k in SETTING.findall(c)
                   if s in keys and k not in keys[s] and k != "key" and not mimetypes.guess_type(f"x.{k}")[0]})


def test_slug_follows_github():
    assert slug("Run identity: `config_hash` & the *hash*") == "run-identity-config_hash--the-hash"
    assert slug("What the shapes profile reaches (2D → 3D)") == "what-the-shapes-profile-reaches-2d--3d"
    assert slug("[Install](install.md) first") == "install-first"


def test_duplicate_headings_are_numbered(tmp_path):
    doc = tmp_path / "a.md"
    doc.write_text("# Notes\n\n## Notes\n\n```\n# not a heading\n```\n\n## Notes\n", encoding="utf-8")
    assert anchors(doc) == {"notes", "notes-1", "notes-2"}


def test_broken_links_are_reported(tmp_path):
    (tmp_path / "b.md").write_text("# Known heading\n", encoding="utf-8")
    doc = tmp_path / "a.md"
    doc.write_text("# Top\n\n[ok](b.md#known-heading) [self](#top) [web](https://x.org/#y) [gone](c.md) "
                   "[stale](b.md#old-heading) `[code](nowhere.md)`\n", encoding="utf-8")
    problems = [why for t in targets(doc.read_text(encoding="utf-8")) if (why := broken_link(doc, t))]
    assert [p.split(":")[0] for p in problems] == ["c.md", "b.md#old-heading"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(doc):
    problems = [why for t in targets(doc.read_text(encoding="utf-8")) if (why := broken_link(doc, t))]
    assert not problems, f"{doc.relative_to(ROOT)}: " + "; ".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_backtick_doc_references_name_existing_files(doc):
    names = {m.group(2).strip() for m in CODE_SPAN.finditer(prose(doc.read_text(encoding="utf-8")))}
    missing = sorted(n for n in names if DOC_NAME.match(n) and not (ROOT / n).is_file())
    assert not missing, f"{doc.relative_to(ROOT)} names missing files: {', '.join(missing)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_settings_named_in_code_exist(doc):
    """A renamed or removed setting (``guidance.anneal_after_step``) cannot linger in a command or a mention."""
    unknown = unknown_settings(doc.read_text(encoding="utf-8"))
    assert not unknown, f"{doc.relative_to(ROOT)} names settings lodsgs/config.py lacks: {', '.join(unknown)}"


def test_unknown_settings_are_found():
    text = "`--set densify.refine_every=100` or `image.png`\n\n```bash\nlodsgs generate x --set run.stepz=3\n```\n"
    assert unknown_settings(text) == ["densify.refine_every", "run.stepz"]


def test_generated_blocks_match_the_code():
    """Run ``python -m tests.doc_tables --write`` after changing a command, a preset or a setting."""
    used = {m.group("name") for path in doc_tables.FILES for m in doc_tables.BLOCK.finditer(path.read_text())}
    assert used == set(doc_tables.GENERATORS), f"blocks missing from the docs: {set(doc_tables.GENERATORS) - used}"
    for path, text in doc_tables.rendered().items():
        diff = difflib.unified_diff(path.read_text(encoding="utf-8").splitlines(), text.splitlines(), "docs", "code",
                                    lineterm="", n=0)
        stale = "\n".join(diff)
        assert not stale, f"{path.relative_to(ROOT)} is stale: run python -m tests.doc_tables --write\n{stale}"
