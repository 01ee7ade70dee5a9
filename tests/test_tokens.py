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


def test_models_without_a_tiktoken_encoding_are_approximate() -> None:
    assert tokens.model_tokens("gpt-4o") == tokens.ModelTokens("o200k_base", False)
    assert tokens.model_tokens("claude-3-5-sonnet-latest") == tokens.ModelTokens("cl100k_base", True)
    assert tokens.model_tokens("llama-3") == tokens.ModelTokens("cl100k_base", True)
    assert tokens.model_tokens("gemini-1.5-pro") == tokens.ModelTokens("o200k_base", True)
    # tiktoken knows it, but its encoding (p50k_base) is not bundled offline: nearest bundled one.
    assert tokens.model_tokens("text-davinci-003") == tokens.ModelTokens("cl100k_base", True)
    # A well-formed name nobody knows still counts, conservatively, and says so.
    assert tokens.model_tokens("zz-my-finetune-7b") == tokens.ModelTokens(tokens.FALLBACK_ENCODING, True)
    assert tokens.approximate_budget(1000) == 850
    assert tokens.approximate_budget(3) == tokens.REPLY_PRIMING


def test_malformed_model_names_are_bad_input() -> None:
    for name in ("", "gpt 4o", "x" * 201, "gpt-4o\n", "modèle"):
        with pytest.raises(BadUserInput) as raised:
            tokens.model_tokens(name)
        assert raised.value.details.get("field") == "model"
