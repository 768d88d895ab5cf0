"""The web page's handlers and layout, with fake models (the real page is tested in a browser in
tests/integration/test_web_browser.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

gr = pytest.importorskip("gradio")

from ragqa.errors import ConfigError  # noqa: E402
from ragqa.web import Handlers, build_app, parse_auth  # noqa: E402

DOC = (
    "苍鹭节每年三月第二个周末在湖边举行，庆祝候鸟归来。\n\n"
    "节日期间，村民会放飞纸鸢，并在晚上点亮一千盏灯笼。\n\n"
    "The Heron festival has a lantern parade on Saturday night."
)


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "upload" / "heron.txt"
    path.parent.mkdir()
    path.write_text(DOC, encoding="utf-8")
    return path


def _run(gen):
    states = list(gen)
    return states, states[-1]


def test_upload_reports_each_file_and_keeps_the_good_ones(make_pipeline, doc: Path, tmp_path: Path) -> None:
    empty = tmp_path / "upload" / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "upload" / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 40)
    odd = tmp_path / "upload" / "sheet.xlsx"
    odd.write_bytes(b"PK\x03\x04")
    h = Handlers(make_pipeline())
    status, good = h.index([str(doc), str(empty), str(binary), str(odd)])
    assert good == ["heron.txt"]
    lines = status.split("\n\n")
    assert re.match(r"✓ \*\*heron.txt\*\*: \d+ chunks? \(", lines[0])
    assert lines[1].startswith("✗ **empty.txt**") and "empty" in lines[1]
    assert lines[2].startswith("✗ **blob.txt**") and "binary" in lines[2]
    assert lines[3].startswith("✗ **sheet.xlsx**") and "unsupported" in lines[3]
    assert str(tmp_path) not in status  # the server's temp paths are not shown


def test_second_upload_of_the_same_file_comes_from_the_cache(make_pipeline, doc: Path, counting_embeddings_cls) -> None:
    emb = counting_embeddings_cls()
    h = Handlers(make_pipeline(embeddings=emb))
    h.index([str(doc)])
    embedded = emb.documents_embedded
    status, _ = h.index([str(doc)])
    assert "(cached)" in status
    assert emb.documents_embedded == embedded


def test_ask_streams_into_the_chat_then_shows_sources(make_pipeline, doc: Path, fake_backend_cls) -> None:
    h = Handlers(make_pipeline(backend=fake_backend_cls(["每年 三月 第二个 周末。"])))
    states, (chat, sources_md, sources, box) = _run(h.ask([str(doc)], "苍鹭节什么时候举行？", []))
    growing = [s[0][-1]["content"] for s in states]
    assert growing[0] == ""  # the question shows at once, before the model answers
    assert len({g for g in growing if g}) >= 3  # then the answer grows piece by piece
    assert chat == [
        {"role": "user", "content": "苍鹭节什么时候举行？"},
        {"role": "assistant", "content": "每年 三月 第二个 周末。"},
    ]
    assert "heron.txt" in sources_md and "<details>" in sources_md and "三月第二个周末" in sources_md
    assert sources and sources[0]["file"] == "heron.txt" and "text" in sources[0]
    assert box == ""  # the question box is cleared for the next question


def test_follow_up_uses_the_conversation(make_pipeline, doc: Path, fake_backend_cls) -> None:
    backend = fake_backend_cls(["三月。", "在 湖边。"])
    h = Handlers(make_pipeline(backend=backend, chat_format="alpaca-2", k=1))
    _, (chat, *_rest) = _run(h.ask([str(doc)], "苍鹭节什么时候举行？", []))
    # Gradio 6 hands history back with content as a list of parts
    as_gradio = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in chat]
    _, (chat2, *_rest) = _run(h.ask([str(doc)], "在哪里？", as_gradio))
    prompt = backend.calls[-1]["prompt"]
    assert prompt.startswith("[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n苍鹭节什么时候举行？ [/INST] 三月。</s><s>[INST] ")
    assert prompt.endswith(" [/INST]") and "在哪里？" in prompt
    assert [m["role"] for m in chat2] == ["user", "assistant", "user", "assistant"]


def test_per_question_controls_reach_the_chain(make_pipeline, doc: Path, fake_backend_cls) -> None:
    backend = fake_backend_cls(["一。", "二。", "三。"])
    h = Handlers(make_pipeline(backend=backend, chunk_size=60, chunk_overlap=0))
    _, (_chat, _md, sources, _box) = _run(h.ask([str(doc)], "苍鹭节什么时候举行？", [], "refine", 2, "vector"))
    assert len(sources) == 2
    assert len(backend.calls) == 2  # refine over k=2 chunks: one call per chunk
    _, (_chat, _md, sources, _box) = _run(h.ask([str(doc)], "苍鹭节什么时候举行？", [], "stuff", 1, "hybrid"))
    assert len(sources) == 1 and len(backend.calls) == 3  # stuff: one call


def test_ask_without_documents_or_question_is_a_message_not_a_crash(make_pipeline, doc: Path) -> None:
    h = Handlers(make_pipeline())
    with pytest.raises(gr.Error, match="Upload a document first"):
        list(h.ask([], "问题？", []))
    with pytest.raises(gr.Error, match="Type a question"):
        list(h.ask([str(doc)], "  ", []))


def test_ask_when_every_upload_is_unreadable(make_pipeline, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(gr.Error, match="could be read"):
        list(Handlers(make_pipeline()).ask([str(empty)], "问题？", []))


def test_ask_skips_a_bad_upload_with_a_note(make_pipeline, doc: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    _, (_chat, sources_md, sources, _box) = _run(Handlers(make_pipeline()).ask([str(doc), str(empty)], "苍鹭节？", []))
    assert sources and "note: skipped" in sources_md


def test_summarize_picked_documents_and_offer_a_download(make_pipeline, doc: Path, tmp_path: Path, fake_backend_cls) -> None:
    other = tmp_path / "other.md"
    other.write_text("# 另一篇\n\n这是另一篇文档，讲的是灯笼。", encoding="utf-8")
    h = Handlers(make_pipeline(backend=fake_backend_cls(["苍鹭节 在 三月。"])))
    body, download = h.summarize([str(doc), str(other)], ["heron.txt"])
    assert "### heron.txt" in body and "苍鹭节 在 三月。" in body
    assert "other.md" not in body
    assert download is not None and Path(download).read_text(encoding="utf-8").startswith("### heron.txt")
    body_all, _ = h.summarize([str(doc), str(other)], [])
    assert "### heron.txt" in body_all and "### other.md" in body_all


def test_summarize_a_bad_file_is_reported_and_gives_no_download(make_pipeline, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    body, download = Handlers(make_pipeline()).summarize([str(empty)], [])
    assert "✗" in body and "empty" in body and download is None


def test_building_the_page_loads_no_model(make_settings) -> None:
    from ragqa.pipeline import Pipeline

    pipeline = Pipeline(make_settings())
    app = build_app(pipeline)
    assert pipeline._embeddings is None and pipeline._language_model is None and not pipeline._backends
    names = {d.get("api_name") for d in app.config["dependencies"]}
    assert {"ask", "summarize", "index"} <= names


def test_page_text_exists_in_both_languages() -> None:
    from ragqa.web import UI_TEXT

    assert set(UI_TEXT["en"]) == set(UI_TEXT["zh"])
    assert all(UI_TEXT["zh"][k] != UI_TEXT["en"][k] for k in UI_TEXT["en"])


@pytest.mark.parametrize("value, expected", [
    ("ann:pw", [("ann", "pw")]),
    ("ann:pw, bo:x:y", [("ann", "pw"), ("bo", "x:y")]),
    (None, None),
])
def test_parse_auth(value, expected) -> None:
    assert parse_auth(value) == expected


@pytest.mark.parametrize("value", ["annpw", ":pw", "ann:"])
def test_parse_auth_rejects_malformed(value) -> None:
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        parse_auth(value)


def test_sources_show_document_text_as_text_not_markup(make_pipeline, tmp_path: Path) -> None:
    path = tmp_path / "tricky.md"
    path.write_text("# 标题\n\n<script>alert(1)</script> **苍鹭节** 在三月。", encoding="utf-8")
    _, (_chat, sources_md, _s, _b) = _run(Handlers(make_pipeline()).ask([str(path)], "苍鹭节？", []))
    body = sources_md.split("</summary>", 1)[1]
    assert "\\# 标题" in body and "\\*\\*苍鹭节\\*\\*" in body
    assert "<script>" not in body


def test_page_header_names_the_model_backend_and_server(make_settings) -> None:
    from ragqa.pipeline import Pipeline
    from ragqa.web import model_info

    local = Pipeline(make_settings())
    assert "`smollm2`" in model_info(local.settings, local.backend_name)
    assert "**Backend** `llama.cpp`" in model_info(local.settings, local.backend_name)
    remote = make_settings(base_url="http://10.0.0.5:8000/v1", api_model="qwen2.5-7b-instruct")
    info = model_info(remote, "openai")
    assert "`qwen2.5-7b-instruct` via `http://10.0.0.5:8000/v1`" in info and "`openai`" in info
