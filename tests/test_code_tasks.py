"""Generated code tasks pass the gate only when the reference passes and an empty stub fails."""

from __future__ import annotations

import asyncio
import json

from schemas.records import Failure, Task
from simulators.llm.base import Sampling
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
