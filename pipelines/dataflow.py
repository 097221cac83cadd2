"""The mill on other Beam runners: Dataflow (GPU workers with vLLM) and portable Flink / Spark.

`agentmill run ... -- BEAM_ARGS` hands everything after `--` to Beam, so the same `build()` runs
in process (no arguments), on Dataflow (`--runner=DataflowRunner`), or on a portable runner
(`--runner=FlinkRunner` / `SparkRunner` / `PortableRunner`). `dataflow_args()` spells out the
flags of a GPU run; `pipelines/dataflow.md` explains each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

if TYPE_CHECKING:
    from pipelines.config import RunConfig

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
    disk_size_gb: int = 200,
    harness_threads: int | None = None,
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
        f"--disk_size_gb={disk_size_gb}",
    ]
    if harness_threads:
        args.append(f"--number_of_worker_harness_threads={harness_threads}")
    if max_workers:
        args.append(f"--max_num_workers={max_workers}")
    if job_name:
        args.append(f"--job_name={job_name}")
    return args


@dataclass(frozen=True)
class GpuMachine:
    """A Compute Engine machine type Dataflow can attach `count` GPUs of `accelerator` to."""

    machine_type: str
    accelerator: str
    count: int
    gib_per_gpu: int


GPU_MACHINES: dict[str, GpuMachine] = {
    machine.accelerator: machine
    for machine in (
        GpuMachine("g2-standard-96", "nvidia-l4", 8, 24),
        GpuMachine("a2-ultragpu-8g", "nvidia-a100-80gb", 8, 80),
        GpuMachine("a3-highgpu-8g", "nvidia-h100-80gb", 8, 80),
        GpuMachine("a3-ultragpu-8g", "nvidia-h200-141gb", 8, 141),
    )
}
"""The largest single-VM shape per GPU type (8 GPUs): one engine per worker spans one VM."""


def worker_gpus(models: dict[str, Any]) -> int:
    """GPUs the in-process engines of one worker need together (tensor x pipeline x data)."""
    from simulators.llm.engines import engines

    total = 0
    for engine in engines(models):
        if engine.in_process:
            extra = engine.config.engine_args
            total += (
                engine.config.tensor_parallel_size
                * int(extra.get("pipeline_parallel_size", 1))
                * int(extra.get("data_parallel_size", 1))
            )
    return total


def gpu_worker_args(
    config: RunConfig,
    project: str,
    region: str,
    temp_location: str,
    image: str,
    accelerator: str = "nvidia-h100-80gb",
    max_workers: int | None = None,
    job_name: str | None = None,
    harness_threads: int | None = None,
) -> list[str]:
    """`dataflow_args` sized for `config`: GPUs per worker from its engines' parallelism, a
    machine that holds them, and a boot disk for an image with the weights baked in.

    Raises ValueError when the engines need more GPUs than one VM has (Kimi-K2 wants 16): such
    a model is served by `vllm serve` on its own cluster and reached with `backend: openai`.
    """
    from simulators.llm.engines import engines

    try:
        machine = GPU_MACHINES[accelerator]
    except KeyError:
        raise ValueError(
            f"no machine known for accelerator {accelerator!r}; known: {', '.join(GPU_MACHINES)}"
        ) from None
    models = config.models.by_role()
    gpus = worker_gpus(models)
    if gpus == 0:
        raise ValueError("no role uses the vllm backend: CPU workers suffice (drop GPU flags)")
    if gpus > machine.count:
        raise ValueError(
            f"the worker's engines need {gpus} GPUs but one {machine.machine_type} has "
            f"{machine.count} {accelerator}: serve the largest model with `vllm serve` on a "
            "multi-node cluster and give its roles backend: openai"
        )
    weights = 0.0
    for engine in engines(models):
        if engine.in_process:
            weights += engine.weights()[0] or 0.0
    # The image (CUDA, vLLM) plus baked-in weights, stored compressed and unpacked.
    disk = max(200, math.ceil(2.2 * weights) + 100)
    count = 1 << max(0, gpus - 1).bit_length()  # Compute Engine attaches 1, 2, 4 or 8
    if machine.machine_type.startswith("a3-ultragpu"):
        count = machine.count  # H200 VMs come with 8 only
    return dataflow_args(
        project, region, temp_location, image,
        machine_type=machine.machine_type if count == machine.count else
        _smaller_machine(machine, count),
        accelerator=accelerator,
        accelerator_count=count,
        max_workers=max_workers,
        job_name=job_name,
        disk_size_gb=disk,
        harness_threads=harness_threads,
    )


def _smaller_machine(machine: GpuMachine, count: int) -> str:
    """The same family with `count` GPUs (a3-highgpu-4g, a2-ultragpu-2g, g2-standard-48...)."""
    if machine.machine_type.startswith("g2-"):
        return {1: "g2-standard-12", 2: "g2-standard-24", 4: "g2-standard-48"}[count]
    return machine.machine_type.rsplit("-", 1)[0] + f"-{count}g"
