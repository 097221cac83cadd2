"""The `agentmill` command: `toolspecs validate` and `sample`, through Typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from pipelines.cli import app
from schemas.arrow import TRAJECTORY_SCHEMA, to_row
from schemas.records import FunctionCall, Message, ToolCall, ToolSpec, Trajectory
from toolspecs.load import LIBRARY, load_library, spec_files

runner = CliRunner()

GOOD: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
OTHER: dict[str, Any] = {**GOOD, "name": "get_forecast", "description": "Forecast for a city."}


def write(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    return path


def validate(*paths: Path | str) -> Any:
    return runner.invoke(app, ["toolspecs", "validate", *map(str, paths)])


def test_library_validates() -> None:
    result = validate(LIBRARY)
    assert result.exit_code == 0, result.output
    count, files = len(load_library()), len(spec_files([LIBRARY]))
    assert f"{count} valid, 0 invalid in {files} file(s)" in result.output
    assert "✗" not in result.output


def test_folder_with_one_bad_file_exits_1_naming_file_tool_and_pointer(tmp_path: Path) -> None:
    write(tmp_path / "good.json", [GOOD, OTHER])
    bad_params = {"type": "object", "properties": {"city": {"type": "objekt"}}}
    bad = write(tmp_path / "bad.json", [OTHER, {**GOOD, "parameters": bad_params}])
    result = validate(tmp_path)
    assert result.exit_code == 1, result.output
    problem = f"{bad}: tool 'get_weather' at /1/parameters/properties/city/type:"
    assert problem in result.output
    assert "3 valid, 1 invalid in 2 file(s)" in result.output
    assert str(tmp_path / "good.json") not in result.output


def test_single_spec_file(tmp_path: Path) -> None:
    result = validate(write(tmp_path / "one.json", GOOD))
    assert result.exit_code == 0, result.output
    assert "1 valid, 0 invalid in 1 file(s)" in result.output


def test_list_file(tmp_path: Path) -> None:
    result = validate(write(tmp_path / "two.json", [GOOD, OTHER]))
    assert result.exit_code == 0, result.output
    assert "2 valid, 0 invalid in 1 file(s)" in result.output


def test_several_paths_and_forms(tmp_path: Path) -> None:
    mcp_tool = {
        "name": "get_forecast", "description": "Forecast.", "inputSchema": GOOD["parameters"]
    }
    mcp = write(tmp_path / "mcp.json", {"tools": [mcp_tool]})
    openai = write(tmp_path / "openai.json", [{"type": "function", "function": GOOD}])
    result = validate(mcp, openai)
    assert result.exit_code == 0, result.output
    assert "2 valid, 0 invalid in 2 file(s)" in result.output


def test_mcp_entry_with_both_schemas_names_the_stray_key(tmp_path: Path) -> None:
    both = {**OTHER, "inputSchema": OTHER["parameters"]}
    mcp = write(tmp_path / "mcp.json", {"tools": [both]})
    result = validate(mcp)
    assert result.exit_code == 1
    assert f"{mcp}: tool 'get_forecast' at /tools/0/inputSchema:" in result.output


def test_bad_json_and_missing_file_are_reported(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.json", "[{")
    missing = tmp_path / "missing.json"
    result = validate(broken, missing)
    assert result.exit_code == 1
    assert f"{broken}: not JSON" in result.output
    assert f"{missing}: no such file" in result.output


def test_path_without_spec_files_exits_2(tmp_path: Path) -> None:
    write(tmp_path / "notes.txt", "nothing here")
    result = validate(tmp_path)
    assert result.exit_code == 2
    assert "no spec files" in result.output


def test_problem_text_is_not_read_as_markup(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.json", [{**GOOD, "name": "get[/x]"}])
    result = validate(bad)
    assert result.exit_code == 1, result.exception
    assert "get[/x]" in result.output


# sample ---------------------------------------------------------------------------------------


def trajectory() -> Trajectory:
    tool = ToolSpec(**GOOD)
    arguments = '{"city": "Oslo"}'
    call = ToolCall(id="call_1", function=FunctionCall(name="get_weather", arguments=arguments))
    return Trajectory(
        task_id="task_1",
        agent_id="agent_1",
        persona_id="persona_1",
        domain="weather",
        messages=[
            Message(role="system", content="You are a weather assistant."),
            Message(role="user", content="Is it cold in Oslo today?"),
            Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id="call_1", name="get_weather", content='{"t": -3}'),
            Message(role="assistant", content="Yes: -3 degrees."),
        ],
        tools=[tool.openai_tool()],
        end_reason="agent_final",
        turns=1,
    )


def test_sample_prints_the_conversation(tmp_path: Path) -> None:
    folder = tmp_path / "trajectories"
    folder.mkdir()
    traj = trajectory()
    table = pa.Table.from_pylist([to_row(traj)], schema=TRAJECTORY_SCHEMA)
    pq.write_table(table, folder / "part-00000-of-00001.parquet")
    result = runner.invoke(app, ["sample", str(folder), "-n", "1"])
    assert result.exit_code == 0, result.output
    assert "Is it cold in Oslo today?" in result.output
    assert "get_weather" in result.output
    assert "Yes: -3 degrees." in result.output
    assert traj.id in result.output


def test_sample_missing_path_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sample", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such file or folder" in " ".join(result.output.split())  # rich wraps at 80
