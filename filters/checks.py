"""Deterministic checks on a finished trajectory, run before the (costly) rubric judge.

A model judge is slow and fallible; structural defects (a call to a tool that was never offered,
arguments that break the schema, a call nobody answered) are certain and cheap to find, and a
trajectory that has one must not reach SFT data whatever a judge thinks of it.

Each check is a small function `(trajectory, context) -> list[str]` in `CHECKS`; a failure is a
string `"<code>: <detail>"`, e.g. `"unknown_tool: call_ab12 names 'foo', not offered"`. To add a
check, write such a function and append it to `CHECKS` (or pass your own list to `run_checks`).

Failure codes:

- `unknown_tool`: a call names a tool that was not offered.
- `invalid_arguments`: a call's arguments are not a JSON object or break the tool's schema. A tool
  simulator answers such calls with an error, which is fine inside an episode, but the trajectory
  still shows a model emitting a bad call, so it is kept out of SFT data.
- `duplicate_call_id`, `unanswered_call`, `duplicate_answer`, `orphan_tool_result`, `late_answer`:
  every call has exactly one `tool` answer, in the block of tool messages right after the
  assistant message that made it (the order OpenAI-format chat templates require).
- `empty_turn`: an assistant message with neither content (whitespace counts as none) nor calls.
- `repeated_call`: the same tool with the same arguments called `repeat_threshold` times or more,
  retries after a transient failure not counted (see `repeated_calls`).
- `turn_limit`: more user turns than `max_turns`.
- `no_final_answer`: the conversation does not end with an assistant message with content.
- `bad_opening`: the conversation does not start with a system then a user message.
- `leaked_withheld`: a user message gives away a fact the task withholds before the assistant
  asked for it (`simulators.disclosure` says what counts as giving away and as asking).
- `invented_fact`: a user message states an id, number (three digits or more) or email that
  appears nowhere in the task nor earlier in the conversation: the user made it up.

- `answer_contradicts_call`: a tool answer holds records outside the call's own filters,
  ranges, enums or limit (`simulators.constraints` reads them off the argument names).
- `inconsistent_repeat`: the same call made twice in a row is answered differently, and no
  failure was injected on purpose (a second identical create's 409 conflict is consistent).

- `truncated_reply`: an assistant reply ends mid-sentence: an unclosed bracket or code block,
  a dangling comma, colon or conjunction, or a long reply ending inside a word.

`leaked_withheld` and `invented_fact` need the task (`run_checks(..., task=task)`) and are
skipped without it.

The checks on calls are computed from *finders*: functions `(trajectory, context) ->
list[CallFinding]` that return the offending calls (`unknown_tool_calls`,
`invalid_argument_calls`, `repeated_calls`, `calls_beyond_chain`, `decline_write_calls`,
`abandoned_fault_calls`). The process reward (`filters.reward`) counts the same findings, so a
check and its reward part cannot disagree about a call. `PROCESS_CHECKS` turns the last three
(which need the task) into opt-in checks: `run_checks(..., checks=[*CHECKS, *PROCESS_CHECKS],
task=task)`; their codes are `extra_calls`, `decline_writes`, `gave_up_after_fault`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from schemas.records import Task, ToolCall, ToolSpec, Trajectory, canonical_json
from simulators import safe_schema
from simulators.constraints import contradictions
from simulators.disclosure import invented_tokens, unprompted_leaks

DEFAULT_REPEAT_THRESHOLD = 3
"""Identical calls allowed below this count: one retry is normal, a third identical try a loop."""


@dataclass
class CheckContext:
    """What checks need besides the trajectory: the offered tools and the limits."""

    tools: Mapping[str, ToolSpec]
    max_turns: int
    repeat_threshold: int = DEFAULT_REPEAT_THRESHOLD
    task: Task | None = None
    _validators: dict[str, Validator | SchemaError] = field(default_factory=dict, repr=False)

    def validator(self, name: str) -> Validator | SchemaError:
        """The tool's argument validator (or the error its schema raised)."""
        if name not in self._validators:
            self._validators[name] = _argument_validator(self.tools[name])
        return self._validators[name]


_VALIDATORS: dict[str, Validator | SchemaError] = {}
VALIDATORS_KEPT = 4096


def _argument_validator(tool: ToolSpec) -> Validator | SchemaError:
    """A tool's argument validator, built once per process and tool (its id hashes its schema):
    checking a schema against the metaschema cost more than all the rest of a trajectory's
    checks when it was done for every trajectory."""
    key = f"{tool.id}:{tool.name}"
    found = _VALIDATORS.get(key)
    if found is None:
        schema = tool.parameters
        cls = validator_for(schema, default=Draft202012Validator)
        try:
            cls.check_schema(schema)
            # Time-bounded regexes; a remote `$ref` is unresolvable, never fetched.
            found = safe_schema.validator(schema)
        except SchemaError as exc:
            found = exc
        if len(_VALIDATORS) >= VALIDATORS_KEPT:
            _VALIDATORS.clear()
        _VALIDATORS[key] = found
    return found


Check = Callable[[Trajectory, CheckContext], list[str]]


def _calls(trajectory: Trajectory) -> Iterable[tuple[int, ToolCall]]:
    """(message index, call) for every tool call, in order."""
    for index, message in enumerate(trajectory.messages):
        if message.role == "assistant":
            for call in message.tool_calls or []:
                yield index, call


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class CallFinding:
    """One call a rule objects to, and why. A check reports findings (after its threshold, if
    it has one) and the process reward counts them, so the two share every decision."""

    call: ToolCall
    detail: str


Finder = Callable[[Trajectory, CheckContext], list[CallFinding]]


def unknown_tool_calls(trajectory: Trajectory, ctx: CheckContext) -> list[CallFinding]:
    """Calls that name a tool that was not offered."""
    return [
        CallFinding(call, f"{call.id} names {call.function.name!r}, not offered")
        for _, call in _calls(trajectory)
        if call.function.name not in ctx.tools
    ]


def invalid_argument_calls(trajectory: Trajectory, ctx: CheckContext) -> list[CallFinding]:
    """Calls to offered tools whose arguments are not a JSON object valid against the tool's
    parameter schema (a tool whose own schema is broken makes every call to it invalid)."""
    found = []
    for _, call in _calls(trajectory):
        name = call.function.name
        if name not in ctx.tools:
            continue  # an unknown tool, not an invalid argument
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError as exc:
            found.append(CallFinding(call, f"{call.id} arguments are not JSON ({exc.msg})"))
            continue
        if not isinstance(arguments, dict):
            found.append(CallFinding(call, f"{call.id} arguments are not a JSON object"))
            continue
        validator = ctx.validator(name)
        if isinstance(validator, SchemaError):
            found.append(CallFinding(
                call, f"{call.id} tool {name!r} has an invalid schema "
                f"({_short(validator.message)})",
            ))
            continue
        error = best_match(validator.iter_errors(arguments))
        if error is not None:
            found.append(CallFinding(
                call, f"{call.id} to {name!r} at '{error.json_path}': {_short(error.message)}"
            ))
    return found


def tools_known(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """Every call names an offered tool."""
    return [f"unknown_tool: {f.detail}" for f in unknown_tool_calls(trajectory, ctx)]


def arguments_valid(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """Every call's arguments are a JSON object valid against its tool's parameter schema."""
    return [f"invalid_arguments: {f.detail}" for f in invalid_argument_calls(trajectory, ctx)]


def calls_answered(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """Every call has exactly one tool answer, right after the message that made it."""
    failures = []
    made: dict[str, int] = {}  # call id -> index of the assistant message that made it
    for index, call in _calls(trajectory):
        if call.id in made:
            failures.append(f"duplicate_call_id: {call.id} is used by more than one call")
        else:
            made[call.id] = index
    answers: Counter[str] = Counter()
    block_owner: int | None = None  # the assistant message whose answers may follow now
    for index, message in enumerate(trajectory.messages):
        if message.role != "tool":
            block_owner = index if message.role == "assistant" and message.tool_calls else None
            continue
        call_id = message.tool_call_id or ""
        if call_id not in made or made[call_id] > index:
            failures.append(
                f"orphan_tool_result: message {index} answers {call_id or '(no id)'!r}, "
                "which no earlier call made"
            )
            continue
        answers[call_id] += 1
        if answers[call_id] == 2:
            failures.append(f"duplicate_answer: {call_id} is answered more than once")
        if made[call_id] != block_owner:
            failures.append(
                f"late_answer: {call_id} is answered at message {index}, after later turns"
            )
    failures.extend(
        f"unanswered_call: {call_id} ({_name_of(trajectory, call_id)}) has no tool answer"
        for call_id in made
        if answers[call_id] == 0
    )
    return failures


def _name_of(trajectory: Trajectory, call_id: str) -> str:
    return next((c.function.name for _, c in _calls(trajectory) if c.id == call_id), "?")


def no_empty_turns(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """No assistant message says nothing: no content (or only whitespace) and no calls."""
    return [
        f"empty_turn: assistant message {index} has no content and no tool calls"
        for index, message in enumerate(trajectory.messages)
        if message.role == "assistant"
        and not message.tool_calls
        and not (message.content or "").strip()
    ]


def call_key(call: ToolCall) -> tuple[str, str]:
    """What makes two calls identical: the tool and its arguments (JSON compared canonically)."""
    try:
        arguments = canonical_json(json.loads(call.function.arguments))
    except json.JSONDecodeError:
        arguments = call.function.arguments
    return call.function.name, arguments


RETRYABLE_ERROR_CODES = frozenset({429, 503, 504})
"""Error codes that invite the same call again (rate limited, unavailable, timed out): a retry
after one of them is recovery, not repetition."""


def _error_code(content: str | None) -> int | None:
    """The `code` of an API error body (`{"error": {"code": ...}}`), or None."""
    try:
        body = json.loads(content or "")
    except (json.JSONDecodeError, TypeError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) else None


def repeated_calls(trajectory: Trajectory, ctx: CheckContext) -> list[CallFinding]:
    """Calls identical (`call_key`) to an earlier call whose answer was the world's: not an
    injected failure and not a retryable error (`RETRYABLE_ERROR_CODES`). The world gives one
    story, so such a call can only bring back what the agent already has."""
    answers = _answers(trajectory)
    injected = {fault.tool_call_id for fault in trajectory.injected_faults}
    settled: dict[tuple[str, str], str] = {}  # key -> id of the first call the world answered
    found = []
    for _, call in _calls(trajectory):
        key = call_key(call)
        if key in settled:
            found.append(CallFinding(
                call, f"{call.id} repeats {call.function.name} with the same arguments as "
                f"{settled[key]}, which was already answered",
            ))
        elif call.id not in injected and (
            _error_code(answers.get(call.id)) not in RETRYABLE_ERROR_CODES
        ):
            settled[key] = call.id
    return found


def no_call_loops(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """No tool is called with the same arguments `repeat_threshold` times (retries after a
    transient failure aside, as `repeated_calls` rules): the agent is stuck."""
    repeats: Counter[tuple[str, str]] = Counter(
        call_key(f.call) for f in repeated_calls(trajectory, ctx)
    )
    return [
        f"repeated_call: {name!r} called {count + 1} times with {_short(arguments)}"
        for (name, arguments), count in repeats.items()
        if count + 1 >= ctx.repeat_threshold
    ]


TRANSIENT_FAULTS = ("rate_limited", "timeout")
"""Injected failures an agent should retry (`abandoned_fault_calls`)."""


def calls_beyond_chain(trajectory: Trajectory, ctx: CheckContext) -> list[CallFinding]:
    """Calls to offered tools beyond the task's expected chain (`rubric.expected_tools`),
    calls that hit an injected failure not counted; nothing for a task that names no expected
    tools or is to be declined (its writes are `decline_write_calls`)."""
    task = ctx.task
    if task is None or not task.rubric.expected_tools or task.difficulty == "decline":
        return []
    injected = {fault.tool_call_id for fault in trajectory.injected_faults}
    counted = [
        call for _, call in _calls(trajectory)
        if call.function.name in ctx.tools and call.id not in injected
    ]
    expected = len(task.rubric.expected_tools)
    return [
        CallFinding(call, f"{call.id} ({call.function.name}) is call {expected + n + 1}, "
                    f"the task expects {expected}")
        for n, call in enumerate(counted[expected:])
    ]


def decline_write_calls(trajectory: Trajectory, ctx: CheckContext) -> list[CallFinding]:
    """Calls to write tools in a task the agent should decline."""
    if ctx.task is None or ctx.task.difficulty != "decline":
        return []
    return [
        CallFinding(call, f"{call.id} calls the write tool {call.function.name} in a task "
                    "to decline")
        for _, call in _calls(trajectory)
        if call.function.name in ctx.tools
        and ctx.tools[call.function.name].side_effect == "write"
    ]


def abandoned_fault_calls(trajectory: Trajectory, ctx: CheckContext) -> list[CallFinding]:
    """Calls that hit an injected transient failure (`TRANSIENT_FAULTS`) whose tool was never
    called again: the agent gave up where a retry would have worked."""
    faults = {fault.tool_call_id: fault for fault in trajectory.injected_faults}
    made = [call for _, call in _calls(trajectory)]
    found = []
    for index, call in enumerate(made):
        fault = faults.get(call.id)
        if fault is None or fault.kind not in TRANSIENT_FAULTS:
            continue
        if not any(later.function.name == call.function.name for later in made[index + 1:]):
            found.append(CallFinding(
                call, f"{call.id} to {call.function.name} hit an injected {fault.kind} and "
                "was never retried",
            ))
    return found


def within_expected_chain(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """No call beyond the task's expected chain (opt-in: `PROCESS_CHECKS`)."""
    return [f"extra_calls: {f.detail}" for f in calls_beyond_chain(trajectory, ctx)]


def no_decline_writes(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """No write in a task to decline (opt-in: `PROCESS_CHECKS`)."""
    return [f"decline_writes: {f.detail}" for f in decline_write_calls(trajectory, ctx)]


def transient_faults_retried(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """Every injected transient failure is retried (opt-in: `PROCESS_CHECKS`)."""
    return [f"gave_up_after_fault: {f.detail}" for f in abandoned_fault_calls(trajectory, ctx)]


def within_turn_limit(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """At most `max_turns` user turns, and the agent has the last word."""
    failures = []
    user_turns = sum(1 for message in trajectory.messages if message.role == "user")
    if user_turns > ctx.max_turns:
        failures.append(f"turn_limit: {user_turns} user turns, more than {ctx.max_turns}")
    last = trajectory.messages[-1] if trajectory.messages else None
    if last is None or last.role != "assistant" or not (last.content or "").strip():
        what = "nothing" if last is None else f"a {last.role} message"
        if last is not None and last.role == "assistant":
            what = "an assistant message without content"
        failures.append(f"no_final_answer: the conversation ends with {what}")
    return failures


def proper_opening(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """The conversation starts with the agent's system prompt, then the user."""
    roles = [message.role for message in trajectory.messages[:2]]
    if roles == ["system", "user"]:
        return []
    return [f"bad_opening: starts with {' then '.join(roles) or 'nothing'}, not system then user"]


def no_unprompted_leaks(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """No user message reveals a withheld fact before the assistant asked for it."""
    if ctx.task is None or not ctx.task.user_withholds:
        return []
    failures = []
    said: list[str] = []
    reported: set[str] = set()
    for index, message in enumerate(trajectory.messages):
        if message.role == "assistant" and message.content:
            said.append(message.content)
        elif message.role == "user":
            for fact in unprompted_leaks(message.content or "", ctx.task.user_withholds, said):
                if fact not in reported:
                    reported.add(fact)
                    failures.append(
                        f"leaked_withheld: user message {index} reveals {_short(fact)!r} "
                        "before the assistant asked for it"
                    )
    return failures


def no_invented_facts(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """Users state only ids, numbers and emails they were given or were told in the episode."""
    if ctx.task is None:
        return []
    task = ctx.task
    given = [task.goal, *task.user_knows, *task.user_withholds]
    failures = []
    for index, message in enumerate(trajectory.messages):
        if message.role == "user":
            for token in invented_tokens(message.content or "", given):
                failures.append(
                    f"invented_fact: user message {index} states {token!r}, which it was not given"
                )
        if message.content:
            given.append(message.content)
    return failures


def _answers(trajectory: Trajectory) -> dict[str, str]:
    """Each call id's tool answer (the first one)."""
    answers: dict[str, str] = {}
    for message in trajectory.messages:
        if message.role == "tool" and message.tool_call_id:
            answers.setdefault(message.tool_call_id, message.content or "")
    return answers


def _json_answer(content: str) -> Any:
    """A tool answer as JSON, or None when it is not JSON or is an API error body."""
    try:
        value = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        return None
    return None if isinstance(value, dict) and "error" in value else value


def answers_obey_calls(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """No tool answer contradicts its own call: records outside the call's filters, ranges,
    enums or limit (`simulators.constraints`) teach that filters do not work."""
    answers = _answers(trajectory)
    failures = []
    for _, call in _calls(trajectory):
        tool = ctx.tools.get(call.function.name)
        result = _json_answer(answers.get(call.id, ""))
        if tool is None or result is None:
            continue
        try:
            arguments = json.loads(call.function.arguments)
        except json.JSONDecodeError:
            continue  # reported by arguments_valid
        if not isinstance(arguments, dict):
            continue
        problems = contradictions(arguments, tool.parameters, result)
        if problems:
            failures.append(
                f"answer_contradicts_call: {call.id} ({call.function.name}) {_short(problems[0])}"
            )
    return failures


def consistent_repeats(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """The same call made twice in a row answers the same, unless a failure was injected on
    purpose (and recorded) or the second is a create's 409 conflict: one record cannot be
    enrolled, then not found, with nothing in between."""
    injected = {fault.tool_call_id for fault in trajectory.injected_faults}
    answers = _answers(trajectory)
    failures = []
    previous: tuple[str, str, str] | None = None  # (name, arguments, answer) of the last call
    for _, call in _calls(trajectory):
        try:
            arguments = canonical_json(json.loads(call.function.arguments))
        except json.JSONDecodeError:
            arguments = call.function.arguments
        answer = answers.get(call.id, "")
        if call.id in injected:
            previous = None
            continue
        current = (call.function.name, arguments, answer)
        if (
            previous is not None
            and previous[:2] == current[:2]
            and previous[2] != answer
            and not _conflict(answer)
        ):
            failures.append(
                f"inconsistent_repeat: {call.id} repeats the call before it "
                f"({call.function.name}) and is answered differently"
            )
        previous = current
    return failures


def _conflict(content: str) -> bool:
    try:
        value = json.loads(content)
    except (json.JSONDecodeError, TypeError):
        return False
    error = value.get("error") if isinstance(value, dict) else None
    return isinstance(error, dict) and error.get("code") == 409


OPENERS = {"(": ")", "[": "]", "{": "}"}
DANGLING_ENDS = (*"([{,;:-&", " and", " or", " the", " a", " to", " of", " on", " for")
LONG_REPLY_CHARS = 80
"""A reply this long that ends inside a word, without a sentence's end, was cut."""


def truncation(text: str) -> str | None:
    """Why `text` reads as cut off mid-sentence (a cap or a token budget hit), or None."""
    stripped = text.rstrip()
    if not stripped:
        return None
    if stripped.count("```") % 2:
        return "an unclosed code block"
    depth = {opener: 0 for opener in OPENERS}
    for char in stripped:
        if char in OPENERS:
            depth[char] += 1
        elif char in OPENERS.values():
            opener = next(o for o, c in OPENERS.items() if c == char)
            depth[opener] = max(0, depth[opener] - 1)
    unclosed = [o for o, n in depth.items() if n]
    if unclosed:
        return f"an unclosed {unclosed[0]!r}"
    lowered = stripped.lower()
    if lowered.endswith(DANGLING_ENDS):
        return f"a dangling {stripped[-8:]!r}"
    if len(stripped) >= LONG_REPLY_CHARS and stripped[-1].isalpha():
        last = stripped.rsplit(None, 1)[-1]
        return f"no end of sentence after {last[-20:]!r}"
    return None


def no_truncated_replies(trajectory: Trajectory, ctx: CheckContext) -> list[str]:
    """No assistant reply ends mid-sentence: a reply cut by a length cap teaches a model to stop
    in the middle of a thought."""
    failures = []
    for index, message in enumerate(trajectory.messages):
        if message.role == "assistant" and message.content:
            why = truncation(message.content)
            if why:
                failures.append(f"truncated_reply: assistant message {index} ends with {why}")
    return failures


CHECKS: list[Check] = [
    proper_opening,
    tools_known,
    arguments_valid,
    calls_answered,
    no_empty_turns,
    no_call_loops,
    within_turn_limit,
    no_unprompted_leaks,
    no_invented_facts,
    answers_obey_calls,
    consistent_repeats,
    no_truncated_replies,
]
"""The checks `run_checks` runs by default, in order; append to add one."""

PROCESS_CHECKS: list[Check] = [within_expected_chain, no_decline_writes, transient_faults_retried]
"""Checks on how the agent worked that need the task; the process reward counts the same
findings. Not run by default: a rubric judge weighs them in the mill."""


def offered_tools(trajectory: Trajectory) -> dict[str, ToolSpec]:
    """ToolSpecs rebuilt from the trajectory's OpenAI `tools` entries, for re-checking from disk."""
    tools: dict[str, ToolSpec] = {}
    for entry in trajectory.tools:
        function: dict[str, Any] = entry.get("function", entry)
        tools[function["name"]] = ToolSpec(
            name=function["name"],
            description=function.get("description") or function["name"],
            parameters=function.get("parameters") or {"type": "object", "properties": {}},
        )
    return tools


def run_checks(
    trajectory: Trajectory,
    tools: Iterable[ToolSpec] | Mapping[str, ToolSpec] | None,
    max_turns: int,
    *,
    repeat_threshold: int = DEFAULT_REPEAT_THRESHOLD,
    checks: Iterable[Check] | None = None,
    task: Task | None = None,
) -> list[str]:
    """Run `checks` (default `CHECKS`) and return every failure; an empty list means it passed.

    `tools` are the ToolSpecs offered to the agent; None rebuilds them from `trajectory.tools`.
    `task` enables the checks on the simulated user (withheld and invented facts).
    """
    if tools is None:
        by_name: Mapping[str, ToolSpec] = offered_tools(trajectory)
    elif isinstance(tools, Mapping):
        by_name = tools
    else:
        by_name = {tool.name: tool for tool in tools}
    ctx = CheckContext(
        tools=by_name, max_turns=max_turns, repeat_threshold=repeat_threshold, task=task
    )
    failures: list[str] = []
    for check in CHECKS if checks is None else checks:
        failures.extend(check(trajectory, ctx))
    return failures
