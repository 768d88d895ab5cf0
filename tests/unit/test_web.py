"""The web page's handlers and layout, with fake models (the real page is tested in a browser in
tests/integration/test_web_browser.py)."""

from __future__ import annotations

import json
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


def _lines(status: str) -> list[str]:
    return status.split("\n\n")


def _upload(h: Handlers, *paths: Path, kb: str = "default") -> list[str]:
    return _lines(h.index(kb, [str(p) for p in paths]))


def test_upload_reports_each_file_and_keeps_the_good_ones(make_pipeline, doc: Path, tmp_path: Path) -> None:
    empty = tmp_path / "upload" / "empty.txt"
    empty.write_bytes(b"")
    binary = tmp_path / "upload" / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 40)
    odd = tmp_path / "upload" / "slides.key"
    odd.write_bytes(b"PK\x03\x04")
    h = Handlers(make_pipeline())
    lines = _upload(h, doc, empty, binary, odd)
    assert re.match(r"✓ \*\*heron.txt\*\*: \d+ chunks? \(\d+\.\d+s\)$", lines[0])
    assert lines[1].startswith("✗ **empty.txt**") and "empty" in lines[1]
    assert lines[2].startswith("✗ **blob.txt**") and "binary" in lines[2]
    assert lines[3].startswith("✗ **slides.key**") and "unsupported" in lines[3]
    assert len(lines) == 4
    page = h.page("default")
    assert str(tmp_path) not in "\n".join(lines) + page.info + str(page.rows())  # no server paths shown
    assert [d.label for d in page.docs] == ["blob.txt", "empty.txt", "heron.txt"]  # slides.key was never kept
    assert page.labels(ok_only=True) == ["heron.txt"]
    heron = page.docs[2]
    assert heron.status == "ok" and heron.chunks >= 1 and page.rows()[2] == ["heron.txt", heron.chunks, "✓"]
    assert page.rows()[1][2].startswith("✗ ") and "empty" in page.rows()[1][2]
    assert f"1 document 文档 · {heron.chunks} chunk" in page.info and "2 unreadable" in page.info


def test_uploads_are_kept_on_the_server_and_survive_a_restart(make_pipeline, make_settings, doc: Path, data_dir: Path) -> None:
    h = Handlers(make_pipeline())
    _upload(h, doc)
    doc.unlink()  # Gradio's temp copy vanishes after the request
    kept = data_dir / "uploads" / "default" / "heron.txt"
    assert kept.read_text(encoding="utf-8") == DOC
    assert not [p for p in kept.parent.iterdir() if p.name.startswith(".")]  # no temp files left

    restarted = Handlers(make_pipeline())  # a new server process on the same data_dir
    assert "default" in restarted.kb_names()
    page = restarted.page("default")
    assert page.labels() == ["heron.txt"] and page.docs[0].path == str(kept.resolve())
    _, (chat, _md, sources, _box) = _run(restarted.ask("default", "苍鹭节什么时候举行？", []))
    assert sources and sources[0]["file"] == "heron.txt"


def test_uploading_the_same_file_again_is_unchanged_and_embeds_nothing(make_pipeline, doc: Path, counting_embeddings_cls) -> None:
    emb = counting_embeddings_cls()
    h = Handlers(make_pipeline(embeddings=emb))
    _upload(h, doc)
    embedded = emb.documents_embedded
    assert _upload(h, doc) == ["✓ **heron.txt**: (unchanged)"]
    assert emb.documents_embedded == embedded
    assert Handlers(make_pipeline(embeddings=emb)).index("default", [str(doc)]) == "✓ **heron.txt**: (unchanged)"


def test_same_name_with_new_content_replaces_the_old_document(make_pipeline, doc: Path, fake_backend_cls) -> None:
    h = Handlers(make_pipeline(backend=fake_backend_cls(["新 内容。"])))
    _upload(h, doc)
    newer = doc.parent.parent / "v2" / "heron.txt"
    newer.parent.mkdir()
    newer.write_text("苍鹭节改到了十月的第一个周末，在山顶举行。", encoding="utf-8")
    (line,) = _upload(h, newer)
    assert re.match(r"✓ \*\*heron.txt\*\*: 1 chunk \(\d+\.\d+s, updated\)$", line)
    page = h.page("default")
    assert page.labels() == ["heron.txt"] and page.docs[0].chunks == 1
    _, (_chat, _md, sources, _box) = _run(h.ask("default", "苍鹭节在哪里？", []))
    assert all("十月" in s["text"] for s in sources)  # only the new version is searched


def test_delete_removes_the_document_and_its_copy(make_pipeline, doc: Path, tmp_path: Path, data_dir: Path) -> None:
    other = tmp_path / "upload" / "other.md"
    other.write_text("# 另一篇\n\n这是另一篇文档，讲的是灯笼。", encoding="utf-8")
    h = Handlers(make_pipeline())
    _upload(h, doc, other)
    status = h.delete("default", "heron.txt")
    assert "heron.txt" in status and "deleted" in status
    assert not (data_dir / "uploads" / "default" / "heron.txt").exists()
    assert (data_dir / "uploads" / "default" / "other.md").exists()
    assert h.page("default").labels() == ["other.md"]
    _, (_chat, _md, sources, _box) = _run(h.ask("default", "苍鹭节什么时候举行？", []))
    assert {s["file"] for s in sources} == {"other.md"}
    assert Handlers(make_pipeline()).page("default").labels() == ["other.md"]  # still gone after a restart
    with pytest.raises(gr.Error, match="no document 'heron.txt'"):
        h.delete("default", "heron.txt")
    with pytest.raises(gr.Error, match="Pick a document"):
        h.delete("default", None)


def test_delete_a_failed_upload(make_pipeline, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    h = Handlers(make_pipeline())
    _upload(h, empty)
    assert h.page("default").rows()[0][2].startswith("✗")
    h.delete("default", "empty.txt")
    assert h.page("default").docs == []


def test_knowledge_bases_are_separate_and_created_by_name(make_pipeline, doc: Path, tmp_path: Path) -> None:
    other = tmp_path / "lanterns.md"
    other.write_text("灯笼节在十二月，村民在河上放灯。", encoding="utf-8")
    h = Handlers(make_pipeline())
    assert h.kb_names() == ["default"]  # offered before it exists: the first upload creates it
    assert "new, empty" in h.page("default").info
    assert h.create_kb(" 节日-2024 ") == "节日-2024"
    assert h.kb_names() == ["default", "节日-2024"]
    assert "0 documents" in h.page("节日-2024").info
    _upload(h, doc)
    _upload(h, other, kb="节日-2024")
    assert h.page("default").labels() == ["heron.txt"]
    assert h.page("节日-2024").labels() == ["lanterns.md"]
    _, (_chat, _md, sources, _box) = _run(h.ask("节日-2024", "灯笼节什么时候？", []))
    assert {s["file"] for s in sources} == {"lanterns.md"}
    assert h.create_kb("节日-2024") == "节日-2024"  # already there: nothing changes
    assert h.page("节日-2024").labels() == ["lanterns.md"]


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "x" * 65])
def test_invalid_knowledge_base_names_are_a_message(make_pipeline, doc: Path, name: str) -> None:
    h = Handlers(make_pipeline())
    with pytest.raises(gr.Error, match="invalid knowledge base name"):
        h.create_kb(name)
    with pytest.raises(gr.Error, match="invalid knowledge base name"):
        h.index(name, [str(doc)])
    with pytest.raises(gr.Error, match="invalid knowledge base name"):
        list(h.ask(name, "问题？", []))


def test_page_sees_files_the_cli_adds_while_it_runs(make_pipeline, doc: Path, tmp_path: Path) -> None:
    page_pipeline = make_pipeline()
    h = Handlers(page_pipeline)
    _upload(h, doc)
    _run(h.ask("default", "苍鹭节什么时候举行？", []))  # the page now holds the KB open

    cli = make_pipeline()  # `ragqa index lanterns.md --kb default` in another process
    other = tmp_path / "lanterns.md"
    other.write_text("灯笼节在十二月，村民在河上放灯笼。", encoding="utf-8")
    report = cli.index_paths(cli.open_kb("default"), [other])
    assert report.added == 1

    assert set(h.page("default").labels()) == {"heron.txt", str(other)}  # not an upload: shown with its place
    _, (_chat, _md, sources, _box) = _run(h.ask("default", "灯笼节在十二月", [], "stuff", 4, "bm25"))
    assert "lanterns.md" in {s["file"] for s in sources}
    _, (_chat, _md, sources, _box) = _run(h.ask("default", "灯笼节在十二月，村民在河上放灯笼。", [], "stuff", 4, "vector"))
    assert sources[0]["file"] == "lanterns.md"  # the vector search sees the new chunks too
    # removing it from the page leaves the CLI's file where it is
    assert "stays" in h.delete("default", str(other)) and other.exists()


def test_ask_streams_into_the_chat_then_shows_sources(make_pipeline, doc: Path, fake_backend_cls) -> None:
    h = Handlers(make_pipeline(backend=fake_backend_cls(["每年 三月 第二个 周末。"])))
    _upload(h, doc)
    states, (chat, sources_md, sources, box) = _run(h.ask("default", "苍鹭节什么时候举行？", []))
    growing = [s[0][-1]["content"] for s in states]
    assert growing[0] == ""  # the question shows at once, before the model answers
    assert len({g for g in growing if g}) >= 3  # then the answer grows piece by piece
    assert chat == [
        {"role": "user", "content": "苍鹭节什么时候举行？"},
        {"role": "assistant", "content": "每年 三月 第二个 周末。[1]"},
    ]
    assert "heron.txt" in sources_md and "<details" in sources_md and "三月第二个周末" in sources_md
    # the sentence the answer cites is highlighted inside its passage, which is open
    marked = sources_md.split("<mark>", 1)[1].split("</mark>", 1)[0]
    assert "三月第二个周末" in marked and "<details open>" in sources_md
    assert sources and sources[0]["file"] == "heron.txt" and "text" in sources[0]
    assert box == ""  # the question box is cleared for the next question


def test_follow_up_uses_the_conversation(make_pipeline, doc: Path, fake_backend_cls) -> None:
    backend = fake_backend_cls(["三月。", "在 湖边。"])
    h = Handlers(make_pipeline(backend=backend, chat_format="alpaca-2", k=1))
    _upload(h, doc)
    _, (chat, *_rest) = _run(h.ask("default", "苍鹭节什么时候举行？", []))
    # Gradio 6 hands history back with content as a list of parts
    as_gradio = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in chat]
    _, (chat2, *_rest) = _run(h.ask("default", "在哪里？", as_gradio))
    prompt = backend.calls[-1]["prompt"]
    assert prompt.startswith("[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n苍鹭节什么时候举行？ [/INST] 三月。</s><s>[INST] ")
    assert prompt.endswith(" [/INST]") and "在哪里？" in prompt
    assert [m["role"] for m in chat2] == ["user", "assistant", "user", "assistant"]


def test_per_question_controls_reach_the_chain(make_pipeline, doc: Path, fake_backend_cls) -> None:
    backend = fake_backend_cls(["一。", "二。", "三。"])
    h = Handlers(make_pipeline(backend=backend, chunk_size=60, chunk_overlap=0))
    _upload(h, doc)
    _, (_chat, _md, sources, _box) = _run(h.ask("default", "苍鹭节什么时候举行？", [], "refine", 2, "vector"))
    assert len(sources) == 2
    assert len(backend.calls) == 2  # refine over k=2 chunks: one call per chunk
    _, (_chat, _md, sources, _box) = _run(h.ask("default", "苍鹭节什么时候举行？", [], "stuff", 1, "hybrid"))
    assert len(sources) == 1 and len(backend.calls) == 3  # stuff: one call


def test_ask_an_empty_knowledge_base_or_without_a_question_is_a_message(make_pipeline, doc: Path, tmp_path: Path) -> None:
    h = Handlers(make_pipeline())
    with pytest.raises(gr.Error, match="Upload a document to this knowledge base first"):
        list(h.ask("default", "问题？", []))  # the KB does not exist yet
    h.create_kb("empty-kb")
    with pytest.raises(gr.Error, match="Upload a document"):
        list(h.ask("empty-kb", "问题？", []))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    _upload(h, empty, kb="empty-kb")  # only an unreadable file: still nothing to search
    with pytest.raises(gr.Error, match="Upload a document"):
        list(h.ask("empty-kb", "问题？", []))
    _upload(h, doc)
    with pytest.raises(gr.Error, match="Type a question"):
        list(h.ask("default", "  ", []))


def test_summarize_picked_documents_and_offer_a_download(make_pipeline, doc: Path, tmp_path: Path, fake_backend_cls) -> None:
    other = tmp_path / "other.md"
    other.write_text("# 另一篇\n\n这是另一篇文档，讲的是灯笼。", encoding="utf-8")
    h = Handlers(make_pipeline(backend=fake_backend_cls(["苍鹭节 在 三月。"])))
    _upload(h, doc, other)
    doc.unlink()  # summaries read the kept copy, not the temp upload
    body, download = h.summarize("default", ["heron.txt"])
    assert "### heron.txt" in body and "苍鹭节 在 三月。" in body
    assert "other.md" not in body
    assert download is not None and Path(download).read_text(encoding="utf-8").startswith("### heron.txt")
    body_all, _ = h.summarize("default", [])
    assert "### heron.txt" in body_all and "### other.md" in body_all
    with pytest.raises(gr.Error, match="Upload a document"):
        h.summarize("another", [])


def test_summarize_a_document_gone_from_disk_is_reported_and_gives_no_download(make_pipeline, doc: Path, data_dir: Path) -> None:
    h = Handlers(make_pipeline())
    _upload(h, doc)
    (data_dir / "uploads" / "default" / "heron.txt").unlink()
    body, download = h.summarize("default", [])
    assert body.startswith("### heron.txt\n\n✗") and download is None
    assert str(data_dir) not in body


def test_building_the_page_loads_no_model_and_opens_no_knowledge_base(make_settings, make_pipeline, doc: Path) -> None:
    from ragqa.pipeline import Pipeline

    Handlers(make_pipeline()).create_kb("合同")
    pipeline = Pipeline(make_settings())
    app = build_app(pipeline)
    assert pipeline._embeddings is None and pipeline._language_model is None and not pipeline._backends
    assert not pipeline._kbs
    names = {d.get("api_name") for d in app.config["dependencies"]}
    assert {"ask", "summarize", "index", "delete", "create_kb", "documents"} <= names
    kb_dropdown = next(c for c in app.config["components"] if c.get("props", {}).get("elem_id") == "kb")
    # the config is the same for everyone (it is sent before a user's rights are known): it names
    # no KB but the one the page opens on; a page load lists the KBs its user may read
    assert [c[0] for c in kb_dropdown["props"]["choices"]] == ["default"]
    assert "合同" not in json.dumps(app.config, ensure_ascii=False, default=str)
    assert kb_dropdown["props"]["value"] == "default"


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
    h = Handlers(make_pipeline())
    _upload(h, path)
    _, (_chat, sources_md, _s, _b) = _run(h.ask("default", "苍鹭节？", []))
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


def test_a_knowledge_base_built_with_other_settings_says_so_and_keeps_nothing(make_pipeline, doc: Path, data_dir: Path) -> None:
    Handlers(make_pipeline(chunk_size=300, chunk_overlap=50)).index("other", [str(doc)])
    h = Handlers(make_pipeline())
    assert "✗" in h.page("other").info and "was built with" in h.page("other").info
    (data_dir / "uploads" / "other" / "heron.txt").unlink()
    with pytest.raises(gr.Error, match="was built with"):
        h.index("other", [str(doc)])
    assert not (data_dir / "uploads" / "other" / "heron.txt").exists()
    assert _upload(h, doc)[0].startswith("✓ **heron.txt**")  # the other KBs still work


def test_uploading_a_scan_reports_ocr_pages_to_the_page_progress(make_pipeline, tmp_path, monkeypatch) -> None:
    """OCR faked (the real Tesseract runs in tests/unit/test_loaders_formats.py)."""
    from PIL import Image

    import ragqa.ocr as ocr

    monkeypatch.setattr(ocr, "check_languages", lambda languages: "tesseract")
    monkeypatch.setattr(ocr, "ocr_image", lambda image, languages, exe=None: ("扫描页：西湖龙井产于杭州。", 90.0))
    pages = [Image.new("L", (200, 280), 255) for _ in range(3)]
    scan = tmp_path / "upload" / "scan.pdf"
    scan.parent.mkdir(exist_ok=True)
    pages[0].save(scan, "PDF", resolution=100.0, save_all=True, append_images=pages[1:])
    seen: list[str] = []
    h = Handlers(make_pipeline())
    text = h.index("default", [str(scan)], lambda frac, desc="": seen.append(desc))
    assert "✓ **scan.pdf**" in text
    assert [d for d in seen if "OCR" in d] == ["scan.pdf: OCR page 1/3", "scan.pdf: OCR page 2/3", "scan.pdf: OCR page 3/3"]


def test_the_fusion_option_changes_how_hybrid_scores(make_pipeline, doc: Path) -> None:
    h = Handlers(make_pipeline())
    _upload(h, doc)
    _, (_c, _m, zscore, _b) = _run(h.ask("default", "苍鹭节什么时候举行？", [], None, None, "hybrid", "zscore"))
    _, (_c, _m, rrf, _b) = _run(h.ask("default", "苍鹭节什么时候举行？", [], None, None, "hybrid", "rrf:k=60"))
    assert zscore[0]["score"] > 0.2 and rrf[0]["score"] < 0.04  # a logistic z-score vs two reciprocal ranks (2/61)
    with pytest.raises(gr.Error, match="zscore"):  # an unknown fusion lists the known ones
        list(h.ask("default", "苍鹭节什么时候举行？", [], None, None, "hybrid", "average"))


def test_the_handlers_obey_the_callers_rights(make_pipeline, doc: Path, fake_backend_cls) -> None:
    from ragqa.api.keys import Key

    h = Handlers(make_pipeline(backend=fake_backend_cls(["苍鹭节 在 三月。"])))
    _upload(h, doc)  # "default" holds heron.txt
    reader = Key("bob", "0" * 64, read=frozenset({"public"}))
    writer = Key("carol", "1" * 64, write=frozenset({"default"}))
    assert "default" not in h.kb_names(reader) and "default" in h.kb_names(writer)
    assert "✗" in h.page("default", reader).info and not h.page("default", reader).docs
    assert [d.label for d in h.page("default", writer).docs] == ["heron.txt"]
    refused = "no knowledge base 'default' that you may read"
    with pytest.raises(gr.Error, match=refused):
        _run(h.ask("default", "苍鹭节在什么时候？", [], who=reader))
    with pytest.raises(gr.Error, match=refused):
        h.summarize("default", [], who=reader)
    with pytest.raises(gr.Error, match=refused):
        h.delete("default", "heron.txt", who=reader)
    with pytest.raises(gr.Error, match="may not change knowledge base 'public'"):
        h.index("public", [str(doc)], who=reader)
    with pytest.raises(gr.Error, match="may not create or change knowledge base 'new'"):
        h.create_kb("new", who=reader)
    assert h.page("default", writer).docs  # nothing was removed


def test_the_page_takes_only_files_its_caller_uploaded(make_pipeline, doc: Path, tmp_path: Path) -> None:
    from ragqa.api.guard import UploadRegistry

    folder = tmp_path / "page-uploads"
    (folder / "h1").mkdir(parents=True)
    uploaded = folder / "h1" / "heron.txt"
    uploaded.write_text(DOC, encoding="utf-8")
    registry = UploadRegistry(folder)
    registry.add("local", str(uploaded))
    h = Handlers(make_pipeline(), registry)
    with pytest.raises(gr.Error, match="only files uploaded through this page"):
        h.index("default", [str(doc)])  # a path on the server that no one uploaded
    assert not h.page("default").docs
    assert _lines(h.index("default", [str(uploaded)]))[0].startswith("✓ **heron.txt**")


def test_model_output_is_shown_as_text_not_html(make_pipeline, doc: Path, fake_backend_cls) -> None:
    trap = '<img src="http://127.0.0.1:9/leak.png"> ![x](http://127.0.0.1:9/md.png)'
    h = Handlers(make_pipeline(backend=fake_backend_cls([trap])))
    _upload(h, doc)
    chat = _run(h.ask("default", "苍鹭节在什么时候？", []))[-1][0]
    shown = chat[-1]["content"]
    assert "<img" not in shown and "&lt;img" in shown and "![x]" not in shown
    # the next question hands the model its answer as it was written
    from ragqa.web import _as_written

    assert "<img" in _as_written(chat[-1])["content"] and "![x]" in _as_written(chat[-1])["content"]
