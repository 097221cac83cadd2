"""Believable values for a world's fields: what a field means decides its value, not only its type.

A JSON type alone gives houses of 7 sq ft and house prices of $99. A field's meaning is read off
its name, its schema's description and the tools' descriptions (the context: "houses for sale"
and "nightly rentals" both have a `price`), then:

- numbers get the typical range of that meaning (a house's price, a night's rent, an area in
  square feet or metres, bedrooms, a rating, a percentage, an age, a year...), intersected with
  the schema's own `minimum`/`maximum` (the schema wins when they do not overlap), in cents when
  the name or description says so;
- strings get Faker's typed provider for that meaning (names, emails, phones, addresses, cities,
  countries, companies, job titles, dates, URLs, currency codes...).

A meaning is resolved once per (field name, schema, context) and cached, so the cost per value is
one Faker or `random` call. Where name, description and schema say nothing about a number
(`get_widget -> {flux: number}`), `ask_ranges` asks a model once for its typical range; the
answer is cached per schema, so a thousand tasks of one agent cost one request.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from schemas.records import Message, content_id
from simulators.ask import Usage, ask
from simulators.llm.base import ChatModel, Sampling
from simulators.llm.errors import ModelOutputError

WORDS = re.compile(r"[a-z]+")


def words(text: str) -> frozenset[str]:
    """Lower-case words of a name (`sizeSqFt`, `size_sq_ft` -> size, sq, ft) or a sentence."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return frozenset(WORDS.findall(spaced.lower()))


@dataclass(frozen=True)
class NumberMeaning:
    """A typical range: [low, high], rounded to `step` (0: two decimals)."""

    low: float
    high: float
    step: float = 1


DEFAULT_NUMBER = NumberMeaning(1, 50)
"""A number whose meaning is unknown: small, positive, whole."""

REAL_ESTATE = frozenset({"house", "houses", "home", "homes", "property", "properties", "estate",
                         "realty", "condo", "condos", "sale", "mortgage"})
RENTAL = frozenset({"rent", "rental", "rentals", "night", "nightly", "stay", "stays", "hotel",
                    "hotels", "room", "rooms", "airbnb", "booking", "lodging"})
MONEY = frozenset({"price", "cost", "amount", "total", "subtotal", "fee", "fees", "balance",
                   "salary", "budget", "refund", "charge", "payment", "usd", "eur", "gbp",
                   "fare", "rent", "deposit", "revenue", "income", "spend", "spent", "paid"})

# (words any of which the name must hold, range); first match wins.
NUMBER_MEANINGS: list[tuple[frozenset[str], NumberMeaning]] = [
    (frozenset({"latitude", "lat"}), NumberMeaning(-60, 70, 0)),
    (frozenset({"longitude", "lng", "lon"}), NumberMeaning(-170, 170, 0)),
    (frozenset({"sqft", "sq", "feet", "ft"}), NumberMeaning(450, 4500, 10)),
    (frozenset({"sqm", "m2", "meters", "metres"}), NumberMeaning(35, 420, 1)),
    (frozenset({"bedrooms", "bedroom", "beds"}), NumberMeaning(1, 6)),
    (frozenset({"bathrooms", "bathroom", "baths"}), NumberMeaning(1, 4)),
    (frozenset({"guests", "occupancy", "adults", "travelers", "travellers", "passengers",
                "people", "party", "seats", "attendees"}), NumberMeaning(1, 8)),
    (frozenset({"capacity"}), NumberMeaning(2, 200)),
    (frozenset({"rating", "stars", "score"}), NumberMeaning(1, 5, 0.1)),
    (frozenset({"percent", "percentage", "pct", "discount"}), NumberMeaning(5, 60)),
    (frozenset({"age"}), NumberMeaning(18, 85)),
    (frozenset({"year"}), NumberMeaning(1960, 2026)),
    (frozenset({"month"}), NumberMeaning(1, 12)),
    (frozenset({"minutes", "mins"}), NumberMeaning(10, 180, 5)),
    (frozenset({"hours", "hrs"}), NumberMeaning(1, 12)),
    (frozenset({"days", "nights"}), NumberMeaning(1, 14)),
    (frozenset({"weight", "kg"}), NumberMeaning(0.5, 40, 0)),
    (frozenset({"distance", "km", "miles"}), NumberMeaning(1, 800)),
    (frozenset({"temperature", "temp", "celsius"}), NumberMeaning(-5, 35)),
    (frozenset({"quantity", "qty", "units", "items"}), NumberMeaning(1, 10)),
    (frozenset({"stock", "inventory", "available"}), NumberMeaning(0, 250)),
    (frozenset({"credits", "credit"}), NumberMeaning(1, 6)),
    (frozenset({"floor", "floors", "stories"}), NumberMeaning(1, 12)),
    (frozenset({"page", "pages"}), NumberMeaning(1, 400)),
]


def money_range(name: frozenset[str], context: frozenset[str]) -> NumberMeaning:
    """A sum of money's typical range, by what it is the price of."""
    if name & {"salary", "income"}:
        return NumberMeaning(32_000, 180_000, 500)
    if name & {"fee", "fees", "shipping", "charge"}:
        return NumberMeaning(2, 60, 0)
    if name & {"balance"}:
        return NumberMeaning(0, 25_000, 0)
    if name & {"rent", "nightly", "night"} or (context & RENTAL and not context & {"sale"}):
        monthly = name & {"monthly", "month"} or context & {"monthly", "lease", "apartment"}
        return NumberMeaning(700, 4200, 25) if monthly else NumberMeaning(45, 450, 0)
    if context & REAL_ESTATE:
        return NumberMeaning(95_000, 1_450_000, 1000)
    return NumberMeaning(4, 350, 0)


def _schema_key(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, default=str)


def number_meaning(name: str, schema: dict[str, Any], context: frozenset[str]) -> NumberMeaning:
    return _number_meaning(name, _schema_key(schema), context)


@functools.lru_cache(maxsize=4096)
def _number_meaning(name: str, schema_key: str, context: frozenset[str]) -> NumberMeaning:
    schema = json.loads(schema_key)
    own = words(name)
    described = words(str(schema.get("description", "")))
    meaning = next((m for keys, m in NUMBER_MEANINGS if own & keys), None)
    if meaning is None and own & MONEY:
        meaning = money_range(own, context | described)
    if meaning is None:
        meaning = next((m for keys, m in NUMBER_MEANINGS if described & keys), None)
    if meaning is None and described & MONEY:
        meaning = money_range(own | described, context)
    if meaning is None:
        meaning = DEFAULT_NUMBER
    if (own | described) & {"cents", "cent"}:
        meaning = NumberMeaning(meaning.low * 100, meaning.high * 100, max(meaning.step, 1) * 100)
    return _within_schema(meaning, schema)


@dataclass(frozen=True)
class Context:
    """What a world's tools say about its fields: their words, and ranges a model gave for
    numbers nothing else explains."""

    words: frozenset[str] = frozenset()
    ranges: tuple[tuple[str, float, float], ...] = ()

    def number(self, name: str, schema: dict[str, Any]) -> NumberMeaning:
        """The range to draw field `name` from."""
        for field, low, high in self.ranges:
            if field == name and low <= high:
                integer = schema.get("type") == "integer"
                return _within_schema(NumberMeaning(low, high, 1 if integer else 0), schema)
        return number_meaning(name, schema, self.words)


NO_CONTEXT = Context()
_asked: dict[str, tuple[tuple[str, float, float], ...]] = {}
"""Ranges a model gave, per schema (hash of the unclear fields and the tools' words)."""


async def ask_ranges(
    model: ChatModel,
    fields: dict[str, dict[str, Any]],
    context: frozenset[str],
    tools_text: str,
    sampling: Sampling,
    usage: Usage,
) -> tuple[tuple[str, float, float], ...]:
    """Typical ranges for numeric fields nothing else explains, asked of `model` once per schema.

    One request (counted in `usage["synthesizer"]`); an unusable answer leaves the fields to
    the default range rather than failing the task.
    """
    unclear = unclear_numbers(fields, context)
    if not unclear:
        return ()
    key = content_id("ranges", {"fields": unclear, "tools": tools_text})
    if key in _asked:
        return _asked[key]
    names = sorted(unclear)
    listing = "\n".join(
        f"- {n} ({unclear[n].get('type')}): {unclear[n].get('description', '')}" for n in names
    )
    messages = [
        Message(role="system", content="You describe data fields. For each numeric field, "
                "give the smallest and largest value a real record typically has."),
        Message(role="user", content=f"Tools:\n{tools_text}\nFields:\n{listing}"),
    ]
    seeded = sampling.model_copy(update={"seed": int(key[7:15], 16) & 0x7FFFFFFF})
    try:
        completion = await ask(model, "synthesizer", usage, messages, seeded,
                               schema=ranges_schema(names), attempts=1)
        answer = completion.parsed
        ranges = tuple(
            (n, float(answer[n]["min"]), float(answer[n]["max"])) for n in names
            if float(answer[n]["min"]) <= float(answer[n]["max"])
        )
    except ModelOutputError:
        ranges = ()
    _asked[key] = ranges
    return ranges


def unclear_numbers(
    fields: dict[str, dict[str, Any]], context: frozenset[str]
) -> dict[str, dict[str, Any]]:
    """The numeric fields whose meaning nothing here recognises and whose schema has no bounds:
    the ones a model is asked about."""
    unclear = {}
    for name, schema in fields.items():
        kind = schema.get("type")
        if kind not in ("integer", "number") or "enum" in schema or "const" in schema:
            continue
        if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum",
                                     "exclusiveMaximum")):
            continue
        if number_meaning(name, schema, context) == DEFAULT_NUMBER:
            unclear[name] = schema
    return unclear


def ranges_schema(names: list[str]) -> dict[str, Any]:
    """The answer `ask_ranges` wants: per field, its typical minimum and maximum."""
    pair = {
        "type": "object",
        "properties": {"min": {"type": "number"}, "max": {"type": "number"}},
        "required": ["min", "max"],
        "additionalProperties": False,
    }
    return {"type": "object", "properties": {n: pair for n in names}, "required": names,
            "additionalProperties": False}


def _within_schema(meaning: NumberMeaning, schema: dict[str, Any]) -> NumberMeaning:
    """The typical range cut to the schema's bounds; the schema's own when they do not meet."""
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    lo = meaning.low if low is None else max(meaning.low, float(low))
    hi = meaning.high if high is None else min(meaning.high, float(high))
    if lo > hi:
        lo = float(low) if low is not None else hi
        hi = float(high) if high is not None else lo
    return NumberMeaning(lo, hi, meaning.step)


def pick_number(meaning: NumberMeaning, integer: bool, rng: Any, schema: dict[str, Any]) -> Any:
    """A value in `meaning`'s range, rounded to its step, valid against `schema`'s bounds."""
    value = rng.uniform(meaning.low, meaning.high)
    if meaning.step:
        value = round(value / meaning.step) * meaning.step
    value = min(max(value, meaning.low), meaning.high)
    if integer:
        result: Any = round(value)
        if math.ceil(meaning.low) <= math.floor(meaning.high):
            result = min(max(result, math.ceil(meaning.low)), math.floor(meaning.high))
        if "exclusiveMinimum" in schema and result <= schema["exclusiveMinimum"]:
            result = int(schema["exclusiveMinimum"]) + 1
        if "exclusiveMaximum" in schema and result >= schema["exclusiveMaximum"]:
            result = int(schema["exclusiveMaximum"]) - 1
        return result
    result = round(value, 2)
    if "exclusiveMinimum" in schema and result <= schema["exclusiveMinimum"]:
        result = float(schema["exclusiveMinimum"]) + 0.01
    if "exclusiveMaximum" in schema and result >= schema["exclusiveMaximum"]:
        result = float(schema["exclusiveMaximum"]) - 0.01
    return result


# Strings: (words any of which the name holds, Faker method); first match wins.
STRING_MEANINGS: list[tuple[frozenset[str], str]] = [
    (frozenset({"email"}), "email"),
    (frozenset({"phone", "mobile", "tel", "telephone"}), "phone_number"),
    (frozenset({"username", "login", "handle"}), "user_name"),
    (frozenset({"firstname"}), "first_name"),
    (frozenset({"surname", "lastname"}), "last_name"),
    (frozenset({"name", "passenger", "customer", "owner", "author", "patient", "guest",
                "student", "instructor", "teacher", "doctor", "agent", "contact", "host",
                "recipient", "sender", "employee", "manager", "tenant", "landlord"}), "name"),
    (frozenset({"city", "town"}), "city"),
    (frozenset({"country"}), "country"),
    (frozenset({"address", "street"}), "address"),
    (frozenset({"zip", "postal", "postcode", "zipcode"}), "postcode"),
    (frozenset({"company", "merchant", "vendor", "employer", "brand", "airline", "carrier",
                "provider", "organization", "organisation"}), "company"),
    (frozenset({"job", "occupation", "profession"}), "job"),
    (frozenset({"url", "link", "website", "homepage"}), "url"),
    (frozenset({"currency"}), "currency_code"),
    (frozenset({"color", "colour"}), "color_name"),
    (frozenset({"language", "lang", "locale"}), "language_name"),
    (frozenset({"ip"}), "ipv4"),
    (frozenset({"filename", "file"}), "file_name"),
    (frozenset({"description", "note", "notes", "comment", "message", "body", "text",
                "summary", "bio", "details", "reason", "content"}), "sentence"),
    (frozenset({"title", "subject", "headline", "course", "product", "item", "event"}),
     "catch_phrase"),
]


@functools.lru_cache(maxsize=4096)
def string_method(name: str) -> str | None:
    """The Faker provider for a string field named `name`, or None when its name says nothing."""
    own = words(name)
    if "name" in own and own & {"first", "given"}:
        return "first_name"
    if "name" in own and own & {"last", "family"}:
        return "last_name"
    if "name" in own and own & {"company", "business", "hotel", "restaurant", "store", "shop"}:
        return "company"
    return next((method for keys, method in STRING_MEANINGS if own & keys), None)
