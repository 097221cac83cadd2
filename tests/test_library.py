"""The hand-authored seed library: big enough, varied, and usable for multi-step tasks."""

from __future__ import annotations

import jsonschema
import pytest

from schemas.records import Failure, ToolSpec
from toolspecs.compose import by_domain, feeds
from toolspecs.load import LIBRARY, load_library, load_paths

MIN_SPECS = 40
MIN_DOMAINS = 8
MIN_TOOLS_PER_DOMAIN = 3
MIN_DESCRIPTION = 30


@pytest.fixture(scope="module")
def library() -> list[ToolSpec]:
    return load_library()


@pytest.fixture(scope="module")
def domains(library: list[ToolSpec]) -> dict[str, list[ToolSpec]]:
    return by_domain(library)


def test_library_loads_without_failures() -> None:
    failures = [item for item in load_paths([LIBRARY]) if isinstance(item, Failure)]
    assert failures == [], "\n".join(f.error for f in failures)


def test_library_size(library: list[ToolSpec]) -> None:
    assert len(library) >= MIN_SPECS


def test_domains_with_enough_tools(domains: dict[str, list[ToolSpec]]) -> None:
    full = {d for d, tools in domains.items() if len(tools) >= MIN_TOOLS_PER_DOMAIN}
    assert len(full) >= MIN_DOMAINS, {d: len(t) for d, t in domains.items()}
    thin = {d: len(t) for d, t in domains.items() if len(t) < MIN_TOOLS_PER_DOMAIN}
    assert not thin, f"domains too small to build an agent from: {thin}"


def test_unique_names(library: list[ToolSpec]) -> None:
    names = [s.name for s in library]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, duplicates


def test_every_spec_is_actionable(library: list[ToolSpec]) -> None:
    problems = []
    for spec in library:
        if len(spec.description.strip()) < MIN_DESCRIPTION:
            problems.append(f"{spec.name}: description too short: {spec.description!r}")
        if not isinstance(spec.returns, dict) or spec.returns.get("type") != "object":
            problems.append(f"{spec.name}: returns must be an object schema: {spec.returns!r}")
        elif not spec.returns.get("properties"):
            problems.append(f"{spec.name}: returns schema names no fields")
        if spec.parameters.get("type") != "object":
            problems.append(f"{spec.name}: parameters must be an object schema")
        for arg, sub in spec.parameters.get("properties", {}).items():
            if not isinstance(sub, dict) or not sub.get("description"):
                problems.append(f"{spec.name}: argument {arg!r} has no description")
        if spec.source != "authored":
            problems.append(f"{spec.name}: source is {spec.source!r}, not 'authored'")
    assert not problems, "\n".join(problems)


def test_required_arguments_are_declared(library: list[ToolSpec]) -> None:
    for spec in library:
        declared = set(spec.parameters.get("properties", {}))
        assert set(spec.parameters.get("required", [])) <= declared, spec.name


def test_schemas_are_valid_json_schema(library: list[ToolSpec]) -> None:
    for spec in library:
        jsonschema.Draft202012Validator.check_schema(spec.parameters)
        jsonschema.Draft202012Validator.check_schema(spec.returns or {})


def test_each_domain_reads_and_writes(domains: dict[str, list[ToolSpec]]) -> None:
    for domain, tools in domains.items():
        effects = {t.side_effect for t in tools}
        assert effects == {"read", "write"}, f"{domain}: only {effects}"


def test_each_domain_chains_tools(domains: dict[str, list[ToolSpec]]) -> None:
    """Hard tasks need a call whose argument comes from an earlier call's result."""
    for domain, tools in domains.items():
        pairs = [(a.name, b.name) for a in tools for b in tools if feeds(a, b)]
        assert pairs, f"{domain}: no tool's result feeds another tool's arguments"
