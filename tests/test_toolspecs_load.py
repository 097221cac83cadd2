"""Loading tool specs: every form loads; every bad entry is a Failure saying where and why."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from schemas.records import Failure, ToolSpec
from toolspecs.load import STAGE, load_file, load_paths, parse_entry, spec_files

MCP_SERVERS = Path(__file__).resolve().parents[2] / "shared" / "data" / "mcp_servers.jsonl"
MCP_TOOL_COUNT = 2915

CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name."}},
    "required": ["city"],
}
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": CITY_SCHEMA,
    "returns": {"type": "object", "properties": {"temp": {"type": "number"}}},
    "domain": "weather",
    "side_effect": "read",
}
FORECAST: dict[str, Any] = {
    "name": "get_forecast",
    "description": "Five-day forecast for a city.",
    "parameters": CITY_SCHEMA,
}


def write(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = content if isinstance(content, str) else json.dumps(content)
    path.write_text(text, encoding="utf-8")
    return path


def load(path: Path) -> tuple[list[ToolSpec], list[Failure]]:
    items = list(load_file(path))
    specs = [i for i in items if isinstance(i, ToolSpec)]
    failures = [i for i in items if isinstance(i, Failure)]
    assert len(specs) + len(failures) == len(items)
    return specs, failures


def only_failure(path: Path) -> Failure:
    specs, failures = load(path)
    assert specs == []
    assert len(failures) == 1, failures
    return failures[0]


# forms ----------------------------------------------------------------------------------------


def test_own_form_single_object(tmp_path: Path) -> None:
    specs, failures = load(write(tmp_path / "weather.json", WEATHER))
    assert failures == []
    [spec] = specs
    assert spec.name == "get_weather"
    assert spec.parameters == CITY_SCHEMA
    assert spec.returns == WEATHER["returns"]
    assert spec.domain == "weather"
    assert spec.source == "authored"


def test_own_form_list_and_default_domain_from_file_name(tmp_path: Path) -> None:
    specs, failures = load(write(tmp_path / "Sky Watch.json", [WEATHER, FORECAST]))
    assert failures == []
    assert [s.name for s in specs] == ["get_weather", "get_forecast"]
    assert specs[0].domain == "weather"  # given in the spec
    assert specs[1].domain == "sky_watch"  # from the file name
    assert specs[1].returns is None
    assert {s.source for s in specs} == {"authored"}


@pytest.mark.parametrize("key", ["inputSchema", "input_schema"])
def test_mcp_tool_form(tmp_path: Path, key: str) -> None:
    tool = {
        "name": "get_weather",
        "title": "Weather",
        "description": "Current weather for a city.",
        key: CITY_SCHEMA,
        "annotations": {"readOnlyHint": True},
    }
    specs, failures = load(write(tmp_path / "mcp.json", tool))
    assert failures == []
    [spec] = specs
    assert spec.source == "mcp"
    assert spec.parameters == CITY_SCHEMA


def test_mcp_tools_list_result(tmp_path: Path) -> None:
    output = {"type": "object", "properties": {"temp": {"type": "number"}}}
    result = {
        "tools": [
            {"name": "get_weather", "description": "Weather now.", "inputSchema": CITY_SCHEMA,
             "outputSchema": output},
            {"name": "get_forecast", "description": "Forecast.", "inputSchema": CITY_SCHEMA},
        ]
    }
    specs, failures = load(write(tmp_path / "server.json", result))
    assert failures == []
    assert [s.name for s in specs] == ["get_weather", "get_forecast"]
    assert {s.source for s in specs} == {"mcp"}
    assert specs[0].returns == output


def test_mcp_server_records_jsonl_take_the_category_as_domain(tmp_path: Path) -> None:
    lines = [
        {"server_id": 0, "server_name": "Weather", "category": "Weather & Climate",
         "tools": [{"name": "get_weather", "description": "Now.", "input_schema": CITY_SCHEMA}]},
        {"server_id": 1, "server_name": "Empty", "category": "Other", "tools": []},
        # Another server with a tool of the same name: a different tool, not a duplicate.
        {"server_id": 2, "server_name": "Meteo", "category": "Weather & Climate",
         "tools": [{"name": "get_weather", "description": "Now, too.", "input_schema": {}}]},
    ]
    path = write(tmp_path / "servers.jsonl", "\n".join(json.dumps(line) for line in lines) + "\n")
    specs, failures = load(path)
    assert failures == []
    assert [s.domain for s in specs] == ["weather_climate", "weather_climate"]
    assert {s.source for s in specs} == {"mcp"}


@pytest.mark.parametrize("wrapped_in_list", [False, True])
def test_openai_function_form(tmp_path: Path, wrapped_in_list: bool) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": CITY_SCHEMA,
            "strict": True,
        },
    }
    specs, failures = load(write(tmp_path / "openai.json", [tool] if wrapped_in_list else tool))
    assert failures == []
    [spec] = specs
    assert spec.name == "get_weather"
    assert spec.parameters == CITY_SCHEMA
    assert spec.source == "openai"
    assert spec.openai_tool()["function"]["parameters"] == CITY_SCHEMA


def test_draft_07_parameters_accepted(tmp_path: Path) -> None:
    params = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"n": {"type": "integer", "exclusiveMinimum": 0}},
        "dependencies": {"n": ["m"]},
        "additionalProperties": False,
    }
    specs, failures = load(write(tmp_path / "d7.json", {**FORECAST, "parameters": params}))
    assert failures == []
    assert specs[0].parameters == params


def test_folder_of_files(tmp_path: Path) -> None:
    write(tmp_path / "a.json", [WEATHER])
    mcp_forecast = {"name": "get_forecast", "description": "Forecast.", "inputSchema": CITY_SCHEMA}
    write(tmp_path / "nested" / "b.json", {"tools": [mcp_forecast]})
    write(tmp_path / "c.jsonl", json.dumps(FORECAST) + "\n\n" + json.dumps(WEATHER) + "\n")
    write(tmp_path / "notes.txt", "not a spec")
    files = spec_files([tmp_path])
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "a.json", "c.jsonl", "nested/b.json",
    ]
    items = list(load_paths([tmp_path]))
    assert all(isinstance(i, ToolSpec) for i in items), items
    assert sorted(i.name for i in items) == sorted(  # type: ignore[union-attr]
        ["get_weather", "get_forecast", "get_forecast", "get_weather"]
    )


# errors ---------------------------------------------------------------------------------------


def test_not_json(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.json", '[{"name": "get_weather",')
    failure = only_failure(path)
    assert failure.stage == STAGE
    assert failure.error_type == "JSONDecodeError"
    assert str(path) in failure.error and "not JSON" in failure.error
    assert failure.source == str(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"name": "météo", "description": "x"}'.encode("latin-1"))
    failure = only_failure(path)
    assert failure.error_type == "UnicodeDecodeError"
    assert str(path) in failure.error and "not UTF-8" in failure.error


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.json"
    items = list(load_paths([path]))
    assert len(items) == 1 and isinstance(items[0], Failure)
    assert items[0].error_type == "FileNotFoundError"
    assert str(path) in items[0].error


@pytest.mark.parametrize(
    ("parameters", "pointer", "words"),
    [
        (
            {"type": "object", "properties": {"city": {"type": "objekt"}}},
            "/0/parameters/properties/city/type",
            "'objekt' is not valid",
        ),
        (
            {"type": "object", "properties": {"city": {"type": "string"}}, "required": "city"},
            "/0/parameters/required",
            "'city' is not of type 'array'",
        ),
        (
            {"type": "object", "properties": {"code": {"type": "string", "pattern": "(["}}},
            "/0/parameters/properties/code/pattern",
            "is not a 'regex'",
        ),
        (
            {"$schema": 7, "type": "object"},
            "/0/parameters/$schema",
            "is not of type 'string'",
        ),
    ],
    ids=["bad-type", "required-not-array", "bad-regex", "schema-not-string"],
)
def test_invalid_parameter_schema_names_file_tool_and_pointer(
    tmp_path: Path, parameters: dict[str, Any], pointer: str, words: str
) -> None:
    path = write(tmp_path / "bad.json", [{**WEATHER, "parameters": parameters}])
    failure = only_failure(path)
    assert failure.stage == STAGE
    assert failure.error_type == "InvalidSchema"
    assert failure.error.startswith(f"{path}: tool 'get_weather' at {pointer}: "), failure.error
    assert words in failure.error
    assert str(path) in failure.source and "get_weather" in failure.source


def test_invalid_returns_schema_pointer(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", {**WEATHER, "returns": {"type": "objekt"}})
    failure = only_failure(path)
    assert f"{path}: tool 'get_weather' at /returns/type: " in failure.error


def test_non_object_parameters_schema(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", [{**WEATHER, "parameters": {"type": "array"}}])
    failure = only_failure(path)
    assert failure.error.startswith(f"{path}: tool 'get_weather' at /0/parameters/type: ")
    assert "object" in failure.error


def test_parameters_not_a_schema_object(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", [{**WEATHER, "parameters": "city"}])
    failure = only_failure(path)
    assert "tool 'get_weather' at /0/parameters: " in failure.error


@pytest.mark.parametrize("name", ["get weather", "!pg", "9lives"])
def test_invalid_name(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / "bad.json", [WEATHER, {**FORECAST, "name": name}])
    specs, failures = load(path)
    assert [s.name for s in specs] == ["get_weather"]
    [failure] = failures
    assert failure.error_type == "InvalidSpec"
    assert failure.error.startswith(f"{path}: tool {name!r} at /1/name: ")
    assert "not a valid function name" in failure.error


def test_missing_description_and_unknown_field(tmp_path: Path) -> None:
    entry = {"name": "get_weather", "parameters": CITY_SCHEMA, "colour": "blue"}
    failure = only_failure(write(tmp_path / "bad.json", [entry]))
    lines = failure.error.splitlines()
    assert any(" at /0/description: " in line for line in lines), lines
    assert any(" at /0/colour: " in line for line in lines), lines


def test_entry_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.json", [WEATHER, "get_forecast", 3])
    specs, failures = load(path)
    assert len(specs) == 1
    assert [f.input_id for f in failures] == [f"{path}#/1", f"{path}#/2"]
    assert all("must be a JSON object" in f.error for f in failures)


def test_duplicate_names_in_one_file(tmp_path: Path) -> None:
    path = write(tmp_path / "dup.json", [WEATHER, FORECAST, {**WEATHER, "description": "Again."}])
    specs, failures = load(path)
    assert [s.name for s in specs] == ["get_weather", "get_forecast"]
    [failure] = failures
    assert failure.error_type == "DuplicateToolName"
    assert failure.error.startswith(f"{path}: tool 'get_weather' at /2/name: ")


def test_duplicate_names_in_openai_form_point_into_function(tmp_path: Path) -> None:
    tool = {"type": "function", "function": FORECAST}
    path = write(tmp_path / "dup.json", [tool, tool])
    specs, failures = load(path)
    assert len(specs) == 1
    assert failures[0].error.startswith(f"{path}: tool 'get_forecast' at /1/function/name: ")


def test_duplicate_names_within_one_mcp_server(tmp_path: Path) -> None:
    server = {"server_name": "S", "tools": [{**FORECAST}, {**FORECAST}]}
    path = write(tmp_path / "servers.jsonl", json.dumps(server) + "\n" + json.dumps(server))
    specs, failures = load(path)
    assert len(specs) == 2  # one per server
    assert [f.input_id for f in failures] == [f"{path}#/0/tools/1", f"{path}#/1/tools/1"]


def test_bad_file_next_to_good_ones(tmp_path: Path) -> None:
    write(tmp_path / "a_good.json", [WEATHER])
    bad = write(tmp_path / "b_bad.json", "{not json")
    write(tmp_path / "c_mixed.json", [FORECAST, {**WEATHER, "parameters": {"type": "objekt"}}])
    items = list(load_paths([tmp_path]))
    specs = [i for i in items if isinstance(i, ToolSpec)]
    failures = [i for i in items if isinstance(i, Failure)]
    assert [s.name for s in specs] == ["get_weather", "get_forecast"]
    assert [f.error_type for f in failures] == ["JSONDecodeError", "InvalidSchema"]
    assert failures[0].source == str(bad)
    assert "/1/parameters/type" in failures[1].error


def test_parse_entry_never_raises_on_odd_input() -> None:
    odd: list[Any] = [
        None, 1, "x", [], {}, {"name": None}, {"name": ["x"], "description": "d"},
        {"type": "function", "function": "x"}, {"type": "function", "function": None},
        {"name": "a", "description": "d", "parameters": True},
        {"name": "a", "description": "d", "parameters": {"$schema": ["x"]}},
        {"name": "a", "description": "d", "parameters": {"$schema": {"a": 1}}},
        {"name": "a", "description": "d", "returns": {"$schema": 1}},
        {"name": "a", "description": "d", "returns": []},
        {"name": "a", "description": "d", "domain": None},
        {"name": "a", "description": "d", "source": "elsewhere"},
    ]
    for entry in odd:
        result = parse_entry(entry, file="odd.json", where="/0")
        assert isinstance(result, Failure), entry
        assert result.error and "odd.json" in result.source


# real MCP servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mcp_items() -> list[ToolSpec | Failure]:
    if not MCP_SERVERS.is_file():
        pytest.skip(f"shared MCP data not found at {MCP_SERVERS} (shared/ sits beside the repo)")
    return list(load_file(MCP_SERVERS))


def test_every_real_mcp_tool_becomes_a_spec_or_a_failure(
    mcp_items: list[ToolSpec | Failure],
) -> None:
    assert len(mcp_items) == MCP_TOOL_COUNT
    specs = [i for i in mcp_items if isinstance(i, ToolSpec)]
    failures = [i for i in mcp_items if isinstance(i, Failure)]
    assert len(specs) + len(failures) == MCP_TOOL_COUNT
    reasons = Counter(f.error_type for f in failures)
    print(f"\nMCP tools: {len(specs)} imported, {len(failures)} refused; {dict(reasons)}")
    assert len(specs) >= MCP_TOOL_COUNT // 2
    assert {s.source for s in specs} == {"mcp"}
    assert all(s.parameters.get("type", "object") == "object" for s in specs)


def test_real_mcp_failures_name_file_tool_and_stage(
    mcp_items: list[ToolSpec | Failure],
) -> None:
    failures = [i for i in mcp_items if isinstance(i, Failure)]
    for failure in failures:
        assert failure.stage == STAGE
        assert failure.error_type
        assert failure.error
        assert failure.source.startswith(f"{MCP_SERVERS}#/"), failure.source
        assert "/tools/" in failure.source
        # "file#/server/tools/index (tool name)"
        assert failure.source.endswith(")") and " (" in failure.source
        for line in failure.error.splitlines():
            assert line.startswith(f"{MCP_SERVERS}: tool "), line
            assert " at /" in line


def test_real_mcp_specs_serve_as_openai_tools(mcp_items: list[ToolSpec | Failure]) -> None:
    specs = [i for i in mcp_items if isinstance(i, ToolSpec)]
    # Servers that publish the very same tool give it the same content id: duplicates show.
    assert len({s.id for s in specs}) < len(specs)
    for spec in specs:
        entry = spec.openai_tool()
        json.dumps(entry)
        assert entry["function"]["name"] == spec.name
