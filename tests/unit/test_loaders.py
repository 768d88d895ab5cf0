"""Plain-text loading: encodings, refusals with a useful message, folder expansion.

Nothing here imports unstructured (that lives in test_loaders_unstructured.py).
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from ragqa.errors import InputError
from ragqa.loaders import SUPPORTED_SUFFIXES, decode_text, expand_paths, load_documents, load_file

ZH = "熊猫是中国特有的动物。它们主要吃竹子，每天要吃十几个小时！\n第二段：成都有熊猫基地。"


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize(
    "label, data",
    [
        ("utf-8", ZH.encode("utf-8")),
        ("utf-8 with BOM", codecs.BOM_UTF8 + ZH.encode("utf-8")),
        ("gbk", ZH.encode("gbk")),
        ("gb18030", ZH.encode("gb18030")),
        ("utf-16 with BOM (little endian)", ZH.encode("utf-16")),
        ("utf-16 with BOM (big endian)", codecs.BOM_UTF16_BE + ZH.encode("utf-16-be")),
    ],
)
def test_text_file_encodings_are_decoded(tmp_path: Path, label: str, data: bytes) -> None:
    path = write(tmp_path / "doc.txt", data)
    docs = load_file(path)
    assert len(docs) == 1
    assert docs[0].page_content == ZH  # no BOM character, no mojibake
    assert docs[0].metadata["source"] == str(path)


def test_gb18030_only_characters_survive(tmp_path: Path) -> None:
    # 𠮷 (U+20BB7) is not in GBK; only GB18030 encodes it
    text = "吉野家的“𠮷”字不是“吉”。"
    with pytest.raises(UnicodeEncodeError):
        text.encode("gbk")
    path = write(tmp_path / "rare.md", text.encode("gb18030"))
    assert load_file(path)[0].page_content == text


def test_decode_text_gbk_doctest_example() -> None:
    assert decode_text("中文".encode("gbk")) == "中文"


# --------------------------------------------------------------------------- refusals


def test_binary_file_is_refused_and_named(tmp_path: Path) -> None:
    path = write(tmp_path / "data.txt", b"\x00\x01\x02\x03binary\x00\xff\xfe\x00" * 50)
    with pytest.raises(InputError) as err:
        load_documents([path])
    assert str(path) in str(err.value)
    assert "binary" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  "], ids=["empty", "whitespace-only"])
def test_empty_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "empty.txt", content)
    with pytest.raises(InputError) as err:
        load_documents([path])
    assert "empty" in str(err.value)
    assert str(path) in str(err.value)


def test_whitespace_only_utf16_file_is_refused_as_empty(tmp_path: Path) -> None:
    path = write(tmp_path / "blank16.txt", "  \n \n".encode("utf-16"))
    with pytest.raises(InputError, match="empty"):
        load_documents([path])


def test_unsupported_extension_lists_supported_types(tmp_path: Path) -> None:
    path = write(tmp_path / "table.csv", "a,b\n1,2\n")
    with pytest.raises(InputError) as err:
        load_documents([path])
    message = str(err.value)
    assert ".csv" in message and str(path) in message
    for suffix in SUPPORTED_SUFFIXES:
        assert suffix in message


def test_file_without_extension_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "README", "hello")
    with pytest.raises(InputError, match="unsupported file type"):
        load_documents([path])


def test_missing_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nope.txt"
    with pytest.raises(InputError) as err:
        load_documents([path])
    assert str(path) in str(err.value)
    assert "no such file" in str(err.value)


def test_pdf_that_is_not_a_pdf_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "fake.pdf", "this is just text pretending to be a PDF")
    with pytest.raises(InputError) as err:
        load_documents([path])
    assert "not a PDF" in str(err.value)
    assert str(path) in str(err.value)


def test_docx_that_is_not_a_zip_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "fake.docx", "plain text, not a word document")
    with pytest.raises(InputError, match=r"not a \.docx"):
        load_documents([path])


# --------------------------------------------------------------------------- folders


def test_folder_expands_recursively_skipping_hidden_and_unsupported(tmp_path: Path) -> None:
    root = tmp_path / "notes"
    a = write(root / "a.txt", "甲。")
    b = write(root / "sub" / "b.md", "乙。")
    c = write(root / "sub" / "deeper" / "C.HTML", "<p>丙。</p>")  # suffix matched case-insensitively
    write(root / ".hidden.txt", "hidden file")
    write(root / ".git" / "x.txt", "hidden folder")
    write(root / "sub" / ".cache" / "y.md", "hidden folder below")
    write(root / "image.png", b"\x89PNG\r\n")
    write(root / "sub" / "table.csv", "a,b")
    assert expand_paths([root]) == sorted([a, b, c])


def test_hidden_folder_named_directly_is_still_read(tmp_path: Path) -> None:
    root = tmp_path / ".notes"
    a = write(root / "a.txt", "甲。")
    assert expand_paths([root]) == [a]


def test_folder_without_supported_files_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "pics"
    write(root / "a.png", b"\x89PNG")
    with pytest.raises(InputError) as err:
        expand_paths([root])
    assert "no supported files" in str(err.value)
    assert ".txt" in str(err.value)


def test_same_file_given_twice_is_loaded_once(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", "甲。")
    (tmp_path / "sub").mkdir()
    docs = load_documents([a, tmp_path / "sub" / ".." / "a.txt", tmp_path])
    assert [d.page_content for d in docs] == ["甲。"]


def test_load_documents_keeps_order_and_sources(tmp_path: Path) -> None:
    a = write(tmp_path / "a.txt", "第一个文件。")
    b = write(tmp_path / "b.md", "# Second\n\nEnglish text.")
    docs = load_documents([b, a])
    assert [(d.metadata["source"], d.page_content) for d in docs] == [
        (str(b), "# Second\n\nEnglish text."),
        (str(a), "第一个文件。"),
    ]
