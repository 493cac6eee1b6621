"""CPU features the CPU engine path relies on, and the AMX permission it must ask for.

Why this exists: on x86 CPUs with AMX (Intel Sapphire Rapids and later) vLLM's CPU
backend picks its AMX kernels for bf16 attention and GEMMs whenever
`torch.cpu._is_amx_tile_supported()` is true. Linux lets a process run AMX tile
instructions only after it has asked for the tile-data state:
`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`. A process that has not asked
dies with SIGILL on its first tile instruction. torch inductor asks in compiled mode
(`torch.cpu._init_amx()`), so only eager engines (`enforce_eager: true`) crashed, and
then only on some batch shapes (very short prompts killed the engine every time).

Where the request is made: vLLM's general-plugin entry point
(`vllm.general_plugins` in pyproject.toml -> `serving.vllm_plugin.load`). vLLM loads
plugins in every process it starts, the API/engine-client process, the EngineCore and
each worker, before any model code runs; the permission is per process, so a call in
the parent alone is not enough (EngineCore and workers are spawned, not forked).
`ModelEngine` also calls `request_amx()` itself, so an in-process engine
(`VLLM_ENABLE_V1_MULTIPROCESSING=0`) is covered when an operator restricts plugins with
`VLLM_PLUGINS`.

On a CPU without AMX, or not on x86-64 Linux, every call here is a silent no-op.
Written by hand: the kernel interface is two syscalls and no library wraps them
(torch's `_init_amx` is private and needs torch imported).
"""

from __future__ import annotations

import ctypes
import logging
import platform
from functools import cache

logger = logging.getLogger("frugal.cpu")

#: x86-64 syscall number of arch_prctl, and its permission codes (asm/prctl.h).
SYS_ARCH_PRCTL = 158
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
#: The AMX tile-data state component (XFEATURE_XTILEDATA).
XFEATURE_XTILEDATA = 18

#: The flags the CPU path uses, as /proc/cpuinfo names them, in the order docs list them.
REPORTED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile",
                  "amx_int8")


@cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_amx() -> bool:
    """True on an x86-64 Linux CPU that advertises AMX tiles."""
    return _x86_64_linux() and "amx_tile" in cpu_flags()


def _x86_64_linux() -> bool:
    return platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")


def _arch_prctl(code: int, arg: int | ctypes._Pointer) -> int:  # type: ignore[type-arg]
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.syscall(SYS_ARCH_PRCTL, code, arg))


def amx_permitted() -> bool:
    """True when this process may execute AMX tile instructions."""
    if not has_amx():
        return False
    mask = ctypes.c_uint64(0)
    if _arch_prctl(ARCH_GET_XCOMP_PERM, ctypes.byref(mask)) != 0:
        return False
    return bool(mask.value & (1 << XFEATURE_XTILEDATA))


def request_amx() -> bool:
    """Ask the kernel for AMX tile data in this process; True once it is granted.

    Idempotent and cheap (one or two syscalls); a no-op returning False where the CPU
    has no AMX. A refusal (a kernel older than 5.16) is logged, not raised: the log
    line tells the operator why a bf16 engine then dies, and float32 avoids AMX.
    """
    if not has_amx():
        return False
    if amx_permitted():
        return True
    if _arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0:
        errno = ctypes.get_errno()
        logger.warning("the kernel refused AMX tile data (arch_prctl errno %s): bf16 engines "
                       "may die with SIGILL; serve with dtype float32", errno)
        return False
    return amx_permitted()


def feature_summary() -> str:
    """One log line: which of the flags the CPU path uses this CPU has."""
    flags = cpu_flags()
    present = [name for name in REPORTED_FLAGS if name in flags]
    return "CPU flags used by the CPU engine: " + (" ".join(present) or "none of " +
                                                    " ".join(REPORTED_FLAGS))


def attention_isa(dtype: object, block_size: int, head_size: int, kv_cache_dtype: str) -> str:
    """The CPU attention kernel family vLLM picks for these settings (`amx`, `vec`,
    `vec16`, `neon`, ...), by asking vLLM's own chooser; `unknown` if it cannot say."""
    try:
        from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

        return str(_get_attn_isa(dtype, block_size, head_size, kv_cache_dtype))
    except Exception:  # another vLLM layout, or not the CPU build
        return "unknown"
