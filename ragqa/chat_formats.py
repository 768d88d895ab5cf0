"""Chat formats: how a conversation becomes the one string a completion model is trained on.

One function per format, registered by name (``register_chat_format``); an unknown name lists
the known ones. ``auto`` is resolved by the LLM backend from the template inside the model file.
Formats are code, tested by exact string equality; instruction texts are data (prompts/).
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


_REGISTRY: dict[str, ChatFormat] = {}


def register_chat_format(
    name: str, *, default_system: str | None = None, stop: Sequence[str] = ()
) -> Callable[[Renderer], Renderer]:
    def decorator(fn: Renderer) -> Renderer:
        _REGISTRY[name] = ChatFormat(name, fn, default_system, tuple(stop))
        return fn

    return decorator


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


def _llama2_style(msgs: Sequence[Message], system: str | None, sep: str) -> str:
    """[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q1} [/INST] {a1}{sep}[INST] {q2} [/INST]"""
    out = []
    for i, m in enumerate(msgs):
        if m["role"] == "assistant":
            out.append(f" {m['content']}{sep}")
        elif i == 0 and system:
            out.append(f"[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{m['content']} [/INST]")
        else:
            out.append(f"[INST] {m['content']} [/INST]")
    return "".join(out)


@register_chat_format("alpaca-2", default_system=ALPACA2_DEFAULT_SYSTEM, stop=("</s>",))
def format_alpaca2(msgs: Sequence[Message], system: str | None) -> str:
    """Chinese-Alpaca-2, byte-exact to its training format (BOS comes from the tokenizer).

    First turn ``[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q} [/INST]``; an assistant turn
    `` {a}</s>``; later user turns ``<s>[INST] {q} [/INST]``.
    """
    return _llama2_style(msgs, system, "</s><s>")


@register_chat_format("llama-2", default_system=None, stop=("</s>",))
def format_llama2(msgs: Sequence[Message], system: str | None) -> str:
    """Llama-2-chat / CodeLlama-Instruct: turns joined by `` </s><s>``; system block optional."""
    return _llama2_style(msgs, system, " </s><s>")


@register_chat_format("chatml", default_system=CHATML_DEFAULT_SYSTEM, stop=("<|im_end|>",))
def format_chatml(msgs: Sequence[Message], system: str | None) -> str:
    """ChatML (Qwen, Yi, SmolLM2): ``<|im_start|>role\\ncontent<|im_end|>\\n`` per turn."""
    out = [f"<|im_start|>system\n{system}<|im_end|>\n"] if system else []
    out += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs]
    out.append("<|im_start|>assistant\n")
    return "".join(out)


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
