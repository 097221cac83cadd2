"""Simulated users: styles, withheld facts, no invented facts, mind changes, and who ends."""

from __future__ import annotations

import asyncio
from collections import Counter

from filters.checks import run_checks
from schemas.records import Message, Trajectory
from simulators.episode import EpisodeConfig, RoleClients, run_episode
from simulators.llm.base import Sampling
from simulators.persona import STYLE_GUIDES, USER_STYLES, make_persona
from simulators.user_simulator import UserSimulator
from tests import helpers
from tests.helpers import agent_reply, role_model

TASK = helpers.task()  # withholds "passenger name is Ada Lovelace"


def trajectory(*turns: tuple[str, str]) -> Trajectory:
    messages = [Message(role="system", content="You are Skyline.")]
    messages += [Message(role=role, content=text) for role, text in turns]  # type: ignore[arg-type]
    return Trajectory(
        task_id=TASK.id, agent_id=TASK.agent_id, persona_id="p", domain="travel",
        messages=messages, tools=[], end_reason="user_stop",
    )


def user_checks(t: Trajectory) -> list[str]:
    return [f for f in run_checks(t, [], max_turns=5, task=TASK)
            if f.startswith(("leaked_withheld", "invented_fact"))]


def test_personas_cover_every_style_and_prompts_differ() -> None:
    styles = Counter(make_persona(f"k{i}").style for i in range(300))
    assert set(styles) == set(USER_STYLES)
    assert min(styles.values()) > 30
    prompts = {
        style: UserSimulator(
            role_model({}), TASK, make_persona("x").model_copy(update={"style": style}),
            Sampling(),
        ).system_prompt()
        for style in USER_STYLES
    }
    assert len(set(prompts.values())) == len(USER_STYLES)
    for style, prompt in prompts.items():
        assert STYLE_GUIDES[style] in prompt
        assert "Facts you share only if the assistant asks for them: passenger name" in prompt
        assert "never make up" in prompt


def test_check_flags_a_withheld_fact_given_before_it_was_asked_for() -> None:
    leaky = trajectory(("user", "Book SFO to JFK for Ada Lovelace"), ("assistant", "Done."))
    assert user_checks(leaky) == [
        "leaked_withheld: user message 1 reveals 'passenger name is Ada Lovelace' "
        "before the assistant asked for it"
    ]
    later = trajectory(
        ("user", "Book SFO to JFK"), ("assistant", "Sure, searching now."),
        ("user", "oh and it's for Ada Lovelace"), ("assistant", "Booked."),
    )
    assert [f.split(":")[0] for f in user_checks(later)] == ["leaked_withheld"]


def test_check_accepts_a_withheld_fact_the_assistant_asked_for() -> None:
    asked = trajectory(
        ("user", "Book SFO to JFK"), ("assistant", "What is the passenger's name?"),
        ("user", "Ada Lovelace"), ("assistant", "Booked."),
    )
    assert user_checks(asked) == []
    unrelated_question = trajectory(
        ("user", "Book SFO to JFK"), ("assistant", "Which date?"),
        ("user", "Friday, for Ada Lovelace"), ("assistant", "Booked."),
    )
    assert len(user_checks(unrelated_question)) == 1


def test_check_flags_ids_and_numbers_the_user_was_never_given() -> None:
    invented = trajectory(("user", "Book SFO to JFK, my card is 4111222233334444"),
                          ("assistant", "Booked."))
    assert user_checks(invented) == [
        "invented_fact: user message 1 states '4111222233334444', which it was not given"
    ]
    told = trajectory(
        ("user", "Book SFO to JFK"), ("assistant", "Flight FL-203 is free, book it?"),
        ("user", "Yes FL-203"), ("assistant", "Booked."),
    )
    assert user_checks(told) == []


def play(user, config: EpisodeConfig, seed: int = 1):
    model = role_model({"user": user, "agent": lambda r: agent_reply("Which name?", final=True)})
    spec = helpers.agent()
    task = helpers.task(spec)
    models = RoleClients(user=model, agent=model, tool=model)
    return asyncio.run(run_episode(task, spec, make_persona("p"), models, config, seed)), model


def test_simulated_user_is_asked_again_when_it_leaks_unprompted() -> None:
    openings = ["Book SFO-JFK for Ada Lovelace", "Book SFO to JFK please"]

    def user(request):
        if "done" in request.schema["properties"]:
            return {"message": "bye", "done": True}
        return {"message": openings.pop(0)}

    result, _ = play(user, EpisodeConfig(failure_rate=0.0))
    assert result.messages[1].content == "Book SFO to JFK please"
    assert user_checks(result) == []


def test_a_user_that_keeps_leaking_is_flagged_not_lost() -> None:
    def user(request):
        if "done" in request.schema["properties"]:
            return {"message": "bye", "done": True}
        return {"message": "Book SFO-JFK for Ada Lovelace"}

    result, model = play(user, EpisodeConfig(failure_rate=0.0, attempts=3))
    assert result.messages[1].content == "Book SFO-JFK for Ada Lovelace"
    openings = [r for r in model.requests if "done" not in (r.schema or {}).get("properties", {})
                and helpers.role_of(r) == "user"]
    assert len(openings) == 3
    assert [f.split(":")[0] for f in user_checks(result)] == ["leaked_withheld"]


def test_user_ends_the_episode_after_the_agent_final_reply() -> None:
    asked = []

    def user(request):
        if "done" in request.schema["properties"]:
            asked.append(request.last)
            return {"message": "", "done": True}
        return {"message": "Book SFO to JFK"}

    result, _ = play(user, EpisodeConfig(failure_rate=0.0))
    assert result.end_reason == "user_stop" and len(asked) == 1
    assert result.messages[-1].role == "assistant"
    result, _ = play(user, EpisodeConfig(failure_rate=0.0, user_ends=False))
    assert result.end_reason == "agent_final" and len(asked) == 1


def test_a_configured_share_of_users_change_their_mind_once() -> None:
    def user(request):
        if "done" not in request.schema["properties"]:
            return {"message": "Book SFO to JFK"}
        if "change your mind" in request.last:
            return {"message": "Actually, make it the later flight.", "done": False}
        return {"message": "ok", "done": True}

    config = EpisodeConfig(failure_rate=0.0, mind_change_rate=0.3, max_turns=3)
    results = [play(user, config, seed)[0] for seed in range(60)]
    changed = [r for r in results if r.user_changed_mind]
    assert 0.15 <= len(changed) / len(results) <= 0.45
    for result in changed:
        users = [m.content for m in result.messages if m.role == "user"]
        assert users.count("Actually, make it the later flight.") == 1
    assert all(r.user_style == make_persona("p").style for r in results)
    none = [play(user, config.model_copy(update={"mind_change_rate": 0.0}), s)[0]
            for s in range(10)]
    assert not any(r.user_changed_mind for r in none)
