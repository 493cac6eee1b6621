"""compressed-tensors W8A8 (int8 weights and activations) and W4A16 with llm-compressor.

GPTQ-style weight rounding on the calibration set for both; W8A8 also SmoothQuant, which
moves activation outliers into the weights so that 8-bit activations keep their range."""

from __future__ import annotations

import os

from common import copy_tokenizer, load_spec, progress, result, tokenized, versions


def recipe(spec):
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.modifiers.smoothquant import SmoothQuantModifier

    ignore = ["lm_head"]
    if spec["method"] == "w8a8":
        return [
            SmoothQuantModifier(smoothing_strength=0.8),
            GPTQModifier(targets="Linear", scheme="W8A8", ignore=ignore),
        ]
    weights = {
        "num_bits": spec["bits"],
        "type": "int",
        "symmetric": True,
        "strategy": "group",
        "group_size": spec["group_size"],
    }
    groups = {"group_0": {"targets": ["Linear"], "weights": weights}}
    return [GPTQModifier(config_groups=groups, ignore=ignore)]


def main() -> None:
    spec = load_spec()
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(int(os.environ.get("FRUGAL_QUANTIZE_THREADS", "2")))
    progress("load", 0, 3)
    tokenizer = AutoTokenizer.from_pretrained(spec["source"])
    model = AutoModelForCausalLM.from_pretrained(spec["source"], dtype=torch.bfloat16)
    rows = tokenized(spec, tokenizer)
    dataset = Dataset.from_list(rows)
    progress("calibrate", 1, 3)
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe(spec),
        max_seq_length=spec["max_seq_len"],
        num_calibration_samples=len(rows),
    )
    progress("save", 2, 3)
    model.save_pretrained(spec["out"], save_compressed=True)
    copy_tokenizer(spec["source"], spec["out"])
    progress("save", 3, 3)
    result({"tools": versions("llmcompressor", "compressed-tensors")})


if __name__ == "__main__":
    main()
