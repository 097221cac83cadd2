"""Per-role models: presets, engine sharing, the memory budget, engine settings reaching vLLM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import ROLES, ConfigError, load_config
from simulators.llm import registry
from simulators.llm.config import ModelConfig
from simulators.llm.engines import check_memory_budget, engines, estimate_weights_gib
from simulators.llm.presets import PRESETS, apply_preset, get_preset

REQUIRED = {"kimi-k2-instruct", "deepseek-v3", "qwen3-30b-a3b", "qwen3-235b-a22b"}


def test_the_well_known_moe_presets_exist_and_cite_their_sources() -> None:
    assert set(PRESETS) >= REQUIRED
    for preset in PRESETS.values():
        assert preset.sources and all(s.startswith("https://") for s in preset.sources)
        assert preset.active_params_b < preset.total_params_b
        config = ModelConfig(preset=preset.name)  # every preset is a valid config
        assert config.model == preset.model
        assert config.tensor_parallel_size * 1 <= preset.gpus
        assert config.kv_cache_gib is None and not config.enforce_eager
    assert get_preset("kimi-k2-instruct").settings["tool_call_parser"] == "kimi_k2"
    assert get_preset("deepseek-v3").settings["tool_call_parser"] == "deepseek_v3"
    assert get_preset("deepseek-v3").settings["enable_expert_parallel"] is True
    assert get_preset("qwen3-30b-a3b").settings["tool_call_parser"] == "hermes"


def test_explicit_fields_override_the_preset(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n"
        "  agent:\n"
        "    preset: qwen3-235b-a22b\n"
        "    model: /models/qwen3-235b\n"
        "    tensor_parallel_size: 4\n"
        "    quantization: fp8\n"
        "    engine_args: {max_num_batched_tokens: 8192}\n"
        "    chat_template_kwargs: {enable_thinking: true}\n"
    )
    agent = load_config(path).models.agent
    assert agent.model == "/models/qwen3-235b"
    assert agent.tensor_parallel_size == 4 and agent.quantization == "fp8"
    assert agent.enable_expert_parallel is False  # from the preset: its sources use TP only
    assert agent.tool_call_mode == "native" and agent.tool_call_parser == "hermes"
    assert agent.chat_template_kwargs == {"enable_thinking": True}
    assert agent.engine_args == {"max_num_batched_tokens": 8192}
    merged = apply_preset({"preset": "qwen3-235b-a22b-fp8", "engine_args": {"seed": 1}})
    assert merged["engine_args"] == {"max_num_batched_tokens": 16384, "seed": 1}


def test_an_unknown_preset_is_a_config_error_naming_the_role() -> None:
    with pytest.raises(ConfigError, match=r"models\.judge.*unknown preset 'qwen9'.*qwen3-30b-a3b"):
        load_config(None, {"models.judge.preset": "qwen9"})


def test_native_mode_on_vllm_needs_a_parser() -> None:
    with pytest.raises(ValueError, match="tool_call_parser"):
        ModelConfig(tool_call_mode="native")
    assert ModelConfig(backend="openai", tool_call_mode="native").tool_call_parser is None


def test_roles_with_the_same_model_share_one_engine() -> None:
    registry.clear()
    try:
        shared = ModelConfig(backend="scripted", model="moe-a")
        spelled = ModelConfig(backend="scripted", model="moe-a", weights_gib=3.0)
        other = ModelConfig(backend="scripted", model="moe-b")
        first = registry.get_model(shared)
        assert registry.get_model(ModelConfig(backend="scripted", model="moe-a")) is first
        assert registry.get_model(spelled) is first  # sizing hints are not engine identity
        assert registry.get_model(other) is not first
        assert len(registry.loaded()) == 2
    finally:
        registry.clear()
    # A preset and the same settings spelled out are one engine.
    preset = ModelConfig(preset="qwen3-30b-a3b")
    explicit = ModelConfig(**preset.model_dump(exclude={"preset"}))
    assert preset.key() == explicit.key()


def test_engines_group_roles_by_model() -> None:
    config = load_config(
        None,
        {
            "models.agent.preset": "qwen3-30b-a3b",
            "models.tool.preset": "qwen3-30b-a3b",
        },
    )
    found = engines(config.models.by_role())
    assert [sorted(e.roles) for e in found] == [
        ["judge", "synthesizer", "user"],
        ["agent", "tool"],
    ]
    summary = found[1].summary()
    assert summary["preset"] == "qwen3-30b-a3b" and summary["tool_call_parser"] == "hermes"
    assert summary["weights_gib"] == pytest.approx(56.8, abs=0.1)


def test_memory_budget_is_checked_before_any_engine_starts(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"\0" * (3 << 20))
    (checkpoint / "config.json").write_text("{}")
    weights, source = estimate_weights_gib(ModelConfig(model=str(checkpoint)))
    assert weights == pytest.approx(3 / 1024, abs=1e-3) and "checkpoint files" in source

    fits = {
        "models.memory_budget_gib": 5.0,
        "models.agent.model": str(checkpoint),
        "models.agent.kv_cache_gib": 1.0,
    }
    config = load_config(None, fits)  # embedded (0.25 + 2 KV) + agent (0.003 + 1 KV)
    assert config.models.memory_budget_gib == 5.0
    with pytest.raises(ConfigError, match=r"need 3\.3 GiB but memory_budget_gib is 3") as info:
        load_config(None, {**fits, "models.memory_budget_gib": 3.0})
    assert "agent:" in str(info.value) and "user+tool+judge+synthesizer:" in str(info.value)
    # Same model everywhere: one engine, so it fits in less.
    same = {f"models.{role}.model": str(checkpoint) for role in ROLES}
    load_config(None, {**same, "models.memory_budget_gib": 2.1})


def test_memory_budget_needs_known_weights_and_gpu_shares_that_fit() -> None:
    unknown = r"weights of some engines are unknown.*agent\.weights_gib"
    with pytest.raises(ValueError, match=unknown):
        check_memory_budget(
            {"agent": ModelConfig(model="some-org/not-here")}, budget_gib=100.0
        )
    two = {
        "agent": ModelConfig(preset="qwen3-30b-a3b"),
        "judge": ModelConfig(preset="qwen3-30b-a3b", model="/nope/judge"),
    }
    with pytest.raises(ValueError, match=r"claim 1\.80 of each GPU"):
        check_memory_budget(two, budget_gib=640.0)
    two["agent"] = two["agent"].model_copy(update={"gpu_memory_utilization": 0.45})
    two["judge"] = two["judge"].model_copy(update={"gpu_memory_utilization": 0.45})
    check_memory_budget(two, budget_gib=640.0)
    # Remote (openai) roles take no worker memory.
    check_memory_budget(
        {"agent": ModelConfig(backend="openai", model="kimi-k2")}, budget_gib=1.0
    )


def test_engine_settings_reach_vllms_engine_args(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("vllm")
    from simulators.llm import vllm_backend

    seen: dict[str, Any] = {}

    class FakeAsyncLLM:
        @staticmethod
        def from_engine_args(args: dict[str, Any]) -> str:
            seen.update(args)
            return "engine"

    # Engine args as given, without vLLM resolving the model path (there is no checkpoint).
    monkeypatch.setattr("vllm.engine.arg_utils.AsyncEngineArgs", dict)
    monkeypatch.setattr("vllm.v1.engine.async_llm.AsyncLLM", FakeAsyncLLM)
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    config = ModelConfig(
        preset="deepseek-v3", model="/models/dsv3", gpu_memory_utilization=0.85,
        quantization="fp8", disable_any_whitespace=True,
    )
    assert vllm_backend.VLLMChatModel(config)._start_engine() == "engine"
    assert seen["model"] == "/models/dsv3"
    assert seen["tensor_parallel_size"] == 8 and seen["enable_expert_parallel"] is True
    assert seen["trust_remote_code"] is True and seen["quantization"] == "fp8"
    assert seen["gpu_memory_utilization"] == 0.85 and seen["max_num_seqs"] == 256
    assert seen["enforce_eager"] is False
    assert "kv_cache_memory_bytes" not in seen or seen["kv_cache_memory_bytes"] is None
    assert seen["structured_outputs_config"].backend == "xgrammar"
    assert seen["structured_outputs_config"].disable_any_whitespace is True


def test_native_tool_calls_are_read_by_vllms_parser() -> None:
    pytest.importorskip("vllm")
    from transformers import AutoTokenizer

    from simulators.llm.embedded import embedded_checkpoint
    from simulators.llm.errors import ModelError
    from simulators.llm.vllm_backend import make_tool_parser, parse_native_tool_calls

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(embedded_checkpoint()))
    except Exception as exc:  # the embedded weights package is missing
        pytest.skip(f"no embedded tokenizer: {exc}")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    text = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n' \
        "</tool_call>"
    hermes = make_tool_parser(tokenizer, "hermes")
    content, calls, decoded = parse_native_tool_calls(hermes, text, tools, "s:1")
    assert [c.function.name for c in calls] == ["get_weather"]
    assert json.loads(calls[0].function.arguments) == {"city": "Oslo"}
    assert decoded == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert content == "Let me check."
    again = parse_native_tool_calls(hermes, text, tools, "s:1")[1]
    assert again[0].id == calls[0].id  # ids are deterministic, so reruns match
    content, calls, _ = parse_native_tool_calls(hermes, "Hello!", tools, "s:2")
    assert calls == [] and content == "Hello!"
    with pytest.raises(ModelError, match="unknown vLLM tool parser 'nope'"):
        make_tool_parser(tokenizer, "nope")
    # Through `complete`: native mode sends the tools to the template and parses the answer.
    import asyncio

    from schemas.records import FunctionCall, Message, ToolCall
    from simulators.llm.base import RawCompletion, Sampling
    from simulators.llm.errors import ModelOutputError
    from simulators.llm.vllm_backend import VLLMChatModel

    model = VLLMChatModel(ModelConfig(tool_call_mode="native", tool_call_parser="hermes"))
    model._tool_parser = hermes
    answers = [RawCompletion(text, 40, 20, "stop"), RawCompletion(text[:20], 40, 64, "length")]
    seen: list[Any] = []

    async def fake_generate(chat: Any, schema: Any, sampling: Any, tools: Any = None) -> Any:
        seen.append((schema, tools))
        return answers.pop(0)

    model._generate = fake_generate  # type: ignore[method-assign]
    ask = [Message(role="user", content="Weather in Oslo?")]
    completion = asyncio.run(model.complete(ask, tools=tools, sampling=Sampling(seed=1)))
    assert seen == [(None, tools)], "native mode: tools to the template, no JSON constraint"
    assert completion.model == model.name == "vllm:embedded:smollm2-135m-instruct"
    assert [c.function.name for c in completion.tool_calls] == ["get_weather"]
    assert completion.parsed == {"tool_calls": decoded}
    assert (completion.prompt_tokens, completion.completion_tokens) == (40, 20)
    with pytest.raises(ModelOutputError, match="truncated at 99"):
        asyncio.run(model.complete(ask, tools=tools, sampling=Sampling(seed=1, max_tokens=99)))
    # Earlier turns' calls reach the chat template with their arguments as objects.
    from simulators.llm.vllm_backend import _template_message

    turn = Message(role="assistant", content="", tool_calls=[ToolCall(
        id="c1", function=FunctionCall(name="get_weather", arguments='{"city": "Oslo"}'))])
    assert _template_message(turn)["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
