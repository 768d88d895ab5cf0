"""Knowledge bases on the local engine: incremental indexing, the manifest, crashes and repairs,
concurrency, and the in-memory ChunkIndex. Fake embeddings (CountingEmbeddings) throughout."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ragqa.errors import ConfigError, InputError, RagqaError
from ragqa.store import ChunkIndex, FileIndex

TEXT = (
    "熊猫是中国特有的动物。它们主要生活在四川、陕西和甘肃的山区。熊猫的主要食物是竹子，每天要吃十几个小时！"
    "成年熊猫体重可达一百多公斤。它们看起来很笨拙，其实很会爬树。你知道熊猫为什么是黑白色的吗？"
    "科学家认为这有助于伪装。"
)
FERRY = "The Brask ferry leaves Quillby pier every morning at seven. Tickets cost four coins."
HERE = Path(__file__).parent


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "panda.txt").write_text(TEXT, "utf-8")
    (folder / "ferry.md").write_text(FERRY, "utf-8")
    return folder


def kb_of(pipeline, name: str = "t"):
    return pipeline.open_kb(name, create=True)


def bm25_sources(kb, query: str) -> list[str]:
    hits = kb.bm25_search(query, 5)
    return [Path(d.metadata["source"]).name for d in kb.get_chunks([i for i, _ in hits])]


# -- incremental indexing ---------------------------------------------------------------------------


def test_second_run_skips_unchanged_files_without_reading_or_embedding(make_pipeline, counting_embeddings_cls, docs, monkeypatch) -> None:
    emb = counting_embeddings_cls()
    p = make_pipeline(embeddings=emb, chunk_size=50, chunk_overlap=10)
    report = p.index_paths(kb_of(p), [docs])
    assert (report.added, report.unchanged, report.failed) == (2, 0, [])
    assert report.chunks == emb.documents_embedded > 2

    emb2 = counting_embeddings_cls()
    again = make_pipeline(embeddings=emb2, chunk_size=50, chunk_overlap=10)  # a new process
    import ragqa.pipeline.indexing as indexing

    monkeypatch.setattr(indexing, "read_bytes", lambda *a, **k: pytest.fail("an unchanged file was read"))
    report = again.index_paths(kb_of(again), [docs])
    assert (report.added, report.updated, report.unchanged) == (0, 0, 2)
    assert emb2.document_calls == 0


def test_touched_and_renamed_files_are_not_re_embedded(make_pipeline, counting_embeddings_cls, docs) -> None:
    p = make_pipeline()
    p.index_paths(kb_of(p), [docs])
    panda = docs / "panda.txt"
    os.utime(panda, (time.time() + 100, time.time() + 100))  # touched: same bytes, new mtime
    (docs / "ferry.md").rename(docs / "ferry-renamed.md")
    emb = counting_embeddings_cls()
    p2 = make_pipeline(embeddings=emb)
    kb = kb_of(p2)
    report = p2.index_paths(kb, [docs])
    assert emb.document_calls == 0  # the touched file by its hash, the renamed one copied
    assert (report.added, report.unchanged) == (1, 1)
    assert "ferry-renamed.md" in bm25_sources(kb, "Brask ferry")
    again = p2.index_paths(kb, [docs])
    assert again.unchanged == 2  # the new mtime was remembered


def test_changed_file_replaces_its_chunks(make_pipeline, counting_embeddings_cls, docs) -> None:
    p = make_pipeline()
    kb = kb_of(p)
    p.index_paths(kb, [docs])
    assert bm25_sources(kb, "Brask") == ["ferry.md"]
    (docs / "ferry.md").write_text("The Zorblat bridge opened in spring.", "utf-8")
    emb = counting_embeddings_cls()
    p2 = make_pipeline(embeddings=emb)
    kb2 = kb_of(p2)
    report = p2.index_paths(kb2, [docs])
    assert (report.updated, report.unchanged, emb.documents_embedded) == (1, 1, 1)
    assert bm25_sources(kb2, "Brask") == []  # the old chunks are gone from the keyword index
    assert bm25_sources(kb2, "Zorblat") == ["ferry.md"]
    vector_hits = kb2.search_ids(p2.embeddings.embed_query("The Zorblat bridge opened in spring."), 10)
    assert len(vector_hits) == kb2.count() == 2  # and from the vector index: one chunk per file


def test_sync_removes_files_gone_from_disk_only_under_the_given_folders(make_pipeline, docs, tmp_path) -> None:
    other = tmp_path / "other.txt"
    other.write_text("别的文件。", "utf-8")
    p = make_pipeline()
    kb = kb_of(p)
    p.index_paths(kb, [docs, other])
    (docs / "ferry.md").unlink()
    assert p.index_paths(kb, [docs]).removed == 0  # without --sync nothing is removed
    report = p.index_paths(kb, [docs], sync=True)
    assert report.removed == 1
    assert sorted(Path(r.path).name for r in kb.files()) == ["other.txt", "panda.txt"]
    assert bm25_sources(kb, "Brask") == []


def test_unreadable_files_are_recorded_and_the_run_goes_on(make_pipeline, docs) -> None:
    (docs / "empty.txt").write_text("", "utf-8")
    (docs / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    p = make_pipeline()
    kb = kb_of(p)
    report = p.index_paths(kb, [docs])
    assert report.added == 2 and len(report.failed) == 2
    failed = {Path(r.path).name: r.error for r in kb.files() if r.status == "failed"}
    assert set(failed) == {"empty.txt", "binary.txt"} and "empty" in failed["empty.txt"]
    again = p.index_paths(kb, [docs])  # unchanged failures are reported again, not re-read
    assert len(again.failed) == 2 and again.unchanged == 2


def test_same_bytes_under_another_type_are_parsed_again(make_pipeline, docs) -> None:
    """The parser is part of "unchanged": text bytes stored for .txt are not served for .html."""
    html = "<html><body><h1>Title</h1><p>熊猫吃竹子。</p></body></html>"
    (docs / "page.txt").write_text(html, "utf-8")
    p = make_pipeline()
    kb = kb_of(p)
    p.index_paths(kb, [docs / "page.txt"])
    (docs / "page.txt").rename(docs / "page.html")
    report = p.index_paths(kb, [docs / "page.html"])
    assert report.added == 1
    [rec] = [r for r in kb.files() if r.path.endswith("page.html")]
    [chunk] = list(kb.iter_chunks([rec.id]))
    assert "<p>" not in chunk.page_content and "熊猫吃竹子" in chunk.page_content


def test_kb_remembers_its_embeddings_and_splitter(make_pipeline, counting_embeddings_cls, docs) -> None:
    p = make_pipeline(chunk_size=300, chunk_overlap=50)
    p.index_paths(kb_of(p, "notes"), [docs])
    with pytest.raises(ConfigError, match=r"'notes' was built with .*300/50.*ragqa kb drop notes"):
        make_pipeline(chunk_size=600).open_kb("notes")
    # another model (its vectors of the probe texts differ: here, another dimension) is refused
    other = make_pipeline(chunk_size=300, chunk_overlap=50, embedding_model="all-MiniLM-L6-v2",
                          embeddings=counting_embeddings_cls(size=8))
    with pytest.raises(ConfigError, match="built with embeddings"):
        other.open_kb("notes")


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "-x", "a" * 80])
def test_bad_kb_names_are_refused(make_pipeline, name) -> None:
    with pytest.raises(InputError, match="invalid knowledge base name"):
        make_pipeline().open_kb(name, create=True)


def test_unknown_and_empty_kbs(make_pipeline) -> None:
    p = make_pipeline()
    with pytest.raises(InputError, match="no knowledge base named 'nope'"):
        p.ask([], "熊猫吃什么？", kb="nope", dry_run=True)
    kb_of(p, "empty")
    with pytest.raises(InputError, match="is empty: add files with ragqa index"):
        p.ask([], "熊猫吃什么？", kb="empty", dry_run=True)


def test_ask_over_a_kb_and_over_paths_use_the_same_chunks(make_pipeline, docs) -> None:
    p = make_pipeline(retriever="bm25", k=1)
    p.index_paths(kb_of(p, "zoo"), [docs])
    by_kb = p.ask([], "Brask ferry tickets", kb="zoo", dry_run=True)
    by_path = p.ask([docs], "Brask ferry tickets", dry_run=True)
    assert [s.text for s in by_kb.sources] == [s.text for s in by_path.sources]
    assert by_path.sources[0].source == str(docs / "ferry.md")  # as the user wrote the path


def test_ask_path_searches_only_the_files_given(make_pipeline, docs) -> None:
    p = make_pipeline(retriever="hybrid", k=4)
    p.ask([docs], "熊猫", dry_run=True)  # both files now in the internal KB
    answer = p.ask([docs / "ferry.md"], "熊猫吃什么？", dry_run=True)
    assert {Path(s.source).name for s in answer.sources} == {"ferry.md"}
    assert answer.timings["files_cached"] == 1


# -- storage format, crashes, repairs ------------------------------------------------------------


def test_truth_is_sqlite_and_nothing_is_pickled(make_pipeline, docs, data_dir) -> None:
    p = make_pipeline(chunk_size=50, chunk_overlap=10)
    kb = kb_of(p)
    p.index_paths(kb, [docs])
    folder = data_dir / "kb" / "t"
    con = sqlite3.connect(folder / "kb.sqlite")
    rows = con.execute("SELECT c.text, c.meta, f.path FROM chunks c JOIN files f ON f.id = c.file_id").fetchall()
    panda = [(t, json.loads(m)) for t, m, path in rows if path.endswith("panda.txt")]
    assert panda and all(TEXT[m["start"]:].startswith(t) for t, m in panda)  # offsets point into the file
    for path in folder.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert not head.startswith(b"\x80"), f"{path} looks like a pickle stream"
    assert not [q for q in folder.rglob("*") if q.suffix in {".pkl", ".pickle"}]


def test_lost_derived_indexes_are_rebuilt_from_the_truth_without_embedding(make_pipeline, counting_embeddings_cls, docs, data_dir, monkeypatch) -> None:
    import shutil

    import ragqa.store.vectors as vectors

    monkeypatch.setattr(vectors, "COMPACT_MIN", 1)  # so the vector base file exists
    p = make_pipeline(chunk_size=50, chunk_overlap=10)
    p.index_paths(kb_of(p), [docs])
    folder = data_dir / "kb" / "t"
    assert list((folder / "vectors").glob("base-*.faiss"))
    shutil.rmtree(folder / "keywords")
    (folder / "keywords.json").unlink()
    for f in (folder / "vectors").glob("*.faiss"):
        f.write_bytes(b"garbage")
    emb = counting_embeddings_cls()
    p2 = make_pipeline(embeddings=emb, chunk_size=50, chunk_overlap=10)
    kb = kb_of(p2)
    assert bm25_sources(kb, "Brask") == ["ferry.md"]
    hits = kb.search_ids(p2.embeddings.embed_query(FERRY), 1)
    assert Path(kb.get_chunks([hits[0][0]])[0].metadata["source"]).name == "ferry.md"
    assert emb.document_calls == 0


def _kill_script(tmp: Path, files: list[Path], die_at: int, where: str = "embed") -> str:
    return textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(HERE)!r})
        from conftest import CountingEmbeddings
        from ragqa.config import Settings
        from ragqa.pipeline import Pipeline
        import ragqa.store.keywords as keywords

        class Dying(CountingEmbeddings):
            def embed_documents(self, texts):
                from ragqa.store.base import PROBE_TEXTS
                probe = list(texts) == list(PROBE_TEXTS)
                if not probe and self.document_calls + 1 == {die_at} and {where!r} == "embed":
                    os._exit(9)
                return super().embed_documents(texts)

        if {where!r} == "keywords":  # after tantivy's commit, before its stamp moves
            real = keywords.write_state
            def die(path, data):
                if path.name == "keywords.json" and data["generation"] > 0:
                    os._exit(9)
                real(path, data)
            keywords.write_state = die
        p = Pipeline(Settings(cache_dir={str(tmp / 'cache')!r}, data_dir={str(tmp / 'data')!r}))
        p._embeddings = Dying()
        p.index_paths(p.open_kb("t", create=True), {[str(f) for f in files]!r})
        """)


@pytest.mark.parametrize("die_at", [1, 3, 5])
def test_kill_9_during_index_keeps_finished_files_and_a_rerun_finishes(make_pipeline, counting_embeddings_cls, tmp_path, die_at) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    files = []
    for i in range(5):
        f = folder / f"doc{i}.txt"
        f.write_text(f"第{i}号文件。关键词{i}号在这里 unique{i}word。", "utf-8")
        files.append(f)
    proc = subprocess.run([sys.executable, "-c", _kill_script(tmp_path, files, die_at)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    p = make_pipeline(embeddings=counting_embeddings_cls())
    kb = p.open_kb("t")  # opens: repairs the keyword index the kill left behind
    done = sorted(Path(r.path).name for r in kb.files() if r.status == "ok")
    assert done == [f"doc{i}.txt" for i in range(die_at - 1)]
    for i in range(die_at - 1):
        assert bm25_sources(kb, f"unique{i}word") == [f"doc{i}.txt"]
    report = p.index_paths(kb, [folder])
    assert (report.added, report.unchanged) == (5 - (die_at - 1), die_at - 1)
    assert p._embeddings.documents_embedded == 5 - (die_at - 1)  # only the rest is embedded
    assert all(bm25_sources(kb, f"unique{i}word") == [f"doc{i}.txt"] for i in range(5))


def test_kill_between_keyword_commit_and_stamp_is_repaired_without_duplicates(make_pipeline, tmp_path, docs) -> None:
    files = sorted(docs.iterdir())
    proc = subprocess.run([sys.executable, "-c", _kill_script(tmp_path, files, 0, "keywords")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    p = make_pipeline()
    kb = p.open_kb("t")
    hits = kb.bm25_search("Brask ferry", 10)
    assert len(hits) == len({i for i, _ in hits}) == 1  # re-synced, not added twice


# -- words made by another tokenizer -------------------------------------------------------------

OLD_TOKENIZER = "words/1 one word per character"
QUERIES = ["熊猫的主要食物", "四川和甘肃的山区", "Brask ferry tickets", "科学家认为黑白色有助于伪装"]


class CharWords:
    """A stand-in for an earlier tokenizer: one word per Chinese character."""

    @staticmethod
    def lcut_for_search(text: str) -> list[str]:
        return list(text)


@pytest.fixture
def old_tokenizer():
    """A context in which ragqa.words.tokenize is CharWords under OLD_TOKENIZER's id."""
    import contextlib

    from ragqa import words

    @contextlib.contextmanager
    def context():
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(words, "_segmenter_", CharWords())
            mp.setattr(words, "_tokenizer_id", OLD_TOKENIZER)
            yield

    return context


def keyword_hits(kb) -> list[list[tuple[str, str, float]]]:
    """Each query's BM25 hits as (file, chunk text, score): comparable across KBs."""
    out = []
    for q in QUERIES:
        hits = kb.bm25_search(q, 5)
        chunks = kb.get_chunks([i for i, _ in hits])
        out.append([(Path(d.metadata["source"]).name, d.page_content, round(s, 4)) for d, (_, s) in zip(chunks, hits)])
    return out


def stored_words(data_dir: Path, name: str) -> tuple[str | None, list[tuple[str, str]]]:
    con = sqlite3.connect(data_dir / "kb" / name / "kb.sqlite")
    try:
        row = con.execute("SELECT value FROM meta WHERE key = 'tokenizer'").fetchone()
        return (row[0] if row else None), con.execute("SELECT text, words FROM chunks ORDER BY id").fetchall()
    finally:
        con.close()


def all_words_current(data_dir: Path, name: str) -> bool:
    from ragqa.words import tokenize, tokenizer_id

    stamp, rows = stored_words(data_dir, name)
    return stamp == tokenizer_id() and bool(rows) and all(" ".join(tokenize(t)) == w for t, w in rows)


@pytest.mark.parametrize("stamp", ["old", "none"])
def test_words_of_another_tokenizer_are_made_again_on_open_without_embedding(
        make_pipeline, counting_embeddings_cls, docs, data_dir, old_tokenizer, stamp) -> None:
    with old_tokenizer():
        p = make_pipeline(chunk_size=50, chunk_overlap=10)
        old = kb_of(p, "old")
        p.index_paths(old, [docs])
        before = keyword_hits(old)
        old.close()
    if stamp == "none":  # a KB from before the stamp: its sample of chunks shows other words
        con = sqlite3.connect(data_dir / "kb" / "old" / "kb.sqlite")
        con.execute("DELETE FROM meta WHERE key = 'tokenizer'")
        con.commit()
        con.close()
    fresh_p = make_pipeline(chunk_size=50, chunk_overlap=10)
    fresh_p.index_paths(kb_of(fresh_p, "fresh"), [docs])
    fresh = keyword_hits(fresh_p.open_kb("fresh"))
    assert before != fresh  # the two tokenizers really rank differently

    emb = counting_embeddings_cls()
    p2 = make_pipeline(embeddings=emb, chunk_size=50, chunk_overlap=10)
    kb = p2.open_kb("old")  # opening re-tokenizes from the stored text and re-syncs tantivy
    assert all_words_current(data_dir, "old")
    assert keyword_hits(kb) == fresh and all(fresh)
    assert emb.document_calls == 0
    assert p2.index_paths(kb, [docs]).unchanged == 2  # nothing to re-index either


def test_kb_from_before_the_stamp_with_the_same_words_is_only_stamped(make_pipeline, docs, data_dir) -> None:
    p = make_pipeline(chunk_size=50, chunk_overlap=10)
    p.index_paths(kb_of(p), [docs])
    con = sqlite3.connect(data_dir / "kb" / "t" / "kb.sqlite")
    con.execute("DELETE FROM meta WHERE key = 'tokenizer'")
    con.commit()
    gens = con.execute("SELECT value FROM meta WHERE key = 'generation'").fetchall()
    con.close()
    kb = make_pipeline(chunk_size=50, chunk_overlap=10).open_kb("t")
    assert all_words_current(data_dir, "t")
    assert kb.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchall() == gens  # nothing rewritten
    assert bm25_sources(kb, "Brask") == ["ferry.md"]


def test_kill_while_re_tokenizing_is_finished_on_the_next_open(make_pipeline, tmp_path, old_tokenizer) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(4):
        (folder / f"doc{i}.txt").write_text(f"第{i}号文件。熊猫住在四川的山区，关键词{i}号在这里 unique{i}word。", "utf-8")
    settings = {"cache_dir": tmp_path / "cache", "data_dir": tmp_path / "data"}
    with old_tokenizer():
        from ragqa.words import tokenizer_id

        p = make_pipeline(**settings)
        p.index_paths(kb_of(p), [folder])
        old_stamp = tokenizer_id()  # OLD_TOKENIZER and the fold
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(HERE)!r})
        from conftest import CountingEmbeddings
        import ragqa.store.local as local
        from ragqa.config import Settings
        from ragqa.pipeline import Pipeline

        local.RETOKENIZE_BATCH = 1  # one file per transaction
        real, calls = local.LocalKB._next_generation, []
        def dying(self):
            calls.append(1)
            if len(calls) == 3:  # two files done, the third's transaction open
                os._exit(9)
            return real(self)
        local.LocalKB._next_generation = dying
        p = Pipeline(Settings(cache_dir={str(settings['cache_dir'])!r}, data_dir={str(settings['data_dir'])!r}))
        p._embeddings = CountingEmbeddings()
        p.open_kb("t")
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    from ragqa.words import tokenize

    stamp, rows = stored_words(tmp_path / "data", "t")
    current = [" ".join(tokenize(t)) == w for t, w in rows]
    assert stamp == old_stamp and any(current) and not all(current)  # half-way, still stamped old
    kb = make_pipeline(**settings).open_kb("t")
    assert all_words_current(tmp_path / "data", "t")
    for i in range(4):
        assert bm25_sources(kb, f"unique{i}word") == [f"doc{i}.txt"]
    assert len(bm25_sources(kb, "熊猫住在四川")) == 4


def test_disk_full_mid_file_leaves_the_kb_as_it_was(make_pipeline, docs, monkeypatch) -> None:
    p = make_pipeline()
    kb = kb_of(p)
    p.index_paths(kb, [docs / "panda.txt"])
    before = [(r.path, r.chunks) for r in kb.files()]

    class FullDisk:
        def __init__(self, db):
            self.db = db

        def executemany(self, *a, **k):
            raise sqlite3.OperationalError("database or disk is full")

        def __getattr__(self, name):
            return getattr(self.db, name)

    kb.db = FullDisk(kb.db)
    with pytest.raises(RagqaError, match="disk is full"):
        p.index_paths(kb, [docs / "ferry.md"])
    kb.db = kb.db.db
    assert [(r.path, r.chunks) for r in kb.files()] == before
    assert bm25_sources(kb, "Brask") == []
    assert p.index_paths(kb, [docs]).added == 1  # the next run just works


def test_unusable_data_dir_is_one_clear_error(make_pipeline, tmp_path) -> None:
    not_a_folder = tmp_path / "data-is-a-file"
    not_a_folder.write_text("x", "utf-8")
    with pytest.raises(RagqaError, match="cannot") as err:
        make_pipeline(data_dir=not_a_folder).open_kb("t", create=True)
    assert str(not_a_folder) in str(err.value)


def test_two_writers_on_one_kb_lose_nothing(tmp_path) -> None:
    """Two processes index different folders into one KB at once: the second waits for the lock."""
    scripts, folders = [], []
    for w in range(2):
        folder = tmp_path / f"w{w}"
        folder.mkdir()
        for i in range(6):
            (folder / f"w{w}-{i}.txt").write_text(f"writer{w} file{i} 内容{i}。 token{w}x{i}", "utf-8")
        folders.append(folder)
        scripts.append(textwrap.dedent(f"""
            import sys, time
            sys.path.insert(0, {str(HERE)!r})
            from conftest import CountingEmbeddings
            from ragqa.config import Settings
            from ragqa.pipeline import Pipeline

            class Slow(CountingEmbeddings):
                def embed_documents(self, texts):
                    time.sleep(0.05)
                    return super().embed_documents(texts)

            p = Pipeline(Settings(cache_dir={str(tmp_path / 'cache')!r}, data_dir={str(tmp_path / 'data')!r}))
            p._embeddings = Slow()
            r = p.index_paths(p.open_kb("shared", create=True), [{str(folder)!r}],
                              on_wait=lambda m: print(m, file=sys.stderr, flush=True))
            print(r.added)
            """))
    procs = [subprocess.Popen([sys.executable, "-c", s], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in scripts]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert sorted(int(o[0]) for o in outs) == [6, 6]
    con = sqlite3.connect(tmp_path / "data" / "kb" / "shared" / "kb.sqlite")
    assert con.execute("SELECT count(*) FROM files WHERE status = 'ok'").fetchone()[0] == 12
    assert con.execute("SELECT count(DISTINCT file_id) FROM chunks").fetchone()[0] == 12


def test_hnsw_base_and_dead_chunk_filtering(make_pipeline, tmp_path, monkeypatch) -> None:
    """Past HNSW_MIN chunks the base index is HNSW; chunks of a changed file never come back."""
    import ragqa.store.vectors as vectors

    monkeypatch.setattr(vectors, "HNSW_MIN", 20)
    monkeypatch.setattr(vectors, "COMPACT_MIN", 10)
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(30):
        (folder / f"f{i}.txt").write_text(f"文件{i}。 marker{i}word", "utf-8")
    p = make_pipeline()
    kb = kb_of(p)
    p.index_paths(kb, [folder])
    assert kb._vectors._kind == "hnsw" and kb._vectors._base.ntotal == 30
    (folder / "f3.txt").write_text("replaced text", "utf-8")
    p.index_paths(kb, [folder])
    q = p.embeddings.embed_query("文件3。 marker3word")
    ids = [i for i, _ in kb.search_ids(q, 30)]
    assert len(ids) == 30 and len(set(ids)) == 30  # the old chunk of f3 is filtered out
    texts = [d.page_content for d in kb.get_chunks(ids)]
    assert "文件3。 marker3word" not in texts and "replaced text" in texts


# -- the in-memory index ----------------------------------------------------------------------------


def test_chunk_index_search_ranks_by_cosine_and_checks_dimensions() -> None:
    import numpy as np
    from langchain_core.documents import Document

    a = FileIndex([Document(page_content="a"), Document(page_content="b")], np.array([[1, 0], [0, 1]], "float32"))
    b = FileIndex([Document(page_content="c")], np.array([[0.6, 0.8]], "float32"))
    index = ChunkIndex([a, b])
    assert len(index) == 3
    hits = index.search([0.0, 1.0], k=10)  # k larger than the index is fine
    assert [d.page_content for d, _ in hits] == ["b", "c", "a"]
    assert hits[0][1] == pytest.approx(1.0)
    with pytest.raises(RagqaError, match="dimensions"):
        index.search([1.0, 0.0, 0.0], k=1)
    with pytest.raises(RagqaError, match="nothing to search"):
        ChunkIndex([])


def test_chunk_index_grows_and_shrinks_with_bm25_in_step() -> None:
    import numpy as np
    from langchain_core.documents import Document

    index = ChunkIndex([], allow_empty=True)
    assert len(index) == 0 and index.search([1.0, 0.0], k=3) == [] and index.bm25_search_ids(["a"], 3) == []
    docs = [Document(page_content=t) for t in ("apple", "banana", "cherry")]
    index.add(FileIndex(docs, np.eye(3, dtype="float32"), [["apple"], ["banana"], ["cherry"]]))
    assert index.dimension == 3 and index.bm25_search_ids(["cherry"], 3)[0][0] == 2
    index.remove([0, 7])  # an id past the end is ignored
    assert [d.page_content for d in index.chunks] == ["banana", "cherry"]
    assert index.search([0.0, 0.0, 5.0], k=1)[0] == (docs[2], pytest.approx(1.0))  # query normalised: a cosine
    assert index.bm25_search("cherry", 3)[0][0] == 1  # BM25 rebuilt on the renumbered chunks
    with pytest.raises(RagqaError, match="dimensions"):
        index.add(FileIndex([Document(page_content="x")], np.ones((1, 2), "float32"), [["x"]]))
