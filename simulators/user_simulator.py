"""The simulated user: a persona pursuing the task's goal, who decides when the episode is over."""

from __future__ import annotations

from schemas.records import Message, Persona, Task
from simulators.ask import Usage, ask
from simulators.llm.base import ChatModel, Sampling

OPENING_SCHEMA = {
    "type": "object",
    "properties": {"message": {"type": "string", "minLength": 1}},
    "required": ["message"],
    "additionalProperties": False,
}
REPLY_SCHEMA = {
    "type": "object",
    "properties": {"message": {"type": "string"}, "done": {"type": "boolean"}},
    "required": ["done", "message"],
    "additionalProperties": False,
}


class UserSimulator:
    """Plays the user; sees the agent's replies as the other side of its own conversation."""

    role = "user"

    def __init__(
        self, model: ChatModel, task: Task, persona: Persona, sampling: Sampling, attempts: int = 3
    ) -> None:
        self.model = model
        self.task = task
        self.persona = persona
        self.sampling = sampling
        self.attempts = attempts

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
            "Write only your own next message, one to three sentences, in your style. "
            "Set done to true once your goal is met or the assistant cannot help."
        )

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
        completion = await ask(
            self.model, self.role, usage, messages, self.sampling,
            schema=OPENING_SCHEMA, attempts=self.attempts, check=_non_empty,
        )
        return str(completion.parsed["message"]).strip()

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
        reminder = (
            f"\n\n(Reply as {self.persona.name}. Your goal: {self.task.goal} "
            "Set done to true if it is met or cannot be met.)"
        )
        last = messages[-1]
        messages[-1] = Message(role="user", content=f"{last.content}{reminder}")
        completion = await ask(
            self.model, self.role, usage, messages, self.sampling,
            schema=REPLY_SCHEMA, attempts=self.attempts,
            check=lambda c: None if c.parsed["done"] else _non_empty(c),
        )
        return str(completion.parsed["message"]).strip(), bool(completion.parsed["done"])


def _non_empty(completion: object) -> str | None:
    message = getattr(completion, "parsed", {}).get("message", "")
    return None if str(message).strip() else "empty user message"
