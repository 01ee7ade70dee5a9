from __future__ import annotations

import pytest

from app import tokens
from app.errors import BadUserInput


def test_offline_encodings_load_and_count() -> None:
    assert tokens.encoding_name_for_model("gpt-4o") == "o200k_base"
    assert tokens.encoding_name_for_model("gpt-4") == "cl100k_base"
    # Reference values from tiktoken's own test-suite vocabulary.
    assert tokens.get_encoding("cl100k_base").encode("hello world") == [15339, 1917]
    assert tokens.count_text("hello world", "o200k_base") == 2
    assert tokens.count_message("hello world") == 2 + tokens.MESSAGE_OVERHEAD


def test_special_tokens_in_user_text_are_counted_as_text() -> None:
    assert tokens.count_text("<|endoftext|>") > 1


def test_unknown_or_unshipped_models_are_bad_input() -> None:
    with pytest.raises(BadUserInput):
        tokens.encoding_name_for_model("no-such-model")
    with pytest.raises(BadUserInput):
        tokens.encoding_name_for_model("text-davinci-003")  # p50k_base: not bundled offline
