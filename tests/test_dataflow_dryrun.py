"""The mill on Dataflow without submitting: Beam's dry run translates the whole pipeline into a
Dataflow job (portable pipeline proto, pickled DoFns, Docker environment of our GPU image, GCS
output paths), and the run-folder code outside the graph works on URIs through Beam's
filesystems (checked on a fake object store registered under its own scheme).

What this cannot check without network and a GCP project: that the Dataflow service accepts the
job, that workers start from the image, and the actual reads and writes on Cloud Storage.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any, ClassVar

import apache_beam as beam
import pytest
from apache_beam.io.filesystem import FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from typer.testing import CliRunner

from pipelines import storage
from pipelines.card import write_card
from pipelines.cli import app
from pipelines.dataflow import dataflow_args, pipeline_from_args
from pipelines.parquet_io import OUTPUT_FOLDERS, count_rows, read_rows
from pipelines.run import _prepare_output, build
from tests.test_pipeline import scripted_config

apiclient = pytest.importorskip(
    "apache_beam.runners.dataflow.internal.apiclient",
    reason="Beam's GCP extras (apache-beam[gcp], in the dev extra) are needed",
)

PROJECT = "agentmill-test"
OUT = "gs://agentmill-test/runs/dry"
IMAGE = "us-docker.pkg.dev/agentmill-test/agentmill/worker:0.1.0"
STAGES = {
    "LoadToolSpecs", "ComposeAgents", "GenerateTasks", "RunEpisodes", "JudgeTrajectories",
    "ToRLTasks", "AllFailures", "WriteToolSpecs", "WriteAgents", "WriteTasks",
    "WriteTrajectories", "WriteSFT", "WriteRejected", "WriteRL", "WriteFailures",
}
WRITES = {
    "toolspecs": "WriteToolSpecs", "agents": "WriteAgents", "tasks": "WriteTasks",
    "trajectories": "WriteTrajectories", "sft": "WriteSFT", "rejected": "WriteRejected",
    "rl": "WriteRL", "failures": "WriteFailures",
}


def gpu_args() -> list[str]:
    return dataflow_args(
        PROJECT, "us-central1", "gs://agentmill-test/tmp", IMAGE,
        max_workers=4, job_name="agentmill-dry-run",
    )


@pytest.fixture(scope="module")
def dry_run() -> tuple[Any, PipelineOptions]:
    # --no_auth: translation must not look for credentials (there are none here).
    options = PipelineOptions([*gpu_args(), "--dry_run=True", "--no_auth"])
    pipeline = beam.Pipeline(options=options)
    build(pipeline, scripted_config(OUT, episodes=4))
    result = pipeline.run()
    result.wait_until_finish()
    return result, options


def job_environment(result: Any, options: PipelineOptions) -> Any:
    """The worker environment Dataflow would be asked for, built offline from a dry run's job
    and its options."""
    return apiclient.Environment(
        packages=[],
        options=options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url="gs://agentmill-test/tmp/staging/pipeline.pb",
        proto_pipeline=result.job.proto_pipeline,
    ).proto


def top_level(proto: beam_runner_api_pb2.Pipeline) -> set[str]:
    return {t.unique_name for t in proto.components.transforms.values() if "/" not in t.unique_name}


def test_the_pipeline_translates_to_a_dataflow_job(dry_run: tuple[Any, PipelineOptions]) -> None:
    result, _ = dry_run
    assert result.state == "DONE"
    job = result.job
    assert isinstance(job, apiclient.Job) and job.proto.name == "agentmill-dry-run"
    proto = job.proto_pipeline
    assert STAGES <= top_level(proto)
    # Every step runs in the Docker environment of our worker image (Dataflow accepts no other).
    images = {
        beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image
        for env in proto.components.environments.values()
    }
    assert images == {IMAGE}
    assert all(env.urn == "beam:env:docker:v1" for env in proto.components.environments.values())
    # Each output folder is written by Beam's file sink at its gs:// path.
    for folder, write in WRITES.items():
        prefix = f"{OUT}/{folder}/part".encode()
        assert any(
            t.unique_name.startswith(f"{write}/")
            and any(prefix in d.SerializeToString() for d in t.display_data)
            for t in proto.components.transforms.values()
        ), folder


def test_the_job_proto_is_serializable_and_reloads(dry_run: tuple[Any, PipelineOptions]) -> None:
    """The bytes Dataflow would stage load back into a pipeline, unpickling every DoFn."""
    result, _ = dry_run
    staged = result.job.proto_pipeline.SerializeToString()
    reloaded = beam.Pipeline.from_runner_api(
        beam_runner_api_pb2.Pipeline.FromString(staged),
        runner=FnApiRunner(),
        options=PipelineOptions([]),
    )
    assert STAGES <= top_level(reloaded.to_runner_api())


def test_the_job_request_asks_for_gpu_workers(dry_run: tuple[Any, PipelineOptions]) -> None:
    """The worker pool Dataflow would be asked for, built offline from the same options."""
    result, options = dry_run
    environment = job_environment(result, options)
    (pool,) = environment.worker_pools
    assert pool.machine_type == "g2-standard-8"
    assert pool.worker_harness_container_image == IMAGE
    assert pool.autoscaling_settings.max_num_workers == 4
    assert list(environment.service_options) == [
        "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
    ]
    assert "no_use_multiple_sdk_containers" in environment.experiments
    assert environment.temp_storage_prefix.endswith("agentmill-test/tmp")


def test_the_graph_is_the_one_every_runner_gets(dry_run: tuple[Any, PipelineOptions]) -> None:
    result, _ = dry_run
    local = beam.Pipeline(runner=FnApiRunner(), options=PipelineOptions([]))
    build(local, scripted_config(OUT, episodes=4))
    stages = top_level(local.to_runner_api())
    assert STAGES <= stages <= top_level(result.job.proto_pipeline)


def test_pipeline_from_args_picks_the_runner() -> None:
    assert isinstance(pipeline_from_args([]).runner, FnApiRunner)
    dataflow = pipeline_from_args([*gpu_args(), "--dry_run=True"])
    assert type(dataflow.runner).__name__ == "DataflowRunner"


def test_cli_run_hands_arguments_after_the_separator_to_beam(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, Any] = {}

    def fake_run(config: Any, pipeline: Any = None, force: bool = False) -> dict[str, Any]:
        seen["config"], seen["pipeline"] = config, pipeline
        counts = {**dict.fromkeys(OUTPUT_FOLDERS, 0), "trajectories": 1, "rejected": 1}
        return {"counts": counts, "timings": {"wall_seconds": 0}, "reconcile": {"ok": True},
                "config": config.public_dump(), "failures_by_stage": {}}

    monkeypatch.setattr("pipelines.run.run", fake_run)
    result = CliRunner().invoke(
        app, ["run", "--out", OUT, "--episodes", "2", "--", *gpu_args(), "--dry_run=True"]
    )
    assert result.exit_code == 0, result.output
    assert seen["config"].out == OUT
    options = seen["pipeline"].options.get_all_options()
    assert options["runner"] == "DataflowRunner" and options["sdk_container_image"] == IMAGE
    plain = CliRunner().invoke(app, ["run", "--out", str(tmp_path), "--episodes", "1"])
    assert plain.exit_code == 0 and seen["pipeline"] is None


# run folders on an object store -----------------------------------------------------------------


class FakeObjectStore(LocalFileSystem):
    """`fakegs://bucket/key` objects kept under a local folder: no directories, prefix listing,
    like Cloud Storage. Beam finds it by its scheme, as it finds GCSFileSystem for gs://."""

    root: ClassVar[str] = ""
    PREFIX = "fakegs://"

    @classmethod
    def scheme(cls) -> str:
        return "fakegs"

    def _local(self, path: str) -> str:
        return os.path.join(self.root, path[len(self.PREFIX):])

    def _remote(self, path: str) -> str:
        return self.PREFIX + os.path.relpath(path, self.root)

    def has_dirs(self) -> bool:
        return False

    def join(self, basepath: str, *paths: str) -> str:
        return posixpath.join(basepath, *paths)

    def split(self, path: str) -> tuple[str, str]:
        return posixpath.split(path)

    def mkdirs(self, path: str) -> None:
        os.makedirs(self._local(path), exist_ok=True)

    def _list(self, prefix: str) -> Any:
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                local = os.path.join(dirpath, name)
                remote = self._remote(local)
                if remote.startswith(prefix):
                    yield FileMetadata(remote, os.path.getsize(local), os.path.getmtime(local))

    def create(self, path: str, *args: Any, **kwargs: Any) -> Any:
        os.makedirs(os.path.dirname(self._local(path)), exist_ok=True)
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path: str, *args: Any, **kwargs: Any) -> Any:
        return super().open(self._local(path), *args, **kwargs)

    def exists(self, path: str) -> bool:
        return os.path.isfile(self._local(path))

    def metadata(self, path: str) -> FileMetadata:
        local = self._local(path)
        return FileMetadata(path, os.path.getsize(local), os.path.getmtime(local))

    def delete(self, paths: list[str]) -> None:
        for path in paths:
            os.remove(self._local(path))

    def rename(self, sources: list[str], destinations: list[str]) -> None:
        for destination in destinations:
            os.makedirs(os.path.dirname(self._local(destination)), exist_ok=True)
        super().rename([self._local(s) for s in sources], [self._local(d) for d in destinations])


@pytest.fixture
def bucket(tmp_path: Path) -> Path:
    FakeObjectStore.root = str(tmp_path / "bucket")
    os.makedirs(FakeObjectStore.root)
    return tmp_path / "bucket"


def test_run_folder_helpers_work_on_an_object_store(
    bucket: Path, scripted_run: Path
) -> None:
    # A finished run uploaded to the store, plus leftovers of an older run.
    shutil.copytree(scripted_run, bucket / "runs" / "x")
    (bucket / "runs" / "x-other" / "sft").mkdir(parents=True)
    (bucket / "runs" / "x-other" / "sft" / "keep.parquet").write_bytes(b"not ours")
    out = storage.run_path("fakegs://runs/x")
    assert isinstance(out, storage.Location) and out.name == "x"
    assert str(out / "sft") == "fakegs://runs/x/sft"

    manifest = json.loads(storage.read_text(out / "manifest.json"))
    assert count_rows(out / "sft") == manifest["counts"]["sft"]
    assert {r["id"] for r in read_rows(out / "rejected")} == {
        r["id"] for r in read_rows(scripted_run / "rejected")
    }

    (bucket / "runs" / "x" / "README.md").unlink()
    shutil.rmtree(bucket / "runs" / "x" / "plots")
    write_card(out, manifest)
    readme = storage.read_text(out / "README.md")
    assert manifest["fingerprint"] in readme
    assert (bucket / "runs" / "x" / "plots" / "judge_scores.png").read_bytes()[:4] == b"\x89PNG"

    _prepare_output(out)
    left = {p.relative_to(bucket).as_posix() for p in bucket.rglob("*") if p.is_file()}
    assert {p for p in left if not p.startswith("runs/x/_work/")} == {
        "runs/x-other/sft/keep.parquet", "runs/x/.agentmill-run"  # the run folder's marker
    }
    # Checkpoints stay for a resume: the same config reuses them from the store, another
    # config's run deletes them.
    from pipelines.resume import prepare
    from tests.test_pipeline import scripted_config

    assert prepare(scripted_config("fakegs://runs/x", episodes=16, seed=0)).reused() == {
        "agents": 8, "tasks": 16, "episodes": 16, "judge": 16
    }
    prepare(scripted_config("fakegs://runs/x", episodes=16, seed=1))
    assert not list((bucket / "runs" / "x").rglob("*.parquet"))
    from pipelines.resume import checkpoint_rows, write_part
    from tests.helpers import task

    written = write_part("fakegs://runs/x/_work/f/tasks", checkpoint_rows("0", [(task(), "")]))
    assert written.startswith("fakegs://runs/x/_work/f/tasks/part-")
    assert [p.name[:5] for p in (bucket / "runs/x/_work/f/tasks").iterdir()] == ["part-"]
    assert not FileSystems.exists("fakegs://runs/x/manifest.json")
    with pytest.raises(FileNotFoundError):
        read_rows(out / "sft")


def test_output_claim_and_lock_on_an_object_store(bucket: Path) -> None:
    """A foreign prefix is refused, an empty or marked one claimed; the lock object names its
    holder, refuses a second run while that holder lives and is taken over once it is gone."""
    import socket

    from pipelines import outdir

    (bucket / "runs" / "theirs").mkdir(parents=True)
    (bucket / "runs" / "theirs" / "notes.txt").write_text("mine")
    with pytest.raises(outdir.OutputError, match="not an agentmill run folder"):
        outdir.claim(storage.run_path("fakegs://runs/theirs"))
    out = storage.run_path("fakegs://runs/new")
    outdir.claim(out)
    assert (bucket / "runs" / "new" / outdir.MARKER).is_file()
    outdir.claim(out)  # marked: claimed again
    with outdir.locked(out):
        holder = json.loads((bucket / "runs" / "new" / outdir.LOCK).read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(outdir.RunLocked, match=f"pid {os.getpid()}"), outdir.locked(out):
            pass
    assert not (bucket / "runs" / "new" / outdir.LOCK).exists()
    dead = {"host": socket.gethostname(), "pid": 2**22 + 12345, "started": 0}
    (bucket / "runs" / "new" / outdir.LOCK).write_text(json.dumps(dead))
    with outdir.locked(out):  # its holder is gone: taken over
        assert json.loads((bucket / "runs" / "new" / outdir.LOCK).read_text())["pid"] == (
            os.getpid()
        )
    elsewhere = {**dead, "host": "another-host"}
    (bucket / "runs" / "new" / outdir.LOCK).write_text(json.dumps(elsewhere))
    with pytest.raises(outdir.RunLocked, match="another-host"), outdir.locked(out):
        pass


def test_the_pool_pipeline_translates_to_a_dataflow_job() -> None:
    """`toolspecs synth`'s stages (grow domains, evolve, dedup, report) build unchanged for
    Dataflow: same transforms, outputs at gs:// paths, every DoFn staged and reloadable."""
    from pipelines.pool import OUTPUTS, PoolConfig
    from pipelines.pool import build as build_pool

    out = "gs://agentmill-test/pools/dry"
    options = PipelineOptions([*gpu_args(), "--dry_run=True", "--no_auth"])
    pipeline = beam.Pipeline(options=options)
    build_pool(pipeline, PoolConfig(out=out, target=50, synthesizer={"backend": "scripted"}))
    result = pipeline.run()
    result.wait_until_finish()
    assert result.state == "DONE"
    proto = result.job.proto_pipeline
    names = top_level(proto)
    assert {"LoadSeeds", "GrowDomains", "Evolve", "Dedup", "NearDuplicates"} <= names
    for folder in OUTPUTS:
        prefix = f"{out}/{folder}/part".encode()
        assert any(
            any(prefix in d.SerializeToString() for d in t.display_data)
            for t in proto.components.transforms.values()
        ), folder
    reloaded = beam.Pipeline.from_runner_api(
        beam_runner_api_pb2.Pipeline.FromString(proto.SerializeToString()),
        runner=FnApiRunner(),
        options=PipelineOptions([]),
    )
    assert {"GrowDomains", "Evolve", "Dedup"} <= top_level(reloaded.to_runner_api())
