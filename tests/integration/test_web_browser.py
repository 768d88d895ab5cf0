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


def open_page(browser, url: str, locale: str = "en-US"):
    context = browser.new_context(locale=locale, viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("#files input[type=file]", state="attached", timeout=60_000)
    return page


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
    page.wait_for_function(
        f"() => document.querySelectorAll('#chat .message.bot').length > {n_before}"
        " && document.querySelector('#sources').innerText.includes('score')",
        timeout=ANSWER_TIMEOUT_S * 1000,
    )
    final = bot_messages(page)[-1].strip()
    seen = [t for t in page.evaluate("() => window.__answers") if t and t != "Loading content"]  # Gradio's pending dots
    if not seen or seen[-1] != final:
        seen.append(final)
    return seen


def test_upload_ask_stream_sources_follow_up_and_clear(browser, web_server: str, web_doc: Path, tmp_path: Path) -> None:
    page = open_page(browser, web_server)
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

    seen = ask(page, "Who built the Quillon bridge?", 0)
    answer = seen[-1]
    assert "Brask" in answer, answer
    assert len(seen) >= 3, f"the answer did not stream (only {seen})"
    assert all(answer.startswith(s[: len(s) // 2]) for s in seen[:-1]), seen  # each state a prefix of the final answer

    sources = page.locator("#sources")
    assert "quillon_bridge.md" in sources.inner_text()
    first = sources.locator("details").first
    first.locator("summary").click()
    assert "Odile Brask" in first.inner_text()  # the expanded source shows the passage
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "web_ask.png"), full_page=True)

    seen = ask(page, "How many arches does it have?", 1)
    assert len(bot_messages(page)) == 2
    assert seen[-1]  # the follow-up got its own answer

    page.locator("#clear").click()
    page.wait_for_function("() => document.querySelectorAll('#chat .message').length === 0", timeout=10_000)
    assert page.locator("#sources").inner_text().strip() == ""


def test_page_speaks_chinese_to_a_chinese_browser_and_switches(browser, web_server: str) -> None:
    page = open_page(browser, web_server, locale="zh-CN")
    page.wait_for_selector("#clear")
    assert page.locator("#clear").inner_text().strip() == "清空对话"
    assert "上传文档" in page.locator("body").inner_text()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "web_zh.png"), full_page=True)

    english = open_page(browser, web_server, locale="en-US")
    assert english.locator("#clear").inner_text().strip() == "Clear chat"
    english.get_by_text("Settings").click()  # the page's own language switch
    english.get_by_role("combobox", name="Language").click()
    english.get_by_role("option", name="简体中文").click()
    english.keyboard.press("Escape")
    english.wait_for_function("() => document.querySelector('#clear').innerText.trim() === '清空对话'", timeout=10_000)


def test_page_makes_no_request_beyond_the_server(browser, web_server: str) -> None:
    """Private by default: no web fonts, analytics or CDN scripts (the machine may be offline)."""
    context = browser.new_context(locale="zh-CN")
    page = context.new_page()
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((web_server, "data:", "blob:")) else None)
    page.goto(web_server)
    page.wait_for_selector("#clear")
    page.wait_for_load_state("networkidle")
    assert outside == []


def test_summarize_tab_gives_a_summary_and_a_download(browser, web_server: str, web_doc: Path) -> None:
    page = open_page(browser, web_server)
    page.locator("#files input[type=file]").set_input_files([str(web_doc)])
    page.wait_for_function("() => document.querySelector('#index-status').innerText.includes('quillon_bridge.md')",
                           timeout=180_000)
    page.get_by_role("tab", name="Summarize").click()
    page.locator("#picked").get_by_text("quillon_bridge.md").click()
    page.locator("#summarize").click()
    page.wait_for_function("() => document.querySelector('#summaries').innerText.includes('quillon_bridge.md')",
                           timeout=ANSWER_TIMEOUT_S * 1000)
    text = page.locator("#summaries").inner_text()
    assert len(text.split("quillon_bridge.md", 1)[1].split()) >= 5  # a summary, not just the title
    page.wait_for_selector("#download a", timeout=10_000)
    assert page.locator("#download").inner_text().strip().endswith(".md") or ".md" in page.locator("#download").inner_text()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(OUTPUT / "web_summarize.png"), full_page=True)


def test_upload_over_the_size_cap_is_refused_in_the_page(browser, start_page, web_doc: Path, tmp_path: Path) -> None:
    url = start_page("--max-file-mb", "0.001")  # about 1 KB
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
