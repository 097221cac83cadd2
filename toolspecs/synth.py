"""Domain evolution: a growing taxonomy and new tools evolved from seed tools (as ToolACE, K2).

The taxonomy has three levels: categories (fixed, below) -> application domains (the seed
library's, plus new ones the model proposes per category) -> tools. A new tool starts from a
seed tool of a related domain and applies recorded operators: add a parameter, add a
constraint, change a type, refine the return schema, or compose two tools whose outputs feed
each other. The structural change is made here, deterministically from the slot's seed; the
model only writes what needs words (the tool's name and description, a new parameter, enum
values), under a JSON schema. Every result then goes through the loader's validation, the same
as an authored spec, so an invalid tool becomes a Failure, never a pool entry.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from schemas.records import Failure, Message, ToolSpec
from simulators.ask import Usage, ask
from simulators.llm.base import ChatModel, Sampling
from toolspecs.compose import feeds
from toolspecs.load import parse_entry

CATEGORIES: dict[str, tuple[str, ...]] = {
    "Productivity & Communication": ("calendar_email",),
    "Commerce & Retail": ("commerce", "food_delivery"),
    "Software & Operations": ("devops",),
    "Education & Learning": ("education",),
    "Finance & Property": ("finance", "real_estate"),
    "Health & Care": ("health",),
    "Home & Living": ("home",),
    "Media & Entertainment": ("media",),
    "Travel & Transport": ("travel",),
}
"""Top level of the taxonomy, with the seed library's domains under each."""

AUDIENCES = (
    "small businesses", "hospitals", "schools", "farms", "city governments", "non-profits",
    "freelancers", "logistics companies", "hotels", "sports clubs", "museums", "law firms",
    "research labs", "restaurants", "airlines", "retail chains", "construction firms",
    "households", "students", "veterinary clinics", "insurers", "energy utilities",
    "libraries", "film studios", "car dealers", "event organizers", "gyms", "banks",
    "universities", "shipping ports", "pharmacies", "charities",
)
"""Who a new domain serves: a different audience per slot keeps the model's domains apart."""

OPERATORS = ("add_parameter", "add_constraint", "change_type", "refine_returns", "compose")
SCALAR_TYPES = ["string", "integer", "number", "boolean"]
SNAKE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")


def slug(text: str, limit: int = 48) -> str:
    """snake_case of free text (a model's proposed name), or '' when nothing is left."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(text))
    words = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    words = re.sub(r"^[0-9_]+", "", words)
    return words[:limit].rstrip("_")


def category_of(domain: str) -> str:
    """The category a seed domain belongs to; an unknown one (say, an import's) is its own."""
    for category, domains in CATEGORIES.items():
        if domain in domains:
            return category
    return domain.replace("_", " ").title()


class Domain(BaseModel):
    """An application domain in the taxonomy, and the seed domain its tools evolve from."""

    model_config = ConfigDict(extra="forbid")

    name: str
    category: str
    description: str
    seed_domain: str
    slot: int = -1
    """-1 for a seed domain; the growth slot that proposed it otherwise."""


class SynthesisError(ValueError):
    """An evolved tool that cannot be built (say, a new parameter that already exists)."""


def seed_domains(seeds: Sequence[ToolSpec]) -> list[Domain]:
    names = sorted({s.domain for s in seeds})
    return [
        Domain(name=n, category=category_of(n), description=f"seed domain {n}", seed_domain=n)
        for n in names
    ]


DOMAIN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 40},
        "description": {"type": "string", "minLength": 1},
    },
    "required": ["name", "description"],
    "additionalProperties": False,
}


def domain_plan(slot: int, seed: int, seeds: Sequence[ToolSpec]) -> tuple[str, str, str]:
    """(category, seed domain, audience) for growth slot `slot`: categories in turn."""
    by_category: dict[str, list[str]] = {}
    for domain in sorted({s.domain for s in seeds}):
        by_category.setdefault(category_of(domain), []).append(domain)
    categories = sorted(by_category)
    rng = random.Random(f"{seed}:domain:{slot}")
    category = categories[slot % len(categories)]
    audience = AUDIENCES[(slot // len(categories) + rng.randrange(len(AUDIENCES)))
                         % len(AUDIENCES)]
    return category, rng.choice(by_category[category]), audience


async def grow_domain(
    model: ChatModel,
    slot: int,
    seed: int,
    seeds: Sequence[ToolSpec],
    sampling: Sampling,
    usage: Usage,
    attempts: int = 3,
) -> Domain:
    """A new application domain under a category, proposed by the model for one audience."""
    category, seed_domain, audience = domain_plan(slot, seed, seeds)
    known = ", ".join(sorted({s.domain for s in seeds if category_of(s.domain) == category}))
    messages = [
        Message(role="system", content="You design software products. Answer with JSON: a "
                "short snake_case name for an application domain and one sentence on what "
                "software in it does."),
        Message(role="user", content=f"Category: {category}\nDomains it has: {known}\n"
                f"Propose a different domain in this category, for {audience}."),
    ]
    completion = await ask(model, "synthesizer", usage, messages, sampling,
                           schema=DOMAIN_SCHEMA, attempts=attempts)
    answer = completion.parsed
    name = slug(answer["name"], 40) or slug(f"{seed_domain}_for_{audience}", 40)
    return Domain(name=name, category=category, description=" ".join(
        str(answer["description"]).split()), seed_domain=seed_domain, slot=slot)


# -- evolving one tool ------------------------------------------------------------------------


@dataclass
class Plan:
    """What slot `slot` will make: which seed(s), which operators, in which domain."""

    slot: int
    domain: Domain
    seeds: list[ToolSpec]
    operators: list[str]
    rng: random.Random = field(repr=False)


def plan_tool(
    slot: int,
    seed: int,
    domains: Sequence[Domain],
    seeds_by_domain: dict[str, list[ToolSpec]],
    chains: dict[str, list[tuple[ToolSpec, ToolSpec]]],
) -> Plan:
    """The deterministic part of slot `slot`: domain (in turn), seed tools and operators."""
    rng = random.Random(f"{seed}:tool:{slot}")
    domain = domains[slot % len(domains)]
    pool = seeds_by_domain.get(domain.seed_domain) or [
        s for tools in seeds_by_domain.values() for s in tools
    ]
    pairs = chains.get(domain.seed_domain, [])
    if pairs and rng.random() < 0.2:
        first, then = pairs[rng.randrange(len(pairs))]
        return Plan(slot, domain, [first, then], ["compose"], rng)
    simple = [op for op in OPERATORS if op != "compose"]
    operators = rng.sample(simple, rng.choice((1, 1, 2)))
    return Plan(slot, domain, [rng.choice(pool)], sorted(operators, key=simple.index), rng)


def chains_by_domain(seeds: Sequence[ToolSpec]) -> dict[str, list[tuple[ToolSpec, ToolSpec]]]:
    """Seed pairs (a, b) of one domain where a field `a` returns is an argument of `b`."""
    by_domain: dict[str, list[ToolSpec]] = {}
    for spec in sorted(seeds, key=lambda s: s.id):
        by_domain.setdefault(spec.domain, []).append(spec)
    return {
        domain: [(a, b) for a in tools for b in tools if feeds(a, b)]
        for domain, tools in by_domain.items()
    }


def _field_schema(kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 40},
            "type": {"enum": SCALAR_TYPES},
            "description": {"type": "string", "minLength": 1},
        },
        "required": ["name", "type", "description"],
        "additionalProperties": False,
        "description": kind,
    }


def answer_schema(plan: Plan) -> dict[str, Any]:
    """What the model fills in for `plan`: the operators' words first, then name and purpose."""
    properties: dict[str, Any] = {}
    if "add_parameter" in plan.operators:
        properties["new_parameter"] = _field_schema("a new argument")
    if "change_type" in plan.operators:
        properties["choices"] = {
            "type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 30},
            "minItems": 2, "maxItems": 6,
        }
    if "refine_returns" in plan.operators:
        properties["new_result_field"] = _field_schema("a new field of the result")
    properties["name"] = {"type": "string", "minLength": 3, "maxLength": 48}
    properties["description"] = {"type": "string", "minLength": 1}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _params(spec: ToolSpec) -> dict[str, Any]:
    schema = copy.deepcopy(spec.parameters)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return schema


def _add_parameter(schema: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    new = answer["new_parameter"]
    name = slug(new["name"], 40)
    if not SNAKE.match(name):
        raise SynthesisError(f"add_parameter: {new['name']!r} gives no usable argument name")
    if name in schema["properties"]:
        raise SynthesisError(f"add_parameter: {name!r} is already an argument")
    schema["properties"][name] = {"type": new["type"],
                                  "description": " ".join(str(new["description"]).split())}
    return {"op": "add_parameter", "parameter": name, "type": new["type"], "required": False}


def _pick_parameter(schema: dict[str, Any], rng: random.Random, plain: bool) -> str | None:
    names = [n for n, s in schema["properties"].items() if isinstance(s, dict)
             and (not plain or isinstance(s.get("type"), str))]
    return rng.choice(sorted(names)) if names else None


def _add_constraint(schema: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    name = _pick_parameter(schema, rng, plain=False)
    if name is None:
        schema["additionalProperties"] = False
        return {"op": "add_constraint", "constraint": {"additionalProperties": False}}
    sub = schema["properties"][name]
    kind = sub.get("type")
    added: dict[str, Any] = {}
    if kind == "string" and "enum" not in sub and "maxLength" not in sub:
        added["maxLength"] = rng.choice([32, 64, 128, 256])
    elif kind in ("integer", "number") and "maximum" not in sub:
        low = sub.get("minimum", rng.choice([0, 1]))
        added = {"minimum": low, "maximum": low + rng.choice([10, 50, 100, 1000])}
    elif kind == "array" and "maxItems" not in sub:
        added = {"minItems": 1, "maxItems": rng.choice([5, 10, 20])}
    if added:
        sub.update(added)
        return {"op": "add_constraint", "parameter": name, "constraint": added}
    required = schema.setdefault("required", [])
    if name not in required:
        required.append(name)
        return {"op": "add_constraint", "parameter": name, "constraint": {"required": True}}
    schema["additionalProperties"] = False
    return {"op": "add_constraint", "constraint": {"additionalProperties": False}}


def _change_type(
    schema: dict[str, Any], rng: random.Random, answer: dict[str, Any]
) -> dict[str, Any]:
    name = _pick_parameter(schema, rng, plain=True)
    if name is None:
        raise SynthesisError("change_type: the seed has no typed argument to change")
    sub = schema["properties"][name]
    before = sub.get("type")
    choices = list(dict.fromkeys(" ".join(str(c).split()) for c in answer["choices"]))
    if before == "integer":
        sub["type"] = "number"
    elif before == "number":
        sub["type"] = "integer"
    elif before in ("string", "boolean") and "enum" not in sub and len(choices) >= 2:
        description = sub.get("description", name.replace("_", " "))
        schema["properties"][name] = {"type": "string", "enum": choices,
                                      "description": description}
        return {"op": "change_type", "parameter": name, "from": before, "to": "enum",
                "values": choices}
    elif before != "array":
        schema["properties"][name] = {"type": "array", "items": sub, "minItems": 1}
        return {"op": "change_type", "parameter": name, "from": before, "to": f"array of {before}"}
    else:
        items = sub.get("items") if isinstance(sub.get("items"), dict) else {}
        schema["properties"][name] = items or {"type": "string"}
        return {"op": "change_type", "parameter": name, "from": "array",
                "to": schema["properties"][name].get("type", "untyped")}
    for key in ("minimum", "maximum"):
        if key in sub and sub["type"] == "integer":
            sub[key] = int(sub[key])
    return {"op": "change_type", "parameter": name, "from": before, "to": sub["type"]}


def _refine_returns(returns: dict[str, Any] | None, answer: dict[str, Any]) -> tuple[
    dict[str, Any], dict[str, Any]
]:
    new = answer["new_result_field"]
    name = slug(new["name"], 40)
    if not SNAKE.match(name):
        raise SynthesisError(f"refine_returns: {new['name']!r} gives no usable field name")
    schema = copy.deepcopy(returns) if isinstance(returns, dict) else {"type": "object"}
    if schema.get("type", "object") != "object":
        schema = {"type": "object", "properties": {"result": schema}, "required": ["result"]}
    properties = schema.setdefault("properties", {})
    if name in properties:
        raise SynthesisError(f"refine_returns: {name!r} is already a result field")
    properties[name] = {"type": new["type"],
                        "description": " ".join(str(new["description"]).split())}
    required = schema.setdefault("required", [])
    added_required = [n for n in properties if n not in required]
    required.extend(added_required)
    return schema, {"op": "refine_returns", "field": name, "type": new["type"],
                    "now_required": added_required}


def _compose(first: ToolSpec, then: ToolSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    """One tool doing `first` then `then`, `then`'s fed arguments taken from `first`'s result."""
    from toolspecs.compose import _fields

    fed = sorted(_fields(first.returns) & set(then.parameters.get("properties", {})))
    schema = _params(first)
    for name, sub in then.parameters.get("properties", {}).items():
        if name not in fed and name not in schema["properties"]:
            schema["properties"][name] = copy.deepcopy(sub)
    required = list(first.parameters.get("required", []))
    required += [n for n in then.parameters.get("required", [])
                 if n not in fed and n not in required]
    if required:
        schema["required"] = required
    return schema, {"op": "compose", "first": first.name, "then": then.name, "fed": fed}


def tool_messages(plan: Plan, schema_changes: list[str]) -> list[Message]:
    seed = plan.seeds[0]
    if plan.operators == ["compose"]:
        start = (f"Combine these two tools into one that does both in order:\n"
                 f"- {plan.seeds[0].name}: {plan.seeds[0].description}\n"
                 f"- {plan.seeds[1].name}: {plan.seeds[1].description}")
    else:
        params = ", ".join(seed.parameters.get("properties", {})) or "none"
        start = (f"Start from this tool:\n- {seed.name}: {seed.description}\n"
                 f"  arguments: {params}")
    changes = "\n".join(f"- {c}" for c in schema_changes)
    return [
        Message(role="system", content="You design tools (functions) that AI assistants "
                "call. Answer with JSON: what the changes need, then a snake_case function "
                "name and a one-sentence description of the new tool."),
        Message(role="user", content=f"Domain: {plan.domain.name} ({plan.domain.category}): "
                f"{plan.domain.description}\n{start}\nMake a new tool for this domain with "
                f"these changes:\n{changes}"),
    ]


def _change_notes(plan: Plan) -> list[str]:
    notes = {
        "add_parameter": "add one optional argument that fits the domain (new_parameter)",
        "add_constraint": "tighten one argument's allowed values",
        "change_type": "turn one argument into a choice between listed values (choices), "
                       "or change its type",
        "refine_returns": "add one field to the result (new_result_field)",
        "compose": "one call runs the first tool, then the second with its output",
    }
    return [notes[op] for op in plan.operators]


async def evolve_tool(
    model: ChatModel,
    plan: Plan,
    sampling: Sampling,
    usage: Usage,
    attempts: int = 3,
    seed: int = 0,
) -> tuple[ToolSpec | Failure, dict[str, Any]]:
    """The tool slot `plan.slot` makes, validated like an authored spec, and its lineage."""
    completion = await ask(model, "synthesizer", usage, tool_messages(plan, _change_notes(plan)),
                           sampling, schema=answer_schema(plan), attempts=attempts)
    answer = completion.parsed
    first = plan.seeds[0]
    steps: list[dict[str, Any]] = []
    returns = copy.deepcopy(first.returns)
    side_effect = first.side_effect
    if plan.operators == ["compose"]:
        parameters, step = _compose(first, plan.seeds[1])
        returns = copy.deepcopy(plan.seeds[1].returns)
        side_effect = "write" if "write" in {s.side_effect for s in plan.seeds} else "read"
        steps.append(step)
    else:
        parameters = _params(first)
        for op in plan.operators:
            if op == "add_parameter":
                steps.append(_add_parameter(parameters, answer))
            elif op == "add_constraint":
                steps.append(_add_constraint(parameters, plan.rng))
            elif op == "change_type":
                steps.append(_change_type(parameters, plan.rng, answer))
            elif op == "refine_returns":
                returns, step = _refine_returns(returns, answer)
                steps.append(step)
    name = slug(answer["name"], 64)
    data: dict[str, Any] = {
        "name": name or f"{plan.domain.name}_{first.name}"[:64],
        "description": " ".join(str(answer["description"]).split()),
        "parameters": parameters,
        "domain": plan.domain.name,
        "source": "synthetic",
        "side_effect": side_effect,
    }
    if returns is not None:
        data["returns"] = returns
    result = parse_entry(data, file="synthetic", where=f"/slot/{plan.slot}",
                         default_domain=plan.domain.name)
    if isinstance(result, Failure):
        result = result.model_validate({**result.model_dump(exclude={"id"}),
                                        "stage": "synthesize", "raw_output": completion.text})
    lineage = {
        "slot": plan.slot,
        "tool_id": result.id if isinstance(result, ToolSpec) else None,
        "name": data["name"],
        "domain": plan.domain.name,
        "category": plan.domain.category,
        "seeds": [{"id": s.id, "name": s.name, "domain": s.domain} for s in plan.seeds],
        "operators": steps,
        "seed": seed,
    }
    return result, lineage
