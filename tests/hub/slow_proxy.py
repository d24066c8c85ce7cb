"""A TCP proxy on 127.0.0.1 that makes what is behind it slow or unreachable (pure asyncio streams, own thread).

``latency``: seconds added before each chunk a client sends is passed on (an HTTP request waits that long);
``drop``: new connections are closed at once (the server is down). Both can change while the proxy runs.
"""

from __future__ import annotations

import asyncio
import threading

from tests.support import free_port


class SlowProxy:
    def __init__(self, upstream_port: int, port: int | None = None):
        self.upstream_port, self.port = upstream_port, port or free_port()
        self.latency, self.drop = 0.0, False
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="slow-proxy", daemon=True)
        self._tasks: set[asyncio.Task] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "SlowProxy":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", self.port), self.loop
        ).result(10)
        return self

    def __exit__(self, *exc) -> None:
        async def close():
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._tasks.add(task := asyncio.current_task())
        try:
            if self.drop:
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            await asyncio.gather(self._pipe(reader, up_writer, slow=True), self._pipe(up_reader, writer))
        except OSError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pipe(self, reader, writer, slow: bool = False) -> None:
        try:
            while data := await reader.read(65536):
                if slow and self.latency:
                    await asyncio.sleep(self.latency)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
