"""Citations (ragqa.citations): alignment of answer sentences to source sentences, the support
decision, marker rewriting, and the same result streamed. No models: word overlap and numbers
decide (the embedding tie-break is tested with a fake that prefers one text)."""

from __future__ import annotations

from langchain_core.documents import Document

from ragqa.citations import Cited, Citer, RememberedPassages, answer_sentences, strip_markers

FILE = ("The Orvane Lighthouse stands on Kestrel Point. It was built in 1871 by the engineer Marta Quell. "
        "Its lamp can be seen from 31 kilometres away.\n\n"
        "The keeper feeds a grey cat called Biscuit. Biscuit sleeps in the lamp room.\n\n"
        "A ferry from Dunmore runs three times a day. The crossing costs 6.50 pounds.")
ZH = "四川有很多山。山里有竹林。熊猫住在竹林里。它们每天睡十个小时。动物园里的熊猫吃“特制”竹子。"


def _chunks(text: str, source: str = "f.txt") -> list[Document]:
    out, at = [], 0
    for para in text.split("\n\n"):
        start = text.index(para, at)
        out.append(Document(para, metadata={"source": source, "start": start}))
        at = start + len(para)
    return out


def test_quotes_are_the_files_text_at_their_offsets_and_hold_the_fact() -> None:
    docs = _chunks(FILE)[::-1]  # ranked: the ferry passage first
    r = Citer(docs).cite("Marta Quell built it in 1871. The cat is called Biscuit.")
    assert r.answer == "Marta Quell built it in 1871.[3] The cat is called Biscuit.[2]"
    assert [c.sentence for c in r.citations] == [0, 1] and r.unsupported == []
    for c in r.citations:
        assert FILE[c.start:c.end] == c.quote and c.source == "f.txt"
    assert r.citations[0].quote == "It was built in 1871 by the engineer Marta Quell."  # one sentence, not the chunk


def test_a_wrong_number_or_an_unrelated_claim_is_unsupported() -> None:
    docs = _chunks(FILE)
    r = Citer(docs).cite("It was built in 1872 by Marta Quell. The lighthouse has a library of rare maps. "
                         "The crossing costs 6.50 pounds.")
    assert r.unsupported == [0, 1]  # 1872 is in no source; no source speaks of a library
    assert r.answer.endswith("6.50 pounds.[3]")  # "6.50" stays one number (not 6 and 50)
    assert [c.sentence for c in r.citations] == [2]


def test_model_markers_are_kept_only_where_their_source_supports_the_sentence() -> None:
    docs = _chunks(FILE)
    r = Citer(docs).cite("Biscuit is a grey cat [1][2]. It sleeps in the lamp room. [9]")
    # [1] (the lighthouse passage) says nothing of a cat: dropped; [2] kept; [9] names no source
    assert r.answer == "Biscuit is a grey cat.[2] It sleeps in the lamp room.[2]"
    assert strip_markers(r.answer) == "Biscuit is a grey cat. It sleeps in the lamp room."


def test_a_marker_for_a_second_source_that_also_supports_is_kept() -> None:
    docs = [Document("熊猫每天睡十个小时。", metadata={"source": "a.txt", "start": 0}),
            Document("据说熊猫每天要睡十个小时左右。", metadata={"source": "b.txt", "start": 40})]
    r = Citer(docs).cite("熊猫每天睡十个小时。[2]")
    assert r.answer == "熊猫每天睡十个小时。[1][2]"
    assert {(c.n, c.source) for c in r.citations} == {(1, "a.txt"), (2, "b.txt")}
    assert r.citations[1].start == 40


def test_chinese_sentences_words_and_quotes() -> None:
    docs = [Document(ZH, metadata={"source": "zh.txt", "start": 100})]
    r = Citer(docs).cite("熊猫每天睡十个小时。熊猫最喜欢吃苹果。动物园的熊猫吃“特制”竹子。")
    assert r.unsupported == [1]
    quotes = [c.quote for c in r.citations]
    assert "它们每天睡十个小时。" in quotes[0]  # the pair with 熊猫住在竹林里 or the sentence alone
    assert quotes[1] == "动物园里的熊猫吃“特制”竹子。"  # the closing quote stays inside its sentence
    assert all(ZH[c.start - 100:c.end - 100] == c.quote for c in r.citations)


def test_sentences_that_make_no_claim_are_neither_cited_nor_flagged() -> None:
    docs = _chunks(FILE)
    r = Citer(docs).cite("The passages do not mention the lamp's colour. Yes. 资料中没有提到灯的颜色。")
    assert r.citations == [] and r.unsupported == [] and r.claims == 0 and r.sentences == 3


def test_answer_sentences_splits_chinese_and_english_punctuation_and_keeps_numbers() -> None:
    text = "价格是3.5元！他说：“好的。”Then we left. OK? 最后[1]。"
    assert answer_sentences(text) == ["价格是3.5元！", "他说：“好的。”", "Then we left.", "OK?", "最后[1]。"]


def test_streaming_gives_the_same_answer_and_citations_and_streams_text_at_once() -> None:
    docs = _chunks(FILE)
    answer = "It was built in 1871 by Marta Quell [1]. Biscuit is grey.[2] The ticket costs 9 pounds."
    whole = Citer(docs).cite(answer)
    out = Cited("")
    parts = list(Citer(docs).stream(list(answer), out))  # one character at a time
    assert "".join(parts) == out.answer == whole.answer
    assert [c.to_dict() for c in out.citations] == [c.to_dict() for c in whole.citations]
    assert out.unsupported == whole.unsupported == [2]
    assert parts[0] == "I"  # the text is not held back for its sentence
    assert not any("[1" in p and "[1]" not in "".join(parts[:i + 1]) for i, p in enumerate(parts))


def test_embeddings_pick_among_equally_good_quotes() -> None:
    docs = [Document("Bells ring at noon. Bells ring at dusk.", metadata={"source": "b.txt", "start": 0})]

    class Prefers:  # a fake embedding model: the query is closest to the text with "dusk"
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return [[1.0, 0.0] if "dusk" in t else [0.0, 1.0] for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return [1.0, 0.0]

    plain = Citer(docs).cite("Bells ring.")
    chosen = Citer(docs, Prefers()).cite("Bells ring.")
    assert plain.citations[0].quote == "Bells ring at noon."  # no model: the earliest
    assert chosen.citations[0].quote == "Bells ring at dusk."


def test_a_server_embeds_a_passage_sentence_once_across_answers() -> None:
    docs = [Document("Bells ring at noon. Bells ring at dusk.", metadata={"source": "b.txt", "start": 0})]

    class Counting:  # a fake embedding model (as above) that counts the passage texts it embeds
        def __init__(self) -> None:
            self.embedded: list[str] = []

        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            self.embedded += texts
            return [[1.0, 0.0] if "dusk" in t else [0.0, 1.0] for t in texts]

        def embed_query(self, text: str) -> list[float]:
            return [1.0, 0.0]

    model = Counting()
    remembered = RememberedPassages(model, limit=2)
    for _ in range(3):  # three answers, each its own Citer, as a server makes them
        assert Citer(docs, remembered).cite("Bells ring.").citations[0].quote == "Bells ring at dusk."
    assert sorted(model.embedded) == ["Bells ring at dusk.", "Bells ring at noon."]
    other = [Document("Drums beat at dawn. Drums beat at noon.", metadata={"source": "d.txt", "start": 0})]
    Citer(other, remembered).cite("Drums beat.")  # two new sentences: the oldest two are let go
    Citer(docs, remembered).cite("Bells ring.")
    assert len(model.embedded) == 6 and len(remembered._vectors) == 2


def test_no_sources_means_every_claim_is_unsupported() -> None:
    r = Citer([]).cite("The lighthouse was built in 1871.")
    assert r.unsupported == [0] and r.citations == [] and r.answer == "The lighthouse was built in 1871."


def test_a_sentence_joining_two_facts_cites_both_passages() -> None:
    docs = _chunks(FILE)
    r = Citer(docs).cite("Marta Quell built the lighthouse, and a ferry from Dunmore runs three times a day.")
    assert r.answer.endswith("day.[1][3]") and r.unsupported == []
    assert {c.n for c in r.citations} == {1, 3} and {c.sentence for c in r.citations} == {0}
    # half a sentence supported is not support
    half = Citer(docs).cite("Marta Quell built the lighthouse and painted it with purple stripes every winter.")
    assert half.unsupported == [0]


def test_a_table_is_quoted_by_its_row_not_as_the_whole_chunk() -> None:
    table = "| tea | price |\n|---|---|\n| 普洱 | 120 元 |\n| 龙井 | 260 元 |\n| 铁观音 | 90 元 |"
    docs = [Document(table, metadata={"source": "prices.md", "start": 0, "page_label": "sheet Prices"})]
    r = Citer(docs).cite("龙井的价格是260元。")
    [c] = r.citations
    assert c.quote == "| 龙井 | 260 元 |" and table[c.start:c.end] == c.quote
    assert c.to_dict()["page_label"] == "sheet Prices"
    code = "def area(r):\n    return 3.14 * r * r\n\nprint(area(2))"
    # code: its paragraph (the function), not the whole chunk
    assert Citer([Document(code, metadata={"start": 0})]).cite("It returns 3.14 * r * r").citations[0].quote \
        == "def area(r):\n    return 3.14 * r * r"
