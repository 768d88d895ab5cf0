"""Integration tests: the real starter models (SmolLM2 GGUF, multilingual-e5-small) end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def run_ragqa(tmp_path: Path):
    """Run the real CLI in a subprocess with a private cache; returns CompletedProcess."""
    cache = tmp_path / "cache"

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "RAGQA_CACHE_DIR": str(cache), "RAGQA_TEMPERATURE": "0"}
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
