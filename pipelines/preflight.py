"""Checks a run makes before it writes or deletes anything: a run that cannot work fails at once.

A missing spec path, specs that give no agent its tools, a model server that does not answer or a
remote backend left with the embedded model's name would otherwise each cost a whole run folder of
`Failure` rows (and, for an engine, minutes of start-up) before saying the same thing. Each check
returns the problems it found, worded as `toolspecs validate` words them; the CLI prints them and
exits 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx

from pipelines.config import ROLES, RunConfig
from schemas.records import Failure, ToolSpec
from simulators.llm.config import EMBEDDED_MODEL, ModelConfig
from simulators.sandbox import SandboxUnavailable, require_sandbox
from toolspecs.compose import by_domain
from toolspecs.domain import DomainError, load_domain
from toolspecs.load import LIBRARY, load_file, spec_files

PROBE_TIMEOUT_S = 10.0


@dataclass
class Preflight:
    """What the checks found: `problems` stop the run; `warnings` are shown and the run goes on."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_specs(config: RunConfig) -> Preflight:
    """Every spec path exists and is readable, and the valid specs give an agent `min_tools`
    tools of one domain; invalid specs alone only warn (they become Failure rows)."""
    found = Preflight()
    if config.domain:
        return found  # a domain folder brings its own tools; load_domain checks it
    paths = config.toolspecs or [str(LIBRARY)]
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            found.problems.append(f"{raw}: no such file or folder (--tool-specs)")
    if found.problems:
        return found
    files = spec_files(paths)
    if not files:
        found.problems.append("no spec files found under " + ", ".join(map(str, paths)))
        return found
    specs: list[ToolSpec] = []
    invalid: list[Failure] = []
    for path in files:
        for item in load_file(path):
            (invalid if isinstance(item, Failure) else specs).append(item)  # type: ignore[arg-type]
    lines = [line for failure in invalid for line in failure.error.splitlines()]
    unreadable = [f for f in invalid if f.input_id == f.source and not _is_json_problem(f)]
    usable = {d: t for d, t in by_domain(specs).items() if len(t) >= config.min_tools}
    if unreadable or not usable:
        found.problems.extend(lines)
        if not usable:
            sizes = ", ".join(f"{d} {len(t)}" for d, t in sorted(by_domain(specs).items()))
            found.problems.append(
                f"no usable agent: no domain has {config.min_tools} or more valid tools "
                f"(min_tools); {len(specs)} valid, {len(invalid)} invalid in {len(files)} "
                f"file(s)" + (f"; tools per domain: {sizes}" if sizes else "")
            )
    else:
        found.warnings.extend(lines)
    return found


def _is_json_problem(failure: Failure) -> bool:
    """A file that reads but is not valid JSON: a content problem, not an unreadable path."""
    return failure.error_type in {"JSONDecodeError", "SpecTooDeep", "UnicodeDecodeError"}


def check_models(config: RunConfig, probe: bool = True) -> Preflight:
    """Remote models are named and their servers answer: one request per distinct server."""
    found = Preflight()
    remote: dict[str, list[str]] = {}
    for role in ROLES:
        model: ModelConfig = getattr(config.models, role)
        if model.backend != "openai":
            continue
        if role == "synthesizer" and config.domain:
            continue  # a domain run writes no agents or tasks
        if model.model == EMBEDDED_MODEL:
            found.problems.append(
                f"models.{role}: backend openai with the embedded default model name "
                f"{EMBEDDED_MODEL!r}; name the served model with --model (or "
                f"models.{role}.model in the config)"
            )
        remote.setdefault(model.base_url, []).append(role)
    if probe and not found.problems:
        for roles in remote.values():
            model = getattr(config.models, roles[0])
            problem = probe_server(model)
            if problem:
                found.problems.append(f"{'/'.join(roles)}: {problem}")
    return found


def probe_server(model: ModelConfig, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the server at `model.base_url` answers `GET /models` (and serves the model when it
    lists them); else what went wrong, naming the URL."""
    url = model.base_url.rstrip("/") + "/models"
    headers = {}
    if model.api_key is not None:
        headers["Authorization"] = f"Bearer {model.api_key.get_secret_value()}"
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        detail = str(exc) or type(exc).__name__
        return f"the model server at {model.base_url} does not answer: {type(exc).__name__}: " \
               f"{detail}"
    if response.status_code in (401, 403):
        return (
            f"the model server at {model.base_url} refused the API key (HTTP "
            f"{response.status_code}); set AGENTMILL_API_KEY or OPENAI_API_KEY"
        )
    if response.status_code >= 500:
        return f"the model server at {model.base_url} answered HTTP {response.status_code} to {url}"
    if response.status_code != 200:
        return None  # answers, but lists no models (e.g. a minimal server): nothing to check
    try:
        served = [entry["id"] for entry in response.json().get("data", [])]
    except (ValueError, AttributeError, KeyError, TypeError):
        return None
    if served and model.model not in served:
        shown = ", ".join(served[:8]) + (" ..." if len(served) > 8 else "")
        return (
            f"the model server at {model.base_url} does not serve {model.model!r} "
            f"(it serves: {shown}); pass --model with one of them"
        )
    return None


def sandbox_problem(needing: int, total: int) -> str | None:
    """None when none of `total` tasks brings files or a sandbox can be made on this machine;
    else why the run cannot start. Such tasks run code, and code only ever runs in a sandbox:
    one that cannot be made stops the run at start, not each episode, never unconfined."""
    if not needing:
        return None
    try:
        require_sandbox()
    except SandboxUnavailable as exc:
        return (
            f"{needing} of {total} task(s) bring files and run code, which only ever runs in a "
            f"sandbox, and {exc}"
        )
    return None


def check_sandbox(config: RunConfig) -> Preflight:
    """A domain whose tasks bring files needs a working sandbox here (its folder must load)."""
    found = Preflight()
    if not config.domain:
        return found
    try:
        tasks = load_domain(config.domain).tasks
    except DomainError as exc:
        found.problems.append(str(exc))
        return found
    problem = sandbox_problem(sum(t.workspace is not None for t in tasks), len(tasks))
    if problem:
        found.problems.append(f"{config.domain}: {problem}")
    return found


def preflight(config: RunConfig, probe: bool = True) -> Preflight:
    """Every check a run makes before it starts."""
    checks = (check_specs(config), check_sandbox(config), check_models(config, probe))
    return Preflight(
        [p for c in checks for p in c.problems], [w for c in checks for w in c.warnings]
    )
