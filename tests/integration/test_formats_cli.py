"""Every supported type end to end: one folder holding a file of each type, indexed by the real CLI
with the real e5 model (and the real Tesseract for the scans); a question only one file answers
must find that file first, at the right page, slide or sheet. One question is answered by SmolLM2
from a scanned page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import docfixtures as fx
from ragqa.ocr import tesseract_path

pytestmark = pytest.mark.skipif(
    tesseract_path() is None or fx.cjk_font(20) is None,
    reason="needs tesseract (chi_sim, chi_tra, eng) and a CJK font: `make setup` and `make browser` install them",
)

# (file, question, where the answer is: page_label or page number or None)
QUESTIONS = [
    ("deck.pptx", "When can visitors use the Marrowvale observatory telescope?", "slide 2"),
    ("ledger.xlsx", "How many copper kettles are in stock in the Dunmore warehouse?", "sheet Inventory"),
    ("stock.xls", "《红楼梦》还有几本库存？", "sheet 库存"),
    ("cities.csv", "绍兴的特产是什么？", None),
    ("gardens.epub", "拙政园始建于什么时候？", None),
    ("bridge.odt", "When was the Fenn river ferry replaced by a bridge?", None),
    ("annual.rtf", "公司年会在哪里举行？", None),
    ("review.eml", "Which room is the budget review in?", None),
    ("menu.json", "佛跳墙多少钱？", None),
    ("events.jsonl", "When was the database server migration?", None),
    ("scan.pdf", "黄山以什么闻名？", 2),
    ("lighthouse.png", "Who is the lighthouse keeper of Kestrel Point?", None),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("every-type")
    fx.pptx_file(root / "deck.pptx", [
        ("Astronomy club", "Meetings of the astronomy club for new members."),
        ("The observatory", "The Marrowvale observatory opens its telescope to visitors every Friday night."),
    ])
    fx.xlsx_file(root / "ledger.xlsx", {
        "Orders": [["Order", "Customer"], ["A-17", "Odile Brask"]],
        "Inventory": [["Item", "Stock", "Warehouse"], ["copper kettle", 17, "Dunmore"], ["tin lantern", 4, "Fenwick"]],
    })
    fx.xls_file(root / "stock.xls", {"库存": [["书名", "数量"], ["红楼梦", 12], ["西游记", 7]]})
    (root / "cities.csv").write_text("城市,特产,人口\n绍兴,黄酒,530万\n景德镇,瓷器,160万\n", "utf-8")
    fx.pandoc_file(root / "gardens.epub", "# 第三章 苏州园林\n\n拙政园是苏州最大的古典园林，始建于明代正德年间。\n")
    fx.pandoc_file(root / "bridge.odt", "# The Fenn\n\nThe Fenn river ferry was replaced by a stone bridge in 1873.\n")
    fx.pandoc_file(root / "annual.rtf", "# 通知\n\n公司年会定于十二月二十日在杭州国际会议中心举行。\n")
    fx.eml_file(root / "review.eml", "Budget review moved", "The budget review moved to Tuesday at 10 am in room 4B.")
    fx.json_file(root / "menu.json", {"dish": "佛跳墙", "origin": "福州", "price_yuan": 888})
    (root / "events.jsonl").write_text(
        '{"event": "database server migration", "date": "2026-03-14"}\n{"event": "office move", "date": "2026-05-02"}\n',
        "utf-8")
    fx.scanned_pdf(root / "scan.pdf", ["扫描件第一页：本册介绍安徽省的名山。",
                                       "扫描件第二页：黄山位于安徽省南部，以奇松、怪石、云海、温泉闻名。"], height_px=1200)
    fx.render_page("The lighthouse keeper of Kestrel Point is Orla Fenwick.", height_px=600).save(root / "lighthouse.png")
    return root


@pytest.fixture(scope="module")
def indexed(folder: Path, tmp_path_factory: pytest.TempPathFactory):
    import os
    import subprocess
    import sys

    cache = tmp_path_factory.mktemp("cache")
    env = {**os.environ, "RAGQA_CACHE_DIR": str(cache), "RAGQA_DATA_DIR": str(cache / "data"), "RAGQA_TEMPERATURE": "0"}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ragqa", *args], capture_output=True, text=True, env=env, timeout=600)

    proc = run("index", str(folder), "--kb", "everything")
    assert proc.returncode == 0, proc.stderr
    return run, proc


def test_index_reads_every_type(indexed) -> None:
    _, proc = indexed
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"everything: added {len(QUESTIONS)}, updated 0, unchanged 0, removed 0, failed 0;"), proc.stderr


@pytest.mark.parametrize(("name", "question", "where"), QUESTIONS, ids=[q[0] for q in QUESTIONS])
def test_question_finds_the_one_file_that_answers_it(indexed, name: str, question: str, where) -> None:
    run, _ = indexed
    proc = run("ask", "--kb", "everything", question, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)["sources"][0]
    assert Path(top["source"]).name == name, (question, [Path(s["source"]).name for s in json.loads(proc.stdout)["sources"]])
    if isinstance(where, str):
        assert top["page_label"] == where
    elif isinstance(where, int):
        assert top["page"] == where and "page_label" not in top
    else:
        assert "page" not in top


def test_a_scanned_page_answers_a_question(indexed) -> None:
    run, _ = indexed
    proc = run("ask", "--kb", "everything", "Who is the lighthouse keeper of Kestrel Point?", "--max-new-tokens", "24")
    assert proc.returncode == 0, proc.stderr
    assert "Orla" in proc.stdout or "Fenwick" in proc.stdout, proc.stdout
    assert "lighthouse.png" in proc.stdout.split("Sources:")[1].splitlines()[1]
