"""`agentmill serve-env`: a run's tasks as environments over HTTP, for trainers elsewhere.

    POST /reset {"task_id", "seed"}            -> {"session_id", "messages", "tools"}
    POST /step  {"session_id", "message", "final"?}
                                               -> {"messages", "done", "reward", "reward_parts",
                                                   "reasons", "end_reason"}
    POST /close {"session_id"}                 -> {"closed": true}
    GET  /tasks                                -> {"tasks": [task ids]}
    GET  /health                               -> {"sessions", "max_sessions", "tasks"}

Built on aiohttp's server. Each session is one `Environment` (its own world, user and tool
simulator); sessions idle longer than `idle_seconds` are dropped, at most `max_sessions` live
at once, bodies over `max_body_bytes` are refused, and an episode's steps are bounded by the
environment. Every error is a 4xx (or 5xx when a role's model fails) JSON body
`{"error": {"type", "message"}}`; no request can take the server or another session down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipelines.envs import RunEnvironments
from schemas.records import Message
from simulators.environment import Environment, EpisodeError, EpisodeOver, InvalidAction

log = logging.getLogger("agentmill.serve_env")


class ApiError(Exception):
    """An error answered as JSON with `status`."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


@dataclass
class Session:
    env: Environment
    task_id: str
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json", exclude_none=True) for m in messages]


class EnvServer:
    """The sessions and the handlers; `app()` is the aiohttp application."""

    def __init__(
        self,
        envs: RunEnvironments,
        *,
        max_sessions: int = 1024,
        idle_seconds: float = 600.0,
        max_body_bytes: int = 1 << 20,
    ) -> None:
        self.envs = envs
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self.max_body_bytes = max_body_bytes
        self.sessions: dict[str, Session] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.max_body_bytes, middlewares=[self._errors_as_json]
        )
        app.add_routes([
            web.post("/reset", self.reset),
            web.post("/step", self.step),
            web.post("/close", self.close),
            web.get("/tasks", self.tasks),
            web.get("/health", self.health),
        ])
        app.on_startup.append(self._start_sweeper)
        app.on_cleanup.append(self._stop_sweeper)
        return app

    # plumbing --------------------------------------------------------------------------------

    @web.middleware
    async def _errors_as_json(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.kind, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return _error(
                413, "body_too_large", f"request body over {self.max_body_bytes} bytes"
            )
        except web.HTTPException as exc:  # 404 / 405 from routing
            return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        except Exception as exc:  # a bug must not take the server down
            log.exception("unexpected error on %s", request.path)
            return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")

    async def _start_sweeper(self, app: web.Application) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _stop_sweeper(self, app: web.Application) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, self.idle_seconds / 4))
            self.expire()

    def expire(self) -> int:
        """Drop sessions idle longer than `idle_seconds`; how many were dropped."""
        now = time.monotonic()
        stale = [
            sid for sid, s in self.sessions.items()
            if now - s.last_used > self.idle_seconds and not s.lock.locked()
        ]
        for sid in stale:
            self.sessions.pop(sid).env.close()
        return len(stale)

    async def _body(self, request: web.Request, *fields: str) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ApiError(400, "invalid_body", "the body must be a JSON object")
        missing = [name for name in fields if name not in body]
        if missing:
            raise ApiError(400, "missing_field", f"the body has no {missing[0]!r}")
        return body

    def _session(self, body: dict[str, Any]) -> Session:
        sid = body["session_id"]
        session = self.sessions.get(sid) if isinstance(sid, str) else None
        if session is None:
            raise ApiError(404, "unknown_session", f"no live session {sid!r} (closed or expired)")
        session.last_used = time.monotonic()
        return session

    # handlers --------------------------------------------------------------------------------

    async def reset(self, request: web.Request) -> web.Response:
        body = await self._body(request, "task_id")
        task_id, seed = body["task_id"], body.get("seed", 0)
        if not isinstance(task_id, str) or task_id not in self.envs.tasks:
            raise ApiError(404, "unknown_task", f"no task {task_id!r}; GET /tasks lists them")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ApiError(400, "invalid_seed", "seed must be an integer")
        if len(self.sessions) >= self.max_sessions and not self.expire():
            raise ApiError(
                429, "too_many_sessions",
                f"{self.max_sessions} sessions are live; close one or wait for idle ones to expire",
            )
        env = self.envs.make(task_id)
        try:
            observation = await env.reset(seed)
        except EpisodeError as exc:
            raise ApiError(502, "role_model_failed", str(exc)) from exc
        sid = secrets.token_hex(16)
        self.sessions[sid] = Session(env=env, task_id=task_id)
        return web.json_response({
            "session_id": sid,
            "messages": _messages(observation.messages),
            "tools": observation.tools,
        })

    async def step(self, request: web.Request) -> web.Response:
        body = await self._body(request, "session_id", "message")
        session = self._session(body)
        final = body.get("final", False)
        if not isinstance(final, bool):
            raise ApiError(400, "invalid_final", "final must be true or false")
        if session.lock.locked():
            raise ApiError(409, "step_in_progress", "this session is already taking a step")
        async with session.lock:
            try:
                result = await session.env.step(body["message"], final=final)
            except InvalidAction as exc:
                raise ApiError(400, "invalid_message", str(exc)) from exc
            except EpisodeOver as exc:
                raise ApiError(409, "episode_over", str(exc)) from exc
            except EpisodeError as exc:
                self.sessions.pop(body["session_id"], None)
                session.env.close()
                raise ApiError(502, "role_model_failed", str(exc)) from exc
            finally:
                session.last_used = time.monotonic()
        return web.json_response({
            "messages": _messages(result.messages),
            "done": result.done,
            "reward": result.reward,
            "reward_parts": result.reward_parts,
            "reasons": result.reasons,
            "end_reason": result.end_reason,
        })

    async def close(self, request: web.Request) -> web.Response:
        body = await self._body(request, "session_id")
        self._session(body)
        self.sessions.pop(body["session_id"]).env.close()  # a workspace's folder goes too
        return web.json_response({"closed": True})

    async def tasks(self, request: web.Request) -> web.Response:
        return web.json_response({"tasks": sorted(self.envs.tasks)})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({
            "sessions": len(self.sessions),
            "max_sessions": self.max_sessions,
            "tasks": len(self.envs.tasks),
        })


def _error(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"type": kind, "message": message}}, status=status)


async def serve(server: EnvServer, host: str, port: int) -> None:
    """Serve until cancelled."""
    runner = web.AppRunner(server.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
