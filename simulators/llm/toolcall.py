"""Tool calls through constrained JSON: works with any model, and arguments are always JSON.

Small models cannot be trusted with a native tool-call format (SmolLM2 with the `hermes` parser gave
0 of 20 valid calls), but constrained to a schema built from the offered tools they always emit
well-formed calls. The tool list is rendered once, deterministically, into the system prompt so
every request of an agent starts with the same bytes and prefix caching serves them.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from schemas.records import FunctionCall, Message, ToolCall, canonical_json, content_id
from simulators.llm.errors import ModelOutputError

MAX_CALLS_PER_TURN = 3
NAME_MAPS = frozenset({"properties", "patternProperties", "$defs", "definitions"})
GRAMMAR_UNSUPPORTED = ("uniqueItems", "contains", "minContains", "maxContains", "multipleOf")
"""Keywords xgrammar refuses; dropped from the generation copy, still enforced on validation."""
PROSE_TYPE = "text/plain"
"""`contentMediaType` of a string that is prose a reader sees (a reply, a user's message): a
standard annotation, which validators and grammars ignore, marking it for `bound_schema`."""


def prose(**extra: Any) -> dict[str, Any]:
    """The schema of a prose string: bounded by the token budget, never cut at a character cap
    (a reply cut at 120 characters ends "...check the course details on [")."""
    return {"type": "string", "contentMediaType": PROSE_TYPE, **extra}


def unmarked(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` without the prose marks engines need not see (a strict server may refuse an
    unknown keyword). Marks sit only in the reply objects' own properties, at the top or in a
    top-level `anyOf`, so this copies those few dicts and never walks tool schemas."""

    def clean(node: dict[str, Any]) -> dict[str, Any]:
        properties = node.get("properties")
        if not isinstance(properties, dict) or not any(
            isinstance(v, dict) and "contentMediaType" in v for v in properties.values()
        ):
            return node
        return {**node, "properties": {
            k: {x: y for x, y in v.items() if x != "contentMediaType"} if isinstance(v, dict)
            else v for k, v in properties.items()
        }}

    out = clean(schema)
    if isinstance(out.get("anyOf"), list):
        out = {**out, "anyOf": [clean(b) if isinstance(b, dict) else b for b in out["anyOf"]]}
    return out


MAX_MAGNITUDE = 1_000_000_000
LITERALS = frozenset({"enum", "const", "default", "examples", "required"})
ROLE_MARKER = re.compile(
    r"<\|[A-Za-z0-9_]{1,40}\|>"  # ChatML, Llama 3, Phi: <|im_start|>, <|eot_id|>...
    r"|</?s>|\[/?INST\]|<</?SYS>>"  # Llama 2, Mistral
    r"|<(?:start|end)_of_turn>"  # Gemma
)
ZERO_WIDTH_SPACE = "\u200b"


def defuse_markers(text: str) -> str:
    """`text` with chat-template control tokens broken by a zero-width space.

    Tokenizers turn special-token text inside a prompt into the real token, so a tool description
    or a model answer holding `<|im_start|>system` would open a new turn. Prompts only: the
    records keep the text as it was.
    """
    return ROLE_MARKER.sub(lambda m: m.group(0)[0] + ZERO_WIDTH_SPACE + m.group(0)[1:], text)


def defuse_written(value: Any) -> Any:
    """`value` (a row about to be written: dicts, lists, text) with every control token broken.

    Stored tool arguments and results become training data, where a chat template renders
    them and a tokenizer would turn `<|im_start|>` back into a turn. JSON text is also checked
    decoded, since `\\u003c|im_start|>` or `<\\/s>` only becomes the marker once parsed.
    """
    if isinstance(value, str):
        return _defuse_text(value)
    if isinstance(value, dict):
        return {key: defuse_written(child) for key, child in value.items()}
    if isinstance(value, list):
        return [defuse_written(child) for child in value]
    return value


def _defuse_text(text: str) -> str:
    text = defuse_markers(text)
    if "\\" not in text or text.lstrip()[:1] not in ('{', '[', '"'):
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    cleaned = defuse_written(decoded)
    return text if cleaned == decoded else json.dumps(cleaned, ensure_ascii=False)


def render_tools(tools: list[dict[str, Any]]) -> str:
    """The tool list as prompt text; byte-identical for the same tools."""
    lines = ["You can call these tools:"]
    for tool in tools:
        fn = tool["function"]
        lines.append(f"- {fn['name']}: {fn.get('description', '')}")
        lines.append(f"  arguments schema: {canonical_json(fn.get('parameters', {}))}")
    lines.append(
        "Answer with JSON only. To call tools: "
        '{"tool_calls": [{"name": ..., "arguments": {...}}]}. '
        'To reply to the user: {"content": "...", "final": false}; set "final": true when the '
        "request is complete."
    )
    return "\n".join(lines)


def agent_output_schema(
    tools: list[dict[str, Any]], max_calls: int = MAX_CALLS_PER_TURN
) -> dict[str, Any]:
    """Schema of an agent answer: a reply to the user, or one to `max_calls` tool calls."""
    call_variants = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool["function"]["name"]},
                "arguments": _arguments_schema(tool["function"].get("parameters")),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in tools
    ]
    reply = {
        "type": "object",
        "properties": {"content": prose(), "final": {"type": "boolean"}},
        "required": ["content", "final"],
        "additionalProperties": False,
    }
    if not call_variants:
        return reply
    calls = {
        "type": "object",
        "properties": {
            "tool_calls": {
                "type": "array",
                "items": {"anyOf": call_variants} if len(call_variants) > 1 else call_variants[0],
                "minItems": 1,
                "maxItems": max_calls,
            }
        },
        "required": ["tool_calls"],
        "additionalProperties": False,
    }
    return {"anyOf": [calls, reply]}


def _arguments_schema(parameters: dict[str, Any] | None) -> dict[str, Any]:
    # A shallow copy: only top-level keys change, and nothing downstream mutates a schema. A deep
    # copy of every tool's parameters on every agent request was the episode loop's largest cost.
    schema = dict(parameters) if parameters else {"type": "object", "properties": {}}
    schema.pop("$schema", None)
    schema.pop("$id", None)
    if "type" not in schema:
        schema["type"] = "object"
    return schema


def bound_schema(
    schema: Any,
    max_string: int | None = 120,
    max_items: int | None = 4,
    max_prose: int | None = None,
) -> Any:
    """A copy of `schema` with lengths bounded, for generation only.

    Weak models fill unbounded strings and arrays until the token budget ends; bounding them in
    the grammar keeps answers short. Prose (`prose()`: replies, users' messages) is left to the
    token budget instead: a character cap would cut a reply a real model would finish, and a
    reply that runs out of tokens is an output error that is retried, never stored cut.
    `max_prose` caps prose too, for models that never stop on their own. Validation still uses
    the original schema.
    """
    if isinstance(schema, list):
        return [bound_schema(item, max_string, max_items, max_prose) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in NAME_MAPS and isinstance(value, dict):
            # Maps names to schemas: recurse into values, never treat names as keywords.
            out[key] = {
                n: bound_schema(sub, max_string, max_items, max_prose) for n, sub in value.items()
            }
        elif key in LITERALS:
            out[key] = copy.deepcopy(value)
        else:
            out[key] = bound_schema(value, max_string, max_items, max_prose)
    for keyword in GRAMMAR_UNSUPPORTED:
        out.pop(keyword, None)
    if "pattern" in out or "format" in out:
        out.pop("minLength", None)
        out.pop("maxLength", None)
    types = out.get("type")
    type_set = set(types) if isinstance(types, list) else {types if isinstance(types, str) else ""}
    unbounded_text = not any(k in out for k in ("enum", "const", "format", "pattern"))
    if out.get("contentMediaType") == PROSE_TYPE:
        del out["contentMediaType"]
        if max_prose is not None and "string" in type_set:
            out["maxLength"] = max(min(int(out.get("maxLength", max_prose)), max_prose),
                                   int(out.get("minLength", 0)))
        unbounded_text = False
    if "string" in type_set and unbounded_text and max_string is not None:
        bound = min(int(out.get("maxLength", max_string)), max_string)
        out["maxLength"] = max(bound, int(out.get("minLength", 0)))
    if type_set & {"integer", "number"} and "enum" not in out and "const" not in out:
        # Unbounded numbers let a weak model emit digits until the budget ends.
        out.setdefault("maximum", MAX_MAGNITUDE)
        out.setdefault("minimum", -MAX_MAGNITUDE)
    if "array" in type_set and max_items is not None:
        out["maxItems"] = min(int(out.get("maxItems", max_items)), max_items)
        if int(out.get("minItems", 0)) > out["maxItems"]:
            out["maxItems"] = int(out["minItems"])
    return out


def parse_agent_output(text: str, call_salt: str) -> tuple[str | None, list[ToolCall], bool, Any]:
    """Decode a JSON-mode agent answer into (content, tool calls, final, decoded JSON)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelOutputError(f"agent answer is not JSON: {exc}", text) from exc
    if not isinstance(value, dict):
        raise ModelOutputError("agent answer is not a JSON object", text)
    if "tool_calls" in value:
        calls = value["tool_calls"]
        if not isinstance(calls, list) or not calls:
            raise ModelOutputError("tool_calls must be a non-empty list", text)
        if len(calls) > MAX_CALLS_PER_TURN:
            raise ModelOutputError(
                f"{len(calls)} tool calls in one turn, at most {MAX_CALLS_PER_TURN}", text
            )
        parsed: list[ToolCall] = []
        for index, call in enumerate(calls):
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ModelOutputError(f"tool call {index} has no name", text)
            arguments = call.get("arguments", {})
            call_id = "call_" + content_id("c", [call_salt, index, call])[2:18]
            parsed.append(
                ToolCall(
                    id=call_id,
                    function=FunctionCall(
                        name=call["name"],
                        arguments=json.dumps(arguments, ensure_ascii=False),
                    ),
                )
            )
        return None, parsed, False, value
    content = value.get("content")
    if not isinstance(content, str):
        raise ModelOutputError("agent answer has neither tool_calls nor content", text)
    return content, [], bool(value.get("final", False)), value


def native_calls(
    raw_calls: list[Any], salt: str, text: str
) -> tuple[list[ToolCall], list[dict[str, Any]]]:
    """Native `tool_calls` (OpenAI shape, from a server or vLLM's tool parser) as records, plus
    their decoded form; unusable calls are output errors."""
    calls: list[ToolCall] = []
    decoded: list[dict[str, Any]] = []
    for index, raw in enumerate(raw_calls):
        function = raw.get("function") if isinstance(raw, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise ModelOutputError(f"tool call {index} has no name", text)
        arguments = function.get("arguments")  # type: ignore[union-attr]
        if isinstance(arguments, str):
            try:
                value = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise ModelOutputError(
                    f"tool call {index} arguments are not JSON: {exc}", text
                ) from exc
        else:
            value = arguments if arguments is not None else {}
        call_id = raw.get("id") or "call_" + content_id("c", [salt, index, name, value])[2:18]
        calls.append(
            ToolCall(
                id=call_id,
                function=FunctionCall(name=name, arguments=json.dumps(value, ensure_ascii=False)),
            )
        )
        decoded.append({"name": name, "arguments": value})
    return calls, decoded


def to_plain_messages(messages: list[Message], tools: list[dict[str, Any]] | None) -> list[dict]:
    """OpenAI messages as plain system/user/assistant turns for a model without tool support.

    The tool list joins the system prompt, assistant tool calls become their JSON, and tool results
    become user turns that name the call they answer.
    """
    plain: list[dict[str, str]] = []
    for message in messages:
        if message.role == "system":
            content = message.content or ""
            if tools:
                content = f"{content}\n\n{render_tools(tools)}"
            plain.append({"role": "system", "content": content})
        elif message.role == "assistant" and message.tool_calls:
            calls = [
                {"name": c.function.name, "arguments": _loads_or_text(c.function.arguments)}
                for c in message.tool_calls
            ]
            plain.append({"role": "assistant", "content": canonical_json({"tool_calls": calls})})
        elif message.role == "assistant":
            plain.append({"role": "assistant", "content": message.content or ""})
        elif message.role == "tool":
            plain.append(
                {
                    "role": "user",
                    "content": f"[tool result for {message.name or 'tool'}] {message.content}",
                }
            )
        else:
            plain.append({"role": "user", "content": message.content or ""})
    if tools and not any(m["role"] == "system" for m in plain):
        plain.insert(0, {"role": "system", "content": render_tools(tools)})
    for message in plain:
        message["content"] = defuse_markers(message["content"])
    return _merge_consecutive(plain)


def _merge_consecutive(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Join same-role neighbours; several chat templates reject two user turns in a row."""
    merged: list[dict[str, str]] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"] and message["role"] != "system":
            merged[-1] = {
                "role": message["role"],
                "content": merged[-1]["content"] + "\n" + message["content"],
            }
        else:
            merged.append(dict(message))
    return merged


def _loads_or_text(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except json.JSONDecodeError:
        return arguments
