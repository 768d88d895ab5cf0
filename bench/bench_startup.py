"""Start-up cost of the CLI, this tree against an earlier commit, in one run.

Measures the wall time of two commands a user runs all day, alternating the two code versions run
by run (so a noisy neighbour hits both alike), and prints medians and the ratio:

- ``ragqa --help``: import and parse only;
- ``ragqa ask --kb NAME QUESTION --dry-run``: settings, the KB opened, the question embedded, hybrid
  retrieval, the prompt built with the model's tokenizer (no generation).

The earlier commit is checked out in a temporary git worktree and run from the same venv
(``PYTHONPATH`` puts its ``ragqa`` first). Both read the same knowledge base, built once with this tree.

    .venv/bin/python bench/bench_startup.py --before 8d397c8 --runs 10
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUESTION = "When is the Zorblat festival held?"


def timed(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


@contextlib.contextmanager
def two_trees(before_rev: str, tmp: str) -> Iterator[dict[str, dict[str, str]]]:
    """{"before": env, "after": env}: ``before_rev`` checked out in a temporary worktree under
    ``tmp``, each env putting its tree's ``ragqa`` first, with cache and data folders in ``tmp``
    (both read the same ones). Checks that each really runs its own code; removes the worktree."""
    before = Path(tmp) / "before"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(before), before_rev], cwd=REPO, check=True)
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
        base.update(RAGQA_CACHE_DIR=str(Path(tmp) / "cache"), RAGQA_DATA_DIR=str(Path(tmp) / "data"))
        trees = {"before": {**base, "PYTHONPATH": str(before)}, "after": {**base, "PYTHONPATH": str(REPO)}}
        for tree, env in trees.items():  # each version really runs its own code
            where = subprocess.run([sys.executable, "-c", "import ragqa; print(ragqa.__file__)"], env=env,
                                   cwd=tmp, capture_output=True, text=True, check=True).stdout.strip()
            assert where.startswith(env["PYTHONPATH"]), (tree, where)
        yield trees
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="the earlier commit (or any git revision)")
    parser.add_argument("--runs", type=int, default=10, help="runs of each command per version")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ragqa-startup-") as tmp, two_trees(args.before, tmp) as trees:
        py = [sys.executable, "-m", "ragqa"]  # run in tmp: `-m` puts the working folder first on sys.path
        subprocess.run([*py, "index", str(REPO / "corpora" / "en"), "--kb", "startup"], env=trees["after"],
                       cwd=tmp, check=True, capture_output=True)
        commands = {"ragqa --help": ["--help"],
                    "ask --kb --dry-run": ["ask", "--kb", "startup", QUESTION, "--dry-run"]}
        for cmd in commands.values():  # warm the OS page cache and the idf / model caches once
            for env in trees.values():
                timed([*py, *cmd], env, tmp)
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.runs):
            for label, cmd in commands.items():
                for tree, env in trees.items():
                    times.setdefault((label, tree), []).append(timed([*py, *cmd], env, tmp))

    print(f"{'command':<22} {'before s':>9} {'after s':>9} {'after/before':>13}   ({args.runs} runs each, medians)")
    for label in commands:
        b, a = statistics.median(times[(label, "before")]), statistics.median(times[(label, "after")])
        print(f"{label:<22} {b:>9.3f} {a:>9.3f} {a / b:>13.2f}")


if __name__ == "__main__":
    main()
