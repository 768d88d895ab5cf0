"""The Milvus engine without a server: collection names, messages, the missing-package error.
(The engine itself is tested against a real server in tests/integration/test_milvus.py.)"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ragqa.config import Settings
from ragqa.errors import MissingDependencyError
from ragqa.store.milvus import (
    _error,
    chunks_collection,
    collection_key,
    display_uri,
    kb_collection,
)

MILVUS_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
NAMES = ["notes", "notes_2024", "合同-2024", "合同", "a.b", "ab", "a-b", "A", "a", "x" * 64, "报告.v2-final"]


def test_every_kb_name_maps_to_valid_distinct_collections() -> None:
    collections = [c for n in NAMES for c in (chunks_collection(n), kb_collection(n))]
    assert all(MILVUS_NAME.match(c) for c in collections), collections
    assert len(set(collections)) == len(collections)  # no two KBs, and no KB's two collections, share a name
    assert chunks_collection("notes") == "ragqa_notes" and kb_collection("notes") == "ragqakb_notes"
    assert collection_key("合同-2024") == collection_key("合同-2024")  # deterministic, across runs too
    assert collection_key("合同-2024").startswith("2024_")


def test_uris_in_messages_carry_no_password() -> None:
    assert display_uri("https://root:Milvus@db.example.com:19530") == "https://db.example.com:19530"
    assert display_uri("http://127.0.0.1:19530") == "http://127.0.0.1:19530"


def test_server_errors_become_one_line_with_a_hint() -> None:
    class Boom(Exception):
        message = "unexpected character '{' at column 12\n  file_id in {ids}\n             ^"

    err = _error(Boom(), "http://h:19530")
    assert "\n" not in str(err) and str(err).startswith("Milvus at http://h:19530: unexpected character")

    class Denied(Exception):
        message = "auth check failure, please check username and password are correct"

    assert "RAGQA_STORE_TOKEN" in str(_error(Denied(), "http://h:19530"))
    assert str(_error(Boom(), "http://h:1", connecting=True)).startswith("cannot reach Milvus at http://h:1:")


def test_a_missing_pymilvus_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from ragqa.store import open_kb

    monkeypatch.setitem(sys.modules, "pymilvus", None)
    settings = Settings(store="http://127.0.0.1:19530", cache_dir=tmp_path, data_dir=tmp_path)
    with pytest.raises(MissingDependencyError, match=r"pymilvus.*ragqa\[milvus\]"):
        open_kb(settings, "t")


def test_the_store_package_and_cli_do_not_import_pymilvus() -> None:
    code = "import ragqa.cli, ragqa.store, ragqa.store.milvus, sys; print('pymilvus' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


class _Unavailable(Exception):
    """A fake grpc.RpcError (unit test): what gRPC raises when a connection is refused or dropped."""

    def code(self) -> str:
        return "StatusCode.UNAVAILABLE"


class _FakePymilvus:
    """A fake pymilvus module (unit test): MilvusClient fails `failures` times, then connects."""

    class MilvusException(Exception):
        def __init__(self, message: str) -> None:
            super().__init__(message)
            self.message = message

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[dict] = []

    def MilvusClient(self, **kwargs):  # pymilvus's name
        self.calls.append(kwargs)
        if len(self.calls) <= self.failures:
            exc = self.MilvusException("Fail connecting to server on 127.0.0.1:1, illegal connection params or "
                                       "server unavailable")
            raise exc from _Unavailable("GOAWAY received")
        return "client"


def test_clients_ping_no_more_often_than_grpc_servers_allow(monkeypatch: pytest.MonkeyPatch) -> None:
    """gRPC servers (milvus-lite's too) drop a connection whose client pings more often than every 5
    minutes with GOAWAY "too_many_pings"; pymilvus's own default is every 10 s."""
    from ragqa.store import milvus

    fake = _FakePymilvus(failures=0)
    monkeypatch.setattr(milvus, "_pymilvus", lambda: fake)
    assert milvus.connect(Settings(store="grpc://127.0.0.1:19530")) == "client"
    options = fake.calls[0]["grpc_options"]
    assert options["grpc.keepalive_time_ms"] >= 300_000
    assert fake.calls[0]["uri"] == "http://127.0.0.1:19530"


def test_a_connection_dropped_while_connecting_is_tried_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragqa.errors import RagqaError
    from ragqa.store import milvus

    monkeypatch.setattr(milvus, "CONNECT_RETRY_S", 0.0)
    fake = _FakePymilvus(failures=1)
    monkeypatch.setattr(milvus, "_pymilvus", lambda: fake)
    assert milvus.connect(Settings(store="http://127.0.0.1:1")) == "client" and len(fake.calls) == 2

    fake = _FakePymilvus(failures=5)  # nothing answers: one line, after one more try, not five
    monkeypatch.setattr(milvus, "_pymilvus", lambda: fake)
    with pytest.raises(RagqaError, match=r"^cannot reach Milvus at http://127.0.0.1:1: Fail connecting"):
        milvus.connect(Settings(store="http://127.0.0.1:1"))
    assert len(fake.calls) == 2
