"""`frugal bench cpu-kernels`: vLLM's AMX attention kernels against its AVX-512 `vec`
kernels on the same CPU, side by side (docs/serving.md, "CPU features").

vLLM offers no setting for the CPU attention ISA: `_get_attn_isa` picks `amx` for bf16
whenever the CPU has AMX. To measure the alternative, each measurement runs in a
subprocess with vLLM's engine in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, one
`uni` executor) and that chooser replaced by one that returns the forced ISA. This is a
benchmark-only patch: serving never forces an ISA. GEMMs are oneDNN's either way, so
the ratio is the attention kernels' share. Runs alternate between the two ISAs so that
a noisy neighbour hurts both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ISAS = ("amx", "vec")


class KernelRun(BaseModel):
    isa: str
    round: int
    prompts: int
    output_tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def _worker(model: str, isa: str, prompts: int, max_tokens: int) -> dict[str, Any]:
    """In the subprocess: force `isa`, time one batch of greedy generations."""
    from vllm import LLM, SamplingParams
    from vllm.v1.attention.backends import cpu_attn

    chosen: list[str] = []

    def forced(*_: Any, **__: Any) -> str:
        chosen.append(isa)
        return isa

    cpu_attn._get_attn_isa = forced
    llm = LLM(model=model, dtype="bfloat16", max_model_len=1024, enforce_eager=True,
              distributed_executor_backend="uni")
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    batch = [f"What is {i} + {i * 7 % 100}?" for i in range(prompts)]
    llm.generate(batch[:8], params, use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outputs = llm.generate(batch, params, use_tqdm=False)
    seconds = time.perf_counter() - started
    tokens = sum(len(out.outputs[0].token_ids) for out in outputs)
    if not chosen:
        raise RuntimeError("vLLM did not ask for an attention ISA: the patch missed")
    return {"isa": isa, "output_tokens": tokens, "seconds": seconds}


def run(model: Path, rounds: int, prompts: int, max_tokens: int) -> list[KernelRun]:
    runs = []
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    for round_ in range(rounds):
        for isa in ISAS:
            done = subprocess.run(
                [sys.executable, "-m", "serving.bench.cpu_kernels", str(model), isa,
                 str(prompts), str(max_tokens)],
                capture_output=True, text=True, env=env, timeout=1200, check=False)
            lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                raise RuntimeError(f"{isa} run failed:\n{done.stderr[-3000:]}")
            result = json.loads(lines[-1].removeprefix("RESULT "))
            runs.append(KernelRun(round=round_, prompts=prompts, **result))
    return runs


def markdown(runs: list[KernelRun], command: str, flags: str) -> str:
    def mean(isa: str) -> float:
        values = [r.tokens_per_s for r in runs if r.isa == isa]
        return sum(values) / len(values)

    lines = [
        "# CPU attention kernels: AMX vs AVX-512 `vec`", "",
        f"Command: `{command}`", "", f"CPU flags: {flags}", "",
        "| round | amx tok/s | vec tok/s | amx / vec |", "|---|---|---|---|",
    ]
    for round_ in sorted({r.round for r in runs}):
        amx = next(r for r in runs if r.round == round_ and r.isa == "amx").tokens_per_s
        vec = next(r for r in runs if r.round == round_ and r.isa == "vec").tokens_per_s
        lines.append(f"| {round_ + 1} | {amx:,.0f} | {vec:,.0f} | {amx / vec:.2f} |")
    lines.append(f"| mean | {mean('amx'):,.0f} | {mean('vec'):,.0f} | "
                 f"{mean('amx') / mean('vec'):.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # the subprocess of one measurement
    model_arg, isa_arg, prompts_arg, tokens_arg = sys.argv[1:5]
    print("RESULT " + json.dumps(_worker(model_arg, isa_arg, int(prompts_arg), int(tokens_arg))),
          flush=True)
