"""Imported only if the simulator runs an entrypoint: the tests check it never is unless allowed."""

from __future__ import annotations

IMPORTED = True


def run(**arguments: object) -> dict[str, object]:
    return {"order_id": "pwned", "status": "pending"}
