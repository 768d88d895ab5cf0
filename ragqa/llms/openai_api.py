"""The openai backend: any OpenAI-compatible server (vLLM, llama.cpp's servers, ...) through the
``openai`` client (imported when the backend is built)."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ragqa.cancel import on_cancel
from ragqa.chat_formats import AUTO, ChatFormat, get_chat_format
from ragqa.config import Settings
from ragqa.errors import ConfigError, MissingDependencyError, ModelError, ModelTimeout, one_line
from ragqa.llms.base import GenerationStats, StopCutter, check_fits
from ragqa.words import estimate_tokens


class OpenAIBackend:
    """Any OpenAI-compatible server, through the ``openai`` client's completions endpoint.

    ragqa renders the chat format itself, so the prompt goes to ``/v1/completions`` as one string
    (chat completions would re-wrap it in the server's template). Tokens are counted by the
    server's tokenizer where it offers one (llama-cpp-python: /extras/tokenize/count; vLLM and
    llama.cpp's llama-server: /tokenize), else estimated.
    """

    name = "openai"
    MAX_API_STOPS = 4  # the OpenAI API takes at most 4 stop strings; the rest are cut here

    def __init__(self, settings: Settings) -> None:
        try:
            import openai
        except ImportError:
            raise MissingDependencyError("openai") from None
        if not settings.base_url:
            raise ConfigError("the openai backend needs base_url (e.g. http://127.0.0.1:8000/v1)")
        self.settings = settings
        self.url = settings.base_url
        self.root = self.url[: -len("/v1")] if self.url.endswith("/v1") else self.url
        self.notes: list[str] = []
        self.stats = GenerationStats()
        # servers started without an API key accept any; the client insists on one
        self._key = settings.api_key.get_secret_value() if settings.api_key else ""
        # read: the longest the server may stay silent; the first token has a clock of its own (stream)
        self.request_timeout, self.first_token_timeout = settings.request_timeout, settings.first_token_timeout
        self.client = openai.OpenAI(base_url=self.url, api_key=self._key or "no-key", max_retries=0,
                                    timeout=openai.Timeout(self.request_timeout, connect=10.0))
        self._n_ctx = settings.n_ctx
        self.model = self._pick_model(settings.api_model)
        self._token_counts: dict[str, int] = {}
        self._count_remote = self._find_tokenizer()

    # -- what the server offers
    def _pick_model(self, wanted: str | None) -> str:
        try:
            listed = list(self.client.models.list())
        except Exception as exc:
            if wanted and _status(exc) == 404:  # a server without /models
                return wanted
            raise self._error(exc, wanted) from None
        ids = [m.id for m in listed]
        if not wanted:
            if len(ids) != 1:
                offered = ", ".join(ids) or "none"
                raise ConfigError(f"the server at {self.url} offers {len(ids)} models ({offered}); set api_model")
            wanted = ids[0]
        elif ids and wanted not in ids:
            self.notes.append(f"the server at {self.url} lists {', '.join(ids)}, not {wanted!r}; asking for it anyway")
        for m in listed:  # vLLM reports the context it serves
            limit = (m.model_extra or {}).get("max_model_len") if m.id == wanted else None
            if isinstance(limit, int) and limit < self._n_ctx:
                self.notes.append(f"n_ctx {self._n_ctx} is over the {limit} tokens the server allows {wanted}; using {limit}")
                self._n_ctx = limit
        return wanted

    def _find_tokenizer(self) -> Callable[[str], int] | None:
        """The server's own token counter, if it has one; None means estimate."""
        def llama_cpp_python(text: str) -> int:
            return int(self._post("/extras/tokenize/count", {"input": text, "model": self.model})["count"])

        def vllm_or_llama_server(text: str) -> int:
            reply = self._post("/tokenize", {"model": self.model, "prompt": text, "content": text})
            return int(reply["count"]) if "count" in reply else len(reply["tokens"])

        for counter in (llama_cpp_python, vllm_or_llama_server):
            try:
                if counter("ragqa") > 0:
                    return counter
            except (OSError, ValueError, KeyError, TypeError):
                continue
        self.notes.append(f"the server at {self.url} offers no tokenizer endpoint; token counts are estimated "
                          "(prompts are fitted with a margin)")
        return None

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        request = urllib.request.Request(self.root + path, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(request, timeout=30) as reply:
            return json.loads(reply.read())

    # -- the Backend protocol
    def context_size(self) -> int:
        return self._n_ctx

    def count_tokens(self, text: str) -> int:
        if text not in self._token_counts:
            if len(self._token_counts) > 4096:
                self._token_counts.clear()
            if self._count_remote is not None:
                try:
                    self._token_counts[text] = self._count_remote(text)
                except (OSError, ValueError, KeyError) as exc:
                    raise ModelError(f"the server at {self.url} could not count tokens: {one_line(exc)}") from None
            else:
                self._token_counts[text] = estimate_tokens(text)
        return self._token_counts[text]

    def chat_format(self, name: str) -> ChatFormat:
        """``auto`` cannot read the model's template over the API: alpaca-2, the project default."""
        if name.strip().lower() != AUTO:
            return get_chat_format(name)
        self.notes.append("the openai backend cannot read the model's chat template; using alpaca-2 "
                          "(set --chat-format to the served model's format, e.g. chatml)")
        return get_chat_format("alpaca-2")

    def stream(self, prompt: str, stop: list[str] | None = None, *, stats: GenerationStats | None = None,
               **params: Any) -> Iterator[str]:
        prompt_tokens = self.count_tokens(prompt)
        max_tokens = int(params.get("max_tokens", self.settings.max_new_tokens))
        check_fits(prompt_tokens, max_tokens, self.context_size())
        stops = [s for s in stop or [] if s]
        extra: dict[str, Any] = {}
        if "top_k" in params:
            extra["top_k"] = params["top_k"]
        if "repeat_penalty" in params:
            # llama.cpp's name and window. Not vLLM's repetition_penalty, which counts the whole prompt
            # (the model would shun the passages' words). Servers that do not know a field ignore it.
            extra["repeat_penalty"] = params["repeat_penalty"]
        stats = stats if stats is not None else GenerationStats()
        stats.begin(prompt_tokens)
        t0 = time.perf_counter()
        first = last = None
        response = None
        late = threading.Event()  # set when the first token did not come in time and the stream was shut
        watchdog: threading.Timer | None = None
        try:
            response = self.client.completions.create(
                model=self.model, prompt=prompt, stream=True, max_tokens=max_tokens,
                temperature=float(params.get("temperature", 0.0)), top_p=float(params.get("top_p", 1.0)),
                stop=stops[: self.MAX_API_STOPS] or None, seed=int(params.get("seed", self.settings.seed)), extra_body=extra,
            )

            undo = on_cancel(functools.partial(_shut, response))
            left = self.first_token_timeout - (time.perf_counter() - t0)

            def too_late() -> None:
                if first is None:
                    late.set()
                    _shut(response)

            watchdog = threading.Timer(max(0.0, left), too_late)
            watchdog.daemon = True
            watchdog.start()

            def pieces() -> Iterator[str]:
                nonlocal first, last
                for chunk in response:
                    text = chunk.choices[0].text if chunk.choices else ""
                    if text:
                        last = time.perf_counter()
                        first = first or last
                        stats.completion_tokens += 1  # servers stream one token per chunk
                        yield text

            try:
                yield from StopCutter(stops).cut(pieces())
            finally:
                undo()
        except Exception as exc:
            if late.is_set():
                raise ModelTimeout(f"the server at {self.url} sent no first token within "
                                   f"{self.first_token_timeout:g} s (first_token_timeout)") from None
            if _is_timeout(exc):
                raise ModelTimeout(f"the server at {self.url} was silent for {self.request_timeout:g} s "
                                   "(request_timeout)") from None
            if isinstance(exc, ModelError) or not _is_openai_error(exc):
                raise
            raise self._error(exc, self.model) from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if response is not None:
                response.close()
            if first is not None:
                stats.prompt_seconds, stats.decode_seconds = first - t0, (last or first) - first
            self.stats = stats

    def _error(self, exc: BaseException, model: str | None) -> ModelError:
        """One line naming the URL: unreachable, refused key, unknown model, or what it said."""
        import openai

        if isinstance(exc, openai.APIConnectionError):
            cause = one_line(exc.__cause__) if exc.__cause__ else one_line(exc).rstrip(".")
            message = f"cannot reach the OpenAI-compatible server at {self.url} ({cause}); is it running?"
        elif isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            message = (f"the server at {self.url} refused the API key ({exc.status_code}); "
                       "set RAGQA_API_KEY or OPENAI_API_KEY")
        elif isinstance(exc, openai.NotFoundError):
            message = (f"the server at {self.url} answered 404 for model {model!r}: set api_model to one it "
                       "serves (GET /models), and check base_url ends with its API root (often /v1)")
        elif isinstance(exc, openai.APIStatusError):
            message = f"the server at {self.url} answered {exc.status_code}: {one_line(exc)}"
        else:
            message = f"the server at {self.url} failed: {one_line(exc)}"
        if self._key:
            message = message.replace(self._key, "***")
        return ModelError(message)


def _shut(response: Any) -> None:
    """Shut the streamed response's socket from another thread: a read blocked in it (the server
    still reading a long prompt) wakes at once, and the server sees the request closed."""
    import socket

    stream = getattr(getattr(response, "response", None), "extensions", {}).get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)


def _is_timeout(exc: BaseException) -> bool:
    import httpx
    import openai

    return isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException))


def _is_openai_error(exc: BaseException) -> bool:
    import openai

    return isinstance(exc, openai.OpenAIError)


def _status(exc: BaseException) -> int | None:
    return getattr(exc, "status_code", None)
