"""Tools that run real Python (`entrypoint`), only when the config allows it."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from pydantic import ValidationError

from schemas.records import FunctionCall, ToolCall, ToolSpec
from simulators.episode import EpisodeConfig
from simulators.llm.base import Sampling
from simulators.tool_simulator import ToolSimulator
from tests import entrypoint_tools
from tests.helpers import role_model
from tests.test_world import CANCEL_ORDER, GET_ORDER, shop_world
from toolspecs.load import parse_entry


def real(spec: ToolSpec, function: str) -> ToolSpec:
    return spec.model_copy(update={"entrypoint": f"tests.entrypoint_tools:{function}"})


def simulator(tools: list[ToolSpec], allow: bool = True, **options) -> tuple[ToolSimulator, list]:
    asked: list = []
    model = role_model({"tool": lambda r: asked.append(r) or {
        "result": {"order_id": "ORD-1", "status": "pending"}
    }})
    return ToolSimulator(model, tools, shop_world(), Sampling(seed=1),
                         allow_entrypoints=allow, **options), asked


def answer(sim: ToolSimulator, name: str, arguments: dict) -> dict:
    call = ToolCall(id="c1", function=FunctionCall(name=name, arguments=json.dumps(arguments)))
    return json.loads(asyncio.run(sim.answer(call, {})).content)


def test_entrypoint_tools_run_in_process_over_the_world() -> None:
    sim, asked = simulator([real(GET_ORDER, "get_order"), real(CANCEL_ORDER, "cancel_order")])
    assert answer(sim, "cancel_order", {"order_id": "ORD-1"}) == {
        "order_id": "ORD-1", "status": "cancelled"
    }
    assert answer(sim, "get_order", {"order_id": "ORD-1"})["status"] == "cancelled"
    assert sim.state["orders"]["ORD-1"]["status"] == "cancelled"
    assert asked == []  # no model was needed


def test_entrypoints_are_never_imported_unless_the_config_allows_them() -> None:
    assert EpisodeConfig().allow_entrypoints is False
    canary = GET_ORDER.model_copy(update={"entrypoint": "tests.entrypoint_canary:run"})
    sys.modules.pop("tests.entrypoint_canary", None)
    sim, asked = simulator([canary], allow=False)
    assert answer(sim, "get_order", {"order_id": "ORD-1"})["order_id"] == "ORD-1"
    assert len(asked) == 1 and "tests.entrypoint_canary" not in sys.modules
    sim, asked = simulator([canary], allow=True)
    assert answer(sim, "get_order", {"order_id": "ORD-1"})["order_id"] == "pwned"
    assert "tests.entrypoint_canary" in sys.modules and asked == []


def test_the_same_checks_apply_to_real_tools() -> None:
    entrypoint_tools.CALLS.clear()
    sim, _ = simulator([real(GET_ORDER, "get_order")])
    error = answer(sim, "get_order", {"order_id": 7})["error"]  # breaks the parameters schema
    assert error["type"] == "invalid_arguments" and entrypoint_tools.CALLS == []
    error = answer(sim, "get_order", {"order_id": "ORD-404"})["error"]
    assert (error["code"], error["type"]) == (500, "tool_error") and "KeyError" in error["message"]
    sim, _ = simulator([real(GET_ORDER, "wrong_shape")])
    error = answer(sim, "get_order", {"order_id": "ORD-1"})["error"]
    assert error["type"] == "invalid_result"
    sim, _ = simulator([real(GET_ORDER, "get_order")], failure_rate=1.0, seed=2)
    entrypoint_tools.CALLS.clear()
    answer(sim, "get_order", {"order_id": "ORD-1"})
    assert len(sim.injected) == 1


def test_real_tools_time_out_and_may_be_async() -> None:
    sim, _ = simulator([real(GET_ORDER, "slow_lookup")], entrypoint_timeout_s=0.1)
    error = answer(sim, "get_order", {"order_id": "ORD-1"})["error"]
    assert (error["code"], error["type"]) == (504, "timeout")
    sim, _ = simulator([real(GET_ORDER, "async_lookup")])
    # The world reconciles a real read too: it holds ORD-1 as pending.
    assert answer(sim, "get_order", {"order_id": "ORD-1"})["status"] == "pending"
    sim, _ = simulator([real(GET_ORDER, "missing_function")])
    error = answer(sim, "get_order", {"order_id": "ORD-1"})["error"]
    assert error["type"] == "entrypoint_error" and "missing_function" in error["message"]


@pytest.mark.parametrize("bad", ["os.system", "os:system; rm -rf /", "a b:c", ":f", "m:"])
def test_entrypoints_must_be_module_colon_function(bad: str) -> None:
    with pytest.raises(ValidationError, match="not an entrypoint"):
        ToolSpec(name="t", description="d", entrypoint=bad)
    entry = {"name": "t", "description": "d", "entrypoint": bad}
    failure = parse_entry(entry, file="specs.json", where="/0")
    assert "specs.json" in failure.error and "entrypoint" in failure.error  # type: ignore[union-attr]


def test_specs_without_entrypoint_keep_their_ids() -> None:
    plain = ToolSpec(name="t", description="d")
    assert "entrypoint" not in plain.model_dump()
    assert plain.id == ToolSpec(name="t", description="d", entrypoint=None).id
    assert plain.id != ToolSpec(name="t", description="d", entrypoint="m:f").id
