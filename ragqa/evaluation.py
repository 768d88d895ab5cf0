"""Measure retrieval (and optionally answers) with ragqa's own pipeline.

Data: SQuAD-format JSON, or a simple query -> document file (JSONL or TSV, see ``load_pairs``).
Every distinct context (document) is split, embedded and indexed exactly as ``ask`` does;
every question (query) is relevant to its own context. Reported:

- ``recall@k``: a chunk of the question's own context is among the top k; ``mrr``: mean
  reciprocal rank of the first such chunk (0 past the deepest k).
- ``answer_in_context@k``: a top-k chunk contains a gold answer string (where the data has answers).
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

from ragqa.errors import ConfigError, InputError

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


def load_squad(path: str | Path, max_contexts: int | None = None,
               groups: list[int] | None = None) -> tuple[list[str], list[QAItem]]:
    """Distinct contexts and their questions from a SQuAD v1-style JSON file; ``groups``, when
    given, is filled with each context's article (its index in ``data``: one document).

    Anything else is an InputError naming the file, the first place that is not SQuAD-shaped
    (``data[0].paragraphs[2].qas``) and the shape expected.
    """
    path = Path(path)
    text = _read_text(path, "utf-8", f"a SQuAD-format JSON file {SQUAD_SHAPE}")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
            f"expected a SQuAD-format file {SQUAD_SHAPE}"
        ) from None

    def not_squad(where: str, expected: str) -> InputError:
        return InputError(f"{path}: not a SQuAD-format file: {where} should be {expected} (expected {SQUAD_SHAPE})")

    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise not_squad("the top level", 'an object with a "data" list')
    contexts: list[str] = []
    seen: dict[str, int] = {}
    items: list[QAItem] = []
    blank = 0  # contexts with no text: nothing to retrieve, so their questions are left out (noted)
    for i, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise not_squad(f"data[{i}]", 'an object with a "paragraphs" list')
        for j, para in enumerate(paragraphs):
            where = f"data[{i}].paragraphs[{j}]"
            if not (isinstance(para, dict) and isinstance(para.get("context"), str) and isinstance(para.get("qas"), list)):
                raise not_squad(where, 'an object with a "context" text and a "qas" list')
            context = para["context"]
            if not context.strip():
                blank += 1
                continue
            if context not in seen:
                if max_contexts is not None and len(contexts) >= max_contexts:
                    continue
                seen[context] = len(contexts)
                contexts.append(context)
                if groups is not None:
                    groups.append(i)
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
    if blank:
        log.warning("%s: %d paragraph%s with an empty context left out, with their questions", path, blank,
                    "s" if blank != 1 else "")
    if not items:
        raise InputError(f"{path}: no answerable questions found")
    return contexts, items


def _read_text(path: Path, encoding: str, expected: str) -> str:
    """A data file's text, or an InputError naming the file (and, if it is not UTF-8, what was expected)."""
    try:
        text = path.read_text(encoding)
        return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark (Windows editors write one) is no content
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text; expected {expected}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


PAIRS_SHAPE = ('JSONL lines {"query": "...", "document": "...", "answers": ["..."]} (answers optional; a line '
               'with only "document" adds a document no query is about) or TSV lines query<TAB>document')


def load_eval_data(path: str | Path, max_contexts: int | None = None,
                   groups: list[int] | None = None) -> tuple[list[str], list[QAItem]]:
    """Contexts and queries from a ``.jsonl`` or ``.tsv`` query -> document file, else SQuAD JSON.
    ``groups`` is filled with each context's document: its SQuAD article, or (a query -> document
    file) the context itself."""
    if Path(path).suffix.lower() in (".jsonl", ".tsv"):
        contexts, items = load_pairs(path, max_contexts)
        if groups is not None:
            groups.extend(range(len(contexts)))
        return contexts, items
    return load_squad(path, max_contexts, groups)


def load_pairs(path: str | Path, max_contexts: int | None = None) -> tuple[list[str], list[QAItem]]:
    """Distinct documents and their queries from a query -> document file.

    JSONL: one object per line, ``{"query": .., "document": .., "answers": [..], "id": ..}``;
    ``answers`` and ``id`` are optional, and a line with a document and no query adds a document
    that is only a distractor. TSV: ``query<TAB>document`` per line (a first line
    ``query<TAB>document`` is a header; an empty query adds a distractor). The same document text
    on several lines is one document. ``max_contexts`` keeps the first N distinct documents.
    """
    path = Path(path)
    lines = _read_text(path, "utf-8-sig", PAIRS_SHAPE).splitlines()
    tsv = path.suffix.lower() == ".tsv"
    contexts: list[str] = []
    seen: dict[str, int] = {}
    items: list[QAItem] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if tsv:
            parts = line.split("\t")
            if len(parts) != 2:
                raise InputError(f"{path}, line {n}: {len(parts)} tab-separated fields, expected 2 "
                                 f"(query<TAB>document)")
            if n == 1 and [p.strip().lower() for p in parts] == ["query", "document"]:
                continue
            row: Any = {"query": parts[0], "document": parts[1]}
        else:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}, line {n}: not valid JSON ({exc.msg}); expected {PAIRS_SHAPE}") from None
        document = row.get("document") if isinstance(row, dict) else None
        query = row.get("query", "") if isinstance(row, dict) else None
        answers = row.get("answers", []) if isinstance(row, dict) else None
        if not (isinstance(document, str) and document.strip() and isinstance(query, str)
                and isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
            raise InputError(f"{path}, line {n}: expected a non-empty \"document\" text, a \"query\" text and "
                             f"optionally an \"answers\" list of texts ({PAIRS_SHAPE})")
        document = document.strip()
        if document not in seen:
            if max_contexts is not None and len(contexts) >= max_contexts:
                continue
            seen[document] = len(contexts)
            contexts.append(document)
        if query.strip():
            qid = str(row.get("id", len(items))) if isinstance(row, dict) else str(len(items))
            items.append(QAItem(qid, query.strip(), seen[document], [a for a in answers if a.strip()]))
    if not items:
        raise InputError(f"{path}: no queries found; expected {PAIRS_SHAPE}")
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
    groups: Sequence[int] | None = None,
) -> Any:
    """One index over all contexts (chunk metadata ``context`` = context id), kept in an internal
    knowledge base as ``ask`` keeps files, so a second run embeds nothing.

    Each data set gets a knowledge base of its own: BM25's idf and average length come from the
    whole keyword index, so a shared one would make a set's BM25 scores depend on which other
    sets were evaluated before it. With ``groups`` (each context's document) every document is a
    record of its own (``view.groups``: document -> record id), so a question can be scoped to one
    as ``ask --doc`` scopes it; the one set of chunks and vectors is the same either way."""
    from ragqa.store import FileRecord, Manifest, content_hash, open_cache_kb

    digest = content_hash(json.dumps(list(contexts), ensure_ascii=False).encode())
    layout = "" if groups is None else content_hash(json.dumps(list(groups)).encode())[:8]
    kb = open_cache_kb(pipeline.settings, Manifest(pipeline.embedding_spec.cache_id, splitter_id),
                       purpose=f"eval-{digest[:12]}{'-' + layout if layout else ''}")
    names = {None: f"eval:{digest[:16]}"} if groups is None else {
        g: f"eval:{digest[:16]}/{g}" for g in dict.fromkeys(groups)}
    records = {r.path: r for r in kb.files() if r.status == "ok"}
    if any(name not in records for name in names.values()):
        chunks = [
            Document(page_content=t, metadata={"context": cid})
            for cid, context in enumerate(contexts) for t in split(context)
        ]
        vectors, tokens = pipeline.embed_chunks(chunks, "eval contexts")
        with kb.writing():
            for group, name in names.items():
                if name in records:
                    continue
                rows = [n for n, c in enumerate(chunks) if group is None or groups[c.metadata["context"]] == group]
                records[name] = kb.put_file(FileRecord(name, hash=f"{digest}:{group}", parser="eval/1"),
                                            [chunks[n] for n in rows], vectors[rows], [tokens[n] for n in rows])
    view = kb.view(sorted(records[name].id for name in names.values()))
    view.groups = {g: records[name].id for g, name in names.items()}
    view.document_of = lambda d: d.metadata.get("context")  # each context a document (abstain calibration)
    return view


@dataclass
class Candidates:
    """Per question, the vector and BM25 hits ``[(chunk id, score)]`` best first (None: not searched)."""

    vector: list[list[tuple[int, float]]] | None
    keyword: list[list[tuple[int, float]]] | None


def search_candidates(
    index: Any, embeddings: Any, questions: Sequence[str], n: int, *, vector: bool = True, keyword: bool = True,
    progress: bool = True, scopes: Sequence[int] | None = None,
) -> Candidates:
    """The top ``n`` of each search for every question: one batched vector pass, one BM25 pass.
    ``scopes``: per question, the one record (document) its search is limited to, inside the
    engine as ``ask --doc`` limits it."""
    from tqdm import tqdm

    from ragqa.embeddings import embed_queries

    views = {s: index.kb.view([s]) for s in dict.fromkeys(scopes)} if scopes is not None else {}
    vec: list[list[tuple[int, float]]] | None = None
    kw: list[list[tuple[int, float]]] | None = None
    if vector:
        vec = []
        for i in tqdm(range(0, len(questions), QUERY_BATCH), desc="vector search", unit="batch", disable=not progress):
            vecs = embed_queries(embeddings, list(questions[i:i + QUERY_BATCH]))
            if scopes is None:
                vec.extend(index.search_batch_ids(vecs, n))
            else:
                vec.extend(views[scopes[i + j]].search_ids(v, n) for j, v in enumerate(vecs))
    if keyword:
        kw = [(index if scopes is None else views[scopes[j]]).bm25_search(q, n)
              for j, q in enumerate(tqdm(questions, desc="BM25 search", unit="q", disable=not progress))]
    return Candidates(vec, kw)


def rank_candidates(kind: str, candidates: Candidates, questions: Sequence[str], depth: int,
                    fusion: Any = None, words: Callable[[int], set[str]] | None = None) -> list[list[int]]:
    """Chunk ids for each question, best first, as the named retriever ranks the candidates
    (``hybrid`` fuses them with ``fusion``, default: the default fusion; ``words`` gives a
    chunk's BM25 words to a query-adaptive fusion)."""
    from ragqa.fusion import make_fusion

    if kind == "vector":
        return [[cid for cid, _ in hits][:depth] for hits in candidates.vector or []]
    if kind == "bm25":
        return [[cid for cid, _ in hits][:depth] for hits in candidates.keyword or []]
    fuse = make_fusion(fusion)
    return [[cid for cid, _ in fuse(q, v, k, words)][:depth]
            for q, v, k in zip(questions, candidates.vector or [], candidates.keyword or [])]


def _memo_words(text_of: Callable[[int], str]) -> Callable[[int], set[str]]:
    """chunk id -> its BM25 words, each chunk segmented once."""
    from ragqa.words import tokenize

    seen: dict[int, set[str]] = {}

    def words(cid: int) -> set[str]:
        if cid not in seen:
            seen[cid] = set(tokenize(text_of(cid)))
        return seen[cid]
    return words


def rank_chunks(
    kind: str, index: Any, embeddings: Any, questions: Sequence[str], depth: int,
    candidates: int = 20, progress: bool = True, fusion: Any = None, reranker: Any = None,
) -> list[list[int]]:
    """Chunk ids for each question, best first, the way the named retriever ranks them; with a
    reranker, it re-scores each question's top ``candidates``."""
    n = max(depth, candidates) if kind == "hybrid" or reranker is not None else depth
    found = search_candidates(index, embeddings, questions, n, vector=kind != "bm25", keyword=kind != "vector",
                              progress=progress)
    words = _memo_words(lambda cid: "".join(d.page_content for d in index.get_chunks([cid])))
    rankings = rank_candidates(kind, found, questions, n, fusion, words)
    if reranker is not None:
        rankings = rerank(reranker, index, questions, rankings, candidates, progress)
    return [r[:depth] for r in rankings]


def rerank(reranker: Any, index: Any, questions: Sequence[str], rankings: Sequence[Sequence[int]],
           candidates: int, progress: bool = True) -> list[list[int]]:
    """Each ranking's top ``candidates`` reordered by the reranker's scores (ties keep their order)."""
    from tqdm import tqdm

    out = []
    for q, ranking in tqdm(list(zip(questions, rankings)), desc="reranking", unit="q", disable=not progress):
        top = list(ranking[:candidates])
        texts = [d.page_content for d in index.get_chunks(top)]
        scores = reranker.score(q, texts) if top else []
        order = sorted(range(len(top)), key=lambda j: -scores[j])
        out.append([top[j] for j in order])
    return out


def parse_compare(text: str, fusion: str) -> list[tuple[str, str, str | None]]:
    """``vector,bm25,hybrid,hybrid:rrf`` -> [(label, retriever, fusion)]; ``hybrid`` uses ``fusion``,
    ``hybrid:SPEC`` (or a fusion spec alone) that fusion.

    >>> parse_compare("vector,bm25,hybrid,rrf", "zscore:w=0.6")
    [('vector', 'vector', None), ('bm25', 'bm25', None), ('hybrid', 'hybrid', 'zscore:w=0.6:lift=1:below=0.5:drop=0.4:mass=80:stand=0.2:usual=2.5:gap=0.5'), ('rrf', 'hybrid', 'rrf:k=60')]
    """
    from ragqa.fusion import make_fusion
    from ragqa.retrieval import RETRIEVERS

    rows: list[tuple[str, str, str | None]] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item in ("vector", "bm25"):
            rows.append((item, item, None))
        elif item == "hybrid":
            rows.append((item, item, make_fusion(fusion).spec))
        else:
            try:
                spec = make_fusion(item.removeprefix("hybrid:")).spec
            except ConfigError as exc:
                raise ConfigError(f"--compare: {item!r} is neither a retriever ({', '.join(RETRIEVERS)}) nor a "
                                 f"fusion: {exc}") from None
            rows.append((item, "hybrid", spec))
    if not rows:
        raise ConfigError("--compare needs retrievers separated by commas, e.g. vector,bm25,hybrid")
    return rows


def prompt_metrics(rankings: Sequence[Sequence[int]], items: Sequence[QAItem], chunk_docs: dict[int, Document],
                   k: int, context: str) -> dict[str, float]:
    """What the model would read: ``context_tokens``, the mean estimated tokens (ragqa.words.
    estimate_tokens) of the top-k chunks as the stuff prompt lays them out, whole or cut to their
    sentences (``context``); ``answer_in_prompt``, the share of questions with answers whose gold
    answer is inside that text (with no context budget, which a 4,096-token window rarely cuts)."""
    from ragqa.chains import format_context
    from ragqa.context import compact_chunks
    from ragqa.words import estimate_tokens

    tokens, found, answered = 0, 0.0, 0
    for it, ranking in zip(items, rankings):
        docs = [chunk_docs[c] for c in ranking[:k]]
        text = format_context(compact_chunks(it.question, docs) if context == "sentences" else docs)
        tokens += estimate_tokens(text)
        if it.answers:
            answered += 1
            found += contains_answer(text, it.answers)
    out = {"context_tokens": round(tokens / max(len(items), 1), 1)}
    if answered:
        out["answer_in_prompt"] = round(found / answered, 4)
    return out


def _ranking_metrics(rankings: Sequence[Sequence[int]], items: Sequence[QAItem], ctx_of: dict[int, int],
                     norm_chunks: dict[int, str], k: int) -> dict[str, float]:
    """recall@1/3/5/10, recall@k, MRR; answer_in_context@.. over the questions that have answers."""
    doc_hits = [[ctx_of[c] == it.context_id for c in ranking] for it, ranking in zip(items, rankings)]
    report: dict[str, float] = retrieval_metrics(doc_hits)
    report[f"recall@{k}(k)"] = round(sum(any(h[:k]) for h in doc_hits) / len(items), 4)
    answered = [(it, ranking) for it, ranking in zip(items, rankings) if it.answers]
    if answered:
        ans_hits = [
            [any(normalize_answer(a) in norm_chunks[c] for a in it.answers) for c in ranking]
            for it, ranking in answered
        ]
        for kk, v in retrieval_metrics(ans_hits).items():
            if kk.startswith("recall@"):
                report["answer_in_context@" + kk.split("@")[1]] = v
        report[f"answer_in_context@{k}(k)"] = round(sum(any(h[:k]) for h in ans_hits) / len(ans_hits), 4)
    return report


def evaluate(
    data_path: str | Path, pipeline: Any, *, max_contexts: int | None = None, limit: int | None = None,
    answers: int = 0, seed_baseline: bool = False, progress: bool = True, compare: str | None = None,
    scoped: bool = False, distractors: str | Path | None = None,
) -> dict[str, Any]:
    """Retrieval metrics for every question (or the first ``limit``), and answer metrics for the
    first ``answers`` questions when asked. ``seed_baseline`` reproduces the seed scripts'
    retrieval: LangChain's default English separators, 600/100, k = 1, vector search.
    ``compare`` ("vector,bm25,hybrid") measures several retrievers over one index and one search
    each: their metrics are in ``report["compare"]``, by label, in the order given. ``scoped``
    searches each question only within its own document (SQuAD: its article; a query -> document
    file: its document), as ``ask --kb --doc`` would for a user who names the document.
    With ``abstain = auto`` the report's ``abstain`` holds ``answerable_kept`` (the share of the
    questions ragqa would answer); ``distractors`` (a file of questions the data cannot answer)
    adds ``recall`` (the share of those it abstains on) and ``precision``."""
    from ragqa.fusion import make_fusion

    s = pipeline.settings
    t0 = time.perf_counter()
    groups: list[int] | None = [] if scoped else None
    contexts, items = load_eval_data(data_path, max_contexts, groups)
    if limit:
        items = items[:limit]
    if seed_baseline:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        seed_splitter = RecursiveCharacterTextSplitter(chunk_size=600, chunk_overlap=100)
        split, splitter_id, kind, k = seed_splitter.split_text, {"kind": "langchain-default", "chunk_size": 600, "overlap": 100}, "vector", 1
    else:
        split, splitter_id, kind, k = pipeline.splitter.split_text, pipeline.splitter_settings(), s.retriever, s.k
    if compare:
        rows = parse_compare(compare, s.fusion)
    else:
        rows = [(kind, kind, make_fusion(s.fusion).spec if kind == "hybrid" else None)]
    if compare and answers:
        raise ConfigError("--answers measures one retriever's answers; drop --compare (or --answers)")
    if answers and not any(it.answers for it in items[:answers]):
        raise InputError(f"{data_path}: --answers needs gold answers, and these queries have none "
                         '(give each JSONL line an "answers" list)')
    index = build_eval_index(contexts, split, pipeline, splitter_id, groups)
    needs_vector = any(r != "bm25" for _, r, _ in rows)
    embeddings = pipeline.embeddings if needs_vector else None
    reranker = pipeline.reranker
    t_index = time.perf_counter() - t0
    depth = max(max(KS), k)
    n = max(depth, s.rerank_candidates) if any(r == "hybrid" for _, r, _ in rows) or reranker else depth
    t1 = time.perf_counter()
    questions = [it.question for it in items]
    scopes = [index.groups[groups[it.context_id]] for it in items] if groups is not None else None
    found = search_candidates(index, embeddings, questions, n, vector=needs_vector,
                              keyword=any(r != "vector" for _, r, _ in rows), progress=progress, scopes=scopes)
    chunks = list(index.kb.iter_chunks(index.file_ids))
    text_of = {int(c.metadata["chunk_id"]): c.page_content for c in chunks}
    words = _memo_words(text_of.__getitem__)
    results: dict[str, tuple[list[list[int]], float]] = {}
    for label, retriever, fusion in rows:
        t = time.perf_counter()
        rankings = rank_candidates(retriever, found, questions, n, fusion, words)
        if reranker is not None:
            rankings = rerank(reranker, index, questions, rankings, s.rerank_candidates, progress)
        results[label] = ([r[:depth] for r in rankings], time.perf_counter() - t)
    t_search = time.perf_counter() - t1
    ctx_of = {int(c.metadata["chunk_id"]): c.metadata["context"] for c in chunks}
    norm_chunks = {int(c.metadata["chunk_id"]): normalize_answer(c.page_content) for c in chunks}
    chunk_docs = {int(c.metadata["chunk_id"]): c for c in chunks}
    settings = {"data": str(data_path), "embedding_model": pipeline.embedding_spec.name if s.embedding_base_url
                else s.embedding_model, "retriever": kind, "k": k, "context": s.context,
                "splitter": splitter_id, "seed_baseline": seed_baseline, "scoped": scoped}
    if kind == "hybrid" and not compare:
        settings["fusion"] = rows[0][2]
    if reranker is not None:
        settings.update(reranker=s.reranker, rerank_candidates=s.rerank_candidates)
    report: dict[str, Any] = {}
    if compare:
        report["compare"] = {
            label: {"retriever": retriever, **({"fusion": fusion} if fusion else {}),
                    **_ranking_metrics(results[label][0], items, ctx_of, norm_chunks, k),
                    **prompt_metrics(results[label][0], items, chunk_docs, k, s.context),
                    "rank_s": round(results[label][1], 3)}
            for label, retriever, fusion in rows
        }
        settings["compare"] = [label for label, _, _ in rows]
    else:
        report.update(_ranking_metrics(results[kind][0], items, ctx_of, norm_chunks, k))
        report.update(prompt_metrics(results[kind][0], items, chunk_docs, k, s.context))
    report.update(
        questions=len(items), contexts=len(contexts), chunks=len(chunks),
        seconds={"index": round(t_index, 2), "search": round(t_search, 2)},
        settings=settings,
    )
    abstained: set[int] = set()
    if distractors is not None or (s.abstain == "auto" and s.chain == "stuff" and not compare and not scoped):
        report["abstain"], abstained = _abstain_report(pipeline, index, items, found, words, distractors,
                                                       scoped, progress)
    if answers:
        report["answers"] = _evaluate_answers(pipeline, index, items[:answers], results[kind][0], k, progress,
                                              abstained)
    return report


def _abstain_report(pipeline: Any, index: Any, items: Sequence[QAItem], found: "Candidates",
                    words: Callable[[int], set[str]], distractors: str | Path | None, scoped: bool,
                    progress: bool) -> tuple[dict[str, Any], set[int]]:
    """How ragqa's abstention (``ragqa.abstain``, calibrated on the index as on any KB) treats the
    data's own questions and, with ``distractors``, questions the data cannot answer; and which of
    the data's questions abstain (by position)."""
    from ragqa.abstain import signals_of

    s = pipeline.settings
    if scoped:
        raise ConfigError("abstention is measured over the whole index: drop --scoped (or --distractors)")
    if found.vector is None or found.keyword is None:
        found = search_candidates(index, pipeline.embeddings, [it.question for it in items], 1, progress=progress)
    cal = pipeline.calibration(index)
    if cal is None:
        from ragqa.abstain import MIN_CHUNKS

        if distractors is not None:
            raise InputError(f"--distractors: the data has too few chunks to calibrate abstention on "
                             f"({MIN_CHUNKS} needed)")
        return {"note": f"too few chunks to calibrate abstention on ({MIN_CHUNKS} needed): off"}, set()
    own = [cal.decide(signals_of(it.question, v, kw, words), s.abstain_strictness)["answerable"]
           for it, v, kw in zip(items, found.vector, found.keyword)]
    out: dict[str, Any] = {"answerable_kept": round(sum(own) / max(len(own), 1), 4),
                           "strictness": s.abstain_strictness}
    if distractors is not None:
        _, others = load_eval_data(distractors)
        questions = [it.question for it in others]
        other = search_candidates(index, pipeline.embeddings, questions, 1, progress=progress)
        off = [not cal.decide(signals_of(q, v, kw, words), s.abstain_strictness)["answerable"]
               for q, v, kw in zip(questions, other.vector or [], other.keyword or [])]
        wrong = len(own) - sum(own)  # answerable questions abstained on
        out.update(recall=round(sum(off) / max(len(off), 1), 4),
                   precision=round(sum(off) / max(sum(off) + wrong, 1), 4), distractors=len(off),
                   distractor_data=str(distractors))
    out["calibration"] = {"chunks": cal.chunks, "documents": cal.documents, "mode": cal.mode, "seconds": cal.seconds}
    return out, {i for i, kept in enumerate(own) if not kept}


def _evaluate_answers(pipeline: Any, index: Any, items: Sequence[QAItem], rankings: Sequence[Sequence[int]],
                      k: int, progress: bool, abstained: set[int] = frozenset()) -> dict[str, Any]:
    """EM/F1 of the model's answers; a question ragqa abstains on (``abstained``, by position)
    gets the abstention message as its answer, as a user would."""
    from tqdm import tqdm

    from ragqa.abstain import message
    from ragqa.chains import make_qa_chain
    from ragqa.citations import strip_markers

    cite = pipeline.settings.citations == "on"
    checks = {"answers_right": 0, "right_with_citations": 0, "citations_with_answer": 0, "citations": 0,
              "all_citations": 0, "all_citations_with_answer": 0, "claims": 0, "supported": 0}

    lm = pipeline.language_model()
    llm, pb = lm.llm, lm.pb
    em = f1 = contained = 0.0
    samples = []
    stats = getattr(llm, "stats", None)  # a ragqa model's: prompt tokens and time to the first token
    prompt_tokens, ttft = [], []
    for n, (item, ranking) in enumerate(tqdm(list(zip(items, rankings)), desc="answering", unit="q",
                                             disable=not progress)):
        if n in abstained:
            prediction = message(item.question)
            em += exact_match(prediction, item.answers)
            f1 += f1_score(prediction, item.answers)
            contained += contains_answer(prediction, item.answers)
            continue
        docs = index.get_chunks(ranking[:k])
        chain = make_qa_chain(llm, _FixedRetriever(docs=docs), pb, pipeline.settings.chain,
                              context=pipeline.settings.context, citations=cite, embeddings=pipeline._embeddings)
        result = chain.invoke({"question": item.question})
        prediction = strip_markers(result["answer"]).strip()  # scored as the model wrote it
        if cite:
            _count_citations(result, prediction, item.answers, checks)
        if stats is not None and stats.prompt_tokens:
            prompt_tokens.append(stats.prompt_tokens)
            ttft.append(stats.prompt_seconds)
        em += exact_match(prediction, item.answers)
        f1 += f1_score(prediction, item.answers)
        contained += contains_answer(prediction, item.answers)
        if len(samples) < 5:
            samples.append({"question": item.question, "gold": item.answers, "prediction": prediction})
    n = len(items) or 1
    out: dict[str, Any] = {"n": len(items), "em": round(em / n, 4), "f1": round(f1 / n, 4),
                           "contains_answer": round(contained / n, 4), "abstained": sum(1 for i in abstained if i < len(items))}
    if ttft:  # the last step's prompt for refine
        out.update(prompt_tokens=round(sum(prompt_tokens) / len(prompt_tokens), 1),
                   ttft_s=round(sum(ttft) / len(ttft), 3))
    if cite:
        if checks["citations"]:
            out["citation_precision"] = round(checks["citations_with_answer"] / checks["citations"], 4)
        if checks["claims"]:
            out["supported_rate"] = round(checks["supported"] / checks["claims"], 4)
        out["citation_checks"] = checks
    out["samples"] = samples
    return out


def _count_citations(result: dict[str, Any], prediction: str, golds: Sequence[str], checks: dict[str, int]) -> None:
    """Citation precision counts the answers that contain a gold answer: of the citations of their
    sentences that contain it, those whose quote contains it too (``all_citations``: of every
    citation of those answers). The supported rate counts every answer's checkable sentences
    (a claim: informative words, not "the text does not say"): those a source supports."""
    from ragqa.citations import Citer, answer_sentences, strip_markers

    citations = result.get("citations") or []
    if contains_answer(prediction, golds):
        checks["answers_right"] += 1
        checks["right_with_citations"] += bool(citations)
        # the citations of the sentences that state the answer (a model that copies a whole passage
        # cites every sentence of it, rightly, and most of them do not hold the answer)
        stating = {i for i, x in enumerate(answer_sentences(result.get("answer", "")))
                   if contains_answer(strip_markers(x), golds)}
        of_answer = [c for c in citations if c["sentence"] in stating]
        checks["citations"] += len(of_answer)
        checks["citations_with_answer"] += sum(bool(contains_answer(c["quote"], golds)) for c in of_answer)
        checks["all_citations"] += len(citations)
        checks["all_citations_with_answer"] += sum(bool(contains_answer(c["quote"], golds)) for c in citations)
    claims = Citer(result.get("source_documents") or []).claims(prediction)
    checks["claims"] += claims
    checks["supported"] += max(0, claims - len(result.get("unsupported") or []))


class _FixedRetriever(BaseRetriever):
    """Returns the documents it was given (the ranking was computed in batch)."""

    docs: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        return list(self.docs)
