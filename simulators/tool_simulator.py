"""The tool simulator: a model that answers tool calls as the real API would, over a world state.

It validates every call's arguments first (an invalid call gets the error a real API returns, and
that error stays in the trajectory so the agent can recover), then asks the model for a result
constrained to the tool's `returns` schema. Write tools report state changes, which are applied to
a JSON world state carried through the episode. Nothing from a spec is ever executed or fetched.
"""

from __future__ import annotations

import json
from typing import Any

from schemas.records import JsonObject, Message, ToolCall, ToolSpec, canonical_json
from simulators.ask import Usage, ask, schema_errors
from simulators.llm.base import ChatModel, Sampling

ANY_RESULT = {"type": "object"}
STATE_CHANGES = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {"key": {"type": "string"}, "value": {"type": "string"}},
        "required": ["key", "value"],
        "additionalProperties": False,
    },
    "maxItems": 4,
}


def api_error(code: int, kind: str, message: str, **extra: Any) -> str:
    """An error body shaped like a typical JSON API's."""
    return json.dumps({"error": {"code": code, "type": kind, "message": message, **extra}})


class ToolSimulator:
    """Answers the calls of one episode; `state` is the world as the tools have changed it."""

    role = "tool"

    def __init__(
        self,
        model: ChatModel,
        tools: list[ToolSpec],
        initial_state: JsonObject,
        sampling: Sampling,
        attempts: int = 3,
    ) -> None:
        self.model = model
        self.tools = {tool.name: tool for tool in tools}
        self.state: JsonObject = json.loads(json.dumps(initial_state))
        self.sampling = sampling
        self.attempts = attempts

    async def answer(self, call: ToolCall, usage: Usage) -> Message:
        """The `tool` message answering `call`."""
        name = call.function.name
        tool = self.tools.get(name)
        if tool is None:
            body = api_error(404, "unknown_tool", f"no tool named {name!r} is available")
            return self._message(call, body)
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError as exc:
            body = api_error(400, "invalid_json", f"arguments are not valid JSON: {exc.msg}")
            return self._message(call, body)
        errors = schema_errors(tool.parameters, arguments)
        if errors:
            pointer, _, message = errors[0].partition(": ")
            body = api_error(400, "invalid_arguments", message, param=pointer)
            return self._message(call, body)
        result = await self._simulate(tool, arguments, usage)
        return self._message(call, canonical_json(result))

    async def _simulate(self, tool: ToolSpec, arguments: JsonObject, usage: Usage) -> Any:
        returns = tool.returns or ANY_RESULT
        properties: dict[str, Any] = {"result": returns}
        if tool.side_effect == "write":
            properties["state_changes"] = STATE_CHANGES
        schema = {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }
        messages = [
            Message(role="system", content=self._system_prompt(tool)),
            Message(
                role="user",
                content=(
                    f"World state: {canonical_json(self.state)}\n"
                    f"Call: {tool.name}({canonical_json(arguments)})\n"
                    "Answer with the result."
                ),
            ),
        ]
        completion = await ask(
            self.model, self.role, usage, messages, self.sampling,
            schema=schema, attempts=self.attempts,
        )
        for change in completion.parsed.get("state_changes", []):
            self.state[change["key"]] = change["value"]
        return completion.parsed["result"]

    @staticmethod
    def _system_prompt(tool: ToolSpec) -> str:
        effect = (
            "It changes the world: report each change as a key and its new value."
            if tool.side_effect == "write"
            else "It only reads the world and changes nothing."
        )
        return (
            "You simulate a software tool inside a test environment. You are not an assistant; "
            "you return what the tool returns, consistent with the world state, inventing "
            "plausible ids and values where the state says nothing.\n"
            f"Tool: {tool.name}\nWhat it does: {tool.description}\n{effect}"
        )

    @staticmethod
    def _message(call: ToolCall, content: str) -> Message:
        return Message(role="tool", tool_call_id=call.id, name=call.function.name, content=content)
