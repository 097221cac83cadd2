"""Parquet in and out: Beam sinks for the stages, and plain readers for the CLI and the manifest."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipelines import storage

OUTPUT_FOLDERS = (
    "toolspecs",
    "agents",
    "tasks",
    "trajectories",
    "sft",
    "rl",
    "rejected",
    "failures",
)


class WriteRecords(beam.PTransform):
    """Records -> `<folder>/part-SSSSS-of-NNNNN.parquet` with a fixed Arrow schema.

    Rows stream out: each bundle writes its own file in row groups of ~1 MiB. A fixed shard
    count would put a GroupByKey before the write, and the runner would hold every row of the
    stage in memory until it ends (measured: 397 -> 965 MiB peak from 1k to 10k episodes, against
    a flat ~360 MiB streaming). A folder therefore holds one or more part files; readers take
    the folder. Each writer buffers a row group before writing it; with eight sinks, 8 MiB
    groups took ~13 KiB of peak memory per episode from 1,000 to 5,000 episodes, 1 MiB groups
    none that shows (benchmarks/throughput.py, phase `run`).
    """

    def __init__(
        self, folder: str, schema: pa.Schema, to_row: Callable[[Any], dict[str, Any]]
    ) -> None:
        super().__init__()
        self.folder = folder
        self.schema = schema
        self.to_row = to_row

    def expand(self, records: Any) -> Any:
        return (
            records
            | "ToRows" >> beam.Map(self.to_row)
            | "Write"
            >> beam.io.WriteToParquet(
                file_path_prefix=f"{self.folder.rstrip('/')}/part",
                schema=self.schema,
                file_name_suffix=".parquet",
                shard_name_template="-SSSSS-of-NNNNN",
                row_group_buffer_size=1024 * 1024,
                record_batch_size=100,
            )
        )


def parquet_files(path: str | Path) -> list[Any]:
    """The Parquet files of an output folder (or the file itself), sorted.

    Local paths come back as `Path`s; URIs (`gs://...`) as strings, listed through Beam's
    filesystems.
    """
    if storage.is_uri(str(path)):
        uri = str(path).rstrip("/")
        if uri.endswith(".parquet") and FileSystems.exists(uri):
            return [uri]
        files = storage.list_files(uri, "*.parquet")
        if not files and not FileSystems.exists(uri) and not storage.list_files(uri):
            raise FileNotFoundError(f"{uri}: no such file or folder")
        return files
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return sorted(p for p in path.glob("*.parquet") if p.is_file())


def _open(file: Any) -> Any:
    """A Parquet file pyarrow can read: a local path, or a Beam filesystems handle for a URI."""
    if storage.is_uri(str(file)):
        return FileSystems.open(str(file), mime_type="application/octet-stream")
    return file


def count_rows(path: str | Path) -> int:
    try:
        files = parquet_files(path)
    except FileNotFoundError:
        return 0
    total = 0
    for file in files:
        source = _open(file)
        try:
            total += pq.ParquetFile(source).metadata.num_rows
        finally:
            if source is not file:
                source.close()
    return total


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table | None:
    """A folder's Parquet files as one table (only `columns` if given); None if it has none.

    A missing folder raises FileNotFoundError. Columns a file lacks are read as nulls, so a
    column added to a schema later does not break reading older runs.
    """
    tables = []
    for file in parquet_files(path):
        source = _open(file)
        try:
            parquet = pq.ParquetFile(source)
            present = set(parquet.schema_arrow.names)
            wanted = None if columns is None else [c for c in columns if c in present]
            table = parquet.read(columns=wanted)
        finally:
            if source is not file:
                source.close()
        for name in columns or []:
            if name not in present:
                table = table.append_column(name, pa.nulls(table.num_rows))
        tables.append(table.select(columns) if columns else table)
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def read_rows(
    path: str | Path, limit: int | None = None, columns: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of a folder of Parquet files, in file order, up to `limit`."""
    rows: list[dict[str, Any]] = []
    for file in parquet_files(path):
        table = read_table(file, columns)
        if table is not None:
            rows.extend(table.to_pylist())
        if limit is not None and len(rows) >= limit:
            return rows[:limit]
    return rows


def iter_rows(
    path: str | Path, columns: list[str], batch_rows: int = 512
) -> Iterator[dict[str, Any]]:
    """Rows of a folder's Parquet files (only `columns`; ones a file lacks read as None), a
    batch at a time, so a large output (every trajectory's messages) is never whole in memory.
    A missing folder raises FileNotFoundError."""
    for file in parquet_files(path):
        source = _open(file)
        try:
            parquet = pq.ParquetFile(source)
            present = set(parquet.schema_arrow.names)
            wanted = [c for c in columns if c in present]
            if not wanted:
                for _ in range(parquet.metadata.num_rows):
                    yield dict.fromkeys(columns)
                continue
            for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
                for row in batch.to_pylist():
                    yield {c: row.get(c) for c in columns}
        finally:
            if source is not file:
                source.close()


def read_column(path: str | Path, name: str) -> list[Any]:
    """One column of a folder's Parquet files; empty when the folder is missing or empty."""
    try:
        table = read_table(path, [name])
    except FileNotFoundError:
        return []
    return [] if table is None else table.column(name).to_pylist()
