"""Llama shapes of the zoo models and writing them as Hugging Face checkpoints.

Every shape keeps attention heads 64 wide: vLLM's CPU attention rejects small head sizes
(16 fails, 64 works), so width = 64 * heads. `write_checkpoint` is also the fast fixture
for tests: a random-init model of any named size, saved exactly like a trained one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from serving.zoo.tokenizer import BOS_ID, EOS_ID, MODEL_VOCAB_SIZE, PAD_ID, build_tokenizer

if TYPE_CHECKING:
    import torch

HEAD_DIM = 64
MAX_MODEL_LEN = 1024


class ModelShape(BaseModel):
    """Architecture of one zoo model (Llama, head size 64, tied embeddings)."""

    hidden_size: int = Field(gt=0, multiple_of=HEAD_DIM)
    num_layers: int = Field(gt=0)
    intermediate_size: int = Field(gt=0)
    max_model_len: int = MAX_MODEL_LEN

    @property
    def num_heads(self) -> int:
        return self.hidden_size // HEAD_DIM


SHAPES: dict[str, ModelShape] = {
    # `tiny` is for tests: one layer, one head; builds and serves in seconds.
    "tiny": ModelShape(hidden_size=64, num_layers=1, intermediate_size=128),
    "zoo-s": ModelShape(hidden_size=128, num_layers=2, intermediate_size=256),
    "zoo-m": ModelShape(hidden_size=192, num_layers=3, intermediate_size=512),
    "zoo-l": ModelShape(hidden_size=256, num_layers=3, intermediate_size=768),
    # `prefill` is for the prompt-cache benchmark only (random weights): wide and deep enough
    # that prefilling a few thousand tokens costs what it does on a real model, which the
    # zoo's tiny models (prefill < serving overhead) cannot show.
    "prefill": ModelShape(hidden_size=512, num_layers=4, intermediate_size=1536,
                          max_model_len=4096),
}


def llama_config(shape: ModelShape):  # -> transformers.LlamaConfig
    """The Hugging Face config for a shape, with the zoo tokenizer's special ids."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=MODEL_VOCAB_SIZE,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        head_dim=HEAD_DIM,
        max_position_embeddings=shape.max_model_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=PAD_ID,
    )


def init_model(shape: ModelShape, seed: int):  # -> transformers.LlamaForCausalLM
    """A random-init fp32 Llama; same seed -> same weights."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(llama_config(shape)).float()


def save_checkpoint(model: torch.nn.Module, out_dir: Path, dtype: str = "bfloat16",
                    chat_template: str | None = None) -> None:
    """Save weights (safetensors), config, generation config and tokenizer to `out_dir`
    (the zoo's chat template unless `chat_template` is given)."""
    import torch
    from transformers import GenerationConfig

    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(getattr(torch, dtype))
    model.config.dtype = dtype
    model.generation_config = GenerationConfig(
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, do_sample=False
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tok = build_tokenizer() if chat_template is None else build_tokenizer(chat_template)
    tok.save_pretrained(out_dir)


def write_checkpoint(name: str, out_dir: Path, seed: int = 0, dtype: str = "bfloat16") -> Path:
    """Write a random-init checkpoint of the named size (see SHAPES) to `out_dir`."""
    save_checkpoint(init_model(SHAPES[name], seed), Path(out_dir), dtype=dtype)
    return Path(out_dir)


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
