"""`ragqa summarize` with the real starter model (SmolLM2, English)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CORPORA = Path(__file__).resolve().parents[2] / "corpora"


def test_summarize_a_folder_then_resume(run_ragqa, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(CORPORA / "en" / "heron_festival.md", docs)
    (docs / "lighthouse.txt").write_text(
        "The Orvane Lighthouse stands on Kestrel Point. It was built in 1871 by the engineer Marta Quell. "
        "Its lamp can be seen from 31 kilometres away. The keeper feeds a grey cat called Biscuit.\n",
        encoding="utf-8",
    )
    shutil.copy(CORPORA / "zh" / "fishing_village.gbk.txt", docs)
    out = tmp_path / "out.jsonl"

    first = run_ragqa("summarize", str(docs), "--out", str(out), "--max-new-tokens", "120")
    records = {Path(r["source"]).name: r for r in map(json.loads, out.read_text("utf-8").splitlines())}
    assert set(records) == {"heron_festival.md", "lighthouse.txt", "fishing_village.gbk.txt"}
    assert all(r["status"] == "ok" and r["summary"].strip() and r["chain"] == "stuff" for r in records.values())
    assert records["fishing_village.gbk.txt"]["lang"] == "zh"
    assert any(w in records["lighthouse.txt"]["summary"] for w in ("Orvane", "lighthouse", "Lighthouse", "Quell"))
    assert any(w in records["heron_festival.md"]["summary"] for w in ("Quillby", "Zorblat", "heron"))
    assert "summarized 3, skipped 0, failed 0" in first.stderr

    second = run_ragqa("summarize", str(docs), "--out", str(out), "--max-new-tokens", "120")
    assert "summarized 0, skipped 3, failed 0" in second.stderr
    # other generation settings mean other summaries: redone, not skipped
    third = run_ragqa("summarize", str(docs / "lighthouse.txt"), "--out", str(out), "--max-new-tokens", "60")
    assert "summarized 1, skipped 0" in third.stderr
    assert len(out.read_text("utf-8").splitlines()) == 3


def test_summarize_long_document_with_map_reduce(run_ragqa, tmp_path: Path) -> None:
    doc = tmp_path / "long.md"
    doc.write_text((CORPORA / "en" / "heron_festival.md").read_text("utf-8") * 6, encoding="utf-8")
    out = tmp_path / "md"
    run_ragqa("summarize", str(doc), "--out", str(out), "--n-ctx", "1024", "--max-new-tokens", "100")
    [record] = json.loads((out / "summaries.json").read_text("utf-8"))
    assert record["chain"] == "map_reduce" and record["chunks"] > 1 and record["status"] == "ok"
    assert (out / "long.md").read_text("utf-8").startswith("# long.md")
