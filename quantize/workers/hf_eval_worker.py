"""Greedy answers from transformers for artifacts vLLM cannot run on this device.

Spec: {"models": [dir, ...], "prompts": [[chat messages], ...], "max_new_tokens": n}.
Result: {"answers": {dir: [text, ...]}, "tools": {...}}. The parent checks the answers with
the scorecard's own `check_answer`, so both backends grade the same way."""

from __future__ import annotations

import os

from common import load_spec, progress, result, versions

BATCH = 16


def load(model_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, device_map="cpu"
    ).eval()


def main() -> None:
    spec = load_spec()
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(int(os.environ.get("FRUGAL_QUANTIZE_THREADS", "2")))
    answers: dict[str, list[str]] = {}
    prompts = spec["prompts"]
    total = len(spec["models"]) * len(prompts)
    done = 0
    for model_dir in spec["models"]:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        tokenizer.padding_side = "left"
        model = load(model_dir)
        texts = [
            tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
            for m in prompts
        ]
        outs: list[str] = []
        for start in range(0, len(texts), BATCH):
            batch = tokenizer(
                texts[start : start + BATCH],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            )
            with torch.no_grad():
                generated = model.generate(
                    **batch, max_new_tokens=spec["max_new_tokens"], do_sample=False
                )
            new = generated[:, batch["input_ids"].shape[1] :]
            outs += tokenizer.batch_decode(new, skip_special_tokens=True)
            done += len(new)
            progress("evaluate (transformers)", done, total)
        answers[model_dir] = outs
    result({"answers": answers, "tools": versions("gptqmodel", "bitsandbytes")})


if __name__ == "__main__":
    main()
