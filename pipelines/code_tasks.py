"""`agentmill code-tasks`: generated coding tasks, kept only when their tests hold, as a domain.

The synthesizer writes N drafts (a problem, a reference module and pytest tests) on topics
cycled from `TOPICS`; each draft goes through `toolspecs.code_tasks.check_draft` in the
sandbox. What comes out is a domain folder in the layout of `data/domains/coding`, so
`agentmill run --domain DIR` plays it as it is:

    DIR/policy.md, domain.json, tools.json  the coding agent (workspace tools, no simulated ones)
    DIR/tasks.json                          one entry per kept draft, in slot order
    DIR/repos/<slot>-<module>/files/        the stub and one visible test (tests/test_<m>.py)
    DIR/repos/<slot>-<module>/hidden/       the whole test suite, never shown to the agent
    DIR/repos/<slot>-<module>/solution/     the reference module
    DIR/rejected/                           drafts that broke a rule (`DraftRejected:<rule>`)
    DIR/failures/                           slots with no usable model answer (Parquet)
    DIR/manifest.json                       counts (asked = kept + rejected + failures), rules

Why a command of its own and not a stage of `agentmill run`: the mill composes agents from tool
specs and writes tasks for them, but a coding task needs the workspace tools and a sandbox
gate, and its product is worth reviewing and reusing as files (a person can read a repo, fix a
hidden test, rerun the domain, roll it out) before episodes are played on it. The work is a few
model calls and two sandbox runs per draft, so it runs in one event loop like `rollout`, not on
Beam. The folder is claimed, locked and cleared with the run's own rules (`pipelines.outdir`);
finished drafts (kept or rejected) are checkpointed one file per slot under `_work/<key>/`, so
a rerun with the same settings only asks for what is missing (failures are tried again).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipelines import outdir
from pipelines.batching import failure_from
from pipelines.runtime import model as model_for
from pipelines.shared import stable_seed
from schemas.arrow import FAILURE_SCHEMA, to_row
from schemas.records import Difficulty, Failure, TokenCount, canonical_json
from simulators.ask import Usage, merge_usage
from simulators.llm.base import Sampling
from simulators.llm.config import ModelConfig
from simulators.sandbox import require_sandbox
from toolspecs.code_tasks import CodeDraft, draft_code_task, task_of

STAGE = "code_tasks"
WORK = "_work"
ENTRIES = (
    "tasks.json", "repos", "rejected", "failures", "manifest.json", "policy.md", "domain.json",
    "tools.json", WORK, outdir.MARKER, outdir.LOCK,
)
"""Everything `code-tasks` writes in its folder: the only names it replaces or deletes."""
DIFFICULTIES: tuple[Difficulty, ...] = ("easy", "medium", "hard")
TOPICS = (
    "run-length encoding and decoding of strings",
    "roman numerals to and from integers",
    "a bounded queue with put, get and size",
    "merging overlapping intervals",
    "parsing 'key=value' lines into a dictionary",
    "a word frequency counter that ignores case and punctuation",
    "validating balanced brackets in a string",
    "converting between snake_case and camelCase",
    "a simple bank account with deposits, withdrawals and overdraft errors",
    "the n-th Fibonacci number with memoization",
    "checking whether a year is a leap year",
    "flattening nested lists",
    "chunking a list into pieces of a given size",
    "a least-recently-used cache with a capacity",
    "binary search over a sorted list",
    "computing a moving average over a window",
    "parsing durations such as '1h30m' into seconds",
    "Caesar cipher encryption and decryption",
    "matrix transpose and multiplication",
    "removing duplicates from a list while keeping order",
    "an inventory of items with add, remove and total value",
    "prime factorization of an integer",
    "the greatest common divisor and least common multiple",
    "a stack with push, pop, peek and a minimum in constant time",
    "anagram grouping of a list of words",
    "formatting a number of bytes as a human-readable size",
    "validating an ISBN-10 number",
    "a to-do list with priorities and completion",
    "summing a column of a CSV text by group",
    "slugifying titles into URL-safe strings",
)
POLICY = """- Work only inside the project's workspace, with the workspace tools.
- Read the module (and the visible tests) before changing anything.
- Implement what the user asks in the named module; keep its functions' names and signatures.
- Never edit or delete the tests to make them pass.
- Run the tests after your change and report honestly what passed and what failed.
- Do not claim work you have not written to the file.
"""
SYSTEM_PROMPT = (
    "You are CodeMate, a software engineering assistant working in the user's small Python "
    "project. Read the code, change files with write_file, run code and tests in the sandbox, "
    "and tell the user what you changed and what the tests say."
)
WORKSPACE_TOOLS = ["list_files", "read_file", "write_file", "run_python", "run_tests"]


class CodeTasksError(ValueError):
    """A code-tasks job that cannot start (bad folder, no sandbox); the CLI exits 2."""


class CodeTasksConfig(BaseModel):
    """Everything a code-tasks job needs; the same settings and answers give the same domain."""

    model_config = ConfigDict(extra="forbid")

    out: str
    count: int = Field(ge=1, le=100_000, description="Drafts to ask for.")
    seed: int = 0
    synthesizer: ModelConfig = ModelConfig()
    sampling: Sampling = Sampling(temperature=0.8, max_tokens=1500)
    attempts: int = Field(default=3, ge=1)
    in_flight: int = Field(default=16, ge=1, le=100_000)
    topics: list[str] = Field(default_factory=lambda: list(TOPICS), min_length=1)

    def key(self) -> str:
        """What makes finished drafts reusable: everything but the folder and the window."""
        body = self.model_dump(mode="json", exclude={"out", "in_flight", "count"})
        body["synthesizer"] = self.synthesizer.model_dump(mode="json", exclude={"api_key"})
        return hashlib.sha256(canonical_json(body).encode()).hexdigest()[:16]

    def slot(self, index: int) -> tuple[str, Difficulty]:
        """The topic and difficulty of slot `index`."""
        return self.topics[index % len(self.topics)], DIFFICULTIES[index % len(DIFFICULTIES)]


def generate(config: CodeTasksConfig, force: bool = False) -> dict[str, Any]:
    """Write the domain folder for `config` and return its manifest.

    Raises CodeTasksError before anything is written when the folder is not claimable or no
    sandbox can be made here (drafts are only judged by running them, never unconfined).
    """
    from simulators.sandbox import SandboxUnavailable

    try:
        outdir.check_claimable(config.out, force, ENTRIES)
        require_sandbox()
    except (outdir.OutputError, SandboxUnavailable) as exc:
        raise CodeTasksError(str(exc)) from exc
    out = Path(config.out)
    try:
        with outdir.locked(out):
            outdir.claim(out, force, ENTRIES)
            return _generate_claimed(config, out)
    except outdir.OutputError as exc:
        raise CodeTasksError(str(exc)) from exc


def _generate_claimed(config: CodeTasksConfig, out: Path) -> dict[str, Any]:
    key = config.key()
    work = out / WORK / key
    for stale in (out / WORK).glob("*") if (out / WORK).is_dir() else []:
        if stale.name != key:
            shutil.rmtree(stale, ignore_errors=True)  # another config's drafts: start over
    work.mkdir(parents=True, exist_ok=True)
    done = {i: r for i in range(config.count) if (r := _read_slot(work, i)) is not None}
    todo = [i for i in range(config.count) if i not in done]
    started = time.time()
    print(
        f"agentmill: {config.count} code drafts -> {out} ({len(done)} reused, "
        f"{len(todo)} to ask for; synthesizer {config.synthesizer.display_name()})",
        file=sys.stderr, flush=True,
    )
    from pipelines.runtime import run as run_async

    usage: Usage = {}
    fresh, failures = run_async(_draft_all(config, todo, work, usage))
    results = {**done, **fresh}
    manifest = _write_domain(config, out, results, failures, usage, len(done), started)
    return manifest


async def _draft_all(
    config: CodeTasksConfig, slots: list[int], work: Path, usage: Usage
) -> tuple[dict[int, dict[str, Any]], list[Failure]]:
    """Draft and check `slots`, `in_flight` at once; each finished slot is saved as it ends."""
    model = model_for(config.synthesizer)
    results: dict[int, dict[str, Any]] = {}
    failures: list[Failure] = []
    queue = iter(slots)

    async def one(index: int) -> None:
        topic, difficulty = config.slot(index)
        sampling = config.sampling.model_copy(
            update={"seed": stable_seed(config.seed, STAGE, index)}
        )
        own: dict[str, TokenCount] = {}
        try:
            drafted = await draft_code_task(
                model, topic, difficulty, sampling, own, config.attempts
            )
        except Exception as exc:  # no usable answer: a Failure, tried again on a rerun
            failures.append(failure_from(STAGE, f"slot-{index}", exc))
            return
        finally:
            merge_usage(usage, own)
        record = _slot_record(index, drafted)
        _save_slot(work, index, record)
        results[index] = record

    async def worker() -> None:
        for index in queue:
            await one(index)

    await asyncio.gather(*(worker() for _ in range(max(1, min(config.in_flight, len(slots))))))
    return results, failures


def _slot_record(index: int, drafted: CodeDraft) -> dict[str, Any]:
    record: dict[str, Any] = {
        "slot": index, "topic": drafted.topic, "difficulty": drafted.difficulty,
        "draft": drafted.draft,
    }
    if drafted.rejection is not None:
        record["status"] = "rejected"
        record["rejection"] = drafted.rejection.model_dump(mode="json")
    else:
        record["status"] = "kept"
        record["checked"] = drafted.checked
    return record


def _slot_file(work: Path, index: int) -> Path:
    return work / f"slot-{index:06d}.json"


def _save_slot(work: Path, index: int, record: dict[str, Any]) -> None:
    """Written to a temporary name and renamed: a kill leaves the slot done or not done."""
    target = _slot_file(work, index)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record), encoding="utf-8")
    os.replace(temporary, target)


def _read_slot(work: Path, index: int) -> dict[str, Any] | None:
    try:
        record = json.loads(_slot_file(work, index).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") else None


def _repo_name(index: int, module: str) -> str:
    return f"{index:04d}-{module.removesuffix('.py')}"


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")


def _write_parquet(folder: Path, failures: list[Failure]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([to_row(f) for f in failures], schema=FAILURE_SCHEMA)
    pq.write_table(table, folder / "part-00000.parquet")


def _write_domain(
    config: CodeTasksConfig, out: Path, results: dict[int, dict[str, Any]],
    failures: list[Failure], usage: Usage, reused: int, started: float,
) -> dict[str, Any]:
    """Replace the folder's own entries with the domain made of `results`; the manifest."""
    for name in ENTRIES:
        if name in (WORK, outdir.MARKER, outdir.LOCK):
            continue
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    tasks: list[dict[str, Any]] = []
    rejected: list[Failure] = []
    for index in sorted(results):
        record = results[index]
        if record["status"] == "rejected":
            rejected.append(Failure.model_validate(record["rejection"]))
            continue
        drafted = CodeDraft(record["topic"], record["difficulty"], record["draft"], "",
                            checked=record["checked"])
        task = task_of(drafted, agent_id="")
        repo = f"repos/{_repo_name(index, drafted.draft['module'])}"
        assert task.workspace is not None
        _write_tree(out / repo / "files", task.workspace.files)
        _write_tree(out / repo / "hidden", task.workspace.hidden_tests)
        _write_tree(out / repo / "solution", {drafted.draft["module"]: drafted.draft["solution"]})
        tasks.append({
            "goal": task.goal, "user_knows": task.user_knows, "user_withholds": [],
            "difficulty": task.difficulty,
            "rubric": task.rubric.model_dump(mode="json", include={"success_criteria",
                                                                   "expected_tools"}),
            "workspace": repo,
        })
    (out / "policy.md").write_text(POLICY, encoding="utf-8")
    (out / "tools.json").write_text("[]\n", encoding="utf-8")
    (out / "domain.json").write_text(json.dumps({
        "name": "CodeMate", "domain": "coding", "system_prompt": SYSTEM_PROMPT,
        "workspace_tools": WORKSPACE_TOOLS,
    }, indent=2) + "\n", encoding="utf-8")
    (out / "tasks.json").write_text(json.dumps(tasks, indent=2) + "\n", encoding="utf-8")
    _write_parquet(out / "rejected", rejected)
    _write_parquet(out / "failures", failures)
    rules = Counter(f.error_type.removeprefix("DraftRejected:") for f in rejected)
    counts = {"asked": config.count, "kept": len(tasks), "rejected": len(rejected),
              "failures": len(failures), "reused": reused}
    manifest = {
        "kind": "code-tasks",
        "config": config.model_dump(mode="json", exclude={"synthesizer": {"api_key"}}),
        "key": config.key(),
        "counts": counts,
        "reconcile": {
            "ok": counts["asked"] == counts["kept"] + counts["rejected"] + counts["failures"],
            "rule": "asked = kept + rejected + failures",
        },
        "rejected_by_rule": dict(sorted(rules.items())),
        "failures_by_type": dict(sorted(Counter(f.error_type for f in failures).items())),
        "tokens": {role: count.model_dump() for role, count in usage.items()},
        "timings": {"wall_seconds": round(time.time() - started, 2)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
