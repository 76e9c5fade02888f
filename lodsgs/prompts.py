"""Prompts: their words, and the check a closed-vocabulary prior (one whose folder has vocabulary.json, as the
shipped shapes prior) makes before a run starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lodsgs.errors import LodsgsError


def prompt_words(prompt: str) -> list[str]:
    """The words of a prompt, lower-cased and whole (accented letters included; digits and punctuation not)."""
    return re.findall(r"[^\W\d_]+", prompt.lower())


def unknown_words(prompt: str, vocabulary: set[str] | list[str]) -> list[str]:
    """The prompt's words a closed vocabulary lacks, in order."""
    known = set(vocabulary)
    return [w for w in prompt_words(prompt) if w not in known]


def slug(text: str) -> str:
    """A filesystem-safe short name of a caption (run folders, pictures)."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "prompt"


MAX_PROMPT = 1000  # characters; CLIP reads 77 tokens (a few hundred characters), the rest would be dropped silently


def check_prompt(prompt: str, model_path: str, name: str = "") -> None:
    """Reject empty prompts, and words a closed-vocabulary prior (one with vocabulary.json) never saw."""
    if not prompt or not prompt.strip():
        raise LodsgsError("the prompt is empty; give a text such as \"a red cube\"")
    if len(prompt) > MAX_PROMPT:
        raise LodsgsError(f"the prompt is {len(prompt):,} characters ({prompt[:40]!r}...); keep it under {MAX_PROMPT} "
                          "(the text encoder reads 77 tokens, a few hundred characters)")
    vocab_file = Path(model_path) / "vocabulary.json"
    if vocab_file.is_file():
        known = json.loads(vocab_file.read_text())
        words = set(known["words"])
        examples = "; ".join(known.get("captions", [])[:6])
        found, unknown = prompt_words(prompt), unknown_words(prompt, words)
        if unknown or not found:
            what = f"the word(s) {', '.join(unknown)}" if unknown else f"the prompt {prompt!r} (it has no words)"
            raise LodsgsError(f"the {name or Path(model_path).name!r} prior does not know {what}; "
                              f"it knows: {', '.join(sorted(words))} (e.g. {examples})")
