"""The guard in front of the whole server (ASGI middleware): one door for the page and the API.

Everything outside ``/v1`` (the web page, its Gradio endpoints, ``/config``, the API info, file
downloads) is served only to a signed-in principal (``ragqa.api.access.Door``): a page session
or an ``Authorization`` header. Without one, a browser is sent to ``/login`` and anything else
gets a 401; no page, config or endpoint list (which would name the KBs) is sent first. ``/v1``
checks its keys itself (``ragqa.api.app``), with the same door.

For the page's endpoints the guard also reads each JSON body before Gradio does (the same checks
as the API's: size, nesting, Unicode) and refuses a file reference that is not a file this
principal uploaded through the page's upload route (``UploadRegistry``): a client never names a
file on the server, and no server path or URL reaches Gradio's file handling. Every page response
carries a Content-Security-Policy that lets the page fetch nothing the server did not serve.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from ragqa.api.access import Door, LoginRefused, Principal, client_address
from ragqa.api.bodies import parse_json, too_large
from ragqa.api.errors import ApiError

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API_PREFIX = "/v1"
UPLOAD_ROUTE = "/gradio_api/upload"
PUBLIC_PATHS = frozenset({"/login", "/logout"})
MAX_PAGE_JSON_BYTES = 8 * 1024 * 1024
PRINCIPAL_KEY = "ragqa_principal"  # where the guard leaves the caller in the request's scope["state"]

# The page loads Gradio's own scripts and styles from this server (inline ones too: Gradio writes
# its config into the page) and nothing from anywhere else: no remote image, script, frame or fetch.
CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; media-src 'self' data: blob:; font-src 'self' data:; connect-src 'self'; "
       "worker-src 'self' blob:; frame-src 'none'; object-src 'none'; base-uri 'self'; form-action 'self'; "
       "frame-ancestors 'none'")
PAGE_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]
API_HEADERS = [(b"x-content-type-options", b"nosniff")]


class UploadRegistry:
    """The files each principal uploaded through the page's upload route: the only files a page
    endpoint may be handed. Bounded (the oldest are forgotten first)."""

    def __init__(self, folder: str | Path, max_entries: int = 100_000) -> None:
        self.folder = os.path.realpath(folder)
        self.max_entries = max_entries
        self._owners: OrderedDict[str, str] = OrderedDict()  # real path -> principal name
        self._lock = threading.Lock()

    def add(self, who: str, path: str) -> None:
        real = os.path.realpath(path)
        if not _inside(real, self.folder):
            return
        with self._lock:
            self._owners.pop(real, None)
            self._owners[real] = who
            while len(self._owners) > self.max_entries:
                self._owners.popitem(last=False)

    def owns(self, who: str, path: str) -> bool:
        """Whether ``path`` is a file ``who`` uploaded (inside the upload folder, as the route gave it)."""
        if not isinstance(path, str) or not path or "\0" in path:
            return False
        real = os.path.realpath(path)
        with self._lock:
            return _inside(real, self.folder) and self._owners.get(real) == who


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def file_references(data: Any) -> Iterator[Any]:
    """Every file reference in a page request's data: a dict with a ``path`` (Gradio's FileData),
    or one marked as FileData that names only a ``url`` (which Gradio would fetch)."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            meta = item.get("meta")
            if "path" in item:
                yield item.get("path")
            elif "url" in item and isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
                yield item.get("url")
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


class Guard:
    """ASGI middleware around the whole server; see the module's docstring."""

    def __init__(self, app: Any, door: Door, uploads: UploadRegistry | None) -> None:
        self.app, self.door, self.uploads = app, door, uploads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        is_api = path == API_PREFIX or path.startswith(API_PREFIX + "/")
        send = _adding_headers(send, API_HEADERS if is_api else PAGE_HEADERS)
        if is_api or path in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        try:
            who = self.door.principal(headers, _cookies(headers.get("cookie", "")), client_address(scope))
        except LoginRefused as exc:
            await _respond(scope, send, ApiError(429, str(exc), "rate_limit_error", "too_many_failed_attempts",
                                                 headers={"Retry-After": str(exc.retry_after)}))
            return
        if who is None:
            await self._refuse(scope, send, headers)
            return
        scope.setdefault("state", {})[PRINCIPAL_KEY] = who
        method = scope.get("method", "GET")
        if scope["type"] == "http" and method in ("POST", "PUT", "PATCH") and self.uploads is not None:
            if path.endswith(UPLOAD_ROUTE):
                send = self._recording_uploads(send, who)
            else:  # every other body is read here first, whatever its Content-Type says (FastAPI parses
                # a body without one as JSON): no file reference reaches the page unchecked
                checked = await self._checked_body(scope, receive, send, headers, who)
                if checked is None:
                    return
                receive = checked
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send, headers: dict[str, str]) -> None:
        """Not signed in: a browser asking for a page goes to /login; anything else is a 401."""
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 4401})
            return
        if scope.get("method") == "GET" and "text/html" in headers.get("accept", ""):
            target = scope.get("path", "/") or "/"
            location = "/login?" + urllib.parse.urlencode({"next": target}) if target != "/" else "/login"
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode("latin-1", "replace")),
                                    (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        mode = self.door.mode
        message = ("sign in first: open /login, or send Authorization: Bearer YOUR_KEY" if mode == "keys"
                   else "sign in first: open /login, or send HTTP Basic credentials")
        await _respond(scope, send, ApiError(401, message, "authentication_error", "not_signed_in"))

    async def _checked_body(self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str],
                            who: Principal) -> Receive | None:
        """Read the JSON body, check it and its file references; -> a receive that replays it, or
        None when the request was answered with an error."""
        length = headers.get("content-length", "")
        body = bytearray()
        try:
            if length.isdigit() and int(length) > MAX_PAGE_JSON_BYTES:
                raise too_large(MAX_PAGE_JSON_BYTES)
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_PAGE_JSON_BYTES:
                    raise too_large(MAX_PAGE_JSON_BYTES)
            data = parse_json(bytes(body)) if body else None
            for ref in file_references(data):
                if not self.uploads.owns(who.name, ref):
                    log.warning("page: refused a file reference that is not an upload of %r: %.200r", who.name, ref)
                    raise ApiError(403, "a file must be uploaded through this page first (POST /gradio_api/upload); "
                                   "the page never reads a path or URL a client names", "permission_error",
                                   "not_an_upload")
        except ApiError as exc:
            await _respond(scope, send, exc)
            return None
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        return replay

    def _recording_uploads(self, send: Send, who: Principal) -> Send:
        """Pass the upload route's answer on, and note the paths it gave as this principal's."""
        state: dict[str, Any] = {"status": 0, "body": bytearray()}
        uploads = self.uploads
        assert uploads is not None

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body" and state["status"] == 200:
                state["body"] += message.get("body", b"")
                if not message.get("more_body", False):
                    try:
                        paths = json.loads(bytes(state["body"]))
                    except ValueError:
                        paths = []
                    for p in paths if isinstance(paths, list) else []:
                        if isinstance(p, str):
                            uploads.add(who.name, p)
            await send(message)

        return sending


def _adding_headers(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            message = {**message, "headers": [*message.get("headers", []), *(h for h in extra if h[0] not in names)]}
        await send(message)

    return sending


async def _respond(scope: Scope, send: Send, exc: ApiError) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 4000 + exc.status if exc.status < 1000 else 4000})
        return
    body = json.dumps(exc.body(), ensure_ascii=False).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _cookies(header: str) -> dict[str, str]:
    from starlette.requests import cookie_parser  # lenient, as browsers are: one odd cookie spoils nothing

    return cookie_parser(header)
