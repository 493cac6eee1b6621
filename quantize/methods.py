"""The quantization methods frugal can produce, and the checks that run before any long work.

Each method names the tool that writes it (run in the quantize tool venv, see `env.py`), the
bit widths and group sizes it takes, the name vLLM loads it under, and where vLLM serves it.
`servable_on` is measured, not assumed (docs/quantize.md has the evidence): on CPU vLLM runs
4-bit weights through its CPU WNA16 kernel (uint4 only) and int8 W8A8 through its int8
scaled-mm kernel; GPTQ 8-bit has no CPU kernel and bitsandbytes is GPU-only in vLLM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

Device = Literal["cpu", "gpu"]

#: Group sizes tried, largest first, when the user gives none (fewer scales, fewer bytes;
#: the tiny zoo widths of 64-768 rule out 128 for some shapes, so smaller ones follow).
GROUP_SIZE_CHOICES: tuple[int, ...] = (128, 64, 32)
#: vLLM's CPU WNA16 kernel takes input and output sizes that are multiples of 32.
CPU_WNA16_MULTIPLE = 32


class Method(BaseModel):
    """One quantization method: what it takes and where its artifact runs."""

    name: str
    tool: Literal["gptqmodel", "llmcompressor", "bitsandbytes"]
    worker: str = Field(description="Script under quantize/workers/ that produces it.")
    description: str
    bits: tuple[int, ...]
    grouped: bool = Field(description="Takes a --group-size (weights scaled per group).")
    fixed_group_size: dict[int, int] = Field(
        default_factory=dict,
        description="Per bit width, the scaling the format fixes: a block size (nf4: 64) or "
        "-1 for one scale per row/channel.",
    )
    calibrated: bool = Field(description="Needs calibration data (GPTQ-style rounding).")
    vllm_quantization: str = Field(description="The `quantization` name vLLM loads it under.")
    servable_on: dict[int, tuple[Device, ...]] = Field(
        description="Per bit width, the devices where vLLM serves the artifact."
    )
    evidence: dict[int, str] = Field(default_factory=dict, description="Why, per bit width.")

    def devices(self, bits: int) -> list[Device]:
        return list(self.servable_on.get(bits, ()))


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            name="gptq",
            tool="gptqmodel",
            worker="gptq_worker.py",
            description="GPTQ weight-only int4/int8 (GPTQModel; auto-gptq's format)",
            # 2 and 3 bits are for measuring how far a model goes (the gate test's
            # over-quantized model): vLLM's GPTQ loader takes 4 and 8 bits only.
            bits=(2, 3, 4, 8),
            grouped=True,
            calibrated=True,
            vllm_quantization="gptq",
            servable_on={2: (), 3: (), 4: ("cpu", "gpu"), 8: ("gpu",)},
            evidence={
                2: "vLLM: 'Unsupported quantization config: bits=2' (GPTQ loads 4 and 8 bits); "
                "scored with transformers only",
                3: "vLLM: 'Unsupported quantization config: bits=3' (GPTQ loads 4 and 8 bits); "
                "scored with transformers only",
                4: "vLLM CPU WNA16 kernel (uint4b8); served and answered in tests",
                8: "vLLM on CPU fails to start: 'Marlin does not support weight_bits = "
                "uint8b128. Only types = [ScalarType.uint4b8] are supported' (its CPU WNA16 "
                "kernel takes uint4 only); loaded and checked with transformers here",
            },
        ),
        Method(
            name="w8a8",
            tool="llmcompressor",
            worker="llmcompressor_worker.py",
            description="compressed-tensors int8 weights and activations (SmoothQuant + GPTQ)",
            bits=(8,),
            grouped=False,
            fixed_group_size={8: -1},
            calibrated=True,
            vllm_quantization="compressed-tensors",
            servable_on={8: ("cpu", "gpu")},
            evidence={8: "vLLM CPU int8 scaled-mm kernel; served and answered in tests"},
        ),
        Method(
            name="w4a16",
            tool="llmcompressor",
            worker="llmcompressor_worker.py",
            description="compressed-tensors int4 weights, 16-bit activations (GPTQ rounding)",
            bits=(4,),
            grouped=True,
            calibrated=True,
            vllm_quantization="compressed-tensors",
            servable_on={4: ("cpu", "gpu")},
            evidence={4: "vLLM CPU WNA16 kernel; served and answered in tests"},
        ),
        Method(
            name="bnb",
            tool="bitsandbytes",
            worker="bnb_worker.py",
            description="bitsandbytes LLM.int8 (8-bit) or nf4 (4-bit), no calibration",
            bits=(4, 8),
            grouped=False,
            fixed_group_size={4: 64, 8: -1},
            calibrated=False,
            vllm_quantization="bitsandbytes",
            servable_on={4: ("gpu",), 8: ("gpu",)},
            evidence={
                4: "vLLM on CPU: 'Unknown quantization method: bitsandbytes' (GPU only); "
                "loaded and checked with transformers + bitsandbytes here",
                8: "vLLM on CPU: 'Unknown quantization method: bitsandbytes' (GPU only); "
                "loaded and checked with transformers + bitsandbytes here",
            },
        ),
    )
}


class QuantizeError(Exception):
    """Bad input found before any long work starts; the message says what to change."""


class Plan(BaseModel):
    """A validated request: method, bits and the group size that will be used."""

    method: str
    bits: int
    group_size: int | None = Field(description="-1 per output channel; None not grouped.")
    linear_shapes: dict[str, tuple[int, int]] = Field(
        description="(in_features, out_features) of each kind of quantized linear layer."
    )

    @property
    def spec(self) -> Method:
        return METHODS[self.method]


def linear_shapes(model_dir: Path) -> dict[str, tuple[int, int]]:
    """(in, out) features of the Llama-family linear layers, from config.json alone."""
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except FileNotFoundError:
        raise QuantizeError(
            f"{model_dir}: no config.json (expected a checkpoint directory)"
        ) from None
    if "quantization_config" in config:
        raise QuantizeError(f"{model_dir} is already quantized; start from the 16-bit model")
    try:
        hidden = config["hidden_size"]
        inter = config["intermediate_size"]
        heads = config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads", heads)
        head_dim = config.get("head_dim") or hidden // heads
    except KeyError as exc:
        raise QuantizeError(
            f"{model_dir}/config.json lacks {exc} (expected a Llama-style model)"
        ) from None
    return {
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv_heads * head_dim),
        "v_proj": (hidden, kv_heads * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }


def _shape_problems(shapes: dict[str, tuple[int, int]], group_size: int | None) -> list[str]:
    problems = []
    for name, (fan_in, _fan_out) in shapes.items():
        if group_size and group_size > 0 and fan_in % group_size:
            problems.append(f"{name}: in_features {fan_in} is not a multiple of group {group_size}")
    return problems


def _cpu_kernel_problems(shapes: dict[str, tuple[int, int]]) -> list[str]:
    return [
        f"{name}: {fan_in}x{fan_out} is not a multiple of {CPU_WNA16_MULTIPLE} "
        "(vLLM's CPU WNA16 kernel needs that)"
        for name, (fan_in, fan_out) in shapes.items()
        if fan_in % CPU_WNA16_MULTIPLE or fan_out % CPU_WNA16_MULTIPLE
    ]


def plan(model_dir: Path, method: str, bits: int, group_size: int | None = None) -> Plan:
    """Validate a request against the method and the model's shapes; raise QuantizeError.

    With no group size, a grouped method takes the largest of GROUP_SIZE_CHOICES that divides
    every layer's input width. Shapes a CPU kernel cannot take are refused for methods that
    are meant to serve on CPU, so nothing is produced that would then fail to load.
    """
    if method not in METHODS:
        raise QuantizeError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    spec = METHODS[method]
    if bits not in spec.bits:
        raise QuantizeError(
            f"{method} does not support {bits} bits; supported: "
            f"{', '.join(str(b) for b in spec.bits)}"
        )
    shapes = linear_shapes(model_dir)
    if not spec.grouped:
        fixed = spec.fixed_group_size.get(bits, -1)
        if group_size is not None:
            raise QuantizeError(
                f"{method} takes no --group-size (its {bits}-bit format fixes the scaling: "
                f"{'one scale per row' if fixed == -1 else f'blocks of {fixed}'})"
            )
        group_size = fixed
    elif group_size is None:
        fits = [g for g in GROUP_SIZE_CHOICES if not _shape_problems(shapes, g)]
        if not fits:
            raise QuantizeError(
                f"no group size in {GROUP_SIZE_CHOICES} divides every layer width of "
                f"{model_dir}; pass --group-size -1 (per channel)"
            )
        group_size = fits[0]
    elif group_size == 0 or group_size < -1:
        raise QuantizeError("--group-size must be a positive power of two or -1 (per channel)")
    elif group_size > 0 and (group_size & (group_size - 1)):
        raise QuantizeError(f"--group-size {group_size} is not a power of two")
    problems = _shape_problems(shapes, group_size if spec.grouped else None)
    if "cpu" in spec.servable_on.get(bits, ()) and bits == 4:
        problems += _cpu_kernel_problems(shapes)
    if problems:
        raise QuantizeError(
            f"{model_dir.name} cannot be quantized with {method} {bits}-bit, group "
            f"{group_size}:\n  " + "\n  ".join(problems)
        )
    return Plan(method=method, bits=bits, group_size=group_size, linear_shapes=shapes)
