"""The GPU recipe for a large MoE on Dataflow, checked without a GCP project: the example config
(Qwen3-235B-A22B in every role) sizes the worker (8x H100 on a3-highgpu-8g, one SDK process, a
disk for baked-in weights), the whole pipeline translates to a Dataflow job with those options,
and the workers would unpickle the engine settings the config asked for.

Not checked here (no network, no GPU): that Dataflow grants the machines, that the image builds,
or that vLLM loads the real weights.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2

from pipelines.config import ROLES, load_config
from pipelines.dataflow import gpu_worker_args
from pipelines.run import build
from tests.test_dataflow_dryrun import job_environment

apiclient = pytest.importorskip(
    "apache_beam.runners.dataflow.internal.apiclient",
    reason="Beam's GCP extras (apache-beam[gcp], in the dev extra) are needed",
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "data" / "configs" / "dataflow-gpu-qwen3-235b.yaml"
IMAGE = "us-docker.pkg.dev/agentmill-test/agentmill/worker-qwen3-235b:0.1.0"
OUT = "gs://agentmill-test/runs/qwen3-235b"


@pytest.fixture(scope="module")
def config() -> Any:
    return load_config(CONFIG, {"out": OUT, "episodes": 8})


@pytest.fixture(scope="module")
def dry_run(config: Any) -> tuple[Any, PipelineOptions]:
    args = gpu_worker_args(
        config, "agentmill-test", "us-central1", "gs://agentmill-test/tmp", IMAGE,
        max_workers=2, job_name="agentmill-moe-dry-run",
    )
    options = PipelineOptions([*args, "--dry_run=True", "--no_auth"])
    pipeline = beam.Pipeline(options=options)
    build(pipeline, config)
    result = pipeline.run()
    result.wait_until_finish()
    return result, options


def test_the_example_config_is_one_moe_engine_for_every_role(config: Any) -> None:
    from simulators.llm.engines import engines

    (engine,) = engines(config.models.by_role())
    assert sorted(engine.roles) == sorted(ROLES)
    agent = config.models.agent
    assert agent.preset == "qwen3-235b-a22b" and agent.model == "/models/Qwen3-235B-A22B"
    assert agent.tensor_parallel_size == 8 and agent.enable_expert_parallel
    assert agent.tool_call_mode == "native" and agent.tool_call_parser == "hermes"
    assert engine.memory_gib() < config.models.memory_budget_gib


def test_the_job_asks_for_eight_h100s_and_one_process_per_vm(
    dry_run: tuple[Any, PipelineOptions],
) -> None:
    result, options = dry_run
    assert result.state == "DONE"
    environment = job_environment(result, options)
    (pool,) = environment.worker_pools
    assert pool.machine_type == "a3-highgpu-8g"
    assert pool.worker_harness_container_image == IMAGE
    assert pool.disk_size_gb >= 2 * 438  # the image carries 438 GiB of BF16 weights
    assert pool.autoscaling_settings.max_num_workers == 2
    assert list(environment.service_options) == [
        "worker_accelerator=type:nvidia-h100-80gb;count:8;install-nvidia-driver"
    ]
    assert "no_use_multiple_sdk_containers" in environment.experiments


def test_workers_unpickle_the_engine_settings(dry_run: tuple[Any, PipelineOptions]) -> None:
    """The RunEpisodes DoFn in the staged job carries the preset-resolved model config."""
    result, _ = dry_run
    proto = result.job.proto_pipeline
    configs = []
    for transform in proto.components.transforms.values():
        if not transform.unique_name.startswith("RunEpisodes/"):
            continue
        if transform.spec.urn != "beam:transform:pardo:v1":
            continue
        payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
        from apache_beam.internal import pickler

        fn = pickler.loads(payload.do_fn.payload)[0]
        config = getattr(fn, "config", None) or getattr(fn, "cfg", None)
        if config is not None:
            configs.append(config)
    assert configs, "no RunEpisodes DoFn carries the run config"
    agent = configs[0].models.agent
    assert agent.tensor_parallel_size == 8 and agent.model == "/models/Qwen3-235B-A22B"
    assert pickle.loads(pickle.dumps(agent)) == agent


def test_a_model_larger_than_one_vm_is_refused_with_the_way_out() -> None:
    kimi = load_config(None, {f"models.{r}.preset": "kimi-k2-instruct" for r in ROLES})
    with pytest.raises(ValueError, match=r"need 16 GPUs.*backend: openai"):
        gpu_worker_args(kimi, "p", "us-central1", "gs://b/tmp", IMAGE,
                        accelerator="nvidia-h200-141gb")
    small = load_config(None, {f"models.{r}.preset": "qwen3-30b-a3b" for r in ROLES})
    args = gpu_worker_args(small, "p", "us-central1", "gs://b/tmp", IMAGE)
    assert "--machine_type=a3-highgpu-1g" in args
    assert any("count:1;" in a for a in args)
