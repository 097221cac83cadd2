"""The `agentmill` command: run the mill, look at what it made, check tool specs."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.text import Text

app = typer.Typer(
    help="Synthetic agentic data: tool specs in, simulated tool-use trajectories out.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
toolspecs_app = typer.Typer(help="Check and convert tool specs.", no_args_is_help=True)
app.add_typer(toolspecs_app, name="toolspecs")

console = Console()
ROLE_STYLES = {"system": "dim", "user": "bold cyan", "assistant": "bold green"}
err = Console(stderr=True)


@app.command()
def run(
    out: Annotated[str | None, typer.Option(help="Output folder.")] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes to simulate.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file.")] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed.")] = None,
    tool_specs: Annotated[
        list[str] | None,
        typer.Option("--tool-specs", help="Spec files or folders (default: the seed library)."),
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="Backend for every role: vllm or openai.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model for every role (path or served name).")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint for the openai backend.")
    ] = None,
) -> None:
    """Run the mill end to end and write the output folder (sft/, rl/, manifest.json...)."""
    # vLLM logs every engine step at INFO; keep the terminal for agentmill's progress lines.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from pipelines.config import ROLES, ConfigError, load_config

    overrides: dict[str, Any] = {"out": out, "episodes": episodes, "seed": seed}
    if tool_specs:
        overrides["toolspecs"] = tool_specs
    api_key = os.environ.get("AGENTMILL_API_KEY") or os.environ.get("OPENAI_API_KEY")
    for role in ROLES:
        overrides[f"models.{role}.backend"] = backend
        overrides[f"models.{role}.model"] = model
        overrides[f"models.{role}.base_url"] = base_url
        if backend == "openai" and api_key:
            overrides[f"models.{role}.api_key"] = api_key
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc

    from pipelines.run import run as run_mill

    manifest = run_mill(cfg)
    counts = manifest["counts"]
    err.print(
        f"[green]done[/green] in {manifest['timings']['wall_seconds']} s: "
        f"{counts['sft']} sft, {counts['rejected']} rejected, {counts['failures']} failures, "
        f"{counts['rl']} rl tasks -> {cfg.out}"
    )
    if not manifest["reconcile"]["ok"]:
        err.print(f"[red]counts do not reconcile:[/red] {manifest['reconcile']}")
        raise typer.Exit(1)


@app.command()
def sample(
    path: Annotated[Path, typer.Argument(help="A Parquet file or folder (e.g. runs/demo/sft).")],
    n: Annotated[int, typer.Option("-n", help="How many to show.")] = 3,
    seed: Annotated[int | None, typer.Option(help="Pick at random with this seed.")] = None,
) -> None:
    """Show trajectories from an output folder, readably."""
    from pipelines.parquet_io import read_rows

    try:
        rows = read_rows(path)
    except FileNotFoundError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    if not rows:
        err.print(f"{path}: no rows")
        raise typer.Exit(1)
    if seed is not None:
        rows = random.Random(seed).sample(rows, k=min(n, len(rows)))
    for row in rows[:n]:
        console.print(render_row(row))


def render_row(row: dict[str, Any]) -> Panel:
    """A trajectory (or any row with `messages`) as a terminal panel."""
    body = Text()
    for message in row.get("messages") or row.get("prompt") or []:
        role = message["role"]
        style = ROLE_STYLES.get(role, "yellow")
        if message.get("tool_calls"):
            for call in message["tool_calls"]:
                fn = call["function"]
                body.append("assistant → ", style=style)
                body.append(f"{fn['name']}({fn['arguments']})\n", style="magenta")
            continue
        label = f"tool {message.get('name') or ''}".strip() if role == "tool" else role
        content = message.get("content") or ""
        if role in ("system", "tool") and len(content) > 400:
            content = content[:400] + " …"
        body.append(f"{label}: ", style=style)
        body.append(content + "\n")
    if not row.get("messages") and not row.get("prompt"):
        body.append(json.dumps(row, indent=2, default=str)[:2000])
    title_parts = [row.get("id", ""), row.get("domain", ""), row.get("end_reason", "")]
    if row.get("judge_score") is not None:
        title_parts.append(f"judge {row['judge_score']:.2f}")
    return Panel(body, title=" · ".join(p for p in title_parts if p), title_align="left")


@toolspecs_app.command("validate")
def validate(
    paths: Annotated[list[Path], typer.Argument(help="Spec files or folders of them.")],
) -> None:
    """Check tool spec files; exit 1 if any tool is invalid, naming file, tool and pointer."""
    from schemas.records import Failure
    from toolspecs.load import load_paths, spec_files

    files = spec_files(paths)
    if not files:
        err.print("[red]error:[/red] no spec files found under " + ", ".join(map(str, paths)))
        raise typer.Exit(2)
    valid = invalid = 0
    for item in load_paths(paths):
        if isinstance(item, Failure):
            invalid += 1
            for problem in item.error.splitlines():
                console.print(f"[red]✗[/red] {escape(problem)}", highlight=False, soft_wrap=True)
        else:
            valid += 1
    summary = f"{valid} valid, {invalid} invalid in {len(files)} file(s)"
    console.print(summary if invalid == 0 else f"[red]{summary}[/red]")
    if invalid:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
