"""Agent composition and task writing, on the seed library and the scripted backend."""

from __future__ import annotations

import asyncio

import jsonschema
import pytest

from pipelines.config import ConfigError, load_config
from simulators.llm.base import Sampling
from tests.helpers import BOOK, SEARCH, STATUS, role_model
from toolspecs.compose import by_domain, choose_tools, feeds, task_schema, write_agent, write_task
from toolspecs.load import load_library


@pytest.fixture(scope="module")
def pool():
    return load_library()


def test_tool_sets_are_coherent_and_deterministic(pool) -> None:
    domains = set()
    for slot in range(30):
        domain, tools = choose_tools(pool, slot, seed=1, min_tools=3, max_tools=8)
        assert 3 <= len(tools) <= 8
        assert {t.domain for t in tools} == {domain}
        assert len({t.name for t in tools}) == len(tools)
        assert choose_tools(pool, slot, seed=1) == choose_tools(pool, slot, seed=1)
        domains.add(domain)
    assert domains == set(by_domain(pool))  # slots cycle through every domain


def test_tool_sets_prefer_chained_tools(pool) -> None:
    linked = 0
    for slot in range(22):
        _, tools = choose_tools(pool, slot, seed=3, min_tools=3, max_tools=3)
        linked += any(feeds(a, b) for a in tools for b in tools)
    assert linked >= 18


def test_feeds_sees_ids_flowing_between_tools() -> None:
    assert feeds(SEARCH, BOOK)  # flights[].flight_id -> flight_id
    assert feeds(BOOK, STATUS)  # booking_id -> booking_id
    assert not feeds(STATUS, SEARCH)


def test_written_agent_and_task_follow_the_model(pool) -> None:
    _, tools = choose_tools(pool, 0, seed=0)
    model = role_model(
        {
            "synthesizer": lambda r: (
                {"name": "Atlas", "purpose": "Helps.", "policy": "Be nice."}
                if "purpose" in r.schema["properties"]
                else {
                    "goal": "Do the thing",
                    "user_knows": ["a"],
                    "user_withholds": ["b"],
                    "success_criteria": ["thing done"],
                    "expected_tools": [tools[0].name],
                    "checkpoints": [],
                    "initial_state": [{"key": "k", "value": "v"}],
                    "expected_state": [],
                    "expected_facts": ["done"],
                }
            )
        }
    )
    usage: dict = {}
    agent = asyncio.run(write_agent(model, tools[0].domain, tools, Sampling(seed=1), usage))
    assert agent.name == "Atlas" and agent.tool_ids == [t.id for t in tools]
    assert agent.system_prompt.startswith("You are Atlas")
    task = asyncio.run(write_task(model, agent, "easy", 0, Sampling(seed=1), usage))
    assert task.agent_id == agent.id and task.difficulty == "easy"
    assert task.rubric.expected_tools == [tools[0].name]
    assert task.initial_state["k"] == "v"  # the model's fact, on top of the Faker world
    assert task.expected_outcome.facts == ["done"]
    assert usage["synthesizer"].requests == 2


def test_task_schema_only_names_offered_tools() -> None:
    schema = task_schema([SEARCH, BOOK])
    answer = {
        "goal": "g",
        "user_knows": [],
        "user_withholds": [],
        "success_criteria": ["c"],
        "expected_tools": ["get_booking"],
        "checkpoints": [],
        "initial_state": [],
        "expected_state": [],
        "expected_facts": [],
    }
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(answer, schema)


def test_config_overrides_and_errors(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "episodes: 9\nmodels:\n  agent: {backend: openai, model: m, api_key: sk-secret}\n"
    )
    config = load_config(path, {"seed": 4, "models.judge.model": "j"})
    assert (config.episodes, config.seed, config.models.judge.model) == (9, 4, "j")
    assert "sk-secret" not in str(config.public_dump())
    assert (
        config.fingerprint()
        == load_config(path, {"seed": 4, "models.judge.model": "j"}).fingerprint()
    )
    assert config.fingerprint() != load_config(path, {"seed": 5}).fingerprint()
    path.write_text("episodes: -1\n")
    with pytest.raises(ConfigError, match=r"c.yaml.*episodes"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)
    path.write_text("episodes: 2\nmodels: {agent: {backend: nope}}\n")
    with pytest.raises(ConfigError, match=r"models\.agent\.backend"):
        load_config(path)
