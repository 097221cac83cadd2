"""Worlds a user would believe: values fit what a field means, not only its JSON type."""

from __future__ import annotations

import random
import re

from schemas.records import ToolSpec
from simulators.ask import schema_errors
from simulators.values import number_meaning, pick_number, string_method, words
from simulators.world import build_world, record_schemas


def listing_tool(description: str) -> ToolSpec:
    return ToolSpec(
        name="get_listing",
        description=description,
        parameters={"type": "object", "properties": {"listing_id": {"type": "string"}},
                    "required": ["listing_id"]},
        returns={
            "type": "object",
            "properties": {
                "listing_id": {"type": "string"},
                "price_usd": {"type": "number"},
                "area_sqft": {"type": "integer"},
                "bedrooms": {"type": "integer", "minimum": 0},
                "rating": {"type": "number", "minimum": 0, "maximum": 5},
                "agent_name": {"type": "string"},
                "agent_email": {"type": "string"},
                "city": {"type": "string"},
                "listed_on": {"type": "string", "format": "date"},
            },
        },
        domain="real_estate",
    )


def records(tool: ToolSpec, key: str = "w") -> list[dict]:
    world = build_world([tool], key=key, per_collection=20)
    return list(world["listings"].values())


def test_houses_for_sale_have_house_prices_and_house_areas() -> None:
    rows = records(listing_tool("Look up a house for sale by its listing id."))
    assert all(95_000 <= r["price_usd"] <= 1_450_000 for r in rows)
    assert all(450 <= r["area_sqft"] <= 4500 for r in rows)
    assert all(1 <= r["bedrooms"] <= 6 and 1 <= r["rating"] <= 5 for r in rows)
    assert all(re.fullmatch(r"[^@\s]+@[^@\s]+\.\w+", r["agent_email"]) for r in rows)
    assert all(" " in r["agent_name"] for r in rows)
    assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", r["listed_on"]) for r in rows)


def test_a_nightly_rental_costs_what_a_night_costs() -> None:
    rows = records(listing_tool("Look up a vacation rental's nightly price and rating."))
    assert all(45 <= r["price_usd"] <= 450 for r in rows)


def test_every_value_stays_valid_against_its_schema() -> None:
    tool = listing_tool("Look up a house for sale by its listing id.")
    schema = record_schemas([tool])["listings"]
    for row in records(tool, "other"):
        for field, value in row.items():
            assert schema_errors(schema[field], value) == [], (field, value)


def test_the_schema_wins_when_its_range_does_not_meet_the_typical_one() -> None:
    schema = {"type": "integer", "minimum": 1, "maximum": 3}
    meaning = number_meaning("area_sqft", schema, frozenset())
    rng = random.Random(0)
    assert {pick_number(meaning, True, rng, schema) for _ in range(50)} <= {1, 2, 3}
    cents = number_meaning("price_cents", {"type": "integer"}, words("buy shoes online"))
    assert cents.low >= 400 and cents.high <= 35_000


def test_string_fields_get_typed_providers() -> None:
    assert string_method("customer_email") == "email"
    assert string_method("firstName") == "first_name"
    assert string_method("hotel_name") == "company"
    assert string_method("passenger") == "name"
    assert string_method("zip_code") == "postcode"
    assert string_method("frobnicator") is None


def test_a_model_gives_the_range_of_a_number_nothing_else_explains() -> None:
    """`flux` means nothing to the name tables: the model is asked once per schema, and the
    world draws from its answer; a second task of the same tools asks nothing."""
    import asyncio

    from simulators.llm.base import Sampling
    from simulators.llm.scripted import ScriptedModel
    from simulators.values import ask_ranges
    from simulators.world import tool_words

    tool = ToolSpec(
        name="get_reactor", description="Read a reactor's state by id.",
        parameters={"type": "object", "properties": {"reactor_id": {"type": "string"}}},
        returns={"type": "object", "properties": {"reactor_id": {"type": "string"},
                                                  "flux": {"type": "number"},
                                                  "price": {"type": "number"}}},
    )
    fields = record_schemas([tool])["reactors"]
    model = ScriptedModel([{"flux": {"min": 7000, "max": 7100}}])
    usage: dict = {}

    async def twice() -> tuple:
        first = await ask_ranges(model, fields, tool_words([tool]), "x", Sampling(), usage)
        again = await ask_ranges(model, fields, tool_words([tool]), "x", Sampling(), usage)
        return first, again

    first, again = asyncio.run(twice())
    assert first == again == (("flux", 7000.0, 7100.0),)
    assert model.asked == 1 and usage["synthesizer"].requests == 1
    assert set(model.requests[0].schema["required"]) == {"flux"}  # price is known: not asked
    world = build_world([tool], key="k", per_collection=10, ranges=first)
    assert all(7000 <= r["flux"] <= 7100 for r in world["reactors"].values())
