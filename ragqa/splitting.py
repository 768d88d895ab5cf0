"""Chinese-aware chunking that keeps sentence-final punctuation with its sentence.

LangChain's default separators are English; on Chinese text they cut mid-sentence or move the "。"
to the start of the next chunk. Here a chunk ends right after 。！？；… (or . ! ? followed by
a space), including any closing quote or bracket, and never starts with punctuation. Only a
single sentence longer than ``chunk_size`` is cut inside: at a comma if it can, else hard.

Every chunk knows its exact character offset in the source text (``metadata["start"]``), so
``text[start:start + len(chunk)] == chunk`` always holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_text_splitters import TextSplitter

from ragqa.errors import ConfigError

# sentence end: CJK/ASCII terminators (runs of them: "？！", "……"), then closing quotes/brackets;
# an ASCII '.' only counts when whitespace or the end follows, so "3.14" and "a.b" stay whole.
# A blank line (paragraph break) also ends a unit; a single newline does not, because hard-wrapped
# text breaks lines in mid-sentence.
_SENTENCE_END = re.compile(
    r"(?:[。！？；…!?;]+|\.(?=\s|$))[”’\"'」』）)\]】》]*\s*|\n[ \t\r\f\v]*\n\s*"
)
# places to cut a sentence that is longer than a whole chunk
_SOFT_BREAK = re.compile(r"[，,、：:]\s*|\s+")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """[start, end) of each sentence of ``text``, covering it, whitespace kept with the sentence
    before it: 。！？；… or . ! ? before a space (so "3.5" and "a.b" stay whole), closing quotes and
    brackets kept with their sentence, and blank lines.

    >>> t = "他说：“今天下雨。”我们没去。价格是3.5元!Then we left. OK"
    >>> [t[s:e] for s, e in sentence_spans(t)]
    ['他说：“今天下雨。”', '我们没去。', '价格是3.5元!', 'Then we left. ', 'OK']
    """
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        if match.end() > start:
            spans.append((start, match.end()))
            start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


class ChineseTextSplitter(TextSplitter):
    """A LangChain TextSplitter for Chinese and English text.

    >>> s = ChineseTextSplitter(chunk_size=14, chunk_overlap=0)
    >>> s.split_text("今天天气很好。我们去公园吧！好的。")
    ['今天天气很好。我们去公园吧！', '好的。']
    """

    def __init__(self, chunk_size: int = 600, chunk_overlap: int = 100, **kwargs: Any) -> None:
        if chunk_size <= 0:
            raise ConfigError(f"chunk_size must be positive, got {chunk_size}")
        if not 0 <= chunk_overlap < chunk_size:
            raise ConfigError(
                f"chunk_overlap ({chunk_overlap}) must be at least 0 and less than chunk_size ({chunk_size})"
            )
        kwargs.setdefault("add_start_index", True)
        super().__init__(chunk_size=chunk_size, chunk_overlap=chunk_overlap, **kwargs)

    def split_text(self, text: str) -> list[str]:
        return [chunk for _, chunk in self.split_with_offsets(text)]

    def split_with_offsets(self, text: str) -> list[tuple[int, str]]:
        """[(start, chunk), ...] with ``text[start:start+len(chunk)] == chunk``."""
        units = self._units(text)
        size, overlap = self._chunk_size, self._chunk_overlap
        out: list[tuple[int, str]] = []
        i, n = 0, len(units)
        while i < n:
            j = i + 1
            while j < n and units[j][1] - units[i][0] <= size:
                j += 1
            start, end = units[i][0], units[j - 1][1]
            chunk = text[start:end]
            stripped = chunk.strip()
            if stripped:
                out.append((start + len(chunk) - len(chunk.lstrip()), stripped))
            if j >= n:
                break
            # step back over whole sentences to share up to `overlap` characters, but only as far
            # as still leaves room for the next new sentence: every chunk must add new text
            k = j
            while (
                k - 1 > i
                and units[j - 1][1] - units[k - 1][0] <= overlap
                and units[j][1] - units[k - 1][0] <= size
            ):
                k -= 1
            i = k
        return out

    def _units(self, text: str) -> list[tuple[int, int]]:
        """Sentence spans covering the text, none longer than chunk_size."""
        units: list[tuple[int, int]] = []
        for s, e in sentence_spans(text):
            if e - s <= self._chunk_size:
                units.append((s, e))
            else:
                units.extend(self._cut_long(text, s, e))
        return units

    def _cut_long(self, text: str, s: int, e: int) -> Iterable[tuple[int, int]]:
        pieces: list[tuple[int, int]] = []
        start = s
        for match in _SOFT_BREAK.finditer(text, s, e):
            if match.end() > start:
                pieces.append((start, match.end()))
                start = match.end()
        if start < e:
            pieces.append((start, e))
        size = self._chunk_size
        cur_start = None
        cur_end = s
        for ps, pe in pieces:
            while pe - ps > size:  # no comma or space for a whole chunk: cut hard
                if cur_start is not None:
                    yield cur_start, cur_end
                    cur_start = None
                yield ps, ps + size
                ps += size
            if cur_start is not None and pe - cur_start > size:
                yield cur_start, cur_end
                cur_start = None
            if cur_start is None:
                cur_start = ps
            cur_end = pe
        if cur_start is not None:
            yield cur_start, cur_end

    def create_documents(
        self, texts: list[str], metadatas: list[dict[Any, Any]] | None = None
    ) -> list[Document]:
        docs = []
        for i, text in enumerate(texts):
            meta = metadatas[i] if metadatas else {}
            for start, chunk in self.split_with_offsets(text):
                docs.append(Document(page_content=chunk, metadata={**meta, "start": start}))
        return docs

    def split_documents(self, documents: Sequence[Document]) -> list[Document]:  # type: ignore[override]
        return self.create_documents(
            [d.page_content for d in documents], [dict(d.metadata) for d in documents]
        )
