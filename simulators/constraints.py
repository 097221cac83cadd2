"""What a read call's own arguments promise about its answer: filters, ranges, enums, limits.

`search_listings(max_price_usd=100, city="Paris", limit=5)` promises at most five listings, each
in Paris and at most $100. A model simulating the tool (or the world copying records into its
answer by id) can break that promise; data that shows it teaches an agent that filters do not
work. One reading of the promise serves two places: the world drops records that break it while
reconciling a read (`simulators.world`), and a deterministic check flags any answer that still
does (`filters.checks.answers_obey_calls`).

The promise is read off argument names, the way APIs name their filters:

- `max_X`, `X_max`, `X_to`, `X_lte`, `X_below`, `X_under`, `X_before`, `X_until` bound field X
  from above; `min_X`, `X_min`, `X_from`, `X_gte`, `X_above`, `X_over`, `X_after`, `X_since`
  from below (numbers, or ISO dates compared as text).
- An argument named exactly like a field of the answer's records, that is an enum, a boolean,
  or an id, must equal it; a free-text one must be contained in it (case-insensitive):
  `city="Paris"` keeps "Paris, France".
- `limit`, `max_results`, `page_size`, `per_page`, `top_k`, `top_n`, `num_results` bound the
  length of the answer's record lists.

For bounds, field X matches a record field when their word sets nest (`price_usd` ~ `price`);
a record without a matching field is not judged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

LIMIT_NAMES = frozenset(
    {"limit", "max_results", "page_size", "per_page", "top_k", "top_n", "num_results",
     "max_items", "results_per_page"}
)
UPPER_PREFIXES = ("max_", "maximum_")
LOWER_PREFIXES = ("min_", "minimum_")
UPPER_SUFFIXES = ("_max", "_maximum", "_to", "_lte", "_lt", "_below", "_under", "_before",
                  "_until")
LOWER_SUFFIXES = ("_min", "_minimum", "_from", "_gte", "_gt", "_above", "_over", "_after",
                  "_since")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
MAX_DEPTH = 4


@dataclass(frozen=True)
class Constraint:
    """One promise: `kind` is `max`, `min`, `equals`, `contains` or `limit`."""

    argument: str
    kind: str
    stem: str
    value: Any

    def describe(self) -> str:
        return f"{self.argument}={self.value!r}"


def _words(name: str) -> frozenset[str]:
    return frozenset(word for word in name.lower().split("_") if word)


def field_matches(stem: str, field: str) -> bool:
    """`price_usd` ~ `price`, `price` ~ `price_per_night`: one name's words hold the other's."""
    a, b = _words(stem), _words(field)
    return bool(a and b) and (a <= b or b <= a)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def constraints(arguments: dict[str, Any], parameters: dict[str, Any] | None) -> list[Constraint]:
    """The promises `arguments` make, read off their names (see the module doc)."""
    properties = (parameters or {}).get("properties") or {}
    found: list[Constraint] = []
    for name, value in arguments.items():
        lowered = name.lower()
        schema = properties.get(name) if isinstance(properties.get(name), dict) else {}
        if lowered in LIMIT_NAMES:
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                found.append(Constraint(name, "limit", "", value))
            continue
        bound = _bound(lowered)
        if bound is not None:
            kind, stem = bound
            if _number(value) is not None or (isinstance(value, str) and ISO_DATE.match(value)):
                found.append(Constraint(name, kind, stem, value))
            continue
        if isinstance(value, bool) or schema.get("enum") or lowered.endswith("_id"):
            found.append(Constraint(name, "equals", lowered, value))
        elif isinstance(value, str) and value.strip():
            found.append(Constraint(name, "contains", lowered, value))
    return found


def _bound(name: str) -> tuple[str, str] | None:
    for prefixes, suffixes, kind in (
        (UPPER_PREFIXES, UPPER_SUFFIXES, "max"), (LOWER_PREFIXES, LOWER_SUFFIXES, "min")
    ):
        for prefix in prefixes:
            if name.startswith(prefix) and len(name) > len(prefix):
                return kind, name[len(prefix):]
        for suffix in suffixes:
            if name.endswith(suffix) and len(name) > len(suffix):
                return kind, name[: -len(suffix)]
    return None


def broken(record: dict[str, Any], constraint: Constraint) -> str | None:
    """How `record` breaks `constraint` (`price=446.69 > max_price_usd=100`), or None."""
    if constraint.kind == "limit":
        return None
    if constraint.kind in ("equals", "contains"):
        # Only a same-named field: `user_id` says nothing about a record's own `id`.
        fields = [constraint.stem] if constraint.stem in record else []
    else:
        fields = [f for f in record if field_matches(constraint.stem, f)]
    for field in fields:
        have = record[field]
        if have is None or isinstance(have, (dict, list)):
            continue
        problem = _compare(have, constraint)
        if problem:
            return f"{field}={have!r} {problem} {constraint.describe()}"
    return None


def _compare(have: Any, constraint: Constraint) -> str | None:
    want = constraint.value
    if constraint.kind in ("max", "min"):
        a, b = _number(have), _number(want)
        if a is None or b is None:
            if not (isinstance(have, str) and isinstance(want, str) and ISO_DATE.match(have)):
                return None
            a_text, b_text = have[:10], want[:10]
            if constraint.kind == "max" and a_text > b_text:
                return "after"
            if constraint.kind == "min" and a_text < b_text:
                return "before"
            return None
        if constraint.kind == "max" and a > b:
            return ">"
        if constraint.kind == "min" and a < b:
            return "<"
        return None
    if constraint.kind == "equals":
        if isinstance(want, str) and isinstance(have, str):
            return None if have.strip().lower() == want.strip().lower() else "!="
        return None if have == want else "!="
    if isinstance(have, str) and isinstance(want, str):
        return None if want.strip().lower() in have.lower() else "does not contain"
    return None


def record_lists(value: Any, depth: int = 0) -> Iterator[list[Any]]:
    """Every list of objects in an answer (the lists a search returns), outermost first."""
    if depth > MAX_DEPTH:
        return
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            yield value
        for item in value:
            yield from record_lists(item, depth + 1)
    elif isinstance(value, dict):
        for child in value.values():
            yield from record_lists(child, depth + 1)


def contradictions(
    arguments: dict[str, Any], parameters: dict[str, Any] | None, result: Any
) -> list[str]:
    """Every way `result`'s record lists break what `arguments` promise; empty: it agrees."""
    promised = constraints(arguments, parameters)
    if not promised:
        return []
    problems: list[str] = []
    for records in record_lists(result):
        for constraint in promised:
            if constraint.kind == "limit" and len(records) > constraint.value:
                problems.append(f"{len(records)} records > {constraint.describe()}")
        for index, record in enumerate(records):
            for constraint in promised:
                problem = broken(record, constraint)
                if problem:
                    problems.append(f"record {index}: {problem}")
    return problems


def obeying(
    arguments: dict[str, Any], parameters: dict[str, Any] | None, result: Any
) -> Any:
    """`result` with the records that break the call's promises dropped and lists cut to its
    limit (in place); records the promise cannot judge stay."""
    promised = constraints(arguments, parameters)
    if not promised:
        return result
    limit = min((c.value for c in promised if c.kind == "limit"), default=None)
    for records in list(record_lists(result)):
        kept = [r for r in records if not any(broken(r, c) for c in promised)]
        if limit is not None:
            kept = kept[:limit]
        records[:] = kept
    return result
