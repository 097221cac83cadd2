"""Real tools for the entrypoint tests: plain functions over the episode's world."""

from __future__ import annotations

import asyncio
import time
from typing import Any

CALLS: list[str] = []


def get_order(order_id: str, world: dict[str, Any]) -> dict[str, Any]:
    CALLS.append(f"get_order:{order_id}")
    return dict(world["orders"][order_id])  # KeyError for an unknown order: the tool's own error


def cancel_order(order_id: str, world: dict[str, Any]) -> dict[str, Any]:
    CALLS.append(f"cancel_order:{order_id}")
    world["orders"][order_id]["status"] = "cancelled"
    return {"order_id": order_id, "status": "cancelled"}


def slow_lookup(order_id: str) -> dict[str, Any]:
    time.sleep(1.0)
    return {"order_id": order_id, "status": "pending"}


async def async_lookup(order_id: str) -> dict[str, Any]:
    await asyncio.sleep(0)
    return {"order_id": order_id, "status": "shipped"}


def wrong_shape(order_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "status": 5}
