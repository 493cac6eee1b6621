"""The evaluation layer: what the benchmarks, the quantization gate and the tests share.

- `serving.evaluation.items`: the item and checker format (`TaskItem`, `EvalItem`,
  `Checker`) and the grading rule (`final_answer`, `check_answer`, `grade`); JSONL I/O.
- `serving.evaluation.scoring`: `evaluate_model`, one model scored through an OpenAI
  endpoint (quality, latency, throughput, per-item results).
- `serving.evaluation.launcher`: `frugal_server`, the one launcher of `frugal serve` as a
  subprocess, and the session-scoped clean-up it stops it with.

It sits above core `serving` (config, pricing, the router's scorecard format) and below
`serving.bench`, `serving.zoo` (which generates items in this format) and `quantize`: it
imports none of those. This file imports nothing, so importing one module stays cheap.
"""
