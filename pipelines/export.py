"""Exports: a run's `sft/` or `rl/` reshaped into what each trainer reads, split and sharded.

Each format is a pure function from one of our rows to one of theirs:

- `trl`: `messages` (OpenAI chat with `tool_calls` and `tool` messages) and `tools` (function
  schemas), as TRL's SFTTrainer takes them. Tool schemas and call arguments use Arrow's JSON type
  (`arrow.json`), which Hugging Face `datasets` (>= 4.7) decodes to Python objects: the form
  chat templates expect. Readers without that type see JSON text.
- `sharegpt`: LLaMA-Factory's `conversations` of `human` / `gpt` / `function_call` /
  `observation` turns, with `system` and `tools` (JSON text) beside them.
- `hermes`: NousResearch's Hermes function-calling form: one `conversations` list whose system
  turn lists the tools in `<tools>`, with `<tool_call>` and `<tool_response>` blocks.
- `verl`: RL prompts with `data_source`, `prompt`, `ability`, `reward_model` (the rubric as
  ground truth) and `extra_info` (tools, rubric, initial world state, the user simulator's brief
  in `interaction_kwargs`, and `tools_kwargs`: per tool the `create_kwargs` that bind verl's
  tool calls to the row's task and seed), plus verl's tool and interaction config files.

Splits are deterministic by id: ids are ranked by a hash and the first round(F * N) go to
`validation`, so a row's split never depends on file order or on the machine. Shards are balanced
by tokens, not rows (greedy: largest row first, into the lightest shard). Tokens are estimated as
characters / 4 of each exported row's JSON; no tokenizer is needed.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import storage
from pipelines.chat_template import TOOLS_FORMAT, TOOLS_PREAMBLE
from pipelines.parquet_io import count_rows, read_rows
from pipelines.stats import approx_tokens

SPLITS = ("train", "validation")
DATA_FOLDER = "data"
JSONL_FOLDER = "jsonl"


class ExportError(ValueError):
    """An export that cannot be made (no rows, unknown format); the message says why."""


class SkipRow(ValueError):
    """A row the target format cannot represent; counted and reported, never dropped silently."""


# Shared pieces ---------------------------------------------------------------------------------


def _json(text: str | None, what: str) -> Any:
    try:
        return json.loads(text or "")
    except json.JSONDecodeError as exc:
        raise SkipRow(f"{what} is not valid JSON: {exc.msg}") from exc


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _tools(row: dict[str, Any]) -> list[dict[str, Any]]:
    tools = _json(row["tools"], "tools") if isinstance(row["tools"], str) else row["tools"]
    return list(tools or [])


def training_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation up to its last assistant turn: a training example ends on the agent."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise SkipRow("no assistant turn")
    return [dict(m) for m in messages[: last + 1]]


def _calls(message: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, parsed arguments) of each tool call of a message."""
    return [
        (c["function"]["name"], _json(c["function"]["arguments"], f"arguments of {c['id']}"))
        for c in message.get("tool_calls") or []
    ]


def _tool_result(content: str | None) -> Any:
    """A tool's answer as JSON when it is JSON, else as text."""
    try:
        return json.loads(content or "")
    except json.JSONDecodeError:
        return content or ""


# trl -------------------------------------------------------------------------------------------

TRL_FUNCTION = pa.struct([("name", pa.string()), ("arguments", pa.json_())])
TRL_MESSAGE = pa.struct(
    [
        ("role", pa.string()),
        ("content", pa.string()),
        (
            "tool_calls",
            pa.list_(
                pa.struct([("id", pa.string()), ("type", pa.string()), ("function", TRL_FUNCTION)])
            ),
        ),
        ("tool_call_id", pa.string()),
        ("name", pa.string()),
    ]
)
TRL_SCHEMA = pa.schema(
    [("id", pa.string()), ("messages", pa.list_(TRL_MESSAGE)), ("tools", pa.list_(pa.json_()))]
)


def trl_row(row: dict[str, Any]) -> dict[str, Any]:
    """OpenAI chat messages and tool schemas; JSON-typed fields are JSON text until written."""
    messages = []
    for message in training_messages(row["messages"]):
        _calls(message)  # arguments must be JSON
        messages.append({name: message.get(name) for name in TRL_MESSAGE.names})
    return {
        "id": row["id"],
        "messages": messages,
        "tools": [_dumps(tool) for tool in _tools(row)],
    }


# sharegpt (LLaMA-Factory) ----------------------------------------------------------------------

TURN = pa.struct([("from", pa.string()), ("value", pa.string())])
SHAREGPT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("conversations", pa.list_(TURN)),
        ("system", pa.string()),
        ("tools", pa.string()),
    ]
)
# LLaMA-Factory's rule: after the system prompt, turns alternate between these two groups,
# starting with the first, and an SFT example has an even number of turns.
SHAREGPT_ODD = ("human", "observation")
SHAREGPT_EVEN = ("gpt", "function_call")
# How LLaMA-Factory's own OpenAI-format converter joins the results of parallel calls.
OBSERVATION_JOIN = "\n</tool_response>\n<tool_response>\n"


def _merge_turns(turns: list[dict[str, str]], joiner: Callable[[str], str]) -> list[dict[str, str]]:
    merged: list[dict[str, str]] = []
    for turn in turns:
        if merged and merged[-1]["from"] == turn["from"]:
            merged[-1]["value"] = joiner(turn["from"]).join([merged[-1]["value"], turn["value"]])
        else:
            merged.append(dict(turn))
    return merged


def sharegpt_row(row: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory sharegpt: `function_call` holds {"name", "arguments"} JSON (a list for
    parallel calls); `observation` holds the tool's answer.

    Text the agent wrote beside its tool calls has no place in a `function_call` turn; the mill's
    agent never writes both in one message.
    """
    messages = training_messages(row["messages"])
    system = ""
    if messages and messages[0]["role"] == "system":
        system = messages.pop(0)["content"] or ""
    turns: list[dict[str, str]] = []
    for message in messages:
        role = message["role"]
        if role == "user":
            turns.append({"from": "human", "value": message["content"] or ""})
        elif role == "assistant" and message.get("tool_calls"):
            calls = [{"name": n, "arguments": a} for n, a in _calls(message)]
            turns.append({"from": "function_call", "value": _dumps(calls[0] if len(calls) == 1
                                                                   else calls)})
        elif role == "assistant":
            turns.append({"from": "gpt", "value": message["content"] or ""})
        elif role == "tool":
            turns.append({"from": "observation", "value": message["content"] or ""})
        else:
            raise SkipRow(f"a {role!r} message inside the conversation")
    turns = _merge_turns(turns, lambda kind: OBSERVATION_JOIN if kind == "observation" else "\n\n")
    check_sharegpt(turns)
    return {
        "id": row["id"],
        "conversations": turns,
        "system": system,
        "tools": _dumps(_tools(row)),
    }


def check_sharegpt(turns: list[dict[str, str]]) -> None:
    """Raise SkipRow unless `turns` follow LLaMA-Factory's alternation rule for SFT."""
    for index, turn in enumerate(turns):
        allowed = SHAREGPT_ODD if index % 2 == 0 else SHAREGPT_EVEN
        if turn["from"] not in allowed:
            raise SkipRow(f"turn {index} is {turn['from']!r}, LLaMA-Factory expects {allowed}")
    if len(turns) % 2:
        raise SkipRow("odd number of turns: the example must end on the assistant")


# hermes ----------------------------------------------------------------------------------------

HERMES_SCHEMA = pa.schema(
    [("id", pa.string()), ("conversations", pa.list_(TURN)), ("tools", pa.string())]
)


def tools_system_text(system: str, tools: list[dict[str, Any]]) -> str:
    """The system turn with the tools listed, exactly as the shipped chat template writes it."""
    head = f"{system}\n\n" if system else ""
    listing = "".join(_dumps(tool) + "\n" for tool in tools)
    return f"{head}# Tools\n\n{TOOLS_PREAMBLE}{listing}{TOOLS_FORMAT}"


def tool_call_block(name: str, arguments: Any) -> str:
    return f"<tool_call>\n{_dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def hermes_row(row: dict[str, Any]) -> dict[str, Any]:
    """Hermes function calling: tools in the system turn, `<tool_call>` blocks in `gpt` turns,
    `<tool_response>` blocks ({"name", "content"}) in `tool` turns."""
    messages = training_messages(row["messages"])
    tools = _tools(row)
    system = ""
    if messages[0]["role"] == "system":
        system = messages.pop(0)["content"] or ""
    turns = [{"from": "system", "value": tools_system_text(system, tools)}]
    names = {}
    for message in messages:
        role = message["role"]
        if role == "user":
            turns.append({"from": "human", "value": message["content"] or ""})
        elif role == "assistant":
            blocks = [message["content"]] if message["content"] else []
            for call, (name, arguments) in zip(
                message.get("tool_calls") or [], _calls(message), strict=True
            ):
                names[call["id"]] = name
                blocks.append(tool_call_block(name, arguments))
            turns.append({"from": "gpt", "value": "\n".join(blocks)})
        elif role == "tool":
            name = message.get("name") or names.get(message.get("tool_call_id") or "", "")
            body = {"name": name, "content": _tool_result(message["content"])}
            turns.append(
                {"from": "tool", "value": f"<tool_response>\n{_dumps(body)}\n</tool_response>"}
            )
        else:
            raise SkipRow(f"a {role!r} message inside the conversation")
    turns = _merge_turns(turns, lambda kind: "\n")
    return {"id": row["id"], "conversations": turns, "tools": _dumps(tools)}


# verl ------------------------------------------------------------------------------------------

VERL_DATA_SOURCE = "agentmill"
VERL_ABILITY = "tool_use"
VERL_SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("agent_name", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("split", pa.string()),
                    ("index", pa.int64()),
                    ("id", pa.string()),
                    ("task_id", pa.string()),
                    ("agent_id", pa.string()),
                    ("domain", pa.string()),
                    ("difficulty", pa.string()),
                    ("tools", pa.string()),
                    ("rubric", pa.string()),
                    ("initial_state", pa.string()),
                    ("expected_outcome", pa.string()),
                    ("tool_specs", pa.string()),
                    (
                        "interaction_kwargs",
                        pa.struct(
                            [
                                ("name", pa.string()),
                                ("task_id", pa.string()),
                                ("goal", pa.string()),
                                ("user_knows", pa.list_(pa.string())),
                                ("user_withholds", pa.list_(pa.string())),
                                ("seed", pa.int64()),
                            ]
                        ),
                    ),
                ]
            ),
        ),
    ]
)
VERL_CREATE_KWARGS = pa.struct(
    [("run_dir", pa.string()), ("task_id", pa.string()), ("seed", pa.int64())]
)
VERL_INTERACTION_CLASS = "pipelines.verl_env.AgentmillInteraction"
VERL_TOOL_CLASS = "pipelines.verl_env.AgentmillTool"
VERL_INTERACTION_NAME = "agentmill_user"


def verl_schema(tool_names: list[str]) -> pa.Schema:
    """`VERL_SCHEMA` with `extra_info.tools_kwargs`: one field per tool of the global list,
    each `{create_kwargs: {run_dir, task_id, seed}}` (a struct, which `datasets` reads as the
    dict verl's loop looks tools up in)."""
    tools_kwargs = pa.struct(
        [(name, pa.struct([("create_kwargs", VERL_CREATE_KWARGS)])) for name in tool_names]
    )
    extra = VERL_SCHEMA.field("extra_info").type
    fields = [extra.field(i) for i in range(extra.num_fields)]
    fields.append(pa.field("tools_kwargs", tools_kwargs))
    return VERL_SCHEMA.set(
        VERL_SCHEMA.get_field_index("extra_info"), pa.field("extra_info", pa.struct(fields))
    )


def verl_seed(row_id: str) -> int:
    """A row's episode seed (faults, persona), stable across exports: every sample verl draws
    for the row plays the same world."""
    return int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) % (2**31)


def verl_row(row: dict[str, Any], task: dict[str, Any] | None = None) -> dict[str, Any]:
    """An RL prompt: the agent's system prompt and the user's goal as the opening turn.

    The reward is the rubric (`reward_model.ground_truth`, JSON), scored by a judge, and the
    expected outcome (`extra_info.expected_outcome`) for `filters.reward`'s state check; what the
    user simulator knows and withholds rides in `extra_info.interaction_kwargs` for a multi-turn
    rollout. `split` and `index` are filled in when the split is known.
    """
    task = task or {}
    prompt = [{"role": m["role"], "content": m["content"] or ""} for m in row["prompt"]]
    prompt.append({"role": "user", "content": row["goal"]})
    return {
        "data_source": VERL_DATA_SOURCE,
        "agent_name": "tool_agent",
        "prompt": prompt,
        "ability": VERL_ABILITY,
        "reward_model": {"style": "rubric", "ground_truth": row["rubric"]},
        "extra_info": {
            "split": None,
            "index": None,
            "id": row["id"],
            "task_id": row["task_id"],
            "agent_id": row["agent_id"],
            "domain": row["domain"],
            "difficulty": row["difficulty"],
            "tools": row["tools"],
            "rubric": row["rubric"],
            "initial_state": row["initial_state"],
            "expected_outcome": row.get("expected_outcome"),
            "tool_specs": row["tool_specs"],
            "interaction_kwargs": {
                "name": VERL_INTERACTION_NAME,
                "seed": verl_seed(row["id"]),
                "task_id": row["task_id"],
                "goal": row["goal"],
                "user_knows": list(row.get("user_knows") or task.get("user_knows") or []),
                "user_withholds": list(
                    row.get("user_withholds") or task.get("user_withholds") or []
                ),
            },
        },
    }


# formats ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFormat:
    name: str
    source: str
    schema: pa.Schema
    what: str


FORMATS = {
    "trl": ExportFormat("trl", "sft", TRL_SCHEMA, "TRL SFTTrainer: messages + tools"),
    "sharegpt": ExportFormat(
        "sharegpt", "sft", SHAREGPT_SCHEMA, "LLaMA-Factory sharegpt with function calls"
    ),
    "hermes": ExportFormat("hermes", "sft", HERMES_SCHEMA, "Hermes function-calling chats"),
    "verl": ExportFormat("verl", "rl", VERL_SCHEMA, "verl RL prompts with rubric rewards"),
}


def convert(fmt: str, row: dict[str, Any], tasks: dict[str, dict[str, Any]] | None = None) -> Any:
    """One source row in format `fmt` (raises SkipRow when the format cannot hold it)."""
    if fmt == "trl":
        return trl_row(row)
    if fmt == "sharegpt":
        return sharegpt_row(row)
    if fmt == "hermes":
        return hermes_row(row)
    if fmt == "verl":
        return verl_row(row, (tasks or {}).get(row["task_id"]))
    raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def row_id(record: dict[str, Any]) -> str:
    return record["id"] if "id" in record else record["extra_info"]["id"]


# splitting and sharding ------------------------------------------------------------------------


def _rank(identifier: str) -> str:
    return hashlib.sha256(identifier.encode()).hexdigest()


def validation_ids(ids: list[str], fraction: float) -> set[str]:
    """The ids that go to validation: the round(fraction * N) lowest by hash of id."""
    if not 0.0 <= fraction < 1.0:
        raise ExportError(f"--val-fraction must be in [0, 1), not {fraction}")
    unique = sorted(set(ids), key=lambda i: (_rank(i), i))
    count = math.floor(fraction * len(unique) + 0.5)
    return set(unique[:count])


def balance_shards(sizes: list[tuple[str, int]], shards: int) -> list[list[int]]:
    """Indices of `sizes` ((id, tokens) pairs) per shard, balancing total tokens.

    Greedy longest-first: each item, largest first (ties by id), goes to the lightest shard, so
    the heaviest shard exceeds the mean by less than one item. Rows inside a shard keep id order.
    """
    shards = max(1, min(shards, len(sizes)))
    heap = [(0, s) for s in range(shards)]
    members: list[list[int]] = [[] for _ in range(shards)]
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i][1], sizes[i][0]))
    for index in order:
        total, shard = heapq.heappop(heap)
        members[shard].append(index)
        heapq.heappush(heap, (total + sizes[index][1], shard))
    return [sorted(m, key=lambda i: sizes[i][0]) for m in members]


# writing ---------------------------------------------------------------------------------------


def _storage_type(dtype: pa.DataType) -> pa.DataType:
    """`dtype` with Arrow JSON columns as plain strings, to build a table before casting."""
    if isinstance(dtype, pa.JsonType):
        return pa.string()
    if pa.types.is_list(dtype):
        return pa.list_(_storage_type(dtype.value_type))
    if pa.types.is_struct(dtype):
        return pa.struct([(f.name, _storage_type(f.type)) for f in dtype])
    return dtype


def to_table(records: list[dict[str, Any]], schema: pa.Schema) -> pa.Table:
    plain = pa.schema([(f.name, _storage_type(f.type)) for f in schema])
    return pa.Table.from_pylist(records, schema=plain).cast(schema)


def _decode_json(value: Any, dtype: pa.DataType) -> Any:
    """A record's JSON-text fields as objects, for JSONL (where JSON is native)."""
    if value is None:
        return None
    if isinstance(dtype, pa.JsonType):
        return json.loads(value)
    if pa.types.is_list(dtype):
        return [_decode_json(v, dtype.value_type) for v in value]
    if pa.types.is_struct(dtype):
        return {f.name: _decode_json(value.get(f.name), f.type) for f in dtype}
    return value


def _read_tasks(run_dir: Path) -> dict[str, dict[str, Any]]:
    try:
        rows = read_rows(run_dir / "tasks", columns=["id", "user_knows", "user_withholds"])
    except FileNotFoundError:
        return {}
    return {r["id"]: r for r in rows}


def export(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    shards: int = 1,
    val_fraction: float = 0.0,
    jsonl: bool = False,
) -> dict[str, Any]:
    """Write `run_dir` in format `fmt` under `out/data/` and return the summary (`export.json`)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if shards < 1:
        raise ExportError(f"--shards must be at least 1, not {shards}")
    spec = FORMATS[fmt]
    run_dir, out = Path(run_dir), Path(out)
    source = run_dir / spec.source
    rollouts = run_dir / "rollouts"
    if spec.source == "sft" and not source.exists() and rollouts.is_dir():
        # A rollout folder: its reward-1 rollouts are SFT data (rejection sampling).
        source = rollouts
    try:
        rows = read_rows(source)
    except FileNotFoundError as exc:
        raise ExportError(f"{source}: no such folder; is {run_dir} a run folder?") from exc
    if source == rollouts:
        total = len(rows)
        rows = [row for row in rows if (row.get("reward") or 0.0) >= 1.0]
        if not rows:
            raise ExportError(f"{source}: none of its {total} rollouts has reward 1")
    if not rows:
        hint = ""
        if spec.source == "sft":
            rejected = count_rows(run_dir / "rejected")
            hint = f"; {rejected} rejected trajectories are in {run_dir / 'rejected'}"
        raise ExportError(f"{source} has no rows to export{hint}")
    tasks = _read_tasks(run_dir) if fmt == "verl" else None

    records: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    for row in rows:
        try:
            records.append(convert(fmt, row, tasks))
        except SkipRow as exc:
            skipped.append({"id": row["id"], "reason": str(exc)})
    if not records:
        raise ExportError(f"no row of {source} fits the {fmt} format: {skipped[0]['reason']}")

    validation = validation_ids([row_id(r) for r in records], val_fraction)
    by_split: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for record in records:
        by_split["validation" if row_id(record) in validation else "train"].append(record)

    schema = spec.schema
    if fmt == "verl":
        tool_names = _bind_verl_tools(records, run_dir)
        schema = verl_schema(tool_names)

    data, jsonl_data = out / DATA_FOLDER, out / JSONL_FOLDER
    for owned in (data, jsonl_data, out / "export.json", out / "README.md", out / "verl"):
        storage.remove_tree(owned)
    data.mkdir(parents=True, exist_ok=True)
    if jsonl:
        jsonl_data.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "format": fmt,
        "what": spec.what,
        "source": str(source),
        "fingerprint": _fingerprint(run_dir),
        "val_fraction": val_fraction,
        "token_estimate": "characters / 4 of each row's JSON",
        "splits": {},
        "skipped": skipped,
    }
    for split, items in by_split.items():
        if not items:
            continue
        items.sort(key=row_id)
        if fmt == "verl":
            for index, record in enumerate(items):
                record["extra_info"]["split"] = split
                record["extra_info"]["index"] = index
        sizes = [(row_id(r), approx_tokens(json.dumps(r, ensure_ascii=False))) for r in items]
        groups = balance_shards(sizes, shards)
        files = []
        for number, members in enumerate(groups):
            stem = f"{split}-{number:05d}-of-{len(groups):05d}"
            chosen = [items[i] for i in members]
            pq.write_table(to_table(chosen, schema), data / f"{stem}.parquet")
            if jsonl:
                with open(jsonl_data / f"{stem}.jsonl", "w", encoding="utf-8") as handle:
                    for record in chosen:
                        decoded = {
                            f.name: _decode_json(record[f.name], f.type) for f in schema
                        }
                        handle.write(json.dumps(decoded, ensure_ascii=False) + "\n")
            files.append(
                {
                    "file": f"{DATA_FOLDER}/{stem}.parquet",
                    "rows": len(chosen),
                    "tokens": sum(sizes[i][1] for i in members),
                }
            )
        summary["splits"][split] = {
            "rows": len(items),
            "tokens": sum(size for _, size in sizes),
            "shards": files,
        }
    if fmt == "verl":
        summary["verl"] = _write_verl_configs(run_dir, records, out)
    (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_export_card(summary, run_dir, data), encoding="utf-8")
    return summary


def _verl_tools(records: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], set[str]]:
    """verl's one global tool list: every row's tools merged by name (the first definition of a
    name two tasks define differently wins; those names are the conflicts)."""
    tools: dict[str, dict[str, Any]] = {}
    conflicts: set[str] = set()
    for record in records:
        listed = record["extra_info"]["tools"]
        for tool in json.loads(listed) if isinstance(listed, str) else listed:
            name = tool["function"]["name"]
            if name in tools and tools[name] != tool:
                conflicts.add(name)
            tools.setdefault(name, tool)
    return tools, conflicts


def _bind_verl_tools(records: list[dict[str, Any]], run_dir: Path) -> list[str]:
    """Give every row `tools_kwargs` for every tool of the global list: the `create_kwargs`
    that bind a call to the row's task (its run, task id and seed); a tool the task does not
    offer is then answered by the task's environment as an unknown tool. Returns the names."""
    names = sorted(_verl_tools(records)[0])
    where = str(run_dir.resolve())
    for record in records:
        info = record["extra_info"]
        create = {"run_dir": where, "task_id": info["task_id"],
                  "seed": info["interaction_kwargs"]["seed"]}
        info["tools_kwargs"] = {name: {"create_kwargs": dict(create)} for name in names}
    return names


JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "array" if isinstance(value, list) else "object"


def _schema_types(schema: Any) -> list[str]:
    """The JSON types a property schema allows, read off `type`, `enum`, `const` or its
    `anyOf`/`oneOf` branches; every type when nothing says."""
    if not isinstance(schema, dict):
        return list(JSON_TYPES)
    declared = schema.get("type")
    if isinstance(declared, str):
        return [declared]
    if isinstance(declared, list) and declared:
        return [str(t) for t in declared]
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return sorted({_json_type(v) for v in schema["enum"]})
    if "const" in schema:
        return [_json_type(schema["const"])]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return sorted({t for branch in schema[key] for t in _schema_types(branch)})
    return list(JSON_TYPES)


def verl_tool_schema(tool: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`tool` as verl's `OpenAIFunctionToolSchema` (0.9.1) accepts it: parameters with
    `type` and `properties`, and a `type` on every property (inferred from its enum, const or
    branches; a list of types when several fit). Returns the schema and the properties that
    got a type. The environment still checks calls against the full schema."""
    fixed = json.loads(json.dumps(tool))
    function = fixed.setdefault("function", {})
    function.setdefault("description", function.get("name", ""))
    parameters = function.setdefault("parameters", {})
    parameters.setdefault("type", "object")
    properties = parameters.setdefault("properties", {})
    added = []
    for name, prop in list(properties.items()):
        if not isinstance(prop, dict):
            prop = properties[name] = {}
        if not isinstance(prop.get("type"), str | list) or not prop.get("type"):
            types = _schema_types(prop)
            prop["type"] = types[0] if len(types) == 1 else types
            added.append(f"{function.get('name')}.{name}")
    return fixed, added


def verl_configs(
    run_dir: str, tools: list[dict[str, Any]], config: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The interaction and tool config files verl's multi-turn rollout reads (as dicts)."""
    where = {"run_dir": run_dir, **({"config": config} if config else {})}
    interaction = {"interaction": [{
        "name": VERL_INTERACTION_NAME, "class_name": VERL_INTERACTION_CLASS, "config": where,
    }]}
    tool_config = {"tools": [
        {"class_name": VERL_TOOL_CLASS, "config": {"type": "native", **where},
         "tool_schema": tool}
        for tool in tools
    ]}
    return interaction, tool_config


def _write_verl_configs(run_dir: Path, rows: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """verl's interaction and tool config files beside the data (see `verl_configs`)."""
    import yaml

    tools, conflicts = _verl_tools(rows)
    schemas, typed = [], []
    for name in sorted(tools):
        schema, added = verl_tool_schema(tools[name])
        schemas.append(schema)
        typed.extend(added)
    interaction, tool_config = verl_configs(str(run_dir.resolve()), schemas)
    folder = out / "verl"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "interaction_config": folder / "interaction_config.yaml",
        "tool_config": folder / "tool_config.yaml",
    }
    paths["interaction_config"].write_text(yaml.safe_dump(interaction, sort_keys=False))
    paths["tool_config"].write_text(yaml.safe_dump(tool_config, sort_keys=False))
    return {
        **{name: str(path) for name, path in paths.items()},
        "tools": len(tools),
        "tool_conflicts": sorted(conflicts),
        "property_types_added": typed,
    }


def _export_card(summary: dict[str, Any], run_dir: Path, data: Path) -> str:
    """A short dataset card whose front matter points `load_dataset(OUT)` at the Parquet.

    `dataset_info` (rows per split, bytes on disk) is there because `datasets` keys its cache for
    a folder with card configs on the card, not on the files: without it a re-export into the
    same folder could load the previous export from the cache.
    """
    splits = summary["splits"]
    files = "\n".join(
        f"  - split: {split}\n    path: {DATA_FOLDER}/{split}-*.parquet" for split in splits
    )
    sizes = {s: sum(p.stat().st_size for p in data.glob(f"{s}-*.parquet")) for s in splits}
    infos = "\n".join(
        f"  - name: {split}\n    num_bytes: {sizes[split]}\n    num_examples: {info['rows']}"
        for split, info in splits.items()
    )
    size = sum(sizes.values())
    rows = "\n".join(
        f"| {split} | {info['rows']} | {len(info['shards'])} | {info['tokens']:,} |"
        for split, info in splits.items()
    )
    return (
        f"---\nconfigs:\n- config_name: default\n  data_files:\n{files}\n"
        f"dataset_info:\n  config_name: default\n  download_size: {size}\n  splits:\n{infos}\n"
        "tags: [synthetic, tool-use, agentmill]\n---\n\n"
        f"# agentmill export: {summary['format']}\n\n"
        f"{summary['what']}, exported from `{run_dir}` (config fingerprint "
        f"`{summary['fingerprint']}`). Tokens are estimated as {summary['token_estimate']}.\n\n"
        "| split | rows | shards | tokens |\n|---|---|---|---|\n"
        f"{rows}\n\n"
        f"{len(summary['skipped'])} source rows did not fit the format; `export.json` lists "
        "them with the reason.\n\n"
        f"`load_dataset(\"parquet\", data_dir=\"{data}\")` reads the shards directly.\n"
    )


def _fingerprint(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["fingerprint"]
    except (OSError, ValueError, KeyError):
        return None
