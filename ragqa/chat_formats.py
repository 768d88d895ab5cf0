"""Chat formats: how a conversation becomes the one string a completion model is trained on.

Formats are registered by name; an unknown name lists the known ones. Most formats are one shape,
text around each turn (``RolePrefixSpec``), so they are data for one small renderer; a format that
does not fit that shape registers its own function (``register_chat_format``). ``auto`` is the
model's own Jinja template (``jinja_chat_format``), resolved by the LLM backend.

Formats are tested by exact string equality; instruction texts are data (prompts/). The model's
leading BOS token is never written here: the tokenizer adds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from ragqa.errors import ConfigError

ALPACA2_DEFAULT_SYSTEM = "You are a helpful assistant. 你是一个乐于助人的助手。"
CHATML_DEFAULT_SYSTEM = "You are a helpful assistant."
AUTO = "auto"


class Message(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


Renderer = Callable[[Sequence[Message], str | None], str]


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
    fmt = ChatFormat(name, spec.render, default_system, tuple(stop))
    _REGISTRY[name] = fmt
    return fmt


def list_chat_formats() -> list[str]:
    return sorted(_REGISTRY) + [AUTO]


def get_chat_format(name: str) -> ChatFormat:
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    raise ConfigError(f"unknown chat format {name!r}; choose one of: {', '.join(list_chat_formats())}")


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


def _raise_template_error(message: str) -> None:
    raise ConfigError(f"the model's chat template refused the conversation: {message}")
