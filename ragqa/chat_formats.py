"""Chat formats: how a conversation becomes the one string a completion model is trained on.

Formats are registered by name; an unknown name lists the known ones. Most formats are one shape,
text around each turn (``RolePrefixSpec``), so they are data for one small renderer; a format that
does not fit that shape registers its own function (``register_chat_format``). A user brings a
format the library does not know in a TOML file (``load_chat_format_file``), and ``auto`` is the
model's own Jinja template (``jinja_chat_format``), resolved by the LLM backend.

Formats are tested by exact string equality; instruction texts are data (prompts/). The model's
leading BOS token is never written here: the tokenizer adds it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from ragqa.errors import ConfigError

ALPACA2_DEFAULT_SYSTEM = "You are a helpful assistant. 你是一个乐于助人的助手。"
CHATML_DEFAULT_SYSTEM = "You are a helpful assistant."
AUTO = "auto"
FALLBACK_FORMAT = "alpaca-2"  # for a model that carries no template of its own


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


Renderer = Callable[[Sequence[Message], str | None], str]
TokenText = Callable[[int], str]  # token id -> its text in the model's vocabulary


@dataclass(frozen=True)
class ChatFormat:
    """A named renderer plus what the model emits when its turn is over."""

    name: str
    render_fn: Renderer
    default_system: str | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)

    def render(self, messages: Sequence[Message], system_prompt: str | None = None) -> str:
        """Render a conversation ending with a user turn; the model's answer follows the result."""
        msgs = list(messages)
        if msgs and msgs[0]["role"] == "system":
            system_prompt = msgs.pop(0)["content"]
        system = self.default_system if system_prompt is None else system_prompt
        _check_turns(msgs)
        return self.render_fn(msgs, system)

    def prompt(self, instruction: str, system_prompt: str | None = None) -> str:
        """Single turn: ``render([{"role": "user", "content": instruction}])``."""
        return self.render([{"role": "user", "content": instruction}], system_prompt)


@dataclass(frozen=True)
class RolePrefixSpec:
    """A chat format as the text around each turn.

    This is the shape of fastllm's ``pre_prompt / user_role / bot_role / history_sep`` and of most
    FastChat templates. For a conversation q1, a1, q2 the prompt is::

        prefix + SYSTEM + user_prefix + q1 + assistant_prefix + reply_prefix + a1 + turn_separator
               + user_prefix + q2 + assistant_prefix

    where SYSTEM is ``system_template`` with ``{system}`` replaced, present only when the system
    prompt is not empty. With ``system_in_first_turn`` (Llama-2) it goes right after the first
    ``user_prefix`` instead. ``reply_prefix`` only ever precedes a past answer: a new answer starts
    right after ``assistant_prefix`` (Llama-2 and Vicuna put a space there, which the model emits
    itself as part of its first word).
    """

    user_prefix: str
    assistant_prefix: str
    turn_separator: str = ""
    reply_prefix: str = ""
    system_template: str = "{system}"
    system_in_first_turn: bool = False
    prefix: str = ""

    def render(self, msgs: Sequence[Message], system: str | None) -> str:
        block = self.system_template.replace("{system}", system) if system else ""
        out = [self.prefix]
        if not self.system_in_first_turn:
            out.append(block)
        for i, m in enumerate(msgs):
            if m["role"] == "assistant":
                out.append(f"{self.reply_prefix}{m['content']}{self.turn_separator}")
                continue
            out.append(self.user_prefix)
            if i == 0 and self.system_in_first_turn:
                out.append(block)
            out.append(f"{m['content']}{self.assistant_prefix}")
        return "".join(out)


_REGISTRY: dict[str, ChatFormat] = {}


def register_chat_format(
    name: str, *, default_system: str | None = None, stop: Sequence[str] = ()
) -> Callable[[Renderer], Renderer]:
    """Register a render function under ``name`` (for formats that are not a RolePrefixSpec)."""

    def decorator(fn: Renderer) -> Renderer:
        _REGISTRY[name] = ChatFormat(name, fn, default_system, tuple(stop))
        return fn

    return decorator


def register_role_prefix_format(
    name: str, spec: RolePrefixSpec, *, default_system: str | None = None, stop: Sequence[str] = ()
) -> ChatFormat:
    """Register a format that is text around each turn (most are; see RolePrefixSpec)."""
    fmt = ChatFormat(name, spec.render, default_system, tuple(stop))
    _REGISTRY[name] = fmt
    return fmt


def list_chat_formats() -> list[str]:
    return sorted(_REGISTRY) + [AUTO]


def get_chat_format(name: str, token_text: TokenText | None = None) -> ChatFormat:
    """A registered format by name, or a user's format file (a path ending in .toml).

    ``token_text`` turns token ids in a format file (``<FLM_FIX_TOKEN_n>``) into text; a backend
    passes its tokenizer's. ``auto`` is not resolved here: it needs the model (see the backends).
    """
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    if is_format_file(name):
        return load_chat_format_file(name.strip(), token_text)
    raise ConfigError(
        f"unknown chat format {name!r}; choose one of: {', '.join(list_chat_formats())}, "
        "or give a .toml format file"
    )


def check_chat_format(value: str) -> None:
    """Fail early on an unknown name or a broken format file (before any model is loaded).

    Token ids in a file are accepted here as any number; the model's tokenizer resolves them later.
    """
    if value.strip().lower() == AUTO:
        return
    if value.strip().lower() not in _REGISTRY and is_format_file(value):
        load_chat_format_file(value.strip(), token_text=lambda token_id: f"<token {token_id}>")
        return
    get_chat_format(value)


def format_file_digest(value: str) -> str | None:
    """sha256 of the format file ``value`` names (None for a built-in name, auto or no such file).

    Lets a cache of results made with a format file notice that the file was edited.
    """
    if value.strip().lower() in _REGISTRY or value.strip().lower() == AUTO or not is_format_file(value):
        return None
    import hashlib

    try:
        return hashlib.sha256(Path(value.strip()).expanduser().read_bytes()).hexdigest()
    except OSError:
        return None


def is_format_file(value: str) -> bool:
    """A value meant as a file: ends in .toml, names an existing file, or contains a path separator."""
    v = value.strip()
    return v.lower().endswith(".toml") or "/" in v or "\\" in v or Path(v).expanduser().is_file()


def _check_turns(msgs: Sequence[Message]) -> None:
    if not msgs or msgs[-1]["role"] != "user":
        raise ConfigError("a conversation to render must end with a user message")
    for i, m in enumerate(msgs):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise ConfigError(f"message {i} should be from {want}, not {m['role']} (turns must alternate)")


# --------------------------------------------------------------------------- the built-in formats
#
# Sources: the seeds' fastllm settings (pre_prompt / user_role / bot_role / history_sep, ANCHORS.md
# "Other chat formats users bring"), checked against FastChat's conversation templates
# (fastchat/conversation.py) and the models' own chat code or tokenizer_config.json templates.
# Where they disagree, the comment says which one is followed and why.

# Chinese-Alpaca-2: byte-exact to its training format. First turn
# "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{q} [/INST]"; a past answer " {a}</s>"; later user turns
# "<s>[INST] {q} [/INST]".
register_role_prefix_format(
    "alpaca-2",
    RolePrefixSpec(
        user_prefix="[INST] ",
        assistant_prefix=" [/INST]",
        reply_prefix=" ",
        turn_separator="</s><s>",
        system_template="<<SYS>>\n{system}\n<</SYS>>\n\n",
        system_in_first_turn=True,
    ),
    default_system=ALPACA2_DEFAULT_SYSTEM,
    stop=("</s>",),
)

# Llama-2-chat and CodeLlama-Instruct: as alpaca-2 but turns joined by " </s><s>" and no default
# system block (Meta's examples run without one).
register_role_prefix_format(
    "llama-2",
    RolePrefixSpec(
        user_prefix="[INST] ",
        assistant_prefix=" [/INST]",
        reply_prefix=" ",
        turn_separator=" </s><s>",
        system_template="<<SYS>>\n{system}\n<</SYS>>\n\n",
        system_in_first_turn=True,
    ),
    default_system=None,
    stop=("</s>",),
)

# ChatML (Qwen, SmolLM2, ...): "<|im_start|>role\ncontent<|im_end|>\n" per turn.
_CHATML_TURNS = dict(
    user_prefix="<|im_start|>user\n",
    assistant_prefix="<|im_end|>\n<|im_start|>assistant\n",
    turn_separator="<|im_end|>\n",
)
register_role_prefix_format(
    "chatml",
    RolePrefixSpec(**_CHATML_TURNS, system_template="<|im_start|>system\n{system}<|im_end|>\n"),
    default_system=CHATML_DEFAULT_SYSTEM,
    stop=("<|im_end|>",),
)

# Yi-Chat: ChatML turns, byte for byte as the chat_template in Yi's tokenizer_config.json, which
# has a newline between "<|im_end|>" and "<|im_start|>assistant" (the fastllm setting in the seeds
# drops it, as it does for Qwen1.5, whose own template certainly has it). What differs from
# `chatml` is the system prompt: Yi-Chat has no default one, and its template writes a given one
# as plain text before the first turn, with no "<|im_start|>system" wrapper.
register_role_prefix_format(
    "yi",
    RolePrefixSpec(**_CHATML_TURNS, system_template="{system}"),
    default_system=None,
    stop=("<|im_end|>", "<|endoftext|>"),
)

# Vicuna v1.1 / v1.3 / v1.5: FastChat's vicuna_v1.1 (system, sep " ", sep2 "</s>"). The seeds'
# fastllm setting ends a past answer with "<s>" instead of "</s>"; FastChat made Vicuna, so its
# "</s>" is followed.
register_role_prefix_format(
    "vicuna",
    RolePrefixSpec(
        user_prefix="USER: ",
        assistant_prefix=" ASSISTANT:",
        reply_prefix=" ",
        turn_separator="</s>",
        system_template="{system} ",
    ),
    default_system=(
        "A chat between a curious user and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the user's questions."
    ),
    stop=("</s>",),
)

# InternLM-Chat (v1, internlm-chat-7b): fastllm's setting, which agrees with FastChat's
# internlm-chat: every user turn starts with a literal "<s>". The model was trained without a
# system prompt; a given one goes before the first turn as plain text, as in FastChat.
register_role_prefix_format(
    "internlm",
    RolePrefixSpec(
        user_prefix="<s><|User|>:",
        assistant_prefix="<eoh>\n<|Bot|>:",
        turn_separator="<eoa>\n",
        system_template="{system}\n",
    ),
    default_system=None,
    stop=("<eoa>", "<|User|>"),
)

# XVERSE-Chat: "Human: {q}\n\nAssistant: {a}" then the end-of-text token (id 3, "<|endoftext|>";
# fastllm writes it <FLM_FIX_TOKEN_3>). No default system prompt; a given one is followed by a
# blank line, as in XVERSE's own chat code.
register_role_prefix_format(
    "xverse",
    RolePrefixSpec(
        user_prefix="Human: ",
        assistant_prefix="\n\nAssistant: ",
        turn_separator="<|endoftext|>",
        system_template="{system}\n\n",
    ),
    default_system=None,
    stop=("<|endoftext|>",),
)

# BiLLa: "\nHuman: {q}\nAssistant: " with "\n" between turns (fastllm's pre_prompt "\n", the same
# bytes as FastChat's billa). No system prompt in training.
register_role_prefix_format(
    "billa",
    RolePrefixSpec(
        prefix="\n",
        user_prefix="Human: ",
        assistant_prefix="\nAssistant: ",
        turn_separator="\n",
        system_template="{system}\n",
    ),
    default_system=None,
    stop=("Human:", "</s>"),
)

# YuLan-Chat: the system text from its README and fastllm's setting, "[|Human|]:" / "\n[|AI|]:".
register_role_prefix_format(
    "yulan",
    RolePrefixSpec(
        user_prefix="[|Human|]:",
        assistant_prefix="\n[|AI|]:",
        turn_separator="\n",
        system_template="{system}\n",
    ),
    default_system=(
        "The following is a conversation between a human and an AI assistant namely YuLan, "
        "developed by GSAI, Renmin University of China. The AI assistant gives helpful, detailed, "
        "and polite answers to the user's questions."
    ),
    stop=("[|Human|]", "</s>"),
)

# Alpaca (Stanford Alpaca and the models tuned on its prompt, e.g. WizardCoder): the instruction
# prompt "...\n\n### Instruction:\n{q}\n\n### Response:". It was trained single-turn; later turns
# follow fastllm's setting (a newline after the answer).
register_role_prefix_format(
    "alpaca",
    RolePrefixSpec(
        user_prefix="### Instruction:\n",
        assistant_prefix="\n\n### Response:",
        turn_separator="\n",
        system_template="{system}\n\n",
    ),
    default_system=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request."
    ),
    stop=("</s>", "### Instruction:"),
)

# Deepseek-Coder-Instruct: the chat_template in its tokenizer_config.json (system text byte for
# byte, with no final full stop; a past answer ends "\n<|EOT|>\n"), with fastllm's assistant
# prefix "\n### Response:\n" (the template's generation prompt stops before that last newline).
register_role_prefix_format(
    "deepseek-coder",
    RolePrefixSpec(
        user_prefix="### Instruction:\n",
        assistant_prefix="\n### Response:\n",
        turn_separator="\n<|EOT|>\n",
        system_template="{system}\n",
    ),
    default_system=(
        "You are an AI programming assistant, utilizing the Deepseek Coder model, developed by "
        "Deepseek Company, and you only answer questions related to computer science. For "
        "politically sensitive questions, security and privacy issues, and other non-computer "
        "science questions, you will refuse to answer"
    ),
    stop=("<|EOT|>",),
)


# --------------------------------------------------------------------------- user format files

TOKEN_PLACEHOLDER = re.compile(r"<FLM_FIX_TOKEN_(\d+)>")
# key -> (required, type); the text keys are RolePrefixSpec's fields plus the default system prompt
FORMAT_FILE_KEYS: dict[str, tuple[bool, type]] = {
    "name": (False, str),
    "system": (False, str),
    "system_template": (False, str),
    "system_in_first_turn": (False, bool),
    "prefix": (False, str),
    "user_prefix": (True, str),
    "assistant_prefix": (True, str),
    "reply_prefix": (False, str),
    "turn_separator": (False, str),
    "stop": (False, list),
}
# fastllm's names for the same things, so a user coming from the seeds gets pointed to ours
_FASTLLM_NAMES = {
    "pre_prompt": "prefix (and system for the system prompt)",
    "user_role": "user_prefix",
    "bot_role": "assistant_prefix",
    "history_sep": "turn_separator",
}


def load_chat_format_file(path: str | Path, token_text: TokenText | None = None) -> ChatFormat:
    """A ChatFormat from a TOML file whose keys are ``FORMAT_FILE_KEYS`` (README "Chat formats").

    ``<FLM_FIX_TOKEN_n>`` in any text is replaced by ``token_text(n)``, the model's text for token
    id n (fastllm's notation, e.g. ``<FLM_FIX_TOKEN_2>`` for Llama's ``</s>``). Every problem is a
    one-line ConfigError naming the file and the key.
    """
    import tomllib

    path = Path(path).expanduser()
    where = f"chat format file {path}"
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{where} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None

    for key, value in data.items():
        if key not in FORMAT_FILE_KEYS:
            hint = (f"fastllm's {key!r} is {_FASTLLM_NAMES[key]} here" if key in _FASTLLM_NAMES
                    else f"known keys: {', '.join(FORMAT_FILE_KEYS)}")
            raise ConfigError(f"{where}: unknown key {key!r} ({hint})")
        want = FORMAT_FILE_KEYS[key][1]
        if key == "stop" and isinstance(value, str):
            value = data[key] = [value]
        if not isinstance(value, want) or (
            want is list and not all(isinstance(s, str) for s in value)
        ):
            wanted = "a list of strings" if want is list else ("true or false" if want is bool else "a string")
            got = _toml_type(value)
            if want is list and isinstance(value, list):
                got = "a list holding " + next(_toml_type(s) for s in value if not isinstance(s, str))
            raise ConfigError(f"{where}: key {key!r} must be {wanted}, not {got}")
    missing = [k for k, (required, _) in FORMAT_FILE_KEYS.items() if required and k not in data]
    if missing:
        raise ConfigError(f"{where}: missing required key {missing[0]!r}")

    def text(key: str, value: str) -> str:
        return _fill_token_ids(value, token_text, f"{where}: key {key!r}")

    template = text("system_template", data.get("system_template", "{system}"))
    if "{system}" not in template:
        raise ConfigError(f"{where}: key 'system_template' must contain {{system}}")
    spec = RolePrefixSpec(
        user_prefix=text("user_prefix", data["user_prefix"]),
        assistant_prefix=text("assistant_prefix", data["assistant_prefix"]),
        turn_separator=text("turn_separator", data.get("turn_separator", "")),
        reply_prefix=text("reply_prefix", data.get("reply_prefix", "")),
        system_template=template,
        system_in_first_turn=data.get("system_in_first_turn", False),
        prefix=text("prefix", data.get("prefix", "")),
    )
    system = text("system", data["system"]) if "system" in data else None
    stop = tuple(text("stop", s) for s in data.get("stop", []) if s)
    name = data.get("name") or path.stem
    return ChatFormat(f"{name} ({path.name})", spec.render, system, stop)


def _fill_token_ids(value: str, token_text: TokenText | None, where: str) -> str:
    """Replace each ``<FLM_FIX_TOKEN_n>`` with the model's text for token id n."""

    def one(match: re.Match[str]) -> str:
        token_id = int(match.group(1))
        if token_text is None:
            raise ConfigError(
                f"{where} uses {match.group(0)}, but this backend cannot turn token ids into text; "
                "write the token's text instead"
            )
        try:
            piece = token_text(token_id)
        except Exception as exc:  # the tokenizer's own complaint, e.g. an id past the vocabulary
            raise ConfigError(f"{where}: token id {token_id} is not usable with this model ({exc})") from None
        if not piece:
            raise ConfigError(f"{where}: token id {token_id} has no text in this model's vocabulary")
        return piece

    return TOKEN_PLACEHOLDER.sub(one, value)


def _toml_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list",
             dict: "a table"}
    return names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- the model's own template


def jinja_chat_format(name: str, template: str, bos_token: str, eos_token: str) -> ChatFormat:
    """A ChatFormat from a model's own Jinja chat template (GGUF ``tokenizer.chat_template``)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_template_error
    compiled = env.from_string(template)

    def render(msgs: Sequence[Message], system: str | None) -> str:
        full = ([{"role": "system", "content": system}] if system else []) + list(msgs)
        return compiled.render(
            messages=full, bos_token=bos_token, eos_token=eos_token, add_generation_prompt=True
        )

    stop = (eos_token,) if eos_token else ()
    return ChatFormat(name, render, None, stop)


def template_chat_format(
    source: str, template: str | None, bos_token: str, eos_token: str
) -> tuple[ChatFormat, list[str]]:
    """``auto``: the model's template as a ChatFormat, else alpaca-2 with a note; -> (format, notes).

    ``source`` names the model in the format's name and in messages (a file name or hub id).
    """
    if not template:
        note = f"{source} carries no chat template; using {FALLBACK_FORMAT} (set --chat-format)"
        return get_chat_format(FALLBACK_FORMAT), [note]
    try:
        return jinja_chat_format(f"auto ({source})", template, bos_token, eos_token), []
    except Exception as exc:  # a template jinja cannot compile
        raise ConfigError(f"the chat template of {source} is unusable ({exc}); set --chat-format") from None


def tokenizer_chat_format(tokenizer: Any, name: str) -> tuple[ChatFormat, list[str]]:
    """``auto`` for a Hugging Face tokenizer: its ``chat_template`` with its BOS/EOS text.

    ``name`` is the model's name or path, for the notes. A tokenizer without a template gives
    alpaca-2 and a note saying so. A template dict (named templates) uses its "default" entry.
    """
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default")
    bos = getattr(tokenizer, "bos_token", None)
    eos = getattr(tokenizer, "eos_token", None)
    return template_chat_format(name, template, str(bos or ""), str(eos or ""))


def _raise_template_error(message: str) -> None:
    raise ConfigError(f"the model's chat template refused the conversation: {message}")
