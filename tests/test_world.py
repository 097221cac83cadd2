"""The tool world: Faker-built initial state, writes that stick, reads that see them, and
seeded failure injection."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import jsonschema

from schemas.records import FunctionCall, ToolCall, ToolSpec
from simulators.episode import EpisodeConfig, RoleClients, run_episode
from simulators.llm.base import Sampling
from simulators.persona import make_persona
from simulators.tool_simulator import ToolSimulator
from simulators.world import apply_changes, build_world, collection_of, record_schemas
from tests import helpers
from tests.helpers import BOOK, STATUS, agent_calls, agent_reply, role_model
from toolspecs.compose import by_domain
from toolspecs.load import load_library

ORDER = {
    "type": "object",
    "properties": {
        "order_id": {"type": "string"},
        "status": {"enum": ["pending", "shipped", "cancelled"]},
        "total_usd": {"type": "number"},
    },
    "required": ["order_id", "status"],
}
GET_ORDER = ToolSpec(
    name="get_order",
    description="Look up an order.",
    parameters={"type": "object", "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"]},
    returns=ORDER,
    domain="shop",
)
LIST_ORDERS = ToolSpec(
    name="list_orders",
    description="List the customer's orders.",
    parameters={"type": "object", "properties": {}},
    returns={"type": "object", "properties": {"orders": {"type": "array", "items": ORDER}},
             "required": ["orders"]},
    domain="shop",
)
CANCEL_ORDER = ToolSpec(
    name="cancel_order",
    description="Cancel an order.",
    parameters={"type": "object", "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"]},
    returns={"type": "object", "properties": {"order_id": {"type": "string"},
                                              "status": {"type": "string"}},
             "required": ["order_id", "status"]},
    domain="shop",
    side_effect="write",
)
SHOP = [GET_ORDER, LIST_ORDERS, CANCEL_ORDER]


def call(name: str, arguments: dict, call_id: str = "c") -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name=name, arguments=json.dumps(arguments)))


def stale_shop_model():
    """A tool model that never remembers: every read says `pending`, the cancel says done."""

    def tool(request):
        if "cancel_order(" in request.last:
            order_id = json.loads(request.last.split("cancel_order(", 1)[1].split(")\n")[0])
            return {"result": {"order_id": order_id["order_id"], "status": "cancelled"},
                    "state_changes": []}
        if "list_orders(" in request.last:
            return {"result": {"orders": [{"order_id": "ORD-1", "status": "pending"},
                                          {"order_id": "ORD-2", "status": "pending"}]}}
        return {"result": {"order_id": "ORD-1", "status": "pending", "total_usd": 1.0}}

    return role_model({"tool": tool})


def user_says(text: str, done: bool = True):
    """A scripted user: `text` as the opening, then done (or not) on every reply."""
    return lambda r: (
        {"message": text, "done": done} if "done" in r.schema["properties"] else {"message": text}
    )


def shop_world() -> dict:
    return {"orders": {
        "ORD-1": {"order_id": "ORD-1", "status": "pending", "total_usd": 40.0},
        "ORD-2": {"order_id": "ORD-2", "status": "shipped", "total_usd": 12.5},
    }}


def answer(simulator: ToolSimulator, name: str, arguments: dict) -> dict:
    return json.loads(asyncio.run(simulator.answer(call(name, arguments), {})).content)


def test_read_after_write_returns_what_was_written() -> None:
    simulator = ToolSimulator(stale_shop_model(), SHOP, shop_world(), Sampling(seed=1))
    assert answer(simulator, "get_order", {"order_id": "ORD-1"})["status"] == "pending"
    assert answer(simulator, "cancel_order", {"order_id": "ORD-1"})["status"] == "cancelled"
    # The model still says "pending"; the world corrects every record it holds.
    got = answer(simulator, "get_order", {"order_id": "ORD-1"})
    assert got == {"order_id": "ORD-1", "status": "cancelled", "total_usd": 40.0}
    listed = {o["order_id"]: o["status"] for o in answer(simulator, "list_orders", {})["orders"]}
    assert listed == {"ORD-1": "cancelled", "ORD-2": "shipped"}
    assert simulator.state["orders"]["ORD-1"]["status"] == "cancelled"
    assert simulator.state["orders"]["ORD-2"]["status"] == "shipped"


def test_reported_state_changes_use_paths_and_reads_see_them() -> None:
    model = role_model({"tool": lambda r: (
        {"result": {"order_id": "ORD-2", "status": "cancelled"},
         "state_changes": [{"key": "orders/ORD-2/total_usd", "value": "0"},
                           {"key": "refund_note", "value": "issued"}]}
        if "cancel_order(" in r.last else
        {"result": {"order_id": "ORD-2", "status": "pending", "total_usd": 99.0}}
    )})
    simulator = ToolSimulator(model, SHOP, shop_world(), Sampling(seed=1))
    answer(simulator, "cancel_order", {"order_id": "ORD-2"})
    assert simulator.state["refund_note"] == "issued"
    assert answer(simulator, "get_order", {"order_id": "ORD-2"}) == {
        "order_id": "ORD-2", "status": "cancelled", "total_usd": 0,
    }


def test_a_write_that_returns_a_new_id_creates_the_record_a_later_read_sees() -> None:
    model = role_model({"tool": lambda r: (
        {"result": {"booking_id": "B7", "status": "confirmed"}, "state_changes": []}
        if "book_flight(" in r.last else {"result": {"status": "unknown"}}
    )})
    simulator = ToolSimulator(model, [BOOK, STATUS], {}, Sampling(seed=1))
    answer(simulator, "book_flight", {"flight_id": "F1", "passenger": "Ada"})
    assert simulator.state["bookings"]["B7"] == {
        "booking_id": "B7", "flight_id": "F1", "passenger": "Ada", "status": "confirmed",
    }
    assert answer(simulator, "get_booking", {"booking_id": "B7"}) == {"status": "confirmed"}


def test_reconciling_never_breaks_the_returns_schema() -> None:
    world = {"orders": {"ORD-1": {"order_id": "ORD-1", "status": "lost in space"}}}
    simulator = ToolSimulator(stale_shop_model(), SHOP, world, Sampling(seed=1))
    got = answer(simulator, "get_order", {"order_id": "ORD-1"})
    jsonschema.validate(got, ORDER)
    assert got["status"] == "pending"  # the world's value is not one the schema allows


def test_change_values_keep_codes_as_text() -> None:
    state: dict = {}
    apply_changes(state, [{"key": "a/zip", "value": "02134"}, {"key": "a/n", "value": "42"},
                          {"key": "a/x", "value": "4.5"}, {"key": "a/ok", "value": "true"},
                          {"key": "a/tags", "value": '["x"]'}])
    assert state == {"a": {"zip": "02134", "n": 42, "x": 4.5, "ok": True, "tags": ["x"]}}
    world = shop_world()
    assert apply_changes(world, [{"key": "orders", "value": "updated"},
                                 {"key": "orders/ORD-1", "value": "gone"},
                                 {"key": "/", "value": "x"}]) == []
    assert world == shop_world()


def test_initial_world_follows_the_tools_schemas_for_every_library_domain() -> None:
    domains = by_domain(load_library())
    for domain, tools in domains.items():
        world = build_world(tools, key=domain)
        assert world == build_world(tools, key=domain)
        assert world != build_world(tools, key=domain + "x")
        schemas = record_schemas(tools)
        assert set(world) == set(schemas), domain
        for collection, records in world.items():
            assert len(records) == 3
            for record_id, record in records.items():
                id_fields = [f for f in record if collection_of(f) == collection]
                assert record[id_fields[0]] == record_id
                for field, value in record.items():
                    jsonschema.validate(value, schemas[collection][field])
                    target = collection_of(field)
                    if target != collection and target in world:
                        assert value in world[target], (domain, field, value)


def test_injected_failures_are_seeded_recorded_and_leave_the_world_alone() -> None:
    def run(seed: int, rate: float) -> ToolSimulator:
        simulator = ToolSimulator(stale_shop_model(), SHOP, shop_world(), Sampling(seed=1),
                                  failure_rate=rate, seed=seed)
        for index in range(200):
            name = ("get_order", "list_orders", "cancel_order")[index % 3]
            arguments = {} if name == "list_orders" else {"order_id": "ORD-2"}
            asyncio.run(simulator.answer(call(name, arguments, f"c{index}"), {}))
        return simulator

    quiet = run(1, 0.0)
    assert quiet.injected == []
    noisy = run(1, 0.25)
    share = len(noisy.injected) / 200
    assert 0.15 <= share <= 0.35
    assert noisy.injected == run(1, 0.25).injected
    assert noisy.injected != run(2, 0.25).injected
    kinds = Counter(f.kind for f in run(3, 1.0).injected)
    assert set(kinds) == {"not_found", "permission_denied", "rate_limited", "timeout",
                          "partial_result", "empty_result"}
    # Every call failed, so no write went through.
    assert run(3, 1.0).state == shop_world()


def test_injected_answers_look_like_the_real_thing() -> None:
    simulator = ToolSimulator(stale_shop_model(), SHOP, shop_world(), Sampling(seed=1),
                              failure_rate=1.0, seed=5)
    seen: dict[str, object] = {}
    for index in range(60):
        message = asyncio.run(simulator.answer(call("list_orders", {}, f"c{index}"), {}))
        fault = simulator.injected[-1]
        assert fault.tool_call_id == f"c{index}" and fault.tool == "list_orders"
        seen[fault.kind] = json.loads(message.content)
    assert seen["not_found"]["error"]["code"] == 404
    assert seen["permission_denied"]["error"]["code"] == 403
    assert seen["rate_limited"]["error"]["retry_after_s"] >= 2
    assert seen["timeout"]["error"]["code"] == 504
    assert len(seen["partial_result"]["orders"]) == 1  # half of two
    assert seen["empty_result"] == {"orders": []}


def test_episode_records_final_state_and_injected_faults() -> None:
    spec = helpers.agent(SHOP)
    task = helpers.task(spec).model_copy(update={"initial_state": shop_world()})
    queue = [
        agent_calls(("cancel_order", {"order_id": "ORD-1"})),
        agent_calls(("get_order", {"order_id": "ORD-1"})),
        agent_reply("Cancelled.", final=True),
    ]
    model = role_model({
        "tool": stale_shop_model()._responder,
        "agent": lambda r: queue.pop(0),
        "user": user_says("cancel ORD-1"),
    })
    models = RoleClients(user=model, agent=model, tool=model)
    config = EpisodeConfig(failure_rate=0.0, user_ends=True)
    trajectory = asyncio.run(run_episode(task, spec, make_persona("p"), models, config, 3))
    assert trajectory.final_state["orders"]["ORD-1"]["status"] == "cancelled"
    assert json.loads(trajectory.messages[5].content)["status"] == "cancelled"
    assert trajectory.end_reason == "user_stop" and trajectory.injected_faults == []


def test_trajectory_lists_the_faults_it_got() -> None:
    spec = helpers.agent(SHOP)
    task = helpers.task(spec).model_copy(update={"initial_state": shop_world()})
    queue = [agent_calls(*[("get_order", {"order_id": "ORD-1"})] * 3),
             agent_calls(*[("list_orders", {})] * 3), agent_reply("Done.", final=True)]
    model = role_model({
        "tool": stale_shop_model()._responder,
        "agent": lambda r: queue.pop(0),
        "user": user_says("status?"),
    })
    models = RoleClients(user=model, agent=model, tool=model)
    trajectory = asyncio.run(run_episode(
        task, spec, make_persona("p"), models, EpisodeConfig(failure_rate=0.5), 11
    ))
    call_ids = {c.id for m in trajectory.messages for c in m.tool_calls or []}
    assert trajectory.injected_faults
    assert {f.tool_call_id for f in trajectory.injected_faults} <= call_ids


def test_a_world_does_not_depend_on_the_worlds_built_before_it() -> None:
    """Fakers are kept per process and thread and reseeded per world: no state may carry over
    (the same key gives the same world first, after others, and on another thread)."""
    import threading

    domains = sorted(by_domain(load_library()).items())
    (first, tools), *others = domains
    alone: list[object] = []
    thread = threading.Thread(target=lambda: alone.append(build_world(tools, key=first)))
    thread.start()
    thread.join()
    for name, other in others:
        build_world(other, key=name, locale="en_US")
    again = build_world(tools, key=first)
    assert again == alone[0]
    assert json.dumps(again, sort_keys=True) == json.dumps(build_world(tools, key=first),
                                                           sort_keys=True)
