"""Checkpoints that make a run resumable: finished work is kept as it finishes, and reused.

Every model-driven stage (agents, tasks, episodes, judge) appends what it finished to small
Parquet part files under `OUT/_work/<fingerprint>-<inputs hash>/<stage>/`, each written whole
to a temporary name and then renamed, so a killed process leaves complete parts or none. A
rerun with the same config fingerprint and the same input files reads the parts back: inputs
already finished are skipped and their outputs come from the checkpoint, then every output
folder is written again from old and new work alike. Another fingerprint (another model,
prompt, seed...) or edited input files never see them: their area is another folder, and stale
areas are deleted when a run starts.

Each stage owns how its finished work is stored and read back (`encode`, `decode`, `attach` on
its DoFn in `pipelines/stages.py`): a part row holds the new record and the id of the record it
was made from, and reading it back joins the record to that parent again, so reused work has the
shape the stage emits and the run merges fresh and reused work the same way for every stage.

Failures are not checkpointed: a rerun tries those inputs again.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from pydantic import BaseModel

from pipelines import storage
from pipelines.config import RunConfig
from pipelines.parquet_io import read_table
from toolspecs.load import LIBRARY

WORK = "_work"
STAGES = ("agents", "tasks", "episodes", "judge")
PART_GLOB = "part-*.parquet"
CHECKPOINT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),  # the input this output finished: slot, task index, task id...
        ("id", pa.string()),  # the output record's id
        ("parent", pa.string()),  # the id of the record it was made from ("" for agents)
        ("tag", pa.string()),  # "main" (older parts: "passed" / "rejected" for judgements)
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


class Codec(Protocol):
    """How one stage's finished work is checkpointed and read back (its DoFn implements it)."""

    stage: str

    def encode(self, element: Any, output: Any) -> tuple[BaseModel, str]:
        """(the record to keep, the id of the record it was made from; "" for none)."""
        ...

    @staticmethod
    def decode(key: str, record: str) -> Any:
        """A kept record, from its checkpoint key and JSON."""
        ...

    @staticmethod
    def attach(record: Any, parent: Any) -> Any:
        """A decoded record joined to its parent, in the shape the stage emits."""
        ...

    @staticmethod
    def parent_id(parent: Any) -> str:
        """The id a parent (an element of the previous stage's output) is known by."""
        ...


def checkpoint_rows(key: str, encoded: list[tuple[BaseModel, str]]) -> list[dict[str, str]]:
    """Checkpoint rows for one finished input: its outputs as (record, parent id) pairs."""
    return [
        {"key": key, "id": record.id, "parent": parent, "tag": "main",  # type: ignore[attr-defined]
         "record": record.model_dump_json()}
        for record, parent in encoded
    ]


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

    def add(self, key: str, encoded: list[tuple[BaseModel, str]]) -> None:
        self._rows.extend(checkpoint_rows(key, encoded))
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
    """What a run may reuse from its checkpoint area: per stage, key -> (part file, record id),
    and the ids of the records the reused ones were made from."""

    root: str
    chosen: dict[str, dict[str, tuple[str, str]]] = field(default_factory=dict)
    parents: dict[str, frozenset[str]] = field(default_factory=dict)

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
            parent_ids: set[str] = set()
            for file in _parts(root / stage):
                table = _read_index(file)
                if table is None:
                    continue
                for key, record_id, parent in zip(*table, strict=True):
                    if key in chosen or (stage in valid_keys and key not in valid_keys[stage]):
                        continue
                    if parents is not None and parent not in parents:
                        continue
                    chosen[key] = (str(file), record_id)
                    parent_ids.add(parent)
            resume.chosen[stage] = chosen
            resume.parents[stage] = frozenset(parent_ids)
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
    """The key, id and parent columns of a part; None (with a warning) if unreadable."""
    try:
        table = read_table(file, ["key", "id", "parent"])
    except Exception as exc:  # a part damaged after it was written: redo its work
        print(f"agentmill: ignoring unreadable checkpoint {file}: {exc}", file=sys.stderr)
        return None
    if table is None:
        return None
    return tuple(table.column(name).to_pylist() for name in ("key", "id", "parent"))


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


class WithReused(beam.PTransform):
    """A stage's fresh outputs plus its reused ones, read back in the same shape.

    Input: {"fresh": the stage's output, "parents": the previous stage's output} ("parents"
    only for a codec whose records were made from a parent). Only parents of reused records
    take part in the join, so it holds no more than the reused work.
    """

    def __init__(self, codec: type[Codec], resume: Resume) -> None:
        super().__init__()
        self.codec = codec
        self.plan = resume.plan(codec.stage)
        self.parent_ids = resume.parents.get(codec.stage, frozenset())

    def expand(self, inputs: dict[str, Any]) -> Any:
        codec, plan = self.codec, self.plan
        old = (
            inputs["fresh"].pipeline
            | "Parts" >> beam.Create(plan)
            | "Read" >> beam.FlatMap(_read_part, codec.decode)
        )
        if "parents" in inputs:
            old = _reattach(old, inputs["parents"], codec, self.parent_ids)
        else:
            old = old | "Records" >> beam.Map(lambda pair: pair[1])
        return (inputs["fresh"], old) | "All" >> beam.Flatten()


def _read_part(
    item: tuple[str, frozenset[str]], decode: Callable[[str, str], Any]
) -> Iterator[tuple[str, Any]]:
    """(parent id, decoded record) for the chosen keys of one part (first copy of each)."""
    file, keys = item
    table = read_table(file, ["key", "parent", "record"])
    seen: set[str] = set()
    for row in table.to_pylist() if table is not None else []:
        if row["key"] in keys and row["key"] not in seen:
            seen.add(row["key"])
            yield row["parent"], decode(row["key"], row["record"])


def _reattach(old: Any, parents: Any, codec: type[Codec], wanted: frozenset[str]) -> Any:
    keyed = (
        parents
        | "ReusedParents" >> beam.Filter(lambda p: codec.parent_id(p) in wanted)
        | "KeyParents" >> beam.Map(lambda p: (codec.parent_id(p), p))
    )

    def attached(element: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        _, grouped = element
        for parent in grouped["parent"][:1]:
            for record in grouped["records"]:
                yield codec.attach(record, parent)

    return (
        {"records": old, "parent": keyed}
        | "JoinParents" >> beam.CoGroupByKey()
        | "Attach" >> beam.FlatMap(attached)
    )
