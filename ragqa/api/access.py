"""Who is calling: the one access model of every way into the server (the API, the page).

A server has one ``Door``, in one of three modes:

- **keys** (``serve --api-keys FILE``): every request names a key, by ``Authorization: Bearer TOKEN``
  (the API, and scripts that call the page's endpoints) or by a page session (a person signed in
  at ``/login`` with the key's name and token). A key reads and writes the KBs its entry lists
  (``ragqa.api.keys``), on every door alike.
- **users** (``serve --auth USER:PASSWORD``): a simple gate for one or a few people, each with every
  right: the page signs them in, the API takes ``Authorization: Basic`` or ``Bearer USER:PASSWORD``.
- **open** (neither): every caller may do everything; ``serve`` allows it on localhost only, unless
  told the server is deliberately open (``--allow-open``).

Failed sign-ins are slowed per client address and per user name (``LoginThrottle``) and logged by
name, never with the secret. Secrets are compared by digest in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ragqa.api.keys import KeyRing, digest

log = logging.getLogger(__name__)

SESSION_COOKIE = "ragqa_session"
DEFAULT_SESSION_HOURS = 12


class Principal(Protocol):
    """Whoever a request speaks for: a key, a signed-in user, or anyone (an open server)."""

    name: str

    def can_read(self, kb: str) -> bool: ...

    def can_write(self, kb: str) -> bool: ...


@dataclass(frozen=True)
class FullAccess:
    """Every right: a user of ``--auth``, or anyone at all on an open server (``name`` "local")."""

    name: str = "local"

    def can_read(self, kb: str) -> bool:
        return True

    def can_write(self, kb: str) -> bool:
        return True


OPEN = FullAccess("local")


def client_address(scope: Mapping[str, Any]) -> str:
    """The calling address of an ASGI request, for slowing repeated failures (behind a proxy: what
    uvicorn's --forwarded-allow-ips trusts of X-Forwarded-For)."""
    client = scope.get("client")
    return str(client[0]) if client else "?"


class LoginRefused(Exception):
    """Too many failed sign-ins from this client or for this user: wait ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed sign-ins: try again in {retry_after} s")
        self.retry_after = retry_after


class LoginThrottle:
    """Failed sign-ins per client address and per user name: the first ``free`` cost nothing, then
    each further try must wait 1, 2, 4, ... seconds (at most ``max_wait``) after the last failure,
    for that client and for that user alike. A success clears both; a quiet hour forgets them.

    >>> t = LoginThrottle(free=2, clock=lambda: 100.0)
    >>> [t.failed("1.2.3.4", "alice") for _ in range(3)]
    [1, 2, 3]
    >>> t.wait("5.6.7.8", "alice")  # the user is slowed from any address
    2.0
    >>> t.succeeded("alice"); t.wait("5.6.7.8", "alice")
    0.0
    """

    def __init__(self, *, free: int = 5, max_wait: float = 300.0, forget_after: float = 3600.0,
                 max_entries: int = 10_000, clock=time.monotonic) -> None:
        self.free, self.max_wait, self.forget_after = free, max_wait, forget_after
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: OrderedDict[tuple[str, str], tuple[int, float]] = OrderedDict()  # -> (count, last)

    def _wait_for(self, key: tuple[str, str], now: float) -> float:
        count, last = self._failures.get(key, (0, 0.0))
        if count == 0 or now - last > self.forget_after:
            return 0.0
        if count < self.free:
            return 0.0
        return max(0.0, last + min(2.0 ** (count - self.free), self.max_wait) - now)

    @staticmethod
    def _keys(client: str, user: str | None) -> list[tuple[str, str]]:
        return [("client", client)] + ([("user", user)] if user is not None else [])

    def wait(self, client: str, user: str | None = None) -> float:
        """Seconds before this client may try this user again (0: now); ``user`` None: a bearer
        token, which names no user, is slowed per client only."""
        now = self._clock()
        with self._lock:
            return max(self._wait_for(key, now) for key in self._keys(client, user))

    def failed(self, client: str, user: str | None = None) -> int:
        """Count a failure; -> the failures in a row so far (the user's, else the client's)."""
        now = self._clock()
        count = 0
        with self._lock:
            for key in self._keys(client, user):
                count, last = self._failures.pop(key, (0, 0.0))
                count = 1 if now - last > self.forget_after else count + 1
                self._failures[key] = (count, now)
            while len(self._failures) > self.max_entries:  # a flood of names cannot grow it without end
                self._failures.popitem(last=False)
        return count

    def succeeded(self, user: str | None) -> None:
        """A user signed in: their own count is cleared. The client's is not (someone holding one
        good key or account could otherwise clear it between guesses at others); it fades after
        ``forget_after`` quiet seconds."""
        if user is not None:
            with self._lock:
                self._failures.pop(("user", user), None)


class Door:
    """The server's one access model; see the module's docstring."""

    def __init__(self, keys: KeyRing | None = None, users: Sequence[tuple[str, str]] | None = None, *,
                 throttle: LoginThrottle | None = None, session_hours: float = DEFAULT_SESSION_HOURS,
                 max_sessions: int = 10_000) -> None:
        if keys is not None and users:
            raise ValueError("a door takes keys or users, not both")
        self.keys = keys
        self.users = {user: digest(password) for user, password in users or ()}
        self.throttle = throttle or LoginThrottle()
        self.session_seconds = session_hours * 3600
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, tuple[str, float]] = OrderedDict()  # token digest -> (name, expires)
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        """No keys and no users: anyone may do anything."""
        return self.keys is None and not self.users

    @property
    def mode(self) -> str:
        return "keys" if self.keys is not None else "users" if self.users else "open"

    # -- who a name or a secret stands for
    def named(self, name: str | None) -> Principal | None:
        """The principal a signed-in name stands for (the page's ``gr.Request.username``)."""
        if self.open:
            return OPEN
        if not name:
            return None
        if self.keys is not None:
            return self.keys.by_name(name)
        return FullAccess(name) if name in self.users else None

    def _credentials(self, user: str, secret: str) -> Principal | None:
        """``user`` with ``secret`` (a key's name and token, or an --auth user and password)."""
        wanted = digest(secret)
        if self.keys is not None:
            key = self.keys.by_name(user)
            # compared even for an unknown name: the answer's time tells nothing about which names exist
            ok = hmac.compare_digest(key.digest if key is not None else digest(""), wanted)
            return key if ok and key is not None else None
        expected = self.users.get(user)
        ok = hmac.compare_digest(expected or digest(""), wanted)
        return FullAccess(user) if ok and expected is not None else None

    def _parse(self, header: str) -> tuple[str | None, str | None, str] | None:
        """An ``Authorization`` value -> (user, secret, kind) for the checks (None: not a form this
        door takes). Keys: ``Bearer TOKEN``; users: ``Basic`` or ``Bearer USER:PASSWORD``."""
        scheme, _, value = header.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if not value:
            return None
        if self.keys is not None:
            return (None, value, "key") if scheme == "bearer" else None
        if scheme == "basic":
            try:
                value = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
        elif scheme != "bearer":
            return None
        user, sep, password = value.partition(":")
        return (user, password, "user") if sep else None

    def authenticate(self, header: str, client: str) -> Principal:
        """The principal an ``Authorization`` header stands for, through the same slowing as the
        page's sign-in. LoginRefused while slowed; PermissionError when absent or wrong."""
        parsed = self._parse(header) if header else None
        if parsed is None:
            raise PermissionError("missing" if not header.strip() else "malformed")
        user, secret, kind = parsed
        wait = self.throttle.wait(client, user)
        if wait > 0:
            raise LoginRefused(max(1, round(wait + 0.5)))
        principal = self.keys.find(secret) if kind == "key" and self.keys is not None else \
            self._credentials(user or "", secret or "")
        if principal is None:
            count = self.throttle.failed(client, user)
            if kind == "key":
                log.warning("unknown API key from %s (%d failed in a row)", client, count)
            else:
                log.warning("wrong credentials for user %r from %s (%d failed in a row)", user, client, count)
            raise PermissionError("wrong")
        self.throttle.succeeded(user)
        return principal

    def principal(self, headers: Mapping[str, str], cookies: Mapping[str, str], client: str) -> Principal | None:
        """Whoever a page request speaks for: OPEN on an open door; else its ``Authorization``
        header or its page session; None when neither names anyone (LoginRefused while slowed)."""
        if self.open:
            return OPEN
        header = headers.get("authorization", "")
        if header:
            try:
                return self.authenticate(header, client)
            except PermissionError:
                return None
        return self.session(cookies.get(SESSION_COOKIE, ""))

    # -- page sessions
    def sign_in(self, user: str, secret: str, client: str) -> tuple[Principal, str]:
        """Check a sign-in; -> (principal, session token). LoginRefused while this client or user is
        slowed; PermissionError for a wrong name or secret (counted)."""
        wait = self.throttle.wait(client, user)
        if wait > 0:
            log.warning("sign-in refused for user %r from %s: slowed after repeated failures (%.0f s left)",
                        user, client, wait)
            raise LoginRefused(max(1, round(wait + 0.5)))
        principal = self._credentials(user, secret)
        if principal is None:
            count = self.throttle.failed(client, user)
            log.warning("sign-in failed for user %r from %s (%d failed in a row)", user, client, count)
            raise PermissionError("wrong user name or key")
        self.throttle.succeeded(user)
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[_session_key(token)] = (principal.name, time.monotonic() + self.session_seconds)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        log.info("signed in: %r from %s", principal.name, client)
        return principal, token

    def session(self, token: str) -> Principal | None:
        if not token:
            return None
        key = _session_key(token)
        with self._lock:
            found = self._sessions.get(key)
            if found is None:
                return None
            name, expires = found
            if time.monotonic() > expires:
                del self._sessions[key]
                return None
        return self.named(name)

    def sign_out(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(_session_key(token), None)


def _session_key(token: str) -> str:
    """Sessions are kept by their token's digest: the table holds no usable secret."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
