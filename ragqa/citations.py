"""Citations: which sentence of which source supports each sentence of an answer, checked by ragqa.

Rivals have the model write ``[n]`` markers and trust them. Here every answer sentence is aligned
to the sentences of the passages the model read (single sentences and pairs of neighbours), and
support is decided by ragqa:

- word overlap: the share of the answer sentence's idf mass (``ragqa.words`` words: jieba for
  Chinese, a Chinese word counting wherever its characters stand together; Latin words without
  stop words) found in the quote; supported from ``SUPPORT`` (0.6) of the mass. A sentence
  that joins two facts gets a second quote when the first leaves a fifth of it uncovered;
- numbers: every number of the answer sentence must be in the quote (a wrong year, amount or
  count is the commonest unsupported claim); a quote with none of its numbers never supports;
- embedding similarity: among the windows within ``TIE`` of the best overlap, the one the
  embedding model finds closest to the answer sentence is quoted.

A marker the model wrote is kept only where its source supports the sentence; a supported
sentence without one gets the best source's; a sentence with informative words and no support
is listed in ``unsupported``. Sentences that make no claim ("the passages do not mention it")
and those without informative words are neither. A quote is the file's own text at ``[start,
end)`` (the offset convention of ``sources``: for PDFs and Office files, of the page text).

``Citer.stream`` does it while the answer streams: a sentence is passed on, with its markers,
as soon as the next one has begun.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.documents import Document

SUPPORT = 0.6  # share of an answer sentence's idf mass its quotes must hold
RESIDUAL = 0.2  # a second quote is looked for when the first leaves this share of the mass uncovered
TIE = 0.1  # windows this close to the best overlap are told apart by embedding similarity
PAIR_GAIN = 0.15  # a two-sentence quote only when it holds this much more than the best single one
MIN_MASS = 2.5  # an answer sentence with less informative idf mass makes no checkable claim
PASSAGE_VECTORS = 4096  # passage sentences' vectors a server keeps across answers (1.5 KB each at 384 dims)

_MARKER = re.compile(r"\s*[\[【]\s*(\d{1,2}(?:\s*[,，、]\s*\d{1,2})*)\s*[\]】]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_NO_CLAIM = re.compile(
    r"没有提到|未提到|没有提及|未提及|没有说明|未说明|没有相关|无法回答|无法确定|不清楚|没有找到|没有答案|"
    r"do(?:es)? not (?:mention|say|contain|state|specify)|not mentioned|no information|cannot be determined|"
    r"not (?:stated|specified|provided)|I don't know|I do not know|"
    r"^\W*(?:yes|no|ok|okay|sure|right|是的?|对的?|不是|没有|好的?)\W*$", re.IGNORECASE)


@dataclass
class Citation:
    n: int  # the source's number, as in the prompt and ``sources`` (from 1)
    source: str
    start: int  # offsets in the file (or its page) of the quote
    end: int
    quote: str
    sentence: int  # the answer sentence it supports (from 0)
    page: int | None = None
    page_label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Cited:
    answer: str  # with ragqa's markers
    citations: list[Citation] = field(default_factory=list)
    unsupported: list[int] = field(default_factory=list)  # answer sentences no source supports
    sentences: int = 0  # answer sentences seen (claims or not)
    claims: int = 0  # of them, those with a checkable claim


@dataclass(frozen=True)
class _Window:
    n: int  # source number
    start: int  # in the chunk's text
    end: int
    words: frozenset[str]
    folded: str
    numbers: frozenset[str]
    single: int | None = None  # a pair of sentences: the index of the window of its first alone
    second: int | None = None  # ... and of its second alone


def _numbers(text: str) -> frozenset[str]:
    return frozenset(x.replace(",", "") for x in _NUMBER.findall(text))


def strip_markers(text: str) -> str:
    """The text without ``[n]`` / ``【n】`` markers."""
    return _MARKER.sub("", text)


class Citer:
    """Aligns answer sentences to the sentences of ``sources`` (the passages, numbered from 1 as the
    prompt numbers them); ``embeddings`` (optional) picks among near ties."""

    def __init__(self, sources: Sequence[Document] | Callable[[], Sequence[Document]],
                 embeddings: Any = None) -> None:
        self._given = sources  # or a function giving them: a stream learns its passages first
        self.embeddings = embeddings
        self._vectors: dict[tuple[int, int, int], list[float]] = {}
        self.index = 0  # answer sentences cited so far
        self._windows: list[_Window] | None = None

    @property
    def windows(self) -> list[_Window]:
        if self._windows is None:
            self._windows = self._build()
        return self._windows

    def _build(self) -> list[_Window]:
        from ragqa.splitting import sentence_spans
        from ragqa.words import fold, tokenize

        self.sources = list(self._given() if callable(self._given) else self._given)
        windows: list[_Window] = []
        for n, doc in enumerate(self.sources, 1):
            text = doc.page_content
            spans = [_trim(text, a, b) for s, e in sentence_spans(text) for a, b in _rows(text, s, e)]
            spans = [(s, e) for s, e in spans if e > s]
            for i, (s, e) in enumerate(spans):
                first = len(windows)
                for end in ([e] + ([spans[i + 1][1]] if i + 1 < len(spans) else [])):
                    piece = text[s:end]
                    pair = end != e  # its first sentence's window is ``first``, the next one's follows it
                    windows.append(_Window(n, s, end, frozenset(tokenize(piece)), fold(piece).lower(),
                                           _numbers(piece), first if pair else None, first + 2 if pair else None))
        return windows

    def _weights(self, sentence: str) -> dict[str, float]:
        from ragqa.words import idf_weights

        return idf_weights(sentence)

    def _share(self, weights: dict[str, float], total: float, w: _Window) -> float:
        got = sum(x for word, x in weights.items() if self._holds(w, word))
        return got / total if total else 0.0

    def support(self, sentence: str) -> tuple[list[_Window], float, bool]:
        """The quotes for one answer sentence (markers stripped): the best window, and a second
        one where the first leaves a fifth of the sentence's idf mass uncovered and another
        covers most of that ("built by Quell, and restored in 1971": two passages); the share of
        the mass they cover together (0 when a number of the sentence is in neither); and whether
        the sentence makes a checkable claim at all."""
        plain = strip_markers(sentence).strip()
        if not self._is_claim(plain):
            return [], 0.0, False
        weights = self._weights(plain)
        total = sum(weights.values())
        first = self._pick(plain, weights)
        if first is None:
            return [], 0.0, True
        chosen = [first]
        residual = {w: x for w, x in weights.items() if not self._holds(first, w)}
        if sum(residual.values()) >= RESIDUAL * total:
            second = self._pick(plain, residual, exclude=first)
            if second is not None and self._share(residual, sum(residual.values()), second) >= SUPPORT:
                chosen.append(second)
        covered = sum(x for w, x in weights.items() if any(self._holds(c, w) for c in chosen)) / total
        if not _numbers(plain) <= frozenset().union(*(c.numbers for c in chosen)):
            covered = 0.0  # a number no quote holds: a wrong year, amount or count
        return chosen, covered, True

    def _holds(self, w: _Window, word: str) -> bool:
        return word in w.folded if _CJK.search(word) else word in w.words

    def _pick(self, sentence: str, weights: dict[str, float], exclude: _Window | None = None) -> _Window | None:
        """The window holding most of ``weights``' mass; a pair of sentences only when it holds
        much more than either alone; near ties told apart by the embedding model."""
        total = sum(weights.values())
        shares = [self._share(weights, total, w) for w in self.windows]
        if exclude is not None:
            shares = [0.0 if (w.n == exclude.n and w.start < exclude.end and exclude.start < w.end) else x
                      for x, w in zip(shares, self.windows)]
        eligible = [(x, w) for x, w in zip(shares, self.windows) if x > 0
                    and (w.single is None or x - max(shares[w.single], shares[w.second or w.single]) >= PAIR_GAIN)]
        if not eligible:
            return None
        best = max(x for x, _ in eligible)
        near = [(x, w) for x, w in eligible if x >= best - TIE]
        return (self._closest(sentence, near) if len(near) > 1 else near[0])[1]

    def _closest(self, sentence: str, near: list[tuple[float, _Window]]) -> tuple[float, _Window]:
        """Among near ties, the window the embedding model finds closest (else the first: the
        highest-ranked passage, its earliest sentence)."""
        near.sort(key=lambda sw: (-sw[0], sw[1].n, sw[1].single is not None, sw[1].start))
        if self.embeddings is None:
            return near[0]
        try:
            missing = [w for _, w in near if (w.n, w.start, w.end) not in self._vectors]
            if missing:
                texts = [self.sources[w.n - 1].page_content[w.start:w.end] for w in missing]
                for w, v in zip(missing, self.embeddings.embed_documents(texts)):
                    self._vectors[(w.n, w.start, w.end)] = list(v)
            q = self.embeddings.embed_query(sentence)
        except Exception:  # noqa: BLE001  (a citation is never worth failing an answer over)
            return near[0]

        def cos(w: _Window) -> float:
            v = self._vectors[(w.n, w.start, w.end)]
            return sum(a * b for a, b in zip(q, v))
        return max(near, key=lambda sw: (sw[0] - TIE + 2 * TIE * max(0.0, min(1.0, cos(sw[1])))))

    def sentence(self, text: str) -> tuple[str, list[Citation], bool | None]:
        """One answer sentence -> (it with ragqa's markers, its citations, supported: True/False,
        None for no claim). Markers stay after the sentence's last character, before its spaces."""
        index = self.index
        self.index += 1
        model = [int(x) for m in _MARKER.finditer(text) for x in re.split(r"[,，、]", m.group(1))]
        body = strip_markers(text)
        tail = body[len(body.rstrip()):]
        body = body.rstrip()
        chosen, share, claim = self.support(body)  # (builds the windows, and self.sources)
        if not claim:
            return body + tail, [], None
        if not chosen or share < SUPPORT:
            return body + tail, [], False
        cited = list(chosen)
        for n in dict.fromkeys(model):  # the model's own markers, where that source supports it too
            if all(n != w.n for w in cited) and 1 <= n <= len(self.sources):
                other = self._best_in(body, n)
                if other is not None:
                    cited.append(other)
        marks = "".join(f"[{n}]" for n in sorted({w.n for w in cited}))
        return body + marks + tail, [self._citation(w, index) for w in cited], True

    def _best_in(self, sentence: str, n: int) -> _Window | None:
        weights = self._weights(sentence)
        total = sum(weights.values())
        numbers = _numbers(sentence)
        best = max(((self._share(weights, total, w), w) for w in self.windows if w.n == n and numbers <= w.numbers),
                   key=lambda sw: sw[0], default=(0.0, None))
        return best[1] if best[0] >= SUPPORT else None

    def _citation(self, w: _Window, index: int) -> Citation:
        doc = self.sources[w.n - 1]
        m = doc.metadata
        base = int(m.get("start", 0) or 0)
        return Citation(w.n, m.get("source", ""), base + w.start, base + w.end, doc.page_content[w.start:w.end],
                        index, m.get("page"), m.get("page_label"))

    def claims(self, answer: str) -> int:
        """How many of an answer's sentences make a checkable claim (informative words, not "the
        text does not say")."""
        return sum(1 for p in answer_sentences(answer) if self._is_claim(p))

    def _is_claim(self, sentence: str) -> bool:
        plain = strip_markers(sentence).strip()
        return sum(self._weights(plain).values()) >= MIN_MASS and not _NO_CLAIM.search(plain)

    def cite(self, answer: str) -> Cited:
        """A whole answer: the sentences rewritten with markers, the citations, the unsupported."""
        out = Cited("")
        for piece in self._sentences(answer):
            self._add(out, piece)
        out.answer = out.answer.rstrip()  # as the stream ends it
        return out

    def _add(self, out: Cited, piece: str) -> str:
        if not piece.strip():
            out.answer += piece
            return piece
        index = self.index
        text, citations, supported = self.sentence(piece)
        out.answer += text
        out.sentences += 1
        if supported is not None:
            out.claims += 1
        out.citations += citations
        if supported is False:
            out.unsupported.append(index)
        return text

    @staticmethod
    def _sentences(text: str) -> list[str]:
        """The answer cut into sentences, a model's markers written after a sentence's end kept
        with that sentence ("… in 1871. [1] It …")."""
        from ragqa.splitting import sentence_spans

        pieces = []
        for s, e in sentence_spans(text):
            # "grey.[2] The …": a marker right after the full stop still ends the sentence
            at = s
            for m in _AFTER_END.finditer(text, s, e):
                pieces.append(text[at:m.end()])
                at = m.end()
            pieces.append(text[at:e])
        pieces = [p for p in pieces if p]
        out: list[str] = []
        for p in pieces:
            lead = re.match(r"(?:\s*[\[【]\s*\d{1,2}(?:\s*[,，、]\s*\d{1,2})*\s*[\]】])+", p)
            if lead and out:
                out[-1] = out[-1].rstrip() + lead.group().strip() + " "
                p = p[lead.end():].lstrip()
            out.append(p)
        return out

    def stream(self, pieces: Iterable[str], out: Cited) -> Iterator[str]:
        """The answer's pieces -> the answer with ragqa's markers, streamed: text goes on at once,
        except a marker the model is still writing (held until it is one, then dropped) and the
        spaces after a sentence (held until the next sentence begins, when that sentence's markers
        are known and go first). ``out`` collects the whole; the pieces yielded add up to
        ``out.answer``."""
        raw, emitted, done = "", "", 0  # done: the sentences of ``raw`` already decided
        final = ""  # the decided sentences' text, with markers
        for piece in pieces:
            raw += piece
            sentences = self._sentences(raw)
            # a sentence is decided once the next has a real character (markers may still follow it)
            while len(sentences) - done > 1 and re.search(r"[^\s\[\]【】\d,，、]", sentences[done + 1]):
                final += self._add(out, sentences[done])
                done += 1
            shown = final + _PARTIAL.sub("", strip_markers("".join(sentences[done:]))).rstrip()
            if shown.startswith(emitted) and len(shown) > len(emitted):
                yield shown[len(emitted):]
                emitted = shown
        for sentence in self._sentences(raw)[done:]:
            final += self._add(out, sentence)
        if final.startswith(emitted):
            rest = final[len(emitted):].rstrip()
        else:  # cannot happen: every decided text extends what was shown of it
            rest = ""
        if rest:
            yield rest
        out.answer = emitted + rest


class RememberedPassages:
    """``embeddings`` for ``Citer``, remembering the vectors of the passage sentences it embeds
    (the ``PASSAGE_VECTORS`` most recently used, as float32): a server's questions keep citing the
    same passages, and an embedding costs about 20 ms of CPU a sentence. Answer sentences are
    embedded afresh each time."""

    def __init__(self, embeddings: Any, limit: int = PASSAGE_VECTORS) -> None:
        self.embeddings = embeddings
        self.limit = limit
        self._vectors: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def embed_documents(self, texts: list[str]) -> list[Any]:
        import numpy as np

        with self._lock:
            found = {t: self._vectors[t] for t in texts if t in self._vectors}
            for t in found:
                self._vectors.move_to_end(t)
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            made = {t: np.asarray(v, dtype=np.float32) for t, v in zip(missing, self.embeddings.embed_documents(missing))}
            found.update(made)
            with self._lock:
                self._vectors.update(made)
                while len(self._vectors) > self.limit:
                    self._vectors.popitem(last=False)
        return [found[t] for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self.embeddings.embed_query(text)


def answer_sentences(answer: str) -> list[str]:
    """An answer's sentences as ``Cited.unsupported`` and ``Citation.sentence`` count them."""
    return [p.strip() for p in Citer._sentences(answer) if p.strip()]


_AFTER_END = re.compile(r"(?<=[.!?。！？])(?:\s*[\[【]\s*\d{1,2}(?:\s*[,，、]\s*\d{1,2})*\s*[\]】])+\s*(?=\S)")
_PARTIAL = re.compile(r"\s*[\[【][\d\s,，、]*$")  # a marker still being written, at the end of the text


def _rows(text: str, s: int, e: int) -> list[tuple[int, int]]:
    """A "sentence" that is a table or code (most of its lines hold ``|`` or a tab, or none holds
    sentence punctuation over three lines or more) as its lines, so a quote is a row, not the chunk."""
    lines = text[s:e].split("\n")
    tabular = sum(("|" in line or "\t" in line) for line in lines) * 2 > len(lines)
    if len(lines) < 3 or not (tabular or not re.search(r"[.!?。！？；]", text[s:e])):
        return [(s, e)]
    out, at = [], s
    for line in lines:
        out.append((at, at + len(line)))
        at += len(line) + 1
    return out


def _trim(text: str, s: int, e: int) -> tuple[int, int]:
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    return s, e
