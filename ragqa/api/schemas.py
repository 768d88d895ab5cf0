"""The request bodies the API accepts, checked at the door (pydantic), in OpenAI's shapes.

A chat completion takes OpenAI's fields (``model`` = a knowledge base, ``messages``, ``stream``,
``stream_options``, ``temperature``, ``max_tokens`` / ``max_completion_tokens``, ``top_p``,
``seed``) and ragqa's own optional ones (``k``, ``retriever``, ``fusion``, ``chain``, ``abstain``,
``abstain_strictness``, ``citations``). Fields other
OpenAI clients send that ragqa has no use for (``user``, ``n`` = 1, penalties, ...) are accepted and
ignored, as OpenAI-compatible servers do; a value ragqa cannot honour is refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ragqa.api.errors import bad_request


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self, n: int) -> str:
        """The message's text; a part that is not text is refused (ragqa reads text only)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        out = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise bad_request(f"messages[{n}]: a {part.type!r} content part; ragqa reads text parts only",
                                  f"messages[{n}].content")
            out.append(part.text)
        return "".join(out)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    n: int = Field(1, ge=1, le=1)
    # ragqa's own
    k: int | None = Field(None, ge=1, le=100)
    retriever: Literal["vector", "bm25", "hybrid"] | None = None
    fusion: str | None = None
    chain: Literal["stuff", "refine"] | None = None
    abstain: Literal["auto", "off"] | None = None  # README "Abstention"
    abstain_strictness: float | None = Field(None, ge=0.0, le=1.0)
    citations: Literal["on", "off"] | None = None
    # only the KB's documents these patterns match (a name, a folder, a glob: README "Scoped questions")
    documents: list[Annotated[str, Field(min_length=1, max_length=1000)]] | None = Field(None, min_length=1,
                                                                                         max_length=100)

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[Message]) -> list[Message]:
        if messages[-1].role != "user":
            raise ValueError("the last message must be the user's question")
        return messages

    def conversation(self) -> tuple[str, list[dict[str, str]], str | None]:
        """-> (the question, the earlier turns as role/content messages, a system prompt or None)."""
        system = [m.text(n) for n, m in enumerate(self.messages) if m.role in ("system", "developer")]
        turns = [{"role": m.role, "content": m.text(n)} for n, m in enumerate(self.messages)
                 if m.role in ("user", "assistant")]
        question = turns.pop()["content"]
        if not question.strip():
            raise bad_request("the question (the last user message) is empty", "messages")
        return question, turns, "\n\n".join(s for s in system if s.strip()) or None

    def overrides(self) -> dict[str, Any]:
        """The per-question settings this request sets (None: the server's own)."""
        return {"k": self.k, "retriever": self.retriever, "fusion": self.fusion, "chain": self.chain,
                "abstain": self.abstain, "abstain_strictness": self.abstain_strictness, "citations": self.citations,
                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "max_new_tokens": self.max_completion_tokens or self.max_tokens}


def parse(model: type[BaseModel], data: Any) -> Any:
    """``data`` as ``model``, or a 400 naming the first wrong field in one line."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise bad_request(f"{where}: {message}{more}" if where else message + more, where or None) from None
