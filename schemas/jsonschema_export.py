"""Generates the JSON Schema files users author specs against (`schemas/json/`).

Run `python -m schemas.jsonschema_export` after changing a record; a test fails when they drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.records import AgentSpec, Task, ToolSpec

JSON_DIR = Path(__file__).parent / "json"
EXPORTED = {"toolspec": ToolSpec, "agentspec": AgentSpec, "task": Task}


def render(name: str) -> str:
    """The schema text for one exported record, as written to disk."""
    schema: dict[str, Any] = EXPORTED[name].model_json_schema(mode="validation")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://agentmill.dev/schemas/{name}.schema.json",
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_all(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in EXPORTED:
        path = directory / f"{name}.schema.json"
        path.write_text(render(name), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_all():
        print(written)
