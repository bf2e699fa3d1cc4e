"""What an item is made of in one experiment arm: the representation string, parsed in one place.

``experiment.representations`` entries read

    id                  a learned ID embedding
    <feature-set>       a residual MLP over a frozen feature vector
    id+<feature-set>    a gated fusion of both
    dff.<...>           a multi-layer (DFF) feature: learned mixture of per-layer projections
    id+dff.<...>        the DFF fusion with the ID embedding
"""

from __future__ import annotations

from dataclasses import dataclass

DFF_PREFIX = "dff."
FUSION_PREFIX = "id+"
MULTI_LAYER = frozenset({"dff", "dff-fusion"})
"""Item encoders over a multi-layer feature of ``n_layers`` equal slices (DFF)."""


@dataclass(frozen=True)
class Representation:
    """A parsed representation: its text, its item encoder kind (``train.registry``), its feature set."""

    text: str
    item_encoder: str
    feature_set: str | None

    @classmethod
    def parse(cls, text: str) -> Representation:
        if not text or text.strip() != text:
            raise ValueError(f"representation {text!r}: expected 'id', '<feature-set>' or 'id+<feature-set>'")
        if text == "id":
            return cls(text, "id", None)
        fused = text.startswith(FUSION_PREFIX)
        fs = text.removeprefix(FUSION_PREFIX)
        if not fs or fs == "id":
            raise ValueError(f"representation {text!r}: expected 'id', '<feature-set>' or 'id+<feature-set>'")
        if fs.startswith(DFF_PREFIX):
            return cls(text, "dff-fusion" if fused else "dff", fs)
        return cls(text, "fusion" if fused else "feature", fs)

    @property
    def multi_layer(self) -> bool:
        return self.item_encoder in MULTI_LAYER
