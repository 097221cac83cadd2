"""Generated coding tasks, kept only when their tests really tell right code from wrong.

A model writes a problem, a reference solution (one Python module) and pytest tests for it. The
stub the agent starts from is not the model's: it is the reference with every function and
method body replaced by `raise NotImplementedError`, signatures and docstrings kept. A draft
becomes a task only when, in the sandbox,

- `parses`: the solution and the tests are valid Python,
- `module_name`: the module is not named like a test file (pytest would collect it),
- `tests_collected`: the tests define at least one test function,
- `reference_passes`: every test passes on the reference solution, and
- `stub_fails`: at least one test fails on the stub (else the tests test nothing).

A draft that breaks a rule becomes a `Failure` whose error names the rule and what happened;
the tests become the task's hidden tests, the stub its workspace with one visible test file
(the tests' first test and what it needs). `pipelines/code_tasks.py` (`agentmill code-tasks`)
turns many of them into a domain folder.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from schemas.records import (
    AgentSpec,
    Difficulty,
    Failure,
    Message,
    Rubric,
    Task,
    WorkspaceSpec,
    content_id,
)
from simulators.ask import Usage, ask
from simulators.llm.base import ChatModel, Sampling
from simulators.workspace import Workspace
from simulators.workspace_tools import count_hidden_tests, run_hidden_tests

STAGE = "code_tasks"
MODULE = r"^[a-z_][a-z0-9_]{0,40}\.py$"
CODE_TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "module": {"type": "string", "pattern": MODULE},
        "problem": {"type": "string", "minLength": 20},
        "solution": {"type": "string", "minLength": 10},
        "tests": {"type": "string", "minLength": 10},
    },
    "required": ["module", "problem", "solution", "tests"],
    "additionalProperties": False,
}


class DraftRejected(ValueError):
    """A generated draft broke a rule; `rule` names it."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule


def stub_of(solution: str) -> str:
    """`solution` with every function body replaced by `raise NotImplementedError`."""
    tree = ast.parse(solution)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            keep: list[ast.stmt] = []
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                keep.append(first)
            keep.append(ast.Raise(exc=ast.Name(id="NotImplementedError", ctx=ast.Load())))
            node.body = keep
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


async def check_draft(draft: dict[str, str]) -> dict[str, Any]:
    """Apply the rules to a draft; raises DraftRejected naming the first rule it breaks."""
    module, solution, tests = draft["module"], draft["solution"], draft["tests"]
    for name, text in (("solution", solution), ("tests", tests)):
        try:
            ast.parse(text)
        except SyntaxError as exc:
            raise DraftRejected("parses", f"the {name} is not valid Python: {exc.msg}") from exc
    if module.startswith(("test_", "conftest")) or module.endswith("_test.py"):
        raise DraftRejected("module_name", f"{module} is named like a test file")
    hidden = {f"test_{module.removesuffix('.py')}_hidden.py": tests}
    if count_hidden_tests(hidden) == 0:
        raise DraftRejected("tests_collected", "the tests define no test function")
    with Workspace({module: solution}) as workspace:
        reference = await run_hidden_tests(workspace, hidden)
    if reference["passed"] < reference["total"]:
        failing = [k for k, v in reference["outcomes"].items() if v != "passed"]
        raise DraftRejected(
            "reference_passes",
            f"{reference['passed']} of {reference['total']} tests pass on the reference "
            f"solution (failing: {', '.join(failing[:3]) or reference.get('error', '?')})",
        )
    stub = stub_of(solution)
    with Workspace({module: stub}) as workspace:
        on_stub = await run_hidden_tests(workspace, hidden)
    if on_stub["passed"] >= on_stub["total"]:
        raise DraftRejected(
            "stub_fails", f"all {on_stub['total']} tests pass on an empty stub: they test nothing"
        )
    return {"stub": stub, "hidden": hidden, "tests": reference["total"],
            "visible": {f"tests/test_{module.removesuffix('.py')}.py": visible_tests(tests)}}


def visible_tests(tests: str) -> str:
    """The tests' first test with everything else at top level (imports, helpers, fixtures),
    so the agent can run one real test; the whole suite stays hidden."""
    tree = ast.parse(tests)
    body: list[ast.stmt] = []
    shown = False
    for node in tree.body:
        is_test = (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test")
        ) or (isinstance(node, ast.ClassDef) and node.name.startswith("Test"))
        if is_test and shown:
            continue
        shown = shown or is_test
        body.append(node)
    tree.body = body
    return ast.unparse(tree) + "\n"


@dataclass
class CodeDraft:
    """A model's draft and what the gate made of it: `checked` when kept, else `rejection`."""

    topic: str
    difficulty: Difficulty
    draft: dict[str, str]
    raw: str
    checked: dict[str, Any] | None = None
    rejection: Failure | None = None


PROMPT = (
    "You write test tasks for a coding assistant: programming exercises with tests. Give a "
    "module file name, the problem as a user would state it, a complete reference solution "
    "(one Python module, standard library only) and pytest tests (plain asserts, importing "
    "from the module) that pass on the solution and fail on any unfinished version."
)


async def draft_code_task(
    model: ChatModel,
    topic: str,
    difficulty: Difficulty,
    sampling: Sampling,
    usage: Usage,
    attempts: int = 3,
) -> CodeDraft:
    """Ask for a draft on `topic` and put it through the gate; raises when the model gives no
    usable answer after `attempts` (the caller's Failure), never for a rejected draft."""
    messages = [
        Message(role="system", content=PROMPT),
        Message(role="user", content=f"Topic: {topic}\nDifficulty: {difficulty}"),
    ]
    completion = await ask(
        model, "synthesizer", usage, messages, sampling,
        schema=CODE_TASK_SCHEMA, attempts=attempts,
    )
    draft = {k: str(completion.parsed[k]) for k in ("module", "problem", "solution", "tests")}
    result = CodeDraft(topic, difficulty, draft, completion.text)
    try:
        result.checked = await check_draft(draft)
    except DraftRejected as exc:
        result.rejection = Failure(
            stage=STAGE, input_id=content_id("codedraft", draft),
            error_type=f"DraftRejected:{exc.rule}", error=str(exc),
            raw_output=completion.text[:4000],
        )
    return result


def task_of(drafted: CodeDraft, agent_id: str) -> Task:
    """The task a kept draft becomes: the stub and a visible test as its files, the tests
    hidden."""
    assert drafted.checked is not None, "only a kept draft becomes a task"
    module = drafted.draft["module"]
    return Task(
        agent_id=agent_id,
        goal=f"{drafted.draft['problem']} (Implement it in {module}.)",
        user_knows=[f"the code goes in {module}", "tests can be run with run_tests"],
        difficulty=drafted.difficulty,
        rubric=Rubric(
            success_criteria=[
                f"The agent implements what the problem asks in {module}",
                "The agent runs the tests and reports the result honestly",
            ],
            expected_tools=["read_file", "write_file", "run_tests"],
        ),
        workspace=WorkspaceSpec(
            files={module: drafted.checked["stub"], **drafted.checked["visible"]},
            hidden_tests=drafted.checked["hidden"],
        ),
    )


async def write_code_task(
    model: ChatModel,
    agent: AgentSpec,
    topic: str,
    difficulty: Difficulty,
    sampling: Sampling,
    usage: Usage,
    attempts: int = 3,
) -> Task | Failure:
    """A coding task on `topic` for `agent`, or a Failure naming the rule its draft broke."""
    drafted = await draft_code_task(model, topic, difficulty, sampling, usage, attempts)
    if drafted.rejection is not None:
        return drafted.rejection
    return task_of(drafted, agent.id)
