"""`toolspecs import`: real MCP servers, BFCL and OpenAI forms, recorded repairs, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.parquet_io import read_rows
from schemas.records import Failure, ToolSpec
from toolspecs.importers import MAX_TOOL_BYTES, import_paths, import_specs
from toolspecs.load import check_parameters_schema, load_paths

MCP = Path("/work/shared/data/mcp_servers.jsonl")
needs_mcp = pytest.mark.skipif(not MCP.exists(), reason="shared MCP data not present")


@pytest.fixture(scope="module")
def mcp_import(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mcp")
    return out, import_specs([str(MCP)], "mcp", out)


@needs_mcp
def test_every_mcp_tool_is_imported_or_refused_and_counts_add_up(mcp_import) -> None:
    out, report = mcp_import
    servers = [json.loads(line) for line in MCP.read_text().splitlines()]
    in_file = sum(len(s["tools"]) for s in servers)
    counts = report["counts"]
    assert counts["seen"] == in_file == 2915
    assert counts["imported"] + counts["repaired"] + counts["refused"] == in_file
    assert report["adds_up"]
    assert sum(report["refusals"].values()) == counts["refused"]
    # Every repaired or refused tool is listed with what was done or why.
    details = report["details"]
    assert sum(d["status"] == "repaired" for d in details) == counts["repaired"]
    for detail in details:
        if detail["status"] == "repaired":
            assert detail["repairs"]
        else:
            assert detail["refusal"] and str(MCP) in detail["reason"]
            assert detail["tool"] in detail["reason"]

    specs = [s for s in load_paths([out / "specs"])]
    assert all(isinstance(s, ToolSpec) for s in specs)  # the output loads as authored specs
    assert len(specs) == counts["imported"] + counts["repaired"]
    assert all(s.source == "mcp" for s in specs)
    assert all(check_parameters_schema(s.parameters) == [] for s in specs)
    assert len(read_rows(out / "failures")) == counts["refused"]
    assert json.loads((out / "import_report.json").read_text())["counts"] == counts


@needs_mcp
def test_mcp_repairs_are_the_known_ones_and_keep_meaning(mcp_import) -> None:
    out, report = mcp_import
    assert report["repairs"]["draft07_schema_key_removed"] > 1000
    assert report["repairs"]["description_from_name"] > 100
    assert report["repairs"]["draft04_exclusive_bounds"] == 1
    assert set(report["repairs"]) <= {
        "draft07_schema_key_removed", "description_from_name", "description_from_title",
        "draft04_exclusive_bounds", "empty_schema_to_object", "object_type_added",
    }
    specs = {(s.domain, s.name): s for s in load_paths([out / "specs"])}
    token = next(s for (d, n), s in specs.items() if n == "authenticate_user")
    assert token.description.startswith("Authenticate user")
    assert token.parameters["required"] == ["user_token"] and "$schema" not in token.parameters
    pdf = next(s for (_, n), s in specs.items() if n == "read_pdf")
    pages = pdf.parameters["properties"]["sources"]["items"]["properties"]["pages"]
    assert pages["anyOf"][0]["items"] == {"type": "integer", "exclusiveMinimum": 0}
    assert {s.domain for s in specs.values()} >= {"weather", "web_search_research"}


@needs_mcp
def test_mcp_refusals_name_file_tool_and_reason(mcp_import) -> None:
    _, report = mcp_import
    refused = {d["tool"]: d for d in report["details"] if d["status"] == "refused"}
    assert refused["Hello Tool"]["refusal"] == "InvalidName"
    assert refused["!mysql"]["refusal"] == "InvalidName"
    assert refused["connect_json_doc_database_to_cloud"]["refusal"] == "DuplicateName"
    assert refused["connect_json_doc_database_to_cloud"]["pointer"] == "/82/tools/8"
    assert refused["get_rubygem_info"]["refusal"] == "InvalidSchema"
    assert "/1034/tools/0/parameters/properties/$schema" in refused["get_rubygem_info"]["reason"]


def test_bfcl_python_types_are_mapped_and_recorded(tmp_path: Path) -> None:
    question = {
        "id": "simple_0",
        "question": [[{"role": "user", "content": "Area of a triangle, base 10, height 5?"}]],
        "function": [
            {
                "name": "math.triangle_area",
                "description": "Calculate the area of a triangle.",
                "parameters": {
                    "type": "dict",
                    "properties": {
                        "base": {"type": "integer", "description": "The base."},
                        "height": {"type": "float", "description": "The height."},
                        "corners": {"type": "tuple", "items": {"type": "float"}},
                        "meta": {"type": "dict", "properties": {"tag": {"type": "str"}}},
                        "anything": {"type": "any"},
                        "unit": {"type": "string", "enum": ["dict", "float"]},
                    },
                    "required": ["base", "height"],
                },
            }
        ],
    }
    path = tmp_path / "BFCL_v3_simple.json"
    path.write_text(json.dumps(question) + "\n")
    path.rename(path := tmp_path / "BFCL_v3_simple.jsonl")
    [outcome] = list(import_paths([path], "bfcl"))
    assert outcome.status == "repaired", outcome.reason
    spec = outcome.spec
    assert spec is not None and spec.source == "bfcl" and spec.name == "math.triangle_area"
    props = spec.parameters["properties"]
    assert spec.parameters["type"] == "object"
    assert props["height"]["type"] == "number" and props["corners"]["type"] == "array"
    assert props["corners"]["items"] == {"type": "number"}
    assert props["meta"]["properties"]["tag"] == {"type": "string"}
    assert "type" not in props["anything"]
    assert props["unit"]["enum"] == ["dict", "float"]  # values are data, never renamed
    assert set(outcome.repairs) == {
        "bfcl_type_dict_to_object", "bfcl_type_float_to_number", "bfcl_type_tuple_to_array",
        "bfcl_type_str_to_string", "bfcl_type_any_to_untyped",
    }


def test_openai_wrappers_are_unwrapped(tmp_path: Path) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            "strict": True,
        },
    }
    bare = {"name": "get_time", "description": "Time in a city.", "parameters": {}}
    (tmp_path / "list.json").write_text(json.dumps([tool, bare]))
    (tmp_path / "wrapped.json").write_text(json.dumps({"tools": [tool]}))
    outcomes = list(import_paths([tmp_path], "openai"))
    assert [o.status for o in outcomes] == ["repaired", "repaired", "repaired"]
    assert outcomes[0].repairs == ["unwrapped_openai_function"]
    assert outcomes[0].pointer == "/0/function"
    assert outcomes[1].repairs == ["empty_schema_to_object"]
    assert outcomes[1].spec.parameters == {"type": "object", "properties": {}}
    assert outcomes[2].pointer == "/tools/0/function"


def test_bad_input_is_refused_by_file_and_tool_while_the_rest_imports(tmp_path: Path) -> None:
    good = {"name": "ok_tool", "description": "Fine.", "inputSchema": {"type": "object"}}
    (tmp_path / "a_not_json.json").write_text('{"tools": [ {"name": "x"')
    (tmp_path / "b_not_utf8.json").write_bytes(b'{"tools": []}\xff\xfe')
    node = {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}
    recursive = {"name": "tree", "description": "Recursive.", "inputSchema": {
        "type": "object", "$defs": {"node": node},
        "properties": {"root": {"$ref": "#/$defs/node"}}}}
    dangling = {"name": "dangling", "description": "Points nowhere.", "inputSchema": {
        "type": "object", "properties": {"x": {"$ref": "#/definitions/missing"}}}}
    external = {"name": "remote", "description": "Remote ref.", "inputSchema": {
        "type": "object", "properties": {"x": {"$ref": "https://example.com/s.json"}}}}
    values = [f"value-{i:07d}" for i in range(300_000)]
    huge = {"name": "huge", "description": "Several MB.", "inputSchema": {
        "type": "object", "properties": {"x": {"enum": values}}}}
    bad_name = {"name": "get weather", "description": "Space.", "inputSchema": {}}
    dup = {"name": "ok_tool", "description": "Again.", "inputSchema": {}}
    tools = [good, recursive, dangling, external, huge, bad_name, dup]
    (tmp_path / "c_server.json").write_text(json.dumps({"tools": tools}))
    lines = [json.dumps({"server_name": "S1", "tools": [good]}), "{broken",
             json.dumps({"server_name": "S2", "tools": [good]})]
    (tmp_path / "d_servers.jsonl").write_text("\n".join(lines) + "\n")

    outcomes = list(import_paths([tmp_path], "mcp"))
    refused = {(Path(o.file).name, o.tool): o for o in outcomes if o.status == "refused"}
    kinds = {key: o.kind for key, o in refused.items()}
    assert kinds == {
        ("a_not_json.json", "(file)"): "NotJSON",
        ("b_not_utf8.json", "(file)"): "NotUTF8",
        ("c_server.json", "tree"): "RecursiveRef",
        ("c_server.json", "dangling"): "DanglingRef",
        ("c_server.json", "remote"): "ExternalRef",
        ("c_server.json", "huge"): "TooLarge",
        ("c_server.json", "get weather"): "InvalidName",
        ("c_server.json", "ok_tool"): "DuplicateName",
        ("d_servers.jsonl", "(line)"): "NotJSON",
    }
    for (file, tool), outcome in refused.items():
        assert file in outcome.reason
        assert isinstance(outcome.failure, Failure) and outcome.failure.stage == "import_toolspecs"
        if not tool.startswith("("):
            assert repr(tool) in outcome.reason
    tree = refused[("c_server.json", "tree")].reason
    assert "/tools/1/inputSchema/$defs/node/properties/child:" in tree
    assert f"{MAX_TOOL_BYTES:,}" in refused[("c_server.json", "huge")].reason
    assert "line 2" in refused[("d_servers.jsonl", "(line)")].reason
    imported = [(Path(o.file).name, o.pointer) for o in outcomes if o.spec is not None]
    assert imported == [("c_server.json", "/tools/0"), ("d_servers.jsonl", "/0/tools/0"),
                        ("d_servers.jsonl", "/2/tools/0")]


def test_cli_import_writes_report_and_specs(tmp_path: Path) -> None:
    src = tmp_path / "in.json"
    src.write_text(json.dumps({"tools": [
        {"name": "search_notes", "inputSchema": {
            "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
            "properties": {"q": {"type": "string"}}}},
        {"name": "bad name", "description": "x", "inputSchema": {}},
    ]}))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["toolspecs", "import", "--from", "mcp", str(src),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 tools in 1 file(s): 0 imported, 1 repaired, 1 refused" in result.output
    report = json.loads((out / "import_report.json").read_text())
    assert report["repairs"] == {"draft07_schema_key_removed": 1, "description_from_name": 1}
    [spec] = list(load_paths([out / "specs"]))
    assert spec.name == "search_notes" and "$schema" not in spec.parameters
    bad = CliRunner().invoke(app, ["toolspecs", "import", "--from", "yaml", str(src),
                                   "--out", str(out)])
    assert bad.exit_code == 2
