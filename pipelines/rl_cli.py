"""The RL commands of `agentmill`: `rollout` and `serve-env` (kept apart from `cli.py`, which
registers them, so the mill's own commands stay short)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
err = Console(stderr=True)


def _policy_overrides(
    backend: str | None, model: str | None, base_url: str | None
) -> dict[str, Any]:
    overrides: dict[str, Any] = {
        "models.agent.backend": backend,
        "models.agent.model": model,
        "models.agent.base_url": base_url,
    }
    api_key = os.environ.get("AGENTMILL_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if backend == "openai" and api_key:
        overrides["models.agent.api_key"] = api_key
    return overrides


def rollout_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder with rl/.")],
    out: Annotated[Path, typer.Option(help="Folder for rollouts/, failures/, manifest.json.")],
    k: Annotated[int, typer.Option("--k", help="Rollouts per task (pass^1 .. pass^k).")] = 1,
    backend: Annotated[
        str | None,
        typer.Option(help="Policy backend: vllm, vllm-server or openai (default: the run's agent)"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Policy model (path or served name).")] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint of the policy.")
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML over the run's config (user/tool models, episode, reward)."),
    ] = None,
    in_flight: Annotated[
        int | None, typer.Option(help="Rollouts in flight at once (default: the config's).")
    ] = None,
) -> None:
    """Play every rl/ task K times with a policy; print pass^k and mean rewards."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from pipelines.config import ConfigError
    from pipelines.rollout import RolloutError, rollout

    try:
        manifest = rollout(
            run_dir, out, k, config_path=config,
            overrides=_policy_overrides(backend, model, base_url), in_flight=in_flight,
        )
    except (RolloutError, ConfigError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    finally:
        from pipelines.runtime import close_models

        close_models()  # engines shut down while the console is still open
    counts = manifest["counts"]
    table = Table(title=f"rollouts of {escape(manifest['policy'])}")
    table.add_column("k")
    table.add_column("pass^k")
    k = counts["k"]
    shown = {i for i in range(1, min(k, 5) + 1)} | {2**p for p in range(12) if 2**p <= k} | {k}
    for i, value in manifest["pass_hat_k"].items():
        if int(i) in shown:  # every k is in the manifest; the table keeps a readable few
            table.add_row(i, "-" if value is None else f"{value:.3f}")
    console.print(table)
    means = Table(title="mean rewards")
    for column in ("group", "rollouts", "reward", "outcome", "process"):
        means.add_column(column)
    for group, values in manifest["means"].items():
        means.add_row(
            group, str(values["rollouts"]),
            *(f"{values.get(f'mean_{n}', float('nan')):.3f}"
              for n in ("reward", "outcome_reward", "process_reward")),
        )
    console.print(means)
    err.print(
        f"{counts['rollouts']} rollouts ({counts['reward_1']} with reward 1), "
        f"{counts['failures']} failures, {counts['tasks']} tasks x {counts['k']} "
        f"-> {escape(str(out))}",
        soft_wrap=True,
    )
    if not manifest["reconcile"]["ok"]:
        err.print(f"[red]counts do not reconcile:[/red] {manifest['reconcile']}")
        raise typer.Exit(1)




def serve_env_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder with rl/.")],
    port: Annotated[int, typer.Option(help="TCP port.")] = 8700,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    config: Annotated[
        Path | None,
        typer.Option(help="YAML over the run's config (user/tool models, episode, reward)."),
    ] = None,
    max_sessions: Annotated[int, typer.Option(help="Live sessions at most.")] = 1024,
    idle_seconds: Annotated[
        float, typer.Option(help="Drop a session idle this long.")
    ] = 600.0,
    max_body_kib: Annotated[int, typer.Option(help="Largest request body, KiB.")] = 1024,
) -> None:
    """Serve the run's tasks as environments over HTTP (reset / step / close / tasks)."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from pipelines.config import ConfigError
    from pipelines.envs import RunEnvironments
    from pipelines.runtime import run as run_async
    from pipelines.serve_env import EnvServer, serve

    if not (run_dir / "rl").is_dir():
        err.print(f"[red]error:[/red] {escape(str(run_dir / 'rl'))}: no such folder")
        raise typer.Exit(2)
    from simulators.sandbox import SandboxUnavailable

    try:
        envs = RunEnvironments.open(run_dir, config)
        envs.require_sandbox()  # tasks with files: a sandbox at start, not a 502 per session
    except (ConfigError, SandboxUnavailable) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    for failure in envs.failures:
        err.print(f"[yellow]skipped:[/yellow] {escape(failure.error)}", soft_wrap=True)
    server = EnvServer(
        envs, max_sessions=max_sessions, idle_seconds=idle_seconds,
        max_body_bytes=max_body_kib * 1024,
    )
    err.print(f"serving {len(envs.tasks)} tasks on http://{host}:{port} (Ctrl-C stops)")
    try:
        run_async(serve(server, host, port))
    except KeyboardInterrupt:
        err.print("stopped")


def register(app: typer.Typer) -> None:
    """Add the RL commands to `app`."""
    app.command("rollout")(rollout_command)
    app.command("serve-env")(serve_env_command)
