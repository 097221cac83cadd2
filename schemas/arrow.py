"""Arrow schemas for the records, and the row conversions Parquet IO uses.

Columns are typed where the shape is fixed; JSON Schemas, tools, world states and rubrics are JSON
text, since arbitrary schemas have no fixed Arrow type. Any Parquet reader can open the output.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import pyarrow as pa
from pydantic import BaseModel

from schemas.records import (
    AgentSpec,
    Failure,
    JudgedTrajectory,
    Judgement,
    Message,
    RLTask,
    Task,
    ToolSpec,
    Trajectory,
)

T = TypeVar("T", bound=BaseModel)

FUNCTION = pa.struct([("name", pa.string()), ("arguments", pa.string())])
TOOL_CALL = pa.struct([("id", pa.string()), ("type", pa.string()), ("function", FUNCTION)])
MESSAGE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        ("tool_calls", pa.list_(TOOL_CALL)),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]
)
MESSAGES = pa.list_(MESSAGE)

TOOLSPEC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("name", pa.string()),
        ("description", pa.string()),
        ("parameters", pa.string()),
        ("returns", pa.string()),
        ("domain", pa.string()),
        ("source", pa.string()),
        ("side_effect", pa.string()),
        ("entrypoint", pa.string()),
    ]
)
AGENT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("name", pa.string()),
        ("domain", pa.string()),
        ("system_prompt", pa.string()),
        ("tool_ids", pa.list_(pa.string())),
        ("tools", pa.string()),
        ("policy", pa.string()),
    ]
)
TASK_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("agent_id", pa.string()),
        ("slot", pa.int64()),
        ("goal", pa.string()),
        ("user_knows", pa.list_(pa.string())),
        ("user_withholds", pa.list_(pa.string())),
        ("difficulty", pa.string()),
        ("rubric", pa.string()),
        ("initial_state", pa.string()),
        ("expected_outcome", pa.string()),
        ("workspace", pa.string()),
    ]
)
_TRAJECTORY_FIELDS = [
    ("id", pa.string()),
    ("task_id", pa.string()),
    ("agent_id", pa.string()),
    ("persona_id", pa.string()),
    ("domain", pa.string()),
    ("messages", MESSAGES),
    ("tools", pa.string()),
    ("final_state", pa.string()),
    ("token_counts", pa.string()),
    ("models", pa.string()),
    ("seed", pa.int64()),
    ("end_reason", pa.string()),
    ("turns", pa.int64()),
    ("injected_faults", pa.string()),
    ("user_style", pa.string()),
    ("user_changed_mind", pa.bool_()),
]
TRAJECTORY_SCHEMA = pa.schema(_TRAJECTORY_FIELDS)
SFT_SCHEMA = pa.schema(
    [
        *_TRAJECTORY_FIELDS,
        ("judge_score", pa.float64()),
        ("reward", pa.float64()),
        ("judge_agreement", pa.float64()),
    ]
)
REJECTED_SCHEMA = pa.schema(
    [
        *_TRAJECTORY_FIELDS,
        ("judge_score", pa.float64()),
        ("reward", pa.float64()),
        ("judge_agreement", pa.float64()),
        ("failed_checks", pa.list_(pa.string())),
        ("judgement", pa.string()),
    ]
)
RL_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("task_id", pa.string()),
        ("agent_id", pa.string()),
        ("domain", pa.string()),
        ("difficulty", pa.string()),
        ("goal", pa.string()),
        ("user_knows", pa.list_(pa.string())),
        ("user_withholds", pa.list_(pa.string())),
        ("prompt", MESSAGES),
        ("tools", pa.string()),
        ("rubric", pa.string()),
        ("initial_state", pa.string()),
        ("expected_outcome", pa.string()),
        ("tool_specs", pa.string()),
        ("workspace", pa.string()),
    ]
)
FAILURE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("stage", pa.string()),
        ("input_id", pa.string()),
        ("error_type", pa.string()),
        ("error", pa.string()),
        ("source", pa.string()),
        ("raw_output", pa.string()),
    ]
)

# Fields stored as JSON text, per record type.
_JSON_FIELDS: dict[type[BaseModel], set[str]] = {
    ToolSpec: {"parameters", "returns"},
    AgentSpec: {"tools"},
    Task: {"rubric", "initial_state", "expected_outcome", "workspace"},
    Trajectory: {"tools", "final_state", "token_counts", "models", "injected_faults"},
    RLTask: {"tools", "rubric", "initial_state", "expected_outcome", "tool_specs", "workspace"},
    Failure: set(),
}
SCHEMAS: dict[type[BaseModel], pa.Schema] = {
    ToolSpec: TOOLSPEC_SCHEMA,
    AgentSpec: AGENT_SCHEMA,
    Task: TASK_SCHEMA,
    Trajectory: TRAJECTORY_SCHEMA,
    RLTask: RL_SCHEMA,
    Failure: FAILURE_SCHEMA,
}


def _message_row(message: dict[str, Any]) -> dict[str, Any]:
    return {name: message.get(name) for name in MESSAGE.names}


def to_row(record: BaseModel) -> dict[str, Any]:
    """A record as a dict matching its Arrow schema (JSON-text fields serialized)."""
    json_fields = _JSON_FIELDS[type(record)]
    row = record.model_dump(mode="json")
    for name in SCHEMAS[type(record)].names:
        row.setdefault(name, None)  # fields a record leaves out of its dump when unset
    for name in json_fields:
        if row.get(name) is not None:
            row[name] = json.dumps(row[name], ensure_ascii=False, sort_keys=True)
    for name in ("messages", "prompt"):
        if name in row:
            row[name] = [_message_row(m) for m in row[name]]
    return row


def from_row(cls: type[T], row: dict[str, Any]) -> T:
    """The record a row came from; inverse of `to_row`."""
    data = dict(row)
    for name in _JSON_FIELDS[cls]:
        if isinstance(data.get(name), str):
            data[name] = json.loads(data[name])
    for name in ("messages", "prompt"):
        if name in data:
            data[name] = [Message.model_validate(m) for m in data[name]]
    known = set(cls.model_fields)
    return cls.model_validate({k: v for k, v in data.items() if k in known})


def sft_row(trajectory: Trajectory, judgement: Judgement) -> dict[str, Any]:
    """A passing trajectory with its judge score and its outcome reward (None: no outcome)."""
    return {
        **to_row(trajectory),
        "judge_score": judgement.score,
        "reward": judgement.reward,
        "judge_agreement": judgement.agreement,
    }


def passed_row(judged: JudgedTrajectory) -> dict[str, Any]:
    """An sft/ row from a judged trajectory that passed."""
    return sft_row(judged.trajectory, judged.judgement)


def rejected_row(rejected: JudgedTrajectory) -> dict[str, Any]:
    """A rejected trajectory with the full judgement, so a user can see why."""
    judgement = rejected.judgement
    return {
        **to_row(rejected.trajectory),
        # Rejected by the deterministic checks: no judge saw it, so it has no judge score.
        "judge_score": None if judgement.failed_checks else judgement.score,
        "reward": judgement.reward,
        "judge_agreement": judgement.agreement,
        "failed_checks": list(judgement.failed_checks),
        "judgement": judgement.model_dump_json(),
    }
