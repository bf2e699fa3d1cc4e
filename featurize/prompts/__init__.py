"""Versioned prompts for the captioners: one text file per prompt and version, e.g. ``video_v1.txt``.

A prompt is never edited in place once a store was written with it: a change is a new version file
(``video_v2.txt``), so the version and hash in a store manifest always name the exact text the model saw.
Placeholders are ``{name}`` fields (the audio prompt takes ``{transcript}`` and ``{sound_events}``);
``Prompt.render`` insists on exactly those fields.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

PROMPT_DIR = Path(__file__).parent
_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_VERSION = re.compile(r"^v[0-9]+$")


class PromptError(ValueError):
    """A prompt that does not exist, or a render call with the wrong fields."""


@dataclass(frozen=True)
class Prompt:
    """A loaded prompt: its text, the version it was loaded as and the sha256 of that text."""

    name: str
    version: str
    text: str
    sha256: str

    @property
    def fields(self) -> tuple[str, ...]:
        """The placeholder names in the text, in order of first appearance."""
        seen: list[str] = []
        for _, field, _, _ in string.Formatter().parse(self.text):
            if field is not None and field not in seen:
                seen.append(field)
        return tuple(seen)

    def render(self, **values: str) -> str:
        """The text with its placeholders filled; every placeholder must be given, and nothing else."""
        expected, given = set(self.fields), set(values)
        if expected != given:
            raise PromptError(
                f"prompt {self.name}_{self.version}: expected fields {sorted(expected)}, got {sorted(given)}"
            )
        return self.text.format(**values) if expected else self.text

    def manifest(self) -> dict[str, str]:
        """What a store manifest records about the prompt."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "text": self.text}


def available(name: str) -> list[str]:
    """The versions present for a prompt name, e.g. ``["v1", "v2"]``."""
    found = [p.stem.removeprefix(f"{name}_") for p in PROMPT_DIR.glob(f"{name}_v*.txt")]
    return sorted((v for v in found if _VERSION.match(v)), key=lambda v: int(v[1:]))


def load_prompt(name: str, version: str) -> Prompt:
    """Load ``featurize/prompts/<name>_<version>.txt``; unknown names or versions list what exists."""
    if not _NAME.match(name) or not _VERSION.match(version):
        raise PromptError(
            f"prompt {name!r} version {version!r}: expected a name like 'video' and a version like 'v1'"
        )
    path = PROMPT_DIR / f"{name}_{version}.txt"
    if not path.is_file():
        raise PromptError(
            f"no prompt file {path.name} in {PROMPT_DIR}; versions of {name!r}: {available(name)}"
        )
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise PromptError(f"prompt file {path} is empty")
    prompt = Prompt(name, version, text, hashlib.sha256(text.encode("utf-8")).hexdigest())
    try:
        _ = prompt.fields  # a stray brace is a broken prompt file, caught at load, not at the first row
    except ValueError as e:
        raise PromptError(
            f"prompt file {path}: bad placeholder syntax ({e}); use {{name}} fields only"
        ) from e
    return prompt
