"""Domain evolution: operators, validation, the pool pipeline and its report, tiers of tasks."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from benchmarks.pool import varied_instance
from pipelines.parquet_io import read_rows
from pipelines.pool import PoolConfig, run_synth
from pipelines.run import run
from schemas.records import Failure, ToolSpec
from simulators.llm import registry
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel
from tests.helpers import BOOK, SEARCH, STATUS, agent, role_model
from tests.test_pipeline import scripted_config
from toolspecs.compose import DECLINE_CRITERION, DIFFICULTIES, feeds, write_task
from toolspecs.load import check_parameters_schema, load_library, load_paths
from toolspecs.synth import (
    CATEGORIES,
    Domain,
    Plan,
    answer_schema,
    chains_by_domain,
    evolve_tool,
    seed_domains,
)


def varied() -> ScriptedModel:
    return ScriptedModel(
        lambda r: varied_instance(r.schema, random.Random(f"{r.sampling.seed}:{r.last}")),
        name="varied",
    )


def plan(seeds: list[ToolSpec], operators: list[str], rng_seed: int = 0) -> Plan:
    domain = Domain(name="pet_clinics", category="Health & Care", description="Vet clinics.",
                    seed_domain=seeds[0].domain, slot=0)
    return Plan(0, domain, seeds, operators, random.Random(rng_seed))


def evolve(p: Plan, answer: dict | None = None) -> tuple[ToolSpec | Failure, dict]:
    if answer is not None:  # only what this plan's schema asks for
        answer = {k: v for k, v in answer.items() if k in answer_schema(p)["properties"]}
    model = ScriptedModel([answer]) if answer else varied()
    return asyncio.run(evolve_tool(model, p, Sampling(seed=1), {}, attempts=1))


def test_each_operator_makes_a_valid_tool_and_records_what_it_did() -> None:
    answer = {
        "new_parameter": {"name": "Cabin Class", "type": "string", "description": "Seat class."},
        "choices": ["economy", "business"],
        "new_result_field": {"name": "total_price", "type": "number", "description": "Price."},
        "name": "Find Pet Flights",
        "description": "Find flights for a pet and its owner.",
    }
    spec, lineage = evolve(plan([SEARCH], ["add_parameter", "refine_returns"]), answer)
    assert isinstance(spec, ToolSpec) and spec.source == "synthetic"
    assert spec.name == "find_pet_flights" and spec.domain == "pet_clinics"
    assert spec.parameters["properties"]["cabin_class"] == {"type": "string",
                                                           "description": "Seat class."}
    assert "cabin_class" not in spec.parameters["required"]  # new arguments are optional
    assert spec.returns["properties"]["total_price"]["type"] == "number"
    assert "total_price" in spec.returns["required"]
    assert [s["op"] for s in lineage["operators"]] == ["add_parameter", "refine_returns"]
    assert lineage["seeds"] == [{"id": SEARCH.id, "name": SEARCH.name, "domain": "travel"}]
    assert lineage["tool_id"] == spec.id

    spec, lineage = evolve(plan([SEARCH], ["add_constraint", "change_type"], rng_seed=3), answer)
    assert isinstance(spec, ToolSpec) and check_parameters_schema(spec.parameters) == []
    constraint, change = lineage["operators"]
    assert constraint["op"] == "add_constraint" and change["op"] == "change_type"
    changed = spec.parameters["properties"][change["parameter"]]
    assert changed != SEARCH.parameters["properties"][change["parameter"]]

    spec, lineage = evolve(plan([SEARCH, BOOK], ["compose"]), answer)
    assert isinstance(spec, ToolSpec) and spec.side_effect == "write"
    step = lineage["operators"][0]
    assert step == {"op": "compose", "first": "search_flights", "then": "book_flight",
                    "fed": ["flight_id"]}
    assert "flight_id" not in spec.parameters["properties"]  # fed from the first tool
    assert {"origin", "destination", "passenger"} <= set(spec.parameters["properties"])
    assert spec.returns == BOOK.returns


def test_an_evolved_tool_that_cannot_be_built_or_validated_is_a_failure() -> None:
    clash = {"new_parameter": {"name": "origin", "type": "string", "description": "x"},
             "name": "dup_param", "description": "d"}
    with pytest.raises(ValueError, match="already an argument"):
        evolve(plan([SEARCH], ["add_parameter"]), clash)
    # A seed whose schema the operators cannot fix stays invalid: the loader refuses it.
    broken = SEARCH.model_copy(update={"parameters": {"type": "object", "properties": {
        "origin": {"type": "string", "minLength": "three"}}}})
    result, lineage = evolve(plan([broken], ["refine_returns"]), {
        "new_result_field": {"name": "note", "type": "string", "description": "n"},
        "name": "bad_tool", "description": "d"})
    assert isinstance(result, Failure) and result.stage == "synthesize"
    assert "/parameters/properties/origin/minLength" in result.error
    assert lineage["tool_id"] is None


def test_compose_pairs_chain_ids(tmp_path: Path) -> None:
    chains = chains_by_domain([SEARCH, BOOK, STATUS])
    assert {(a.name, b.name) for a, b in chains["travel"]} == {
        ("search_flights", "book_flight"), ("book_flight", "get_booking")}
    library = load_library()
    assert {d.category for d in seed_domains(library)} == set(CATEGORIES)


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pool") / "pool"
    config = ModelConfig(backend="scripted", model="varied-pool")
    registry.register(config, varied())
    summary = run_synth(PoolConfig(out=str(out), target=150, tools_per_domain=15, seed=2,
                                   synthesizer=config))
    return out, summary


def test_pool_report_reconciles_and_counts_domains(pool) -> None:
    _, report = pool
    counts = report["pool"]
    assert report["reconcile"]["ok"], report["reconcile"]
    assert counts["seeds"] == 64
    assert counts["synthesized"] + report["reconcile"]["synthesis_failures"] == 150
    assert counts["seeds"] + counts["synthesized"] == (
        counts["kept"] + counts["exact_duplicates_removed"] + counts["near_duplicates_removed"])
    assert report["domains"]["grown"] >= 5 and report["domains"]["count"] > 11
    per_domain = report["tools_per_domain"]["by_domain"]
    assert sum(per_domain.values()) == counts["kept"] and len(per_domain) == report["domains"][
        "count"]
    assert report["near_duplicates"]["rate"] <= 0.05
    assert set(report["operators"]) >= {"compose", "add_parameter", "add_constraint",
                                        "change_type", "refine_returns"}


def test_pool_outputs_load_as_authored_specs(pool) -> None:
    out, report = pool
    specs = list(load_paths([out / "specs"]))
    assert all(isinstance(s, ToolSpec) for s in specs)  # passes the loader's validation
    assert len(specs) == report["pool"]["kept"] == len(read_rows(out / "toolspecs"))
    assert len({s.name for s in specs}) == len(specs)
    lineage = [json.loads(line) for f in (out / "lineage").glob("*.jsonl")
               for line in f.read_text().splitlines()]
    assert len(lineage) == report["pool"]["synthesized"]
    taxonomy = json.loads((out / "taxonomy.json").read_text())
    names = [n for domains in taxonomy.values() for tools in domains.values() for n in tools]
    assert sorted(names) == sorted(s.name for s in specs)
    assert set(taxonomy) >= set(CATEGORIES)


def test_pool_is_reproducible(pool, tmp_path: Path) -> None:
    out, _ = pool
    config = ModelConfig(backend="scripted", model="varied-pool-2")
    registry.register(config, varied())
    run_synth(PoolConfig(out=str(tmp_path / "again"), target=150, tools_per_domain=15, seed=2,
                         synthesizer=config))
    ids = lambda folder: sorted(r["id"] for r in read_rows(folder / "toolspecs"))  # noqa: E731
    assert ids(out) == ids(tmp_path / "again")


def test_tiers_name_the_expected_tools() -> None:
    tools = [SEARCH, BOOK, STATUS]
    spec = agent(tools)

    def answer(request):
        return varied_instance(request.schema, random.Random(request.last))

    model = role_model({"synthesizer": answer})
    tasks = {d: asyncio.run(write_task(model, spec, d, i, Sampling(seed=i), {}))
             for i, d in enumerate(DIFFICULTIES)}
    assert len(tasks["easy"].rubric.expected_tools) == 1
    assert 2 <= len(tasks["medium"].rubric.expected_tools) <= 3
    chain = tasks["hard"].rubric.expected_tools
    by_name = {t.name: t for t in tools}
    assert len(chain) >= 2 and all(feeds(by_name[a], by_name[b])
                                   for a, b in itertools.pairwise(chain))
    assert tasks["decline"].rubric.expected_tools == []
    assert tasks["decline"].rubric.success_criteria[-1] == DECLINE_CRITERION
    assert tasks["decline"].expected_outcome.state == {}, "declining must leave the world as is"
    for task in tasks.values():
        assert set(task.rubric.expected_tools) <= set(by_name)


def test_agents_and_tasks_from_a_synthesized_pool(pool, tmp_path: Path) -> None:
    out, _ = pool
    manifest = run(scripted_config(tmp_path / "run", episodes=12, name="pool-agents",
                                   toolspecs=[str(out / "specs")], tasks_per_agent=4))
    assert manifest["reconcile"]["ok"]
    agents = {r["id"]: r for r in read_rows(tmp_path / "run" / "agents")}
    specs = {s.id: s for s in load_paths([out / "specs"])}
    for row in agents.values():
        tools = [specs[i] for i in row["tool_ids"]]
        assert {t.domain for t in tools} == {row["domain"]}  # one domain per agent
    tiers: dict[str, int] = defaultdict(int)
    for row in read_rows(tmp_path / "run" / "tasks"):
        tiers[row["difficulty"]] += 1
        rubric = json.loads(row["rubric"])
        names = {specs[i].name for i in agents[row["agent_id"]]["tool_ids"]}
        assert set(rubric["expected_tools"]) <= names
        assert (rubric["expected_tools"] == []) == (row["difficulty"] == "decline")
    assert set(tiers) == set(DIFFICULTIES)
    assert Counter(tiers.values()) == Counter({3: 4})
