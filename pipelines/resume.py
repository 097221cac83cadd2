"""Checkpoints that make a run resumable: finished work is kept as it finishes, and reused.

Every model-driven stage (agents, tasks, episodes, judge) appends what it finished to small
Parquet part files under `OUT/_work/<fingerprint>-<inputs hash>/<stage>/`, each written whole
to a temporary name and then renamed, so a killed process leaves complete parts or none. A
rerun with the same config fingerprint and the same input files reads the parts back: inputs
already finished are skipped and their outputs come from the checkpoint, then every output
folder is written again from old and new work alike. Another fingerprint (another model,
prompt, seed...) or edited input files never see them: their area is another folder, and stale
areas are deleted when a run starts.

Failures are not checkpointed: a rerun tries those inputs again.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines import storage
from pipelines.config import RunConfig
from pipelines.parquet_io import read_table
from schemas.records import AgentSpec, Judgement, RejectedTrajectory, Task, Trajectory
from toolspecs.load import LIBRARY

WORK = "_work"
STAGES = ("agents", "tasks", "episodes", "judge")
PART_GLOB = "part-*.parquet"
CHECKPOINT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # the input this output finished: slot, task index, task id...
        ("id", pa.string()),  # the output record's id
        ("parent", pa.string()),  # the id of the record it was made from ("" for agents)
        ("tag", pa.string()),  # "main", or "passed" / "rejected" for judgements
        ("record", pa.string()),  # the record as JSON
    ]
)


@dataclass(frozen=True)
class StageControl:
    """What a stage's DoFn needs to checkpoint, skip finished inputs, and brake on failures."""

    folder: str
    every: int = 16
    seconds: float = 30.0
    skip: frozenset[str] = frozenset()
    max_failure_rate: float = 1.0
    failure_rate_after: int = 20


def inputs_digest(config: RunConfig) -> str:
    """A hash of the input files' contents (spec files or the domain folder).

    The config names inputs by path; an edited spec file behind the same path must not reuse
    agents and episodes made from the old text. URIs are named, not read (specs are local).
    """
    digest = hashlib.sha256()
    paths = [config.domain] if config.domain else (config.toolspecs or [str(LIBRARY)])
    for name in paths:
        path = Path(name)
        if storage.is_uri(name) or not path.exists():
            digest.update(f"{name}\0".encode())
            continue
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digest.update(f"{file.relative_to(path) if file != path else file.name}\0".encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:8]


def work_key(config: RunConfig) -> str:
    """The checkpoint area's name: the config fingerprint and the inputs' content hash."""
    return f"{config.fingerprint()}-{inputs_digest(config)}"


def checkpoint_rows(key: str, outputs: list[Any]) -> list[dict[str, str]]:
    """Checkpoint rows for one finished input's outputs."""
    rows = []
    for output in outputs:
        tag = "main"
        if isinstance(output, beam.pvalue.TaggedOutput):
            tag, output = output.tag, output.value
        if isinstance(output, tuple) and isinstance(output[0], int):  # (slot, AgentSpec)
            record, parent = output[1], ""
        elif isinstance(output, tuple):  # (Trajectory, Judgement) that passed
            tag, record, parent = "passed", output[1], output[0].id
        elif isinstance(output, RejectedTrajectory):
            tag, record, parent = "rejected", output.judgement, output.trajectory.id
        elif isinstance(output, Task):
            record, parent = output, output.agent_id
        elif isinstance(output, Trajectory):
            record, parent = output, output.task_id
        else:
            raise TypeError(f"cannot checkpoint a {type(output).__name__}")
        rows.append(
            {"key": key, "id": record.id, "parent": parent, "tag": tag,
             "record": record.model_dump_json()}
        )
    return rows


def write_part(folder: str | Path, rows: list[dict[str, str]]) -> str:
    """Write `rows` as one new part file, atomically (temporary name, then rename)."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=CHECKPOINT_SCHEMA), buffer)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    folder = str(folder).rstrip("/")
    final, temporary = f"{folder}/{name}", f"{folder}/.tmp-{name}"
    if storage.is_uri(folder):
        storage.write_bytes(temporary, buffer.getvalue())
        FileSystems.rename([temporary], [final])
        return final
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(temporary, "wb") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, final)
    return final


class CheckpointWriter:
    """Buffers a DoFn's finished outputs and writes a part every `every` inputs or `seconds`."""

    def __init__(self, control: StageControl) -> None:
        self.control = control
        self._rows: list[dict[str, str]] = []
        self._inputs = 0
        self._last = time.monotonic()
        self.parts = 0

    def add(self, key: str, outputs: list[Any]) -> None:
        self._rows.extend(checkpoint_rows(key, outputs))
        self._inputs += 1
        if self._inputs >= self.control.every or (
            time.monotonic() - self._last >= self.control.seconds
        ):
            self.flush()

    def flush(self) -> None:
        if self._rows:
            write_part(self.control.folder, self._rows)
            self.parts += 1
        self._rows, self._inputs, self._last = [], 0, time.monotonic()


@dataclass
class Resume:
    """What a run may reuse from its checkpoint area: per stage, key -> (part file, record id)."""

    root: str
    chosen: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The area's name (`work_key` of the config it was loaded for)."""
        return self.root.rstrip("/").rsplit("/", 1)[-1]

    @classmethod
    def load(cls, config: RunConfig, key: str | None = None) -> Resume:
        """Read the area of `config` (named `key` when the caller has it already), keeping only
        work that still fits together.

        Each stage keeps the first copy of a key (parts sort by time). A task is reused only if
        its agent is, an episode only if its task is, a judgement only if its trajectory is, so
        a rerun never mixes outputs of inputs it made afresh.
        """
        root = storage.run_path(config.out) / WORK / (key or work_key(config))
        resume = cls(root=str(root))
        n_agents = -(-config.episodes // config.tasks_per_agent)
        valid_keys = {
            "agents": {str(slot) for slot in range(n_agents)},
            "tasks": {str(index) for index in range(config.episodes)},
        }
        parents: set[str] | None = None
        # A domain brings its agent and tasks from files: the chain starts at the episodes.
        for stage in STAGES[2:] if config.domain else STAGES:
            chosen: dict[str, tuple[str, str]] = {}
            for file in _parts(root / stage):
                table = _read_index(file)
                if table is None:
                    continue
                for key, record_id, parent, tag in zip(*table, strict=True):
                    if key in chosen or (stage in valid_keys and key not in valid_keys[stage]):
                        continue
                    if parents is not None and parent not in parents:
                        continue
                    chosen[key] = (str(file), record_id)
                    if stage == "judge":
                        resume.tags[key] = tag
            resume.chosen[stage] = chosen
            parents = {record_id for _, record_id in chosen.values()}
        return resume

    def control(self, stage: str, config: RunConfig) -> StageControl:
        c = config.control
        return StageControl(
            folder=f"{self.root}/{stage}",
            every=c.checkpoint_every,
            seconds=c.checkpoint_seconds,
            skip=frozenset(self.chosen.get(stage, {})),
            max_failure_rate=c.max_failure_rate,
            failure_rate_after=c.failure_rate_after,
        )

    def reused(self) -> dict[str, int]:
        return {stage: len(self.chosen.get(stage, {})) for stage in STAGES}

    def plan(self, stage: str) -> list[tuple[str, frozenset[str]]]:
        """(part file, keys to read from it) for every part holding reused work."""
        by_file: dict[str, set[str]] = {}
        for key, (file, _) in self.chosen.get(stage, {}).items():
            by_file.setdefault(file, set()).add(key)
        return [(file, frozenset(keys)) for file, keys in sorted(by_file.items())]


def _parts(folder: storage.RunPath) -> list[Any]:
    try:
        return storage.list_files(folder, PART_GLOB)
    except Exception:
        return []


def _read_index(file: Any) -> tuple[list[str], ...] | None:
    """The key, id, parent and tag columns of a part; None (with a warning) if unreadable."""
    try:
        table = read_table(file, ["key", "id", "parent", "tag"])
    except Exception as exc:  # a part damaged after it was written: redo its work
        print(f"agentmill: ignoring unreadable checkpoint {file}: {exc}", file=sys.stderr)
        return None
    if table is None:
        return None
    return tuple(table.column(name).to_pylist() for name in ("key", "id", "parent", "tag"))


def prepare(config: RunConfig) -> Resume:
    """Delete other fingerprints' areas and half-written parts, then load this one's."""
    out = storage.run_path(config.out)
    mine = work_key(config)
    work = out / WORK
    if isinstance(work, Path):
        stale = [p for p in work.iterdir() if p.name != mine] if work.is_dir() else []
        for path in stale:
            print(f"agentmill: config changed, discarding checkpoint {path}", file=sys.stderr)
            storage.remove_tree(path)
        for stage in STAGES:
            for temporary in (work / mine / stage).glob(".tmp-*"):
                temporary.unlink(missing_ok=True)
    else:
        prefix = str(work).rstrip("/") + "/"
        for path in storage.list_files(work, "**"):
            if not path.startswith(prefix + mine + "/"):
                storage.remove_tree(path)
    return Resume.load(config, mine)


def _decode(stage: str, key: str, tag: str, record: str) -> Any:
    if stage == "agents":
        return int(key), AgentSpec.model_validate_json(record)
    if stage == "tasks":
        return Task.model_validate_json(record)
    if stage == "episodes":
        return Trajectory.model_validate_json(record)
    return key, (tag, Judgement.model_validate_json(record))


class ReadCheckpoint(beam.PTransform):
    """The reused outputs of one stage, as the stage itself would have emitted them."""

    def __init__(self, stage: str, plan: list[tuple[str, frozenset[str]]]) -> None:
        super().__init__()
        self.stage = stage
        self.plan = plan

    def expand(self, pbegin: Any) -> Any:
        stage = self.stage

        def read(item: tuple[str, frozenset[str]]) -> Iterator[Any]:
            file, keys = item
            table = read_table(file, ["key", "tag", "record"])
            seen: set[str] = set()
            for row in table.to_pylist() if table is not None else []:
                if row["key"] in keys and row["key"] not in seen:
                    seen.add(row["key"])
                    yield _decode(stage, row["key"], row["tag"], row["record"])

        return pbegin | "Parts" >> beam.Create(self.plan) | "Read" >> beam.FlatMap(read)


def rejoin_judgements(pairs: Any, judgements: Any) -> Any:
    """Reused judgements joined back to their trajectories: `passed` and `rejected` outputs."""
    keyed = pairs | "KeyReusedTrajectories" >> beam.Map(lambda pair: (pair[0].id, pair[0]))

    def verdicts(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, grouped = element
        for trajectory in grouped["trajectory"][:1]:
            for tag, judgement in grouped["judgement"][:1]:
                if tag == "passed":
                    yield trajectory, judgement
                else:
                    rejected = RejectedTrajectory(trajectory=trajectory, judgement=judgement)
                    yield beam.pvalue.TaggedOutput("rejected", rejected)

    return (
        {"trajectory": keyed, "judgement": judgements}
        | "JoinReusedJudgements" >> beam.CoGroupByKey()
        | "ReusedVerdicts" >> beam.FlatMap(verdicts).with_outputs("rejected", main="passed")
    )
