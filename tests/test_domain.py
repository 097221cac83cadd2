"""tau-bench-like domains: the retail example loads, runs through the mill, is scored by state."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from filters.reward import score_trajectory
from pipelines.cli import app
from pipelines.parquet_io import read_rows
from pipelines.run import run
from simulators.world import record_schemas
from tests.helpers import agent_calls, agent_reply, play_domain_task
from tests.test_pipeline import scripted_config
from toolspecs.domain import DomainError, load_domain

RETAIL = Path(__file__).resolve().parents[1] / "data" / "domains" / "retail"


def test_retail_domain_loads_with_policy_world_and_outcomes() -> None:
    domain = load_domain(RETAIL)
    assert domain.failures == []
    assert domain.agent.policy and "pending" in domain.agent.policy
    assert {t.domain for t in domain.tools} == {"retail"}
    assert len(domain.tasks) == 5
    assert all(not t.expected_outcome.is_empty() for t in domain.tasks)
    assert domain.tasks[0].expected_outcome.state == {"orders/ORD-5001/status": "cancelled"}
    # The world holds exactly the records the tools read and change, valid against their schemas.
    schemas = record_schemas(domain.tools)
    assert set(domain.world) == set(schemas) == {"users", "orders", "products"}
    for collection, records in domain.world.items():
        for record in records.values():
            for name, value in record.items():
                jsonschema.validate(value, schemas[collection][name])
    assert load_domain(RETAIL).tasks[0].id == domain.tasks[0].id


def test_bad_tasks_become_failures_that_name_file_task_and_field(tmp_path: Path) -> None:
    folder = tmp_path / "shop"
    shutil.copytree(RETAIL, folder)
    tasks = json.loads((folder / "tasks.json").read_text())
    tasks[1]["rubric"]["expected_tools"] = ["teleport"]
    tasks[2]["difficulty"] = "extreme"
    tasks[3]["budget"] = 5
    (folder / "tasks.json").write_text(json.dumps(tasks))
    domain = load_domain(folder)
    assert len(domain.tasks) == 2
    errors = sorted(f.error for f in domain.failures)
    assert any("task 1 at /1/rubric/expected_tools/0: 'teleport'" in e for e in errors)
    assert any("task 2 at /2/difficulty" in e for e in errors)
    assert any("task 3 at /3/budget: unknown field" in e for e in errors)
    assert all(str(folder / "tasks.json") in e for e in errors)
    (folder / "policy.md").unlink()
    with pytest.raises(DomainError, match=r"policy\.md"):
        load_domain(folder)


def retail_episode(agent_turns: list[str], task_index: int = 0):
    def tool(request):
        if "cancel_pending_order(" in request.last:
            # A careless simulator: it always answers about the user's first order.
            return {"result": {"order_id": "ORD-5001", "status": "cancelled"},
                    "state_changes": []}
        if "find_user_id_by_email(" in request.last:
            return {"result": {"user_id": "USR-1001"}}
        return {"result": {"order_id": "ORD-5001", "user_id": "USR-1001", "product_id": "PRD-301",
                           "status": "pending", "total_usd": 1.0, "address": "x"}}

    return play_domain_task(
        RETAIL, agent_turns, task_index=task_index, tool=tool,
        asks="Cancel my shoe order.", thanks="yes please",
    )


def test_a_correct_agent_earns_reward_and_a_wrong_one_does_not() -> None:
    lookup = agent_calls(("find_user_id_by_email", {"email": "maya.okafor@example.com"}))
    right, task = retail_episode([
        lookup,
        agent_calls(("cancel_pending_order",
                     {"order_id": "ORD-5001", "reason": "no longer needed"})),
        agent_reply("Order ORD-5001 is cancelled.", final=True),
    ])
    assert right.final_state["orders"]["ORD-5001"]["status"] == "cancelled"
    assert score_trajectory(right, task).reward == 1.0
    wrong, task = retail_episode([
        lookup,
        agent_calls(("cancel_pending_order",
                     {"order_id": "ORD-5004", "reason": "no longer needed"})),
        agent_reply("Order cancelled.", final=True),
    ])
    # The world holds the simulator to the call: ORD-5004 is what was cancelled.
    assert json.loads(wrong.messages[5].content)["order_id"] == "ORD-5004"
    reward = score_trajectory(wrong, task)
    assert reward.reward == 0.0
    assert reward.reasons == [
        'state: orders/ORD-5001/status is "pending", expected "cancelled"',
        'state: orders/ORD-5004/status is "cancelled", expected "pending"',
    ]


def test_the_mill_runs_a_domain_and_records_rewards(tmp_path: Path) -> None:
    out = tmp_path / "run"
    manifest = run(scripted_config(out, episodes=4, domain=str(RETAIL)))
    counts = manifest["counts"]
    assert counts["agents"] == 1 and counts["tasks"] == 4 and counts["rl"] == 4
    assert counts["toolspecs"] == 7 and manifest["reconcile"]["ok"]
    for row in read_rows(out / "rl"):
        assert json.loads(row["expected_outcome"])
        assert "orders" in json.loads(row["initial_state"])
    judged = read_rows(out / "sft") + read_rows(out / "rejected")
    assert judged and all(row["reward"] in (0.0, 1.0) for row in judged)


def test_cli_names_an_unusable_domain(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--domain", str(tmp_path / "nope"),
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "not a domain folder" in " ".join(result.output.split())
