"""Batch summary outputs (ragqa.outputs): foreign files are refused untouched, and several
processes writing to one output at once lose no record."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragqa.errors import InputError
from ragqa.outputs import SummaryStore


def record(source: str, summary: str = "摘要。") -> dict:
    return {"source": source, "summary": summary, "chain": "stuff", "chunks": 1, "seconds": 0.1,
            "status": "ok", "key": f"k-{source}"}


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- foreign outputs

FOREIGN_JSONL = [
    ("other JSON lines", b'{"id": 1}\n{"id": 2}\n'),
    ("a summary line, then another", json.dumps(record("/a.txt")).encode() + b'\n{"id": 1}\n'),
    ("not JSON", b"name,age\nada,36\n"),
    ("a JSON list", b"[1, 2, 3]\n"),
    ("latin-1 text", "café crème\n".encode("latin-1")),
    ("binary", bytes(range(256)) * 4),
]


@pytest.mark.parametrize("label, content", FOREIGN_JSONL, ids=[c[0] for c in FOREIGN_JSONL])
def test_foreign_jsonl_is_refused_and_left_byte_identical(tmp_path: Path, label: str, content: bytes) -> None:
    out = tmp_path / "existing.jsonl"
    out.write_bytes(content)
    before = tree(tmp_path)
    with pytest.raises(InputError) as err:
        SummaryStore.open(out)
    message = str(err.value)
    assert "\n" not in message and str(out) in message and "--out" in message
    assert "choose another --out" in message
    assert tree(tmp_path) == before  # nothing written, not even a lock file


FOREIGN_MANIFESTS = [
    ("not JSON", b"{broken"),
    ("a JSON object", b'{"source": "/a.txt", "status": "ok"}'),
    ("a list without source", b'[{"id": 1}]'),
    ("a list of numbers", b"[1, 2]"),
    ("utf-16", '[{"source": "a", "status": "ok"}]'.encode("utf-16")),
    ("binary", b"\x89PNG\r\n\x1a\n" + bytes(range(256))),
]


@pytest.mark.parametrize("label, content", FOREIGN_MANIFESTS, ids=[c[0] for c in FOREIGN_MANIFESTS])
def test_folder_with_a_foreign_manifest_is_refused_and_left_unchanged(
    tmp_path: Path, label: str, content: bytes
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "summaries.json").write_bytes(content)
    (out / "notes.md").write_text("my notes\n", "utf-8")
    before = tree(tmp_path)
    with pytest.raises(InputError) as err:
        SummaryStore.open(out)
    message = str(err.value)
    assert "\n" not in message and str(out / "summaries.json") in message and "--out" in message
    assert tree(tmp_path) == before


def test_folder_with_someone_elses_index_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "site"
    out.mkdir()
    (out / "index.md").write_text("# My site\n", "utf-8")
    with pytest.raises(InputError, match="index.md"):
        SummaryStore.open(out)
    assert tree(out) == {"index.md": b"# My site\n"}


def test_manifest_naming_a_file_outside_the_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    rec = {**record("/a.txt"), "file": "../victim.md"}
    (out / "summaries.json").write_text(json.dumps([rec]), "utf-8")
    (tmp_path / "victim.md").write_text("keep me\n", "utf-8")
    with pytest.raises(InputError, match="victim.md"):
        SummaryStore.open(out)
    assert (tmp_path / "victim.md").read_text("utf-8") == "keep me\n"


def test_batch_refuses_a_foreign_out_before_summarizing(make_pipeline, tmp_path: Path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text("熊猫吃竹子。", "utf-8")
    out = tmp_path / "existing.jsonl"
    out.write_bytes(b'{"id":1}\n')
    with pytest.raises(InputError, match="existing.jsonl"):
        make_pipeline().summarize_batch([doc], out, progress=False)
    assert out.read_bytes() == b'{"id":1}\n'


@pytest.mark.parametrize("content", [b"", b"\n", b"  \n\n"])
def test_empty_existing_jsonl_is_used(tmp_path: Path, content: bytes) -> None:
    out = tmp_path / "out.jsonl"
    out.write_bytes(content)
    store = SummaryStore.open(out)
    store.put(record("/a.txt"))
    assert [json.loads(line)["source"] for line in out.read_text("utf-8").splitlines()] == ["/a.txt"]


def test_existing_folder_files_are_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("mine\n", "utf-8")
    store = SummaryStore.open(out)
    store.put(record("/docs/report.txt"))
    assert (out / "report.md").read_text("utf-8") == "mine\n"
    assert store.records["/docs/report.txt"]["file"] == "report-2.md"


def test_same_file_name_in_two_folders_gets_two_markdown_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = SummaryStore.open(out)
    store.put(record("/a/readme.txt", "甲"))
    store.put(record("/b/readme.txt", "乙"))
    store.put(record("/a/readme.txt", "甲二"))  # a redo keeps its name
    assert (out / "readme.md").read_text("utf-8").startswith("# readme.txt\n\n甲二")
    assert (out / "readme-2.md").read_text("utf-8").startswith("# readme.txt\n\n乙")


# --------------------------------------------------------------------------- concurrent writers

WRITER = """
import sys, time
from pathlib import Path
from ragqa.outputs import SummaryStore

out, tag, n, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
store = SummaryStore.open(out)  # both open before either writes: each starts from an empty output
Path(go.parent / f"ready-{tag}").touch()
while not go.exists():
    time.sleep(0.005)
for i in range(n):
    # the same file names in both writers' folders: the .md names must still be distinct
    store.put({"source": f"/{tag}/doc{i}.txt", "summary": f"summary {tag} {i}", "chain": "stuff",
               "chunks": 1, "seconds": 0.0, "status": "ok", "key": f"{tag}{i}"})
    time.sleep(0.002)
"""


@pytest.mark.parametrize("name", ["out.jsonl", "out"])
def test_two_processes_writing_one_output_lose_no_record(tmp_path: Path, name: str) -> None:
    out, go, n = tmp_path / name, tmp_path / "go", 25
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(out), tag, str(n), str(go)], stderr=subprocess.PIPE)
        for tag in ("a", "b")
    ]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready-{t}").exists() for t in "ab") and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()

    expected = {f"/{t}/doc{i}.txt" for t in "ab" for i in range(n)}
    if name.endswith(".jsonl"):
        lines = out.read_text("utf-8").splitlines()
        assert len(lines) == 2 * n and {json.loads(line)["source"] for line in lines} == expected
        return
    manifest = json.loads((out / "summaries.json").read_text("utf-8"))
    assert len(manifest) == 2 * n and {r["source"] for r in manifest} == expected
    files = [r["file"] for r in manifest]
    assert len(set(files)) == 2 * n  # /a/doc0.txt and /b/doc0.txt do not share doc0.md
    index = (out / "index.md").read_text("utf-8")
    for r in manifest:
        assert f"[{Path(r['source']).name}]({r['file']})" in index
        tag, i = r["source"].split("/")[1], r["source"].split("doc")[1].split(".")[0]
        assert (out / r["file"]).read_text("utf-8").startswith(f"# doc{i}.txt\n\nsummary {tag} {i}\n")
    assert index.count("| ok |") == 2 * n

