"""`code-tasks` on the embedded SmolLM2 through vLLM's CPU build: whatever the 135M model
writes, every slot ends kept, rejected by a named rule, or a Failure, and the counts reconcile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.code_tasks import CodeTasksConfig, generate
from pipelines.parquet_io import read_rows
from simulators.llm.base import Sampling
from toolspecs.domain import load_domain

pytestmark = pytest.mark.e2e
RULES = {"parses", "module_name", "tests_collected", "reference_passes", "stub_fails"}


def test_code_tasks_on_the_embedded_model(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    manifest = generate(CodeTasksConfig(
        out=str(out), count=3, attempts=1, sampling=Sampling(temperature=0.8, max_tokens=400),
    ))
    counts = manifest["counts"]
    assert counts["asked"] == 3 == counts["kept"] + counts["rejected"] + counts["failures"]
    assert manifest["reconcile"]["ok"]
    assert manifest["tokens"]["synthesizer"]["completion"] > 0
    assert set(manifest["rejected_by_rule"]) <= RULES
    assert sum(manifest["rejected_by_rule"].values()) == counts["rejected"]
    for row in read_rows(out / "rejected"):
        assert row["error_type"].removeprefix("DraftRejected:") in RULES and row["error"]
    assert len(read_rows(out / "failures")) == counts["failures"]
    domain = load_domain(out)  # what was kept loads as a domain, even when it is nothing
    assert len(domain.tasks) == counts["kept"] == len(json.loads((out / "tasks.json").read_text()))
