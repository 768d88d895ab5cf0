"""RagqaLLM (any backend as a LangChain LLM) and generation bookkeeping, with a fake backend."""

from __future__ import annotations

import pytest

from ragqa.config import Settings
from ragqa.errors import ConfigError
from ragqa.llms import GenerationParams, GenerationStats, RagqaLLM, load_backend


def test_invoke_returns_the_whole_answer(fake_backend_cls) -> None:
    backend = fake_backend_cls(["熊猫 吃 竹子"])
    llm = RagqaLLM(backend=backend, params={"max_tokens": 50}, stop_default=["<|im_end|>"])
    assert llm.invoke("prompt") == "熊猫 吃 竹子"
    [call] = backend.calls
    assert call["prompt"] == "prompt"
    assert call["params"] == {"max_tokens": 50}
    assert call["stop"] == ["<|im_end|>"]


def test_stream_yields_backend_pieces_in_order(fake_backend_cls) -> None:
    llm = RagqaLLM(backend=fake_backend_cls(["a b c"]))
    assert list(llm.stream("p")) == ["a", " b", " c"]


def test_caller_stop_words_add_to_the_format_stop(fake_backend_cls) -> None:
    backend = fake_backend_cls(["x"])
    llm = RagqaLLM(backend=backend, stop_default=["</s>"])
    llm.invoke("p", stop=["\n\n"])
    assert backend.calls[0]["stop"] == ["\n\n", "</s>"]


def test_call_kwargs_override_default_params(fake_backend_cls) -> None:
    backend = fake_backend_cls(["x"])
    llm = RagqaLLM(backend=backend, params={"temperature": 0.2, "max_tokens": 10})
    llm.invoke("p", temperature=0.0)
    assert backend.calls[0]["params"] == {"temperature": 0.0, "max_tokens": 10}


def test_batch_and_token_count_use_the_backend(fake_backend_cls) -> None:
    llm = RagqaLLM(backend=fake_backend_cls(["same"]))
    assert llm.batch(["p1", "p2"]) == ["same", "same"]
    assert llm.get_num_tokens("abcd") == 4  # the fake counts one token per character


def test_generation_params_follow_settings() -> None:
    s = Settings(max_new_tokens=77, temperature=0.1, top_k=5, top_p=0.8, repeat_penalty=1.2, seed=9)
    assert GenerationParams.from_settings(s) == GenerationParams(77, 0.1, 5, 0.8, 1.2, 9)


def test_decode_speed_excludes_the_first_token() -> None:
    stats = GenerationStats(prompt_tokens=100, completion_tokens=11, prompt_seconds=0.5, decode_seconds=2.0)
    assert stats.decode_tokens_per_s == pytest.approx(5.0)
    assert stats.as_dict() == {
        "prompt_tokens": 100, "completion_tokens": 11, "prompt_s": 0.5, "decode_s": 2.0,
        "decode_tokens_per_s": 5.0,
    }
    assert GenerationStats(completion_tokens=1, decode_seconds=0.0).decode_tokens_per_s == 0.0


def test_unknown_backend_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        load_backend(Settings(), backend="vllm")
    assert "llama.cpp" in str(err.value)
