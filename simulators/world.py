"""The world an agent's tools act on: collections of records, changed by writes, seen by reads.

A world is plain JSON. Records live in collections keyed by id, named after the id field that
points at them (`order_id` -> `orders`): `{"orders": {"O-1": {"order_id": "O-1", ...}}}`; any
other top-level key is a free fact. Paths address values: `orders/O-1/status`, or `account`.

A language model answers most tool calls, so the world cannot trust it to remember: after every
call the world reconciles the answer deterministically. A write's answer is the new truth for the
records it names (and a new id it returns creates a record); a read's answer is overwritten with
what the world holds for the records it names. So a read after a write in the same episode
returns what was written, whatever the model says. `build_world` makes the initial world from
the tools' own schemas with Faker, so the records are the ones the tools read and change.
"""

from __future__ import annotations

import copy
import json
import random
import re
import threading
from collections.abc import Iterable
from typing import Any

from faker import Faker

from schemas.records import STATE_CHANGES, JsonObject, ToolSpec
from simulators import constraints, values
from simulators.ask import schema_errors

RECORDS_PER_COLLECTION = 3
MAX_DEPTH = 4


def plural(stem: str) -> str:
    """`order` -> `orders`, `category` -> `categories`, `address` -> `addresses`."""
    if stem.endswith("y") and stem[-2:-1] not in ("a", "e", "i", "o", "u"):
        return stem[:-1] + "ies"
    if stem.endswith(("s", "x", "ch", "sh")):
        return stem + "es"
    return stem + "s"


ROLE_PREFIXES = ("from_", "to_", "source_", "target_", "parent_", "new_", "old_", "destination_")


def collection_of(field: str) -> str | None:
    """The collection an id field points into (`order_id` -> `orders`, `from_account_id` ->
    `accounts`), or None."""
    if field.endswith("_id") and len(field) > 3:
        stem = field[:-3]
        for prefix in ROLE_PREFIXES:
            if stem.startswith(prefix) and len(stem) > len(prefix):
                stem = stem[len(prefix):]
                break
        return plural(stem)
    return None


def _own_id(field: str) -> bool:
    """`order_id` can be a record's own id; `from_account_id` only points at one."""
    return not field.startswith(ROLE_PREFIXES)


def id_field_of(collection: str, state: JsonObject) -> str | None:
    """The id field of `collection`'s records (the one whose collection is `collection`)."""
    records = state.get(collection)
    if isinstance(records, dict):
        for record in records.values():
            if isinstance(record, dict):
                for key in record:
                    if collection_of(key) == collection:
                        return key
    return None


def split_path(path: str) -> list[str]:
    return [part for part in path.strip("/").split("/") if part]


NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


def _coerce(text: str) -> Any:
    """A state change's value: JSON when it is an object, list, number or boolean; else text.

    Numbers with a leading zero (`"02134"`) stay text: they are codes, not amounts.
    """
    stripped = text.strip()
    if stripped[:1] in ("{", "[") or stripped in ("true", "false", "null"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return text
    if NUMBER.fullmatch(stripped):
        return float(stripped) if "." in stripped else int(stripped)
    return text


def get_path(state: JsonObject, path: str) -> Any:
    """The value at `path`, or KeyError."""
    node: Any = state
    for part in split_path(path):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def set_path(state: JsonObject, path: str, value: Any) -> None:
    """Set `path` to `value`, creating the objects on the way."""
    parts = split_path(path)
    if not parts:
        raise KeyError(path)
    node = state
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def apply_changes(state: JsonObject, changes: Iterable[dict[str, Any]]) -> list[str]:
    """Apply `{key, value}` changes (see `schemas.records.STATE_CHANGES`); the paths set.

    A change sets values; one that would replace a whole record or collection with a scalar
    (`{"key": "orders", "value": "updated"}`) is a model's slip and is skipped.
    """
    paths = []
    for change in changes:
        path = str(change["key"])
        raw = change["value"]
        value = _coerce(raw) if isinstance(raw, str) else raw
        try:
            current = get_path(state, path)
        except KeyError:
            current = None
        if isinstance(current, dict) and current and not isinstance(value, dict):
            continue
        if not split_path(path):
            continue
        set_path(state, path, value)
        paths.append(path)
    return paths


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every scalar (and empty container) in `value` by path, for comparing two worlds."""
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(leaves(child, f"{prefix}/{key}" if prefix else str(key)))
        return out
    return {prefix: value}


class World:
    """One episode's world state and the rules that keep tool answers consistent with it."""

    def __init__(self, initial_state: JsonObject) -> None:
        self.state: JsonObject = copy.deepcopy(initial_state)

    def size(self) -> int:
        """How many records the world holds (a create adds one)."""
        return sum(len(v) for v in self.state.values() if isinstance(v, dict))

    def record(self, id_field: str, record_id: Any) -> dict[str, Any] | None:
        collection = collection_of(id_field)
        records = self.state.get(collection) if collection else None
        if isinstance(records, dict) and isinstance(record_id, str):
            found = records.get(record_id)
            return found if isinstance(found, dict) else None
        return None

    def _named_records(self, arguments: JsonObject) -> list[dict[str, Any]]:
        return [
            found
            for key, value in arguments.items()
            if (found := self.record(key, value)) is not None
        ]

    def _primary(self, node: dict[str, Any]) -> tuple[str, str, dict[str, Any] | None] | None:
        """The record `node` is about: its id field, id, and the world's record if known.

        An order carries its own id and its user's; the record sharing most fields wins.
        """
        candidates = [
            (key, value) for key, value in node.items()
            if collection_of(key) and isinstance(value, str) and value
        ]
        known = [
            (key, value, record) for key, value in candidates
            if (record := self.record(key, value)) is not None
        ]
        if known:
            return max(known, key=lambda item: len(set(item[2]) & set(node)))
        return (candidates[0][0], candidates[0][1], None) if candidates else None

    def after_write(self, arguments: JsonObject, result: Any, returns: JsonObject | None) -> Any:
        """Apply a write to the world; returns its answer, made to be about what was asked.

        Arguments that name an existing record's fields update it (`set_status(order_id,
        status)`), so a write changes the world even when the model reports no change. The
        answer is the truth for the records the call names: their fields take its values, and
        an answer about another record of the same kind is corrected to the one asked for (a
        model must not cancel order A when asked to cancel order B). A new id at the top of the
        answer creates that record (a booking the write made). Records the call does not name
        never change through an answer.
        """
        named = self._named_records(arguments)
        for record in named:
            for key, value in arguments.items():
                if key in record and collection_of(key) is None and _scalar(value):
                    record[key] = value
        fixed = copy.deepcopy(result)
        if isinstance(fixed, dict):
            primary = self._primary(fixed)
            if primary is None and len(named) == 1:
                named[0].update({k: v for k, v in fixed.items() if k in named[0] and _scalar(v)})
            elif primary is not None:
                key, record_id, record = primary
                asked = arguments.get(key)
                if isinstance(asked, str) and asked != record_id:
                    fixed[key] = asked
                    if returns is not None and schema_errors(returns, fixed):
                        fixed[key] = record_id
                    else:
                        record_id, record = asked, self.record(key, asked)
                if record is None and key not in arguments:
                    records = self.state.setdefault(collection_of(key) or key, {})
                    if isinstance(records, dict):
                        base = {k: v for k, v in arguments.items() if _scalar(v)}
                        scalars = {k: v for k, v in fixed.items() if _scalar(v)}
                        records[record_id] = {**base, **scalars}
        self._absorb(fixed, named, depth=0)
        return fixed

    def _absorb(self, value: Any, named: list[dict[str, Any]], depth: int) -> None:
        """Copy the answer's values into the named records it mentions, at any depth."""
        if depth > MAX_DEPTH:
            return
        if isinstance(value, list):
            for item in value:
                self._absorb(item, named, depth + 1)
            return
        if not isinstance(value, dict):
            return
        primary = self._primary(value)
        if primary is not None and any(primary[2] is record for record in named):
            record = primary[2]
            assert record is not None
            record.update({k: v for k, v in value.items() if k in record and _scalar(v)})
        for child in value.values():
            if isinstance(child, (dict, list)):
                self._absorb(child, named, depth + 1)

    def reconcile_read(
        self,
        arguments: JsonObject,
        result: Any,
        returns: JsonObject | None,
        parameters: JsonObject | None = None,
    ) -> Any:
        """The read's answer with every field of a known record replaced by the world's value,
        and without the records that contradict the call's own filters.

        Only fields the answer already has are replaced, and only while the answer stays valid
        against the tool's `returns` schema, so reconciling never breaks the tool's contract.
        Then records that break what the arguments promise (`max_price_usd=100`, `city`,
        `limit`; see `simulators.constraints`) are dropped, again only while the answer stays
        valid: a world record copied in by id must still fit the search that found it.
        """
        named = self._named_records(arguments)
        fixed = copy.deepcopy(result)
        if isinstance(fixed, dict) and len(named) == 1 and self._primary(fixed) is None:
            _overlay(fixed, named[0], returns)
        self._overlay_known(fixed, returns, fixed, depth=0)
        if constraints.contradictions(arguments, parameters, fixed):
            kept = constraints.obeying(arguments, parameters, copy.deepcopy(fixed))
            if returns is None or not schema_errors(returns, kept):
                fixed = kept
        return fixed

    def _overlay_known(self, node: Any, returns: JsonObject | None, root: Any, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        if isinstance(node, list):
            for item in node:
                self._overlay_known(item, returns, root, depth + 1)
            return
        if not isinstance(node, dict):
            return
        primary = self._primary(node)
        if primary is not None and primary[2] is not None:
            _overlay(node, primary[2], returns, root)
        for child in node.values():
            if isinstance(child, (dict, list)):
                self._overlay_known(child, returns, root, depth + 1)


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _overlay(
    node: dict[str, Any], record: dict[str, Any], returns: JsonObject | None, root: Any = None
) -> None:
    root = node if root is None else root
    for key in list(node):
        if key not in record or node[key] == record[key] or not _scalar(record[key]):
            continue
        before = node[key]
        node[key] = record[key]
        if returns is not None and schema_errors(returns, root):
            node[key] = before


# Building the initial world -----------------------------------------------------------------


def record_schemas(tools: Iterable[ToolSpec]) -> dict[str, dict[str, Any]]:
    """Per collection, the fields its records have and their schemas, read off the tools.

    A record's fields are those of any object in a tool's answer that carries the collection's
    id field, plus the top level of a read's answer when the read takes that id (`get_booking(
    booking_id) -> {status}`). Arguments that name a collection at least create it.
    """
    collections: dict[str, dict[str, Any]] = {}

    def note(collection: str, fields: dict[str, Any]) -> None:
        target = collections.setdefault(collection, {})
        for name, schema in fields.items():
            if isinstance(schema, dict):
                target.setdefault(name, schema)

    def walk(schema: Any, depth: int) -> None:
        if not isinstance(schema, dict) or depth > MAX_DEPTH:
            return
        properties = schema.get("properties")
        if isinstance(properties, dict):
            ids = [name for name in properties if collection_of(name)]
            own = [name for name in ids if _own_id(name)]
            if own:  # the first plain id is the object's own; others point at other records
                note(collection_of(own[0]) or "", properties)
            for name in ids:
                note(collection_of(name) or "", {name: properties[name]})
            for sub in properties.values():
                walk(sub, depth + 1)
        walk(schema.get("items"), depth + 1)

    for tool in tools:
        arguments = tool.parameters.get("properties", {})
        for name, schema in arguments.items():
            if (collection := collection_of(name)) is not None:
                note(collection, {name: schema})
        walk(tool.returns, 0)
        returns = tool.returns or {}
        top = returns.get("properties") if isinstance(returns, dict) else None
        if tool.side_effect == "read" and isinstance(top, dict):
            ids = [n for n in arguments if collection_of(n)]
            if len(ids) == 1 and not any(collection_of(n) for n in top):
                flat = {n: s for n, s in top.items() if isinstance(s, dict) and _flat_schema(s)}
                note(collection_of(ids[0]) or "", flat)
    return collections


def _flat_schema(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind not in ("object", "array") and "properties" not in schema


_fakers = threading.local()


def _faker(locale: str) -> Faker:
    """One Faker per locale and thread, reseeded for every world: building one costs ~3 ms,
    half of what a world took (a profile of the whole mill put it at ~4 % of the CPU)."""
    kept: dict[str, Faker] | None = getattr(_fakers, "by_locale", None)
    if kept is None:
        kept = _fakers.by_locale = {}
    fake = kept.get(locale)
    if fake is None:
        fake = kept[locale] = Faker(locale)
    return fake


def build_world(tools: Iterable[ToolSpec], key: str, per_collection: int = RECORDS_PER_COLLECTION,
                locale: str = "en_US",
                ranges: tuple[tuple[str, float, float], ...] = ()) -> JsonObject:
    """An initial world for `tools`, determined by `key`: Faker records for every collection.

    Every field value is valid against the schema the tools declare for it, and id fields that
    point into another collection hold one of that collection's ids.
    """
    tools = list(tools)
    context = values.Context(tool_words(tools), ranges)
    fake = _faker(locale)
    seed = random.Random(key).getrandbits(32)
    fake.seed_instance(seed)
    rng = random.Random(seed)
    schemas = record_schemas(tools)
    world: JsonObject = {}
    prefixes: set[str] = set()
    for collection in sorted(schemas):
        fields = schemas[collection]
        id_field = next(
            (n for n in fields if collection_of(n) == collection and _own_id(n)),
            next((n for n in fields if collection_of(n) == collection), f"{collection}_id"),
        )
        fields = {
            n: f for n, f in fields.items()
            if n == id_field or collection_of(n) != collection
        }
        stem = id_field[:-3].replace("_", "").upper() or "ID"
        prefix = next(
            (p for p in (stem[:3], stem[0] + stem[-2:], stem[:4], stem) if p not in prefixes),
            stem,
        )
        prefixes.add(prefix)
        records: dict[str, Any] = {}
        for _ in range(per_collection):
            record_id = f"{prefix}-{rng.randint(1000, 9999)}"
            record = {
                name: fake_value(name, schema, fake, rng, context=context)
                for name, schema in sorted(fields.items())
                if name != id_field
            }
            records[record_id] = {id_field: record_id, **record}
        world[collection] = records
    for collection, records in world.items():
        for record in records.values():
            for name in record:
                target = collection_of(name)
                if target and target != collection and world.get(target):
                    record[name] = rng.choice(sorted(world[target]))
    return world




def tool_words(tools: Iterable[ToolSpec]) -> frozenset[str]:
    """The words of the tools' names and descriptions: what the world's values are about."""
    return values.words(" ".join(f"{t.name} {t.description}" for t in tools))


def fake_value(
    name: str, schema: Any, fake: Faker, rng: random.Random, depth: int = 0,
    context: values.Context = values.NO_CONTEXT,
) -> Any:
    """A believable value for field `name` that is valid against `schema`: its meaning (name,
    description, and the tools' words in `context`) picks the range or the Faker provider
    (`simulators.values`)."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return fake_value(name, schema[key][0], fake, rng, depth + 1, context)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    kind = kind or ("object" if "properties" in schema else "string")
    lowered = name.lower()
    if kind == "string":
        return _fake_string(lowered, schema, fake, rng)
    if kind in ("integer", "number"):
        meaning = context.number(name, schema)
        return values.pick_number(meaning, kind == "integer", rng, schema)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "array":
        count = max(int(schema.get("minItems", 0)), min(2, int(schema.get("maxItems", 2))))
        return [fake_value(name, schema.get("items", {}), fake, rng, depth + 1, context)
                for _ in range(count)]
    if kind == "object":
        required = set(schema.get("required", []))
        return {
            sub: fake_value(sub, sub_schema, fake, rng, depth + 1, context)
            for sub, sub_schema in schema.get("properties", {}).items()
            if sub in required or rng.random() < 0.7
        }
    return None


def _fake_string(name: str, schema: dict[str, Any], fake: Faker, rng: random.Random) -> str:
    fmt = schema.get("format")
    if fmt == "date" or name.endswith("date") or name in ("date", "day"):
        text = fake.date_between(start_date="-1y", end_date="+1y").isoformat()
    elif fmt == "date-time" or name.endswith(("_at", "time")):
        text = fake.date_time_between(start_date="-1y", end_date="+1y").isoformat(
            timespec="minutes"
        )
    elif fmt == "email":
        text = fake.email()
    elif name.endswith("_id") or name == "id":
        text = f"{(name[:-3] or 'id')[:3].upper()}-{rng.randint(1000, 9999)}"
    elif name in ("status", "state"):
        text = rng.choice(["active", "pending", "completed"])
    elif any(w in name for w in ("delivery", "deadline", "due", "eta")):
        text = fake.date_between(start_date="today", end_date="+30d").isoformat()
    elif any(w in name for w in ("number", "code", "tracking", "reference", "sku")):
        text = fake.bothify("??-#######").upper()
    elif "birth" in name or name in ("dob", "birthday"):
        text = fake.date_of_birth(minimum_age=18, maximum_age=85).isoformat()
    else:
        text = str(getattr(fake, values.string_method(name) or "word")())
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    text = text.ljust(low, "x")
    return text[: int(high)] if high is not None else text


def describe_world(world: JsonObject, limit: int = 900) -> str:
    """A compact listing for a model's prompt: collections with their first records."""
    lines = []
    for collection, records in world.items():
        if isinstance(records, dict) and all(isinstance(r, dict) for r in records.values()):
            for record in list(records.values())[:2]:
                lines.append(f"{collection}: {json.dumps(record, ensure_ascii=False)}")
        else:
            lines.append(f"{collection}: {json.dumps(records, ensure_ascii=False)}")
    text = "\n".join(lines)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def world_paths(world: JsonObject, limit: int = 60) -> list[str]:
    """Paths of record fields a write could change (`orders/O-1/status`), for task outcomes."""
    paths = []
    for collection, records in world.items():
        if not isinstance(records, dict):
            continue
        for record_id, record in records.items():
            if not isinstance(record, dict):
                continue
            for field, value in record.items():
                if collection_of(field) != collection and _scalar(value):
                    paths.append(f"{collection}/{record_id}/{field}")
    return paths[:limit]


def outcome_schema(world: JsonObject, has_writes: bool) -> dict[str, Any]:
    """The schema of a task's expected outcome, as the task writer answers it.

    Expected changes use the shared `{key, value}` form with `key` limited to the world's own
    paths, so an outcome can only name values that exist; an agent without write tools can
    change nothing, so its tasks expect no change.
    """
    paths = world_paths(world) if has_writes else []
    items = STATE_CHANGES["items"]
    key = {"enum": paths} if paths else {"type": "string"}
    return {
        "expected_state": {
            **STATE_CHANGES,
            "items": {**items, "properties": {**items["properties"], "key": key}},
            "maxItems": 3 if paths else 0,
        },
        "expected_facts": {
            "type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 2
        },
    }


def changes_to_paths(changes: Iterable[dict[str, Any]]) -> JsonObject:
    """`{key, value}` changes as a path -> value mapping (values coerced as the world does)."""
    return {
        str(c["key"]): _coerce(c["value"]) if isinstance(c["value"], str) else c["value"]
        for c in changes
    }
