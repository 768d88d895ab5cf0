"""One door for the page and the API (ragqa.api.access, .guard, .bodies, .login), with fakes: who a
request speaks for, sign-ins slowed, file references checked, malformed bodies refused. The real
server under attack is tests/integration/test_security.py."""

from __future__ import annotations

import asyncio
import base64
import doctest
import json
from pathlib import Path
from typing import Any

import pytest

import ragqa.api.access
import ragqa.api.bodies
import ragqa.api.login
import ragqa.chains
from ragqa.api.access import OPEN, SESSION_COOKIE, Door, FullAccess, LoginRefused, LoginThrottle
from ragqa.api.errors import ApiError
from ragqa.api.guard import Guard, UploadRegistry, file_references
from ragqa.api.keys import KeyRing


@pytest.mark.parametrize("module", [ragqa.api.access, ragqa.api.bodies, ragqa.api.login, ragqa.chains])
def test_the_worked_examples_in_the_docstrings_hold(module: Any) -> None:
    failed, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert failed == 0


@pytest.fixture
def keys(tmp_path: Path) -> KeyRing:
    path = tmp_path / "keys.toml"
    path.write_text('[[key]]\nname = "alice"\ntoken = "sk-alice-1234"\nread = ["*"]\nwrite = ["*"]\n\n'
                    '[[key]]\nname = "bob"\ntoken = "sk-bob-12345"\nread = ["public"]\n', "utf-8")
    return KeyRing.load(path)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_signs_in_to_the_page_by_name_and_token_with_the_same_rights(keys: KeyRing) -> None:
    door = Door(keys)
    bob, token = door.sign_in("bob", "sk-bob-12345", "10.0.0.1")
    assert bob.name == "bob" and bob.can_read("public") and not bob.can_read("secret") and not bob.can_write("public")
    assert door.session(token) is bob
    assert door.principal({}, {SESSION_COOKIE: token}, "10.0.0.1") is bob
    assert door.principal({"authorization": "Bearer sk-alice-1234"}, {}, "10.0.0.1").name == "alice"
    assert door.principal({}, {}, "10.0.0.1") is None
    assert door.principal({}, {SESSION_COOKIE: "forged"}, "10.0.0.1") is None
    door.sign_out(token)
    assert door.session(token) is None
    with pytest.raises(PermissionError):
        door.sign_in("bob", "sk-alice-1234", "10.0.0.1")  # another key's token under bob's name
    with pytest.raises(PermissionError):
        door.sign_in("nobody", "sk-bob-12345", "10.0.0.1")


def test_two_keys_with_one_name_are_refused(tmp_path: Path) -> None:
    from ragqa.errors import ConfigError

    path = tmp_path / "keys.toml"
    path.write_text('[[key]]\nname = "x"\ntoken = "sk-one-1234"\nread = ["*"]\n\n'
                    '[[key]]\nname = "x"\ntoken = "sk-two-1234"\nread = ["*"]\n', "utf-8")
    with pytest.raises(ConfigError, match="two keys are named 'x'"):
        KeyRing.load(path)


def test_auth_users_sign_in_on_the_page_and_use_basic_or_bearer_on_the_api() -> None:
    door = Door(users=[("ann", "pw-ann-1")])
    basic = "Basic " + base64.b64encode(b"ann:pw-ann-1").decode()
    assert door.authenticate(basic, "c") == FullAccess("ann")
    assert door.authenticate("Bearer ann:pw-ann-1", "c") == FullAccess("ann")
    for header in ("Bearer ann:wrong", "Basic !!!", "Bearer nocolon", ""):
        with pytest.raises(PermissionError):
            door.authenticate(header, "d")
    assert door.named("ann") == FullAccess("ann") and door.named("eve") is None


def test_an_open_door_lets_everyone_do_everything() -> None:
    door = Door()
    assert door.open and door.principal({}, {}, "x") is OPEN and door.named(None) is OPEN


def test_failed_sign_ins_are_slowed_per_client_and_per_user(keys: KeyRing) -> None:
    clock = Clock()
    door = Door(keys, throttle=LoginThrottle(free=3, clock=clock))
    for _ in range(3):
        with pytest.raises(PermissionError):
            door.sign_in("alice", "guess", "10.0.0.9")
    with pytest.raises(LoginRefused) as refused:  # even the right token waits: guessing gains nothing
        door.sign_in("alice", "sk-alice-1234", "10.0.0.9")
    assert refused.value.retry_after >= 1
    with pytest.raises(LoginRefused):  # the user is slowed from another address too
        door.sign_in("alice", "sk-alice-1234", "10.0.0.10")
    with pytest.raises(LoginRefused):  # and the address for another user
        door.sign_in("bob", "sk-bob-12345", "10.0.0.9")
    clock.now += 2
    door.sign_in("alice", "sk-alice-1234", "10.0.0.10")  # the wait passed
    waits = []
    for _ in range(4):  # each further failure doubles the wait
        clock.now += 1000
        with pytest.raises(PermissionError):
            door.sign_in("bob", "guess", "10.0.0.11")
        waits.append(door.throttle.wait("10.0.0.11", "bob"))
    assert waits[0] == 0 and waits[1] == 0 and 0 < waits[2] < waits[3]


def test_bearer_guesses_on_the_api_are_slowed_per_client(keys: KeyRing) -> None:
    clock = Clock()
    door = Door(keys, throttle=LoginThrottle(free=2, clock=clock))
    for _ in range(2):
        with pytest.raises(PermissionError):
            door.authenticate("Bearer sk-guess-0000", "10.0.0.5")
    with pytest.raises(LoginRefused):
        door.authenticate("Bearer sk-alice-1234", "10.0.0.5")
    assert door.authenticate("Bearer sk-alice-1234", "10.0.0.6").name == "alice"  # others are not held


def test_sign_ins_are_logged_by_name_never_with_the_secret(keys: KeyRing, caplog: pytest.LogCaptureFixture) -> None:
    door = Door(keys)
    with caplog.at_level("INFO"), pytest.raises(PermissionError):
        door.sign_in("alice", "hunter2-wrong", "10.0.0.1")
    assert "'alice'" in caplog.text and "10.0.0.1" in caplog.text and "hunter2" not in caplog.text


def test_file_references_are_found_wherever_they_nest() -> None:
    data = {"data": ["kb", [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}],
                     {"x": [{"url": "http://169.254.169.254/", "meta": {"_type": "gradio.FileData"}}]},
                     {"role": "user", "content": "path"}]}
    assert sorted(file_references(data)) == ["/etc/passwd", "http://169.254.169.254/"]


def test_the_upload_registry_knows_whose_upload_a_path_is(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    (folder / "abc").mkdir(parents=True)
    mine = folder / "abc" / "a.txt"
    mine.write_text("x")
    registry = UploadRegistry(folder)
    registry.add("alice", str(mine))
    registry.add("alice", "/etc/passwd")  # never inside the upload folder: not recorded
    assert registry.owns("alice", str(mine))
    assert not registry.owns("bob", str(mine))
    assert not registry.owns("alice", "/etc/passwd")
    assert not registry.owns("alice", str(folder / "abc" / ".." / ".." / "uploads-other"))
    assert not registry.owns("alice", f"{mine}\0")


def run_guard(guard: Guard, method: str, path: str, body: bytes = b"",
              headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes, list[bytes]]:
    """One request through the guard to a fake app that records the bodies it was given."""
    seen: list[bytes] = []

    async def app(scope: dict, receive: Any, send: Any) -> None:
        message = await receive()
        seen.append(message.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"[]"})

    guard.app = app
    out: dict[str, Any] = {"status": 0, "headers": {}, "body": b""}

    async def receive() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = {k.decode(): v.decode() for k, v in message["headers"]}
        else:
            out["body"] += message.get("body", b"")

    scope = {"type": "http", "method": method, "path": path, "client": ("10.1.1.1", 1234),
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(guard(scope, receive, send))
    return out["status"], out["headers"], out["body"], seen


def test_the_guard_serves_nothing_of_the_page_before_sign_in(keys: KeyRing, tmp_path: Path) -> None:
    guard = Guard(None, Door(keys), UploadRegistry(tmp_path))
    for path in ("/", "/config", "/gradio_api/info", "/gradio_api/file=/etc/passwd", "/theme.css"):
        status, headers, body, seen = run_guard(guard, "GET", path)
        assert status == 401 and not seen and json.loads(body)["error"]["code"] == "not_signed_in"
        assert "default-src 'self'" in headers["content-security-policy"]
    status, headers, _, seen = run_guard(guard, "GET", "/", headers={"Accept": "text/html"})
    assert status == 303 and headers["location"] == "/login" and not seen
    status, _, _, seen = run_guard(guard, "GET", "/login")
    assert status == 200 and seen  # the sign-in form itself is served
    status, _, _, seen = run_guard(guard, "GET", "/", headers={"Authorization": "Bearer sk-bob-12345"})
    assert status == 200 and seen


def test_the_guard_refuses_a_file_reference_that_is_no_upload_of_the_caller(keys: KeyRing, tmp_path: Path) -> None:
    registry = UploadRegistry(tmp_path)
    (tmp_path / "h").mkdir()
    upload = tmp_path / "h" / "doc.txt"
    upload.write_text("x")
    registry.add("alice", str(upload))
    guard = Guard(None, Door(keys), registry)
    alice = {"Authorization": "Bearer sk-alice-1234", "Content-Type": "application/json"}
    bob = {"Authorization": "Bearer sk-bob-12345", "Content-Type": "application/json"}

    def join(path: str) -> bytes:
        return json.dumps({"data": ["kb", [{"path": path, "meta": {"_type": "gradio.FileData"}}]],
                           "fn_index": 3}).encode()

    status, _, body, seen = run_guard(guard, "POST", "/gradio_api/queue/join", join("/etc/passwd"), alice)
    assert status == 403 and json.loads(body)["error"]["code"] == "not_an_upload" and not seen
    for content_type in ({}, {"Content-Type": "text/plain"}):  # FastAPI reads a body with no type as JSON
        headers = {"Authorization": "Bearer sk-alice-1234", **content_type}
        status, _, _, seen = run_guard(guard, "POST", "/gradio_api/queue/join", join("/etc/passwd"), headers)
        assert status == 403 and not seen
    status, _, _, seen = run_guard(guard, "POST", "/gradio_api/queue/join", join(str(upload)), bob)
    assert status == 403 and not seen  # another principal's upload
    status, _, _, seen = run_guard(guard, "POST", "/gradio_api/queue/join", join(str(upload)), alice)
    assert status == 200 and seen == [join(str(upload))]  # the body reaches the page unchanged


def test_the_guard_records_what_the_upload_route_answered(tmp_path: Path) -> None:
    registry = UploadRegistry(tmp_path)
    guard = Guard(None, Door(), registry)
    stored = str(tmp_path / "f00" / "a.md")

    async def app(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps([stored]).encode()})

    async def go() -> None:
        guard.app = app

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            return None

        await guard({"type": "http", "method": "POST", "path": "/gradio_api/upload", "headers": [],
                     "client": ("1.2.3.4", 1)}, receive, send)

    asyncio.run(go())
    assert registry.owns("local", stored) and not registry.owns("other", stored)


@pytest.mark.parametrize("body, code", [
    (b"[" * 50_000 + b"]" * 50_000, "too_deep"),
    (b"[" * 40 + b"]" * 40, "too_deep"),
    (b'{"data": ["\\ud800"]}', "invalid_unicode"),
    (b'{"\\udc00": 1}', "invalid_unicode"),
    (b"{not json", "invalid_json"),
])
def test_malformed_bodies_are_the_clients_mistake(body: bytes, code: str) -> None:
    from ragqa.api.bodies import parse_json

    with pytest.raises(ApiError) as err:
        parse_json(body)
    assert err.value.status == 400 and err.value.code == code


def test_valid_unicode_and_ordinary_nesting_pass() -> None:
    from ragqa.api.bodies import parse_json

    assert parse_json('{"q": "熊猫😀 \\u00e9\\ud83d\\ude00"}'.encode()) == {"q": "熊猫😀 é😀"}
