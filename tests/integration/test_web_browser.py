"""The web page in a real headless Chromium (Debian's), driven by Playwright, with the real models.

Screenshots go to test-output/ (or $RAGQA_TEST_OUTPUT) so a person can look at what the test saw.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    if os.environ.get("CI"):
        raise RuntimeError("chromium is not installed; `make test` installs it (Debian package `chromium`)")
    pytest.skip("chromium is not installed (apt-get install chromium); `make test` installs it", allow_module_level=True)

OUTPUT = Path(os.environ.get("RAGQA_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output"))
ANSWER_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"],
        )
        yield b
        b.close()


@pytest.fixture
def kb_page(start_page, tmp_path: Path):
    """A page of its own, its knowledge bases under ``data`` (default tmp_path/data) -> its URL.
    Two pages on the same ``data`` are the page restarted (or the CLI beside it)."""

    def start(*extra: str, data: Path | None = None) -> str:
        return start_page("--data-dir", str(data or tmp_path / "data"), *extra)

    return start


def open_page(browser, url: str, locale: str = "en-US"):
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#files input[type=file]", state="attached", timeout=60_000)
    page.wait_for_function("() => document.querySelector('#kb-info').innerText.trim() !== ''", timeout=30_000)
    return page


def upload(page, *paths: Path, expect: str) -> str:
    """Upload files into the page's knowledge base; -> the status once it mentions ``expect``."""
    page.locator("#files input[type=file]").set_input_files([str(p) for p in paths])
    page.wait_for_function(f"() => document.querySelector('#index-status').innerText.includes({expect!r})",
                           timeout=180_000)
    return page.locator("#index-status").inner_text()


def switch_kb(page, name: str) -> None:
    page.locator("#kb input").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.wait_for_function(f"() => document.querySelector('#kb-info').innerText.startsWith({name!r})", timeout=30_000)


def documents(page) -> str:
    return page.locator("#docs").inner_text()


def bot_messages(page) -> list[str]:
    return page.locator("#chat .message.bot").all_inner_texts()


RECORD_JS = """() => {
  window.__answers = [];
  const chat = document.querySelector('#chat');
  const record = () => {
    const bots = chat.querySelectorAll('.message.bot');
    const text = bots.length ? bots[bots.length - 1].innerText.trim() : '';
    const seen = window.__answers;
    if (bots.length && (!seen.length || seen[seen.length - 1] !== text)) seen.push(text);
  };
  new MutationObserver(record).observe(chat, {subtree: true, childList: true, characterData: true});
}"""


def ask(page, question: str, n_before: int) -> list[str]:
    """Type a question, press Enter; -> every distinct text the answer showed while streaming
    (recorded by a MutationObserver in the page, so no render is missed between polls)."""
    page.evaluate(RECORD_JS)
    page.locator("#question textarea").fill(question)
    page.locator("#question textarea").press("Enter")
    # the new answer is there, has text, and its sources are shown (the first render of a new turn
    # is an empty bot message while the previous turn's sources may still be on the page)
    page.wait_for_function(
        f"() => {{ const bots = document.querySelectorAll('#chat .message.bot');"
        f" return bots.length > {n_before}"
        " && !['', 'Loading content'].includes(bots[bots.length - 1].innerText.trim())"
        " && document.querySelector('#sources').innerText.includes('score'); }",
        timeout=ANSWER_TIMEOUT_S * 1000,
    )
    final = bot_messages(page)[-1].strip()
    seen = [t for t in page.evaluate("() => window.__answers") if t and t != "Loading content"]  # Gradio's pending dots
    if not seen or seen[-1] != final:
        seen.append(final)
    return seen


def test_upload_ask_stream_sources_follow_up_and_clear(browser, kb_page, web_doc: Path, tmp_path: Path) -> None:
    page = open_page(browser, kb_page())
    assert page.locator("#kb input").input_value() == "default"
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    page.locator("#files input[type=file]").set_input_files([str(web_doc), str(empty)])
    page.wait_for_function(
        "() => { const t = document.querySelector('#index-status').innerText;"
        " return t.includes('quillon_bridge.md') && t.includes('empty.txt'); }",
        timeout=180_000,
    )
    status = page.locator("#index-status").inner_text()
    assert "✓ quillon_bridge.md: 1 chunk (" in status
    assert "✗ empty.txt" in status and "empty" in status.split("empty.txt", 1)[1]
    page.wait_for_function("() => document.querySelector('#kb-info').innerText.includes('1 document')", timeout=10_000)
    assert "1 chunk" in page.locator("#kb-info").inner_text()
    table = documents(page)
    assert "quillon_bridge.md" in table and "empty.txt" in table and "✗" in table
    assert str(tmp_path) not in table and str(web_doc.parent) not in status  # no server paths in the page

    assert "✓ quillon_bridge.md: (unchanged)" in upload(page, web_doc, expect="unchanged")

    seen = ask(page, "Who built the Quillon bridge?", 0)
    answer = seen[-1]
    assert "Brask" in answer, answer
    assert len(seen) >= 3, f"the answer did not stream (only {seen})"
    assert all(answer.startswith(s[: len(s) // 2]) for s in seen[:-1]), seen  # each state a prefix of the final answer

    sources = page.locator("#sources")
    assert "quillon_bridge.md" in sources.inner_text()
    first = sources.locator("details").first
    assert first.get_attribute("open") is not None  # the cited passage opens by itself
    assert "Odile Brask" in first.inner_text()  # the expanded source shows the passage
    assert "Brask" in first.locator("mark").first.inner_text()  # with the cited sentence highlighted
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "web_ask.png"), full_page=True)

    seen = ask(page, "How many arches does it have?", 1)
    assert len(bot_messages(page)) == 2
    assert seen[-1]  # the follow-up got its own answer

    page.locator("#clear").click()
    page.wait_for_function("() => document.querySelectorAll('#chat .message').length === 0", timeout=10_000)
    assert page.locator("#sources").inner_text().strip() == ""


def test_knowledge_bases_create_switch_delete_and_survive_a_restart(browser, kb_page, web_doc: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    page = open_page(browser, kb_page(data=data))
    page.get_by_text("New knowledge base").click()
    page.locator("#kb-new input").fill("../bridges")
    page.locator("#kb-create").click()
    page.get_by_text("invalid knowledge base name").first.wait_for(timeout=10_000)  # a message; the page goes on
    page.locator("#kb-new input").fill("桥梁-bridges")
    page.locator("#kb-create").click()
    page.wait_for_function("() => document.querySelector('#kb-info').innerText.startsWith('桥梁-bridges')", timeout=30_000)
    assert page.locator("#kb input").input_value() == "桥梁-bridges"
    assert "0 documents" in page.locator("#kb-info").inner_text()
    upload(page, web_doc, expect="quillon_bridge.md")
    page.wait_for_function("() => document.querySelector('#docs').innerText.includes('quillon_bridge.md')", timeout=10_000)

    switch_kb(page, "default")  # the other KB is empty, and asking it says what to do
    assert "quillon_bridge.md" not in documents(page) + page.locator("#index-status").inner_text()
    page.locator("#question textarea").fill("Who built the Quillon bridge?")
    page.locator("#question textarea").press("Enter")
    page.get_by_text("Upload a document to this knowledge base first").first.wait_for(timeout=30_000)

    switch_kb(page, "桥梁-bridges")
    page.wait_for_function("() => document.querySelector('#docs').innerText.includes('quillon_bridge.md')", timeout=10_000)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "web_kb.png"), full_page=True)

    restarted = open_page(browser, kb_page(data=data))  # a new server process on the same data dir
    switch_kb(restarted, "桥梁-bridges")
    restarted.wait_for_function("() => document.querySelector('#docs').innerText.includes('quillon_bridge.md')",
                                timeout=10_000)
    assert "1 document" in restarted.locator("#kb-info").inner_text()
    assert "Brask" in ask(restarted, "Who built the Quillon bridge?", 0)[-1]

    restarted.locator("#docs").get_by_test_id("cell-0-0").click()  # pick the row, then delete it
    restarted.wait_for_function("() => document.querySelector('#doc-pick input').value === 'quillon_bridge.md'",
                                timeout=10_000)
    restarted.locator("#delete-doc").click()
    restarted.wait_for_function("() => document.querySelector('#index-status').innerText.includes('deleted')",
                                timeout=60_000)
    restarted.wait_for_function("() => document.querySelector('#kb-info').innerText.includes('0 documents')",
                                timeout=10_000)
    assert "quillon_bridge.md" not in documents(restarted)
    assert not (data / "uploads" / "桥梁-bridges" / "quillon_bridge.md").exists()


def test_page_speaks_chinese_to_a_chinese_browser_and_switches(browser, kb_page) -> None:
    web_server = kb_page()
    page = open_page(browser, web_server, locale="zh-CN")
    page.wait_for_selector("#clear")
    assert page.locator("#clear").inner_text().strip() == "清空对话"
    assert "上传文档" in page.locator("body").inner_text() and "知识库" in page.locator("body").inner_text()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "web_zh.png"), full_page=True)

    english = open_page(browser, web_server, locale="en-US")
    assert english.locator("#clear").inner_text().strip() == "Clear chat"
    english.get_by_text("Settings").click()  # the page's own language switch
    english.get_by_role("combobox", name="Language").click()
    english.get_by_role("option", name="简体中文").click()
    english.keyboard.press("Escape")
    english.wait_for_function("() => document.querySelector('#clear').innerText.trim() === '清空对话'", timeout=10_000)


def test_page_makes_no_request_beyond_the_server(browser, kb_page) -> None:
    """Private by default: no web fonts, analytics or CDN scripts (the machine may be offline)."""
    web_server = kb_page()
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((web_server, "data:", "blob:")) else None)
    page.goto(web_server)
    page.wait_for_selector("#clear")
    page.wait_for_load_state("networkidle")
    assert outside == []


def test_summarize_tab_gives_a_summary_and_a_download(browser, kb_page, web_doc: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.md"
    other.write_text("# Lanterns\n\nThe lantern walk starts at the mill at dusk.\n", encoding="utf-8")
    page = open_page(browser, kb_page())
    upload(page, web_doc, other, expect="other.md")
    page.get_by_role("tab", name="Summarize").click()
    page.locator("#picked input").click()
    page.get_by_role("option", name="quillon_bridge.md").click()
    page.keyboard.press("Escape")
    page.locator("#summarize").click()
    page.wait_for_function("() => document.querySelector('#summaries').innerText.includes('quillon_bridge.md')",
                           timeout=ANSWER_TIMEOUT_S * 1000)
    text = page.locator("#summaries").inner_text()
    assert len(text.split("quillon_bridge.md", 1)[1].split()) >= 5  # a summary, not just the title
    assert "other.md" not in text  # only the picked document
    page.wait_for_selector("#download a", timeout=10_000)
    assert page.locator("#download").inner_text().strip().endswith(".md") or ".md" in page.locator("#download").inner_text()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "web_summarize.png"), full_page=True)


def test_upload_over_the_size_cap_is_refused_in_the_page(browser, kb_page, web_doc: Path, tmp_path: Path) -> None:
    url = kb_page("--max-file-mb", "0.001")  # about 1 KB
    big = tmp_path / "big.txt"
    big.write_text("The Quillon bridge. " * 200, encoding="utf-8")  # 4 KB
    page = open_page(browser, url)
    page.locator("#files input[type=file]").set_input_files([str(big)])
    page.wait_for_function("() => /exceed|too large|over the/i.test(document.body.innerText)", timeout=30_000)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "web_over_cap.png"), full_page=True)
    # the page still works: a small file goes through
    page.locator("#files input[type=file]").set_input_files([str(web_doc)])
    page.wait_for_function("() => document.querySelector('#index-status').innerText.includes('✓ quillon_bridge.md')",
                           timeout=180_000)
