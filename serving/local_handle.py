"""A `DeploymentHandle` look-alike for a model engine that lives in the gateway's process.

Why by hand: Ray Serve has no in-process handle. The gateway calls models as
`handle.<method>.remote(request)` (awaitable, `.cancel()`) and, for streams,
`handle.options(stream=True).<method>.remote(request)` (async iterator, `.cancel()`);
this gives a local `ModelEngine` the same surface, so the gateway has one code path
whether a model is a separate replica or colocated.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any


class LocalStream:
    """An engine's async generator with the `cancel()` of a streaming handle response."""

    def __init__(self, chunks: AsyncGenerator[Any, None]) -> None:
        self._chunks = chunks

    def __aiter__(self) -> LocalStream:
        return self

    async def __anext__(self) -> Any:
        return await self._chunks.__anext__()

    def cancel(self) -> None:
        """Close the generator, which aborts the request in vLLM (as a handle's cancel
        does in the replica). Closing is async, so it runs as its own task."""
        asyncio.get_running_loop().create_task(self._chunks.aclose())


class _LocalMethod:
    def __init__(self, method: Any, stream: bool) -> None:
        self._method = method
        self._stream = stream

    def remote(self, *args: Any) -> Any:
        if self._stream:
            return LocalStream(self._method(*args))
        # A task: awaitable and cancellable, like a DeploymentResponse.
        return asyncio.get_running_loop().create_task(self._method(*args))


class LocalHandle:
    """`handle.chat.remote(r)`, `handle.options(stream=True).chat_stream.remote(r)`, ...
    on an object in this process."""

    def __init__(self, target: Any, stream: bool = False) -> None:
        self._target = target
        self._stream = stream

    def options(self, *, stream: bool = False) -> LocalHandle:
        return LocalHandle(self._target, stream)

    def __getattr__(self, name: str) -> _LocalMethod:
        if name.startswith("_"):
            raise AttributeError(name)
        return _LocalMethod(getattr(self._target, name), self._stream)
