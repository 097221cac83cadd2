"""The rubric judge on the scripted backend: verdicts, retries, errors and a bounded prompt."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from filters.judge import (
    MAX_TRANSCRIPT_CHARS,
    JudgeError,
    JudgeResult,
    checks_judgement,
    judge,
    judge_messages,
    render_transcript,
    response_schema,
)
from schemas.records import FunctionCall, Message, Rubric, Task, ToolCall, Trajectory
from simulators.llm.base import Sampling
from simulators.llm.errors import ModelOutputError
from simulators.llm.scripted import Answer, ScriptedModel

TASK = Task(
    agent_id="agent_1",
    goal="Find the weather in Paris and book a table for two.",
    rubric=Rubric(
        success_criteria=[
            "The agent reports the current weather in Paris.",
            "The agent books a table for two people.",
        ],
        expected_tools=["get_weather", "book_table"],
        checkpoints=["book_table called with people=2"],
    ),
)


def traj(messages: list[Message]) -> Trajectory:
    return Trajectory(
        task_id=TASK.id,
        agent_id="agent_1",
        persona_id="persona_1",
        domain="travel",
        messages=messages,
        tools=[],
        end_reason="agent_final",
    )


def tool_call(call_id: str, name: str, arguments: str) -> Message:
    call = ToolCall(id=call_id, function=FunctionCall(name=name, arguments=arguments))
    return Message(role="assistant", tool_calls=[call])


GOOD = traj(
    [
        Message(role="system", content="You are a concierge."),
        Message(role="user", content="Weather in Paris? Then a table for 2."),
        tool_call("call_1", "get_weather", '{"city": "Paris"}'),
        Message(role="tool", tool_call_id="call_1", content='{"temp": 18, "sky": "clear"}'),
        tool_call("call_2", "book_table", '{"people": 2}'),
        Message(role="tool", tool_call_id="call_2", content='{"booked": true}'),
        Message(role="assistant", content="18°C and clear; your table for 2 is booked."),
    ]
)


def verdict(*scores: int) -> dict[str, Any]:
    return {f"c{i}": {"score": s, "reason": f"reason {i}"} for i, s in enumerate(scores, 1)}


def run(answers: list[Answer], **kwargs: Any) -> tuple[JudgeResult, ScriptedModel]:
    model = ScriptedModel(answers, name="judge-model")
    result = asyncio.run(judge(GOOD, TASK, model, **kwargs))
    return result, model


def test_passing_verdict() -> None:
    result, model = run([verdict(2, 1)])
    j = result.judgement
    assert j.passed and j.score == 0.75
    assert [s.score for s in j.scores] == [1.0, 0.5]
    assert [s.criterion for s in j.scores] == TASK.rubric.success_criteria
    assert j.reasons == ["reason 1", "reason 2"]
    assert j.judge_model == "judge-model" and j.trajectory_id == GOOD.id
    assert j.failed_checks == []
    assert result.requests == 1 and result.prompt_tokens > 0 and result.completion_tokens > 0
    # the constraint sent to the engine asks for c1..cN, each {score, reason}
    schema = model.requests[0].schema
    assert schema is not None and schema["required"] == ["c1", "c2"]
    assert schema["properties"]["c1"]["properties"]["score"]["enum"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("scores", "threshold", "passed", "score"),
    [
        ((2, 2), 0.5, True, 1.0),
        ((1, 1), 0.5, True, 0.5),
        ((2, 0), 0.5, False, 0.5),  # mean reaches the threshold, but one criterion is unmet
        ((1, 1), 0.6, False, 0.5),  # no zero, but the mean is below the threshold
        ((0, 0), 0.0, False, 0.0),
    ],
)
def test_verdict_rule(
    scores: tuple[int, int], threshold: float, passed: bool, score: float
) -> None:
    result, _ = run([verdict(*scores)], pass_threshold=threshold)
    assert result.judgement.passed is passed and result.judgement.score == score


def test_retry_after_answer_that_is_not_json() -> None:
    result, model = run(["the agent did well", verdict(2, 2)])
    assert result.judgement.passed and result.requests == 2
    seeds = [r.sampling.seed for r in model.requests]
    assert seeds[0] != seeds[1]
    assert model.requests[0].sampling.temperature == 0.0  # default: greedy first try
    assert model.requests[1].sampling.temperature > 0.0  # a greedy retry would repeat itself


@pytest.mark.parametrize(
    "bad",
    [
        {"c1": {"score": 2, "reason": "ok"}},  # a criterion missing
        verdict(2, 3),  # score outside 0..2
        {**verdict(2, 2), "c3": {"score": 2, "reason": "extra"}},
        {"c1": {"score": 2}, "c2": {"score": 2, "reason": "no reason for c1"}},
        [2, 2],
    ],
)
def test_retry_after_answer_that_breaks_the_schema(bad: Answer) -> None:
    result, _ = run([bad, verdict(2, 1)])
    alone, _ = run([verdict(2, 1)])
    assert result.judgement.score == 0.75 and result.requests == 2
    # the rejected answer came back from the engine, so its tokens count too
    assert result.completion_tokens > alone.completion_tokens
    assert result.prompt_tokens == 2 * alone.prompt_tokens


def test_judge_error_after_max_attempts_keeps_raw_output() -> None:
    model = ScriptedModel(["nope", verdict(9, 9), "still not json"], name="judge-model")
    with pytest.raises(JudgeError) as info:
        asyncio.run(judge(GOOD, TASK, model, max_attempts=3))
    error = info.value
    assert isinstance(error, ModelOutputError)
    assert error.raw_output == "still not json"
    assert error.attempts == 3 and len(model.requests) == 3
    assert len({r.sampling.seed for r in model.requests}) == 3
    assert GOOD.id in str(error)


def test_caller_sampling_and_attempts_are_honoured() -> None:
    model = ScriptedModel(["x"])
    with pytest.raises(JudgeError):
        asyncio.run(judge(GOOD, TASK, model, Sampling(seed=41, max_tokens=500), max_attempts=1))
    assert len(model.requests) == 1
    assert model.requests[0].sampling.seed == 41 and model.requests[0].sampling.max_tokens == 500


def test_seed_is_stable_per_trajectory() -> None:
    _, first = run([verdict(2, 2)])
    _, second = run([verdict(2, 2)])
    assert first.requests[0].sampling.seed == second.requests[0].sampling.seed


def test_prompt_carries_rubric_and_transcript() -> None:
    system, user = judge_messages(GOOD, TASK)
    assert system.role == "system" and "strict grader" in system.content  # type: ignore[operator]
    text = f"{system.content}\n{user.content}"
    for i, criterion in enumerate(TASK.rubric.success_criteria, 1):
        assert f"c{i}. {criterion}" in text
    assert "get_weather, book_table" in text
    assert "book_table called with people=2" in text
    assert TASK.goal in text
    assert 'get_weather({"city":"Paris"})' in text
    assert 'tool get_weather: {"temp": 18, "sky": "clear"}' in text
    assert "assistant: 18°C and clear" in text
    assert "You are a concierge." not in text  # the agent's system prompt is not graded


def test_prompt_is_bounded_for_a_huge_trajectory() -> None:
    messages = [
        Message(role="system", content="You are a concierge."),
        Message(role="user", content="FIRST REQUEST: weather in Paris " + "please " * 400),
    ]
    for i in range(400):
        messages += [
            tool_call(f"call_{i}", "get_weather", '{"city": "Paris", "note": "' + "z" * 900 + '"}'),
            Message(role="tool", tool_call_id=f"call_{i}", content="r" * 5000),
            Message(role="user", content=f"message {i} " + "u" * 3000),
        ]
    messages.append(Message(role="assistant", content="FINAL ANSWER: 18°C."))
    huge = traj(messages)
    transcript = render_transcript(huge)
    assert len(transcript) <= MAX_TRANSCRIPT_CHARS + 100
    assert transcript.startswith("user: FIRST REQUEST")
    assert transcript.endswith("assistant: FINAL ANSWER: 18°C.")
    assert "messages omitted" in transcript
    assert "r" * 401 not in transcript  # tool results clipped to ~400 characters

    model = ScriptedModel([verdict(2, 2)])
    asyncio.run(judge(huge, TASK, model))
    prompt_chars = sum(len(m["content"]) for m in model.requests[0].messages)
    assert prompt_chars < MAX_TRANSCRIPT_CHARS + 2500


def test_response_schema_shape() -> None:
    schema = response_schema(3)
    assert schema["required"] == ["c1", "c2", "c3"] and schema["additionalProperties"] is False


def test_checks_judgement() -> None:
    failed = ["unknown_tool: call_1 names 'foo', not offered"]
    j = checks_judgement(GOOD, failed)
    assert not j.passed and j.score == 0.0 and j.scores == []
    assert j.failed_checks == failed and j.judge_model == "checks"
    assert j.trajectory_id == GOOD.id
