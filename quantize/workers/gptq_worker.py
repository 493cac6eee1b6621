"""GPTQ 4/8-bit with GPTQModel (the maintained successor of auto-gptq; same checkpoint format:
`quantize_config.json` plus packed `qweight`/`qzeros`/`scales`, which vLLM loads as `gptq`)."""

from __future__ import annotations

import os

# GPTQModel sizes its CPU thread pool from the host's core count (7.6: half the cores, at
# most 12); pin it to the 2 cores of the machines this was run on (docs/quantize.md, "The
# tool venv"). Set before import: GPTQModel reads it when it builds the pool.
os.environ.setdefault("GPTQMODEL_CPU_WORKERS", "2")

from common import copy_tokenizer, load_spec, progress, result, tokenized, versions  # noqa: E402


def main() -> None:
    spec = load_spec()
    import torch
    from gptqmodel import GPTQModel, QuantizeConfig
    from transformers import AutoTokenizer

    torch.set_num_threads(int(os.environ.get("FRUGAL_QUANTIZE_THREADS", "2")))
    progress("load", 0, 3)
    tokenizer = AutoTokenizer.from_pretrained(spec["source"])
    # Group-aware activation ordering (GPTQModel's default) needs groups; per-channel
    # (group -1) runs without it.
    config = QuantizeConfig(
        bits=spec["bits"],
        group_size=spec["group_size"],
        desc_act=False,
        sym=True,
        act_group_aware=spec["group_size"] > 0,
    )
    model = GPTQModel.load(spec["source"], config, device="cpu", dtype=torch.bfloat16)
    rows = tokenized(spec, tokenizer)
    progress("calibrate", 1, 3)
    model.quantize(rows, batch_size=8)
    progress("save", 2, 3)
    model.save(spec["out"])
    copy_tokenizer(spec["source"], spec["out"])
    progress("save", 3, 3)
    result({"tools": versions("gptqmodel")})


if __name__ == "__main__":
    main()
