"""Chat formats, checked by exact string equality (a wrong byte changes what the model does)."""

from __future__ import annotations

import pytest

from types import SimpleNamespace

from ragqa.chat_formats import (
    ALPACA2_DEFAULT_SYSTEM,
    get_chat_format,
    jinja_chat_format,
    list_chat_formats,
    tokenizer_chat_format,
)
from ragqa.errors import ConfigError

CONVERSATION = [
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "q2"},
]


# --------------------------------------------------------------------------- alpaca-2


def test_alpaca2_single_turn_is_byte_exact() -> None:
    prompt = get_chat_format("alpaca-2").prompt("{instruction}")
    assert prompt == (
        "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n{instruction} [/INST]"
    )
    assert ALPACA2_DEFAULT_SYSTEM == "You are a helpful assistant. 你是一个乐于助人的助手。"


def test_alpaca2_multi_turn_is_byte_exact() -> None:
    prompt = get_chat_format("alpaca-2").render(CONVERSATION, "S")
    assert prompt == "[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST] a1</s><s>[INST] q2 [/INST]"


def test_alpaca2_three_user_turns() -> None:
    msgs = CONVERSATION + [{"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"}]
    assert get_chat_format("alpaca-2").render(msgs, "S") == (
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST] a1</s><s>[INST] q2 [/INST] a2</s><s>[INST] q3 [/INST]"
    )


def test_alpaca2_stops_at_end_of_sequence() -> None:
    assert get_chat_format("alpaca-2").stop == ("</s>",)


def test_custom_system_prompt_replaces_the_default() -> None:
    prompt = get_chat_format("alpaca-2").prompt("问题", "你是法律助手。")
    assert prompt == "[INST] <<SYS>>\n你是法律助手。\n<</SYS>>\n\n问题 [/INST]"
    assert ALPACA2_DEFAULT_SYSTEM not in prompt


def test_system_message_in_the_conversation_replaces_the_default() -> None:
    msgs = [{"role": "system", "content": "SYS"}, {"role": "user", "content": "q"}]
    assert get_chat_format("alpaca-2").render(msgs) == "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nq [/INST]"


# --------------------------------------------------------------------------- llama-2, chatml


def test_llama2_has_no_default_system_block() -> None:
    assert get_chat_format("llama-2").prompt("q") == "[INST] q [/INST]"


def test_llama2_multi_turn_is_byte_exact() -> None:
    assert get_chat_format("llama-2").render(CONVERSATION, "S") == (
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST]"
    )


def test_chatml_single_turn_is_byte_exact() -> None:
    assert get_chat_format("chatml").prompt("你好") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chatml_multi_turn_with_custom_system_is_byte_exact() -> None:
    assert get_chat_format("chatml").render(CONVERSATION, "S") == (
        "<|im_start|>system\nS<|im_end|>\n"
        "<|im_start|>user\nq1<|im_end|>\n"
        "<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert get_chat_format("chatml").stop == ("<|im_end|>",)


def test_chatml_empty_system_prompt_drops_the_system_turn() -> None:
    assert get_chat_format("chatml").prompt("q", "") == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    )


# --------------------------------------------------------------------------- the formats users bring
#
# Expected strings are written out from each model's published format (README "Chat formats"
# names the sources), never computed by ragqa's renderer.

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
YULAN_SYSTEM = (
    "The following is a conversation between a human and an AI assistant namely YuLan, developed by GSAI, "
    "Renmin University of China. The AI assistant gives helpful, detailed, and polite answers to the user's "
    "questions."
)
ALPACA_SYSTEM = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)
DEEPSEEK_SYSTEM = (
    "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by Deepseek Company, "
    "and you only answer questions related to computer science. For politically sensitive questions, security "
    "and privacy issues, and other non-computer science questions, you will refuse to answer"
)

# name -> (prompt("q") with the format's default system prompt, render(CONVERSATION, "S"), stop)
EXPECTED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "vicuna": (
        VICUNA_SYSTEM + " USER: q ASSISTANT:",
        "S USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:",
        ("</s>",),
    ),
    "internlm": (
        "<s><|User|>:q<eoh>\n<|Bot|>:",
        "S\n<s><|User|>:q1<eoh>\n<|Bot|>:a1<eoa>\n<s><|User|>:q2<eoh>\n<|Bot|>:",
        ("<eoa>", "<|User|>"),
    ),
    "xverse": (
        "Human: q\n\nAssistant: ",
        "S\n\nHuman: q1\n\nAssistant: a1<|endoftext|>Human: q2\n\nAssistant: ",
        ("<|endoftext|>",),
    ),
    "billa": (
        "\nHuman: q\nAssistant: ",
        "\nS\nHuman: q1\nAssistant: a1\nHuman: q2\nAssistant: ",
        ("Human:", "</s>"),
    ),
    "yulan": (
        YULAN_SYSTEM + "\n[|Human|]:q\n[|AI|]:",
        "S\n[|Human|]:q1\n[|AI|]:a1\n[|Human|]:q2\n[|AI|]:",
        ("[|Human|]", "</s>"),
    ),
    "alpaca": (
        ALPACA_SYSTEM + "\n\n### Instruction:\nq\n\n### Response:",
        "S\n\n### Instruction:\nq1\n\n### Response:a1\n### Instruction:\nq2\n\n### Response:",
        ("</s>", "### Instruction:"),
    ),
    "deepseek-coder": (
        DEEPSEEK_SYSTEM + "\n### Instruction:\nq\n### Response:\n",
        "S\n### Instruction:\nq1\n### Response:\na1\n<|EOT|>\n### Instruction:\nq2\n### Response:\n",
        ("<|EOT|>",),
    ),
    "yi": (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n",
        "S<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n",
        ("<|im_end|>", "<|endoftext|>"),
    ),
    "llama-2": (
        "[INST] q [/INST]",
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST]",
        ("</s>",),
    ),
    "alpaca-2": (
        "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\nq [/INST]",
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST] a1</s><s>[INST] q2 [/INST]",
        ("</s>",),
    ),
    "chatml": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nq<|im_end|>\n"
        "<|im_start|>assistant\n",
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n",
        ("<|im_end|>",),
    ),
}


def test_every_registered_format_has_exact_expectations() -> None:
    assert set(EXPECTED) | {"auto"} == set(list_chat_formats())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_single_turn_with_default_system_is_byte_exact(name: str) -> None:
    assert get_chat_format(name).prompt("q") == EXPECTED[name][0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_multi_turn_with_system_is_byte_exact(name: str) -> None:
    assert get_chat_format(name).render(CONVERSATION, "S") == EXPECTED[name][1]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_stop_strings_end_the_models_turn(name: str) -> None:
    assert get_chat_format(name).stop == EXPECTED[name][2]


# an empty system prompt ("" given, not None) leaves out the whole system block
WITHOUT_SYSTEM = {
    "vicuna": "USER: q ASSISTANT:",
    "yulan": "[|Human|]:q\n[|AI|]:",
    "alpaca": "### Instruction:\nq\n\n### Response:",
    "deepseek-coder": "### Instruction:\nq\n### Response:\n",
    "alpaca-2": "[INST] q [/INST]",
    "chatml": "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_empty_system_prompt_drops_the_system_block(name: str) -> None:
    fmt = get_chat_format(name)
    if fmt.default_system is None:  # nothing to drop: the default prompt already has no system block
        assert fmt.prompt("q", "") == EXPECTED[name][0]
    else:
        assert fmt.prompt("q", "") == WITHOUT_SYSTEM[name]


def test_chinese_multi_turn_vicuna() -> None:
    msgs = [
        {"role": "user", "content": "熊猫吃什么？"},
        {"role": "assistant", "content": "竹子。"},
        {"role": "user", "content": "每天吃多久？"},
    ]
    assert get_chat_format("vicuna").render(msgs, "你是熊猫专家。") == (
        "你是熊猫专家。 USER: 熊猫吃什么？ ASSISTANT: 竹子。</s>USER: 每天吃多久？ ASSISTANT:"
    )


def test_codellama_instruct_is_llama2() -> None:
    # CodeLlama-Instruct was tuned on Llama-2-chat's format: one name serves both
    assert get_chat_format("llama-2").prompt("Write a function.", "Answer in Python.") == (
        "[INST] <<SYS>>\nAnswer in Python.\n<</SYS>>\n\nWrite a function. [/INST]"
    )


# --------------------------------------------------------------------------- registry, errors


def test_names_are_case_and_space_insensitive() -> None:
    assert get_chat_format(" ALPACA-2 ").name == "alpaca-2"


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        get_chat_format("vicuna-9")
    message = str(err.value)
    assert "vicuna-9" in message
    for name in ("alpaca-2", "llama-2", "chatml", "vicuna", "deepseek-coder", "auto", ".toml"):
        assert name in message
    assert set(list_chat_formats()) >= {"alpaca-2", "llama-2", "chatml", "auto"}


@pytest.mark.parametrize(
    "msgs",
    [
        [{"role": "user", "content": "q1"}, {"role": "user", "content": "q2"}],
        [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}],
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
        [],
    ],
    ids=["two-users", "starts-with-assistant", "ends-with-assistant", "empty"],
)
def test_turns_must_alternate_and_end_with_user(msgs: list) -> None:
    with pytest.raises(ConfigError):
        get_chat_format("alpaca-2").render(msgs)


# --------------------------------------------------------------------------- jinja (GGUF templates)

CHATML_JINJA = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_jinja_template_renders_like_chatml() -> None:
    fmt = jinja_chat_format("auto (test.gguf)", CHATML_JINJA, bos_token="<s>", eos_token="<|im_end|>")
    assert fmt.render(CONVERSATION, "S") == get_chat_format("chatml").render(CONVERSATION, "S")
    assert fmt.prompt("q") == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.stop == ("<|im_end|>",)


def test_jinja_template_sees_bos_token() -> None:
    template = "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    fmt = jinja_chat_format("t", template, bos_token="<BOS>", eos_token="")
    assert fmt.prompt("hi", "sys") == "<BOS>[system]sys[user]hi"
    assert fmt.stop == ()


def test_jinja_template_raise_exception_becomes_config_error() -> None:
    template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}x"
    fmt = jinja_chat_format("t", template, bos_token="", eos_token="</s>")
    assert fmt.prompt("q") == "x"
    with pytest.raises(ConfigError, match="no system role"):
        fmt.prompt("q", "a system prompt")


# --------------------------------------------------------------------------- auto for Hugging Face tokenizers

# The chat_template in Yi-*-Chat's tokenizer_config.json (system prompt as plain text, ChatML turns)
YI_JINJA = (
    "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] %}{% endif %}"
    "{% if system_message is defined %}{{ system_message }}{% endif %}"
    "{% for message in messages %}{% set content = message['content'] %}"
    "{% if message['role'] == 'user' %}{{ '<|im_start|>user\\n' + content + '<|im_end|>\\n<|im_start|>assistant\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ content + '<|im_end|>' + '\\n' }}{% endif %}{% endfor %}"
)


def fake_tokenizer(chat_template, bos_token="<s>", eos_token="</s>") -> SimpleNamespace:
    return SimpleNamespace(chat_template=chat_template, bos_token=bos_token, eos_token=eos_token)


def test_tokenizer_template_becomes_the_format() -> None:
    tok = fake_tokenizer(CHATML_JINJA, eos_token="<|im_end|>")
    fmt, notes = tokenizer_chat_format(tok, "Qwen/Qwen2-0.5B-Instruct")
    assert notes == []
    assert fmt.name == "auto (Qwen/Qwen2-0.5B-Instruct)"
    assert fmt.prompt("q") == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    assert fmt.render(CONVERSATION, "S") == get_chat_format("chatml").render(CONVERSATION, "S")
    assert fmt.stop == ("<|im_end|>",)


def test_tokenizer_bos_and_eos_reach_the_template() -> None:
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"
    fmt, _ = tokenizer_chat_format(fake_tokenizer(template, "<BOS>", "<EOS>"), "m")
    assert fmt.prompt("q", "s") == "<BOS>s<EOS>q<EOS>"
    assert fmt.stop == ("<EOS>",)
    fmt, _ = tokenizer_chat_format(fake_tokenizer(template, None, None), "m")  # tokenizers without them
    assert fmt.prompt("q") == "q" and fmt.stop == ()


def test_yi_builtin_matches_yis_own_template() -> None:
    fmt, _ = tokenizer_chat_format(fake_tokenizer(YI_JINJA, "<|startoftext|>", "<|im_end|>"), "01-ai/Yi-6B-Chat")
    yi = get_chat_format("yi")
    for system in (None, "S"):
        assert fmt.prompt("q", system) == yi.prompt("q", system)
        assert fmt.render(CONVERSATION, system) == yi.render(CONVERSATION, system)
    assert fmt.render(CONVERSATION, "S") == (
        "S<|im_start|>user\nq1<|im_end|>\n<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tokenizer_without_template_falls_back_to_alpaca2_with_a_note() -> None:
    for tok in (fake_tokenizer(None), fake_tokenizer(""), SimpleNamespace(bos_token="<s>")):
        fmt, notes = tokenizer_chat_format(tok, "hfl/chinese-alpaca-2-7b")
        assert fmt.name == "alpaca-2"
        assert fmt.prompt("q", "S") == "[INST] <<SYS>>\nS\n<</SYS>>\n\nq [/INST]"
        [note] = notes
        assert "hfl/chinese-alpaca-2-7b" in note and "alpaca-2" in note and "--chat-format" in note


def test_named_templates_use_the_default_one() -> None:
    tok = fake_tokenizer({"default": CHATML_JINJA, "tool_use": "{{ raise_exception('tools') }}"})
    fmt, notes = tokenizer_chat_format(tok, "m")
    assert notes == [] and fmt.prompt("q", "") == "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"


def test_unusable_tokenizer_template_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"chat template of org/model is unusable.*--chat-format"):
        tokenizer_chat_format(fake_tokenizer("{% for m in messages %}"), "org/model")
