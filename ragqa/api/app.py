"""The HTTP API (FastAPI): OpenAI-compatible chat completions over knowledge bases, and KB admin.

``model`` is a knowledge base's name. Every route calls the pipeline, never the engines behind it;
every error is OpenAI's ``{"error": {...}}`` with the right status (``ragqa.api.errors``).

- ``GET  /v1/models``                  the KBs the caller may read, as OpenAI models
- ``POST /v1/chat/completions``        an answer from a KB, with ``sources``; ``stream`` = SSE chunks
- ``GET  /v1/kbs``                     name, files, chunks, embedding model of each readable KB
- ``POST /v1/kbs/{kb}/documents``      multipart ``file`` parts -> 202 and an ingest job
- ``GET  /v1/jobs/{id}``               the job: status, per-file results, progress
- ``GET  /v1/kbs/{kb}/documents``      the KB's documents
- ``DELETE /v1/kbs/{kb}/documents?source=SOURCE``   one document (and its uploaded copy)
- ``DELETE /v1/kbs/{kb}``              the whole KB

Concurrency: a question is admitted by the pipeline's gate at once (429 with Retry-After when its
queue is full), retrieves without waiting for anyone, then waits for a generation slot without
holding a thread; a client that disconnects frees its place and stops its generation.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ragqa.api.errors import ApiError, api_error, bad_request, not_found
from ragqa.api.access import OPEN, Door, LoginRefused, Principal, client_address
from ragqa.api.schemas import ChatRequest, parse
from ragqa.api.bodies import parse_json, too_large
from ragqa.cancel import Cancelled, CancelToken, cancellable
from ragqa.errors import RagqaError
from ragqa.pipeline import check_question_length

if TYPE_CHECKING:
    from ragqa.pipeline import Pipeline
    from ragqa.pipeline.jobs import IngestJobs

log = logging.getLogger(__name__)

MAX_JSON_BYTES = 8 * 1024 * 1024  # a chat request: the conversation, never documents
_DONE = object()


def build_api(pipeline: "Pipeline", door: Door | None, jobs: "IngestJobs") -> "FastAPI":
    """The FastAPI app with the /v1 routes (the web page is mounted beside it by ``serve``).
    ``door``: who may call (``ragqa.api.access``; None: an open door, anyone may do anything)."""
    door = door or Door()
    app = FastAPI(title="ragqa", docs_url="/v1/docs", openapi_url="/v1/openapi.json", redoc_url=None)

    def error_response(exc: BaseException) -> JSONResponse:
        err = api_error(exc)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return error_response(bad_request(f"{where}: {first['msg']}" if where else first["msg"], where or None))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
                405: "invalid_request_error"}.get(exc.status_code, "server_error")
        return error_response(ApiError(exc.status_code, str(exc.detail), kind))

    @app.exception_handler(RagqaError)
    async def _ragqa_error(request: Request, exc: RagqaError) -> JSONResponse:
        # ragqa's own errors are answers, not crashes: handled here, uvicorn logs no traceback for them
        return error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)  # a real bug: Starlette re-raises it after this, and the log has its traceback

    def caller(request: Request) -> Principal:
        """Who this request speaks for (OPEN on an open door): 401 without good credentials, 429
        while this client is slowed after failed ones (``Door.authenticate``)."""
        if door.open:
            return OPEN
        header = request.headers.get("authorization", "")
        try:
            return door.authenticate(header, client_address(request.scope))
        except LoginRefused as exc:
            raise ApiError(429, f"too many failed attempts from this address; retry in {exc.retry_after} s",
                           "rate_limit_error", "too_many_failed_attempts",
                           headers={"Retry-After": str(exc.retry_after)}) from None
        except PermissionError as exc:
            missing = str(exc) in ("missing", "malformed")
            if door.mode == "keys":
                if missing:
                    raise ApiError(401, "this server needs an API key: send Authorization: Bearer YOUR_KEY",
                                   "authentication_error", "missing_api_key") from None
                raise ApiError(401, "unknown API key", "authentication_error", "invalid_api_key") from None
            challenge = {"WWW-Authenticate": 'Basic realm="ragqa"'}
            if missing:
                raise ApiError(401, "this server needs a user name and password: HTTP Basic, or "
                               "Authorization: Bearer USER:PASSWORD", "authentication_error", "missing_credentials",
                               headers=challenge) from None
            raise ApiError(401, "wrong user name or password", "authentication_error", "invalid_credentials",
                           headers=challenge) from None

    async def readable(who: Principal, kb: str) -> None:
        """404 for a KB that does not exist or that this key may not read (its existence is not told)."""
        if not who.can_read(kb) or not await in_thread(_exists, pipeline, kb):  # Milvus: a network call
            raise not_found(f"no knowledge base {kb!r} (GET /v1/models lists the ones you can use)", "model_not_found")

    async def writable(who: Principal, kb: str) -> None:
        if not who.can_write(kb):
            if who.can_read(kb) and await in_thread(_exists, pipeline, kb):
                raise ApiError(403, f"this API key may not change knowledge base {kb!r}", "permission_error",
                               "write_not_allowed")
            raise ApiError(403, f"this API key may not create or change knowledge base {kb!r}",
                           "permission_error", "write_not_allowed")

    async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    # -- models and chat ---------------------------------------------------------------------
    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        who = caller(request)
        names = await in_thread(pipeline.kb_names)
        return {"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": "ragqa"} for n in names if who.can_read(n)]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        who = caller(request)
        data = await _json_body(request)
        _check_message_count(data, pipeline.settings.max_messages)
        req: ChatRequest = parse(ChatRequest, data)
        await readable(who, req.model)
        question, history, system = req.conversation()
        check_question_length(question.strip(), pipeline.settings)  # 400 before any work
        overrides = req.overrides()
        if system is not None:
            overrides["system_prompt"] = system
        ticket = pipeline.gate.enter()  # 429 now when the queue is full
        try:
            prepared = await _while_connected(request, functools.partial(
                pipeline.prepare, question, kb=req.model, history=history, documents=req.documents, **overrides))
            if prepared is None:  # the client left while its question was being prepared: the work stopped
                ticket.release()
                return _gone()
            await ticket.wait_async()
        except BaseException:
            ticket.release()
            raise
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        label = functools.partial(pipeline.uploads.label, req.model)
        created = int(time.time())
        if not req.stream:
            relay = _Relay(pipeline.generate(prepared))
            try:
                answer = await _collect(relay, request)
            finally:
                await relay.aclose()
                ticket.release()
            if answer is None:  # the client has gone; nobody reads this
                return _gone()
            return _completion(completion_id, created, req.model, answer, prepared.settings.max_new_tokens, label)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _sse(_Relay(pipeline.generate(prepared)), ticket, completion_id, created, req.model, include_usage,
                      prepared.settings.max_new_tokens, label)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # -- knowledge bases ---------------------------------------------------------------------
    @app.get("/v1/kbs")
    async def kbs(request: Request) -> dict[str, Any]:
        who = caller(request)
        stats = await in_thread(pipeline.list_kbs)
        return {"object": "list", "data": [
            {"name": s.name, "files": s.files, "failed": s.failed, "chunks": s.chunks, "embedding": s.embedding,
             **({"error": s.error} if s.error else {})} for s in stats if who.can_read(s.name)]}

    @app.get("/v1/kbs/{kb}/documents")
    async def documents(kb: str, request: Request) -> dict[str, Any]:
        who = caller(request)
        await readable(who, kb)
        _, _, files = await in_thread(pipeline.kb_details, kb)
        listed = [{"source": pipeline.uploads.label(kb, f.path), "chunks": f.chunks,
                   "status": "ok" if f.status == "ok" else "failed", "error": f.error or None} for f in files]
        # uploads accepted but not (yet) in the KB: waiting their turn, being retried, or failed for good
        names = {d["source"] for d in listed}
        pending = [{"chunks": 0, **u} for u in await in_thread(jobs.open_uploads, kb) if u["source"] not in names
                   or u["status"] != "failed"]
        return {"object": "list", "data": listed + pending}

    @app.post("/v1/kbs/{kb}/documents", status_code=202)
    async def upload(kb: str, request: Request) -> Any:
        who = caller(request)
        _checked_name(kb)
        await writable(who, kb)
        staged = await _receive_files(request, pipeline)
        try:  # written down before the 202: from here on the upload survives a crash
            job = await in_thread(jobs.submit, kb, staged)
        except BaseException:
            for s in staged:
                s.path.unlink(missing_ok=True)
            raise
        return JSONResponse({"id": job.id, "object": "ingest.job", "status": job.status}, status_code=202)

    @app.get("/v1/jobs/{job_id}")
    async def job(job_id: str, request: Request) -> dict[str, Any]:
        who = caller(request)
        found = jobs.get(job_id)
        if found is None or not who.can_read(found.kb):
            raise not_found(f"no job {job_id!r}")
        return found.to_dict()

    @app.delete("/v1/kbs/{kb}/documents")
    async def delete_document(kb: str, request: Request, source: str = "") -> dict[str, Any]:
        who = caller(request)
        await readable(who, kb)
        await writable(who, kb)
        if not source:
            raise bad_request("name the document: DELETE /v1/kbs/KB/documents?source=SOURCE (as GET lists it)",
                              "source")
        removed = await in_thread(pipeline.remove_document, kb, source)
        if not removed and not await in_thread(jobs.dismiss, kb, source):  # a failed upload is dismissed
            raise not_found(f"no document {source!r} in knowledge base {kb!r}")
        return {"object": "document.deleted", "source": source, "deleted": True}

    @app.delete("/v1/kbs/{kb}")
    async def drop(kb: str, request: Request) -> dict[str, Any]:
        who = caller(request)
        await readable(who, kb)
        await writable(who, kb)
        await in_thread(pipeline.drop_kb, kb)
        await in_thread(jobs.dismiss, kb)
        return {"object": "kb.deleted", "name": kb, "deleted": True}

    @app.api_route("/v1/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def unknown(rest: str, request: Request) -> None:
        path = f"/v1/{rest}"
        allowed = sorted({m for r in app.routes if getattr(r, "path", None) != "/v1/{rest:path}"
                          and getattr(r, "path_regex", None) is not None and r.path_regex.match(path)
                          for m in getattr(r, "methods", None) or ()} - {"HEAD"})
        if allowed:
            raise ApiError(405, f"{request.method} is not allowed on {path}; use {', '.join(allowed)}",
                           code="method_not_allowed", headers={"Allow": ", ".join(allowed)})
        raise not_found(f"no such endpoint: {path} (see /v1/docs)", "unknown_url")

    return app


def _exists(pipeline: "Pipeline", kb: str) -> bool:
    from ragqa.errors import InputError

    try:
        return pipeline.kb_exists(kb)
    except InputError:  # not even a valid KB name
        return False


def _checked_name(kb: str) -> None:
    from ragqa.store import check_kb_name

    try:
        check_kb_name(kb)
    except Exception as exc:
        raise api_error(exc) from None


async def _json_body(request: Request) -> Any:
    """The request's JSON, checked at the door (``ragqa.api.bodies``): 413 past MAX_JSON_BYTES
    (before reading it when Content-Length says so), 400 for anything malformed."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_JSON_BYTES:
        raise too_large(MAX_JSON_BYTES)
    body = bytearray()
    async for part in request.stream():  # a body without Content-Length is cut off at the limit too
        body += part
        if len(body) > MAX_JSON_BYTES:
            raise too_large(MAX_JSON_BYTES)
    return parse_json(bytes(body))


def _check_message_count(data: Any, limit: int) -> None:
    """More messages than ``max_messages`` is a 400 before they are read one by one."""
    messages = data.get("messages") if isinstance(data, dict) else None
    if isinstance(messages, list) and len(messages) > limit:
        raise bad_request(f"messages: {len(messages):,} messages; this server takes at most {limit:,} (max_messages)",
                          "messages", "too_many_messages")


def _gone() -> JSONResponse:
    return JSONResponse({"error": {"message": "the client disconnected", "type": "cancelled",
                                   "code": "client_disconnected"}}, status_code=499)


async def _while_connected(request: Request, work: Any, poll: float = 0.25) -> Any:
    """``work()`` in a worker thread while the client stays; -> its result, or None when the client
    disconnected first: then ``work`` is cancelled (``ragqa.cancel``) and stops at its next step."""
    token = CancelToken()

    def run() -> Any:
        with cancellable(token):
            return work()

    async def watch() -> None:
        while not await request.is_disconnected():
            await anyio.sleep(poll)
        token.cancel()

    result, failed = None, None
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            result = await anyio.to_thread.run_sync(run)
        except Cancelled:
            pass
        except Exception as exc:  # raised below, outside the task group (which would wrap it in a group)
            failed = exc
        finally:
            group.cancel_scope.cancel()
    if failed is not None:
        raise failed
    return None if token.cancelled else result


async def _receive_files(request: Request, pipeline: "Pipeline") -> list[Any]:
    """The request's ``file`` parts, streamed into the KB's staging folder (413 past max_file_mb)."""
    from ragqa.api.uploads import receive_files

    return await receive_files(request, pipeline.uploads, pipeline.settings.max_file_mb)


def _sources(answer: Any, label: Any) -> list[dict[str, Any]]:
    """The sources as ``ragqa ask --json`` gives them, each document named as GET documents lists it."""
    sources = answer.to_dict()["sources"]
    for s in sources:
        s["source"] = label(s["source"])
    return sources


def _checked(answer: Any, label: Any) -> dict[str, Any]:
    """What ragqa checked of the answer: ``answerable`` (False: it abstained, the documents do not
    answer), and the ``citations`` (each quote's document named as ``sources`` names it) and
    ``unsupported`` answer sentences, as ``ragqa ask --json`` gives them."""
    d = answer.to_dict()
    out: dict[str, Any] = {"answerable": d["answerable"]}
    if "citations" in d:
        out["citations"] = [{**c, "source": label(c["source"])} for c in d["citations"]]
        out["unsupported"] = d["unsupported"]
    return out


def _usage(answer: Any) -> dict[str, int]:
    t = answer.timings
    prompt, completion = int(t.get("prompt_tokens", 0)), int(t.get("completion_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _finish_reason(answer: Any, max_tokens: int) -> str:
    return "length" if int(answer.timings.get("completion_tokens", 0)) >= max_tokens else "stop"


def _completion(completion_id: str, created: int, model: str, answer: Any, max_tokens: int,
                label: Any) -> dict[str, Any]:
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.answer},
                     "finish_reason": _finish_reason(answer, max_tokens), "logprobs": None}],
        "usage": _usage(answer),
        "sources": _sources(answer, label),
        **_checked(answer, label),
        **({"notes": answer.notes} if answer.notes else {}),
    }


def _chunk(completion_id: str, created: int, model: str, delta: dict[str, Any] | None,
           finish: str | None = None, **extra: Any) -> str:
    body: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                            "model": model,
                            "choices": [] if delta is None else [{"index": 0, "delta": delta,
                                                                  "finish_reason": finish, "logprobs": None}]}
    body.update(extra)
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


class _Relay:
    """A generation run by one worker thread of its own, its items handed to the event loop.

    One thread per generation, not one hop per token: the loop gets each token as soon as it is
    made and sends whatever has piled up in one write. ``aclose`` (from ``finally``) cancels the
    model call in progress (``ragqa.cancel``: the openai backend shuts its socket, so even a long
    prefill stops at once) and waits, off the loop, until the generation is closed: its model
    call is stopped before the slot is freed.
    """

    def __init__(self, parts: Iterator[Any]) -> None:
        import asyncio
        import threading

        self._parts = parts
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._cancel = CancelToken()  # aclose: the thread stops after its item, the model call at once
        self._finished = asyncio.Event()
        self._thread = threading.Thread(target=self._pump, name="ragqa-generation", daemon=True)
        self._started = False

    def _hand(self, item: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (shutdown): nobody is listening
            self._cancel.cancel()

    def _pump(self) -> None:
        try:
            with cancellable(self._cancel):  # the model call registers how to abort itself
                for item in self._parts:
                    self._hand(item)
                    if self._cancel.cancelled:
                        break
        except BaseException as exc:  # noqa: BLE001 - raised on the loop's side
            self._hand(_Failed(exc))
        finally:
            try:
                self._parts.close()
            finally:
                self._hand(_DONE)
                try:
                    self._loop.call_soon_threadsafe(self._finished.set)
                except RuntimeError:
                    pass

    async def batches(self, poll: float | None = None) -> AsyncIterator[list[Any]]:
        """Every item ready now (at least one) per step; ends after the last. With ``poll``, an
        empty step each ``poll`` seconds that nothing came."""
        import asyncio

        if not self._started:
            self._started = True
            self._thread.start()
        while True:
            if poll is None:
                items = [await self._queue.get()]
            else:  # one getter kept across the empty steps: no item is lost to a timeout
                getter = asyncio.ensure_future(self._queue.get())
                try:
                    while not (await asyncio.wait({getter}, timeout=poll))[0]:
                        yield []
                finally:
                    getter.cancel()
                items = [getter.result()]
            while not self._queue.empty():
                items.append(self._queue.get_nowait())
            for i, item in enumerate(items):
                if item is _DONE:
                    if i:
                        yield items[:i]
                    return
                if isinstance(item, _Failed):
                    if i:
                        yield items[:i]
                    raise item.exc
            yield items

    async def aclose(self) -> None:
        self._cancel.cancel()  # a model call still reading (a long prefill) stops now, not at its next token
        if not self._started:  # never run: nothing to wait for
            self._parts.close()
            return
        with anyio.CancelScope(shield=True):
            await self._finished.wait()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


async def _collect(relay: _Relay, request: Request) -> Any:
    """The final Answer of a non-streamed generation; None when the client left first (it stops)."""
    from ragqa.pipeline import Answer

    answer = None
    checked = time.monotonic()
    async for items in relay.batches(poll=0.5):
        if time.monotonic() - checked >= 0.5:  # tokens may flow faster than the poll: check by the clock
            checked = time.monotonic()
            if await request.is_disconnected():
                return None
        answer = next((x for x in reversed(items) if isinstance(x, Answer)), answer)
    return answer


async def _sse(relay: _Relay, ticket: Any, completion_id: str, created: int, model: str,
               include_usage: bool, max_tokens: int, label: Any) -> AsyncIterator[str]:
    """The generation as OpenAI chunks; the last chunk before ``[DONE]`` carries ``sources`` (and
    ``usage``). A disconnect cancels this coroutine, and ``finally`` stops the generation (the
    model call ends) and frees the slot."""
    from ragqa.pipeline import Answer

    try:
        yield _chunk(completion_id, created, model, {"role": "assistant", "content": ""})
        answer = None
        async for items in relay.batches():
            out = []
            for item in items:
                if isinstance(item, Answer):
                    answer = item
                elif item:
                    out.append(_chunk(completion_id, created, model, {"content": item}))
            if out:
                yield "".join(out)
        if answer is None:
            raise RuntimeError("the pipeline ended without an answer")
        extra: dict[str, Any] = {"sources": _sources(answer, label), **_checked(answer, label)}
        if answer.notes:
            extra["notes"] = answer.notes
        finish = _finish_reason(answer, max_tokens)
        if include_usage:
            yield _chunk(completion_id, created, model, {}, finish)
            yield _chunk(completion_id, created, model, None, usage=_usage(answer), **extra)
        else:
            yield _chunk(completion_id, created, model, {}, finish, **extra)
        yield "data: [DONE]\n\n"
    except Exception as exc:  # after the 200 has gone out: an error event, in OpenAI's shape
        err = api_error(exc)
        yield f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        await relay.aclose()
        ticket.release()
