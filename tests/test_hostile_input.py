"""Input that tries to hang, exhaust or crash a run: each becomes a named error in bounded time
and memory (a Failure where it is one record, a refusal at start where it is the run), and the
rest of the run goes on."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.config import ConfigError, load_config
from pipelines.parquet_io import read_rows
from pipelines.run import run
from schemas.records import Failure, ToolSpec
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel, ScriptRequest, schema_instance
from simulators.llm.toolcall import ZERO_WIDTH_SPACE, defuse_markers, defuse_written
from tests import helpers
from tests.test_pipeline import scripted_config
from toolspecs.compose import choose_tools
from toolspecs.domain import DomainError, load_domain
from toolspecs.load import load_file

ROOT = Path(__file__).resolve().parents[1]
EVIL = "^(a|a)*$"
"""Exponential backtracking, in Python's `re` and in `regex` alike: 2^40 paths on forty `a`s
and a `!`. (`^(a+)+$` hangs `re` too, but `regex` optimizes it: it is covered below.)"""
EVIL_TEXT = "a" * 40 + "!"


def _spec(name: str = "lookup", **parameters: Any) -> dict[str, Any]:
    return {"name": name, "description": f"{name} a thing.", "domain": "shop",
            "parameters": {"type": "object", "properties": parameters}}


def _in_subprocess(code: str, timeout: float = 60) -> str:
    """Run `code` in a fresh interpreter; a hang fails the test instead of stalling the suite."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _finishes(fn: Any, seconds: float = 20) -> Any:
    """`fn()`'s result, asserting it returns within `seconds` (a daemon thread, so a blocking
    read on old code fails the test instead of hanging it)."""
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(value=fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not return within {seconds} s"
    return box["value"]


# Catastrophic regexes ---------------------------------------------------------------------------


def test_a_catastrophic_pattern_is_bounded_in_argument_validation() -> None:
    out = _in_subprocess(
        "import time; from simulators.ask import schema_errors\n"
        f"schema = {{'type': 'object', 'properties': {{'code': {{'type': 'string', "
        f"'pattern': {EVIL!r}}}}}}}\n"
        "t = time.monotonic()\n"
        f"errors = schema_errors(schema, {{'code': {EVIL_TEXT!r}}})\n"
        "print(round(time.monotonic() - t, 2)); print(errors)\n"
    )
    seconds, errors = out.splitlines()
    assert float(seconds) < 5
    assert "catastrophic backtracking" in errors and "/code" in errors


def test_a_catastrophic_pattern_is_bounded_in_the_checks_and_pattern_properties() -> None:
    out = _in_subprocess(
        "from filters.checks import CheckContext\n"
        "from schemas.records import ToolSpec\n"
        f"params = {{'type': 'object', 'patternProperties': {{{EVIL!r}: {{'type': 'string'}}}},"
        " 'additionalProperties': False}\n"
        "tool = ToolSpec(name='t', description='d', parameters=params)\n"
        "v = CheckContext(tools={'t': tool}, max_turns=3).validator('t')\n"
        f"print([e.message for e in v.iter_errors({{{EVIL_TEXT!r}: 'x'}})])\n"
    )
    assert "catastrophic backtracking" in out


def test_safe_patterns_still_match_as_before() -> None:
    from simulators.ask import schema_errors

    nested = {"type": "string", "pattern": "^(a+)+$"}  # hangs `re`; `regex` answers at once
    assert _finishes(lambda: schema_errors(nested, EVIL_TEXT)) != []

    schema = {"type": "object", "properties": {"zip": {"type": "string", "pattern": r"^\d{5}$"}},
              "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False}
    assert schema_errors(schema, {"zip": "94110", "x-a": 1}) == []
    errors = schema_errors(schema, {"zip": "9411", "x-a": "one", "other": 1})
    assert any("does not match" in e for e in errors)
    assert any("/x-a" in e for e in errors)
    assert any("'other'" in e and "not allowed" in e for e in errors)


def test_a_run_whose_agent_sends_text_to_a_catastrophic_pattern_finishes(
    tmp_path: Path,
) -> None:
    """The tool simulator validates the call in bounded time and answers with an error; the
    episode and the run go on."""
    specs = tmp_path / "specs"
    specs.mkdir()
    tools = [_spec("lookup", code={"type": "string", "pattern": EVIL}),
             _spec("cancel", code={"type": "string"}), _spec("refund", code={"type": "string"})]
    (specs / "shop.json").write_text(json.dumps(tools))

    def respond(request: ScriptRequest) -> Any:
        if helpers.role_of(request) == "agent" and request.schema and "anyOf" in request.schema:
            if not any(m["role"] == "tool" for m in request.messages):
                return {"tool_calls": [{"name": "lookup", "arguments": {"code": EVIL_TEXT}}]}
            return {"content": "Done.", "final": True}
        return schema_instance(request.schema or {"type": "string"}, __import__("random")
                               .Random(0))

    registry.register(ModelConfig(backend="scripted", model="evil"), ScriptedModel(respond))
    try:
        started = time.monotonic()
        manifest = _finishes(lambda: run(scripted_config(
            tmp_path / "run", episodes=2, name="evil", toolspecs=[str(specs)],
            **{"control.max_failure_rate": 1.0})), seconds=240)
    finally:
        registry.clear()
    assert manifest["reconcile"]["ok"] and time.monotonic() - started < 240
    tool_answers = [m["content"] for t in read_rows(tmp_path / "run" / "trajectories")
                    for m in t["messages"] if m["role"] == "tool"]
    assert any("catastrophic" in a for a in tool_answers), tool_answers


# Numbers JSON readers do not agree on -----------------------------------------------------------


@pytest.mark.parametrize(
    ("literal", "kind"),
    [("9" * 5000, "NumberTooLong"), ("NaN", "NotStandardJSON"), ("Infinity", "NotStandardJSON"),
     ("-Infinity", "NotStandardJSON"), ("1e999999", "NotStandardJSON")],
)
def test_non_standard_numbers_in_a_spec_are_a_named_failure(
    tmp_path: Path, literal: str, kind: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"name": "t", "description": "d", "parameters": {"type": "object", '
                    '"properties": {"n": {"type": "integer", "maximum": ' + literal + "}}}}]")
    (failure,) = load_file(path)
    assert isinstance(failure, Failure) and failure.error_type == kind
    assert str(path) in failure.error


def test_validate_names_a_5000_digit_integer_without_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([_spec("t")]).replace('"properties": {}',
                                                     '"properties": {}, "x": ' + "7" * 5000))
    result = CliRunner().invoke(app, ["toolspecs", "validate", str(path)])
    assert result.exit_code == 1, result.output
    assert "5,000 digits" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_bad_spec_file_becomes_a_failure_and_the_run_goes_on(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "big_int.json").write_text('{"name": "t", "description": "d", "x": ' + "1" * 5000
                                        + "}")
    (specs / "nan.json").write_text('{"name": "u", "description": "d", "x": NaN}')
    (specs / "shop.json").write_text(json.dumps([_spec(n) for n in ("a", "b", "c")]))
    out = tmp_path / "run"
    manifest = run(scripted_config(out, episodes=2, toolspecs=[str(specs)]))
    assert manifest["reconcile"]["ok"] and manifest["counts"]["toolspecs"] == 3
    kinds = sorted(f["error_type"] for f in read_rows(out / "failures")
                   if f["stage"] == "load_toolspecs")
    assert kinds == ["NotStandardJSON", "NumberTooLong"]


# Files that are not files -----------------------------------------------------------------------


def test_a_named_pipe_as_a_spec_file_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "specs.json"
    os.mkfifo(fifo)  # nobody ever writes: reading it would block forever
    (failure,) = _finishes(lambda: list(load_file(fifo)))
    assert failure.error_type == "NotARegularFile" and "named pipe" in failure.error


def test_a_link_to_a_device_is_refused_without_reading_it(tmp_path: Path) -> None:
    link = tmp_path / "zeros.json"
    link.symlink_to("/dev/zero")  # endless: reading it would exhaust memory
    (failure,) = _finishes(lambda: list(load_file(link)))
    assert failure.error_type == "NotARegularFile" and "character device" in failure.error


def test_validate_refuses_a_pipe_in_a_folder_and_checks_the_rest(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "ok.json").write_text(json.dumps(_spec("fine")))
    result = _finishes(lambda: CliRunner().invoke(app, ["toolspecs", "validate", str(tmp_path)]))
    assert result.exit_code == 1
    assert "1 valid, 1 invalid in 2 file(s)" in result.output
    assert "named pipe" in result.output


def test_an_oversized_spec_file_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import toolspecs.load as load

    path = tmp_path / "huge.json"
    path.write_text(json.dumps([_spec("t")]) + " " * 4096)
    monkeypatch.setattr(load, "MAX_FILE_BYTES", 1024)
    monkeypatch.setattr(load.read_input, "__defaults__", (1024,))
    (failure,) = load.load_file(path)
    assert failure.error_type == "FileTooLarge"


def test_a_config_that_is_a_named_pipe_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    error = _finishes(lambda: _raises(lambda: load_config(fifo)))
    assert isinstance(error, ConfigError) and "named pipe" in str(error) and str(fifo) in str(error)


def _raises(fn: Any) -> Any:
    """Call `fn` and re-raise its exception in the caller (for `_finishes`)."""
    try:
        return fn()
    except Exception as exc:
        return exc


def test_domain_files_are_read_with_the_same_bounds(tmp_path: Path) -> None:
    import shutil

    domain = tmp_path / "retail"
    shutil.copytree(ROOT / "data" / "domains" / "retail", domain)
    (domain / "world.json").unlink()
    os.mkfifo(domain / "world.json")
    error = _finishes(lambda: _raises(lambda: load_domain(domain)))
    assert isinstance(error, DomainError) and "named pipe" in str(error)
    (domain / "world.json").unlink()
    (domain / "world.json").write_text('{"orders": {"O-1": {"total": NaN}}}')
    with pytest.raises(DomainError, match="NaN is not standard JSON"):
        load_domain(domain)


# Configs ----------------------------------------------------------------------------------------


def test_a_yaml_alias_bomb_in_a_nested_field_is_refused_quickly(tmp_path: Path) -> None:
    names = "abcdefghij"
    lines = ["    a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for previous, name in itertools.pairwise(names):  # 10^10 values expanded
        lines.append(f"    {name}: &{name} [{', '.join(['*' + previous] * 10)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("episode:\n  bomb:\n" + "\n".join(lines) + "\n")
    error = _finishes(lambda: _raises(lambda: load_config(path)), seconds=20)
    assert isinstance(error, ConfigError) and "aliases" in str(error)


def test_useful_yaml_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "aliases.yaml"
    path.write_text("models:\n  agent: &m {backend: scripted, model: x}\n  judge: *m\n")
    config = load_config(path)
    assert config.models.judge.model == "x" == config.models.agent.model


@pytest.mark.parametrize(
    ("text", "field"),
    [("episodes: 1000000000000", "episodes"), ("in_flight: 1000000000", "in_flight"),
     ("batch_size: 1000000000", "batch_size"), ("max_tools: 100000", "max_tools"),
     ("judge: {pass_threshold: .nan}", "judge.pass_threshold"),
     ("synthesis: {temperature: .inf}", "synthesis.temperature"),
     ("seed: " + "9" * 5000, "cannot read config")],
)
def test_absurd_config_values_are_refused_naming_the_field(
    tmp_path: Path, text: str, field: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert field in str(refused.value) and str(path) in str(refused.value)


def test_a_scalar_where_a_mapping_belongs_plus_a_cli_flag_is_a_config_error(
    tmp_path: Path,
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("models: 5\n")
    with pytest.raises(ConfigError, match="models must be a mapping"):
        load_config(path, {"models.agent.backend": "openai"})
    result = CliRunner().invoke(app, ["run", "--config", str(path), "--backend", "openai",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "models must be a mapping" in result.output
    assert not (tmp_path / "run").exists()


def test_an_absurd_episode_count_is_refused_before_anything_runs(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--episodes", "1000000000000",
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "episodes" in result.output
    assert not (tmp_path / "run").exists()


# Tools --------------------------------------------------------------------------------------------


def test_the_same_tool_name_in_two_files_is_offered_once_per_agent() -> None:
    first = [ToolSpec.model_validate(_spec(n)) for n in ("search", "book", "cancel")]
    again = ToolSpec.model_validate({**_spec("search"), "description": "Another search."})
    for slot in range(20):
        _, tools = choose_tools([*first, again], slot, seed=slot, min_tools=3, max_tools=6)
        names = [t.name for t in tools]
        assert len(names) == len(set(names)) == 3


def test_a_domain_with_only_duplicate_names_has_too_few_tools() -> None:
    twice = [ToolSpec.model_validate({**_spec("search"), "description": f"v{i}"})
             for i in range(4)]
    with pytest.raises(ValueError, match="3 or more tools"):
        choose_tools(twice, 0, seed=0, min_tools=3)


# Stored control tokens -----------------------------------------------------------------------


MARKERS = ["<|im_start|>system", "<|eot_id|>", "[INST]", "</s>", "<start_of_turn>"]


def test_control_tokens_forced_into_arguments_and_results_are_defused_when_written(
    tmp_path: Path,
) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    forced = {"type": "string", "enum": [" ".join(MARKERS)]}
    tools = [_spec(name, code=forced) for name in ("lookup", "cancel", "refund")]
    for tool in tools:
        tool["parameters"]["required"] = ["code"]
        tool["returns"] = {"type": "object", "properties": {"note": forced}, "required": ["note"]}
    (specs / "shop.json").write_text(json.dumps(tools))
    out = tmp_path / "run"
    manifest = run(scripted_config(out, episodes=4, toolspecs=[str(specs)],
                                   **{"control.max_failure_rate": 1.0}))
    assert manifest["reconcile"]["ok"]
    written = []
    for folder in ("toolspecs", "agents", "tasks", "trajectories", "sft", "rejected", "rl"):
        if (out / folder).is_dir():
            written += read_rows(out / folder)
    text = json.dumps(written, ensure_ascii=False)
    decoded = json.dumps([json.loads(s) for s in _json_texts(written)], ensure_ascii=False)
    for marker in MARKERS:
        assert marker not in text and marker not in decoded, marker
    arguments = [c["function"]["arguments"] for row in read_rows(out / "trajectories")
                 for m in row["messages"] for c in (m["tool_calls"] or [])]
    assert arguments and all(ZERO_WIDTH_SPACE in a for a in arguments)
    results = [m["content"] for row in read_rows(out / "trajectories")
               for m in row["messages"] if m["role"] == "tool"]
    assert any(defuse_markers("<|im_start|>") in r for r in results)


def _json_texts(value: Any) -> list[str]:
    """Every string in `value` that holds JSON text (tool lists, arguments, results)."""
    found: list[str] = []
    if isinstance(value, dict):
        for child in value.values():
            found += _json_texts(child)
    elif isinstance(value, list):
        for child in value:
            found += _json_texts(child)
    elif isinstance(value, str) and value[:1] in "{[":
        try:
            json.loads(value)
            found.append(value)
        except ValueError:
            pass
    return found


def test_escaped_control_tokens_in_json_text_are_defused_too() -> None:
    row = {"arguments": '{"q": "\\u003c|im_start|>system"}', "content": '["<\\/s>"]',
           "plain": "<|im_end|>", "n": 3}
    clean = defuse_written(row)
    assert "<|im_start|>" not in json.loads(clean["arguments"])["q"]
    assert json.loads(clean["content"]) == [defuse_markers("</s>")]
    assert clean["plain"] == defuse_markers("<|im_end|>") and clean["n"] == 3
    untouched = {"arguments": '{"q": "caf\\u00e9"}'}
    assert defuse_written(untouched) == untouched  # nothing to break: the text stays as it was


# Full disk --------------------------------------------------------------------------------------


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_a_full_disk_is_one_named_message_not_a_traceback(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    if not _tmpfs(disk, "300k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        config = tmp_path / "scripted.yaml"
        config.write_text(json.dumps({"models": {r: {"backend": "scripted", "model": "s"} for r in
                                                 ("user", "agent", "tool", "judge",
                                                  "synthesizer")}}))
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "run", "--config", str(config),
             "--episodes", "40", "--out", str(disk / "run")],
            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
        )
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "no space left on the device holding" in done.stderr
    assert "run the same command again" in done.stderr
    assert "Traceback" not in done.stderr and "Errno 28" not in done.stderr


def test_a_full_disk_while_checkpointing_stops_the_run_with_a_named_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import pipelines.resume as resume

    def full(folder: Any, rows: Any) -> str:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    monkeypatch.setattr(resume, "write_part", full)
    from pipelines.batching import RunStopped

    with pytest.raises(RunStopped, match="no space left on the device") as stopped:
        run(scripted_config(tmp_path / "run", episodes=3))
    assert stopped.value.exit_code == 1


def test_a_config_nested_thousands_deep_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("episode: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(path)


def test_a_symlink_loop_as_a_spec_file_is_a_named_failure(tmp_path: Path) -> None:
    (tmp_path / "a.json").symlink_to(tmp_path / "b.json")
    (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
    (failure,) = load_file(tmp_path / "a.json")
    assert failure.error_type == "OSError" and "symbolic links" in failure.error


def test_import_refuses_a_pipe_and_non_standard_numbers_and_goes_on(tmp_path: Path) -> None:
    from toolspecs.importers import import_paths

    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "nan.jsonl").write_text(
        json.dumps({"tools": [_spec("fine")]}) + "\n" + '{"tools": [{"name": "n", "x": NaN}]}\n'
    )
    outcomes = _finishes(lambda: list(import_paths([tmp_path], "mcp")))
    refused = [o.reason for o in outcomes if o.status == "refused"]
    assert any("named pipe" in r for r in refused) and any("NaN is not standard" in r
                                                             for r in refused), refused
    assert [o.spec.name for o in outcomes if o.spec is not None] == ["fine"]
