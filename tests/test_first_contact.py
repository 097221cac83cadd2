"""What a new user sees: the real `agentmill run` in a subprocess, its exit code and its words.

A run that cannot work stops before it writes anything (exit 2) with the reason `toolspecs
validate` would give; a run whose stage failed entirely exits non-zero with its top reasons.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from pipelines.console import QUIET_ENV

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("user", "agent", "tool", "judge", "synthesizer")


def agentmill(*args: str, delay: float = 0.0, timeout: float = 240) -> subprocess.CompletedProcess:
    """`agentmill ARGS` as a user runs it (with the scripted `slow`/`broken` models installed)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for quiet in ("OPENAI_API_KEY", "AGENTMILL_API_KEY", *QUIET_ENV):
        env.pop(quiet, None)  # the user's keys, and what an earlier in-process run set
    return subprocess.run(
        [sys.executable, "-m", "tests.slow_cli", str(delay), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


def scripted(tmp_path: Path, episodes: int = 4, **roles: str) -> Path:
    """A config where every role is the scripted `slow` model unless `roles` name another."""
    path = tmp_path / "scripted.yaml"
    models = {r: {"backend": "scripted", "model": roles.get(r, "slow")} for r in ROLES}
    path.write_text(json.dumps({"episodes": episodes, "tasks_per_agent": 2, "models": models}))
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_missing_spec_path_stops_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = agentmill("run", "--tool-specs", str(tmp_path / "nope.json"), "--out", str(out),
                       "--config", str(scripted(tmp_path)))
    assert result.returncode == 2, result.stderr
    assert f"{tmp_path / 'nope.json'}: no such file or folder" in result.stderr
    assert "nothing was written" in result.stderr
    assert not out.exists()


def test_spec_that_is_not_json_gives_the_validate_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "a", "description": "d", "parameters": {"type": "object"},}]')
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = agentmill("run", "--tool-specs", str(bad), "--out", str(out),
                       "--config", str(scripted(tmp_path)))
    assert result.returncode == 2, result.stderr
    validate = agentmill("toolspecs", "validate", str(bad))
    problem = next(line for line in validate.stdout.splitlines() if "not JSON" in line)
    assert problem.lstrip("✗ ") in result.stderr and "line 1 column" in problem
    assert "no usable agent: no domain has 3 or more valid tools" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # nothing written or deleted


def test_specs_too_few_per_domain_name_the_domains(tmp_path: Path) -> None:
    tools = [{"name": f"t{i}", "description": "A tool.", "parameters": {"type": "object"},
              "domain": "tiny"} for i in range(2)]
    (tmp_path / "tiny.json").write_text(json.dumps(tools))
    result = agentmill("run", "--tool-specs", str(tmp_path / "tiny.json"), "--out",
                       str(tmp_path / "run"), "--config", str(scripted(tmp_path)))
    assert result.returncode == 2, result.stderr
    assert "no domain has 3 or more valid tools" in result.stderr
    assert "tools per domain: tiny 2" in result.stderr
    assert not (tmp_path / "run").exists()


def test_model_server_that_does_not_answer_is_named_with_its_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    out = tmp_path / "run"
    result = agentmill("run", "--backend", "openai", "--base-url", url, "--model", "m",
                       "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert f"the model server at {url} does not answer: ConnectError" in result.stderr
    assert not out.exists()


def test_remote_backend_with_the_embedded_model_name_is_refused(tmp_path: Path) -> None:
    result = agentmill("run", "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1",
                       "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "backend openai with the embedded default model name" in result.stderr
    assert "--model" in result.stderr
    assert not (tmp_path / "run").exists()


class _Models(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"data": [{"id": "served-model"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_model_the_server_does_not_serve_is_refused_with_what_it_serves(tmp_path: Path) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/v1"
        result = agentmill("run", "--backend", "openai", "--base-url", url, "--model", "other",
                           "--out", str(tmp_path / "run"))
    finally:
        server.shutdown()
    assert result.returncode == 2, result.stderr
    assert "does not serve 'other' (it serves: served-model)" in result.stderr
    assert not (tmp_path / "run").exists()


def test_bad_flag_value_is_blamed_on_the_flag(tmp_path: Path) -> None:
    result = agentmill("run", "--episodes", "0", "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "episodes = 0 (from --episodes)" in result.stderr
    assert "<defaults>" not in result.stderr


def test_bad_file_value_is_blamed_on_the_file(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("episodes: 5\nin_flight: 0\n")
    result = agentmill("run", "--config", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert f"in_flight = 0 (from {config})" in result.stderr


def test_a_stage_that_failed_entirely_exits_1_with_its_reasons(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = agentmill("run", "--config", str(scripted(tmp_path, agent="broken")),
                       "--out", str(out))
    assert result.returncode == 1, result.stderr
    assert "episodes: 4 of 4 failed" in result.stderr
    # The reason, not only the count.
    assert "4 × episodes: EpisodeError: agent: no usable answer after 3 attempts: agent answer " \
        "is not JSON" in result.stderr
    assert "done in" not in result.stderr


def test_a_run_that_made_its_data_exits_0(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = agentmill("run", "--config", str(scripted(tmp_path)), "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["trajectories"] == 4
    assert "done in" in result.stderr
