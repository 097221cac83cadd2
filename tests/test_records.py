"""Records: content-hash ids, name validation, Arrow round trips and the exported JSON Schemas."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import pyarrow as pa
import pytest
from pydantic import BaseModel, ValidationError

from schemas.arrow import (
    REJECTED_SCHEMA,
    SCHEMAS,
    SFT_SCHEMA,
    from_row,
    rejected_row,
    sft_row,
    to_row,
)
from schemas.jsonschema_export import EXPORTED, JSON_DIR, render
from schemas.records import (
    AgentSpec,
    CriterionScore,
    Failure,
    FunctionCall,
    JudgedTrajectory,
    Judgement,
    Message,
    RLTask,
    Rubric,
    Task,
    TokenCount,
    ToolCall,
    ToolSpec,
    Trajectory,
)

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather for a city, in Celsius unless asked otherwise.",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["C", "F"]}},
        "required": ["city"],
    },
    returns={"type": "object", "properties": {"temp": {"type": "number"}}},
    domain="travel",
)
BOOK = ToolSpec(
    name="book_table",
    description="Book a restaurant table for a party.",
    parameters={"type": "object", "properties": {"people": {"type": "integer", "minimum": 1}}},
    domain="travel",
    side_effect="write",
)
RUBRIC = Rubric(
    success_criteria=["The agent reports the weather in Paris."],
    expected_tools=["get_weather"],
    checkpoints=["called get_weather with city=Paris"],
)


def agent() -> AgentSpec:
    return AgentSpec(
        name="Concierge",
        domain="travel",
        system_prompt="You are a concierge.",
        tool_ids=[WEATHER.id, BOOK.id],
        tools=[WEATHER, BOOK],
        policy="Confirm before booking.",
    )


def task() -> Task:
    return Task(
        agent_id=agent().id,
        goal="Know the weather in Paris.",
        user_knows=["city: Paris"],
        user_withholds=["unit: F"],
        difficulty="medium",
        rubric=RUBRIC,
        initial_state={"weather": {"Paris": 18}},
    )


def messages() -> list[Message]:
    return [
        Message(role="system", content="You are a concierge."),
        Message(role="user", content="What's the weather in Paris?"),
        Message(
            role="assistant",
            tool_calls=[
                ToolCall(
                    id="call_1",
                    function=FunctionCall(name="get_weather", arguments='{"city": "Paris"}'),
                )
            ],
        ),
        Message(role="tool", tool_call_id="call_1", name="get_weather", content='{"temp": 18}'),
        Message(role="assistant", content="It is 18°C in Paris."),
    ]


def trajectory() -> Trajectory:
    return Trajectory(
        task_id=task().id,
        agent_id=agent().id,
        persona_id="persona_1",
        domain="travel",
        messages=messages(),
        tools=[WEATHER.openai_tool(), BOOK.openai_tool()],
        final_state={"weather": {"Paris": 18}},
        token_counts={"agent": TokenCount(prompt=120, completion=30, requests=2)},
        models={"agent": "smollm2-135m", "user": "smollm2-135m"},
        seed=7,
        end_reason="agent_final",
        turns=1,
    )


def rl_task() -> RLTask:
    return RLTask(
        task_id=task().id,
        agent_id=agent().id,
        domain="travel",
        difficulty="medium",
        goal="Know the weather in Paris.",
        prompt=messages()[:2],
        tools=[WEATHER.openai_tool()],
        rubric=RUBRIC,
        initial_state={"weather": {"Paris": 18}},
        tool_specs=[WEATHER.model_dump(mode="json")],
    )


def failure() -> Failure:
    return Failure(
        stage="episodes",
        input_id="task_1",
        error_type="TimeoutError",
        error="model did not answer",
        source="tasks/part-00000-of-00001.parquet",
        raw_output='{"partial": ',
    )


def judgement(passed: bool) -> Judgement:
    return Judgement(
        trajectory_id=trajectory().id,
        scores=[CriterionScore(criterion="weather reported", score=1.0 if passed else 0.0)],
        score=1.0 if passed else 0.0,
        passed=passed,
        reasons=["ok"] if passed else ["never called get_weather"],
        failed_checks=[] if passed else ["expected_tools"],
        judge_model="smollm2-135m",
    )


# ids ------------------------------------------------------------------------------------------


def test_equal_content_gives_equal_id() -> None:
    a = ToolSpec(**WEATHER.model_dump(exclude={"id"}))
    b = ToolSpec.model_validate(WEATHER.model_dump(mode="json", exclude={"id"}))
    assert a.id == b.id == WEATHER.id
    assert WEATHER.id.startswith("tool_")
    assert trajectory().id == trajectory().id
    assert task().id == task().id


def test_defaults_spelled_out_give_the_same_id() -> None:
    implicit = ToolSpec(name="ping", description="Check the service answers.")
    explicit = ToolSpec(
        name="ping",
        description="Check the service answers.",
        parameters={"type": "object", "properties": {}},
        domain="general",
        source="authored",
        side_effect="read",
    )
    assert implicit.id == explicit.id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "get_weather_now"),
        ("description", "Current weather for a city."),
        ("parameters", {"type": "object", "properties": {"city": {"type": "string"}}}),
        ("returns", None),
        ("domain", "weather"),
        ("source", "mcp"),
        ("side_effect", "write"),
    ],
)
def test_any_field_change_changes_the_id(field: str, value: Any) -> None:
    data = WEATHER.model_dump(exclude={"id"})
    assert data[field] != value
    changed = ToolSpec(**{**data, field: value})
    assert changed.id != WEATHER.id


def test_nested_changes_change_the_id() -> None:
    base = trajectory()
    other_messages = messages()
    other_messages[1] = Message(role="user", content="What's the weather in Lyon?")
    assert Trajectory(**{**base.model_dump(exclude={"id"}), "messages": other_messages}).id != (
        base.id
    )
    assert Task(**{**task().model_dump(exclude={"id"}), "difficulty": "hard"}).id != task().id


def test_token_counts_do_not_change_a_trajectory_id() -> None:
    """Token counts are bookkeeping, not content: a rerun's trajectory keeps its id."""
    base = trajectory()
    recounted = Trajectory(
        **{**base.model_dump(exclude={"id"}), "token_counts": {"agent": TokenCount(prompt=1)}}
    )
    assert recounted.id == base.id


def test_explicit_id_is_kept() -> None:
    spec = ToolSpec(id="tool_mine", name="ping", description="Check the service answers.")
    assert spec.id == "tool_mine"
    assert Failure(id="f1", stage="s", input_id="i", error_type="E", error="e").id == "f1"


def test_ids_are_prefixed_per_record_type() -> None:
    assert agent().id.startswith("agent_")
    assert task().id.startswith("task_")
    assert trajectory().id.startswith("traj_")
    assert rl_task().id.startswith("rl_")
    assert failure().id.startswith("failure_")
    assert judgement(True).id.startswith("judgement_")


# names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["get_weather", "_private", "ns.tool", "kebab-case", "A1", "x" * 64]
)
def test_valid_names_accepted(name: str) -> None:
    assert ToolSpec(name=name, description="A tool.").name == name


@pytest.mark.parametrize(
    "name", ["", "get weather", "1tool", "-dash", "!pg", "naïve", "x" * 65, "a/b"]
)
def test_invalid_names_rejected_with_a_message(name: str) -> None:
    with pytest.raises(ValidationError) as info:
        ToolSpec(name=name, description="A tool.")
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [("name",)]
    assert "is not a valid function name" in errors[0]["msg"]
    assert repr(name) in errors[0]["msg"]


def test_empty_description_and_unknown_fields_rejected() -> None:
    with pytest.raises(ValidationError):
        ToolSpec(name="ping", description="")
    with pytest.raises(ValidationError):
        ToolSpec(name="ping", description="A tool.", colour="blue")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ToolSpec(name="ping", description="A tool.", side_effect="delete")  # type: ignore[arg-type]


# Arrow ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record",
    [WEATHER, BOOK, agent(), task(), trajectory(), rl_task(), failure()],
    ids=["toolspec", "toolspec-no-returns", "agent", "task", "trajectory", "rl", "failure"],
)
def test_arrow_round_trip(record: BaseModel) -> None:
    cls = type(record)
    schema = SCHEMAS[cls]
    row = to_row(record)
    assert set(row) == set(schema.names)
    table = pa.Table.from_pylist([row], schema=schema)
    assert table.schema == schema
    back = from_row(cls, table.to_pylist()[0])
    assert back == record
    assert back.id == record.id  # type: ignore[attr-defined]


def test_trajectory_messages_are_typed_structs() -> None:
    row = to_row(trajectory())
    table = pa.Table.from_pylist([row], schema=SCHEMAS[Trajectory])
    stored = table.to_pylist()[0]["messages"]
    call = stored[2]["tool_calls"][0]
    assert call == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    assert stored[3]["tool_call_id"] == "call_1"
    assert stored[1]["content"] == "What's the weather in Paris?"
    assert isinstance(table.to_pylist()[0]["tools"], str)


def test_sft_row_conforms_to_sft_schema() -> None:
    row = sft_row(trajectory(), judgement(True))
    assert set(row) == set(SFT_SCHEMA.names)
    table = pa.Table.from_pylist([row], schema=SFT_SCHEMA)
    stored = table.to_pylist()[0]
    assert stored["judge_score"] == 1.0
    assert from_row(Trajectory, stored) == trajectory()


def test_rejected_row_conforms_to_rejected_schema() -> None:
    rejected = JudgedTrajectory(trajectory=trajectory(), judgement=judgement(False))
    row = rejected_row(rejected)
    assert set(row) == set(REJECTED_SCHEMA.names)
    stored = pa.Table.from_pylist([row], schema=REJECTED_SCHEMA).to_pylist()[0]
    assert stored["failed_checks"] == ["expected_tools"]
    assert Judgement.model_validate_json(stored["judgement"]) == judgement(False)
    assert from_row(Trajectory, stored) == trajectory()
    assert rejected.id == trajectory().id


# exported JSON Schemas ------------------------------------------------------------------------

REGENERATE = "run `python -m schemas.jsonschema_export` and commit schemas/json/"


@pytest.mark.parametrize("name", sorted(EXPORTED))
def test_exported_json_schema_matches_the_model(name: str) -> None:
    path = JSON_DIR / f"{name}.schema.json"
    assert path.is_file(), f"{path} is missing; {REGENERATE}"
    assert path.read_text(encoding="utf-8") == render(name), (
        f"{path} drifted from schemas.records.{EXPORTED[name].__name__}; {REGENERATE}"
    )


def test_no_stale_exported_schemas() -> None:
    on_disk = {p.name for p in JSON_DIR.glob("*.schema.json")}
    assert on_disk == {f"{name}.schema.json" for name in EXPORTED}, REGENERATE


def test_exported_toolspec_schema_validates_a_library_style_spec() -> None:
    schema = json.loads(render("toolspec"))
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert not list(validator.iter_errors(WEATHER.model_dump(mode="json", exclude={"id"})))
    assert list(validator.iter_errors({"name": "x"}))  # description is required
