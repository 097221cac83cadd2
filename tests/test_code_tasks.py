"""Generated code tasks pass the gate only when the reference passes and an empty stub fails."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.parquet_io import read_rows
from schemas.records import Failure, Task
from simulators.llm import registry
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel
from tests.helpers import agent, role_model
from toolspecs.code_tasks import stub_of, write_code_task

SOLUTION = '''def add(a, b):
    """Sum of a and b."""
    return a + b


class Counter:
    def __init__(self):
        self.n = 0

    def bump(self):
        self.n += 1
        return self.n
'''
TESTS = '''from calc import Counter, add


def test_add():
    assert add(2, 3) == 5


def test_counter():
    c = Counter()
    assert c.bump() == 1 and c.bump() == 2
'''


def generate(draft: dict[str, str]) -> Task | Failure:
    model = role_model({"synthesizer": lambda request: draft})
    return asyncio.run(write_code_task(
        model, agent(), "arithmetic helpers", "easy", Sampling(), {}, attempts=1
    ))


def draft(**changes: str) -> dict[str, str]:
    return {"module": "calc.py", "problem": "I need an add function and a counter class.",
            "solution": SOLUTION, "tests": TESTS, **changes}


def test_the_stub_keeps_signatures_and_docstrings_and_does_nothing() -> None:
    stub = stub_of(SOLUTION)
    assert "def add(a, b):" in stub and "Sum of a and b." in stub
    assert "return a + b" not in stub and stub.count("raise NotImplementedError") == 3


def test_a_good_draft_becomes_a_task_with_hidden_tests() -> None:
    task = generate(draft())
    assert isinstance(task, Task), task
    assert task.workspace is not None
    assert task.workspace.files["calc.py"] == stub_of(SOLUTION)
    assert list(task.workspace.hidden_tests.values()) == [TESTS]
    assert "calc.py" in task.goal


def test_drafts_that_break_a_rule_are_failures_naming_it() -> None:
    wrong = generate(draft(solution=SOLUTION.replace("a + b", "a - b")))
    assert isinstance(wrong, Failure) and wrong.error_type == "DraftRejected:reference_passes"
    assert "1 of 2 tests pass" in wrong.error and "test_add" in wrong.error
    trivial = generate(draft(tests="import calc\n\n\ndef test_module():\n    assert calc\n"))
    assert isinstance(trivial, Failure) and trivial.error_type == "DraftRejected:stub_fails"
    empty = generate(draft(tests="import calc\n"))
    assert isinstance(empty, Failure) and empty.error_type == "DraftRejected:tests_collected"
    broken = generate(draft(solution="def add(:\n"))
    assert isinstance(broken, Failure) and broken.error_type == "DraftRejected:parses"
    assert json.loads(json.dumps(broken.model_dump()))["stage"] == "code_tasks"


# -- `agentmill code-tasks`: a domain folder that `run --domain` plays -------------------------

BAD_STUB_TESTS = "import calc\n\n\ndef test_module():\n    assert calc.add\n"


def by_topic(request) -> Any:
    """A synthesizer scripted per slot, by the topic it is asked for (default TOPICS order)."""
    if "Topic: run-length" in request.last:
        return draft()  # kept
    if "Topic: roman" in request.last:
        return draft(solution=SOLUTION.replace("a + b", "a - b"))  # reference fails its tests
    if "Topic: a bounded queue" in request.last:
        return draft(tests=BAD_STUB_TESTS)  # passes on the empty stub
    return "this is not JSON {"  # malformed, every attempt: a Failure


def register_synthesizer(name: str) -> None:
    registry.register(ModelConfig(backend="scripted", model=name), ScriptedModel(by_topic))


def code_tasks(out: Path, count: int = 4, name: str = "drafts", *extra: str) -> Any:
    register_synthesizer(name)
    return CliRunner().invoke(app, [
        "code-tasks", "--out", str(out), "--count", str(count),
        "--backend", "scripted", "--model", name, *extra,
    ])


def test_code_tasks_keeps_what_passes_names_each_rejection_and_reconciles(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    result = code_tasks(out)
    assert result.exit_code == 0, result.output
    assert "1 kept, 2 rejected (1 reference_passes, 1 stub_fails), 1 failures" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["asked"] == 4 == counts["kept"] + counts["rejected"] + counts["failures"]
    assert manifest["reconcile"]["ok"]
    assert manifest["rejected_by_rule"] == {"reference_passes": 1, "stub_fails": 1}
    rejected = read_rows(out / "rejected")
    assert sorted(r["error_type"] for r in rejected) == [
        "DraftRejected:reference_passes", "DraftRejected:stub_fails"]
    assert all(r["raw_output"] for r in rejected)  # the draft itself, to look at
    (failure,) = read_rows(out / "failures")
    assert failure["input_id"] == "slot-3" and "not JSON" in failure["error"]
    # The kept draft is a repo in the coding domain's layout.
    (entry,) = json.loads((out / "tasks.json").read_text())
    repo = out / entry["workspace"]
    assert (repo / "files" / "calc.py").read_text() == stub_of(SOLUTION)
    visible = (repo / "files" / "tests" / "test_calc.py").read_text()
    assert "def test_add" in visible and "def test_counter" not in visible
    assert (repo / "hidden" / "test_calc_hidden.py").read_text() == TESTS
    assert (repo / "solution" / "calc.py").read_text() == SOLUTION


def test_the_generated_folder_loads_and_plays_in_run_domain(tmp_path: Path) -> None:
    from pipelines.run import run
    from tests.test_pipeline import scripted_config
    from toolspecs.domain import load_domain

    out = tmp_path / "generated"
    assert code_tasks(out, 1).exit_code == 0
    domain = load_domain(out)
    assert domain.failures == [] and len(domain.tasks) == 1
    assert {"read_file", "write_file", "run_tests"} <= {t.name for t in domain.tools}
    manifest = run(scripted_config(tmp_path / "run", episodes=1, domain=str(out)))
    assert manifest["reconcile"]["ok"] and manifest["counts"]["rl"] == 1
    (row,) = read_rows(tmp_path / "run" / "rl")
    assert json.loads(row["workspace"])["hidden_tests"] == {"test_calc_hidden.py": TESTS}
    (trajectory,) = read_rows(tmp_path / "run" / "trajectories")
    hidden = json.loads(trajectory["final_state"])["workspace"]["hidden_tests"]
    assert hidden["total"] == 2 and hidden["passed"] == 0  # the stub, untouched: nothing passes


def test_code_tasks_resumes_and_refuses_a_folder_that_is_not_its_own(tmp_path: Path) -> None:
    out = tmp_path / "generated"
    assert code_tasks(out, 2, "resume").exit_code == 0
    again = code_tasks(out, 4, "resume")  # two more slots: the first two are reused
    assert again.exit_code == 0, again.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["reused"] == 2 and manifest["counts"]["asked"] == 4
    assert manifest["reconcile"]["ok"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    refused = code_tasks(mine, 1, "resume")
    assert refused.exit_code == 2 and "not an agentmill run folder" in refused.output
    assert "tasks.json" in refused.output and sorted(p.name for p in mine.iterdir()) == [
        "notes.txt"]
    forced = code_tasks(mine, 1, "resume", "--force")
    assert forced.exit_code == 0 and (mine / "notes.txt").read_text() == "keep me"


def test_code_tasks_stops_at_start_without_a_sandbox(tmp_path: Path, monkeypatch) -> None:
    from simulators import sandbox

    monkeypatch.setattr(sandbox, "_probe", lambda: "bubblewrap (bwrap) is not installed")
    result = code_tasks(tmp_path / "out", 1, "nosandbox")
    assert result.exit_code == 2 and "sandbox unavailable" in result.output
    assert not (tmp_path / "out").exists()
