"""The tool simulator: a model that answers tool calls as the real API would, over a world state.

It validates every call's arguments first (an invalid call gets the error a real API returns, and
that error stays in the trajectory so the agent can recover), then asks the model for a result
constrained to the tool's `returns` schema. Write tools report state changes; the world
(`simulators.world`) applies them and reconciles every answer with what it holds, so a read
after a write returns what was written, and a read's records fit its own filters
(`simulators.constraints`). The same call made again with no write in between gets the same
answer (a write is idempotent; a second identical create gets 409 conflict, as a real API
answers), so one episode never says enrolled, then not enrolled, for one unchanged record.

Failures are injected on purpose, seeded: a share (`failure_rate`) of valid calls answers with
a realistic failure (not found, permission denied, rate limited, timeout) or a partial or empty
result; each is listed in `injected` so data can be balanced for error recovery.

Nothing from a spec is ever executed or fetched, with one opt-in exception: a spec's
`entrypoint` (`package.module:function`) is imported and run in process, with a timeout, only
when the simulator is built with `allow_entrypoints=True` (the run config's
`episode.allow_entrypoints`). Without that flag such tools are simulated like any other, so an
untrusted spec file cannot make the mill run code.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import math
import random
from collections.abc import Callable
from typing import Any

from schemas.records import (
    STATE_CHANGES,
    FaultKind,
    InjectedFault,
    JsonObject,
    Message,
    ToolCall,
    ToolSpec,
    canonical_json,
)
from simulators.ask import Usage, ask, schema_errors
from simulators.llm.base import ChatModel, Sampling
from simulators.world import World, apply_changes, collection_of

ANY_RESULT = {"type": "object"}
ERROR_FAULTS: tuple[FaultKind, ...] = ("not_found", "permission_denied", "rate_limited", "timeout")
RESULT_FAULTS: tuple[FaultKind, ...] = ("partial_result", "empty_result")


def api_error(code: int, kind: str, message: str, **extra: Any) -> str:
    """An error body shaped like a typical JSON API's."""
    return json.dumps({"error": {"code": code, "type": kind, "message": message, **extra}})


def fault_error(kind: FaultKind, tool: ToolSpec, arguments: JsonObject, rng: random.Random) -> str:
    """The body of an injected error, worded as the API would word it."""
    if kind == "not_found":
        named = [(k, v) for k, v in arguments.items() if collection_of(k) and isinstance(v, str)]
        what = f"{named[0][0]} {named[0][1]!r}" if named else "the requested resource"
        return api_error(404, "not_found", f"{what} was not found")
    if kind == "permission_denied":
        return api_error(
            403, "permission_denied", f"the current credentials may not call {tool.name}"
        )
    if kind == "rate_limited":
        return api_error(
            429, "rate_limited", "too many requests, slow down", retry_after_s=rng.randint(2, 30)
        )
    return api_error(504, "timeout", f"{tool.name} did not answer within 30 s; try again")


def load_entrypoint(entrypoint: str) -> Callable[..., Any]:
    """The callable `package.module:function` names; import errors name the entrypoint."""
    module_name, _, attribute = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"entrypoint {entrypoint!r}: cannot import {module_name}: {exc}") from exc
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ImportError(f"entrypoint {entrypoint!r}: {module_name} has no callable {attribute}")
    return function


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
        *,
        failure_rate: float = 0.0,
        seed: int = 0,
        allow_entrypoints: bool = False,
        entrypoint_timeout_s: float = 10.0,
    ) -> None:
        self.model = model
        self.tools = {tool.name: tool for tool in tools}
        self.world = World(initial_state)
        self.sampling = sampling
        self.attempts = attempts
        self.failure_rate = failure_rate
        self.seed = seed
        self.allow_entrypoints = allow_entrypoints
        self.entrypoint_timeout_s = entrypoint_timeout_s
        self.injected: list[InjectedFault] = []
        self._calls = 0
        self._writes = 0
        """Writes answered so far: the world's version, for telling a repeat from a new call."""
        self._answered: dict[tuple[str, str], tuple[int, Any, bool]] = {}
        """(tool, arguments) -> (world version after it, its answer, whether it created a
        record): an identical call with no write since gets the same answer (a create: 409)."""

    @property
    def state(self) -> JsonObject:
        return self.world.state

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
        self._calls += 1
        rng = random.Random(f"{self.seed}:fault:{self._calls}")
        fault = rng.random() < self.failure_rate
        kinds = ERROR_FAULTS + (RESULT_FAULTS if tool.side_effect == "read" else ())
        kind: FaultKind | None = rng.choice(kinds) if fault else None
        if kind in ERROR_FAULTS:
            return self._inject(call, tool, kind, fault_error(kind, tool, arguments, rng))
        key = (tool.name, canonical_json(arguments))
        earlier = self._answered.get(key)
        if earlier is not None and earlier[0] == self._writes:
            # Nothing changed the world since this very call was answered: answer as then.
            _, result, created = earlier
            if created:  # a second identical create: the record exists, as a real API says
                return self._message(call, api_error(
                    409, "conflict", f"{tool.name} with these arguments already succeeded",
                    existing=result,
                ))
        else:
            if self.allow_entrypoints and tool.entrypoint:
                outcome = await self._execute(tool, arguments)
                if isinstance(outcome, str):
                    return self._message(call, outcome)  # the real tool's own error
                result = outcome[0]
            else:
                result, changes = await self._simulate(tool, arguments, usage)
                if tool.side_effect == "write":
                    apply_changes(self.world.state, changes)
            created = False
            if tool.side_effect == "write":
                before = self.world.size()
                result = self.world.after_write(arguments, result, tool.returns)
                created = self.world.size() > before
                self._writes += 1
            else:
                result = self.world.reconcile_read(
                    arguments, result, tool.returns, tool.parameters
                )
            self._answered[key] = (self._writes, result, created)
        if kind is not None:
            trimmed = _trim_arrays(result, tool.returns, empty=kind == "empty_result")
            if trimmed is None:  # nothing to cut short: fail the call instead
                kind = rng.choice(ERROR_FAULTS)
                return self._inject(call, tool, kind, fault_error(kind, tool, arguments, rng))
            return self._inject(call, tool, kind, canonical_json(trimmed))
        return self._message(call, canonical_json(result))

    def _inject(self, call: ToolCall, tool: ToolSpec, kind: FaultKind, body: str) -> Message:
        self.injected.append(InjectedFault(tool_call_id=call.id, tool=tool.name, kind=kind))
        return self._message(call, body)

    async def _execute(self, tool: ToolSpec, arguments: JsonObject) -> tuple[Any] | str:
        """Run the tool's entrypoint: `(result,)`, or an API error body when it fails.

        A function that takes a `world` parameter gets the world state to read and change. A
        synchronous function runs in a thread; on timeout the call fails, but Python cannot stop
        the thread, so entrypoints should bound their own work.
        """
        assert tool.entrypoint is not None
        try:
            function = load_entrypoint(tool.entrypoint)
        except ImportError as exc:
            return api_error(500, "entrypoint_error", str(exc))
        kwargs = dict(arguments)
        if "world" in inspect.signature(function).parameters:
            kwargs["world"] = self.world.state
        try:
            if inspect.iscoroutinefunction(function):
                pending = function(**kwargs)
            else:
                pending = asyncio.to_thread(function, **kwargs)
            result = await asyncio.wait_for(pending, timeout=self.entrypoint_timeout_s)
        except TimeoutError:
            return api_error(
                504, "timeout", f"{tool.name} did not answer within {self.entrypoint_timeout_s} s"
            )
        except Exception as exc:  # the tool's own failure, shown to the agent as an API error
            return api_error(500, "tool_error", f"{type(exc).__name__}: {exc}")
        try:
            result = json.loads(json.dumps(result))
        except (TypeError, ValueError) as exc:
            return api_error(502, "invalid_result", f"result is not JSON: {exc}")
        problems = schema_errors(tool.returns or ANY_RESULT, result)
        if problems:
            return api_error(502, "invalid_result", f"result breaks its schema: {problems[0]}")
        return (result,)

    async def _simulate(
        self, tool: ToolSpec, arguments: JsonObject, usage: Usage
    ) -> tuple[Any, list[dict[str, Any]]]:
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
        return completion.parsed["result"], list(completion.parsed.get("state_changes", []))

    @staticmethod
    def _system_prompt(tool: ToolSpec) -> str:
        effect = (
            "It changes the world: report each change as a key (a path such as "
            "orders/ORD-1234/status) and its new value."
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


def _trim_arrays(result: Any, returns: JsonObject | None, empty: bool) -> Any | None:
    """`result` with its arrays cut to half (or emptied) where the schema allows; None if none."""
    trimmed = json.loads(json.dumps(result))
    changed = False

    def walk(node: Any) -> None:
        nonlocal changed
        if isinstance(node, dict):
            for key, value in node.items():
                if isinstance(value, list) and len(value) >= (1 if empty else 2):
                    before = list(value)
                    node[key] = [] if empty else value[: math.ceil(len(value) / 2)]
                    if returns is not None and schema_errors(returns, trimmed):
                        node[key] = before
                    else:
                        changed = True
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(trimmed)
    return trimmed if changed else None
