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


@app.command(context_settings={"allow_extra_args": True})
def run(
    ctx: typer.Context,
    out: Annotated[
        str | None, typer.Option(help="Output folder, local or a URI such as gs://bucket/runs/x.")
    ] = None,
    episodes: Annotated[int | None, typer.Option(help="Episodes to simulate.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML config file.")] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed.")] = None,
    tool_specs: Annotated[
        list[str] | None,
        typer.Option("--tool-specs", help="Spec files or folders (default: the seed library)."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            help="Backend for every role: vllm (in process), vllm-server (one vLLM server per "
            "machine, shared by its worker processes) or openai."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model for every role (path or served name).")
    ] = None,
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible endpoint for the openai backend.")
    ] = None,
    domain: Annotated[
        str | None,
        typer.Option(help="A tau-bench-like domain folder (policy.md, tools.json, tasks.json)."),
    ] = None,
    allow_entrypoints: Annotated[
        bool | None,
        typer.Option(
            "--allow-entrypoints",
            help="Run tools whose spec names an entrypoint as real Python (trusted specs only).",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Let the run replace its own entries (sft/, tasks/, manifest.json...) in a "
            "non-empty folder that is not an agentmill run; nothing else there is touched.",
        ),
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", "-v",
            help="Also show vLLM's and other libraries' warnings and one line per finished item "
            "(OUT/agentmill.log keeps them either way).",
        ),
    ] = False,
) -> None:
    """Run the mill end to end and write the output folder (sft/, rl/, manifest.json...).

    Arguments after `--` go to Beam, e.g. `-- --runner=DataflowRunner --project=P ...`;
    without them the mill runs in process.
    """
    from pipelines.config import ROLES, ConfigError, load_config

    overrides: dict[str, Any] = {"out": out, "episodes": episodes, "seed": seed}
    overrides["domain"] = domain
    overrides["episode.allow_entrypoints"] = allow_entrypoints
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
        cfg = load_config(config, overrides, sources=_flag_sources(overrides))
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    beam_args = [a for a in ctx.args if a != "--"]
    # A job on remote workers may reach servers this machine cannot: check names, not sockets.
    remote_runner = any(a.startswith("--runner") and "direct" not in a.lower() for a in beam_args)
    _preflight_or_exit(cfg, probe=not remote_runner)

    from pipelines.console import log_path_for, run_console
    from pipelines.outdir import OutputError, check_claimable

    try:  # before the log is opened there: a folder that is not ours gets nothing written
        check_claimable(cfg.out, force)
    except OutputError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    with run_console(log_path_for(cfg.out), verbose) as user:
        err.file = user  # sys.stderr now holds only what others write
        try:
            _run_and_report(cfg, beam_args, force)
        finally:
            err.file = None  # type: ignore[assignment]  # back to the current sys.stderr


def _run_and_report(cfg: Any, beam_args: list[str], force: bool = False) -> None:
    """Run the mill, then say how it went: the counts, the top failure reasons, the exit code."""
    from pipelines.batching import RunStopped
    from pipelines.dataflow import pipeline_from_args
    from pipelines.outdir import OutputError
    from pipelines.progress import BOARD
    from pipelines.run import run as run_mill

    try:
        manifest = run_mill(cfg, pipeline_from_args(beam_args) if beam_args else None, force=force)
    except OutputError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    except RunStopped as exc:
        reasons = BOARD.reasons()[:5]
        if reasons:
            err.print("top failure reasons:")
            for stage, reason, n in reasons:
                err.print(f"  {n} × {stage}: {escape(reason)}", highlight=False, soft_wrap=True)
        err.print(f"[yellow]{escape(str(exc))}[/yellow]", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from exc
    reused = manifest.get("resume", {}).get("reused", {})
    if any(reused.values()):
        err.print(
            "reused from the checkpoint: "
            + ", ".join(f"{n} {stage}" for stage, n in reused.items() if n)
        )
    from pipelines.outcome import judge_outcome

    counts = manifest["counts"]
    outcome = judge_outcome(manifest, cfg.out, dry_run=_is_dry_run(beam_args))
    if outcome.reasons:
        err.print("top failure reasons (all in failures/):")
        for line in outcome.reasons:
            err.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    verdict = "[green]done[/green]" if outcome.exit_code == 0 else "[red]failed[/red]"
    err.print(
        f"{verdict} in {manifest['timings']['wall_seconds']} s: "
        f"{counts['sft']} sft, {counts['rejected']} rejected, {counts['failures']} failures, "
        f"{counts['rl']} rl tasks -> {escape(str(cfg.out))}",
        soft_wrap=True,
    )
    for problem in outcome.problems:
        err.print(f"[red]{escape(problem)}[/red]", soft_wrap=True)
    if not manifest["reconcile"]["ok"]:
        err.print(f"[red]counts do not reconcile:[/red] {manifest['reconcile']}")
        raise typer.Exit(1)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


def _is_dry_run(beam_args: list[str]) -> bool:
    """A Dataflow dry run translates the job and runs nothing: no episode is not a failure."""
    return any(a in ("--dry_run", "--dry_run=True", "--dry_run=true") for a in beam_args)


FLAG_SOURCES = {
    "out": "--out", "episodes": "--episodes", "seed": "--seed", "domain": "--domain",
    "toolspecs": "--tool-specs", "episode.allow_entrypoints": "--allow-entrypoints",
}


def _flag_sources(overrides: dict[str, Any]) -> dict[str, str]:
    """The flag behind each override key, so a bad value is blamed on the flag that set it."""
    sources = dict(FLAG_SOURCES)
    for key in overrides:
        if key.endswith(".api_key"):
            sources[key] = "the AGENTMILL_API_KEY / OPENAI_API_KEY environment variable"
        elif key.startswith("models."):
            sources[key] = "--" + key.rsplit(".", 1)[1].replace("_", "-")
    return sources


def _preflight_or_exit(cfg: Any, probe: bool = True) -> None:
    """Stop before anything is written when the run cannot work (exit 2), naming why."""
    from pipelines.preflight import preflight

    found = preflight(cfg, probe)
    for warning in found.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False, soft_wrap=True)
    if found.ok:
        return
    for problem in found.problems:
        err.print(f"[red]✗[/red] {escape(problem)}", highlight=False, soft_wrap=True)
    err.print("[red]error:[/red] the run cannot start; nothing was written")
    raise typer.Exit(2)


@app.command()
def sample(
    path: Annotated[
        Path, typer.Argument(help="A run folder, or a Parquet folder or file (e.g. runs/demo/sft).")
    ],
    n: Annotated[int, typer.Option("-n", help="How many to show.")] = 3,
    seed: Annotated[int | None, typer.Option(help="Pick at random with this seed.")] = None,
    domain: Annotated[str | None, typer.Option(help="Only this domain.")] = None,
    passed: Annotated[
        bool | None,
        typer.Option("--passed/--rejected", help="Only passing (sft/) or only rejected ones."),
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Only trajectories the judge scored at least this.")
    ] = None,
    has_error: Annotated[
        bool, typer.Option("--has-error", help="Only trajectories where a tool returned an error.")
    ] = False,
) -> None:
    """Show trajectories from a run or an output folder, readably, optionally filtered."""
    from pipelines.parquet_io import count_rows, read_rows

    sources = _sample_sources(path, passed)
    try:
        rows = [row for source in sources for row in read_rows(source)]
    except FileNotFoundError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    filters = _describe_filters(domain, passed, min_score, has_error)
    matching = [r for r in rows if _matches(r, domain, passed, min_score, has_error)]
    if not matching:
        where = ", ".join(escape(str(s)) for s in sources)
        if not rows:
            err.print(f"{where}: no rows")
        else:
            err.print(f"{where}: no rows match {filters} (of {len(rows)} rows)")
        rejected = _rejected_sibling(sources)
        held = count_rows(rejected) if rejected is not None else 0
        if held:
            noun = "trajectory is" if held == 1 else "trajectories are"
            err.print(
                f"{held} rejected {noun} in {escape(str(rejected))}: "
                f"agentmill sample {escape(str(rejected))}"
            )
        raise typer.Exit(1)
    total = len(matching)
    if seed is not None:
        matching = random.Random(seed).sample(matching, k=min(n, total))
    for row in matching[:n]:
        console.print(render_row(row))
    if filters:
        err.print(f"showed {min(n, total)} of {total} rows matching {filters}")


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_dir() for f in ("sft", "rejected"))


def _sample_sources(path: Path, passed: bool | None) -> list[Path]:
    """The folders to sample: a run folder means sft/ and/or rejected/, anything else itself."""
    if not _is_run_folder(path):
        return [path]
    folders = {True: ["sft"], False: ["rejected"], None: ["sft", "rejected"]}[passed]
    return [path / f for f in folders if (path / f).is_dir()] or [path / folders[0]]


def _rejected_sibling(sources: list[Path]) -> Path | None:
    """The run's rejected/ folder when every sampled source was its sft/."""
    if all(s.name == "sft" for s in sources):
        sibling = sources[0].parent / "rejected"
        return sibling if sibling.is_dir() else None
    return None


def _status(row: dict[str, Any]) -> bool | None:
    """True for a passing (sft) row, False for a rejected one, None if it was not judged."""
    if "judgement" in row or "failed_checks" in row:
        return False
    return True if "judge_score" in row else None


def _matches(
    row: dict[str, Any],
    domain: str | None,
    passed: bool | None,
    min_score: float | None,
    has_error: bool,
) -> bool:
    from pipelines.stats import has_tool_error

    if domain is not None and row.get("domain") != domain:
        return False
    if passed is not None and _status(row) is not passed:
        return False
    if min_score is not None and (row.get("judge_score") is None or row["judge_score"] < min_score):
        return False
    return not has_error or has_tool_error(row.get("messages") or [])


def _describe_filters(
    domain: str | None, passed: bool | None, min_score: float | None, has_error: bool
) -> str:
    parts = []
    if domain is not None:
        parts.append(f"--domain {domain}")
    if passed is not None:
        parts.append("--passed" if passed else "--rejected")
    if min_score is not None:
        parts.append(f"--min-score {min_score}")
    if has_error:
        parts.append("--has-error")
    return " ".join(parts)


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
    if "failed_checks" in row or "judgement" in row:
        from pipelines.stats import rejection_reasons

        reasons = "; ".join(rejection_reasons(row.get("failed_checks"), detail=True))
        body.append(f"rejected: {reasons}\n", style="red")
    title_parts = [row.get("id", ""), row.get("domain", ""), row.get("end_reason", "")]
    if row.get("judge_score") is not None:
        title_parts.append(f"judge {row['judge_score']:.2f}")
    return Panel(body, title=" · ".join(p for p in title_parts if p), title_align="left")


@app.command()
def stats(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (with manifest.json).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print a run's numbers: the same ones its dataset card shows."""
    from rich.table import Table

    from pipelines.stats import run_stats, summary_rows

    try:
        numbers = run_stats(run_dir)
    except FileNotFoundError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if as_json:
        numbers = {k: v for k, v in numbers.items() if k != "series"}
        console.print_json(json.dumps(numbers, default=str))
        return
    table = Table(title=f"agentmill run {escape(numbers['name'])}", title_justify="left")
    for column in ("section", "statistic", "value"):
        table.add_column(column, justify="right" if column == "value" else "left")
    previous = None
    for section, statistic, value in summary_rows(numbers):
        table.add_row(
            section if section != previous else "",
            escape(str(statistic)),
            escape(str(value)),
            end_section=False,
        )
        previous = section
    console.print(table)


@app.command()
def plan(
    episodes: Annotated[int, typer.Option(help="Episodes the planned run would simulate.")],
    config: Annotated[
        Path | None, typer.Option(help="YAML config of the planned run (its models per role).")
    ] = None,
    from_run: Annotated[
        str | None,
        typer.Option(help="A finished small run to scale from (default: the config's out)."),
    ] = None,
    tokens_per_second: Annotated[
        float | None,
        typer.Option(help="Prompt + completion tokens/s per engine (default: the preset's)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Size a run before launching it: tokens, requests and GPU-hours for N episodes."""
    from rich.table import Table

    from pipelines.config import ConfigError, load_config
    from pipelines.plan import PlanError, make_plan, read_manifest

    if episodes < 1:
        err.print("[red]error:[/red] --episodes must be at least 1")
        raise typer.Exit(2)
    try:
        cfg = load_config(config)
        run_dir = from_run or cfg.out
        result = make_plan(
            cfg, episodes, read_manifest(run_dir), tokens_per_second, source=str(run_dir)
        )
    except (ConfigError, PlanError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from exc
    if as_json:
        console.print_json(json.dumps(result.to_json()))
        return
    roles = Table(
        title=f"{episodes:,} episodes, scaled from {result.sample_episodes} in "
        f"{escape(result.sample_run)}",
        title_justify="left",
    )
    for column in ("role", "prompt tokens", "completion tokens", "requests"):
        roles.add_column(column, justify="left" if column == "role" else "right")
    for need in result.roles:
        roles.add_row(need.role, f"{need.prompt:,}", f"{need.completion:,}", f"{need.requests:,}")
    console.print(roles)
    table = Table(title="per engine", title_justify="left")
    for column in ("model", "roles", "tokens", "tokens/s", "GPUs", "engine-hours", "GPU-hours"):
        table.add_column(column, justify="left" if column in ("model", "roles") else "right")
    for engine in result.engines:
        rate = f"{engine.tokens_per_second:,.0f}" if engine.tokens_per_second else "?"
        table.add_row(
            escape(engine.model),
            "+".join(engine.roles),
            f"{engine.tokens:,}",
            rate,
            str(engine.gpus),
            "?" if engine.engine_hours is None else f"{engine.engine_hours:,.2f}",
            "?" if engine.gpu_hours is None else f"{engine.gpu_hours:,.2f}",
        )
    console.print(table)
    for engine in result.engines:
        console.print(f"  {escape(engine.model)}: throughput from {escape(engine.throughput_from)}")
    total = result.gpu_hours
    console.print(
        f"total: {'?' if total is None else f'{total:,.2f}'} GPU-hours "
        "(token counts are the small run's models'; throughput is per engine at full batch)",
        highlight=False,
    )


@app.command("export")
def export_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder.")],
    fmt: Annotated[
        str, typer.Option("--format", help="trl, sharegpt, hermes or verl.")
    ],
    out: Annotated[Path, typer.Option(help="Folder to write (data/, export.json, README.md).")],
    shards: Annotated[int, typer.Option(help="Parquet files per split, balanced by tokens.")] = 1,
    val_fraction: Annotated[
        float, typer.Option(help="Share of rows, by id hash, in the validation split.")
    ] = 0.0,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Also write JSONL (jsonl/).")] = False,
) -> None:
    """Write a run's sft/ (or rl/ for verl) in a trainer's format, split and sharded."""
    from pipelines.export import ExportError, export

    try:
        summary = export(run_dir, fmt, out, shards, val_fraction, jsonl)
    except ExportError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from exc
    for split, info in summary["splits"].items():
        tokens = [shard["tokens"] for shard in info["shards"]]
        console.print(
            f"{split}: {info['rows']} rows, {len(tokens)} shard(s), {info['tokens']:,} tokens "
            f"(per shard {min(tokens):,} to {max(tokens):,})",
            highlight=False,
        )
    if summary["skipped"]:
        err.print(
            f"[yellow]{len(summary['skipped'])} row(s) skipped[/yellow] "
            f"(reasons in {escape(str(out / 'export.json'))})"
        )
    console.print(f"{fmt} export -> {escape(str(out))}", highlight=False)


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


@toolspecs_app.command("import")
def import_command(
    paths: Annotated[list[Path], typer.Argument(help="Spec files or folders of them.")],
    source: Annotated[str, typer.Option("--from", help="mcp, openai or bfcl.")],
    out: Annotated[Path, typer.Option(help="Folder for specs/, failures/, import_report.json.")],
) -> None:
    """Convert real specs to ToolSpecs: known flaws repaired, the rest refused; with a report."""
    from toolspecs.importers import FORMATS, import_specs

    if source not in FORMATS:
        err.print(f"[red]error:[/red] --from must be one of {', '.join(FORMATS)}, not {source!r}")
        raise typer.Exit(2)
    summary = import_specs([str(p) for p in paths], source, out)  # type: ignore[arg-type]
    for detail in summary["details"]:
        if detail["status"] == "refused":
            err.print(f"[red]✗[/red] {escape(detail['reason'].splitlines()[0])}",
                      highlight=False, soft_wrap=True)
    counts = summary["counts"]
    repairs = ", ".join(f"{k} {v}" for k, v in summary["repairs"].items()) or "none"
    console.print(
        f"{counts['seen']} tools in {summary['files']} file(s): {counts['imported']} imported, "
        f"{counts['repaired']} repaired, {counts['refused']} refused -> {escape(str(out))}\n"
        f"repairs: {repairs}",
        highlight=False,
    )


@toolspecs_app.command("synth")
def synth_command(
    target: Annotated[int, typer.Option(help="Tools to synthesize (before dedup).")],
    out: Annotated[Path, typer.Option(help="Pool folder (toolspecs/, specs/, pool_report.json).")],
    seeds: Annotated[
        list[str] | None, typer.Option("--seeds", help="Seed spec files or folders (default: "
                                       "the library); e.g. an import's DIR/specs.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Pool seed.")] = 0,
    tools_per_domain: Annotated[
        int, typer.Option(help="Grow ceil(target / this) new domains.")
    ] = 25,
    backend: Annotated[str | None, typer.Option(help="vllm, vllm-server or openai.")] = None,
    model: Annotated[str | None, typer.Option(help="Synthesizer model.")] = None,
    base_url: Annotated[str | None, typer.Option(help="Endpoint for the openai backend.")] = None,
) -> None:
    """Grow a taxonomy and evolve new tools from seeds; dedup; write the pool and its report."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from pipelines.pool import PoolConfig, run_synth
    from simulators.llm.config import ModelConfig

    fields: dict[str, Any] = {"backend": backend, "model": model, "base_url": base_url}
    api_key = os.environ.get("AGENTMILL_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if backend == "openai" and api_key:
        fields["api_key"] = api_key
    synthesizer = ModelConfig.model_validate({k: v for k, v in fields.items() if v is not None})
    config = PoolConfig(out=str(out), target=target, seed=seed, seeds=seeds or [],
                        tools_per_domain=tools_per_domain, synthesizer=synthesizer)
    summary = run_synth(config)
    pool, near = summary["pool"], summary["near_duplicates"]
    console.print(
        f"{pool['kept']} tools kept in {summary['domains']['count']} domains "
        f"({summary['domains']['categories']} categories): {pool['seeds']} seeds + "
        f"{pool['synthesized']} synthesized - {pool['exact_duplicates_removed']} exact and "
        f"{pool['near_duplicates_removed']} near duplicates; "
        f"{summary['reconcile']['synthesis_failures']} failures; near-duplicate rate "
        f"{near['rate']:.1%}; {summary['seconds']} s -> {escape(str(out))}",
        highlight=False,
    )
    if not summary["reconcile"]["ok"]:
        err.print(f"[red]counts do not reconcile:[/red] {summary['reconcile']}")
        raise typer.Exit(1)


@app.command("code-tasks")
def code_tasks_command(
    out: Annotated[str, typer.Option(help="Domain folder to write (for run --domain).")],
    count: Annotated[int, typer.Option(help="Drafts to ask the synthesizer for.")],
    seed: Annotated[int, typer.Option(help="Seed of the drafts' sampling.")] = 0,
    backend: Annotated[str | None, typer.Option(help="vllm or openai.")] = None,
    model: Annotated[str | None, typer.Option(help="Synthesizer model.")] = None,
    base_url: Annotated[str | None, typer.Option(help="Endpoint for the openai backend.")] = None,
    in_flight: Annotated[int, typer.Option(help="Drafts in flight at once.")] = 16,
    force: Annotated[
        bool, typer.Option("--force", help="Use a non-empty folder that is not an agentmill "
                           "folder (only code-tasks' own entries are replaced).")
    ] = False,
) -> None:
    """Generate coding tasks (problem, reference, tests) kept only when the reference passes
    its tests in the sandbox and an empty stub fails them; writes a domain folder."""
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from pydantic import ValidationError

    from pipelines.code_tasks import CodeTasksConfig, CodeTasksError, generate
    from pipelines.preflight import probe_server
    from simulators.llm.config import EMBEDDED_MODEL, ModelConfig

    fields: dict[str, Any] = {"backend": backend, "model": model, "base_url": base_url}
    api_key = os.environ.get("AGENTMILL_API_KEY") or os.environ.get("OPENAI_API_KEY")
    if backend == "openai" and api_key:
        fields["api_key"] = api_key
    try:
        synthesizer = ModelConfig.model_validate({k: v for k, v in fields.items() if v is not None})
        config = CodeTasksConfig(out=out, count=count, seed=seed, synthesizer=synthesizer,
                                 in_flight=in_flight)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        err.print(f"[red]error:[/red] {escape(problems)}", soft_wrap=True)
        raise typer.Exit(2) from exc
    if synthesizer.backend == "openai":
        problem = (
            f"backend openai with the embedded default model name {EMBEDDED_MODEL!r}; name "
            "the served model with --model" if synthesizer.model == EMBEDDED_MODEL
            else probe_server(synthesizer)
        )
        if problem:
            err.print(f"[red]error:[/red] synthesizer: {escape(problem)}", soft_wrap=True)
            raise typer.Exit(2)
    try:
        manifest = generate(config, force)
    except CodeTasksError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from exc
    finally:
        from pipelines.runtime import close_models

        close_models()
    counts = manifest["counts"]
    rules = ", ".join(f"{n} {rule}" for rule, n in manifest["rejected_by_rule"].items())
    kinds = ", ".join(f"{n} {kind}" for kind, n in manifest["failures_by_type"].items())
    err.print(
        f"{counts['asked']} drafts: {counts['kept']} kept, {counts['rejected']} rejected"
        + (f" ({rules})" if rules else "") + f", {counts['failures']} failures"
        + (f" ({kinds})" if kinds else "") + f" -> {escape(out)}",
        highlight=False, soft_wrap=True,
    )
    if not manifest["reconcile"]["ok"]:
        err.print(f"[red]counts do not reconcile:[/red] {manifest['reconcile']}")
        raise typer.Exit(1)
    if counts["failures"] == counts["asked"]:
        err.print("[red]failed:[/red] no draft got a usable answer from the model "
                  f"(reasons in {escape(out)}/failures/); rerun to try them again")
        raise typer.Exit(1)
    if counts["kept"]:
        err.print(f"play them: agentmill run --domain {escape(out)} --out RUN_DIR", highlight=False)


def _register_rl_commands() -> None:
    from pipelines.rl_cli import register

    register(app)


_register_rl_commands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
