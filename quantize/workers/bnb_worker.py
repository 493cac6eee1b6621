"""bitsandbytes 8-bit (LLM.int8) and 4-bit (nf4) through transformers.

bitsandbytes quantizes at load time from the weights alone (no calibration set); the saved
checkpoint carries `quantization_config` with `quant_method: bitsandbytes`, the format vLLM
loads on GPU."""

from __future__ import annotations

import os

from common import copy_tokenizer, load_spec, progress, result, versions


def main() -> None:
    spec = load_spec()
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.set_num_threads(int(os.environ.get("FRUGAL_QUANTIZE_THREADS", "2")))
    progress("quantize", 0, 2)
    if spec["bits"] == 4:
        config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_quant_storage=torch.uint8,
        )
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(
        spec["source"], quantization_config=config, dtype=torch.bfloat16, device_map="cpu"
    )
    progress("save", 1, 2)
    model.save_pretrained(spec["out"])
    copy_tokenizer(spec["source"], spec["out"])
    progress("save", 2, 2)
    result({"tools": versions("bitsandbytes", "accelerate")})


if __name__ == "__main__":
    main()
