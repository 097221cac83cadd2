"""`backend: vllm-server`: one server per machine shared by worker processes, stopped with them.

A fake server (`tests/fake_engine_server.py`, started through `server_command`) stands in for
`vllm serve`, and real client processes (`tests/engine_client.py`) stand in for Beam's workers, so
the lock, the leases, the supervisor and the HTTP path are the real ones; only the model is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simulators.llm import registry
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from simulators.llm.engine_server import (
    alive,
    lease_name,
    namespace_id,
    process_id,
    read_json,
    starts,
)
from simulators.llm.engines import engines
from simulators.llm.errors import ModelError, ModelUnavailable
from simulators.llm.server_backend import SharedVLLMChatModel, engine_folder, serve_command

ROOT = Path(__file__).resolve().parent.parent


def fake_config(tmp_path: Path, startup_s: float = 0.5, **fields: Any) -> ModelConfig:
    command = [sys.executable, "-m", "tests.fake_engine_server", "{port}",
               str(tmp_path / "requests.log"), str(startup_s)]
    settings: dict[str, Any] = {
        "backend": "vllm-server", "model": "fake-model", "engine_dir": str(tmp_path / "engines"),
        "engine_linger_s": 0.2, "engine_start_s": 30, "server_wait_s": 20,
        "server_command": command, **fields,
    }
    return ModelConfig(**settings)


def client(config: ModelConfig, requests: int, hold_s: float, how: str = "close",
           *schema: str, prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """A worker process (`tests/engine_client.py`); `schema`: an optional JSON schema text;
    `prefix`: a command to run it under (e.g. `unshare` for another pid namespace)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [*prefix, sys.executable, "-m", "tests.engine_client", config.model_dump_json(),
         str(requests), str(hold_s), how, *schema],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def served(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    """The answers a client process printed (read as soon as it prints them)."""
    assert process.stdout is not None
    line = process.stdout.readline()
    while line.startswith("url "):
        line = process.stdout.readline()
    assert line.startswith("served "), (line, process.stderr.read() if process.stderr else "")
    return [json.loads(text) for text in json.loads(line[len("served "):])]


def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def state(config: ModelConfig) -> dict[str, Any] | None:
    return read_json(engine_folder(config) / "state.json")


def pid_gone(pid: int) -> bool:
    return process_id(pid) is None


def stopped(config: ModelConfig, pids: list[int]) -> bool:
    """The engine's state is gone and so are the supervisor and server processes."""
    return state(config) is None and all(pid_gone(pid) for pid in pids)


def running(config: ModelConfig) -> list[int]:
    """(supervisor, server) pids of the live engine."""
    current = state(config)
    assert current is not None and current["status"] == "ready", current
    assert alive(current["supervisor"], current["supervisor_id"])
    return [current["supervisor"], current["server"]]


def ask(model: SharedVLLMChatModel, said: str) -> dict[str, Any]:
    async def go() -> str:
        return (await model.generate([{"role": "user", "content": said}], None, Sampling())).text

    return json.loads(asyncio.run(go()))


def close(model: SharedVLLMChatModel) -> None:
    asyncio.run(model.close())


def test_concurrent_starters_share_one_server(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    workers = [client(config, 3, 1.0) for _ in range(4)]  # all race to start it
    answers = [served(worker) for worker in workers]
    pids = running(config)
    for worker in workers:
        assert worker.wait(timeout=30) == 0
    servers = {answer["server"] for each in answers for answer in each}
    assert servers == {pids[1]}, "every process was served by the one server"
    assert {answer["said"].split(":")[0] for each in answers for answer in each} == {
        str(worker.pid) for worker in workers
    }
    assert starts(engine_folder(config)) == 1
    requests = (tmp_path / "requests.log").read_text().splitlines()
    assert len(requests) == 12
    wait_until(lambda: stopped(config, pids))


def test_clients_wait_for_readiness_and_the_last_close_stops_it(tmp_path: Path) -> None:
    config = fake_config(tmp_path, startup_s=1.5)
    model = SharedVLLMChatModel(config)
    began = time.monotonic()
    answer = ask(model, "hello")
    assert time.monotonic() - began >= 1.5
    assert model.retries == 0, "requests start once the server answers /health, not before"
    pids = running(config)
    assert answer["server"] == pids[1]
    close(model)
    wait_until(lambda: stopped(config, pids))
    assert list((engine_folder(config) / "leases").iterdir()) == []


def test_server_outlives_a_client_that_exits_and_stops_with_the_last(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    first = client(config, 1, 0.0, "exit")  # exits without cleanup once served
    second = client(config, 1, 4.0)
    served(first)
    served(second)
    pids = running(config)
    first.wait(timeout=30)
    time.sleep(1.0)  # well past linger_s: the second client's lease keeps it
    assert running(config) == pids
    assert second.wait(timeout=30) == 0
    wait_until(lambda: stopped(config, pids))
    assert starts(engine_folder(config)) == 1


def test_a_sigkilled_last_client_still_stops_the_server(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    worker = client(config, 1, 600.0)
    served(worker)
    pids = running(config)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    wait_until(lambda: stopped(config, pids))


def test_stale_state_of_a_dead_supervisor_is_recovered_on_the_same_port(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    model = SharedVLLMChatModel(config)
    first = ask(model, "before")
    old = state(config)
    assert old is not None
    pids = running(config)
    os.kill(pids[0], signal.SIGKILL)  # the supervisor dies; its server gets SIGTERM with it
    wait_until(lambda: pid_gone(pids[0]) and pid_gone(pids[1]))
    # The state still names the dead supervisor; the next request is refused, the client sees
    # the supervisor gone and starts a new one on the same port.
    second = ask(model, "after")
    new = running(config)
    assert second["server"] == new[1] != first["server"]
    assert state(config)["url"] == old["url"]  # type: ignore[index]
    assert starts(engine_folder(config)) == 2
    close(model)
    wait_until(lambda: stopped(config, new))


def test_stale_state_and_leases_left_by_a_crash_do_not_block_a_new_run(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    folder = engine_folder(config)
    (folder / "leases").mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    (folder / "leases" / f"{namespace_id()}-{dead_pid}-12345").touch()
    (folder / "state.json").write_text(json.dumps({
        "supervisor": dead_pid, "supervisor_id": "12345", "port": _free_port(),
        "url": "x", "status": "ready", "error": None,
    }))
    model = SharedVLLMChatModel(config)
    ask(model, "hello")
    pids = running(config)
    assert [lease.name for lease in (folder / "leases").iterdir()] == [lease_name(os.getpid())]
    close(model)
    wait_until(lambda: stopped(config, pids))


def test_a_dead_server_is_restarted_by_the_supervisor_and_requests_wait(tmp_path: Path) -> None:
    config = fake_config(tmp_path, startup_s=1.0)
    model = SharedVLLMChatModel(config)
    ask(model, "before")
    supervisor, server = running(config)
    os.kill(server, signal.SIGKILL)
    answer = ask(model, "after")  # refused while the supervisor restarts it, then served
    assert answer["server"] != server
    # the request may reach the new server before the supervisor's next /health poll marks it
    wait_until(lambda: (state(config) or {}).get("status") == "ready")
    assert running(config) == [supervisor, answer["server"]]
    assert starts(engine_folder(config)) == 2
    assert model.retries >= 1
    close(model)
    wait_until(lambda: stopped(config, [supervisor, answer["server"]]))


def test_a_server_that_never_comes_up_fails_with_its_log(tmp_path: Path) -> None:
    config = fake_config(tmp_path, server_command=[
        sys.executable, "-c", "import sys; print('no such model'); sys.exit(3)"])
    model = SharedVLLMChatModel(config)
    with pytest.raises(ModelError, match=r"exited with code 3 before it was ready.*no such model"):
        ask(model, "hello")
    close(model)
    wait_until(lambda: state(config) is None)


def test_the_server_command_carries_the_engine_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("simulators.llm.server_backend.resolve_model_path", lambda m: f"/w/{m}")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    config = ModelConfig(
        backend="vllm-server", preset="qwen3-235b-a22b", model="/models/Qwen3",
        gpu_memory_utilization=0.85, quantization="fp8", enable_expert_parallel=True,
        engine_args={"enable_prefix_caching": False, "pipeline_parallel_size": 2},
    )
    command = serve_command(config)
    text = " ".join(command)
    assert command[command.index("--model") + 1] == "/w//models/Qwen3"
    for part in ("--served-model-name /models/Qwen3", "--tensor-parallel-size 8",
                 "--enable-expert-parallel", "--quantization fp8",
                 "--gpu-memory-utilization 0.85", "--enable-auto-tool-choice",
                 "--tool-call-parser hermes", "--max-model-len 32768", "--max-num-seqs 256",
                 "--no-enable-prefix-caching", "--pipeline-parallel-size 2", "--port {port}"):
        assert part in text, part
    assert "--enforce-eager" not in command  # the GPU preset keeps CUDA graphs
    assert "--kv-cache-memory-bytes" not in command  # sized from the GPU share
    embedded = serve_command(ModelConfig(backend="vllm-server"))
    assert "--enforce-eager" in embedded
    assert embedded[embedded.index("--kv-cache-memory-bytes") + 1] == str(2 << 30)
    assert json.loads(embedded[embedded.index("--structured-outputs-config") + 1]) == {
        "backend": "xgrammar", "disable_any_whitespace": True}
    assert "--no-enable-chunked-prefill" in embedded  # the CPU build's fix, as in process
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # set by hand: it wins, as in process
    assert "--kv-cache-memory-bytes" not in serve_command(ModelConfig(backend="vllm-server"))


def test_settings_that_only_say_how_share_one_folder_and_count_as_local(tmp_path: Path) -> None:
    a = fake_config(tmp_path, engine_linger_s=1.0)
    b = fake_config(tmp_path, engine_linger_s=5.0)
    assert engine_folder(a) == engine_folder(b)
    assert engine_folder(a) != engine_folder(fake_config(tmp_path, max_num_seqs=8))
    assert engines({"agent": a})[0].in_process  # its memory and GPUs are the worker's
    assert isinstance(registry._create(a), SharedVLLMChatModel)


def _free_port() -> int:
    from simulators.llm.engine_server import free_port

    return free_port()


def test_many_requests_at_once_attach_once(tmp_path: Path) -> None:
    config = fake_config(tmp_path)
    model = SharedVLLMChatModel(config)
    attached: list[float] = []
    original = model._attach

    async def counted() -> None:
        attached.append(time.monotonic())
        await original()

    model._attach = counted  # type: ignore[method-assign]

    async def burst() -> list[str]:
        async def one(index: int) -> str:
            said = [{"role": "user", "content": str(index)}]
            return (await model.generate(said, None, Sampling())).text

        return await asyncio.gather(*(one(index) for index in range(50)))

    answers = [json.loads(text) for text in asyncio.run(burst())]
    assert len(attached) == 1
    assert sorted(int(answer["said"]) for answer in answers) == list(range(50))
    pids = running(config)
    close(model)
    wait_until(lambda: stopped(config, pids))


def test_another_namespaces_supervisor_is_judged_by_its_heartbeat_not_its_pid(
    tmp_path: Path,
) -> None:
    """State written from another pid namespace: its pids mean nothing here, so a client joins
    while the supervisor's beat is fresh, and replaces it only once the beat is stale."""
    timeout = 2.0
    config = fake_config(tmp_path, engine_lease_timeout_s=timeout)
    first = SharedVLLMChatModel(config)
    ask(first, "first")
    supervisor, server = running(config)
    path = engine_folder(config) / "state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pidns": "pid:[1]"}))
    second = SharedVLLMChatModel(config)
    assert ask(second, "second")["server"] == server, "joined, not refused nor started anew"
    assert starts(engine_folder(config)) == 1
    os.kill(supervisor, signal.SIGKILL)  # its server follows it; only the beat tells
    killed = time.monotonic()
    wait_until(lambda: pid_gone(server))  # else a loaded machine lets the old server answer
    answer = ask(second, "after")
    waited = time.monotonic() - killed
    assert answer["server"] != server and starts(engine_folder(config)) == 2
    assert waited >= timeout * 0.7, f"replaced after {waited:.1f} s: judged by pid, not beat"
    pids = running(config)
    close(first)
    close(second)
    wait_until(lambda: stopped(config, pids))


UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc")


def _other_namespaces() -> str | None:
    """Why a client cannot run in another pid namespace here, or None when it can."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and util-linux's unshare for a client in another pid namespace"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --pid refused here: {probe.stderr.strip()}"
    return None


def _inner(process: subprocess.Popen[str]) -> int:
    """The client process `unshare --fork` started (its pid as this namespace sees it)."""
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.mark.skipif(_other_namespaces() is not None, reason=str(_other_namespaces()))
def test_a_client_in_another_pid_namespace_shares_the_server_and_its_sigkill_stops_it(
    tmp_path: Path,
) -> None:
    timeout = 2.0
    config = fake_config(tmp_path, engine_lease_timeout_s=timeout)
    host = client(config, 1, 1.0)
    served(host)
    pids = running(config)
    other = client(config, 2, 600.0, prefix=UNSHARE)  # e.g. another SDK container
    answers = served(other)
    assert {answer["server"] for answer in answers} == {pids[1]}, "attached, not refused"
    assert [answer["said"] for answer in answers] == ["1:0", "1:1"], "pid 1 of its namespace"
    assert starts(engine_folder(config)) == 1
    assert host.wait(timeout=30) == 0
    leases = [lease.name for lease in (engine_folder(config) / "leases").iterdir()]
    assert len(leases) == 1 and not leases[0].startswith(namespace_id() + "-"), leases
    time.sleep(2 * timeout)  # its pid means nothing here: its heartbeats keep the server
    assert running(config) == pids
    os.kill(_inner(other), signal.SIGKILL)
    killed = time.monotonic()
    wait_until(lambda: stopped(config, pids), timeout=timeout + 10)
    took = time.monotonic() - killed
    # dropped once its lease is `timeout` old (last beat up to timeout/5 before the kill)
    assert took >= timeout * 0.8 - 0.1, f"stopped {took:.1f} s after the kill"
    other.wait(timeout=10)
    print(f"server stopped {took:.1f} s after the other namespace's client was SIGKILLed "
          f"(lease timeout {timeout} s, linger {config.engine_linger_s} s)")


@pytest.mark.skipif(_other_namespaces() is not None, reason=str(_other_namespaces()))
def test_a_server_started_in_a_namespace_that_ends_is_replaced_by_another_namespace(
    tmp_path: Path,
) -> None:
    """The server lives in the container of the client that started it; when that container
    ends, so do its supervisor and server, and a client elsewhere starts a new one once the
    supervisor's beat is stale (it cannot see those pids)."""
    timeout = 2.0
    config = fake_config(tmp_path, engine_lease_timeout_s=timeout)
    other = client(config, 1, 600.0, prefix=UNSHARE)
    served(other)
    first = state(config)
    assert first is not None and first["pidns"] != os.readlink("/proc/self/ns/pid")
    model = SharedVLLMChatModel(config)
    ask(model, "joined")
    assert starts(engine_folder(config)) == 1, "joined the other namespace's server"
    os.kill(_inner(other), signal.SIGKILL)  # its pid 1: the whole namespace ends
    other.wait(timeout=10)
    ended = time.monotonic()
    ask(model, "after")
    waited = time.monotonic() - ended
    assert starts(engine_folder(config)) == 2
    assert waited >= timeout * 0.7, f"replaced after {waited:.1f} s"
    pids = running(config)  # now a supervisor of this namespace
    assert state(config)["url"] == first["url"]  # type: ignore[index]
    close(model)
    wait_until(lambda: stopped(config, pids))


def test_a_stalled_client_loses_its_lease_and_joins_anew_when_it_resumes(
    tmp_path: Path,
) -> None:
    timeout = 1.5
    config = fake_config(tmp_path, engine_lease_timeout_s=timeout)
    worker = client(config, 1, 6.0, "again")
    first = served(worker)
    pids = running(config)
    worker.send_signal(signal.SIGSTOP)  # alive, but its heartbeat stalls
    stalled = time.monotonic()
    try:
        wait_until(lambda: stopped(config, pids), timeout=timeout + 10)
        took = time.monotonic() - stalled
        assert took >= timeout * 0.8 - 0.1, f"stopped {took:.1f} s after SIGSTOP"
        assert alive(worker.pid, process_id(worker.pid)), "the client itself lives on"
        assert list((engine_folder(config) / "leases").iterdir()) == []
    finally:
        worker.send_signal(signal.SIGCONT)
    again = served(worker)  # its next requests start a server for it again
    assert {answer["server"] for answer in again} != {first[0]["server"]}
    assert starts(engine_folder(config)) == 2
    assert worker.wait(timeout=30) == 0
    wait_until(lambda: state(config) is None)


def test_a_stalled_client_takes_its_lease_again_while_others_keep_the_server(
    tmp_path: Path,
) -> None:
    timeout = 1.5
    config = fake_config(tmp_path, engine_lease_timeout_s=timeout)
    keeper = client(config, 1, 600.0)
    served(keeper)
    pids = running(config)
    stalled = client(config, 1, 6.0, "again")
    served(stalled)
    leases = engine_folder(config) / "leases"
    mine = lease_name(stalled.pid)
    stalled.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: not (leases / mine).exists(), timeout=timeout + 10)
        assert running(config) == pids, "the keeper's lease keeps the server"
    finally:
        stalled.send_signal(signal.SIGCONT)
    # its heartbeat takes it again within a beat or two, before its next requests (at 6 s)
    wait_until(lambda: (leases / mine).exists(), timeout=1.5)
    assert {answer["server"] for answer in served(stalled)} == {pids[1]}
    assert starts(engine_folder(config)) == 1
    assert stalled.wait(timeout=30) == 0
    keeper.send_signal(signal.SIGKILL)
    keeper.wait(timeout=10)
    wait_until(lambda: stopped(config, pids))


def test_a_dead_supervisor_is_replaced_once_for_all_the_processes_that_notice(
    tmp_path: Path,
) -> None:
    config = fake_config(tmp_path)
    workers = [client(config, 2, 2.0, "again") for _ in range(3)]
    before = {answer["server"] for worker in workers for answer in served(worker)}
    pids = running(config)
    assert before == {pids[1]}
    os.kill(pids[0], signal.SIGKILL)  # supervisor gone, its server follows it
    wait_until(lambda: pid_gone(pids[1]))
    # Each worker's next requests are refused; each looks at the state, and under the lock the
    # first starts a new supervisor while the others join it.
    after = {answer["server"] for worker in workers for answer in served(worker)}
    new = running(config)
    assert after == {new[1]} and new[1] != pids[1]
    assert starts(engine_folder(config)) == 2
    for worker in workers:
        assert worker.wait(timeout=30) == 0
    wait_until(lambda: stopped(config, new))


def test_a_server_dead_past_its_restarts_stops_the_waiting_requests(tmp_path: Path) -> None:
    config = fake_config(tmp_path, engine_restarts=0)
    model = SharedVLLMChatModel(config)
    ask(model, "before")
    supervisor, server = running(config)
    os.kill(server, signal.SIGKILL)
    began = time.monotonic()
    with pytest.raises(ModelUnavailable, match="exited with code -9"):
        ask(model, "after")
    assert time.monotonic() - began < 10, "not the whole server_wait_s"
    close(model)
    wait_until(lambda: stopped(config, [supervisor, server]))
