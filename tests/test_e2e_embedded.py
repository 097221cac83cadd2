"""The real mill: embedded SmolLM2 through vLLM's CPU build, on Beam's in-process runner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from pipelines.config import ROLES, load_config
from pipelines.parquet_io import read_rows
from pipelines.run import run
from simulators.llm.config import EMBEDDED_MODEL

pytestmark = pytest.mark.e2e


def tool_calls(row: dict) -> list[tuple[dict, dict]]:
    """(call function, offered tool function) for every call in a row's messages."""
    offered = {t["function"]["name"]: t["function"] for t in json.loads(row["tools"])}
    found = []
    for message in row["messages"]:
        for call in message["tool_calls"] or []:
            assert call["function"]["name"] in offered, f"{row['id']}: unoffered tool"
            found.append((call["function"], offered[call["function"]["name"]]))
    return found


def test_two_episodes_on_the_embedded_model(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    manifest = run(load_config(None, {"out": str(out), "episodes": 2, "seed": 0}))
    # The engine's start-up is named, with the roles it serves, instead of minutes of silence.
    said = capfd.readouterr().err
    assert f"starting the engine for user, agent, tool, judge, synthesizer (vllm:{EMBEDDED_MODEL}" \
        in said
    assert re.search(r"engine for user, agent, tool, judge, synthesizer ready in \d+ s", said)

    counts = manifest["counts"]
    assert counts["toolspecs"] >= 40
    assert counts["agents"] + manifest["failures_by_stage"].get("agents", 0) == 1
    assert manifest["reconcile"]["ok"], manifest["reconcile"]
    assert counts["tasks"] == counts["sft"] + counts["rejected"] + sum(
        manifest["failures_by_stage"].get(stage, 0) for stage in ("episodes", "judge")
    )
    assert manifest["models"] == {role: f"vllm:{EMBEDDED_MODEL}" for role in ROLES}
    assert manifest["tokens"]["synthesizer"]["completion"] > 0

    # Constrained decoding: every call the agent made names an offered tool and its arguments
    # validate against that tool's schema, in SFT rows and in every trajectory.
    for folder in ("sft", "trajectories", "rejected"):
        for row in read_rows(out / folder):
            for call, tool in tool_calls(row):
                jsonschema.validate(json.loads(call["arguments"]), tool["parameters"])
    # The loops below check whatever rows exist: zero trajectories must fail here, not pass them.
    trajectories = read_rows(out / "trajectories")
    assert len(trajectories) >= 1, manifest["failures_by_type"]
    assert counts["trajectories"] == len(trajectories)
    for row in trajectories:
        assert row["messages"][0]["role"] == "system"
        assert row["messages"][1]["role"] == "user" and row["messages"][1]["content"]
        assert row["end_reason"] in {"user_stop", "agent_final", "turn_limit"}
        assert json.loads(row["models"]) == {
            r: f"vllm:{EMBEDDED_MODEL}" for r in ("user", "agent", "tool")
        }
    for row in read_rows(out / "failures"):
        assert row["stage"] and row["error"] and row["input_id"]
    assert "\n# agentmill data set" in (out / "README.md").read_text()
