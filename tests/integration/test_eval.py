"""`ragqa eval` on a slice of the shared CMRC2018 data: the default must beat the seed's retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CMRC = Path(__file__).resolve().parents[2].parent / "shared" / "eval" / "zh_mrc" / "cmrc2018_trial.squad.json"


@pytest.mark.skipif(not CMRC.exists(), reason="../shared/eval is not beside this checkout")
def test_default_retrieval_beats_the_seed_configuration(run_ragqa) -> None:
    args = ("eval", str(CMRC), "--max-contexts", "40", "--json")
    default = json.loads(run_ragqa(*args).stdout)
    seed = json.loads(run_ragqa(*args, "--seed-baseline").stdout)

    assert default["questions"] == seed["questions"] > 100
    k = default["settings"]["k"]
    assert seed["settings"]["k"] == 1
    # what the chain gets to read: the question's own context among the chunks handed to the LLM
    assert default[f"recall@{k}(k)"] >= 0.9
    assert default[f"recall@{k}(k)"] > seed["recall@1(k)"] + 0.2
    assert default[f"answer_in_context@{k}(k)"] > seed["answer_in_context@1(k)"] + 0.2
    # and the default ranks better at every depth, not only by reading more chunks
    assert default["mrr"] > seed["mrr"]
