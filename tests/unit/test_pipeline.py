"""Pipeline.ask end to end with a fake embedding model and a fake LLM backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragqa.errors import InputError
from ragqa.pipeline import Answer, Source

TEXT = (
    "熊猫是中国特有的动物。它们主要生活在四川、陕西和甘肃的山区。熊猫的主要食物是竹子，每天要吃十几个小时！"
    "成年熊猫体重可达一百多公斤。它们看起来很笨拙，其实很会爬树。你知道熊猫为什么是黑白色的吗？"
    "科学家认为这有助于伪装。"
)


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "panda.txt"
    path.write_text(TEXT, "utf-8")
    return path


def test_ask_streams_the_answer_and_returns_sources(make_pipeline, fake_backend_cls, doc) -> None:
    backend = fake_backend_cls(["熊猫 主要 吃 竹子。 [1]"])
    # whole chunks in the prompt (the default, context=sentences, cuts all but the best: test_compact_context)
    pipeline = make_pipeline(backend=backend, chunk_size=50, chunk_overlap=0, k=3, context="chunks")
    tokens: list[str] = []
    answer = pipeline.ask([doc], "熊猫吃什么？", on_token=tokens.append)

    assert answer.answer == "熊猫 主要 吃 竹子。[1]"  # the model's marker checked and kept (ragqa.citations)
    assert "".join(tokens) == answer.answer and len(tokens) == 5
    assert len(answer.sources) == 3
    for s in answer.sources:
        assert s.source == str(doc)
        assert TEXT[s.start:s.start + len(s.text)] == s.text  # offsets point into the file
    assert [s.score for s in answer.sources] == sorted((s.score for s in answer.sources), reverse=True)
    # the model saw exactly the retrieved chunks, in rank order
    [call] = backend.calls
    assert answer.prompts == [call["prompt"]]
    positions = [call["prompt"].index(f"[{i}] {s.text}") for i, s in enumerate(answer.sources, 1)]
    assert positions == sorted(positions)


def test_generation_settings_and_stop_tokens_reach_the_backend(make_pipeline, fake_backend_cls, doc) -> None:
    backend = fake_backend_cls()
    pipeline = make_pipeline(backend=backend, temperature=0.7, top_k=10, top_p=0.5, repeat_penalty=1.3,
                             max_new_tokens=123)
    pipeline.ask([doc], "熊猫吃什么？")
    [call] = backend.calls
    assert call["params"] == {"max_tokens": 123, "temperature": 0.7, "top_k": 10, "top_p": 0.5,
                              "repeat_penalty": 1.3, "seed": 42}
    assert "<|im_end|>" in call["stop"]  # the chat format's end-of-turn stops generation


def test_chat_format_and_system_prompt_settings_shape_the_prompt(make_pipeline, fake_backend_cls, doc) -> None:
    backend = fake_backend_cls()
    pipeline = make_pipeline(backend=backend, chat_format="alpaca-2", system_prompt="你是熊猫专家。")
    pipeline.ask([doc], "熊猫吃什么？")
    [call] = backend.calls
    assert call["prompt"].startswith("[INST] <<SYS>>\n你是熊猫专家。\n<</SYS>>\n\n")
    assert call["prompt"].endswith("问题：熊猫吃什么？ [/INST]")
    assert "</s>" in call["stop"]


def test_timings_report_indexing_and_generation(make_pipeline, doc) -> None:
    pipeline = make_pipeline()
    first = pipeline.ask([doc], "熊猫吃什么？")
    second = make_pipeline().ask([doc], "熊猫吃什么？")
    assert (first.timings["files"], first.timings["files_cached"]) == (1, 0)
    assert (second.timings["files"], second.timings["files_cached"]) == (1, 1)
    assert first.timings["chunks"] >= 1
    assert first.timings["completion_tokens"] == 4
    assert first.timings["decode_tokens_per_s"] == pytest.approx(150.0)
    assert "answer_s" in first.timings and "index_s" in first.timings


def test_dry_run_shows_the_exact_prompt_without_generating(make_pipeline, fake_backend_cls, doc) -> None:
    backend = fake_backend_cls()
    dry = make_pipeline(backend=backend).ask([doc], "熊猫吃什么？", dry_run=True)
    assert backend.calls == []
    assert dry.answer == ""
    assert len(dry.prompts) == 1 and "熊猫吃什么？" in dry.prompts[0]
    assert dry.sources
    real = make_pipeline(backend=backend).ask([doc], "熊猫吃什么？")
    assert backend.calls[0]["prompt"] == dry.prompts[0]
    assert [s.text for s in real.sources] == [s.text for s in dry.sources]


def test_refine_chain_calls_the_model_once_per_chunk(make_pipeline, fake_backend_cls, doc) -> None:
    backend = fake_backend_cls(["草稿一", "草稿二", "最终 回答"])
    answer = make_pipeline(backend=backend, chain="refine", k=3, chunk_size=50, chunk_overlap=0).ask(
        [doc], "熊猫吃什么？"
    )
    assert len(backend.calls) == 3
    assert answer.answer == "最终 回答"
    assert "草稿一" in backend.calls[1]["prompt"] and "草稿二" in backend.calls[2]["prompt"]
    assert len(answer.prompts) == 3


def test_small_context_drops_chunks_and_says_so(make_pipeline, fake_backend_cls, doc) -> None:
    # budget = n_ctx - max_new_tokens; one character per token; room for roughly one chunk
    backend = fake_backend_cls(n_ctx=260)
    answer = make_pipeline(backend=backend, chunk_size=50, chunk_overlap=0, k=4, max_new_tokens=10).ask(
        [doc], "熊猫吃什么？"
    )
    assert len(backend.calls[0]["prompt"]) <= 250
    assert len(answer.sources) < 4
    assert any("context budget" in n for n in answer.notes)


def test_backend_notes_are_passed_on(make_pipeline, fake_backend_cls, doc) -> None:
    backend = fake_backend_cls()
    backend.notes.append("n_ctx is over the model's trained context")
    answer = make_pipeline(backend=backend).ask([doc], "熊猫吃什么？")
    assert "n_ctx is over the model's trained context" in answer.notes


@pytest.mark.parametrize("question", ["", "   \n"])
def test_empty_question_fails_before_any_indexing(make_pipeline, counting_embeddings_cls, doc, indexed_paths, question) -> None:
    emb = counting_embeddings_cls()
    with pytest.raises(InputError, match="question is empty"):
        make_pipeline(embeddings=emb).ask([doc], question)
    assert emb.document_calls == 0
    assert indexed_paths() == []


def test_no_documents_is_an_input_error(make_pipeline) -> None:
    with pytest.raises(InputError, match="no documents"):
        make_pipeline().ask([], "熊猫吃什么？")


def test_several_files_and_folders_are_searched_together(make_pipeline, tmp_path, doc) -> None:
    folder = tmp_path / "more"
    folder.mkdir()
    (folder / "b.md").write_text("成都大熊猫繁育研究基地在成都北郊。", "utf-8")
    answer = make_pipeline(k=20).ask([doc, folder], "基地在哪里？")
    assert answer.timings["files"] == 2
    assert {s.source for s in answer.sources} == {str(doc), str(folder / "b.md")}


def test_answer_to_dict_is_json_with_page_only_when_known() -> None:
    answer = Answer(
        answer="竹子",
        sources=[Source("a.pdf", "熊猫吃竹子。", 3, 0.91, page=2), Source("b.txt", "成都。", 0, 0.5)],
        timings={"answer_s": 1.0},
    )
    d = json.loads(json.dumps(answer.to_dict(), ensure_ascii=False))
    assert d["answer"] == "竹子"
    assert d["sources"][0]["page"] == 2 and "page" not in d["sources"][1]
    assert "notes" not in d
    assert answer.sources[0].location() == "a.pdf p.2 @3"
    assert answer.sources[1].location() == "b.txt @0"


def test_file_over_the_size_limit_is_refused(make_pipeline, counting_embeddings_cls, doc, indexed_paths) -> None:
    emb = counting_embeddings_cls()
    with pytest.raises(InputError) as err:
        make_pipeline(embeddings=emb, max_file_mb=0.0001).ask([doc], "熊猫吃什么？")  # ~100 bytes
    assert str(doc) in str(err.value) and "max_file_mb" in str(err.value)
    assert emb.document_calls == 0 and indexed_paths() == []


def test_gbk_document_is_answered_from_correctly_decoded_text(make_pipeline, fake_backend_cls, tmp_path) -> None:
    path = tmp_path / "gbk.txt"
    path.write_bytes(TEXT.encode("gbk"))
    backend = fake_backend_cls()
    answer = make_pipeline(backend=backend, k=1).ask([path], "熊猫吃什么？")
    assert answer.sources[0].text in TEXT
    assert answer.sources[0].text in backend.calls[0]["prompt"]


def test_bm25_retriever_answers_without_embedding_the_question(make_pipeline, counting_embeddings_cls, doc) -> None:
    embeddings = counting_embeddings_cls()
    pipeline = make_pipeline(embeddings=embeddings, retriever="bm25", chunk_size=50, chunk_overlap=0, k=1)
    answer = pipeline.ask([doc], "熊猫吃什么？")
    assert embeddings.query_calls == 0  # keyword search needs no model at question time
    assert "竹" in answer.sources[0].text


def test_hybrid_is_the_default_and_finds_the_chunk_by_its_words(make_pipeline, doc) -> None:
    pipeline = make_pipeline(chunk_size=50, chunk_overlap=0, k=1)
    assert pipeline.settings.retriever == "hybrid"
    answer = pipeline.ask([doc], "熊猫吃什么？")
    # the fake embedding ranks chunks at random; BM25's half of the fusion finds 竹子
    assert "竹" in answer.sources[0].text


def test_unreadable_file_inside_a_folder_is_skipped_with_a_note(make_pipeline, tmp_path, doc) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.txt").write_text(TEXT, "utf-8")
    (folder / "empty.txt").write_text("", "utf-8")
    (folder / "blob.txt").write_bytes(b"\x00\x01\x02" * 100)
    answer = make_pipeline(chunk_size=50, chunk_overlap=0).ask([folder], "熊猫吃什么？")
    assert {Path(s.source).name for s in answer.sources} == {"good.txt"}
    skipped = [n for n in answer.notes if n.startswith("skipped")]
    assert len(skipped) == 2 and any("empty.txt" in n for n in skipped) and any("blob.txt" in n for n in skipped)


def test_unreadable_file_named_directly_is_still_an_error(make_pipeline, tmp_path, doc) -> None:
    from ragqa.errors import InputError

    empty = tmp_path / "empty.txt"
    empty.write_text("", "utf-8")
    with pytest.raises(InputError, match="empty"):
        make_pipeline().ask([doc, empty], "熊猫吃什么？")


def test_folder_with_no_readable_file_is_an_error(make_pipeline, tmp_path) -> None:
    from ragqa.errors import InputError

    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "empty.txt").write_text("", "utf-8")
    with pytest.raises(InputError, match="no readable documents"):
        make_pipeline().ask([folder], "熊猫吃什么？")


def test_long_embedding_shows_progress_lines_when_stderr_is_a_log(make_pipeline, tmp_path, monkeypatch, capsys) -> None:
    """A 150 MB file takes hours: with stderr redirected to a file there must still be lines."""
    import ragqa.progress as progress

    monkeypatch.setattr(progress, "LOG_PROGRESS_EVERY_S", 0.0)  # a line per batch instead of every 10 s
    monkeypatch.setattr(progress, "stderr_is_tty", lambda: False)
    doc = tmp_path / "long.txt"
    doc.write_text("熊猫吃竹子。" * 2000, "utf-8")
    p = make_pipeline(chunk_size=60, chunk_overlap=0)
    p.index_paths(p.open_kb("t", create=True), [doc])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("embedding long.txt:")]
    assert len(lines) >= 3 and "\r" not in "".join(lines)
    assert "chunks (" in lines[0] and "s left)" in lines[0]


def test_a_50_page_scan_shows_ocr_progress_and_indexes_every_page(make_pipeline, tmp_path, monkeypatch, capsys) -> None:
    """OCR is faked here (tests/unit/test_loaders_formats.py runs the real Tesseract): a long scan
    must show it is moving, page by page, and every page's text must land in the KB with its page."""
    import threading

    from PIL import Image

    import ragqa.ocr as ocr
    import ragqa.progress as progress

    pages = [Image.new("L", (200, 280), 255) for _ in range(50)]
    scan = tmp_path / "scan.pdf"
    pages[0].save(scan, "PDF", resolution=100.0, save_all=True, append_images=pages[1:])  # no text layer
    calls: list[int] = []
    lock = threading.Lock()

    def fake_ocr(image, languages, exe=None):
        with lock:
            calls.append(image.size[0])
            return f"扫描页文字，第{len(calls)}次识别。", 90.0

    monkeypatch.setattr(ocr, "check_languages", lambda languages: "tesseract")
    monkeypatch.setattr(ocr, "ocr_image", fake_ocr)
    monkeypatch.setattr(progress, "LOG_PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(progress, "stderr_is_tty", lambda: False)
    p = make_pipeline()
    kb = p.open_kb("scans", create=True)
    report = p.index_paths(kb, [scan])
    assert report.added == 1 and report.chunks == 50
    assert len(calls) == 51  # page 1 is read twice, as Simplified and as Traditional Chinese (ocr_languages=auto)
    assert calls[0] == round(200 / 100 * ocr.OCR_DPI)  # rendered at OCR_DPI, whatever the scan's own resolution
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("OCR scan.pdf:")]
    assert len(lines) >= 40 and lines[0].startswith("OCR scan.pdf: 1/50 pages")
    stored = list(kb.iter_chunks())
    assert sorted(d.metadata["page"] for d in stored) == list(range(1, 51))
    assert all(d.metadata["ocr"] is True for d in stored)


def test_a_question_is_admitted_by_the_gate_before_its_retrieval(make_pipeline, tmp_path: Path) -> None:
    """Every front end's question counts against the same gate from its start: with the line full,
    a page or CLI question is turned away before anything of it is embedded."""
    from ragqa.gate import QueueFullError

    pipeline = make_pipeline(max_concurrency=1, max_queue=0)
    doc = tmp_path / "a.txt"
    doc.write_text("熊猫吃竹子。", "utf-8")
    pipeline.ingest("k", [doc])
    queries = pipeline.embeddings.query_calls
    held = pipeline.gate.enter()  # another question holds the only place
    try:
        with pytest.raises(QueueFullError):
            list(pipeline.ask_stream([], "熊猫吃什么？", kb="k"))
        assert pipeline.embeddings.query_calls == queries
    finally:
        held.release()
    assert list(pipeline.ask_stream([], "熊猫吃什么？", kb="k"))[-1].sources
