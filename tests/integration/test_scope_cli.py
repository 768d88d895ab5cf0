"""`ragqa ask --kb NAME --doc PATTERN` and `summarize --kb --doc` through the real CLI, the real
starter embeddings and SmolLM2, over a KB holding several years' contracts (the same over a
Milvus server: tests/integration/test_milvus.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

YEARS = {
    "2022": "The 2022 supply contract: the goods are delivered within 30 days to the Lyon warehouse.",
    "2023": "The 2023 supply contract: the goods are delivered within 20 days to the Turin warehouse.",
    "2024": "The 2024 supply contract: the goods are delivered within 10 days to the Porto warehouse.",
}
QUESTION = "Where and how fast are the goods delivered?"


@pytest.fixture
def contracts(tmp_path: Path, run_ragqa) -> Path:
    folder = tmp_path / "contracts"
    for year, text in YEARS.items():
        (folder / year).mkdir(parents=True)
        (folder / year / f"contract-{year}.md").write_text(f"# Contract {year}\n\n{text}\n", "utf-8")
    (folder / "notes.txt").write_text("Lunch is at noon on Fridays.", "utf-8")
    run_ragqa("index", str(folder), "--kb", "contracts")
    return folder


def sources(answer: dict) -> set[str]:
    return {Path(s["source"]).name for s in answer["sources"]}


def test_doc_scopes_a_question_to_the_matching_documents(contracts: Path, ask_json) -> None:
    everything = ask_json("--kb", "contracts", QUESTION, "--dry-run")
    assert {"contract-2022.md", "contract-2023.md", "contract-2024.md"} <= sources(everything)
    only = ask_json("--kb", "contracts", "--doc", "*2024*", QUESTION, "--dry-run")
    assert sources(only) == {"contract-2024.md"}
    text = " ".join(s["text"] for s in only["sources"])
    assert "Porto" in text and "Lyon" not in text and "Turin" not in text
    folders = ask_json("--kb", "contracts", "--doc", "2022", "--doc", "contracts/2023/*.md", QUESTION, "--dry-run")
    assert sources(folders) == {"contract-2022.md", "contract-2023.md"}
    answered = ask_json("--kb", "contracts", "--doc", "contract-2023.md", QUESTION)
    assert sources(answered) == {"contract-2023.md"} and answered["answer"].strip()


@pytest.mark.parametrize("pattern", ["*2019*", "/etc/passwd", "  "])
def test_a_doc_matching_nothing_is_one_line_exit_2(contracts: Path, run_ragqa, pattern: str) -> None:
    proc = run_ragqa("ask", "--kb", "contracts", "--doc", pattern, QUESTION, check=False)
    assert proc.returncode == 2, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("ragqa: error: ") and "Traceback" not in proc.stderr
    assert ("ragqa kb show contracts" in line) or ("empty" in line)
    assert proc.stdout == ""


def test_summarize_kb_doc_summarizes_only_the_matching_documents(contracts: Path, run_ragqa, tmp_path: Path) -> None:
    out = tmp_path / "sums.jsonl"
    proc = run_ragqa("summarize", "--kb", "contracts", "--doc", "*202[34]*", "--out", str(out))
    assert "summarized 2" in proc.stderr, proc.stderr
    records = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    assert sorted(Path(r["source"]).name for r in records) == ["contract-2023.md", "contract-2024.md"]
    assert all(r["status"] == "ok" and r["summary"].strip() for r in records)
