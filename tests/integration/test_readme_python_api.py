"""README "Python API (LangChain components)": its example, run as it is, with the real starter models.

The code comes out of README.md at test time, so the README and this test cannot drift apart.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Python API (LangChain components)"


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme[readme.index(SECTION):]
    section = section[: section.find("\n## ", len(SECTION))]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"no ```python block in README's {SECTION!r} section"
    return match.group(1)


def test_readme_python_example_runs_end_to_end(tmp_path: Path) -> None:
    script = tmp_path / "readme_example.py"
    script.write_text(readme_example(), "utf-8")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")},
           "RAGQA_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert "March" in lines[0], proc.stdout  # the answer, from the festival chunk
    sources = [line for line in lines if re.match(r"  corpora/en/heron_festival\.md @\d+  score 0\.\d{3}$", line)]
    assert len(sources) == 2, proc.stdout  # the file makes two chunks; both are retrieved (k=3)
    assert "  corpora/en/heron_festival.md @0  score" in sources[0]  # the festival is in the first chunk
    assert re.search(r"\(chain stuff, model calls: 1\)$", proc.stdout, re.M), proc.stdout  # the file fits one prompt
    assert proc.stdout.rstrip().splitlines()[-1].startswith("1 file, 2 chunks; best match: corpora/en/heron_festival.md @")
    follow_up = proc.stdout.split(sources[-1], 1)[1].split("(chain stuff, model calls: 1)")[0]
    assert len(follow_up.split()) > 5, proc.stdout  # the streamed follow-up answer and the summary
