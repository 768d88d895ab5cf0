"""What the pipeline hands back: an answer with its sources, and the reports of indexing and summarizing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from langchain_core.documents import Document


@dataclass
class Source:
    """One retrieved chunk: where it is and how well it matched."""

    source: str
    text: str
    start: int
    score: float
    page: int | None = None  # PDF page, slide, or sheet number
    page_label: str | None = None  # "slide 3", "sheet Prices": where ``page`` is not a PDF page

    @classmethod
    def from_document(cls, doc: Document) -> "Source":
        m = doc.metadata
        return cls(m.get("source", ""), doc.page_content, int(m.get("start", 0)), float(m.get("score", 0.0)),
                   m.get("page"), m.get("page_label"))

    def where(self) -> str:
        """'p.3', 'slide 3', 'sheet Prices', or '' for a document without pages."""
        if self.page_label:
            return self.page_label
        return f"p.{self.page}" if self.page is not None else ""

    def location(self) -> str:
        where = self.where()
        return f"{self.source}{' ' + where if where else ''} @{self.start}"


@dataclass
class Answer:
    answer: str
    sources: list[Source]
    timings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    prompts: list[str] = field(default_factory=list)
    answerable: bool = True  # False: ragqa abstained, the documents do not answer the question
    abstain: dict[str, Any] | None = None  # the abstention decision and its signals (ragqa.abstain)
    citations: list[dict[str, Any]] | None = None  # ragqa.citations.Citation dicts; None: citations off
    unsupported: list[int] | None = None  # answer sentences no source supports

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"answer": self.answer, "answerable": self.answerable,
                             "sources": [asdict(s) for s in self.sources], "timings": self.timings}
        if self.abstain is not None:
            d["abstain"] = {k: v for k, v in self.abstain.items() if k != "answerable"}
        if self.citations is not None:
            d["citations"] = self.citations
            d["unsupported"] = self.unsupported or []
        for s in d["sources"]:
            for key in ("page", "page_label"):
                if s[key] is None:
                    del s[key]
        if self.notes:
            d["notes"] = self.notes
        return d


@dataclass
class IndexReport:
    files: int = 0
    cached: int = 0
    chunks: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)  # "path: reason" for unreadable files in folders


@dataclass
class SummaryReport:
    summarized: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
