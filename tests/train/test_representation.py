"""The representation string, parsed in one place."""

from __future__ import annotations

import pytest

from train.registry import ITEM_ENCODERS
from train.representation import Representation


@pytest.mark.parametrize(
    ("text", "encoder", "fs"),
    [
        ("id", "id", None),
        ("title.minilm", "feature", "title.minilm"),
        ("id+title.minilm", "fusion", "title.minilm"),
        ("dff.qwen.L1-2", "dff", "dff.qwen.L1-2"),
        ("id+dff.qwen.L1-2", "dff-fusion", "dff.qwen.L1-2"),
    ],
)
def test_parse(text, encoder, fs):
    rep = Representation.parse(text)
    assert (rep.text, rep.item_encoder, rep.feature_set) == (text, encoder, fs)
    assert rep.item_encoder in ITEM_ENCODERS
    assert rep.multi_layer == encoder.startswith("dff")


@pytest.mark.parametrize("text", ["", "id+", "id+id", " id"])
def test_malformed_is_refused(text):
    with pytest.raises(ValueError, match="expected 'id'"):
        Representation.parse(text)
