"""CPU portability: on AMX CPUs every vLLM process may use AMX (serving/cpu_features.py).

Without the permission an eager bf16 engine dies with SIGILL on its first AMX tile
instruction; the crash showed on very short prompts. These tests run plain vLLM (no
frugal code in the call) so that they prove the general plugin reaches the spawned
EngineCore and worker processes, not only frugal's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, zoo_model_path

from serving import cpu_features

needs_amx = pytest.mark.skipif(
    not cpu_features.has_amx(),
    reason="this CPU lacks the amx_tile flag (/proc/cpuinfo): the AMX permission path "
    "cannot be exercised here",
)


def test_cpu_flags_are_read_from_cpuinfo() -> None:
    flags = cpu_features.cpu_flags()
    if not os.path.exists("/proc/cpuinfo"):
        assert flags == frozenset()
        return
    assert flags, "a Linux machine lists CPU flags"
    summary = cpu_features.feature_summary()
    assert summary.startswith("CPU flags used by the CPU engine:")
    for name in cpu_features.REPORTED_FLAGS:
        assert (name in summary.split(":", 1)[1].split()) == (name in flags)


def test_request_is_a_silent_noop_without_amx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_features, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    called = []
    monkeypatch.setattr(cpu_features, "_arch_prctl", lambda *args: called.append(args) or -1)
    assert cpu_features.request_amx() is False
    assert cpu_features.amx_permitted() is False
    cpu_features.request_amx()
    assert called == [], "no syscall on a CPU without AMX"


@needs_amx
def test_a_fresh_process_gets_amx_permission_when_it_asks() -> None:
    code = ("from serving.cpu_features import amx_permitted, request_amx; "
            "print(amx_permitted(), request_amx(), amx_permitted())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout.split()
    assert out == ["False", "True", "True"]


_PLAIN_VLLM = textwrap.dedent("""
    import json, sys
    from vllm import LLM, SamplingParams

    def engine_permitted(worker):
        from serving.cpu_features import amx_permitted
        return amx_permitted()

    if __name__ == "__main__":
        llm = LLM(model=sys.argv[1], dtype="bfloat16", max_model_len=1024,
                  enforce_eager=True)
        answers = {}
        for prompt in ["1+1=", "x", "What is 3 + 4?"]:  # the prompts that crashed
            out = llm.generate([prompt], SamplingParams(max_tokens=8), use_tqdm=False)
            answers[prompt] = out[0].outputs[0].text
        permitted = llm.collective_rpc(engine_permitted)
        print("RESULT " + json.dumps({"answers": answers, "permitted": permitted}))
""")


@needs_amx
@pytest.mark.slow
def test_plain_vllm_eager_bf16_answers_short_prompts(tmp_path) -> None:
    """The issue's minimal reproduction, in the project's environment: default sampling
    (temperature 1.0) on an eager bf16 engine, three prompts in a row."""
    script = tmp_path / "plain_vllm.py"
    script.write_text(_PLAIN_VLLM)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1",
           "VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}  # collective_rpc with a function
    done = subprocess.run([sys.executable, str(script), str(zoo_model_path("zoo-s"))],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    assert set(result["answers"]) == {"1+1=", "x", "What is 3 + 4?"}
    assert all(isinstance(text, str) for text in result["answers"].values())
    assert result["permitted"] and all(result["permitted"]), "the worker process holds AMX"


@pytest.mark.server
def test_eager_bf16_engine_answers_a_sampled_chat(client) -> None:
    """Through frugal's own serving path: the session server's engines are eager bf16
    (tests/conftest.py), and sampling at temperature 1.0 on one-character prompts is the
    batch shape that killed them on AMX CPUs."""
    for content in ("x", "1+1="):
        reply = client.chat.completions.create(
            model="zoo-s", messages=[{"role": "user", "content": content}],
            temperature=1.0, max_tokens=8)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens > 0
