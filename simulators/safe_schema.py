"""JSON Schema validation whose regular expressions cannot hang a run.

A spec's `pattern` (or `patternProperties` key) is the spec author's regex, evaluated against
model-written text. Python's `re` backtracks without bound and holds the interpreter while it
does, so `^(a+)+$` against forty `a`s and a `!` stops a run for minutes and ignores Ctrl-C.
Here those keywords match through the `regex` package with a time limit: a match that takes
longer is a validation error naming the pattern (the value is refused, the run goes on).
Every schema validation of spec-authored schemas goes through `validator()`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema
import referencing
import regex
from jsonschema.exceptions import ValidationError
from jsonschema.validators import extend, validator_for

PATTERN_TIMEOUT_S = 0.05
"""Time one regex match may take; real patterns match in microseconds."""

NO_REMOTE = referencing.Registry()
"""An empty registry: a `$ref` outside the schema is unresolvable instead of fetched."""


class PatternTimeout(ValueError):
    """A regex took longer than PATTERN_TIMEOUT_S on one value (catastrophic backtracking)."""

    def __init__(self, pattern: str) -> None:
        super().__init__(
            f"pattern {pattern[:200]!r} took more than {PATTERN_TIMEOUT_S} s on a value "
            "(catastrophic backtracking?); the value is refused"
        )


@cache
def _compiled(pattern: str) -> Any:
    return regex.compile(pattern, flags=regex.VERSION0)


def search(pattern: str, text: str) -> bool:
    """Whether `pattern` matches somewhere in `text`, within the time limit (PatternTimeout)."""
    try:
        return _compiled(pattern).search(text, timeout=PATTERN_TIMEOUT_S) is not None
    except TimeoutError:
        raise PatternTimeout(pattern) from None


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if not validator.is_type(instance, "string"):
        return
    try:
        matched = search(pattern, instance)
    except (PatternTimeout, regex.error) as exc:
        yield ValidationError(str(exc))
        return
    if not matched:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            try:
                matched = search(pattern, key)
            except (PatternTimeout, regex.error) as exc:
                yield ValidationError(str(exc))
                return
            if matched:
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    extras = []
    for key in instance:
        if key in properties:
            continue
        try:
            if any(search(pattern, key) for pattern in patterns):
                continue
        except (PatternTimeout, regex.error) as exc:
            yield ValidationError(str(exc))
            return
        extras.append(key)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif additional is False and extras:
        listed = ", ".join(repr(e) for e in sorted(extras, key=str))
        yield ValidationError(f"Additional properties are not allowed ({listed} unexpected)")


_SAFE = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
}


@cache
def _safe_class(base: Any) -> Any:
    return extend(base, _SAFE)


def validator(schema: Any) -> Any:
    """A validator for `schema` (its declared draft, else 2020-12): time-bounded regexes, and
    a `$ref` outside the schema is never fetched."""
    base = validator_for(schema, default=jsonschema.Draft202012Validator)
    return _safe_class(base)(schema, registry=NO_REMOTE)


def validator_class(schema: Any) -> Any:
    """The time-bounded validator class for `schema`'s draft (for `check_schema` and reuse)."""
    return _safe_class(validator_for(schema, default=jsonschema.Draft202012Validator))
