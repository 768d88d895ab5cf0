"""The per-file index cache: reuse, invalidation, atomic writes, no pickle, corruption recovery."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ragqa.errors import RagqaError
from ragqa.store import ChunkIndex, FileIndex, IndexCache

TEXT = (
    "熊猫是中国特有的动物。它们主要生活在四川、陕西和甘肃的山区。熊猫的主要食物是竹子，每天要吃十几个小时！"
    "成年熊猫体重可达一百多公斤。它们看起来很笨拙，其实很会爬树。你知道熊猫为什么是黑白色的吗？"
    "科学家认为这有助于伪装。"
)


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "docs" / "panda.txt"
    path.parent.mkdir()
    path.write_text(TEXT, "utf-8")
    return path


def finished(dirs: list[Path]) -> list[Path]:
    return [d for d in dirs if not d.name.startswith(".")]


def test_second_build_loads_from_cache_without_embedding(make_pipeline, counting_embeddings_cls, doc, index_dirs) -> None:
    emb = counting_embeddings_cls()
    pipeline = make_pipeline(embeddings=emb, chunk_size=50, chunk_overlap=10)
    index1, report1 = pipeline.build_index([doc])
    assert (report1.files, report1.cached) == (1, 0)
    assert report1.chunks == len(index1) > 1
    assert emb.document_calls == 1 and emb.documents_embedded == report1.chunks

    emb2 = counting_embeddings_cls()
    again = make_pipeline(embeddings=emb2, chunk_size=50, chunk_overlap=10)  # a new process, same cache
    index2, report2 = again.build_index([doc])
    assert (report2.files, report2.cached) == (1, 1)
    assert emb2.document_calls == 0
    assert [c.page_content for c in index2.chunks] == [c.page_content for c in index1.chunks]
    assert [c.metadata for c in index2.chunks] == [c.metadata for c in index1.chunks]
    assert len(index_dirs()) == 1


def test_cached_search_gives_the_same_hits(make_pipeline, doc) -> None:
    first, _ = make_pipeline(chunk_size=50, chunk_overlap=10).build_index([doc])
    pipeline = make_pipeline(chunk_size=50, chunk_overlap=10)
    second, report = pipeline.build_index([doc])
    assert report.cached == 1
    query = pipeline.embeddings.embed_query("熊猫吃什么？")
    hits1 = [(d.page_content, round(s, 5)) for d, s in first.search(query, 3)]
    hits2 = [(d.page_content, round(s, 5)) for d, s in second.search(query, 3)]
    assert hits1 == hits2 and len(hits1) == 3


def test_changed_file_content_is_reindexed(make_pipeline, counting_embeddings_cls, doc) -> None:
    make_pipeline().build_index([doc])
    doc.write_text(TEXT + "熊猫宝宝刚出生时只有一百克。", "utf-8")
    emb = counting_embeddings_cls()
    index, report = make_pipeline(embeddings=emb).build_index([doc])
    assert report.cached == 0
    assert emb.document_calls == 1
    assert any("一百克" in c.page_content for c in index.chunks)


def test_changed_chunk_size_is_reindexed(make_pipeline, counting_embeddings_cls, doc) -> None:
    _, r1 = make_pipeline(chunk_size=60, chunk_overlap=10).build_index([doc])
    emb = counting_embeddings_cls()
    index, r2 = make_pipeline(embeddings=emb, chunk_size=120, chunk_overlap=10).build_index([doc])
    assert r2.cached == 0 and emb.document_calls == 1
    assert all(len(c.page_content) <= 120 for c in index.chunks)
    assert r2.chunks < r1.chunks


def test_changed_overlap_is_reindexed(make_pipeline, doc) -> None:
    make_pipeline(chunk_size=60, chunk_overlap=10).build_index([doc])
    _, report = make_pipeline(chunk_size=60, chunk_overlap=30).build_index([doc])
    assert report.cached == 0


def test_same_content_under_another_name_reuses_the_index_with_the_new_source(make_pipeline, doc) -> None:
    make_pipeline().build_index([doc])
    copy = doc.with_name("copy.txt")
    copy.write_bytes(doc.read_bytes())
    index, report = make_pipeline().build_index([copy])
    assert report.cached == 1
    assert {c.metadata["source"] for c in index.chunks} == {str(copy)}


def test_cache_folder_holds_faiss_and_json_only(make_pipeline, doc, cache_dir, index_dirs) -> None:
    make_pipeline(chunk_size=50, chunk_overlap=10).build_index([doc])
    [folder] = index_dirs()
    assert sorted(p.name for p in folder.iterdir()) == ["chunks.json", "index.faiss", "meta.json"]
    assert not [p for p in cache_dir.rglob("*") if p.suffix in {".pkl", ".pickle"} or "pickle" in p.name]
    chunks = json.loads((folder / "chunks.json").read_text("utf-8"))
    meta = json.loads((folder / "meta.json").read_text("utf-8"))
    assert meta["chunks"] == len(chunks) and meta["source"] == str(doc)
    assert all(TEXT[r["metadata"]["start"]:].startswith(r["text"]) for r in chunks)
    assert "熊猫" in (folder / "chunks.json").read_text("utf-8")  # readable, not \u escapes
    assert not (folder / "index.faiss").read_bytes().startswith(b"\x80")  # not a pickle stream


@pytest.mark.parametrize("where", ["write_index", "fsync", "rename"])
def test_failed_save_leaves_no_index_and_no_temp_folder(make_pipeline, doc, index_dirs, monkeypatch, where) -> None:
    import faiss

    import ragqa.store as store

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        if where == "write_index":
            m.setattr(faiss, "write_index", fail)  # dies writing the vectors
        elif where == "fsync":
            m.setattr(store, "_fsync_dir", fail)  # all files written, dies before the rename
        else:
            m.setattr(store.os, "rename", fail)
        with pytest.raises(RagqaError, match="cannot write the index cache"):
            make_pipeline().build_index([doc])
        assert index_dirs() == []

    _, report = make_pipeline().build_index([doc])  # the next run just works
    assert report.cached == 0
    assert len(index_dirs()) == 1


def test_failed_save_keeps_the_previous_index(make_pipeline, doc, tmp_path, index_dirs, monkeypatch) -> None:
    make_pipeline().build_index([doc])
    before = index_dirs()
    assert len(before) == 1
    other = tmp_path / "docs" / "other.txt"
    other.write_text("另一个文件的内容。", "utf-8")

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash after writing the files, before the rename")

    with monkeypatch.context() as m:
        m.setattr("ragqa.store._fsync_dir", crash)
        with pytest.raises(RuntimeError):
            make_pipeline().build_index([doc, other])
    assert index_dirs() == before
    _, report = make_pipeline().build_index([doc])
    assert report.cached == 1


def test_killed_process_during_save_leaves_no_half_index(doc, cache_dir, index_dirs) -> None:
    """A hard kill (no finally blocks) between writing files and renaming: nothing half-built loads."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import CountingEmbeddings
        import ragqa.store as store
        from ragqa.config import Settings
        from ragqa.pipeline import Pipeline
        store._fsync_dir = lambda folder: os._exit(9)
        p = Pipeline(Settings(cache_dir={str(cache_dir)!r}))
        p._embeddings = CountingEmbeddings()
        p.build_index([{str(doc)!r}])
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9, proc.stderr
    assert finished(index_dirs()) == []  # at most an orphaned temp folder, never a final one


def test_next_run_after_a_killed_save_indexes_normally(make_pipeline, doc, cache_dir, index_dirs) -> None:
    # what a hard kill leaves behind: a temp folder with some files but no rename
    orphan = cache_dir / "index" / ".deadbeef.tmp123"
    orphan.mkdir(parents=True)
    (orphan / "index.faiss").write_bytes(b"half")
    index, report = make_pipeline().build_index([doc])
    assert report.cached == 0 and len(index) > 0
    assert len(finished(index_dirs())) == 1
    _, report = make_pipeline().build_index([doc])
    assert report.cached == 1


def test_corrupted_chunks_json_is_detected_and_rebuilt(make_pipeline, counting_embeddings_cls, doc, index_dirs) -> None:
    make_pipeline().build_index([doc])
    [folder] = index_dirs()
    (folder / "chunks.json").write_text('[{"text": "半截', "utf-8")  # truncated write
    emb = counting_embeddings_cls()
    index, report = make_pipeline(embeddings=emb).build_index([doc])
    assert report.cached == 0 and emb.document_calls == 1
    assert "".join(c.page_content for c in index.chunks).startswith("熊猫是中国特有的动物。")
    json.loads((folder / "chunks.json").read_text("utf-8"))  # rewritten, valid again
    _, report = make_pipeline().build_index([doc])
    assert report.cached == 1


@pytest.mark.parametrize(
    "name, content",
    [
        ("chunks.json", "[]"),  # count no longer matches the vectors
        ("meta.json", '{"format": 999}'),  # a future format
        ("meta.json", "not json"),
        ("index.faiss", "garbage"),
    ],
)
def test_other_corruptions_are_rebuilt(make_pipeline, doc, index_dirs, name, content) -> None:
    make_pipeline().build_index([doc])
    [folder] = index_dirs()
    (folder / name).write_text(content, "utf-8")
    index, report = make_pipeline().build_index([doc])
    assert report.cached == 0 and len(index) > 0


@pytest.mark.parametrize(
    "name, content",
    [
        ("chunks.json", "RECORDS_WITHOUT_TEXT"),  # right count, wrong shape
        ("meta.json", "[]"),  # valid JSON, not an object
    ],
)
def test_well_formed_json_of_the_wrong_shape_is_rebuilt(make_pipeline, doc, index_dirs, name, content) -> None:
    make_pipeline().build_index([doc])
    [folder] = index_dirs()
    if content == "RECORDS_WITHOUT_TEXT":
        n = len(json.loads((folder / "chunks.json").read_text("utf-8")))
        content = json.dumps([{"body": "x"}] * n)
    (folder / name).write_text(content, "utf-8")
    index, report = make_pipeline().build_index([doc])
    assert report.cached == 0 and len(index) > 0


def test_unusable_cache_dir_is_a_clear_error(make_pipeline, doc, tmp_path) -> None:
    not_a_folder = tmp_path / "cache-is-a-file"
    not_a_folder.write_text("x", "utf-8")
    with pytest.raises(RagqaError) as err:
        make_pipeline(cache_dir=not_a_folder).build_index([doc])
    assert str(not_a_folder) in str(err.value)


def test_tilde_in_cache_dir_from_a_config_file_means_home(counting_embeddings_cls, doc, tmp_path, monkeypatch) -> None:
    """`cache_dir = "~/..."` in the TOML file is not shell-expanded, so ragqa must expand it
    (as it does for --config, model and embedding paths)."""
    from ragqa.config import load_settings
    from ragqa.pipeline import Pipeline

    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    config = tmp_path / "ragqa.toml"
    config.write_text('cache_dir = "~/ragqa-cache"\n', "utf-8")
    pipeline = Pipeline(load_settings(config))
    pipeline._embeddings = counting_embeddings_cls()
    pipeline.build_index([doc])
    assert list(cwd.iterdir()) == [], "a folder literally named '~' was created in the working directory"
    assert len(list((home / "ragqa-cache" / "index").iterdir())) == 1


def test_index_cache_roundtrip_without_pipeline(tmp_path: Path) -> None:
    import numpy as np
    from langchain_core.documents import Document

    cache = IndexCache(tmp_path)
    chunks = [Document(page_content="甲。", metadata={"source": "x.txt", "start": 0, "page": 2})]
    vectors = np.array([[0.6, 0.8]], dtype="float32")
    cache.save("k1", FileIndex(chunks, vectors, [["甲"]]), {"source": "x.txt"})
    loaded = cache.load("k1", "y.txt")
    assert loaded is not None
    assert loaded.tokens == [["甲"]]  # BM25 words come back without re-segmenting
    assert loaded.chunks[0].page_content == "甲。"
    assert loaded.chunks[0].metadata == {"source": "y.txt", "start": 0, "page": 2}
    assert np.allclose(loaded.vectors, vectors)
    assert cache.load("missing", "y.txt") is None


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
    assert index.bm25_search_ids(["cherry"], 3)[0][0] == 1  # BM25 rebuilt on the renumbered chunks
    with pytest.raises(RagqaError, match="dimensions"):
        index.add(FileIndex([Document(page_content="x")], np.ones((1, 2), "float32"), [["x"]]))
