"""`ragqa ask` through the CLI with the real starter models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

# Facts that exist only in this file, so the model cannot know them from training. Each paragraph is
# its own chunk (chunk size 200), so retrieval has to pick the right one out of several.
DOC = """\
The Orvane Lighthouse stands on Kestrel Point. It was built in 1871 by the engineer Marta Quell.
Its lamp can be seen from 31 kilometres away on a clear night.

The keeper of the Orvane Lighthouse feeds a grey cat called Biscuit. Biscuit sleeps in the lamp room
every afternoon and has lived at the lighthouse for nine years.

The village below the lighthouse holds a regatta on the first Sunday of July. The winning crew receives
a brass anchor. Last year the anchor went to the crew of the boat Sea Lark.

Visitors reach Kestrel Point by a ferry from Dunmore that runs three times a day. The crossing takes
forty minutes and costs six pounds for adults.
"""


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "orvane.txt"
    path.write_text(DOC, encoding="utf-8")
    return path


@pytest.mark.parametrize("chain", ["stuff", "refine"])
def test_ask_answers_from_the_document(ask_json, doc: Path, chain: str) -> None:
    out = ask_json(str(doc), "Who built the Orvane Lighthouse?", "--chain", chain,
                   "--chunk-size", "200", "--chunk-overlap", "0", "-k", "2", "--max-new-tokens", "60")
    assert "Quell" in out["answer"], out["answer"]
    top = out["sources"][0]
    assert "Marta Quell" in top["text"]
    assert top["source"] == str(doc)
    assert DOC[top["start"]: top["start"] + len(top["text"])] == top["text"]
    assert out["timings"]["completion_tokens"] > 0
    # the sentence that says so, exactly at its offsets in the file, and the answer marked with it
    cited = [c for c in out["citations"] if "Quell" in c["quote"]]
    assert cited, out["citations"]
    for c in out["citations"]:
        assert DOC[c["start"]:c["end"]] == c["quote"] and len(c["quote"]) < len(top["text"])
    assert f"[{cited[0]['n']}]" in out["answer"]


def test_ask_second_time_uses_the_cache(ask_json, doc: Path) -> None:
    args = (str(doc), "What is the name of the keeper's cat?", "--max-new-tokens", "40")
    first = ask_json(*args)
    second = ask_json(*args)
    assert first["timings"]["files_cached"] == 0
    assert second["timings"]["files_cached"] == 1
    assert "Biscuit" in first["answer"] and "Biscuit" in second["answer"]
    assert "Biscuit" in second["sources"][0]["text"]


def test_ask_streams_answer_then_sources(run_ragqa, doc: Path) -> None:
    proc = run_ragqa("ask", str(doc), "What does the winning crew of the regatta receive?",
                     "--chunk-size", "200", "--chunk-overlap", "0", "--max-new-tokens", "40")
    answer, _, sources = proc.stdout.partition("\nSources:\n")
    assert "anchor" in answer.lower()
    assert str(doc) in sources and "brass anchor" in sources
    assert "Traceback" not in proc.stderr


def test_dry_run_prints_the_exact_chatml_prompt_and_loads_no_weights(run_ragqa, doc: Path) -> None:
    proc = run_ragqa("ask", str(doc), "How long is the ferry crossing?", "--dry-run")
    prompt = proc.stdout
    # SmolLM2's GGUF carries a ChatML template; `auto` must use it, not the Alpaca-2 wrapper.
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>assistant\n\n")
    assert "forty minutes" in prompt and "How long is the ferry crossing?" in prompt
    assert "[INST]" not in prompt


def test_dry_run_with_alpaca2_format_is_byte_exact(run_ragqa, doc: Path) -> None:
    proc = run_ragqa("ask", str(doc), "How long is the ferry crossing?", "--dry-run", "--chat-format", "alpaca-2")
    prompt = proc.stdout[:-1]
    assert prompt.startswith("[INST] <<SYS>>\nYou are a helpful assistant. 你是一个乐于助人的助手。\n<</SYS>>\n\n")
    assert prompt.endswith("Question: How long is the ferry crossing? [/INST]")


def test_gbk_chinese_file_is_loaded_and_the_right_chunk_retrieved(ask_json, tmp_path: Path) -> None:
    text = (
        "白沙湖渔村在湖的北岸，村里共有三百二十户人家。村民世代以捕鱼为生，最常捕到的是银鲤和青虾。\n\n"
        "渔村每年十月举行谢湖会，感谢湖水一年的馈赠。谢湖会上，渔民会把第一网捕到的鱼放回湖中。\n\n"
        "村口有一棵三百多年的老樟树，村民叫它守湖树。据说只要老樟树还在，湖里的鱼就不会减少。\n\n"
        "渔村的小学只有两个班，一共四十六名学生，老师是从县城来的林秀芳。\n"
    )
    path = tmp_path / "渔村.txt"
    path.write_bytes(text.encode("gbk"))
    out = ask_json(str(path), "村口的老樟树有多少年了？", "--dry-run",
                   "--chunk-size", "60", "--chunk-overlap", "0", "-k", "2")
    top = out["sources"][0]["text"]
    assert "老樟树" in top and "三百多年" in top
    assert text[out["sources"][0]["start"]:].startswith(top)


def test_bad_model_path_fails_in_one_line_before_indexing(run_ragqa, doc: Path) -> None:
    proc = run_ragqa("ask", str(doc), "Who built it?", "--model", str(doc), check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("ragqa: error:")
    assert "not a GGUF" in proc.stderr
    assert not (run_ragqa.cache / "index").exists()


def test_bm25_alone_finds_a_simplified_text_for_a_traditional_question_and_back(run_ragqa, ask_json, tmp_path: Path) -> None:
    folder = tmp_path / "scripts"
    folder.mkdir()
    tower = "观景台由工程师蒋立华设计，建于一九九八年。"
    temple = "龍山寺位於萬華區，始建於乾隆三年，是臺北最古老的寺廟之一。"
    (folder / "tower.txt").write_text(tower, "utf-8")
    (folder / "temple.txt").write_text(temple, "utf-8")
    (folder / "panda.txt").write_text("熊猫是中国特有的动物，主要生活在四川的山区。", "utf-8")
    run_ragqa("index", str(folder), "--kb", "scripts")
    for question, name, text in (("觀景臺是誰設計的？", "tower.txt", tower), ("龙山寺始建于哪一年？", "temple.txt", temple)):
        out = ask_json("--kb", "scripts", question, "--retriever", "bm25", "-k", "1", "--dry-run")
        [source] = out["sources"]
        assert Path(source["source"]).name == name, question
        assert source["text"] == text  # as written, not folded


def test_context_sentences_sends_the_best_chunk_whole_and_less_of_the_rest(run_ragqa) -> None:
    """--context sentences on the Chinese starter corpus: the dry-run prompt carries the best
    chunk whole (the answer), only the other chunk's sentences that share the question's words,
    and is shorter than the whole-chunk prompt; the sources are the chunks as retrieved."""
    corpus = Path(__file__).resolve().parents[2] / "corpora" / "zh"
    question = "白沙湖渔村每年几月举行谢湖会？"
    whole = run_ragqa("ask", str(corpus), question, "--dry-run", "--context", "chunks").stdout
    proc = run_ragqa("ask", str(corpus), question, "--dry-run")  # sentences: the default
    prompt = proc.stdout
    assert "渔村每年十月举行“谢湖会”" in prompt and "林秀芳" in prompt  # the best chunk, whole
    assert "卧云桥" in whole and "卧云桥" not in prompt  # the tea town's bridge bears on nothing asked
    assert len(prompt) < len(whole)
    assert "fishing_village.gbk.txt @0" in proc.stderr and "tea_town.txt @0" in proc.stderr


def test_a_note_starts_its_own_line_after_the_streamed_answer(run_ragqa, doc: Path) -> None:
    """On a terminal stdout and stderr share the screen: the small file's abstain note used to be
    glued to the answer's last word ("…[1]note: abstain: …")."""
    run_ragqa("index", str(doc))  # the cache warm, so the merged output is the answer, notes, sources
    env = {**os.environ, "RAGQA_CACHE_DIR": str(run_ragqa.cache), "RAGQA_DATA_DIR": str(run_ragqa.cache / "data"),
           "RAGQA_TEMPERATURE": "0"}
    proc = subprocess.run([sys.executable, "-m", "ragqa", "ask", str(doc), "What does the winning crew receive?",
                           "--max-new-tokens", "24"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, timeout=600, check=True)
    assert "note: " in proc.stdout  # a two-chunk file: too few chunks to calibrate abstention
    assert all(line.startswith("note: ") for line in proc.stdout.splitlines() if "note: " in line), proc.stdout
