"""Streaming text deltas concatenate to the exact decoded text: multi-byte characters are never
split, leading spaces are kept."""
import pytest

from backend.detokenizer import IncrementalDetokenizer
from tests.tiny_models import build_tokenizer

TEXTS = ["北京是中国的首都。", " The quick brown fox", "Ünïcödé 北京 fox", "  two  spaces"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(384)


@pytest.mark.parametrize("text", TEXTS)
def test_token_by_token_deltas_rebuild_the_text(tokenizer, text):
    prompt = tokenizer.encode("Question:")
    ids = tokenizer.encode(text)
    det = IncrementalDetokenizer(tokenizer, prompt, stop=[])
    deltas = []
    for i, t in enumerate(ids):
        det.append([t], final=i == len(ids) - 1)
        d = det.delta(final=i == len(ids) - 1)
        assert "\ufffd" not in d, "a multi-byte character was split"
        deltas.append(d)
    assert "".join(deltas) == text


def test_byte_level_splits_are_held_back(tokenizer):
    ids = tokenizer.encode("北")
    assert len(ids) > 1, "the tiny vocabulary should split this character into bytes"
    det = IncrementalDetokenizer(tokenizer, [], stop=[])
    det.append(ids[:1])
    assert det.delta(final=False) == ""
    det.append(ids[1:], final=True)
    assert det.delta(final=True) == "北"
