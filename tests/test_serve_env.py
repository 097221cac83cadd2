"""`serve-env`: the environments over HTTP, under concurrent clients and bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from pipelines.config import RunConfig
from pipelines.envs import RunEnvironments
from pipelines.serve_env import EnvServer
from pipelines.stages import rl_task
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.scripted import ScriptedModel
from tests.test_environment import RETAIL, call
from tests.test_rollout import roles_answer
from toolspecs.domain import load_domain

LOOKUP = call("find_user_id_by_email", {"email": "maya.okafor@example.com"}, "c1")
CANCEL = call("cancel_pending_order", {"order_id": "ORD-5001", "reason": "no longer needed"}, "c2")
REPLY = {"role": "assistant", "content": "Order ORD-5001 is cancelled."}


def environments(roles: str = "roles") -> RunEnvironments:
    registry.register(ModelConfig(backend="scripted", model="roles"), ScriptedModel(roles_answer))
    domain = load_domain(RETAIL)
    rows = [rl_task((task, domain.agent)) for task in domain.tasks]
    config = RunConfig.model_validate({
        "models": {"user": {"backend": "scripted", "model": roles},
                   "tool": {"backend": "scripted", "model": roles}},
        "episode": {"failure_rate": 0.0},
    })
    return RunEnvironments(config, {row.task_id: row for row in rows})


def with_client(
    server: EnvServer, body: Callable[[TestClient], Awaitable[Any]]
) -> Any:
    async def main() -> Any:
        async with TestClient(TestServer(server.app())) as client:
            return await body(client)

    return asyncio.run(main())


async def post(client: TestClient, path: str, body: Any) -> tuple[int, dict]:
    response = await client.post(path, json=body)
    return response.status, await response.json()


def first_task(server: EnvServer) -> str:
    domain = load_domain(RETAIL)
    return domain.tasks[0].id


def test_concurrent_sessions_are_isolated_and_each_gets_its_reward() -> None:
    server = EnvServer(environments())
    task_id = first_task(server)

    async def episode(client: TestClient, index: int) -> tuple[float, str]:
        status, opened = await post(client, "/reset", {"task_id": task_id, "seed": index})
        assert status == 200 and [m["role"] for m in opened["messages"]] == ["system", "user"]
        sid = opened["session_id"]
        actions = [LOOKUP, CANCEL, REPLY] if index % 2 == 0 else [LOOKUP, REPLY]
        for action in actions:
            status, result = await post(
                client, "/step", {"session_id": sid, "message": action, "final": True}
            )
            assert status == 200, result
        assert result["done"] and result["end_reason"] == "user_stop"
        status, _ = await post(client, "/close", {"session_id": sid})
        assert status == 200
        return result["reward_parts"]["outcome"], sid

    async def body(client: TestClient) -> list[tuple[float, str]]:
        listed = await (await client.get("/tasks")).json()
        assert task_id in listed["tasks"] and len(listed["tasks"]) == 5
        return await asyncio.gather(*(episode(client, i) for i in range(24)))

    results = with_client(server, body)
    # Only the sessions that cancelled earned the outcome: no world leaked into another.
    assert [outcome for outcome, _ in results] == [1.0 if i % 2 == 0 else 0.0 for i in range(24)]
    assert len({sid for _, sid in results}) == 24
    assert server.sessions == {}


def test_bad_input_gets_a_4xx_json_error_and_the_server_goes_on() -> None:
    server = EnvServer(environments(), max_body_bytes=4096)
    task_id = first_task(server)

    async def body(client: TestClient) -> None:
        status, opened = await post(client, "/reset", {"task_id": task_id, "seed": 1})
        sid = opened["session_id"]
        cases = [
            ("/reset", {"task_id": "task_nope"}, 404, "unknown_task"),
            ("/reset", {"seed": 1}, 400, "missing_field"),
            ("/reset", {"task_id": task_id, "seed": "x"}, 400, "invalid_seed"),
            ("/step", {"session_id": "nope", "message": REPLY}, 404, "unknown_session"),
            ("/step", {"session_id": sid, "message": {"role": "user"}}, 400, "invalid_message"),
            ("/step", {"session_id": sid, "message": {"tool_calls": 3}}, 400, "invalid_message"),
            ("/step", {"session_id": sid}, 400, "missing_field"),
            ("/step", [1, 2], 400, "invalid_body"),
            ("/close", {"session_id": 7}, 404, "unknown_session"),
            ("/step", {"session_id": sid, "message": {"content": "x" * 8000}}, 413,
             "body_too_large"),
        ]
        for path, payload, code, kind in cases:
            status, answer = await post(client, path, payload)
            assert (status, answer["error"]["type"]) == (code, kind), (path, payload, answer)
            assert answer["error"]["message"]
        response = await client.post("/step", data=b"{not json")
        assert response.status == 400 and (await response.json())["error"]["type"] == \
            "invalid_json"
        response = await client.get("/nowhere")
        assert response.status == 404 and "error" in await response.json()
        # The session survived every bad request and plays on to its end.
        for action in (LOOKUP, CANCEL, REPLY):
            status, result = await post(client, "/step", {"session_id": sid, "message": action})
            assert status == 200
        assert result["done"] and result["reward"] == 1.0
        status, over = await post(client, "/step", {"session_id": sid, "message": REPLY})
        assert status == 409 and over["error"]["type"] == "episode_over"

    with_client(server, body)


def test_idle_sessions_expire_and_live_sessions_are_bounded() -> None:
    server = EnvServer(environments(), max_sessions=2, idle_seconds=0.2)
    task_id = first_task(server)

    async def body(client: TestClient) -> None:
        ids = []
        for seed in (1, 2):
            status, opened = await post(client, "/reset", {"task_id": task_id, "seed": seed})
            ids.append(opened["session_id"])
        server.idle_seconds = 60.0
        status, full = await post(client, "/reset", {"task_id": task_id})
        assert status == 429 and full["error"]["type"] == "too_many_sessions"
        server.idle_seconds = 0.2
        await asyncio.sleep(0.5)
        status, gone = await post(client, "/step", {"session_id": ids[0], "message": REPLY})
        assert status == 404 and gone["error"]["type"] == "unknown_session"
        status, _ = await post(client, "/reset", {"task_id": task_id})
        assert status == 200 and len(server.sessions) == 1

    with_client(server, body)


def test_a_failing_role_model_is_a_502_for_that_session_only() -> None:
    registry.register(
        ModelConfig(backend="scripted", model="mute"), ScriptedModel(lambda r: "not json")
    )
    broken = EnvServer(environments("mute"))
    task_id = first_task(broken)

    async def body(client: TestClient) -> None:
        status, answer = await post(client, "/reset", {"task_id": task_id})
        assert status == 502 and answer["error"]["type"] == "role_model_failed"
        assert broken.sessions == {}
        health = await (await client.get("/health")).json()
        assert health["sessions"] == 0

    with_client(broken, body)
