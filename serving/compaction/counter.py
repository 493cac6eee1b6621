"""Prompt token counts for the compaction trigger, with each model's own tokenizer.

The budget is in the model's tokens, so a chat is counted as the engine will see it: the
model's chat template applied, then its tokenizer. Tokenizers load once per model, lazily
(the first long chat), from the same source vLLM loads (`engine_kwargs.tokenizer`, else
the checkpoint), in a thread so the event loop never waits on a disk read.
"""

from __future__ import annotations

import asyncio
from typing import Any

from serving.config import FrugalConfig


class PromptCounter:
    def __init__(self, config: FrugalConfig) -> None:
        self.sources = {
            m.model_id: str(m.engine_kwargs.get("tokenizer") or m.model_loading_config.model_source)
            for m in config.models}
        self._tokenizers: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def tokenizer(self, model: str) -> Any:
        if model not in self._tokenizers:
            async with self._lock:
                if model not in self._tokenizers:
                    from transformers import AutoTokenizer

                    self._tokenizers[model] = await asyncio.to_thread(
                        AutoTokenizer.from_pretrained, self.sources[model])
        return self._tokenizers[model]

    async def chat(self, model: str, messages: list[dict[str, str]]) -> int:
        """Tokens of `messages` as a generation prompt for `model`."""
        tok = await self.tokenizer(model)
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])

    async def text(self, model: str, text: str) -> int:
        tok = await self.tokenizer(model)
        return len(tok(text, add_special_tokens=False, verbose=False)["input_ids"])
