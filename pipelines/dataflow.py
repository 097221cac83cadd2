"""The mill on other Beam runners: Dataflow (GPU workers with vLLM) and portable Flink / Spark.

`agentmill run ... -- BEAM_ARGS` hands everything after `--` to Beam, so the same `build()` runs
in process (no arguments), on Dataflow (`--runner=DataflowRunner`), or on a portable runner
(`--runner=FlinkRunner` / `SparkRunner` / `PortableRunner`). `dataflow_args()` spells out the
flags of a GPU run; `pipelines/dataflow.md` explains each.
"""

from __future__ import annotations

from collections.abc import Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

BEAM_VERSION = beam.__version__


def pipeline_from_args(beam_args: Sequence[str]) -> beam.Pipeline:
    """A pipeline for `beam_args`; without `--runner`, Beam's in-process runner (no Prism)."""
    options = PipelineOptions(list(beam_args))
    if options.view_as(StandardOptions).runner is None:
        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def dataflow_args(
    project: str,
    region: str,
    temp_location: str,
    image: str,
    machine_type: str = "g2-standard-8",
    accelerator: str = "nvidia-l4",
    accelerator_count: int = 1,
    max_workers: int | None = None,
    job_name: str | None = None,
) -> list[str]:
    """Beam flags for the mill on Dataflow GPU workers running the image of `Dockerfile`.

    One SDK process per VM (`no_use_multiple_sdk_containers`) so a single vLLM engine owns the
    GPU and episodes share it through asyncio, rather than one engine per vCPU fighting for GPU
    memory. `--sdk_location=container` uses the Beam SDK inside the image instead of staging one.
    """
    args = [
        "--runner=DataflowRunner",
        f"--project={project}",
        f"--region={region}",
        f"--temp_location={temp_location}",
        f"--sdk_container_image={image}",
        "--sdk_location=container",
        f"--machine_type={machine_type}",
        "--dataflow_service_options=worker_accelerator="
        f"type:{accelerator};count:{accelerator_count};install-nvidia-driver",
        "--experiments=use_runner_v2",
        "--experiments=no_use_multiple_sdk_containers",
        "--disk_size_gb=200",
    ]
    if max_workers:
        args.append(f"--max_num_workers={max_workers}")
    if job_name:
        args.append(f"--job_name={job_name}")
    return args
