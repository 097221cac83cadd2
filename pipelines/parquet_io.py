"""Parquet in and out: Beam sinks for the stages, and plain readers for the CLI and the manifest."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

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
    """Records -> `<folder>/part-SSSSS-of-NNNNN.parquet` with a fixed Arrow schema."""

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
                num_shards=1,
                shard_name_template="-SSSSS-of-NNNNN",
            )
        )


def parquet_files(path: str | Path) -> list[Path]:
    """The Parquet files of an output folder (or the file itself), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return sorted(p for p in path.glob("*.parquet") if p.is_file())


def count_rows(path: str | Path) -> int:
    try:
        files = parquet_files(path)
    except FileNotFoundError:
        return 0
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def read_rows(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of a folder of Parquet files, in file order, up to `limit`."""
    rows: list[dict[str, Any]] = []
    for file in parquet_files(path):
        table = pq.read_table(file)
        rows.extend(table.to_pylist())
        if limit is not None and len(rows) >= limit:
            return rows[:limit]
    return rows
