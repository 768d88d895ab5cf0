"""Compact context: only the sentences of the retrieved chunks that bear on the question.

On a CPU the time to the first token is the model reading its prompt, and most of a stuffed
chunk does not bear on the question. With ``context = "sentences"`` each retrieved chunk is cut to
the sentences that share the question's informative words (idf-weighted, the keyword path's
Chinese-aware words, so numbers and names count, plus the question's pairs of adjacent Chinese
characters, which match where jieba cut question and sentence differently). The top-ranked
chunk stays whole, the others keep only their strongest sentences; each kept sentence brings
the one after it (an answer often follows the sentence that names the
question's subject) and short gaps are filled, in document order, with "…" where text was left
out. A chunk keeps at least its best sentence, so a passage the retriever ranked never vanishes;
the kept ranges are recorded as offsets in the file (``metadata["spans"]``).

``context = "chunks"`` is the whole-chunk context of before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from langchain_core.documents import Document

from ragqa.splitting import sentence_spans

_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")

GAP = " … "  # where a compacted chunk left text out
BIGRAM_WEIGHT = 4.0  # idf-like weight of each of the question's CJK character pairs a sentence holds
# picked on CMRC2018 trial, DRCD dev and SQuAD dev with bench/bench_context.py (README "Compact context")
KEEP_SHARE = 0.5  # a lower-ranked chunk's sentence is kept at this share of the best sentence's score
GAP_FILL = 2  # sentences between two kept ones that are kept too
MIN_IDF = 2.5  # question words below this idf (的 0.9, 是 1.7, 在 2.1) match every sentence: not counted


@dataclass(frozen=True)
class _Sentence:
    start: int  # within the chunk's text
    end: int
    score: float


def _weights(question: str) -> dict[str, float]:
    from ragqa.words import idf_weights

    return {w: x for w, x in idf_weights(question).items() if x >= MIN_IDF}


def _cjk_pairs(folded: str) -> set[str]:
    """The pairs of adjacent CJK characters of a folded text: they still match where jieba cut
    the question and the sentence differently (问题 "开 / 茶节", 文中 "开茶节")."""
    runs = _CJK_RUN.findall(folded)
    return {run[i:i + 2] for run in runs for i in range(len(run) - 1)}


def compact_chunks(question: str, docs: Sequence[Document], keep_share: float = KEEP_SHARE,
                   gap: int = GAP_FILL, bigram_weight: float = BIGRAM_WEIGHT) -> list[Document]:
    """Each chunk cut to the sentences that bear on ``question`` (see the module docstring).

    The top-ranked chunk stays whole: it holds the answer most often, and cutting it cost the
    most answers. In the others a sentence's score is the idf mass of the question's informative
    words it holds plus ``bigram_weight`` per question CJK character pair; a chunk keeps the
    sentences at ``keep_share`` of the best sentence's score among all the chunks or more, and
    at least its own best; each kept sentence brings the one after it, and a gap of up to ``gap``
    sentences between two kept ones is filled (an answer that runs over several sentences stays
    whole). A one-sentence chunk stays whole; if no sentence matches at all the chunks are
    returned as they are.
    ``metadata["spans"]`` holds the kept ranges as offsets in the source (``start`` + position in
    the chunk), ``metadata["compacted_from"]`` the chunk's length.

    >>> text = "四川有很多山。山里有竹林。熊猫住在竹林里。它们每天睡十个小时。动物园里也有很多游客。"
    >>> top = Document("熊猫是中国特有的动物。", metadata={"start": 0})
    >>> out = compact_chunks("熊猫每天睡多久？", [top, Document(text, metadata={"start": 100})])
    >>> out[0] == top, out[1].page_content, out[1].metadata["spans"]
    (True, '… 熊猫住在竹林里。它们每天睡十个小时。动物园里也有很多游客。', [[113, 142]])
    """
    from ragqa.words import fold, tokenize

    weights = _weights(question)
    pairs = _cjk_pairs(fold(question))
    if not docs or not weights:
        return list(docs)
    per_chunk: list[list[_Sentence]] = []
    for doc in docs:
        text = doc.page_content
        sentences = []
        for s, e in sentence_spans(text):
            words = set(tokenize(text[s:e]))
            folded = fold(text[s:e]).lower()
            # a Chinese word counts wherever its characters stand together (the question's 茶节
            # inside the text's 开茶节); other words only as whole words
            score = sum(x for w, x in weights.items() if (w in folded if _CJK_RUN.search(w) else w in words))
            if pairs:
                score += bigram_weight * len(pairs & _cjk_pairs(folded))
            sentences.append(_Sentence(s, e, score))
        per_chunk.append(sentences)
    best = max((s.score for sentences in per_chunk for s in sentences), default=0.0)
    if best <= 0:
        return list(docs)
    out: list[Document] = []
    for rank, (doc, sentences) in enumerate(zip(docs, per_chunk)):
        if rank == 0 or len(sentences) <= 1:
            out.append(doc)
            continue
        keep = {i for i, s in enumerate(sentences) if s.score > 0 and s.score >= keep_share * best}
        keep.add(max(range(len(sentences)), key=lambda i: sentences[i].score))
        keep |= {i + 1 for i in keep if i + 1 < len(sentences)}
        ordered = sorted(keep)
        for a, b in zip(ordered, ordered[1:]):
            if b - a <= gap + 1:
                keep.update(range(a + 1, b))
        out.append(_cut(doc, [sentences[i] for i in sorted(keep)]))
    return out


def _cut(doc: Document, kept: Sequence[_Sentence]) -> Document:
    text = doc.page_content
    runs: list[list[int]] = []  # [start, end) in the chunk, adjacent sentences merged
    for s in kept:
        if runs and runs[-1][1] >= s.start:
            runs[-1][1] = s.end
        else:
            runs.append([s.start, s.end])
    parts = [text[s:e].strip() for s, e in runs]
    body = GAP.join(p for p in parts if p)
    if runs[0][0] > 0:
        body = GAP.lstrip() + body
    if runs[-1][1] < len(text.rstrip()):
        body = body + GAP.rstrip()
    base = int(doc.metadata.get("start", 0) or 0)
    spans = [[base + s + (len(text[s:e]) - len(text[s:e].lstrip())), base + s + len(text[s:e].rstrip())]
             for s, e in runs]
    return Document(page_content=body, metadata={**doc.metadata, "spans": spans, "compacted_from": len(text)})
