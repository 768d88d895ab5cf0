"""Abstention through `ragqa ask` with the real starter models: a question the documents do not
answer gets the fixed message without the model; one they answer is answered."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

PLACES = [
    ("Orvane Lighthouse", "Kestrel Point", "the engineer Marta Quell", 1871),
    ("Brask Bridge", "the river Fenn", "the mason Odile Brask", 1873),
    ("Tallow Mill", "Ashby Creek", "the miller Joss Tarrant", 1790),
    ("Harl Observatory", "Mount Wren", "the astronomer Ilse Harl", 1902),
    ("Quillby Ferry House", "the Ember estuary", "the boatwright Sam Oker", 1820),
    ("Veska Library", "Veska Square", "the printer Anna Veska", 1911),
    ("Morrow Lock", "the Dunmore canal", "the engineer Piet Morrow", 1834),
    ("Salt Exchange", "Harbour Street", "the merchant Ada Lisle", 1768),
    ("Corran Chapel", "Corran Hill", "the carpenter Tom Reade", 1655),
    ("Ivel Theatre", "Market Row", "the architect Nell Ivel", 1889),
]


def _handbook() -> str:
    parts = []
    for name, where, builder, year in PLACES:
        parts.append(f"# {name}\n\nThe {name} stands at {where}. It was built in {year} by {builder}. "
                     f"Visitors can see it every day from nine in the morning.\n\nThe {name} was restored "
                     f"in {year + 100}. A small museum inside tells its story with maps and letters.\n\n"
                     f"In winter the {name} closes at four. Tickets cost {len(name)} pounds for adults "
                     f"and half that for children.\n\nA walking path leads from the {name} along "
                     f"{where}; the walk takes about an hour.\n")
    return "\n".join(parts)


@pytest.fixture
def handbook(run_ragqa, tmp_path):
    path = tmp_path / "handbook.md"
    path.write_text(_handbook(), "utf-8")
    run_ragqa("index", str(path), "--kb", "guide", "--chunk-size", "200", "--chunk-overlap", "0")
    return path


def test_a_question_the_documents_do_not_answer_is_refused_without_the_model(run_ragqa, ask_json, handbook) -> None:
    flags = ("--kb", "guide", "--chunk-size", "200", "--chunk-overlap", "0", "--max-new-tokens", "40")
    out = ask_json("How much ibuprofen should an adult take for a migraine?", *flags)
    assert out["answerable"] is False
    assert out["answer"] == "The documents do not say."
    assert "llm_load_s" not in out["timings"] and "completion_tokens" not in out["timings"]  # no model call
    assert out["abstain"]["score"] < out["abstain"]["threshold"]
    assert out["sources"]  # the nearest passages are still shown

    zh = ask_json("布洛芬每天最多吃几片？", *flags)
    assert zh["answerable"] is False and zh["answer"] == "资料中没有找到与问题相关的内容。"

    yes = ask_json("Who built the Orvane Lighthouse and in which year?", *flags)
    assert yes["answerable"] is True
    assert yes["timings"]["completion_tokens"] > 0
    assert "Quell" in yes["answer"] or "1871" in yes["answer"], yes["answer"]

    off = ask_json("How much ibuprofen should an adult take for a migraine?", *flags, "--abstain", "off")
    assert off["answerable"] is True and off["timings"]["completion_tokens"] > 0

    # the CLI prints the message and the sources it did find, and says why on stderr
    proc = run_ragqa("ask", "How much ibuprofen should an adult take for a migraine?", *flags)
    assert proc.stdout.startswith("The documents do not say.")
    assert "Sources:" in proc.stdout


def test_a_question_in_a_language_the_documents_lack_says_so(run_ragqa, handbook) -> None:
    proc = run_ragqa("ask", "奥尔文灯塔是谁建造的？", "--kb", "guide", "--chunk-size", "200", "--chunk-overlap", "0",
                     "--json")
    import json

    out = json.loads(proc.stdout)
    assert out["answerable"] is False and out["answer"] == "资料中没有找到与问题相关的内容。"
    assert "the question is in Chinese and the documents look English" in proc.stderr
