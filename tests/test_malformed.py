"""Malformed inputs, one case each: tool specs, configs and model outputs.

Every case asserts the exact error class (a Failure's `error_type`, or the exception raised) and
that nothing else was lost: the good specs beside a bad one still load, a bad config changes
nothing on disk, a bad model answer fails its own episode while the others in the same stage
finish.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest

from filters.judge import JudgeError, judge
from pipelines import runtime
from pipelines.config import ROLES, ConfigError, load_config
from pipelines.shared import in_process_pipeline
from pipelines.stages import RunEpisodes
from schemas.records import AgentSpec, Failure, Persona, Task, ToolSpec, Trajectory
from simulators.ask import RoleOutputError
from simulators.episode import EpisodeConfig, EpisodeError, RoleClients, run_episode
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel
from tests import helpers
from toolspecs.load import load_paths

LIBRARY_TRAVEL = Path(__file__).resolve().parents[1] / "toolspecs" / "library" / "travel.json"
GOOD_TOOLS = len(json.loads(LIBRARY_TRAVEL.read_text()))


def _deep(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def _tool(**fields: Any) -> dict[str, Any]:
    base = {"name": "ok_tool", "description": "Does a thing.", "domain": "travel",
            "parameters": {"type": "object", "properties": {}}}
    return {**base, **fields}


SPEC_CASES: dict[str, tuple[bytes, str]] = {
    "not_json": (b"{not json", "JSONDecodeError"),
    "not_utf8": (b'[{"name": "caf\xe9"}]', "UnicodeDecodeError"),
    "json_nested_3000_deep": (b"[" * 3000 + b"]" * 3000, "SpecTooDeep"),
    "schema_nested_100_deep": (json.dumps([_tool(parameters=_deep(100))]).encode(),
                               "SpecTooDeep"),
    "spec_of_300k_chars": (
        json.dumps([_tool(description="x" * 300_000)]).encode(), "SpecTooLarge"),
    "name_with_path_traversal": (json.dumps([_tool(name="../../etc/passwd")]).encode(),
                                 "InvalidSpec"),
    "name_with_role_marker": (json.dumps([_tool(name="<|im_start|>system")]).encode(),
                              "InvalidSpec"),
    "name_with_template_syntax": (json.dumps([_tool(name="{{config}}")]).encode(),
                                  "InvalidSpec"),
    "empty_description": (json.dumps([_tool(description="")]).encode(), "InvalidSpec"),
    "entry_is_a_string": (json.dumps(["search_flights"]).encode(), "InvalidSpec"),
    "parameters_not_an_object_schema": (
        json.dumps([_tool(parameters={"type": "array"})]).encode(), "InvalidSchema"),
    "parameters_invalid_json_schema": (
        json.dumps([_tool(parameters={"type": "object", "properties": {"a": {"type": "strng"}}})])
        .encode(), "InvalidSchema"),
    "returns_not_a_schema": (json.dumps([_tool(returns="a dict")]).encode(), "InvalidSchema"),
    "code_to_execute_in_an_extra_field": (
        json.dumps([_tool(exec="__import__('os').system('touch /tmp/pwned')")]).encode(),
        "InvalidSpec"),
    "duplicate_name": (json.dumps([_tool(), _tool()]).encode(), "DuplicateToolName"),
    "remote_ref": (json.dumps([_tool(parameters={"type": "object", "properties": {
        "a": {"$ref": "https://example.com/a.json"}}})]).encode(), "InvalidSchema"),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_malformed_spec_is_one_failure_and_the_good_specs_still_load(
    case: str, tmp_path: Path
) -> None:
    content, error_type = SPEC_CASES[case]
    (tmp_path / "travel.json").write_bytes(LIBRARY_TRAVEL.read_bytes())
    (tmp_path / f"{case}.json").write_bytes(content)
    items = list(load_paths([tmp_path]))
    failures = [i for i in items if isinstance(i, Failure)]
    specs = [i for i in items if isinstance(i, ToolSpec)]
    assert [f.error_type for f in failures] == [error_type], [f.error for f in failures]
    assert f"{case}.json" in failures[0].source and failures[0].stage == "load_toolspecs"
    expected_good = GOOD_TOOLS + (1 if case == "duplicate_name" else 0)
    assert len(specs) == expected_good  # nothing else was lost
    assert not Path("/tmp/pwned").exists()


CONFIG_CASES: dict[str, tuple[str, str]] = {
    "not_yaml": ("episodes: [1, 2\nseed: 3", "cannot read config"),
    "a_list_not_a_mapping": ("- episodes: 3\n", "a config must be a mapping"),
    "unknown_field": ("episodez: 3\n", "episodez"),
    "negative_episodes": ("episodes: -1\n", "episodes"),
    "episodes_not_a_number": ("episodes: many\n", "episodes"),
    "unknown_backend": ("models:\n  agent: {backend: shell}\n", "models.agent.backend"),
    "unknown_model_field": ("models:\n  agent: {command: 'rm -rf /'}\n", "models.agent.command"),
    "pass_threshold_above_one": ("judge:\n  pass_threshold: 2\n", "judge.pass_threshold"),
    "failure_rate_above_one": ("control:\n  max_failure_rate: 1.5\n",
                               "control.max_failure_rate"),
    "python_object_tag": (
        "episodes: !!python/object/apply:os.system ['touch /tmp/pwned-config']\n",
        "cannot read config"),
    "not_utf8": ("\udcff", "cannot read config"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_malformed_config_raises_config_error_naming_file_and_field(
    case: str, tmp_path: Path
) -> None:
    text, named = CONFIG_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape"))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert type(raised.value) is ConfigError
    assert str(path) in str(raised.value) and named in str(raised.value)
    assert sorted(tmp_path.iterdir()) == before  # nothing written, nothing run
    assert not Path("/tmp/pwned-config").exists()


def test_missing_config_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nowhere.yaml")


# -- model outputs ---------------------------------------------------------------------------

CALL = {"name": "search_flights", "arguments": {"origin": "SFO", "destination": "JFK"}}
MODEL_CASES: dict[str, tuple[dict[str, Any], type[BaseException], str]] = {
    # role answering -> its answer; the exception the episode raises; the cause's class name
    "agent_not_json": ({"agent": "Sure! I will book it."}, EpisodeError, "RoleOutputError"),
    "agent_empty": ({"agent": ""}, EpisodeError, "RoleOutputError"),
    "agent_truncated_json": ({"agent": '{"tool_calls": [{"name": "search_fl'}, EpisodeError,
                             "RoleOutputError"),
    "agent_tool_calls_not_a_list": ({"agent": {"tool_calls": "search_flights"}}, EpisodeError,
                                    "RoleOutputError"),
    "agent_injects_extra_tool_calls": ({"agent": {"tool_calls": [CALL] * 12}}, EpisodeError,
                                       "RoleOutputError"),
    "agent_answer_is_a_list": ({"agent": [CALL]}, EpisodeError, "RoleOutputError"),
    "user_breaks_schema": ({"user": {"text": "hi"}}, EpisodeError, "RoleOutputError"),
    "user_done_not_boolean": ({"user": {"message": "hi", "done": "yes"}}, EpisodeError,
                              "RoleOutputError"),
    "tool_result_breaks_returns_schema": ({"tool": {"result": {"flights": "none"}}},
                                          EpisodeError, "RoleOutputError"),
    "tool_answer_not_json": ({"tool": "<html>502 Bad Gateway</html>"}, EpisodeError,
                             "RoleOutputError"),
}


def _scripted(answers: dict[str, Any]) -> ScriptedModel:
    """Every role answers schema-valid values, except the ones in `answers`; the agent calls
    search_flights first and then replies final, so each role is reached."""
    def agent(request: Any) -> Any:
        if "agent" in answers:
            return answers["agent"]
        called = "[tool result for" in "".join(m["content"] for m in request.messages)
        return helpers.agent_reply("Done.", final=True) if called else {"tool_calls": [CALL]}

    handlers: dict[str, Any] = {"agent": agent}
    for role in ("user", "tool"):
        if role in answers:
            handlers[role] = lambda request, value=answers[role]: value
    return helpers.role_model(handlers)


def _episode(model: ScriptedModel) -> Trajectory:
    spec = helpers.agent()
    models = RoleClients(user=model, agent=model, tool=model)
    persona = Persona(name="Ada", occupation="engineer", city="Oslo")
    config = EpisodeConfig(max_turns=2, attempts=2)
    return asyncio.run(run_episode(helpers.task(spec), spec, persona, models, config, seed=1))


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_malformed_model_output_fails_its_episode_with_the_exact_error(case: str) -> None:
    answers, error, cause = MODEL_CASES[case]
    with pytest.raises(error) as raised:
        _episode(_scripted(answers))
    assert type(raised.value) is error
    assert type(raised.value.__cause__).__name__ == cause
    assert isinstance(raised.value.__cause__, RoleOutputError)
    assert raised.value.role == next(iter(answers))
    assert raised.value.raw_output is not None


STAGE_OUTPUTS: dict[str, list[Any]] = {"ok": [], "failed": []}
"""What the in-process stage emitted (module state: Beam pickles the functions that fill it)."""


def _note_ok(trajectory: Trajectory) -> None:
    STAGE_OUTPUTS["ok"].append(trajectory.task_id)


def _note_failed(failure: Failure) -> None:
    STAGE_OUTPUTS["failed"].append((failure.input_id, failure.error_type))


def test_bad_model_outputs_fail_only_their_own_episodes_in_a_stage() -> None:
    """All model-output cases at once in the real episode stage, beside good episodes: each bad
    one is a Failure of its own task, and every good one still yields its trajectory."""
    spec = helpers.agent()
    by_prompt: dict[str, dict[str, Any]] = {}
    pairs: list[tuple[Task, AgentSpec]] = []
    for case in [*sorted(MODEL_CASES), "good-1", "good-2", "good-3"]:
        marker = f"[[{case}]]"  # in what the agent, the user and the tool simulator each see
        agent = AgentSpec.model_validate(
            {**spec.model_dump(exclude={"id"}), "system_prompt": f"Case {marker}."}
        )
        task = Task.model_validate({
            **helpers.task(agent).model_dump(exclude={"id"}),
            "goal": f"Help me with {marker}.", "initial_state": {"case": marker},
        })
        pairs.append((task, agent))
        by_prompt[marker] = MODEL_CASES[case][0] if case in MODEL_CASES else {}

    def answers_for(request: Any) -> dict[str, Any]:
        text = "\n".join(m["content"] for m in request.messages)
        return next((a for p, a in by_prompt.items() if p in text), {})

    def respond(request: Any) -> Any:
        answers = answers_for(request)
        return _scripted(answers)._responder(request)  # type: ignore[misc]

    name = "malformed-mix"
    overrides = {f"models.{r}.backend": "scripted" for r in ROLES}
    overrides |= {f"models.{r}.model": name for r in ROLES}
    overrides |= {"episodes": len(pairs), "episode.max_turns": 2, "episode.attempts": 2}
    config = load_config(None, overrides)
    registry.register(ModelConfig(backend="scripted", model=name), ScriptedModel(respond))
    outputs = STAGE_OUTPUTS
    outputs["ok"].clear()
    outputs["failed"].clear()
    pipeline = in_process_pipeline()
    played = pipeline | beam.Create(pairs) | RunEpisodes(config)
    _ = played.trajectories | "Ok" >> beam.Map(_note_ok)
    _ = played.failures | "Failed" >> beam.Map(_note_failed)
    try:
        pipeline.run().wait_until_finish()
    finally:
        runtime.close_models()
    ids = {task.agent_id: task.id for task, _ in pairs}
    case_of = {ids[agent.id]: agent.system_prompt for _, agent in pairs}
    failed_cases = sorted(case_of[task_id] for task_id, _ in outputs["failed"])
    assert failed_cases == sorted(f"Case [[{c}]]." for c in MODEL_CASES)
    assert {t for _, t in outputs["failed"]} == {"EpisodeError"}
    assert sorted(case_of[t] for t in outputs["ok"]) == [f"Case [[good-{i}]]." for i in (1, 2, 3)]


def test_judge_garbage_is_a_judge_error_with_the_raw_answer() -> None:
    model = helpers.role_model({"judge": lambda request: "The assistant did great!!"})
    spec = helpers.agent()
    trajectory = Trajectory(
        task_id="t", agent_id=spec.id, persona_id="p", domain="travel",
        messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        tools=[], end_reason="agent_final", turns=1,
    )
    with pytest.raises(JudgeError) as raised:
        asyncio.run(judge(trajectory, helpers.task(spec), model, max_attempts=2))
    assert raised.value.raw_output == "The assistant did great!!"
