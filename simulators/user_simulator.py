"""The simulated user: a persona pursuing the task's goal, who decides when the episode is over.

Users behave like users: each talks in its persona's style, shares what it knows, keeps the
withheld facts until the assistant asks for them, says it does not know rather than invent,
changes its mind once in the episodes chosen for it, and ends the episode itself. A reply that
gives away a withheld fact unprompted is refused (`simulators.disclosure`) and asked again; a
model that insists keeps its episode, and `filters.checks` flags the leaking turn.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from schemas.records import Message, Persona, Task
from simulators.ask import RoleOutputError, Usage, ask, schema_errors
from simulators.disclosure import unprompted_leaks
from simulators.llm.base import ChatModel, Completion, Sampling
from simulators.llm.toolcall import prose
from simulators.persona import STYLE_GUIDES

OPENING_SCHEMA = {
    "type": "object",
    "properties": {"message": prose(minLength=1)},
    "required": ["message"],
    "additionalProperties": False,
}
REPLY_SCHEMA = {
    "type": "object",
    "properties": {"message": prose(), "done": {"type": "boolean"}},
    "required": ["done", "message"],
    "additionalProperties": False,
}


LEAK = "reveals a withheld fact unasked"


class UserSimulator:
    """Plays the user; sees the agent's replies as the other side of its own conversation."""

    role = "user"

    def __init__(
        self,
        model: ChatModel,
        task: Task,
        persona: Persona,
        sampling: Sampling,
        attempts: int = 3,
        changes_mind: bool = False,
    ) -> None:
        self.model = model
        self.task = task
        self.persona = persona
        self.sampling = sampling
        self.attempts = attempts
        self.changes_mind = changes_mind
        """Whether this user changes their mind once, on their first reply."""
        self.changed_mind = False

    def system_prompt(self) -> str:
        """The brief; spec and task text are data here, quoted, never evaluated."""
        knows = "; ".join(self.task.user_knows) or "nothing beyond the goal"
        withholds = "; ".join(self.task.user_withholds) or "nothing"
        return (
            "You are role-playing a human user who is chatting with an AI assistant. "
            "Stay in character and never act as the assistant.\n"
            f"Who you are: {self.persona.describe()}.\n"
            f"Your goal: {self.task.goal}\n"
            f"Facts you know and may share: {knows}\n"
            f"Facts you share only if the assistant asks for them: {withholds}\n"
            f"Your style: {STYLE_GUIDES.get(self.persona.style, self.persona.style)}\n"
            "If the assistant asks for something you were not told, say you do not know; "
            "never make up names, numbers, ids or dates.\n"
            "Write only your own next message, one to three sentences, in your style. "
            "Set done to true once your goal is met or the assistant cannot help."
        )

    def _no_leak(self, assistant_texts: list[str]) -> Callable[[Completion], str | None]:
        def check(completion: Completion) -> str | None:
            parsed = completion.parsed if isinstance(completion.parsed, dict) else {}
            leaks = unprompted_leaks(
                str(parsed.get("message", "")), self.task.user_withholds, assistant_texts
            )
            return f"{LEAK}: {leaks[0]!r}" if leaks else None

        return check

    async def opening(self, usage: Usage) -> str:
        """The user's first message."""
        messages = [
            Message(role="system", content=self.system_prompt()),
            Message(
                role="user",
                content="Write your first message to the assistant, asking in your own words "
                f"for what you want: {self.task.goal}",
            ),
        ]
        no_leak = self._no_leak([])
        parsed = await self._ask(
            messages, usage, OPENING_SCHEMA, lambda c: _non_empty(c) or no_leak(c)
        )
        return str(parsed["message"]).strip()

    async def _ask(
        self,
        messages: list[Message],
        usage: Usage,
        schema: dict[str, object],
        check: Callable[[Completion], str | None],
    ) -> dict[str, object]:
        """The user's answer; one that keeps leaking a withheld fact is kept after the last try.

        Leaking is asked away `attempts` times; a model that insists still yields its episode,
        whose leaking turn `filters.checks` then flags, rather than a lost episode.
        """
        try:
            completion = await ask(
                self.model, self.role, usage, messages, self.sampling,
                schema=schema, attempts=self.attempts, check=check,
            )
        except RoleOutputError as exc:
            if LEAK not in str(exc):
                raise
            try:
                last = json.loads(exc.raw_output)
            except json.JSONDecodeError:
                raise exc from None
            if schema_errors(schema, last):
                raise
            return dict(last)
        return dict(completion.parsed)

    async def reply(self, conversation: list[Message], usage: Usage) -> tuple[str, bool]:
        """The user's next message and whether they are done."""
        messages = [Message(role="system", content=self.system_prompt())]
        for message in conversation:
            if message.role == "user":
                messages.append(Message(role="assistant", content=message.content))
            elif message.role == "assistant" and message.content:
                messages.append(Message(role="user", content=message.content))
        if messages[-1].role != "user":
            messages.append(Message(role="user", content="(The assistant is waiting.)"))
        turn = "Set done to true if it is met or cannot be met."
        mind_change = self.changes_mind and not self.changed_mind
        if mind_change:
            turn = (
                "Now change your mind about one choice in your request (for example, prefer "
                "another of the options the assistant mentioned) and say so; do not set done."
            )
        reminder = f"\n\n(Reply as {self.persona.name}. Your goal: {self.task.goal} {turn})"
        last = messages[-1]
        messages[-1] = Message(role="user", content=f"{last.content}{reminder}")
        said = [m.content or "" for m in conversation if m.role == "assistant" and m.content]
        no_leak = self._no_leak(said)
        parsed = await self._ask(
            messages, usage, REPLY_SCHEMA,
            # A user who is done sends nothing more, so only a message that is sent can leak.
            lambda c: None if c.parsed["done"] else _non_empty(c) or no_leak(c),
        )
        done = bool(parsed["done"])
        if mind_change and not done:
            self.changed_mind = True
        return str(parsed["message"]).strip(), done


def _non_empty(completion: object) -> str | None:
    message = getattr(completion, "parsed", {}).get("message", "")
    return None if str(message).strip() else "empty user message"
