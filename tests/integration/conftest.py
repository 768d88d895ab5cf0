"""Integration tests: the real starter models (SmolLM2 GGUF, multilingual-e5-small) end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from netfixtures import free_port, stop, wait_http

INTEGRATION = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/integration is marked ``integration`` (a ``pytestmark`` in a conftest
    is ignored by pytest), so ``-m "not integration"`` leaves them all out."""
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def run_ragqa(tmp_path: Path):
    """Run the real CLI in a subprocess with a private cache; returns CompletedProcess."""
    cache = tmp_path / "cache"

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "RAGQA_CACHE_DIR": str(cache), "RAGQA_DATA_DIR": str(cache / "data"),
               "RAGQA_TEMPERATURE": "0"}
        proc = subprocess.run(
            [sys.executable, "-m", "ragqa", *args], capture_output=True, text=True, env=env, timeout=600
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ragqa {args} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    run.cache = cache  # type: ignore[attr-defined]
    return run


@pytest.fixture
def ask_json(run_ragqa):
    """`ragqa ask ... --json`, parsed."""

    def ask(*args: str) -> dict:
        return json.loads(run_ragqa("ask", *args, "--json").stdout)

    return ask


# -- the web page -------------------------------------------------------------------------------

WEB_DOC = """# The Quillon bridge

The Quillon bridge in Marrowvale was built in 1873 by the engineer Odile Brask.
It crosses the river Fenn with seven stone arches.

# The market

Every Thursday a cheese market is held on the bridge.
"""


@pytest.fixture(scope="session")
def web_doc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A document written for the web tests (its facts are in no model's training data)."""
    path = tmp_path_factory.mktemp("web-docs") / "quillon_bridge.md"
    path.write_text(WEB_DOC, encoding="utf-8")
    return path


def start_web_server(cache: Path, *extra: str):
    """`python app.py` on a free port with the real starter models; -> (process, url, log file)."""
    root = Path(__file__).resolve().parents[2]
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")},
           "RAGQA_CACHE_DIR": str(cache), "RAGQA_DATA_DIR": str(cache / "data"), "RAGQA_TEMPERATURE": "0",
           "RAGQA_MAX_NEW_TOKENS": "120",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    log_path = cache / "server.log"
    cache.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(root / "app.py"), "--port", str(port), *extra], cwd=root,
                                env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_http(url, proc, log_path)
    except BaseException:
        stop_web_server(proc)
        raise
    return proc, url


def stop_web_server(proc: subprocess.Popen) -> None:
    stop(proc)


@pytest.fixture(scope="session")
def web_server(tmp_path_factory: pytest.TempPathFactory):
    """The page on a free port, shared by the web tests; yields its URL."""
    proc, url = start_web_server(tmp_path_factory.mktemp("web-cache"))
    yield url
    stop_web_server(proc)


@pytest.fixture
def start_page(tmp_path: Path):
    """Start another page with extra flags (`start_page("--max-file-mb", "1")`) -> its URL; stopped after the test."""
    procs: list[subprocess.Popen] = []

    def start(*extra: str) -> str:
        proc, url = start_web_server(tmp_path / f"page-{len(procs)}", *extra)
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        stop_web_server(proc)


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()
