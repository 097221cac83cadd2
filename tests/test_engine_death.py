"""Servers and engines that die: requests wait for a server that comes back, a dead vLLM engine
is restarted and its requests asked again, and one that stays down stops the run (exit 1)
instead of dead-lettering every episode."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from pipelines.batching import RunStopped
from pipelines.run import run
from schemas.records import Message
from simulators.llm import registry
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.errors import ModelUnavailable
from simulators.llm.faults import ChatModelTransport
from simulators.llm.openai_backend import OpenAIChatModel
from simulators.llm.scripted import ScriptedModel
from tests.test_pipeline import scripted_config


class OutageTransport(httpx.AsyncBaseTransport):
    """A server that goes away after `after` requests for `down_s` seconds (connections
    refused, as when its process died), then answers again; `down_s=inf`: never again."""

    def __init__(self, inner: httpx.AsyncBaseTransport, after: int, down_s: float) -> None:
        self.inner = inner
        self.after = after
        self.down_s = down_s
        self.seen = 0
        self.refused = 0
        self.down_at: float | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.seen > self.after and self.down_at is None:
            self.down_at = time.monotonic()
        if self.down_at is not None and time.monotonic() - self.down_at < self.down_s:
            self.refused += 1
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        return await self.inner.handle_async_request(request)


def _served(after: int, down_s: float, wait_s: float) -> tuple[OpenAIChatModel, OutageTransport]:
    transport = OutageTransport(ChatModelTransport(ScriptedModel()), after, down_s)
    config = ModelConfig(backend="openai", model="flaky", base_url="http://127.0.0.1:9/v1",
                         server_wait_s=wait_s, max_retries=1)
    model = OpenAIChatModel(config, backoff_base_s=0.05, backoff_max_s=0.2, transport=transport)
    return model, transport


def test_a_server_that_dies_and_comes_back_loses_nothing(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    model, transport = _served(after=30, down_s=1.5, wait_s=60)
    registry.register(ModelConfig(backend="scripted", model="flaky"), model)
    try:
        manifest = run(scripted_config(tmp_path / "run", episodes=6, name="flaky"))
    finally:
        registry.clear()
    assert transport.refused > 0, "the outage never happened"
    assert manifest["reconcile"]["ok"] and manifest["counts"]["failures"] == 0
    err = capfd.readouterr().err
    assert "model server http://127.0.0.1:9/v1 is not answering (ConnectError)" in err
    assert "answers again after" in err


def test_a_server_that_stays_down_stops_the_run_instead_of_failing_every_episode(
    tmp_path: Path,
) -> None:
    model, _ = _served(after=30, down_s=float("inf"), wait_s=1.0)
    registry.register(ModelConfig(backend="scripted", model="gone"), model)
    try:
        with pytest.raises(RunStopped) as stopped:
            run(scripted_config(tmp_path / "run", episodes=20, name="gone"))
    finally:
        registry.clear()
    assert stopped.value.exit_code == 1
    message = str(stopped.value)
    assert "refused connections for" in message and "http://127.0.0.1:9/v1" in message
    assert "run the same command again" in message
    assert not (tmp_path / "run" / "manifest.json").exists()


def test_requests_wait_for_the_server_without_spending_their_retries() -> None:
    model, transport = _served(after=0, down_s=0.6, wait_s=30)
    sampling = Sampling(max_tokens=16)

    async def ask_all() -> list[Any]:
        try:
            return await asyncio.gather(*(
                model.complete([Message(role="user", content=f"hi {i}")], sampling=sampling)
                for i in range(4)
            ))
        finally:
            await model.close()

    answers = asyncio.run(ask_all())
    assert len(answers) == 4 and transport.refused >= 4  # max_retries is 1: waits are not retries


def test_the_wait_is_bounded() -> None:
    model, _ = _served(after=0, down_s=float("inf"), wait_s=0.5)

    async def ask() -> Any:
        try:
            return await model.complete([Message(role="user", content="hi")],
                                        sampling=Sampling(max_tokens=8))
        finally:
            await model.close()

    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match="refused connections"):
        asyncio.run(ask())
    assert time.monotonic() - started < 10


def test_the_wait_settings_stay_out_of_the_fingerprint() -> None:
    base = scripted_config(Path("x"), episodes=2)
    tuned = scripted_config(Path("x"), episodes=2, **{"models.agent.server_wait_s": 5,
                                                       "models.agent.engine_restarts": 0})
    assert base.fingerprint() == tuned.fingerprint()


# An in-process vLLM engine that dies ---------------------------------------------------------


class FakeTokenizer:
    def apply_chat_template(self, messages: Any, **kwargs: Any) -> str:
        return "prompt"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1, 2, 3]


class FakeEngine:
    """AsyncLLM's surface: dies (EngineDeadError) on its first `dies` requests if asked to."""

    def __init__(self, dies: int) -> None:
        self.dies = dies
        self.shut = False

    def get_tokenizer(self) -> FakeTokenizer:
        return FakeTokenizer()

    async def generate(self, prompt: Any, params: Any, request_id: str) -> Any:
        from vllm.v1.engine.exceptions import EngineDeadError

        await asyncio.sleep(0.01)
        if self.dies > 0:
            self.dies -= 1
            raise EngineDeadError()
        yield SimpleNamespace(
            prompt_token_ids=[1, 2, 3],
            outputs=[SimpleNamespace(text='{"answer": 1}', token_ids=[5, 6], finish_reason="stop")],
        )

    def shutdown(self) -> None:
        self.shut = True


def _vllm_model(monkeypatch: pytest.MonkeyPatch, deaths: list[int], restarts: int) -> Any:
    from simulators.llm import vllm_backend

    engines: list[FakeEngine] = []

    def start(self: Any) -> FakeEngine:
        engine = FakeEngine(deaths[len(engines)] if len(engines) < len(deaths) else 0)
        engines.append(engine)
        return engine

    monkeypatch.setattr(vllm_backend, "_import_vllm", lambda: None)
    monkeypatch.setattr(vllm_backend.VLLMChatModel, "_start_engine", start)
    config = ModelConfig(backend="vllm", model="fake", engine_restarts=restarts)
    return vllm_backend.VLLMChatModel(config), engines


def test_a_dead_vllm_engine_is_restarted_and_its_requests_asked_again(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    model, engines = _vllm_model(monkeypatch, deaths=[10**6, 0], restarts=2)

    async def ask_all() -> list[Any]:
        return await asyncio.gather(*(
            model.complete([Message(role="user", content=f"q{i}")],
                           response_schema={"type": "object"}, sampling=Sampling(max_tokens=8))
            for i in range(5)
        ))

    answers = asyncio.run(ask_all())
    assert [a.parsed for a in answers] == [{"answer": 1}] * 5
    assert len(engines) == 2 and engines[0].shut, "one restart, the dead engine shut down"
    assert "vLLM engine of vllm:fake died" in capfd.readouterr().err


def test_an_engine_that_keeps_dying_is_a_bounded_model_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model, engines = _vllm_model(monkeypatch, deaths=[10**6] * 5, restarts=1)

    async def ask() -> Any:
        return await model.complete([Message(role="user", content="q")],
                                    sampling=Sampling(max_tokens=8))

    with pytest.raises(ModelUnavailable, match="died 2 times"):
        asyncio.run(ask())
    assert len(engines) == 2


def test_a_small_run_whose_every_episode_fails_never_exits_0(tmp_path: Path) -> None:
    """Too small for the in-run brake (20 inputs): the same rule judges the finished run."""
    import json

    from typer.testing import CliRunner

    from pipelines.cli import app
    from tests.helpers import role_model

    config = tmp_path / "broken.yaml"
    config.write_text(json.dumps({"models": {r: {"backend": "scripted", "model": "broken"} for r
                                             in ("user", "agent", "tool", "judge", "synthesizer")},
                                  "episodes": 4}))
    broken = role_model({"agent": lambda request: "not JSON at all"})
    registry.register(ModelConfig(backend="scripted", model="broken"), broken)
    try:
        result = CliRunner().invoke(app, ["run", "--config", str(config),
                                          "--out", str(tmp_path / "run")])
    finally:
        registry.clear()
    assert result.exit_code == 1, result.output
    assert "episodes: 4 of 4 failed" in result.output
