"""fcd-api's uvicorn server: its wait loop ticks once a second, still serves the Date
header, and ends as soon as ``should_exit`` is set, not at its next tick."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

from fcd_api.__main__ import start_http
from fcd_common.rpc import bind_unix


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "http"
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _get(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(b"GET / HTTP/1.1\r\nHost: fcd\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out


def test_the_loop_serves_dates_and_stops_on_should_exit(tmp_path: Path) -> None:
    async def body() -> tuple[bytes, bool, bool]:
        sock = tmp_path / "api.sock"
        server, task = await start_http(_app, bind_unix(sock), grace=1)
        answer = await asyncio.to_thread(_get, sock)
        await asyncio.sleep(0)
        running = not task.done()
        server.should_exit = True
        # well inside one tick (1 s): the exit event wakes the loop, not the timer
        done, _ = await asyncio.wait({task}, timeout=0.9)
        return answer, running, task in done

    answer, running, stopped = asyncio.run(body())
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    assert head.startswith(b"http/1.1 204") and b"\r\ndate: " in head
    assert running and stopped
