"""Unit tests of the load generator's aggregation math (no server)."""

from __future__ import annotations

import pytest

from serving.bench.loadgen import (
    RequestSample,
    chat_body,
    has_text,
    mean_result,
    percentile,
    summarize,
)


def _ok(ttft_s: float, latency_s: float = 1.0, tokens: int = 64) -> RequestSample:
    return RequestSample(ttft_s=ttft_s, latency_s=latency_s, completion_tokens=tokens, ok=True)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([10.0], 95) == 10.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)  # order does not matter
    assert percentile(list(range(101)), 95) == pytest.approx(95.0)
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert percentile([1.0, 2.0, 3.0], 0) == 1.0 and percentile([1.0, 2.0, 3.0], 100) == 3.0


def test_throughput_is_good_tokens_over_wall_time() -> None:
    samples = [_ok(0.1 * i) for i in range(1, 5)]
    samples.append(RequestSample(ttft_s=0, latency_s=0.5, completion_tokens=0, ok=False,
                                 error="HTTP 503: overloaded"))
    result = summarize(samples, concurrency=4, wall_s=2.0)
    assert result.requests == 5 and result.errors == 1
    assert result.first_error == "HTTP 503: overloaded"
    assert result.tokens_per_s == pytest.approx(4 * 64 / 2.0)
    assert result.requests_per_s == pytest.approx(2.0)
    # Percentiles over the good requests only: TTFTs 0.1, 0.2, 0.3, 0.4 s.
    assert result.ttft_p50_ms == pytest.approx(250.0)
    assert result.ttft_p95_ms == pytest.approx(385.0)
    assert result.latency_p50_ms == pytest.approx(1000.0)


def test_empty_and_zero_wall_time_do_not_divide_by_zero() -> None:
    result = summarize([], concurrency=1, wall_s=0.0)
    assert result.tokens_per_s == 0.0 and result.ttft_p50_ms == 0.0 and result.errors == 0


def test_mean_of_rounds_weighs_rounds_equally() -> None:
    fast = summarize([_ok(0.1)] * 4, concurrency=4, wall_s=1.0)  # 256 tok/s
    slow = summarize([_ok(0.3)] * 4, concurrency=4, wall_s=4.0)  # 64 tok/s
    both = mean_result([fast, slow])
    assert both.requests == 8 and both.concurrency == 4
    assert both.tokens_per_s == pytest.approx(160.0)
    assert both.ttft_p50_ms == pytest.approx(200.0)


def test_first_token_is_the_first_chunk_with_text() -> None:
    assert not has_text({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    assert has_text({"choices": [{"delta": {"content": "4"}}]})
    assert has_text({"choices": [{"delta": {"reasoning": "think"}}]})
    assert not has_text({"choices": [], "usage": {"completion_tokens": 64}})


def test_body_asks_for_exact_length_and_usage() -> None:
    body = chat_body("zoo-l", "hi", 64)
    assert body["max_tokens"] == 64 and body["ignore_eos"] is True and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


def test_whole_response_body_has_no_stream_options() -> None:
    body = chat_body("zoo-l", "hi", 8, stream=False)
    assert body["stream"] is False and "stream_options" not in body and body["max_tokens"] == 8
