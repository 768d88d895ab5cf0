"""User chat format files (TOML): loading, token-id placeholders, errors, and their way through
the settings, the pipeline and the llama.cpp backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragqa.chat_formats import (
    check_chat_format,
    get_chat_format,
    list_chat_formats,
    load_chat_format_file,
)
from ragqa.errors import ConfigError
from ragqa.prompts import prompts_dir

CONVERSATION = [
    {"role": "user", "content": "q1"},
    {"role": "assistant", "content": "a1"},
    {"role": "user", "content": "q2"},
]

# Chinese-Alpaca-2 written as a file: proves the file keys can express the seed's exact format.
ALPACA2_TOML = r'''
name = "my alpaca-2"
system = "You are a helpful assistant. 你是一个乐于助人的助手。"
system_template = "<<SYS>>\n{system}\n<</SYS>>\n\n"
system_in_first_turn = true
user_prefix = "[INST] "
assistant_prefix = " [/INST]"
reply_prefix = " "
turn_separator = "</s><s>"
stop = ["</s>"]
'''

# Llama-2-chat as the seeds wrote it for fastllm: token ids instead of </s> and <s>.
LLAMA2_FASTLLM_TOML = r'''
system_template = "<<SYS>>\n{system}\n<</SYS>>\n\n"
system_in_first_turn = true
user_prefix = "[INST] "
assistant_prefix = " [/INST]"
reply_prefix = " "
turn_separator = " <FLM_FIX_TOKEN_2><FLM_FIX_TOKEN_1>"
stop = ["<FLM_FIX_TOKEN_2>"]
'''

LLAMA_VOCAB = {0: "<unk>", 1: "<s>", 2: "</s>"}


def write(tmp_path: Path, text: str, name: str = "fmt.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, "utf-8")
    return path


def fake_token_text(token_id: int) -> str:
    return LLAMA_VOCAB.get(token_id, "")


# --------------------------------------------------------------------------- expressiveness


def test_a_file_reproduces_alpaca2_byte_for_byte(tmp_path: Path) -> None:
    fmt = load_chat_format_file(write(tmp_path, ALPACA2_TOML))
    assert fmt.prompt("{instruction}") == (
        "[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n{instruction} [/INST]"
    )
    assert fmt.render(CONVERSATION, "S") == "[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST] a1</s><s>[INST] q2 [/INST]"
    assert fmt.prompt("q", "") == "[INST] q [/INST]"
    assert fmt.stop == ("</s>",)
    assert fmt.name == "my alpaca-2 (fmt.toml)"
    builtin = get_chat_format("alpaca-2")
    for system in (None, "", "你是法律助手。"):
        assert fmt.render(CONVERSATION, system) == builtin.render(CONVERSATION, system)


def test_the_example_file_is_the_builtin_vicuna() -> None:
    path = prompts_dir() / "formats" / "example-vicuna.toml"
    fmt = load_chat_format_file(path)
    builtin = get_chat_format("vicuna")
    assert fmt.prompt("q") == builtin.prompt("q")
    assert fmt.render(CONVERSATION, "S") == "S USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:"
    assert (fmt.default_system, fmt.stop) == (builtin.default_system, builtin.stop)


def test_minimal_file_needs_only_the_two_prefixes(tmp_path: Path) -> None:
    fmt = load_chat_format_file(write(tmp_path, 'user_prefix = "Q: "\nassistant_prefix = "\\nA:"\n', "qa.toml"))
    assert fmt.prompt("q") == "Q: q\nA:"
    assert fmt.prompt("q", "S") == "SQ: q\nA:"
    assert fmt.render(CONVERSATION) == "Q: q1\nA:a1Q: q2\nA:"
    assert (fmt.name, fmt.default_system, fmt.stop) == ("qa (qa.toml)", None, ())


def test_prefix_comes_first_and_a_single_stop_string_is_accepted(tmp_path: Path) -> None:
    text = 'prefix = "<BOS>"\nsystem = "S"\nsystem_template = "[{system}]"\nuser_prefix = "U:"\nassistant_prefix = "|A:"\nstop = "U:"\n'
    fmt = load_chat_format_file(write(tmp_path, text))
    assert fmt.prompt("q") == "<BOS>[S]U:q|A:"
    assert fmt.stop == ("U:",)


# --------------------------------------------------------------------------- token-id placeholders


def test_placeholders_become_the_models_token_text(tmp_path: Path) -> None:
    fmt = load_chat_format_file(write(tmp_path, LLAMA2_FASTLLM_TOML), token_text=fake_token_text)
    assert fmt.render(CONVERSATION, "S") == "[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST]"
    assert fmt.render(CONVERSATION, "S") == get_chat_format("llama-2").render(CONVERSATION, "S")
    assert fmt.stop == ("</s>",)


def test_placeholder_without_a_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path, LLAMA2_FASTLLM_TOML)
    with pytest.raises(ConfigError) as err:
        load_chat_format_file(path, token_text=None)
    message = str(err.value)
    assert str(path) in message and "'turn_separator'" in message and "<FLM_FIX_TOKEN_2>" in message
    assert "\n" not in message


def test_placeholder_for_a_token_the_model_lacks(tmp_path: Path) -> None:
    path = write(tmp_path, 'user_prefix = "<FLM_FIX_TOKEN_99999>"\nassistant_prefix = ":"\n')
    with pytest.raises(ConfigError, match=r"'user_prefix'.*token id 99999"):
        load_chat_format_file(path, token_text=fake_token_text)

    def refusing(token_id: int) -> str:
        raise IndexError(f"id {token_id} out of range")

    with pytest.raises(ConfigError, match=r"token id 99999 is not usable.*out of range"):
        load_chat_format_file(path, token_text=refusing)


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    "text, fragments",
    [
        ('assistant_prefix = ":"\n', ["missing required key 'user_prefix'"]),
        ('user_prefix = "U:"\n', ["missing required key 'assistant_prefix'"]),
        ('user_prefix = 3\nassistant_prefix = ":"\n', ["key 'user_prefix' must be a string, not a number"]),
        ('user_prefix = "U"\nassistant_prefix = ":"\nstop = [1]\n', ["key 'stop' must be a list of strings, not a list holding a number"]),
        ('user_prefix = "U"\nassistant_prefix = ":"\nsystem_in_first_turn = "yes"\n', ["key 'system_in_first_turn' must be true or false, not a string"]),
        ('user_prefix = "U"\nassistant_prefix = ":"\nuser_suffix = "x"\n', ["unknown key 'user_suffix'", "user_prefix"]),
        ('user_role = "U"\nassistant_prefix = ":"\n', ["unknown key 'user_role'", "fastllm", "user_prefix"]),
        ('user_prefix = "U"\nassistant_prefix = ":"\nsystem_template = "<<SYS>>"\n', ["key 'system_template' must contain {system}"]),
        ('user_prefix = "U\nassistant_prefix = ":"\n', ["is not valid TOML"]),
        ('[format]\nuser_prefix = "U"\n', ["unknown key 'format'"]),
    ],
    ids=["no-user", "no-assistant", "int", "stop-int", "bool", "unknown", "fastllm-name", "template", "syntax", "table"],
)
def test_bad_file_is_a_one_line_error_naming_file_and_key(tmp_path: Path, text: str, fragments: list[str]) -> None:
    path = write(tmp_path, text, "bad.toml")
    with pytest.raises(ConfigError) as err:
        load_chat_format_file(path)
    message = str(err.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert "\n" not in message


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"chat format file .*nope\.toml does not exist"):
        get_chat_format(str(tmp_path / "nope.toml"))
    (tmp_path / "latin1.toml").write_bytes(b'user_prefix = "\xe9"\nassistant_prefix = ":"\n')
    with pytest.raises(ConfigError, match="is not valid TOML"):
        get_chat_format(str(tmp_path / "latin1.toml"))


# --------------------------------------------------------------------------- resolving a setting


def test_get_chat_format_takes_a_path(tmp_path: Path) -> None:
    path = write(tmp_path, ALPACA2_TOML, "alpaca2.toml")
    assert get_chat_format(str(path)).prompt("q", "S") == "[INST] <<SYS>>\nS\n<</SYS>>\n\nq [/INST]"
    assert get_chat_format(f" {path} ").name == "my alpaca-2 (alpaca2.toml)"  # as pasted, with spaces
    plain = write(tmp_path, ALPACA2_TOML, "alpaca2.format")  # any existing file, whatever its suffix
    assert get_chat_format(str(plain)).prompt("q", "S") == "[INST] <<SYS>>\nS\n<</SYS>>\n\nq [/INST]"


def test_a_builtin_name_wins_over_a_file_of_that_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, 'user_prefix = "X"\nassistant_prefix = "Y"\n', "chatml")
    assert get_chat_format("chatml").name == "chatml"


def test_check_accepts_placeholders_before_a_tokenizer_is_loaded(tmp_path: Path) -> None:
    check_chat_format(str(write(tmp_path, LLAMA2_FASTLLM_TOML)))  # ids are resolved by the model later
    check_chat_format("auto")
    check_chat_format("Vicuna")
    with pytest.raises(ConfigError, match="missing required key"):
        check_chat_format(str(write(tmp_path, 'user_prefix = "U"\n', "bad.toml")))
    with pytest.raises(ConfigError, match="unknown chat format"):
        check_chat_format("vicuna-9")


def test_settings_and_help_name_every_format() -> None:
    from ragqa.cli import FormatOpt
    from ragqa.config import Settings

    description = Settings.model_fields["chat_format"].description
    for name in list_chat_formats():
        assert name in description and name in FormatOpt.help
    assert ".toml" in description and ".toml" in FormatOpt.help


# --------------------------------------------------------------------------- through the pipeline

DOC_TEXT = "熊猫是中国特有的动物。熊猫的主要食物是竹子，每天要吃十几个小时！"


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "panda.txt"
    path.write_text(DOC_TEXT, "utf-8")
    return path


def test_ask_with_a_format_file(make_pipeline, fake_backend_cls, doc: Path, tmp_path: Path) -> None:
    fmt = write(tmp_path, 'system = "你是熊猫专家。"\nuser_prefix = "<用户>"\nassistant_prefix = "<助手>"\nstop = ["<用户>"]\n')
    backend = fake_backend_cls()
    make_pipeline(backend=backend, chat_format=str(fmt)).ask([doc], "熊猫吃什么？")
    [call] = backend.calls
    assert call["prompt"].startswith("你是熊猫专家。<用户>")
    assert call["prompt"].endswith("熊猫吃什么？<助手>")
    assert "<用户>" in call["stop"]


def test_broken_format_file_fails_before_indexing(make_pipeline, counting_embeddings_cls, doc: Path, tmp_path: Path) -> None:
    fmt = write(tmp_path, 'user_prefix = "U"\n', "broken.toml")
    embeddings = counting_embeddings_cls()
    pipeline = make_pipeline(embeddings=embeddings, chat_format=str(fmt))
    with pytest.raises(ConfigError, match=r"broken\.toml: missing required key 'assistant_prefix'"):
        pipeline.ask([doc], "熊猫吃什么？")
    assert embeddings.documents_embedded == 0
    with pytest.raises(ConfigError, match="does not exist"):
        make_pipeline(chat_format=str(tmp_path / "missing.toml")).ask([doc], "熊猫吃什么？")


def test_editing_the_format_file_redoes_summaries(make_pipeline, fake_backend_cls, doc: Path, tmp_path: Path) -> None:
    fmt = write(tmp_path, 'user_prefix = "U:"\nassistant_prefix = "A:"\n')
    out = tmp_path / "out.jsonl"

    def run() -> tuple[int, int]:
        report = make_pipeline(backend=fake_backend_cls(), chat_format=str(fmt)).summarize_batch([doc], out, progress=False)
        return report.summarized, report.skipped

    assert run() == (1, 0)
    assert run() == (0, 1)
    fmt.write_text('user_prefix = "User: "\nassistant_prefix = "\\nAssistant:"\n', "utf-8")
    assert run() == (1, 0)
    assert len(out.read_text("utf-8").splitlines()) == 1
    assert json.loads(out.read_text("utf-8"))["status"] == "ok"


# --------------------------------------------------------------------------- llama.cpp backend (files and auto)


class FakeLlama:
    """The parts of llama_cpp.Llama that the chat-format code uses, with a 3-token vocabulary."""

    def n_vocab(self) -> int:
        return len(LLAMA_VOCAB)

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        return "".join(LLAMA_VOCAB[t] for t in tokens).encode("utf-8")

    def token_bos(self) -> int:
        return 1

    def token_eos(self) -> int:
        return 2


def llama_cpp_backend(metadata: dict[str, str] | None = None):
    from ragqa.llms import LlamaCppBackend

    backend = LlamaCppBackend.__new__(LlamaCppBackend)  # no model file: only the tokenizer side
    backend.path = Path("model.gguf")
    backend.llm = FakeLlama()
    backend.metadata = metadata or {}
    backend.notes = []
    return backend


def test_llama_cpp_backend_fills_placeholders_with_its_own_tokens(tmp_path: Path) -> None:
    backend = llama_cpp_backend()
    fmt = backend.chat_format(str(write(tmp_path, LLAMA2_FASTLLM_TOML)))
    assert fmt.render(CONVERSATION, "S") == "[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST] a1 </s><s>[INST] q2 [/INST]"
    assert fmt.stop == ("</s>",)
    assert backend.token_text(-1) == "" and backend.token_text(3) == ""  # outside the vocabulary
    bad = write(tmp_path, 'user_prefix = "<FLM_FIX_TOKEN_7>"\nassistant_prefix = ":"\n', "bad.toml")
    with pytest.raises(ConfigError, match="token id 7 has no text"):
        backend.chat_format(str(bad))


def test_llama_cpp_auto_uses_the_gguf_template_with_its_bos_and_eos() -> None:
    template = "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    backend = llama_cpp_backend({"tokenizer.chat_template": template})
    fmt = backend.chat_format("auto")
    assert fmt.name == "auto (model.gguf)"
    assert fmt.prompt("q", "S") == "<s><system>S<user>q<assistant>"
    assert fmt.stop == ("</s>",)
    assert backend.notes == []


def test_llama_cpp_auto_without_template_is_alpaca2_with_a_note() -> None:
    backend = llama_cpp_backend({})
    assert backend.chat_format("AUTO").name == "alpaca-2"
    assert backend.notes == ["model.gguf carries no chat template; using alpaca-2 (set --chat-format)"]
