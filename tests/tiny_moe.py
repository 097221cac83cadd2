"""A tiny random-weight Qwen3-MoE checkpoint, built at test time (never downloaded or committed).

It exercises vLLM's mixture-of-experts code path on the CPU build: 4 experts, 2 per token, 2
layers, hidden size 64, SmolLM2's tokenizer and chat template taken from the embedded checkpoint
(~6.4M parameters, ~16 MB in bfloat16, a few seconds to build). Its answers are noise; with
constrained output they are still schema-valid JSON, which is what the tests check.

One direction is planted so the test sees tool calls at all: with purely random weights the agent
picks the reply branch of its answer schema about half the time, and a short episode may then
contain no call to check. Hidden dimension 0 carries a constant (every embedding has 1.0 there and
no layer writes to it), and only the tokens that spell a prefix of `tool_calls` read it from the
final norm, so wherever the grammar allows the `{"tool_calls": ...}` branch the model takes it.
Everything else stays random.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def build_tiny_moe(out: Path, seed: int = 0, prefer_tool_calls: bool = True) -> Path:
    """Write the checkpoint into `out` (created) and return it."""
    import torch
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from simulators.llm.embedded import embedded_checkpoint

    source = embedded_checkpoint()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = Qwen3MoeConfig(
        vocab_size=49152,  # SmolLM2's tokenizer
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,  # vLLM's CPU attention kernels have no head size 16

        num_experts=4,
        num_experts_per_tok=2,
        decoder_sparse_step=1,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = Qwen3MoeForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    if prefer_tool_calls:
        _plant_tool_call_preference(out)
    return out


def _plant_tool_call_preference(out: Path, word: str = "tool_calls") -> None:
    """Make the tokens spelling a prefix of `word` win wherever the grammar allows them."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    prefix_ids = [
        index
        for token, index in tokenizer.get_vocab().items()
        if (text := tokenizer.convert_tokens_to_string([token])) and word.startswith(text)
    ]
    (file,) = out.glob("*.safetensors")
    tensors = load_file(str(file))
    tensors["model.embed_tokens.weight"][:, 0] = 1.0
    for name, tensor in tensors.items():
        if name.endswith(("self_attn.o_proj.weight", "down_proj.weight")):
            tensor[0, :] = 0.0  # no layer writes to dimension 0
    head = tensors["lm_head.weight"]
    head[:, 0] = 0.0
    head[prefix_ids, 0] = 2.0
    tensors = {name: tensor.to(torch.bfloat16).contiguous() for name, tensor in tensors.items()}
    save_file(tensors, str(file), metadata={"format": "pt"})


def parameter_count(path: Path) -> int:
    """Parameters stored in the checkpoint's safetensors files."""
    from safetensors import safe_open

    total = 0
    for file in path.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                total += _numel(handle.get_slice(key).get_shape())
    return total


def _numel(shape: list[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
