"""Measure retrieval (and optionally answers) on SQuAD-format data with ragqa's own pipeline.

Every distinct context becomes a document, split, embedded and indexed exactly as ``ask`` does;
every question is a query whose relevant document is its own context. Reported:

- ``recall@k``: a chunk of the question's own context is among the top k; ``mrr``: mean
  reciprocal rank of the first such chunk (0 past the deepest k).
- ``answer_in_context@k``: a top-k chunk contains a gold answer string.
- with ``answers``: the chain and LLM answer a sample; EM and F1 against the gold answers
  (SQuAD normalisation for English, character level for Chinese) and answer containment.
"""

from __future__ import annotations

import json
import logging
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from ragqa.errors import InputError

log = logging.getLogger(__name__)

KS = (1, 3, 5, 10)
QUERY_BATCH = 256


@dataclass
class QAItem:
    qid: str
    question: str
    context_id: int
    answers: list[str]


SQUAD_SHAPE = '{"data": [{"paragraphs": [{"context": "...", "qas": [{"question": "...", "answers": [{"text": "..."}]}]}]}]}'


def load_squad(path: str | Path, max_contexts: int | None = None) -> tuple[list[str], list[QAItem]]:
    """Distinct contexts and their questions from a SQuAD v1-style JSON file.

    Anything else is an InputError naming the file, the first place that is not SQuAD-shaped
    (``data[0].paragraphs[2].qas``) and the shape expected.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; expected a SQuAD-format JSON file {SQUAD_SHAPE}") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            f"expected a SQuAD-format file {SQUAD_SHAPE}"
        ) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None

    def not_squad(where: str, expected: str) -> InputError:
        return InputError(f"{path}: not a SQuAD-format file: {where} should be {expected} (expected {SQUAD_SHAPE})")

    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise not_squad("the top level", 'an object with a "data" list')
    contexts: list[str] = []
    seen: dict[str, int] = {}
    items: list[QAItem] = []
    for i, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise not_squad(f"data[{i}]", 'an object with a "paragraphs" list')
        for j, para in enumerate(paragraphs):
            where = f"data[{i}].paragraphs[{j}]"
            if not (isinstance(para, dict) and isinstance(para.get("context"), str) and isinstance(para.get("qas"), list)):
                raise not_squad(where, 'an object with a "context" text and a "qas" list')
            context = para["context"]
            if context not in seen:
                if max_contexts is not None and len(contexts) >= max_contexts:
                    continue
                seen[context] = len(contexts)
                contexts.append(context)
            cid = seen[context]
            for k, qa in enumerate(para["qas"]):
                answers = qa.get("answers", []) if isinstance(qa, dict) else None
                question = qa.get("question", "") if isinstance(qa, dict) else None
                if not isinstance(answers, list) or not isinstance(question, str):
                    raise not_squad(f"{where}.qas[{k}]", 'an object with a "question" text and an "answers" list')
                texts = [a.get("text") if isinstance(a, dict) else None for a in answers]
                if not all(isinstance(t, str) for t in texts):
                    raise not_squad(f"{where}.qas[{k}].answers", 'a list of objects with a "text"')
                texts = [t for t in texts if t.strip()]
                if question.strip() and texts:
                    items.append(QAItem(str(qa.get("id", len(items))), question.strip(), cid, texts))
    if not items:
        raise InputError(f"{path}: no answerable questions found")
    return contexts, items


# -- metrics ---------------------------------------------------------------------------------

def retrieval_metrics(hits: Sequence[Sequence[bool]], ks: Sequence[int] = KS) -> dict[str, float]:
    """recall@k and MRR from per-query hit lists (``hits[q][r]``: is the rank-r result relevant).

    >>> retrieval_metrics([[False, True], [True, False], [False, False]], ks=(1, 2))
    {'recall@1': 0.3333, 'recall@2': 0.6667, 'mrr': 0.5}
    """
    n = len(hits) or 1
    out = {f"recall@{k}": round(sum(any(h[:k]) for h in hits) / n, 4) for k in ks}
    rr = 0.0
    for h in hits:
        for rank, hit in enumerate(h, 1):
            if hit:
                rr += 1.0 / rank
                break
    out["mrr"] = round(rr / n, 4)
    return out


_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_PUNCT = set(string.punctuation) | set("，。！？；：、“”‘’（）《》〈〉【】「」『』—…·～　")


def is_chinese(text: str) -> bool:
    return bool(_CJK.search(text))


def normalize_answer(text: str) -> str:
    """SQuAD normalisation for English (lower, no punctuation/articles); for Chinese, no
    punctuation or spaces."""
    if is_chinese(text):
        return "".join(ch for ch in text.lower() if ch not in _PUNCT and not ch.isspace())
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _units(text: str) -> list[str]:
    """Characters for Chinese (character-level F1), words for English."""
    norm = normalize_answer(text)
    return list(norm) if is_chinese(text) else norm.split()


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """Best F1 over the gold answers; tokens are characters in Chinese, words in English.

    >>> round(f1_score("四川省成都", ["成都"]), 3), f1_score("the Eiffel Tower", ["Eiffel tower"])
    (0.571, 1.0)
    """
    best = 0.0
    for gold in golds:
        pred_units = _units(prediction) if is_chinese(gold) else normalize_answer(prediction).split()
        gold_units = _units(gold)
        common = sum((Counter(pred_units) & Counter(gold_units)).values())
        if common:
            p, r = common / len(pred_units), common / len(gold_units)
            best = max(best, 2 * p * r / (p + r))
    return best


def contains_answer(prediction: str, golds: Sequence[str]) -> float:
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) and normalize_answer(g) in pred for g in golds))


# -- index and retrieval -----------------------------------------------------------------------

def build_eval_index(
    contexts: Sequence[str], split: Callable[[str], list[str]], pipeline: Any, splitter_id: dict[str, Any],
) -> Any:
    """One index over all contexts (chunk metadata ``context`` = context id), kept in an internal
    knowledge base as ``ask`` keeps files, so a second run embeds nothing."""
    from ragqa.store import FileRecord, Manifest, content_hash, open_cache_kb

    kb = open_cache_kb(pipeline.settings, Manifest(pipeline.embedding_spec.cache_id, splitter_id), purpose="eval")
    digest = content_hash(json.dumps(list(contexts), ensure_ascii=False).encode())
    record = next((r for r in kb.files() if r.hash == digest and r.status == "ok"), None)
    if record is None:
        chunks = [
            Document(page_content=t, metadata={"context": cid})
            for cid, context in enumerate(contexts) for t in split(context)
        ]
        vectors, tokens = pipeline.embed_chunks(chunks, "eval contexts")
        with kb.writing():
            record = kb.put_file(FileRecord(f"eval:{digest[:16]}", hash=digest, parser="eval/1"), chunks, vectors, tokens)
    return kb.view([record.id])


def rank_chunks(
    kind: str, index: Any, embeddings: Any, questions: Sequence[str], depth: int,
    candidates: int = 20, progress: bool = True,
) -> list[list[int]]:
    """Chunk ids for each question, best first, the way the named retriever ranks them."""
    from tqdm import tqdm

    from ragqa.embeddings import embed_queries
    from ragqa.retrieval import fuse_rankings

    vector: list[list[int]] = []
    keyword: list[list[int]] = []
    n = max(depth, candidates) if kind == "hybrid" else depth
    if kind in ("vector", "hybrid"):
        for i in tqdm(range(0, len(questions), QUERY_BATCH), desc="vector search", unit="batch", disable=not progress):
            vecs = embed_queries(embeddings, list(questions[i:i + QUERY_BATCH]))
            vector.extend([cid for cid, _ in row] for row in index.search_batch_ids(vecs, n))
    if kind in ("bm25", "hybrid"):
        for q in tqdm(questions, desc="BM25 search", unit="q", disable=not progress):
            keyword.append([cid for cid, _ in index.bm25_search(q, n)])
    if kind == "vector":
        return vector
    if kind == "bm25":
        return keyword
    return [[cid for cid, _ in fuse_rankings([v, k])][:depth] for v, k in zip(vector, keyword)]


def evaluate(
    data_path: str | Path, pipeline: Any, *, max_contexts: int | None = None, limit: int | None = None,
    answers: int = 0, seed_baseline: bool = False, progress: bool = True,
) -> dict[str, Any]:
    """Retrieval metrics for every question (or the first ``limit``), and answer metrics for the
    first ``answers`` questions when asked. ``seed_baseline`` reproduces the seed scripts'
    retrieval: LangChain's default English separators, 600/100, k = 1, vector search."""
    s = pipeline.settings
    t0 = time.perf_counter()
    contexts, items = load_squad(data_path, max_contexts)
    if limit:
        items = items[:limit]
    if seed_baseline:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        seed_splitter = RecursiveCharacterTextSplitter(chunk_size=600, chunk_overlap=100)
        split, splitter_id, kind, k = seed_splitter.split_text, {"kind": "langchain-default", "chunk_size": 600, "overlap": 100}, "vector", 1
    else:
        split, splitter_id, kind, k = pipeline.splitter.split_text, pipeline.splitter_settings(), s.retriever, s.k
    index = build_eval_index(contexts, split, pipeline, splitter_id)
    embeddings = pipeline.embeddings
    t_index = time.perf_counter() - t0
    depth = max(max(KS), k)
    t1 = time.perf_counter()
    rankings = rank_chunks(kind, index, embeddings, [it.question for it in items], depth,
                           s.rerank_candidates, progress)
    t_search = time.perf_counter() - t1
    chunks = list(index.kb.iter_chunks(index.file_ids))
    ctx_of = {int(c.metadata["chunk_id"]): c.metadata["context"] for c in chunks}
    norm_chunks = {int(c.metadata["chunk_id"]): normalize_answer(c.page_content) for c in chunks}
    doc_hits = [[ctx_of[c] == it.context_id for c in ranking] for it, ranking in zip(items, rankings)]
    ans_hits = [
        [any(normalize_answer(a) in norm_chunks[c] for a in it.answers) for c in ranking]
        for it, ranking in zip(items, rankings)
    ]
    report: dict[str, Any] = retrieval_metrics(doc_hits)
    report[f"recall@{k}(k)"] = round(sum(any(h[:k]) for h in doc_hits) / len(items), 4)
    for kk, v in retrieval_metrics(ans_hits).items():
        if kk.startswith("recall@"):
            report["answer_in_context@" + kk.split("@")[1]] = v
    report[f"answer_in_context@{k}(k)"] = round(sum(any(h[:k]) for h in ans_hits) / len(items), 4)
    report.update(
        questions=len(items), contexts=len(contexts), chunks=len(chunks),
        seconds={"index": round(t_index, 2), "search": round(t_search, 2)},
        settings={"data": str(data_path), "embedding_model": s.embedding_model, "retriever": kind, "k": k,
                  "splitter": splitter_id, "seed_baseline": seed_baseline},
    )
    if answers:
        report["answers"] = _evaluate_answers(pipeline, index, items[:answers], rankings, k, progress)
    return report


def _evaluate_answers(pipeline: Any, index: Any, items: Sequence[QAItem], rankings: Sequence[Sequence[int]],
                      k: int, progress: bool) -> dict[str, Any]:
    from tqdm import tqdm

    from ragqa.chains import make_qa_chain

    lm = pipeline.language_model()
    llm, pb = lm.llm, lm.pb
    em = f1 = contained = 0.0
    samples = []
    for item, ranking in tqdm(list(zip(items, rankings)), desc="answering", unit="q", disable=not progress):
        docs = index.get_chunks(ranking[:k])
        chain = make_qa_chain(llm, _FixedRetriever(docs=docs), pb, pipeline.settings.chain)
        prediction = chain.invoke({"question": item.question})["answer"].strip()
        em += exact_match(prediction, item.answers)
        f1 += f1_score(prediction, item.answers)
        contained += contains_answer(prediction, item.answers)
        if len(samples) < 5:
            samples.append({"question": item.question, "gold": item.answers, "prediction": prediction})
    n = len(items) or 1
    return {"n": len(items), "em": round(em / n, 4), "f1": round(f1 / n, 4),
            "contains_answer": round(contained / n, 4), "samples": samples}


class _FixedRetriever(BaseRetriever):
    """Returns the documents it was given (the ranking was computed in batch)."""

    docs: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        return list(self.docs)
