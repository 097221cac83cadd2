"""Junk tasks never reach an episode; replies are never cut by a cap and cut ones are flagged."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path
from typing import Any

import pytest

from filters.checks import no_truncated_replies, truncation
from pipelines.parquet_io import read_rows
from pipelines.run import run
from schemas.records import Message, Outcome, Rubric, Task, Trajectory
from simulators.llm import registry
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel, ScriptRequest, schema_instance
from simulators.llm.toolcall import agent_output_schema, bound_schema
from tests import helpers
from tests.test_pipeline import scripted_config
from toolspecs.compose import write_task
from toolspecs.domain import load_domain
from toolspecs.task_gate import TaskRejected, gate, task_problems

AGENT = helpers.agent()
GOOD = Task(
    agent_id=AGENT.id,
    goal="Book the cheapest flight from SFO to JFK for Friday.",
    rubric=Rubric(success_criteria=["A flight from SFO to JFK is booked."],
                  expected_tools=["search_flights", "book_flight"]),
    initial_state={"bookings": {"BK-1": {"booking_id": "BK-1", "status": "held"}}},
    expected_outcome=Outcome(state={"bookings/BK-1/status": "confirmed"}),
)


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"goal": "abt-2293"}, "goal_not_a_request"),
        ({"goal": "goal_setting"}, "goal_not_a_request"),
        ({"rubric": Rubric(success_criteria=[","])}, "criterion_not_checkable"),
        ({"rubric": Rubric(success_criteria=["]}In order to book the flight"])},
         "criterion_not_checkable"),
        ({"rubric": Rubric(success_criteria=["Flight booked."], expected_tools=["fly_to_mars"])},
         "unknown_expected_tool"),
        ({"expected_outcome": Outcome(state={"bookings/BK-9/status": "confirmed"})},
         "outcome_path_missing"),
    ],
)
def test_each_gate_rule_names_itself(change: dict[str, Any], rule: str) -> None:
    junk = GOOD.model_copy(update={**change, "id": ""})
    problems = task_problems(junk, AGENT)
    assert problems and problems[0].startswith(rule)
    with pytest.raises(TaskRejected, match=rule):
        gate(junk, AGENT)


def test_a_real_task_passes_the_gate() -> None:
    assert task_problems(GOOD, AGENT) == []


def _task_answer(goal: str, criterion: str) -> dict[str, Any]:
    return {"goal": goal, "user_knows": [], "user_withholds": [], "success_criteria": [criterion],
            "expected_tools": ["search_flights"], "checkpoints": [], "initial_state": [],
            "expected_state": [], "expected_facts": []}


def test_the_task_writer_retries_junk_and_fails_naming_the_rule() -> None:
    good = _task_answer("Find me a flight from SFO to JFK.", "A flight is listed for SFO.")
    answers = [_task_answer("abt-2293", ","), _task_answer("Find me a flight.", ","),
               {**good, "success_criteria": [",", "A flight is listed for SFO."]}]
    model = ScriptedModel(answers)
    usage: dict[str, Any] = {}
    task = asyncio.run(write_task(model, AGENT, "easy", 0, Sampling(seed=1), usage))
    assert task.goal == "Find me a flight from SFO to JFK." and usage["synthesizer"].requests == 3
    assert task.rubric.success_criteria == ["A flight is listed for SFO."]  # the "," dropped
    always_junk = ScriptedModel([_task_answer("goal_setting", "ok")] * 3)
    with pytest.raises(Exception, match="goal_not_a_request"):
        asyncio.run(write_task(always_junk, AGENT, "easy", 0, Sampling(seed=1), {}))


def test_junk_tasks_become_failures_and_play_no_episode(tmp_path: Path) -> None:
    name = "junk-writer"

    def respond(request: ScriptRequest) -> Any:
        if "goal" in (request.schema or {}).get("properties", {}):
            value = schema_instance(request.schema, random.Random(1))
            return {**value, "goal": "abt-2293"}
        return schema_instance(request.schema or {"type": "string"},
                                       random.Random(2))

    registry.register(ModelConfig(backend="scripted", model=name), ScriptedModel(respond))
    try:
        manifest = run(scripted_config(tmp_path / "run", episodes=2, name=name))
    finally:
        registry.clear()
    failures = read_rows(tmp_path / "run" / "failures")
    assert manifest["counts"]["trajectories"] == 0 and manifest["counts"]["tasks"] == 0
    assert len([f for f in failures if f["stage"] == "tasks"]) == 2
    assert all("goal_not_a_request" in f["error"] for f in failures if f["stage"] == "tasks")


def test_a_domain_task_with_a_junk_goal_is_a_failure_naming_the_field(tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "retail"
    shutil.copytree(Path("data/domains/retail"), folder)
    tasks = json.loads((folder / "tasks.json").read_text())
    tasks[0]["goal"] = "abt-2293"
    (folder / "tasks.json").write_text(json.dumps(tasks))
    domain = load_domain(folder)
    assert len(domain.tasks) == len(tasks) - 1
    [failure] = [f for f in domain.failures if f.error_type == "TaskRejected"]
    assert "/0/goal" in failure.error and "goal_not_a_request" in failure.error


# truncated replies ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "You can check the course details on [",
        "Here are the flights I found for you, sorted by price:",
        "I have booked the flight (confirmation code",
        "Your booking for the flight from San Francisco to New York on Friday is confirmed and the",
        "Your booking for the flight from San Francisco to New York on Friday is confirmed and yo",
    ],
)
def test_a_reply_cut_mid_sentence_is_flagged(text: str) -> None:
    assert truncation(text) is not None
    trajectory = Trajectory(
        task_id="t", agent_id="a", persona_id="p", domain="d", tools=[], end_reason="agent_final",
        messages=[Message(role="user", content="hi"), Message(role="assistant", content=text)],
    )
    assert no_truncated_replies(trajectory, None)[0].startswith(  # type: ignore[arg-type]
        "truncated_reply: assistant message 1")


@pytest.mark.parametrize(
    "text",
    ["Done.", "Your booking id is BK-1042", "It costs 42", "Booked (seat 4A)!",
     "Is there anything else I can help you with today, or shall I close this request now?"],
)
def test_a_finished_reply_is_not_flagged(text: str) -> None:
    assert truncation(text) is None


def test_caps_never_cut_prose_but_still_bound_other_strings() -> None:
    schema = agent_output_schema(helpers.OPENAI_TOOLS)
    bounded = bound_schema(schema, 120, 4)
    calls, reply = bounded["anyOf"]
    assert "maxLength" not in reply["properties"]["content"]
    assert "contentMediaType" not in json.dumps(bounded)  # engines never see the mark
    city = calls["properties"]["tool_calls"]["items"]["anyOf"][0]["properties"]["arguments"]
    assert city["properties"]["city"]["maxLength"] == 120


def test_the_engine_sees_unmarked_reply_schemas() -> None:
    model = ScriptedModel([{"content": "Hello there.", "final": True}])
    from simulators.episode import FINAL_REPLY_SCHEMA

    asyncio.run(model.complete([Message(role="user", content="hi")],
                               response_schema=FINAL_REPLY_SCHEMA))
    sent = model.requests[0].schema
    assert sent is not None and "contentMediaType" not in json.dumps(sent)
